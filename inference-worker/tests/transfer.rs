//! `aigc-worker transfer` as a process: exit codes, bad input, and SIGKILL at random points.

use std::path::Path;
use std::process::Stdio;

use aigc_storage::testing::{ACCESS_KEY, MotoServer, SECRET_KEY};
use aigc_storage::{Location, Manifest, S3Config, Tier};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn worker(endpoint: Option<&str>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_aigc-worker"));
    cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_PROFILE")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null());
    if let Some(endpoint) = endpoint {
        cmd.env("AWS_ENDPOINT_URL", endpoint);
    }
    cmd
}

async fn open(uri: &str, config: &S3Config) -> Tier {
    Tier::open(&Location::parse(uri).unwrap(), config)
        .await
        .unwrap()
}

fn fill_dir(root: &Path, objects: usize, big: bool) {
    for i in 0..objects {
        let path = root.join(format!("d{}/obj-{i:03}.bin", i % 7));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let len = 512 + fastrand::usize(..4096);
        let bytes: Vec<u8> = (0..len).map(|_| fastrand::u8(..)).collect();
        std::fs::write(path, bytes).unwrap();
    }
    if big {
        // Above the multipart threshold, so a kill can leave an unfinished upload behind.
        let bytes: Vec<u8> = (0..(17 << 20)).map(|i: usize| (i % 251) as u8).collect();
        std::fs::write(root.join("big.bin"), bytes).unwrap();
    }
}

/// Every manifest object that is not intact at the source must be intact at the
/// destination: a killed transfer may leave work undone but must never lose data.
async fn assert_nothing_lost(manifest: &Manifest, from: &Tier, to: &Tier) {
    let mut source_incomplete = false;
    for entry in &manifest.objects {
        if from.verify(entry).await.is_err() {
            source_incomplete = true;
        }
    }
    if source_incomplete {
        for entry in &manifest.objects {
            to.verify(entry)
                .await
                .unwrap_or_else(|e| panic!("source deleted before the copy was verified: {e}"));
        }
    }
}

#[tokio::test]
async fn transfer_moves_a_directory_to_s3_and_exits_zero() {
    let server = MotoServer::start().unwrap();
    server.create_bucket("cold").await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("hot");
    fill_dir(&src, 25, false);
    let config = server.config(None);
    let manifest = open(&format!("file://{}", src.display()), &config)
        .await
        .build_manifest(4)
        .await
        .unwrap();

    let out = worker(Some(&server.endpoint()))
        .args(["transfer", "--from", &format!("file://{}", src.display())])
        .args([
            "--to",
            "s3://cold/ds/v1",
            "--delete-source",
            "--concurrency",
            "3",
        ])
        .args([
            "--bandwidth-limit",
            "100000000",
            "--storage-class",
            "STANDARD_IA",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("verified 25 objects"), "{stdout}");
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["manifestDigest"], manifest.digest().as_str());
    assert_eq!(summary["objects"], 25);
    assert_eq!(summary["sourceDeleted"], true);

    let to = open("s3://cold/ds/v1", &config).await;
    assert_eq!(to.read_manifest().await.unwrap().unwrap(), manifest);
    for entry in &manifest.objects {
        to.verify(entry).await.unwrap();
    }
    assert!(
        !src.exists() || walk_count(&src) == 0,
        "source files remain"
    );
}

