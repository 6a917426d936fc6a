//! `s3://` URIs end to end against a real S3 server (moto): prepare from an S3 object into an
//! S3 tier, train from it into S3 with checkpoints mirrored to S3 (preempted, then resumed
//! from S3 alone), inspect the model there, and serve it from S3 at `/v1/predict`.
//!
//! This binary holds a single test because it sets the process's AWS environment variables
//! (the worker reads its S3 settings from them, as in a pod).

mod common;
mod training_support;

use std::sync::atomic::AtomicBool;

use aigc_storage::testing::{ACCESS_KEY, MotoServer, SECRET_KEY};
use aigc_storage::{Location, MANIFEST_KEY, Tier};
use aigc_worker::prepare::{InputFormat, PrepareOptions, prepare, read_schema};
use aigc_worker::train::progress::Phase;
use aigc_worker::train::{Architecture, TrainOptions, train};
use common::{Client, loopback_args, start};
use serde_json::json;
use training_support::TempDir;

async fn tier(uri: &str, moto: &MotoServer) -> Tier {
    Tier::open(&Location::parse(uri).unwrap(), &moto.config(None))
        .await
        .unwrap()
}

fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f).join().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn prepare_train_inspect_and_serve_through_s3() {
    let moto = MotoServer::start().unwrap_or_else(|e| panic!("{e}"));
    let tmp = TempDir::new("s3-uris");
    // SAFETY: the only test in this binary; no other thread reads the environment yet.
    unsafe {
        std::env::set_var("AWS_ENDPOINT_URL", moto.endpoint());
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        std::env::remove_var("AWS_PROFILE");
        std::env::set_var("AIGC_CACHE_DIR", tmp.join("cache"));
    }
    for bucket in ["raw", "data", "models"] {
        moto.create_bucket(bucket).await;
    }
    let csv = training_support::shared_dataset("breast_cancer.csv");
    tier("s3://raw", &moto)
        .await
        .put_bytes("bc/breast_cancer.csv", std::fs::read(&csv).unwrap())
        .await
        .unwrap();
    let schema = training_support::breast_cancer_schema(tmp.path(), &csv);

    let prepare_into = |out: &'static str| {
        let schema = schema.clone();
        blocking(move || {
            prepare(&PrepareOptions {
                source: "s3://raw/bc/breast_cancer.csv".into(),
                format: InputFormat::Csv,
                schema: Some(read_schema(&schema).unwrap()),
                out: out.into(),
                drop_invalid_rows: true,
                dedupe: false,
                max_row_bytes: None,
                shard_bytes: 16 << 10,
            })
        })
    };
    let report = prepare_into("s3://data/bc/v1");
    assert!(report.succeeded(), "{report:?}");
    assert_eq!(report.rows_out, 569);
    let data = tier("s3://data/bc/v1", &moto).await;
    let manifest = data
        .read_manifest()
        .await
        .unwrap()
        .expect("a manifest in S3");
    assert_eq!(manifest.digest(), report.manifest_digest.clone().unwrap());
    assert!(manifest.objects.len() > 3, "several shards: {manifest:?}");
    let again = prepare_into("s3://data/bc/v1");
    assert!(
        again
            .error
            .as_deref()
            .unwrap()
            .contains("already holds a published version"),
        "{again:?}"
    );

    let options = TrainOptions {
        dataset: "s3://data/bc/v1".into(),
        architecture: Architecture::Mlp,
        out: "s3://models/bc/v1".into(),
        base_model: None,
        text_column: None,
        target: None,
        task: None,
        epochs: 15,
        batch_size: 32,
        lr: 1e-3,
        weight_decay: 0.01,
        seed: 5,
        checkpoint_every: 10,
        checkpoint_dir: None,
        resume: false,
        validation_fraction: 0.2,
        hidden: vec![32, 16],
        d_model: 64,
        layers: 2,
        heads: 4,
        block_size: 32,
        status_file: None,
        termination_message_path: tmp.join("train-log"),
        progress_listen: None,
    };
    // Preempted after its first step (as at SIGTERM): the checkpoint goes to S3. The resumed
    // run starts from an empty cache, so it can only continue from what S3 holds.
    let first = options.clone();
    let preempted = blocking(move || train(&first, &AtomicBool::new(true)));
    assert_eq!(preempted.phase, Phase::Preempted, "{preempted:?}");
    std::fs::remove_dir_all(aigc_worker::objects::cache_dir()).unwrap();
    let mut options = options;
    options.resume = true;
    let status = blocking(move || train(&options, &AtomicBool::new(false)));
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    assert_eq!(status.resumed_from_step, Some(1), "{status:?}");
    assert_eq!(status.model.as_deref(), Some("s3://models/bc/v1"));
    let models = tier("s3://models", &moto).await;
    let keys: Vec<String> = models
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert!(
        keys.contains(&"bc/v1/model.safetensors".to_string()),
        "{keys:?}"
    );
    assert!(keys.contains(&format!("bc/v1/{MANIFEST_KEY}")), "{keys:?}");
    assert!(
        keys.contains(&"bc/v1.checkpoints/latest".to_string()),
        "checkpoints are mirrored to S3: {keys:?}"
    );
    let checkpoints: Vec<&String> = keys
        .iter()
        .filter(|k| k.starts_with("bc/v1.checkpoints/step-"))
        .collect();
    assert_eq!(
        checkpoints.len(),
        2,
        "only the newest checkpoint is kept: {keys:?}"
    );

    let digest = status.manifest_digest.clone().unwrap();
    let found = blocking(|| {
        let local = aigc_worker::objects::local_copy("s3://models/bc/v1").unwrap();
        aigc_worker::inspect::inspect(&local, None).unwrap()
    });
    assert_eq!(found.manifest, "verified");
    assert_eq!(found.manifest_digest, digest);
    assert_eq!(found.architecture, "mlp");

    let mut args = loopback_args("s3://models/bc/v1".into());
    args.model_name = Some("bc".into());
    let server = start(args).await;
    let client = Client::new(&server);
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let values: Vec<f64> = lines
        .next()
        .unwrap()
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    let instance: serde_json::Map<String, serde_json::Value> = header[..30]
        .iter()
        .zip(&values)
        .map(|(h, v)| (h.to_string(), json!(v)))
        .collect();
    let reply = client
        .post("/v1/predict", &json!({ "instances": [instance] }))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.json()["predictions"],
        json!([0]),
        "the first row is malignant (0)"
    );

    // A tampered object in S3 is caught before anything is loaded.
    models
        .put_bytes("bc/v1/config.json", b"{}".to_vec())
        .await
        .unwrap();
    let error = blocking(|| {
        std::fs::remove_dir_all(aigc_worker::objects::cache_dir()).unwrap();
        aigc_worker::objects::local_copy("s3://models/bc/v1").unwrap_err()
    });
    assert!(
        error.to_string().contains("config.json") && error.to_string().contains("manifest"),
        "{error}"
    );
}
