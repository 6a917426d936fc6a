//! Tier migration throughput against the standard tools, side by side in one run:
//!
//! * 2 GiB in 1,000 objects between two directories: `migrate` (builds the manifest, copies,
//!   verifies every object's SHA-256 at the destination) versus `cp -r` followed by
//!   `sha256sum` of the copies;
//! * the same objects between two buckets of one local S3 server (moto): `migrate`
//!   (server-side copies verified by the server's SHA-256) versus `aws s3 cp --recursive`,
//!   in alternating rounds. A third contender, bare CopyObject calls that verify nothing,
//!   shows how fast the server lets any client go. Each line gives the server's and the
//!   client's CPU seconds: on two cores the server is the bottleneck.
//!
//! Run: `pip install awscli`, then `cargo bench -p aigc-storage --bench tiers` (`moto[server]`
//! comes from `scripts/install-test-deps.sh`); `--profile dev` reuses the test build
//! (dependencies are optimised there too). Data lives under /tmp and is removed afterwards.
//! Settings: `AIGC_BENCH_MIB` (total size, default 2048), `AIGC_BENCH_ROUNDS` (S3 rounds,
//! default 3), `AIGC_BENCH_CONCURRENCY` (copies at once, default 8), `AIGC_BENCH_ONLY`
//! (`fs` or `s3`).
//!
//! Not run by `cargo test` or CI.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use aigc_storage::migration::{MigrationOptions, migrate};
use aigc_storage::testing::{ACCESS_KEY, MotoServer, SECRET_KEY};
use aigc_storage::{Location, S3Config, Tier};
use futures::StreamExt;

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
        let path = root.join(object_key(i));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        rng.fill(&mut buf);
        std::fs::write(path, &buf).unwrap();
    }
}

fn object_key(i: usize) -> String {
    format!("shard-{:02}/part-{i:04}.bin", i % 10)
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
    let concurrency = std::env::var("AIGC_BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let options = MigrationOptions {
        concurrency,
        ..MigrationOptions::default()
    };
    let none = S3Config::default();

    let from = open(&format!("file://{}", src.display()), &none).await;
    let only = std::env::var("AIGC_BENCH_ONLY").unwrap_or_default();
    if only != "s3" {
        filesystem_tiers(w, &from, &options, total).await;
    }
    if only != "fs" {
        let rounds = std::env::var("AIGC_BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3)
            .max(1);
        s3_buckets(&from, &options, total, rounds).await;
    }
}

/// Between two directories: `migrate` against `cp -r` + `sha256sum`.
async fn filesystem_tiers(w: &Path, from: &Tier, options: &MigrationOptions, total: u64) {
    let mib = total >> 20;
    let src = w.join("src");
    warm_page_cache(&src);
    let cp = run(Command::new("cp").arg("-r").arg(&src).arg(w.join("cp")));
    let sha = run(Command::new("sh").arg("-c").arg(format!(
        "find {} -type f -print0 | xargs -0 sha256sum > /dev/null",
        w.join("cp").display()
    )));
    std::fs::remove_dir_all(w.join("cp")).unwrap();
    warm_page_cache(&src);
    let to = open(
        &format!("file://{}/ours", w.display()),
        &S3Config::default(),
    )
    .await;
    let start = Instant::now();
    let report = migrate(from, &to, options, &|_| {}).await.unwrap();
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
}

/// One CopyObject per object from `bench-src/ds` to `bucket`, nothing else: what the server
/// allows any client at best.
async fn copy_only(client: &aws_sdk_s3::Client, bucket: &str, concurrency: usize) {
    let keys: Vec<String> = (0..OBJECTS).map(object_key).collect();
    futures::stream::iter(&keys)
        .for_each_concurrent(concurrency, |key| async move {
            client
                .copy_object()
                .bucket(bucket)
                .key(format!("ds/{key}"))
                .copy_source(format!("bench-src/ds/{key}"))
                .send()
                .await
                .expect("CopyObject");
        })
        .await;
}

/// CPU seconds of a process (`pid` or `self`): its own, and its waited-for children's.
fn cpu_seconds(pid: &str) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<f64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .map(|f| f.parse().unwrap_or(0.0))
                .collect()
        })
        .unwrap_or_default();
    // In clock ticks (USER_HZ, 100 on Linux).
    let ticks = |i: usize| fields.get(i).copied().unwrap_or(0.0) / 100.0;
    // utime, stime, cutime, cstime are fields 14-17 of the line, 11-14 after the name.
    (ticks(11) + ticks(12), ticks(13) + ticks(14))
}

