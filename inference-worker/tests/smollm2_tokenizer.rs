//! The GGUF tokenizer against llama.cpp's ids for SmolLM2 (whose `smollm` pre-tokenizer
//! candle's built-in GGUF tokenizer gets wrong).

mod common;

use aigc_worker::tokenizer::{ChatMessage, ChatTemplate, TextTokenizer};
use candle_core::quantized::gguf_file;

fn smollm2_tokenizer() -> TextTokenizer {
    let path = common::smollm2_gguf();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    TextTokenizer::from_gguf(&content).unwrap()
}

#[test]
fn chat_prompt_tokenizes_to_llama_cpp_ids() {
    let tokenizer = smollm2_tokenizer();
    assert_eq!(
        ChatTemplate::for_vocabulary(&tokenizer),
        ChatTemplate::ChatMl
    );
    let prompt = ChatTemplate::ChatMl.render(&[ChatMessage {
        role: "user".into(),
        content: "What is the capital of France?".into(),
    }]);
    assert_eq!(
        tokenizer.encode(&prompt).unwrap(),
        [
            1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198
        ]
    );
}

#[test]
fn digits_are_single_tokens_and_text_round_trips() {
    let tokenizer = smollm2_tokenizer();
    let text = "In 2024, 3.14159 apples cost $12 — naïve café.";
    let ids = tokenizer.encode("12345").unwrap();
    assert_eq!(ids.len(), 5, "each digit is its own token: {ids:?}");
    assert_eq!(
        tokenizer.decode(&tokenizer.encode(text).unwrap()).unwrap(),
        text
    );
}

#[test]
fn end_of_turn_stops_generation() {
    let tokenizer = smollm2_tokenizer();
    let end_of_turn = tokenizer.encode("<|im_end|>").unwrap();
    assert_eq!(end_of_turn, [2]);
    assert!(tokenizer.stop_ids.contains(&2), "{:?}", tokenizer.stop_ids);
}
