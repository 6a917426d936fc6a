//! `aigc-worker serve` with all-MiniLM-L6-v2 (safetensors): embeddings against the
//! sentence-transformers reference, similarity, encodings, batching and errors.

mod common;

use base64::Engine;
use common::{Client, loopback_args, minilm_dir, start};
use serde_json::{Value, json};

#[derive(serde::Deserialize)]
struct Reference {
    sentences: Vec<String>,
    embeddings: Vec<Vec<f32>>,
}

fn reference() -> Reference {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/embeddings_reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn vectors(body: &Value) -> Vec<Vec<f32>> {
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            d["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The largest element-wise difference between two vectors.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[tokio::test]
async fn embeddings_match_sentence_transformers_and_rank_paraphrases() {
    let server = start(loopback_args(minilm_dir())).await;
    let client = Client::new(&server);
    let reference = reference();
    let reply = client
        .post(
            "/v1/embeddings",
            &json!({"model": server.model_id(), "input": reference.sentences}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["object"], "list");
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > reference.sentences.len() as u64);
    let got = vectors(&body);
    assert_eq!(got.len(), reference.embeddings.len());
    for (i, (g, r)) in got.iter().zip(&reference.embeddings).enumerate() {
        assert_eq!(g.len(), 384);
        let worst = max_abs_diff(g, r);
        assert!(worst < 1e-3, "sentence {i} differs by {worst}");
        let norm = cosine(g, g).sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "sentence {i} has norm {norm}");
    }
    // Guitar paraphrases, password paraphrases, and the unrelated ones.
    assert!(cosine(&got[0], &got[1]) > cosine(&got[0], &got[2]) + 0.3);
    assert!(cosine(&got[3], &got[4]) > cosine(&got[3], &got[5]) + 0.3);
}

#[tokio::test]
async fn single_string_base64_and_batched_requests_agree() {
    let mut args = loopback_args(minilm_dir());
    args.max_batch = 16;
    let server = start(args).await;
    let client = Client::new(&server);
    let model = server.model_id().to_string();
    let sentence = "Someone is strumming a guitar.";

    let single = vectors(
        &client
            .post(
                "/v1/embeddings",
                &json!({"model": model, "input": sentence}),
            )
            .await
            .json(),
    );
    let encoded = client
        .post(
            "/v1/embeddings",
            &json!({"model": model, "input": [sentence], "encoding_format": "base64"}),
        )
        .await
        .json();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(decoded, single[0]);

    // Concurrent requests of different lengths share batches and still get their own rows.
    let texts: Vec<String> = (0..24)
        .map(|i| format!("sentence number {i} {}", "with more words ".repeat(i % 5)))
        .collect();
    let tasks: Vec<_> = texts
        .iter()
        .map(|text| {
            let client = client.clone();
            let body = json!({"model": model, "input": [text, sentence]});
            tokio::spawn(async move { client.post("/v1/embeddings", &body).await })
        })
        .collect();
    for (text, task) in texts.iter().zip(tasks) {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        let got = vectors(&reply.json());
        let alone = vectors(
            &client
                .post("/v1/embeddings", &json!({"model": model, "input": text}))
                .await
                .json(),
        );
        let worst = max_abs_diff(&got[0], &alone[0]);
        assert!(
            worst < 1e-5,
            "batched and alone differ by {worst} for {text:?}"
        );
        let worst = max_abs_diff(&got[1], &single[0]);
        assert!(worst < 1e-5, "padding changed a vector by {worst}");
    }
    let metrics = client.get("/metrics").await.text();
    assert!(metrics.contains("aigc_batch_size_count"), "{metrics}");
}

#[tokio::test]
async fn embedding_errors_name_the_input() {
    let server = start(loopback_args(minilm_dir())).await;
    let client = Client::new(&server);
    let model = server.model_id().to_string();

    let reply = client
        .post(
            "/v1/embeddings",
            &json!({"model": model, "input": "word ".repeat(400)}),
        )
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert_eq!(reply.json()["error"]["code"], "context_length_exceeded");
    let reply = client
        .post("/v1/embeddings", &json!({"model": model, "input": []}))
        .await;
    assert_eq!(reply.status, 422);
    let reply = client
        .post(
            "/v1/embeddings",
            &json!({"model": model, "input": [1, 2, 3]}),
        )
        .await;
    assert_eq!(reply.status, 422);
    assert_eq!(reply.json()["error"]["param"], "input");
    let reply = client
        .post(
            "/v1/embeddings",
            &json!({"model": model, "input": "x", "dimensions": 8}),
        )
        .await;
    assert_eq!(reply.status, 422);
    let reply = client
        .post(
            "/v1/chat/completions",
            &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(reply.status, 400);
    let models = client.get("/v1/models").await.json();
    assert_eq!(models["data"][0]["architecture"], "bert");
    assert_eq!(models["data"][0]["format"], "safetensors");
}

#[test]
fn the_hand_written_cpu_encoder_equals_candles_and_the_reference() {
    use aigc_worker::models::Embedder;
    use aigc_worker::models::bert::BertEmbedder;
    let dir = minilm_dir();
    let device = candle_core::Device::Cpu;
    let fast = BertEmbedder::load(&dir, &device).unwrap();
    let candle = BertEmbedder::load_candle(&dir, &device).unwrap();
    let reference = reference();
    // The reference sentences, a long input and a one-word one, in one call: inputs of very
    // different lengths share a batch.
    let mut texts = reference.sentences.clone();
    texts.push("word ".repeat(200));
    texts.push("x".into());
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| fast.tokenize(t).unwrap()).collect();
    let got = fast.embed(&ids).unwrap();
    let want = candle.embed(&ids).unwrap();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let worst = max_abs_diff(g, w);
        assert!(worst < 1e-5, "input {i} differs from candle's by {worst}");
    }
    for (i, (g, r)) in got.iter().zip(&reference.embeddings).enumerate() {
        let worst = max_abs_diff(g, r);
        assert!(
            worst < 1e-5,
            "sentence {i} differs from sentence-transformers by {worst}"
        );
    }
    let error = fast.embed(&[vec![]]).unwrap_err();
    assert!(error.to_string().contains("0 tokens"), "{error}");
}
