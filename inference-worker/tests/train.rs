//! `aigc-worker train`: learning on real data, exact resume after SIGKILL and SIGTERM, loading
//! the output for inference, and failures that publish nothing.

mod training_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;

use aigc_worker::models::{CharTransformer, Mlp, Prediction};
use aigc_worker::prepare::{InputFormat, PrepareOptions, prepare};
use aigc_worker::train::progress::Phase;
use aigc_worker::train::{Architecture, TrainOptions, train};
use training_support::TempDir;

fn prepared_breast_cancer(tmp: &TempDir) -> PathBuf {
    let csv = training_support::shared_dataset("breast_cancer.csv");
    let schema = training_support::breast_cancer_schema(tmp.path(), &csv);
    let out = tmp.join("bc-data");
    let report = prepare(&PrepareOptions {
        source: csv.display().to_string(),
        format: InputFormat::Csv,
        schema: Some(aigc_worker::prepare::read_schema(&schema).unwrap()),
        out: out.display().to_string(),
        drop_invalid_rows: true,
        dedupe: false,
        max_row_bytes: None,
        shard_bytes: 16 << 10,
    });
    assert!(report.succeeded(), "{report:?}");
    out
}

fn prepared_corpus(tmp: &TempDir) -> PathBuf {
    let out = tmp.join("corpus-data");
    let report = prepare(&PrepareOptions {
        source: training_support::corpus().display().to_string(),
        format: InputFormat::Text,
        schema: None,
        out: out.display().to_string(),
        drop_invalid_rows: true,
        dedupe: false,
        max_row_bytes: None,
        shard_bytes: 64 << 20,
    });
    assert!(report.succeeded(), "{report:?}");
    out
}

fn options(dataset: &Path, architecture: Architecture, out: &Path) -> TrainOptions {
    TrainOptions {
        dataset: dataset.display().to_string(),
        architecture,
        out: out.display().to_string(),
        base_model: None,
        text_column: None,
        target: None,
        task: None,
        epochs: 30,
        batch_size: 32,
        lr: 1e-3,
        weight_decay: 0.01,
        seed: 7,
        checkpoint_every: 0,
        checkpoint_dir: None,
        resume: false,
        validation_fraction: 0.2,
        hidden: vec![32, 16],
        d_model: 64,
        layers: 2,
        heads: 4,
        block_size: 32,
        status_file: None,
        termination_message_path: out.with_extension("termination-log"),
        progress_listen: None,
    }
}

fn never() -> AtomicBool {
    AtomicBool::new(false)
}

