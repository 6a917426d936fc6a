//! Migrations between real tiers: directories and a real S3 server (moto, over HTTP).

use std::sync::Mutex;

use aigc_storage::crds::storage_tier::S3StorageClass;
use aigc_storage::migration::{JOURNAL_KEY, MigrationOptions, Phase, migrate, verify_manifest};
use aigc_storage::testing::MotoServer;
use aigc_storage::{Error, Location, MANIFEST_KEY, S3Config, Tier};

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

async fn open(uri: &str, config: &S3Config) -> Tier {
    Tier::open(&Location::parse(uri).unwrap(), config)
        .await
        .unwrap()
}

/// A source with `n` objects in nested folders plus one above the multipart threshold.
async fn fill(tier: &Tier, n: usize) {
    for i in 0..n {
        let key = format!("part-{:02}/shard-{i:04}.bin", i % 3);
        tier.put_bytes(&key, data(1000 + i * 37, i as u8))
            .await
            .unwrap();
    }
    let big = data(20 << 20, 99);
    let len = big.len() as u64;
    tier.put(
        "weights/model.safetensors",
        Box::pin(std::io::Cursor::new(big)),
        len,
    )
    .await
    .unwrap();
}

fn options(delete_source: bool) -> MigrationOptions {
    MigrationOptions {
        concurrency: 4,
        delete_source,
        ..MigrationOptions::default()
    }
}

/// Migrate with `--delete-source`, then check the destination against the source manifest.
async fn migrate_and_check(from: &Tier, to: &Tier) {
    fill(from, 30).await;
    let source_manifest = from.build_manifest(4).await.unwrap();
    let events = Mutex::new(Vec::new());
    let report = migrate(from, to, &options(true), &|p| {
        events
            .lock()
            .unwrap()
            .push((p.phase, p.objects_done, p.objects_total));
    })
    .await
    .unwrap();
    assert_eq!(report.objects, 31);
    assert_eq!(report.copied, 31);
    assert!(report.source_deleted);
    assert_eq!(report.manifest_digest, source_manifest.digest());

    let stored = to.read_manifest().await.unwrap().unwrap();
    assert_eq!(stored, source_manifest);
    verify_manifest(to, &stored, 4).await.unwrap();
    assert!(
        from.list("").await.unwrap().is_empty(),
        "source must be gone"
    );

    let events = events.into_inner().unwrap();
    let copied = events.iter().filter(|e| e.0 == Phase::Copying).count();
    let deleted = events
        .iter()
        .filter(|e| e.0 == Phase::DeletingSource)
        .count();
    assert_eq!((copied, deleted), (31, 31));
    // Every copy is reported before any deletion.
    let first_delete = events
        .iter()
        .position(|e| e.0 == Phase::DeletingSource)
        .unwrap();
    assert!(events[..first_delete].iter().all(|e| e.0 == Phase::Copying));
}

#[tokio::test]
async fn filesystem_to_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let config = S3Config::default();
    migrate_and_check(
        &open(&format!("file://{d}/hot"), &config).await,
        &open(&format!("file://{d}/warm"), &config).await,
    )
    .await;
}