/// Between two buckets of one local S3 server: `migrate` against `aws s3 cp --recursive` and
/// bare copies, rotating which goes first, each round into fresh buckets emptied afterwards
/// (moto keeps every object in memory).
async fn s3_buckets(from: &Tier, options: &MigrationOptions, total: u64, rounds: usize) {
    let mib = total >> 20;
    let server = MotoServer::start().expect("moto[server] is installed");
    server.create_bucket("bench-src").await;
    let config = server.config(None);
    let s3_src = open("s3://bench-src/ds", &config).await;
    migrate(from, &s3_src, options, &|_| {}).await.unwrap();
    let aws = |args: &[&str]| {
        run(Command::new("aws")
            .args(args)
            .args(["--only-show-errors", "--endpoint-url", &server.endpoint()])
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_DEFAULT_REGION", "us-east-1"))
    };
    let moto = server.pid().to_string();
    let client = server.client().await;
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let buckets = ["aws", "ours", "floor"].map(|who| format!("bench-{who}-{round}"));
        for bucket in &buckets {
            server.create_bucket(bucket).await;
        }
        let dst = open(&format!("s3://{}/ds", buckets[1]), &config).await;
        // (wall, server CPU, client CPU) of each contender.
        let mut runs = [(Duration::ZERO, 0.0, 0.0); 3];
        for turn in 0..3 {
            let who = (turn + round) % 3;
            let (server_cpu, own_cpu) = (cpu_seconds(&moto).0, cpu_seconds("self"));
            let start = Instant::now();
            match who {
                0 => {
                    let to = format!("s3://{}/ds/", buckets[0]);
                    aws(&["s3", "cp", "--recursive", "s3://bench-src/ds/", &to]);
                }
                1 => {
                    let report = migrate(&s3_src, &dst, options, &|_| {}).await.unwrap();
                    assert_eq!(report.copied, OBJECTS);
                }
                _ => copy_only(&client, &buckets[2], options.concurrency).await,
            }
            let (moto_after, own_after) = (cpu_seconds(&moto).0, cpu_seconds("self"));
            let client_cpu = match who {
                0 => own_after.1 - own_cpu.1,
                _ => own_after.0 - own_cpu.0,
            };
            runs[who] = (start.elapsed(), moto_after - server_cpu, client_cpu);
        }
        let ratio = runs[0].0.as_secs_f64() / runs[1].0.as_secs_f64();
        ratios.push(ratio);
        let describe = |(wall, server, client): (Duration, f64, f64)| {
            format!(
                "{wall:.2?} ({}, server CPU {server:.1} s, client CPU {client:.1} s)",
                rate(total, wall)
            )
        };
        println!(
            "s3 same server, round {}, {OBJECTS} objects, {mib} MiB:\n  aws s3 cp --recursive {}\n  \
             aigc migrate (server-side copy + verify) {}\n  \
             bare CopyObject calls, nothing verified (the server's floor) {}\n  throughput ratio {ratio:.2}x",
            round + 1,
            describe(runs[0]),
            describe(runs[1]),
            describe(runs[2]),
        );
        for bucket in &buckets {
            aws(&["s3", "rm", "--recursive", &format!("s3://{bucket}/")]);
        }
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "s3 same server: median throughput ratio over {rounds} round(s) {:.2}x",
        ratios[ratios.len() / 2]
    );
}