fn walk_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        walk_count(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn bad_input_fails_clearly_and_touches_nothing() {
    let server = MotoServer::start().unwrap();
    let locked = MotoServer::start_with_auth().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("hot");
    fill_dir(&src, 5, false);
    let linked = dir.path().join("linked");
    std::fs::create_dir_all(&linked).unwrap();
    std::fs::write(dir.path().join("private.txt"), b"not in any tier").unwrap();
    std::os::unix::fs::symlink(dir.path().join("private.txt"), linked.join("escape")).unwrap();
    let from = format!("file://{}", src.display());
    let warm = format!("file://{}/warm", dir.path().display());

    let cases: [(&[&str], Option<&str>, &str); 6] = [
        (
            &["--to", "s3://no-such-bucket/x"],
            Some(&server.endpoint()),
            "does not exist",
        ),
        (
            &["--to", "s3://some-bucket/x"],
            Some(&locked.endpoint()),
            "denied",
        ),
        (&["--to", "file:///tmp/../etc"], None, "'..'"),
        (&["--to", "file://relative/dir"], None, "absolute"),
        (
            &["--to", &warm, "--storage-class", "COLD"],
            None,
            "STANDARD_IA",
        ),
        (&["--to", &warm, "--concurrency", "0"], None, "concurrency"),
    ];
    for (args, endpoint, expected) in cases {
        let out = worker(endpoint)
            .args(["transfer", "--from", &from])
            .args(args)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let out = worker(None)
        .args([
            "transfer",
            "--from",
            &format!("file://{}", linked.display()),
            "--to",
            &warm,
        ])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("outside the tier root"), "{stderr}");

    assert_eq!(walk_count(&src), 5, "the source must be untouched");
    assert!(!dir.path().join("warm").exists(), "nothing may be written");
}

/// SIGKILL the transfer at 20 random points of a 200-object migration with
/// `--delete-source`, rerun each time, then compare the destination with the source manifest.
#[tokio::test]
async fn sigkill_at_random_points_then_rerun_loses_nothing() {
    let server = MotoServer::start().unwrap();
    server.create_bucket("dest").await;
    let seed = std::env::var("AIGC_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("fault seed {seed} (set AIGC_FAULT_SEED to replay)");
    fastrand::seed(seed);
    let config = server.config(None);

    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        // Half the rounds go to S3 with one multipart object, half between directories.
        let to_s3 = round % 2 == 1;
        fill_dir(&src, 200, to_s3);
        let from_uri = format!("file://{}", src.display());
        let to_uri = if to_s3 {
            format!("s3://dest/round-{round}")
        } else {
            format!("file://{}/dst", dir.path().display())
        };
        let from = open(&from_uri, &config).await;
        let to = open(&to_uri, &config).await;
        let manifest = from.build_manifest(4).await.unwrap();
        let lines_total = 2 * manifest.objects.len() + 1;
        let kill_after = fastrand::usize(..lines_total);

        let mut child = worker(Some(&server.endpoint()))
            .args([
                "transfer",
                "--from",
                &from_uri,
                "--to",
                &to_uri,
                "--delete-source",
            ])
            .args(["--concurrency", "4"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = 0;
        while seen < kill_after && lines.next_line().await.unwrap().is_some() {
            seen += 1;
        }
        child.kill().await.unwrap(); // SIGKILL
        eprintln!("round {round}: killed after {seen} progress lines (to {to_uri})");
        assert_nothing_lost(&manifest, &from, &to).await;

        let out = worker(Some(&server.endpoint()))
            .args([
                "transfer",
                "--from",
                &from_uri,
                "--to",
                &to_uri,
                "--delete-source",
            ])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "round {round}: rerun failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(to.read_manifest().await.unwrap().unwrap(), manifest);
        for entry in &manifest.objects {
            to.verify(entry).await.unwrap();
        }
        let dest_keys: Vec<String> = to
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(dest_keys.len(), manifest.objects.len() + 2, "{dest_keys:?}"); // + manifest, journal
        assert_eq!(walk_count(&src), 0, "round {round}: source not deleted");
        if to_s3 {
            let uploads = server
                .client()
                .await
                .list_multipart_uploads()
                .bucket("dest")
                .prefix(format!("round-{round}/"))
                .send()
                .await
                .unwrap();
            assert!(
                uploads.uploads().is_empty(),
                "round {round}: orphaned multipart upload"
            );
        } else {
            let partial = walk_names(&dir.path().join("dst"))
                .into_iter()
                .filter(|n| n.starts_with(aigc_storage::fs::PARTIAL_PREFIX))
                .count();
            assert_eq!(partial, 0, "round {round}: partial files left");
        }
    }
}

fn walk_names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().is_dir() {
            out.extend(walk_names(&entry.path()));
        } else {
            out.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    out
}
