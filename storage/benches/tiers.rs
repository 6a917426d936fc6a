//! Tier migration throughput against the standard tools, side by side in one run:
//!
//! * 2 GiB in 1,000 objects between two directories: `migrate` (builds the manifest, copies,
//!   verifies every object's SHA-256 at the destination) versus `cp -r` followed by
//!   `sha256sum` of the copies;
//! * the same objects between two buckets of one local S3 server (moto): `migrate`
//!   (server-side copies verified by the server's SHA-256) versus `aws s3 cp --recursive`.
//!
//! Run: `pip install awscli`, then `cargo bench -p aigc-storage --bench tiers` (`moto[server]`
//! comes from `scripts/install-test-deps.sh`); `--profile dev` reuses the test build
//! (dependencies are optimised there too). Data lives under /tmp and is removed afterwards.
//! `AIGC_BENCH_MIB` changes the total size (default 2048).
//!
//! Not run by `cargo test` or CI. The S3 side is bounded by the local server: moto is one
//! Python process, and it computes the SHA-256 that verifies each server-side copy.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use aigc_storage::migration::{MigrationOptions, migrate};
use aigc_storage::testing::{ACCESS_KEY, MotoServer, SECRET_KEY};
use aigc_storage::{Location, S3Config, Tier};

const OBJECTS: usize = 1000;

async fn open(uri: &str, config: &S3Config) -> Tier {
    Tier::open(&Location::parse(uri).unwrap(), config)
        .await
        .unwrap()
}

fn write_objects(root: &Path, total: u64) {
    let size = (total / OBJECTS as u64) as usize;
    let mut rng = fastrand::Rng::with_seed(7);
    let mut buf = vec![0u8; size];
    for i in 0..OBJECTS {
        let path = root.join(format!("shard-{:02}/part-{i:04}.bin", i % 10));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        rng.fill(&mut buf);
        std::fs::write(path, &buf).unwrap();
    }
}

fn run(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

fn warm_page_cache(root: &Path) {
    run(Command::new("sh").arg("-c").arg(format!(
        "find {} -type f -exec cat {{}} + > /dev/null",
        root.display()
    )));
}

fn rate(bytes: u64, t: Duration) -> String {
    format!(
        "{:.0} MiB/s",
        bytes as f64 / (1 << 20) as f64 / t.as_secs_f64()
    )
}

#[tokio::main]
async fn main() {
    let mib: u64 = std::env::var("AIGC_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    let total = mib << 20;
    let work = tempfile::Builder::new()
        .prefix("aigc-bench-")
        .tempdir_in("/tmp")
        .unwrap();
    let w = work.path();
    let src = w.join("src");
    write_objects(&src, total);
    let options = MigrationOptions {
        concurrency: 8,
        ..MigrationOptions::default()
    };
    let none = S3Config::default();

    // Filesystem tiers.
    warm_page_cache(&src);
    let cp = run(Command::new("cp").arg("-r").arg(&src).arg(w.join("cp")));
    let sha = run(Command::new("sh").arg("-c").arg(format!(
        "find {} -type f -print0 | xargs -0 sha256sum > /dev/null",
        w.join("cp").display()
    )));
    std::fs::remove_dir_all(w.join("cp")).unwrap();
    warm_page_cache(&src);
    let from = open(&format!("file://{}", src.display()), &none).await;
    let to = open(&format!("file://{}/ours", w.display()), &none).await;
    let start = Instant::now();
    let report = migrate(&from, &to, &options, &|_| {}).await.unwrap();
    let ours_fs = start.elapsed();
    assert_eq!(report.objects, OBJECTS);
    std::fs::remove_dir_all(w.join("ours")).unwrap();
    let baseline_fs = cp + sha;
    println!(
        "filesystem, {OBJECTS} objects, {mib} MiB: cp -r {cp:.2?} + sha256sum {sha:.2?} = {baseline_fs:.2?} ({}); \
         aigc migrate (manifest + copy + verify) {ours_fs:.2?} ({}); ratio {:.2}x",
        rate(total, baseline_fs),
        rate(total, ours_fs),
        baseline_fs.as_secs_f64() / ours_fs.as_secs_f64()
    );

    // S3 buckets on one server.
    let server = MotoServer::start().expect("moto[server] is installed");
    for bucket in ["bench-src", "bench-aws", "bench-ours"] {
        server.create_bucket(bucket).await;
    }
    let config = server.config(None);
    let s3_src = open("s3://bench-src/ds", &config).await;
    migrate(&from, &s3_src, &options, &|_| {}).await.unwrap();
    let aws = run(Command::new("aws")
        .args(["s3", "cp", "--recursive", "--only-show-errors"])
        .args(["s3://bench-src/ds/", "s3://bench-aws/ds/"])
        .args(["--endpoint-url", &server.endpoint()])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_DEFAULT_REGION", "us-east-1"));
    let s3_dst = open("s3://bench-ours/ds", &config).await;
    let start = Instant::now();
    let report = migrate(&s3_src, &s3_dst, &options, &|_| {}).await.unwrap();
    let ours_s3 = start.elapsed();
    assert_eq!(report.objects, OBJECTS);
    println!(
        "s3 same server, {OBJECTS} objects, {mib} MiB: aws s3 cp --recursive {aws:.2?} ({}); \
         aigc migrate (server-side copy + verify) {ours_s3:.2?} ({}); throughput ratio {:.2}x",
        rate(total, aws),
        rate(total, ours_s3),
        aws.as_secs_f64() / ours_s3.as_secs_f64()
    );
}
