//! `aigc-worker serve` with the models `aigc-worker train` writes: an MLP trained on the
//! breast-cancer data answering KServe v1 `/v1/predict` over HTTP (and refusing bad
//! instances with the column named), and a char-transformer behind `/v1/completions`.

mod common;
mod training_support;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use aigc_worker::models::CharTransformer;
use aigc_worker::prepare::{InputFormat, PrepareOptions, prepare, read_schema};
use aigc_worker::train::progress::Phase;
use aigc_worker::train::{Architecture, TrainOptions, train};
use common::{Client, loopback_args, start};
use serde_json::{Map, Value, json};
use training_support::TempDir;

fn prepared(tmp: &TempDir, source: &Path, format: InputFormat, schema: Option<PathBuf>) -> PathBuf {
    let out = tmp.join("data");
    let report = prepare(&PrepareOptions {
        source: source.display().to_string(),
        format,
        schema: schema.map(|s| read_schema(&s).unwrap()),
        out: out.display().to_string(),
        drop_invalid_rows: true,
        dedupe: false,
        max_row_bytes: None,
        shard_bytes: 64 << 20,
    });
    assert!(report.succeeded(), "{report:?}");
    out
}

fn trained(tmp: &TempDir, dataset: &Path, architecture: Architecture, epochs: u64) -> PathBuf {
    trained_for(tmp, dataset, architecture, epochs, None)
}

fn trained_for(
    tmp: &TempDir,
    dataset: &Path,
    architecture: Architecture,
    epochs: u64,
    target: Option<&str>,
) -> PathBuf {
    let out = tmp.join("model");
    let options = TrainOptions {
        dataset: dataset.display().to_string(),
        architecture,
        out: out.display().to_string(),
        base_model: None,
        text_column: None,
        target: target.map(str::to_string),
        task: None,
        epochs,
        batch_size: 32,
        lr: 1e-3,
        weight_decay: 0.01,
        seed: 3,
        checkpoint_every: 0,
        checkpoint_dir: None,
        resume: false,
        validation_fraction: 0.2,
        hidden: vec![32, 16],
        d_model: 32,
        layers: 1,
        heads: 2,
        block_size: 16,
        status_file: None,
        termination_message_path: tmp.join("termination-log"),
        progress_listen: None,
    };
    let status = train(&options, &AtomicBool::new(false));
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    out
}

/// The breast-cancer rows as KServe instances (feature columns only) and their labels.
fn breast_cancer_instances(csv: &Path) -> (Vec<Map<String, Value>>, Vec<i64>) {
    let text = std::fs::read_to_string(csv).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let target = header.len() - 1;
    lines
        .map(|line| {
            let values: Vec<&str> = line.split(',').collect();
            let instance = header[..target]
                .iter()
                .zip(&values)
                .map(|(h, v)| (h.to_string(), json!(v.parse::<f64>().unwrap())))
                .collect();
            (instance, values[target].parse::<i64>().unwrap())
        })
        .unzip()
}

