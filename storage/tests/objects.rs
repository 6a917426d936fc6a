//! The object API against a real S3 server (moto, over HTTP) and a real directory.

use aigc_storage::crds::storage_tier::S3StorageClass;
use aigc_storage::testing::MotoServer;
use aigc_storage::tier::Readability;
use aigc_storage::{Error, Location, RestoreState, S3Config, Tier};
use sha2::{Digest, Sha256};

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn fs_tier(dir: &std::path::Path) -> Tier {
    let uri = format!("file://{}", dir.display());
    Tier::open(&Location::parse(&uri).unwrap(), &S3Config::default())
        .await
        .unwrap()
}

async fn s3_tier(server: &MotoServer, bucket: &str, class: Option<S3StorageClass>) -> Tier {
    Tier::open(
        &Location::parse(&format!("s3://{bucket}/tier")).unwrap(),
        &server.config(class),
    )
    .await
    .unwrap()
}

/// Put, head, list with a prefix, get, copy, delete: the same behaviour on both backends.
async fn exercise(tier: &Tier) {
    let big = data(40 << 20, 7); // above the multipart threshold on S3
    tier.put(
        "shards/big.bin",
        Box::pin(std::io::Cursor::new(big.clone())),
        big.len() as u64,
    )
    .await
    .unwrap();
    tier.put_bytes("shards/small.txt", b"hello".to_vec())
        .await
        .unwrap();
    tier.put_bytes("other/x.txt", b"x".to_vec()).await.unwrap();

    let head = tier.head("shards/big.bin").await.unwrap().unwrap();
    assert_eq!(head.size, big.len() as u64);
    assert!(tier.head("shards/missing").await.unwrap().is_none());

    let keys: Vec<String> = tier
        .list("shards/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, ["shards/big.bin", "shards/small.txt"]);

    let (size, sha) = tier.digest("shards/big.bin").await.unwrap();
    assert_eq!(
        (size, sha),
        (big.len() as u64, hex::encode(Sha256::digest(&big)))
    );
    assert_eq!(tier.get_bytes("shards/small.txt").await.unwrap(), b"hello");

    tier.copy("shards/small.txt", "copies/small.txt")
        .await
        .unwrap();
    assert_eq!(tier.get_bytes("copies/small.txt").await.unwrap(), b"hello");

    tier.delete("shards/small.txt").await.unwrap();
    tier.delete("shards/small.txt").await.unwrap(); // deleting twice is fine
    assert!(tier.head("shards/small.txt").await.unwrap().is_none());
    assert!(matches!(
        tier.get("shards/small.txt").await,
        Err(Error::NotFound { .. })
    ));

    let manifest = tier.build_manifest(4).await.unwrap();
    assert_eq!(manifest.objects.len(), 3);
    tier.write_manifest(&manifest).await.unwrap();
    assert_eq!(tier.read_manifest().await.unwrap().unwrap(), manifest);
    // The manifest is metadata, not data: a rebuilt manifest does not list it.
    assert_eq!(tier.build_manifest(4).await.unwrap(), manifest);

    let err = tier
        .put_bytes("a/../escape", b"x".to_vec())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidKey { .. }), "{err}");
}

#[tokio::test]
async fn filesystem_tier_offers_the_object_api() {
    let dir = tempfile::tempdir().unwrap();
    let tier = fs_tier(&dir.path().join("root")).await;
    exercise(&tier).await;
    assert!(!dir.path().join("escape").exists());
}

#[tokio::test]
async fn s3_tier_offers_the_object_api() {
    let server = MotoServer::start().unwrap();
    server.create_bucket("objects").await;
    exercise(&s3_tier(&server, "objects", Some(S3StorageClass::StandardIa)).await).await;
    let listed = s3_tier(&server, "objects", None)
        .await
        .list("")
        .await
        .unwrap();
    let big = listed.iter().find(|m| m.key == "shards/big.bin").unwrap();
    assert_eq!(big.storage_class.as_deref(), Some("STANDARD_IA"));
}

#[tokio::test]
async fn archived_objects_report_restoring_until_readable() {
    let server = MotoServer::start().unwrap();
    server.create_bucket("archive").await;
    let tier = s3_tier(&server, "archive", Some(S3StorageClass::Glacier)).await;
    tier.put_bytes("frozen.bin", b"cold bytes".to_vec())
        .await
        .unwrap();
    assert_eq!(
        tier.head("frozen.bin").await.unwrap().unwrap().readable,
        Readability::Archived
    );
    let err = match tier.get("frozen.bin").await {
        Err(e) => e,
        Ok(_) => panic!("an archived object must not be readable before a restore"),
    };
    match &err {
        Error::Restoring {
            storage_class,
            state,
            ..
        } => {
            assert_eq!(storage_class, "GLACIER");
            assert_eq!(*state, RestoreState::Requested);
        }
        other => panic!("expected Restoring, got {other}"),
    }
    assert!(err.to_string().contains("restoring"), "{err}");
    // The test server completes restores at once; a real one reports Restoring meanwhile.
    assert_ne!(
        tier.head("frozen.bin").await.unwrap().unwrap().readable,
        Readability::Archived
    );
    assert_eq!(tier.get_bytes("frozen.bin").await.unwrap(), b"cold bytes");
}

#[tokio::test]
async fn missing_bucket_and_wrong_credentials_are_clear_errors() {
    let server = MotoServer::start().unwrap();
    let tier = s3_tier(&server, "no-such-bucket", None).await;
    let err = tier.probe().await.unwrap_err();
    assert!(matches!(err, Error::TierNotFound { .. }), "{err}");
    assert!(err.to_string().contains("no-such-bucket"), "{err}");

    let locked = MotoServer::start_with_auth().unwrap();
    let tier = s3_tier(&locked, "any-bucket", None).await;
    let err = tier.probe().await.unwrap_err();
    assert!(matches!(err, Error::AccessDenied { .. }), "{err}");
    assert!(err.to_string().contains("AWS_ACCESS_KEY_ID"), "{err}");
}

#[tokio::test]
async fn filesystem_paths_never_leave_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"not yours").unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
    let tier = fs_tier(&root).await;

    for result in [
        tier.get("link/secret").await.map(|_| ()),
        tier.put_bytes("link/planted", b"x".to_vec()).await,
        tier.delete("link/secret").await,
    ] {
        let err = result.unwrap_err();
        assert!(matches!(err, Error::OutsideRoot { .. }), "{err}");
    }
    assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"not yours");
    assert!(!outside.join("planted").exists());

    std::os::unix::fs::symlink(outside.join("secret"), root.join("file-link")).unwrap();
    let err = tier.list("").await.unwrap_err();
    assert!(matches!(err, Error::OutsideRoot { .. }), "{err}");
}