#[tokio::test]
async fn filesystem_to_s3_and_s3_to_s3_server_side_and_back() {
    let server = MotoServer::start().unwrap();
    for bucket in ["cold", "colder"] {
        server.create_bucket(bucket).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let config = server.config(None);
    migrate_and_check(
        &open(&format!("file://{d}/hot"), &config).await,
        &open("s3://cold/datasets/imdb", &config).await,
    )
    .await;
    // Same endpoint: server-side copies, verified by the server's SHA-256 of each new object.
    let colder = server.config(Some(S3StorageClass::StandardIa));
    let from = open("s3://cold/datasets/imdb", &config).await;
    let to = open("s3://colder/imdb", &colder).await;
    let manifest = from.read_manifest().await.unwrap().unwrap();
    let report = migrate(&from, &to, &options(false), &|_| {}).await.unwrap();
    assert_eq!(
        (report.copied, report.manifest_digest),
        (31, manifest.digest())
    );
    verify_manifest(&to, &manifest, 4).await.unwrap();
    let listed = to.list("").await.unwrap();
    assert!(
        listed
            .iter()
            .filter(|m| m.key != MANIFEST_KEY && m.key != JOURNAL_KEY)
            .all(|m| m.storage_class.as_deref() == Some("STANDARD_IA"))
    );
    // S3 back to a directory, from a tier in an infrequent-access class.
    migrate_and_check(
        &open("s3://colder/fresh", &colder).await,
        &open(&format!("file://{d}/warm"), &config).await,
    )
    .await;
}

#[tokio::test]
async fn a_corrupted_destination_object_is_caught_and_recopied() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let config = S3Config::default();
    let from = open(&format!("file://{d}/hot"), &config).await;
    let to = open(&format!("file://{d}/warm"), &config).await;
    fill(&from, 10).await;
    migrate(&from, &to, &options(false), &|_| {}).await.unwrap();

    let victim = dir.path().join("warm/part-01/shard-0004.bin");
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&victim, &bytes).unwrap();

    let report = migrate(&from, &to, &options(true), &|_| {}).await.unwrap();
    assert_eq!(report.recopied, 1);
    assert_eq!(report.already_verified, 10);
    let manifest = to.read_manifest().await.unwrap().unwrap();
    verify_manifest(&to, &manifest, 4).await.unwrap();
    assert!(from.list("").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_rerun_skips_verified_objects_and_removes_interrupted_uploads() {
    let server = MotoServer::start().unwrap();
    server.create_bucket("dest").await;
    let dir = tempfile::tempdir().unwrap();
    let config = server.config(None);
    let from = open(&format!("file://{}/hot", dir.path().display()), &config).await;
    let to = open("s3://dest/ds", &config).await;
    fill(&from, 5).await;
    // What a killed upload leaves behind.
    let client = server.client().await;
    client
        .create_multipart_upload()
        .bucket("dest")
        .key("ds/weights/model.safetensors")
        .send()
        .await
        .unwrap();
    let first = migrate(&from, &to, &options(false), &|_| {}).await.unwrap();
    assert_eq!((first.copied, first.aborted_uploads), (6, 1));
    let uploads = client
        .list_multipart_uploads()
        .bucket("dest")
        .send()
        .await
        .unwrap();
    assert!(uploads.uploads().is_empty());

    let second = migrate(&from, &to, &options(false), &|_| {}).await.unwrap();
    assert_eq!((second.copied, second.already_verified), (0, 6));
    assert!(to.head(JOURNAL_KEY).await.unwrap().is_some());
}

#[tokio::test]
async fn archived_sources_are_restored_first_and_nothing_is_copied_meanwhile() {
    let server = MotoServer::start().unwrap();
    server.create_bucket("tape").await;
    let dir = tempfile::tempdir().unwrap();
    let dest_root = dir.path().join("hot");
    let archive = open(
        "s3://tape/ds",
        &server.config(Some(S3StorageClass::DeepArchive)),
    )
    .await;
    archive.put_bytes("a.bin", data(100, 1)).await.unwrap();
    archive.put_bytes("b.bin", data(200, 2)).await.unwrap();
    let to = open(
        &format!("file://{}", dest_root.display()),
        &S3Config::default(),
    )
    .await;

    let err = migrate(&archive, &to, &options(true), &|_| {})
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("2 object(s)") && msg.contains("restoring"),
        "{msg}"
    );
    assert!(
        !dest_root.exists(),
        "nothing may be written before the source is readable"
    );
    assert_eq!(archive.list("").await.unwrap().len(), 2);

    // The test server finishes restores at once; the rerun copies.
    migrate(&archive, &to, &options(true), &|_| {})
        .await
        .unwrap();
    assert_eq!(to.get_bytes("b.bin").await.unwrap(), data(200, 2));
}

#[tokio::test]
async fn bad_input_is_refused_and_touches_nothing() {
    let server = MotoServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let config = server.config(None);
    let from = open(&format!("file://{d}/hot"), &config).await;
    fill(&from, 3).await;
    let before = from.list("").await.unwrap();

    // Missing destination bucket.
    let err = migrate(
        &from,
        &open("s3://missing-bucket/x", &config).await,
        &options(true),
        &|_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::TierNotFound { .. }), "{err}");

    // Destination inside the source.
    let err = migrate(
        &from,
        &open(&format!("file://{d}/hot/inner"), &config).await,
        &options(true),
        &|_| {},
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("overlap"), "{err}");

    // Empty or missing source.
    let err = migrate(
        &open(&format!("file://{d}/nowhere"), &config).await,
        &open(&format!("file://{d}/warm"), &config).await,
        &options(true),
        &|_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::TierNotFound { .. }), "{err}");
    assert!(!dir.path().join("warm").exists());

    // A source object whose key escapes with `..` (S3 allows such keys; tiers must not).
    server.create_bucket("dirty").await;
    let client = server.client().await;
    client
        .put_object()
        .bucket("dirty")
        .key("ds/../../etc/evil")
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap();
    let err = migrate(
        &open("s3://dirty/ds", &config).await,
        &open(&format!("file://{d}/warm"), &config).await,
        &options(true),
        &|_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::InvalidKey { .. }), "{err}");
    assert!(!dir.path().join("warm").exists());

    let mut after = from.list("").await.unwrap();
    after.retain(|m| m.key != MANIFEST_KEY);
    assert_eq!(after, before);
}
