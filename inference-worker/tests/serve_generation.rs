//! `aigc-worker serve` with SmolLM2-135M-Instruct (GGUF Q4_1) on a loopback port: chat,
//! streaming, completions, errors, auth, TLS, the queue, cancellation and metrics.

mod common;

use common::{Client, loopback_args, smollm2_gguf, start};
use serde_json::{Value, json};

const QUESTION: &str = "What is the capital of France?";

fn chat_body(model: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": QUESTION}],
        "temperature": 0,
        "max_tokens": 40,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// A prompt a greedy model keeps continuing without ending its turn.
fn counting_body(model: &str, max_tokens: usize, stream: bool) -> Value {
    json!({
        "model": model,
        "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,",
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": stream,
    })
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("metric `{name}` not in:\n{text}"))
}

#[tokio::test]
async fn greedy_chat_answer_mentions_paris_with_usage() {
    let server = start(loopback_args(smollm2_gguf())).await;
    let client = Client::new(&server);
    let reply = client
        .post(
            "/v1/chat/completions",
            &chat_body(server.model_id(), json!({})),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    let answer = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(answer.contains("Paris"), "answer: {answer}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["usage"]["prompt_tokens"], 16);
    let completion = body["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=40).contains(&completion), "{body}");
    assert_eq!(body["usage"]["total_tokens"], 16 + completion);

    // The same request streamed gives the same greedy text, then [DONE].
    let reply = client
        .post(
            "/v1/chat/completions",
            &chat_body(
                server.model_id(),
                json!({"stream": true, "stream_options": {"include_usage": true}}),
            ),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let data = reply.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, answer);
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str())
        .unwrap();
    assert_eq!(
        finish,
        body["choices"][0]["finish_reason"].as_str().unwrap()
    );
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], completion, "{usage}");
}

#[tokio::test]
async fn completions_honour_max_tokens_stop_and_seed() {
    let server = start(loopback_args(smollm2_gguf())).await;
    let client = Client::new(&server);
    let model = server.model_id().to_string();

    let reply = client
        .post("/v1/completions", &counting_body(&model, 6, false))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 6);
    let text = body["choices"][0]["text"].as_str().unwrap();
    assert!(text.contains("11"), "greedy counting continues: {text:?}");

    let mut stopped = counting_body(&model, 30, false);
    stopped["stop"] = json!(["13"]);
    let body = client.post("/v1/completions", &stopped).await.json();
    assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
    let text = body["choices"][0]["text"].as_str().unwrap();
    assert!(text.contains("12") && !text.contains("13"), "{text:?}");

    // Sampling with a seed repeats itself.
    let sampled = json!({
        "model": model, "prompt": "Once upon a time", "max_tokens": 12,
        "temperature": 1.0, "top_p": 0.95, "top_k": 50, "seed": 1234,
    });
    let first = client.post("/v1/completions", &sampled).await.json();
    let second = client.post("/v1/completions", &sampled).await.json();
    assert_eq!(first["choices"][0]["text"], second["choices"][0]["text"]);
}

#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let mut args = loopback_args(smollm2_gguf());
    args.max_body_bytes = 64 * 1024;
    let server = start(args).await;
    let client = Client::new(&server);
    let model = server.model_id().to_string();

    let check = |reply: common::Reply, status: u16, param: Option<&str>| {
        assert_eq!(reply.status, status, "{}", reply.text());
        let body = reply.json();
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        if let Some(param) = param {
            assert_eq!(body["error"]["param"], param, "{body}");
        }
    };
    check(
        client
            .post_raw("/v1/chat/completions", "{\"model\": ")
            .await,
        400,
        None,
    );
    check(
        client
            .post("/v1/chat/completions", &chat_body("gpt-4", json!({})))
            .await,
        404,
        Some("model"),
    );
    check(
        client
            .post(
                "/v1/chat/completions",
                &chat_body(&model, json!({"temperature": "hot"})),
            )
            .await,
        422,
        Some("temperature"),
    );
    check(
        client
            .post(
                "/v1/chat/completions",
                &json!({"model": model, "messages": "hi"}),
            )
            .await,
        422,
        Some("messages"),
    );
    check(
        client
            .post(
                "/v1/chat/completions",
                &chat_body(&model, json!({"max_tokens": 0})),
            )
            .await,
        422,
        Some("max_tokens"),
    );
    check(
        client
            .post(
                "/v1/chat/completions",
                &chat_body(&model, json!({"max_tokens": 1_000_000})),
            )
            .await,
        422,
        Some("max_tokens"),
    );
    check(
        client
            .post(
                "/v1/chat/completions",
                &chat_body(&model, json!({"max_tokens": 8190})),
            )
            .await,
        400,
        Some("max_tokens"),
    );
    let long_prompt = "hello ".repeat(9000);
    let reply = client
        .post(
            "/v1/completions",
            &json!({"model": model, "prompt": long_prompt}),
        )
        .await;
    assert_eq!(reply.json()["error"]["code"], "context_length_exceeded");
    check(reply, 400, None);
    check(
        client
            .post_raw("/v1/completions", vec![b' '; 100 * 1024])
            .await,
        413,
        None,
    );
    check(
        client
            .post("/v1/embeddings", &json!({"model": model, "input": "hi"}))
            .await,
        400,
        Some("model"),
    );
    check(client.get("/v1/nothing").await, 404, None);
    check(client.get("/v1/chat/completions").await, 405, None);
}

