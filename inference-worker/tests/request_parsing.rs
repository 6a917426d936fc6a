//! Request parsing never panics: random bytes and random JSON shaped like requests become a
//! validated request or a 4xx API error, and a model's instance check (`/v1/predict`) answers
//! predictions or an error naming the instance and column. (The libFuzzer target in
//! `fuzz/` explores the same parsers without bounds; it is not built in CI.)

use aigc_worker::WorkerError;
use aigc_worker::api::error::ApiError;
use aigc_worker::api::types::{
    ChatRequest, CompletionRequest, EmbeddingRequest, PredictRequest, parse_generation_request,
    parse_json,
};
use aigc_worker::models::mlp::{Feature, Task};
use aigc_worker::models::{Mlp, MlpConfig, Predictor};
use aigc_worker::rng::Rng;
use proptest::prelude::*;
use serde_json::{Map, Value};

fn client_error(e: ApiError) {
    assert!(e.status.is_client_error(), "{e:?}");
}

/// Every parser and validator the server runs on a body.
fn parse_everything(body: &[u8]) {
    match parse_generation_request::<ChatRequest>(body) {
        Ok((request, generation)) => {
            let _ = generation.validate(8192).map_err(client_error);
            let _ = request.chat_messages().map_err(client_error);
        }
        Err(e) => client_error(e),
    }
    match parse_generation_request::<CompletionRequest>(body) {
        Ok((request, generation)) => {
            let _ = generation.validate(8192).map_err(client_error);
            let _ = request.single_prompt().map_err(client_error);
        }
        Err(e) => client_error(e),
    }
    if let Err(e) = parse_json::<EmbeddingRequest>(body) {
        client_error(e);
    }
    if let Err(e) = parse_json::<PredictRequest>(body) {
        client_error(e);
    }
}

/// JSON values of any shape, with the field names requests use.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop::sample::select(vec![
        "model",
        "messages",
        "role",
        "content",
        "type",
        "text",
        "prompt",
        "input",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "stop",
        "n",
        "stream",
        "stream_options",
        "include_usage",
        "encoding_format",
        "dimensions",
        "instances",
        "a",
        "b",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|x| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "user", "system", "robot", "text", "base64", "float", "m"
        ])
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6).prop_map(|m| Value::Object(
                m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
            )),
        ]
    })
}

fn small_mlp() -> Mlp {
    let feature = |name: &str| Feature {
        name: name.into(),
        mean: 1.0,
        std: 2.0,
    };
    let config = MlpConfig {
        task: Task::Classification,
        features: vec![feature("a"), feature("b")],
        target: "y".into(),
        labels: vec!["0".into(), "1".into()],
        target_mean: None,
        target_std: None,
        hidden: vec![4],
    };
    Mlp::new(config, &mut Rng::new(1), &candle_core::Device::Cpu).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        parse_everything(&body);
    }

    #[test]
    fn request_shaped_json_never_panics(value in json_value()) {
        parse_everything(value.to_string().as_bytes());
    }

    #[test]
    fn instances_are_predicted_or_refused_by_column(
        instances in prop::collection::vec(
            prop::collection::btree_map(prop::sample::select(vec!["a", "b", "c"]), json_value(), 0..4),
            1..6,
        )
    ) {
        let model = small_mlp();
        let instances: Vec<Map<String, Value>> = instances
            .into_iter()
            .map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            .collect();
        match model.predict_json(&instances) {
            Ok(predictions) => {
                prop_assert_eq!(predictions.len(), instances.len());
                for p in predictions {
                    prop_assert!(p == 0 || p == 1, "{}", p);
                }
            }
            Err(WorkerError::InvalidInstance { row, column, .. }) => {
                prop_assert!(row < instances.len());
                prop_assert!(column == "a" || column == "b", "{}", column);
            }
            Err(other) => prop_assert!(false, "unexpected error {}", other),
        }
    }
}
