//! Request parsing never panics: any bytes become a validated request or an API error
//! with a 4xx status.

#![no_main]

use aigc_worker::api::types::{
    ChatRequest, CompletionRequest, EmbeddingRequest, PredictRequest, parse_generation_request,
    parse_json,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let client_error = |e: aigc_worker::api::error::ApiError| {
        assert!(e.status.is_client_error(), "{e:?}");
    };
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
});
