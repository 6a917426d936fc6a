//! Fine-tuning (`train --base-model`): a classification head on frozen all-MiniLM-L6-v2
//! embeddings of a small labelled text set (`tests/data/topics.jsonl`, cooking vs sport),
//! served at `/v1/predict` with text in and at `/v1/embeddings`.

mod common;
mod training_support;

use std::path::Path;
use std::sync::atomic::AtomicBool;

use aigc_worker::prepare::{InputFormat, PrepareOptions, prepare, read_schema};
use aigc_worker::train::progress::Phase;
use aigc_worker::train::{Architecture, TrainOptions, train};
use common::{Client, loopback_args, minilm_dir, start};
use serde_json::json;
use training_support::TempDir;

fn topics() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/topics.jsonl")
}

#[tokio::test(flavor = "multi_thread")]
async fn head_on_minilm_classifies_unseen_sentences_and_serves_embeddings() {
    let tmp = TempDir::new("finetune");
    let schema = tmp.join("schema.yaml");
    std::fs::write(
        &schema,
        "columns:\n  - {name: text, type: string, required: true}\n  - {name: topic, type: string, required: true}\n",
    )
    .unwrap();
    let data = tmp.join("data");
    let report = prepare(&PrepareOptions {
        source: topics().display().to_string(),
        format: InputFormat::Jsonl,
        schema: Some(read_schema(&schema).unwrap()),
        out: data.display().to_string(),
        drop_invalid_rows: true,
        dedupe: false,
        max_row_bytes: None,
        shard_bytes: 64 << 20,
    });
    assert!(report.succeeded(), "{report:?}");
    let out = tmp.join("classifier");
    let options = TrainOptions {
        dataset: data.display().to_string(),
        architecture: Architecture::Mlp,
        out: out.display().to_string(),
        base_model: Some(minilm_dir().display().to_string()),
        text_column: None,
        target: None,
        task: None,
        epochs: 40,
        batch_size: 8,
        lr: 3e-3,
        weight_decay: 0.01,
        seed: 2,
        checkpoint_every: 0,
        checkpoint_dir: None,
        resume: false,
        validation_fraction: 0.25,
        hidden: vec![32],
        d_model: 64,
        layers: 2,
        heads: 4,
        block_size: 32,
        status_file: None,
        termination_message_path: tmp.join("termination-log"),
        progress_listen: None,
    };
    let status = std::thread::spawn(move || train(&options, &AtomicBool::new(false)))
        .join()
        .unwrap();
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    assert_eq!(status.architecture, "text-classifier");
    assert!(
        status.metric.unwrap() >= 0.9,
        "validation accuracy {:?}",
        status.metric
    );
    assert!(
        out.join("base/model.safetensors").is_file(),
        "the base model travels with the head"
    );

    let server = start(loopback_args(out)).await;
    let client = Client::new(&server);
    let listed = client.get("/v1/models").await.json();
    assert_eq!(listed["data"][0]["architecture"], "text-classifier");
    assert_eq!(
        listed["data"][0]["inputs"],
        json!([{"name": "text", "type": "text"}])
    );
    assert_eq!(listed["data"][0]["target"], "topic");

    let reply = client
        .post(
            "/v1/predict",
            &json!({"instances": [
                {"text": "Add a cup of flour and a teaspoon of baking powder."},
                {"text": "The defender headed the ball off the goal line."},
                {"text": "Fry the garlic in oil, then add the chopped tomatoes."},
                {"text": "The tennis player won the final in straight sets."},
            ]}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.json()["predictions"],
        json!(["cooking", "sport", "cooking", "sport"])
    );

    let reply = client
        .post(
            "/v1/embeddings",
            &json!({"model": server.model_id(), "input": ["a bowl of soup"]}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let vector: Vec<f64> = reply.json()["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(vector.len(), 384);
    let norm = vector.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "{norm}");

    let reply = client
        .post("/v1/predict", &json!({"instances": [{"text": 42}]}))
        .await;
    assert_eq!(reply.status, 422, "{}", reply.text());
    assert_eq!(reply.json()["error"]["param"], "instances[0].text");
    let reply = client
        .post("/v1/predict", &json!({"instances": [{"body": "soup"}]}))
        .await;
    assert_eq!(reply.status, 422, "{}", reply.text());
    assert_eq!(reply.json()["error"]["param"], "instances[0].text");
}