#[test]
fn mlp_classifies_breast_cancer_and_serves_predictions() {
    let tmp = TempDir::new("train-mlp");
    let data = prepared_breast_cancer(&tmp);
    let out = tmp.join("model");
    let mut o = options(&data, Architecture::Mlp, &out);
    o.status_file = Some(tmp.join("status.json"));
    let status = train(&o, &never());
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    assert_eq!(status.metric_name, "accuracy");
    let accuracy = status.metric.unwrap();
    assert!(accuracy >= 0.93, "validation accuracy {accuracy}");
    assert_eq!(status.device, "cpu");

    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.join("status.json")).unwrap()).unwrap();
    assert_eq!(on_disk["phase"], "Succeeded");
    assert_eq!(on_disk["progress"], 1.0);
    let message: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&o.termination_message_path).unwrap()).unwrap();
    assert_eq!(
        message["manifestDigest"],
        status.manifest_digest.clone().unwrap().as_str()
    );

    let manifest =
        aigc_storage::Manifest::from_json(&std::fs::read(out.join("manifest.json")).unwrap())
            .unwrap();
    let keys: Vec<&str> = manifest.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "config.json",
            "loss.svg",
            "metrics.json",
            "model.safetensors"
        ]
    );
    assert!(
        std::fs::read_to_string(out.join("loss.svg"))
            .unwrap()
            .contains("<svg")
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architecture"], "mlp");
    assert_eq!(config["task"], "classification");
    assert_eq!(config["labels"], serde_json::json!(["0", "1"]));
    assert_eq!(config["features"].as_array().unwrap().len(), 30);
    let history: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(history.len(), 30);
    assert!(history[29]["trainLoss"].as_f64() < history[0]["trainLoss"].as_f64());

    // A server loads the directory and predicts rows given as JSON objects.
    let model = Mlp::load(&out, &candle_core::Device::Cpu).unwrap();
    let csv =
        std::fs::read_to_string(training_support::shared_dataset("breast_cancer.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let (rows, labels): (Vec<_>, Vec<_>) = lines
        .map(|l| {
            let values: Vec<&str> = l.split(',').collect();
            let row: serde_json::Map<String, serde_json::Value> = header[..30]
                .iter()
                .zip(&values)
                .map(|(h, v)| (h.to_string(), serde_json::json!(v.parse::<f64>().unwrap())))
                .collect();
            (row, values[30].to_string())
        })
        .unzip();
    let predictions = model.predict(&rows).unwrap();
    let correct = predictions
        .iter()
        .zip(&labels)
        .filter(|(p, l)| matches!(p, Prediction::Class { label, .. } if label == *l))
        .count();
    assert!(
        correct as f64 / rows.len() as f64 >= 0.93,
        "{correct} of {}",
        rows.len()
    );
    let mut missing = rows[0].clone();
    missing.remove("mean_area");
    let err = model.predict(&[missing]).unwrap_err().to_string();
    assert!(
        err.starts_with("instance 0, column \"mean_area\": missing"),
        "{err}"
    );
}

#[test]
fn mlp_regression_reports_rmse_in_target_units() {
    let tmp = TempDir::new("train-reg");
    let data = prepared_breast_cancer(&tmp);
    let out = tmp.join("model");
    let mut o = options(&data, Architecture::Mlp, &out);
    o.target = Some("mean_area".into());
    o.epochs = 20;
    let status = train(&o, &never());
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    assert_eq!(status.metric_name, "rmse");
    // mean_area spans roughly 140..2500 with a standard deviation near 350; the radius and
    // perimeter features determine it closely.
    let rmse = status.metric.unwrap();
    assert!(rmse < 100.0, "rmse {rmse}");
    let model = Mlp::load(&out, &candle_core::Device::Cpu).unwrap();
    assert_eq!(model.config().features.len(), 30);
    assert!(model.config().target_std.unwrap() > 100.0);
}

#[test]
fn char_transformer_beats_the_unigram_baseline_and_generates() {
    let tmp = TempDir::new("train-char");
    let data = prepared_corpus(&tmp);
    let out = tmp.join("model");
    let mut o = options(&data, Architecture::CharTransformer, &out);
    o.epochs = 8;
    o.lr = 3e-3;
    o.validation_fraction = 0.1;
    let status = train(&o, &never());
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    let (loss, baseline) = (status.val_loss.unwrap(), status.baseline_val_loss.unwrap());
    assert!(
        loss < baseline,
        "validation loss {loss} is not below the unigram baseline {baseline}"
    );
    assert_eq!(status.metric_name, "perplexity");
    assert!((status.metric.unwrap() - loss.exp()).abs() < 1e-9);

    let model = CharTransformer::load(&out, &candle_core::Device::Cpu).unwrap();
    let a = model.generate("The keeper ", 40, 0.8, 1).unwrap();
    let b = model.generate("The keeper ", 40, 0.8, 1).unwrap();
    assert_eq!(a, b, "sampling is seeded");
    assert_eq!(a.chars().count(), 40);
    assert!(a.chars().all(|c| model.config().vocab.contains(&c)));
    let err = model.generate("€", 5, 0.0, 1).unwrap_err().to_string();
    assert_eq!(err, "character '€' is not in the model's vocabulary");
    assert!(
        Mlp::load(&out, &candle_core::Device::Cpu)
            .unwrap_err()
            .to_string()
            .contains("not an MLP")
    );
}

fn worker(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_aigc-worker"));
    c.arg("train")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    c
}

fn train_args<'a>(data: &'a str, out: &'a str, log: &'a str) -> Vec<&'a str> {
    vec![
        "--dataset",
        data,
        "--architecture",
        "mlp",
        "--out",
        out,
        "--epochs",
        "120",
        "--batch-size",
        "16",
        "--lr",
        "0.001",
        "--seed",
        "42",
        "--checkpoint-every",
        "7",
        "--hidden",
        "64,32",
        "--termination-message-path",
        log,
    ]
}