#[tokio::test]
async fn api_keys_guard_model_routes_but_not_probes() {
    let dir = std::env::temp_dir().join(format!("aigc-serve-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys");
    std::fs::write(&keys, "# keys\nsecret-one\nsecret-two\n").unwrap();
    let mut args = loopback_args(smollm2_gguf());
    args.api_key_file = Some(keys);
    let server = start(args).await;

    let anonymous = Client::new(&server);
    let reply = anonymous.get("/v1/models").await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"]["code"], "invalid_api_key");
    assert_eq!(
        Client::new(&server)
            .with_key("wrong")
            .get("/v1/models")
            .await
            .status,
        401
    );
    assert_eq!(anonymous.get("/healthz").await.status, 200);
    assert_eq!(anonymous.get("/readyz").await.status, 200);
    assert_eq!(anonymous.get("/metrics").await.status, 200);

    let reply = Client::new(&server)
        .with_key("secret-two")
        .get("/v1/models")
        .await;
    assert_eq!(reply.status, 200);
    let model = &reply.json()["data"][0];
    assert_eq!(model["id"], server.model_id());
    assert_eq!(model["device"], "cpu");
    assert_eq!(model["architecture"], "llama");
    assert_eq!(model["format"], "gguf");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn tls_serves_https_with_the_given_certificate() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = std::env::temp_dir().join(format!("aigc-serve-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), certified.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
    let mut args = loopback_args(smollm2_gguf());
    args.tls_cert = Some(dir.join("cert.pem"));
    args.tls_key = Some(dir.join("key.pem"));
    let server = start(args).await;
    assert!(server.base_url().starts_with("https://"));

    let mut client = Client::new(&server);
    client.tls = Some(common::tls_connector(certified.cert.der().clone()));
    let reply = client
        .post(
            "/v1/chat/completions",
            &chat_body(server.model_id(), json!({"max_tokens": 3})),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["usage"]["completion_tokens"], 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn full_queue_answers_429_and_disconnect_cancels_generation() {
    let mut args = loopback_args(smollm2_gguf());
    args.max_queue = 1;
    // One request at a time, so that a second one waits in the queue.
    args.max_batch = 1;
    let server = start(args).await;
    let client = Client::new(&server);
    let model = server.model_id().to_string();
    const LONG: usize = 2000;

    // A long streamed generation occupies the model thread once its first chunk arrives.
    let mut running = client
        .open("/v1/completions", &counting_body(&model, LONG, true))
        .await;
    assert_eq!(running.status(), 200);
    use http_body_util::BodyExt;
    let first = running.body_mut().frame().await.unwrap().unwrap();
    assert!(first.is_data());

    // One request fits the queue; the next ones are refused.
    let queued = tokio::spawn({
        let client = client.clone();
        let body = counting_body(&model, 3, false);
        async move { client.post("/v1/completions", &body).await }
    });
    // Wait for it to be queued behind the running generation.
    while !client
        .get("/metrics")
        .await
        .text()
        .contains("aigc_queue_depth{queue=\"generation\"} 1")
    {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let reply = client
        .post("/v1/completions", &counting_body(&model, 3, false))
        .await;
    assert_eq!(reply.status, 429, "{}", reply.text());
    assert_eq!(reply.headers["retry-after"], "1");
    assert_eq!(reply.json()["error"]["type"], "rate_limit_error");

    // Disconnecting the long stream stops it: the queued request then completes, and far
    // fewer than LONG tokens were generated in all.
    drop(running);
    let queued = queued.await.unwrap();
    assert_eq!(queued.status, 200, "{}", queued.text());
    let metrics = client.get("/metrics").await.text();
    let generated = metric(&metrics, "aigc_generated_tokens_total");
    assert!(generated < LONG as f64, "generated {generated} tokens");
    assert!(metric(&metrics, "aigc_time_to_first_token_seconds_count") >= 2.0);
    assert!(
        metrics.contains("aigc_http_requests_total{route=\"/v1/completions\",status=\"429\"} 1")
    );
    assert!(metrics.contains("aigc_queue_depth{queue=\"generation\"}"));
}

#[tokio::test]
async fn concurrent_requests_decode_together_with_the_answers_of_one_at_a_time() {
    let server = start(loopback_args(smollm2_gguf())).await;
    let client = Client::new(&server);
    let model = server.model_id().to_string();
    // Prompts of different lengths, so the sequences sit at different positions.
    let bodies: Vec<Value> = [
        "The capital of France is",
        "Kubernetes schedules containers onto",
        "1, 2, 3,",
    ]
    .iter()
    .map(|prompt| json!({"model": model, "prompt": prompt, "temperature": 0, "max_tokens": 12}))
    .collect();
    let text = |reply: &common::Reply| {
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()["choices"][0]["text"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mut alone = Vec::new();
    for body in &bodies {
        alone.push(text(&client.post("/v1/completions", body).await));
    }
    let together = futures::future::join_all(
        bodies
            .iter()
            .map(|body| client.post("/v1/completions", body)),
    )
    .await;
    let together: Vec<String> = together.iter().map(text).collect();
    assert_eq!(together, alone);

    // While a long generation streams, a short request is answered without waiting for it.
    const LONG: usize = 2000;
    let mut running = client
        .open("/v1/completions", &counting_body(&model, LONG, true))
        .await;
    assert_eq!(running.status(), 200);
    use http_body_util::BodyExt;
    assert!(running.body_mut().frame().await.unwrap().unwrap().is_data());
    let reply = client.post("/v1/completions", &bodies[0]).await;
    assert_eq!(text(&reply), alone[0]);
    let metrics = client.get("/metrics").await.text();
    assert!(
        metric(&metrics, "aigc_generated_tokens_total") < LONG as f64,
        "the short request waited for the long one"
    );
    // Passes of more than one request happened (the histogram's first bucket is 1).
    let passes = metric(&metrics, "aigc_batch_size_count");
    let single = metric(&metrics, "aigc_batch_size_bucket{le=\"1\"}");
    assert!(passes > single, "{metrics}");
    drop(running);
}

#[tokio::test]
async fn a_long_prompt_is_fed_over_several_passes_with_the_same_answer() {
    use aigc_worker::models::TextGenerator;
    use aigc_worker::serve::engine::PASS_PROMPT_TOKENS;
    let server = start(loopback_args(smollm2_gguf())).await;
    let client = Client::new(&server);
    let prompt = "The quick brown fox jumps over the lazy dog. ".repeat(60);
    let body = json!({
        "model": server.model_id(), "prompt": prompt, "temperature": 0, "max_tokens": 4,
    });
    let reply = client.post("/v1/completions", &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    let prompt_tokens = body["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    let completion_tokens = body["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    assert!(
        prompt_tokens > 2 * PASS_PROMPT_TOKENS,
        "{prompt_tokens} tokens"
    );
    // The prompt's pieces, then one pass per further token.
    let passes = metric(
        &client.get("/metrics").await.text(),
        "aigc_batch_size_count",
    );
    let want = prompt_tokens.div_ceil(PASS_PROMPT_TOKENS) + completion_tokens - 1;
    assert_eq!(passes, want as f64);

    // The model fed the whole prompt at once answers the same.
    let mut model = aigc_worker::models::llama::QuantizedLlama::load(
        &smollm2_gguf(),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let ids = model.tokenizer().encode(&prompt).unwrap();
    assert_eq!(ids.len(), prompt_tokens);
    let mut logits = model.next_logits(&ids, 0).unwrap();
    let mut answer = Vec::new();
    for step in 0..completion_tokens {
        let token = common::argmax(&logits);
        answer.push(token);
        logits = model.next_logits(&[token], ids.len() + step).unwrap();
    }
    let text = model.tokenizer().decode(&answer).unwrap();
    assert_eq!(body["choices"][0]["text"], text.as_str());
}

#[tokio::test]
async fn requests_past_the_cache_budget_wait_for_room() {
    let mut args = loopback_args(smollm2_gguf());
    // SmolLM2-135M holds 45 KiB per position, so 2 MiB is 45 positions: the counting stream
    // (about 20 prompt tokens and 20 more) fits, and the short request (about 6 and 8) does
    // not fit beside it.
    args.kv_cache_mib = 2;
    let server = start(args).await;
    let client = Client::new(&server);
    let model = server.model_id().to_string();
    let mut running = client
        .open("/v1/completions", &counting_body(&model, 20, true))
        .await;
    assert_eq!(running.status(), 200);
    use http_body_util::BodyExt;
    assert!(running.body_mut().frame().await.unwrap().unwrap().is_data());
    let short = json!({
        "model": model, "prompt": "The capital of France is", "temperature": 0, "max_tokens": 8,
    });
    let reply = client.post("/v1/completions", &short).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        reply.json()["choices"][0]["text"]
            .as_str()
            .unwrap()
            .contains("Paris")
    );
    while running.body_mut().frame().await.is_some() {}
    // The short request waited for the stream to end: no pass fed both.
    let metrics = client.get("/metrics").await.text();
    let passes = metric(&metrics, "aigc_batch_size_count");
    assert!(passes >= 20.0, "{metrics}");
    assert_eq!(metric(&metrics, "aigc_batch_size_bucket{le=\"1\"}"), passes);
}