#[tokio::test]
async fn mlp_predicts_breast_cancer_over_http_and_names_bad_columns() {
    let tmp = TempDir::new("serve-mlp");
    let csv = training_support::shared_dataset("breast_cancer.csv");
    let schema = training_support::breast_cancer_schema(tmp.path(), &csv);
    let data = prepared(&tmp, &csv, InputFormat::Csv, Some(schema));
    let model = trained(&tmp, &data, Architecture::Mlp, 20);

    let mut args = loopback_args(model);
    args.model_name = Some("bc".into());
    let server = start(args).await;
    let client = Client::new(&server);

    let models = client.get("/v1/models").await.json();
    let listed = &models["data"][0];
    assert_eq!(listed["id"], "bc");
    assert_eq!(listed["architecture"], "mlp");
    assert_eq!(listed["capability"], "prediction");
    assert_eq!(listed["target"], "diagnosis_benign");
    assert_eq!(listed["inputs"].as_array().unwrap().len(), 30);
    assert_eq!(
        listed["inputs"][3],
        json!({"name": "mean_area", "type": "number"})
    );

    let (instances, labels) = breast_cancer_instances(&csv);
    let reply = client
        .post("/v1/predict", &json!({ "instances": instances }))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let predictions = reply.json()["predictions"].as_array().unwrap().clone();
    assert_eq!(predictions.len(), labels.len());
    let correct = predictions
        .iter()
        .zip(&labels)
        .filter(|(p, l)| p.as_i64() == Some(**l))
        .count();
    assert!(
        correct as f64 / labels.len() as f64 >= 0.93,
        "{correct} of {} correct; first predictions {:?}",
        labels.len(),
        &predictions[..5]
    );

    // Numbers may come as numeric strings; null means "unknown".
    let mut loose = instances[0].clone();
    loose.insert("mean_radius".into(), json!("17.99"));
    loose.insert("mean_texture".into(), Value::Null);
    let reply = client
        .post(
            "/v1/predict",
            &json!({ "model": "bc", "instances": [loose] }),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    let mut missing = instances[1].clone();
    missing.remove("mean_area");
    let reply = client
        .post(
            "/v1/predict",
            &json!({ "instances": [instances[0], missing] }),
        )
        .await;
    assert_eq!(reply.status, 422, "{}", reply.text());
    let error = &reply.json()["error"];
    assert_eq!(error["param"], "instances[1].mean_area");
    assert!(
        error["message"].as_str().unwrap().contains("missing"),
        "{error}"
    );

    let mut wrong = instances[0].clone();
    wrong.insert("mean_smoothness".into(), json!("smooth"));
    let reply = client
        .post("/v1/predict", &json!({ "instances": [wrong] }))
        .await;
    assert_eq!(reply.status, 422, "{}", reply.text());
    let error = &reply.json()["error"];
    assert_eq!(error["param"], "instances[0].mean_smoothness");
    assert!(
        error["message"].as_str().unwrap().contains("\"smooth\""),
        "{error}"
    );

    let reply = client.post_raw("/v1/predict", "{\"instances\": [").await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    let reply = client
        .post("/v1/predict", &json!({ "instances": [1, 2] }))
        .await;
    assert_eq!(reply.status, 422, "{}", reply.text());
    assert_eq!(reply.json()["error"]["param"], "instances[0]");
    let reply = client
        .post("/v1/predict", &json!({ "instances": [] }))
        .await;
    assert_eq!(reply.status, 422, "{}", reply.text());
    assert_eq!(reply.json()["error"]["param"], "instances");
    let reply = client
        .post(
            "/v1/predict",
            &json!({ "model": "other", "instances": instances[..1] }),
        )
        .await;
    assert_eq!(reply.status, 404, "{}", reply.text());
    let reply = client
        .post("/v1/completions", &json!({ "model": "bc", "prompt": "hi" }))
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(reply.text().contains("/v1/predict"), "{}", reply.text());
}

#[tokio::test]
async fn mlp_regression_predicts_numbers_in_target_units() {
    let tmp = TempDir::new("serve-reg");
    let csv = training_support::shared_dataset("breast_cancer.csv");
    let schema = training_support::breast_cancer_schema(tmp.path(), &csv);
    let data = prepared(&tmp, &csv, InputFormat::Csv, Some(schema));
    let model = trained_for(&tmp, &data, Architecture::Mlp, 20, Some("mean_area"));
    let server = start(loopback_args(model)).await;
    let client = Client::new(&server);
    let listed = client.get("/v1/models").await.json();
    assert_eq!(listed["data"][0]["target"], "mean_area");

    let (mut instances, labels) = breast_cancer_instances(&csv);
    instances.truncate(100);
    let actual: Vec<f64> = instances
        .iter()
        .map(|i| i["mean_area"].as_f64().unwrap())
        .collect();
    let mut inputs = instances.clone();
    for (instance, label) in inputs.iter_mut().zip(&labels) {
        instance.remove("mean_area");
        instance.insert("diagnosis_benign".into(), json!(label));
    }
    let reply = client
        .post("/v1/predict", &json!({ "instances": inputs }))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let predicted: Vec<f64> = reply.json()["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().expect("regression predictions are numbers"))
        .collect();
    // mean_area has a standard deviation near 350; radius and perimeter determine it closely.
    let rmse = (predicted
        .iter()
        .zip(&actual)
        .map(|(p, a)| (p - a).powi(2))
        .sum::<f64>()
        / actual.len() as f64)
        .sqrt();
    assert!(rmse < 120.0, "rmse {rmse} over HTTP");
}

#[tokio::test]
async fn char_transformer_completes_text_with_sampling_settings() {
    let tmp = TempDir::new("serve-char");
    let data = prepared(&tmp, &training_support::corpus(), InputFormat::Text, None);
    let model_dir = trained(&tmp, &data, Architecture::CharTransformer, 1);
    let reference = CharTransformer::load(&model_dir, &candle_core::Device::Cpu).unwrap();
    let server = start(loopback_args(model_dir)).await;
    let client = Client::new(&server);
    let model = server.model_id().to_string();

    let listed = client.get("/v1/models").await.json();
    assert_eq!(listed["data"][0]["architecture"], "char-transformer");
    assert_eq!(listed["data"][0]["capability"], "text-generation");

    let prompt = "The ";
    let greedy = client
        .post(
            "/v1/completions",
            &json!({"model": model, "prompt": prompt, "max_tokens": 40, "temperature": 0}),
        )
        .await;
    assert_eq!(greedy.status, 200, "{}", greedy.text());
    let body = greedy.json();
    assert_eq!(
        body["choices"][0]["text"],
        reference.generate(prompt, 40, 0.0, 0).unwrap(),
        "greedy decoding over HTTP matches the model run directly"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["prompt_tokens"], 4);
    assert_eq!(body["usage"]["completion_tokens"], 40);

    let sampled = |seed: u64| {
        json!({"model": model, "prompt": prompt, "max_tokens": 30,
               "temperature": 1.0, "top_k": 5, "seed": seed})
    };
    let a = client.post("/v1/completions", &sampled(11)).await.json();
    let b = client.post("/v1/completions", &sampled(11)).await.json();
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
    assert_eq!(
        a["choices"][0]["text"].as_str().unwrap().chars().count(),
        30
    );

    let reply = client
        .post(
            "/v1/completions",
            &json!({"model": model, "prompt": "\u{1F600}", "max_tokens": 5}),
        )
        .await;
    assert_eq!(reply.status, 422, "{}", reply.text());
    assert_eq!(reply.json()["error"]["param"], "prompt");
    let reply = client
        .post(
            "/v1/completions",
            &json!({"model": model, "prompt": prompt, "max_tokens": 0}),
        )
        .await;
    assert_eq!(reply.status, 422, "{}", reply.text());
    let reply = client
        .post("/v1/predict", &json!({"instances": [{"x": 1}]}))
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text());
}