/// Wait until the run has written its first complete checkpoint (`latest` is written last).
fn wait_for_checkpoint(child: &mut std::process::Child, dir: &Path) {
    while !dir.join("latest").exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("training exited ({status}) before its first checkpoint");
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn resume_after_sigkill_and_sigterm_matches_an_uninterrupted_run() {
    let tmp = TempDir::new("train-resume");
    let data = prepared_breast_cancer(&tmp);
    let data = data.to_str().unwrap();
    let s = |p: &str| tmp.join(p).display().to_string();

    let (straight, straight_log) = (s("straight"), s("straight.log"));
    let done = worker(&train_args(data, &straight, &straight_log))
        .output()
        .unwrap();
    assert!(done.status.success());
    let expected = std::fs::read(tmp.join("straight/model.safetensors")).unwrap();

    // SIGKILL after the first checkpoint, then resume.
    let (killed, killed_log) = (s("killed"), s("killed.log"));
    let mut child = worker(&train_args(data, &killed, &killed_log))
        .spawn()
        .unwrap();
    wait_for_checkpoint(&mut child, &tmp.join("killed.checkpoints"));
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run was still going when killed");
    assert!(
        !Path::new(&killed).exists(),
        "nothing is published by a killed run"
    );
    let mut args = train_args(data, &killed, &killed_log);
    args.push("--resume");
    let resumed = worker(&args).output().unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stdout)
    );
    let result: serde_json::Value = serde_json::from_slice(&resumed.stdout).unwrap();
    assert!(result["resumedFromStep"].as_u64().unwrap() >= 7, "{result}");
    assert_eq!(
        std::fs::read(tmp.join("killed/model.safetensors")).unwrap(),
        expected
    );

    // SIGTERM: a checkpoint at the current step, exit 143, then resume.
    let (termed, termed_log) = (s("termed"), s("termed.log"));
    let mut child = worker(&train_args(data, &termed, &termed_log))
        .spawn()
        .unwrap();
    wait_for_checkpoint(&mut child, &tmp.join("termed.checkpoints"));
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let stopped = child.wait_with_output().unwrap();
    assert_eq!(stopped.status.code(), Some(143));
    let message: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&termed_log).unwrap()).unwrap();
    assert_eq!(message["phase"], "Preempted");
    let preempted_at = message["checkpointStep"].as_u64().unwrap();
    assert_eq!(
        message["step"].as_u64().unwrap(),
        preempted_at,
        "the checkpoint holds the last step"
    );
    let mut args = train_args(data, &termed, &termed_log);
    args.push("--resume");
    let resumed = worker(&args).output().unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stdout)
    );
    let result: serde_json::Value = serde_json::from_slice(&resumed.stdout).unwrap();
    assert_eq!(result["resumedFromStep"].as_u64(), Some(preempted_at));
    assert_eq!(
        std::fs::read(tmp.join("termed/model.safetensors")).unwrap(),
        expected
    );

    // Resuming with different settings is refused with the difference named.
    let (other, other_log, ckpt) = (s("other"), s("other.log"), s("killed.checkpoints"));
    let mut args = train_args(data, &other, &other_log);
    let seed = args.iter().position(|a| *a == "--seed").unwrap() + 1;
    args[seed] = "7";
    args.extend(["--resume", "--checkpoint-dir", &ckpt]);
    let refused = worker(&args).output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let result: serde_json::Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert!(
        result["error"]
            .as_str()
            .unwrap()
            .contains("seed: checkpoint 42 vs now 7"),
        "{result}"
    );
    assert!(!Path::new(&other).exists());
}

#[test]
fn bad_inputs_fail_clearly_and_publish_nothing() {
    let tmp = TempDir::new("train-bad");
    let table = prepared_breast_cancer(&tmp);
    let text = prepared_corpus(&tmp);
    let out = tmp.join("model");
    let fail = |o: &TrainOptions| {
        let status = train(o, &never());
        assert_eq!(status.phase, Phase::Failed, "{status:?}");
        assert!(!out.exists(), "nothing is published");
        status.error.unwrap()
    };

    let err = fail(&options(&text, Architecture::Mlp, &out));
    assert!(err.contains("is a text dataset"), "{err}");
    let err = fail(&options(&table, Architecture::CharTransformer, &out));
    assert!(err.contains("is a tabular dataset"), "{err}");

    let mut o = options(&table, Architecture::Mlp, &out);
    o.target = Some("nope".into());
    let err = fail(&o);
    assert!(
        err.contains("--target \"nope\" is not a column") && err.contains("mean_radius"),
        "{err}"
    );

    let mut o = options(&table, Architecture::Mlp, &out);
    o.target = Some("mean_area".into());
    o.task = Some(aigc_worker::models::mlp::Task::Regression);
    o.lr = 1e12;
    o.epochs = 3;
    let err = fail(&o);
    assert!(err.contains("the training loss became"), "{err}");

    // Tampered data is caught by the manifest check.
    let shard = table.join("data/part-00000.csv");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[40] ^= 1;
    std::fs::write(&shard, bytes).unwrap();
    let err = fail(&options(&table, Architecture::Mlp, &out));
    assert!(err.contains("but the manifest lists"), "{err}");

    let err = fail(&options(&tmp.join("absent"), Architecture::Mlp, &out));
    assert!(err.contains("manifest.json"), "{err}");
}

#[test]
fn char_transformer_preempted_in_process_resumes_to_identical_weights() {
    let tmp = TempDir::new("train-char-resume");
    let data = prepared_corpus(&tmp);
    let small = |out: &Path| {
        let mut o = options(&data, Architecture::CharTransformer, out);
        o.epochs = 2;
        o.d_model = 32;
        o.layers = 1;
        o.heads = 2;
        o.block_size = 16;
        o.validation_fraction = 0.1;
        o
    };
    let straight = tmp.join("straight");
    assert_eq!(train(&small(&straight), &never()).phase, Phase::Succeeded);

    // A stop request (what SIGTERM sets) checkpoints after the current step and publishes nothing.
    let resumed = tmp.join("resumed");
    let stopped = train(&small(&resumed), &AtomicBool::new(true));
    assert_eq!(stopped.phase, Phase::Preempted, "{stopped:?}");
    assert_eq!((stopped.step, stopped.checkpoint_step), (1, Some(1)));
    assert!(!resumed.exists());
    let mut o = small(&resumed);
    o.resume = true;
    let done = train(&o, &never());
    assert_eq!(done.phase, Phase::Succeeded, "{done:?}");
    assert_eq!(done.resumed_from_step, Some(1));
    assert_eq!(
        std::fs::read(resumed.join("model.safetensors")).unwrap(),
        std::fs::read(straight.join("model.safetensors")).unwrap()
    );
}

/// `GET /progress` over plain HTTP/1.1 with std only: the body, or `None` while nothing
/// answers.
fn get_progress(addr: std::net::SocketAddr) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .write_all(b"GET /progress HTTP/1.1\r\nHost: worker\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    Some(serde_json::from_str(body).unwrap())
}

#[test]
fn progress_endpoint_serves_the_live_status_while_training() {
    use aigc_worker::train::progress::ProgressServer;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    let tmp = TempDir::new("train-progress");
    let data = prepared_breast_cancer(&tmp);
    let out = tmp.join("model");
    let mut o = options(&data, Architecture::Mlp, &out);
    o.epochs = 1_000_000;
    let server = ProgressServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let status = std::thread::scope(|scope| {
        let run = scope.spawn(|| aigc_worker::train::train_with_progress(&o, &stop, Some(&server)));
        // Poll until training is visibly under way: running, with steps taken.
        let live = loop {
            assert!(!run.is_finished(), "training ended before it was observed");
            if let Some(p) = get_progress(addr)
                && p["phase"] == "Running"
                && p["step"].as_u64().unwrap_or(0) > 0
            {
                break p;
            }
            std::thread::yield_now();
        };
        assert_eq!(live["architecture"], "mlp");
        assert_eq!(live["epochs"], 1_000_000);
        assert!(live["totalSteps"].as_u64().unwrap() > live["step"].as_u64().unwrap());
        assert!(live["progress"].as_f64().unwrap() < 1.0);
        stop.store(true, Ordering::SeqCst);
        run.join().unwrap()
    });
    assert_eq!(status.phase, Phase::Preempted, "{status:?}");
    let last = get_progress(addr).unwrap();
    assert_eq!(last["phase"], "Preempted");
    assert_eq!(last["step"], status.step);
    drop(server);
    assert!(
        get_progress(addr).is_none(),
        "the server stops with training"
    );
}
