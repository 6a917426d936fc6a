//! SmolLM2-135M Q4_1 on aigc-quant's CPU kernels: the same greedy tokens as llama.cpp,
//! close to candle's quantized llama, and identical logits whichever instruction set runs.

mod common;

use aigc_quant::Isa;
use aigc_worker::models::TextGenerator;
use aigc_worker::models::llama::QuantizedLlama;
use aigc_worker::tokenizer::{ChatMessage, ChatTemplate};
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use common::argmax;

/// The chat prompt for "What is the capital of France?" (see smollm2_tokenizer.rs).
const PROMPT: [u32; 16] = [
    1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198,
];

/// llama.cpp's greedy answer to [`PROMPT`] ("The capital of France is Paris." and the end
/// of turn), from llama-cpp-python 0.3.36 with the same GGUF file.
const LLAMA_CPP_ANSWER: [u32; 8] = [504, 3575, 282, 4649, 314, 7042, 30, 2];

fn greedy(model: &mut dyn FnMut(&[u32], usize) -> Vec<f32>, steps: usize) -> Vec<u32> {
    let mut logits = model(&PROMPT, 0);
    let mut ids = Vec::new();
    for step in 0..steps {
        let token = argmax(&logits);
        ids.push(token);
        logits = model(&[token], PROMPT.len() + step);
    }
    ids
}

fn load() -> QuantizedLlama {
    QuantizedLlama::load(&common::smollm2_gguf(), &Device::Cpu).unwrap()
}

#[test]
fn greedy_answer_is_llama_cpps_token_for_token() {
    let mut model = load();
    assert!(
        model.kernels().starts_with("aigc-quant"),
        "{}",
        model.kernels()
    );
    let ids = greedy(&mut |t, s| model.next_logits(t, s).unwrap(), 8);
    assert_eq!(ids, LLAMA_CPP_ANSWER);
    let text = model.tokenizer().decode(&ids).unwrap();
    assert!(text.contains("Paris"), "{text}");
    // The chat template the server applies gives the same prompt.
    let prompt = ChatTemplate::ChatMl.render(&[ChatMessage {
        role: "user".into(),
        content: "What is the capital of France?".into(),
    }]);
    assert_eq!(model.tokenizer().encode(&prompt).unwrap(), PROMPT);
}

#[test]
fn every_instruction_set_gives_identical_logits() {
    let mut model = load();
    let mut reference: Option<Vec<Vec<f32>>> = None;
    for isa in Isa::available() {
        model.set_isa(isa).unwrap();
        model.reset();
        let mut runs = vec![model.next_logits(&PROMPT[..6], 0).unwrap()];
        // Continue from a prefix, and replace the last position (start below the length).
        runs.push(model.next_logits(&PROMPT[6..], 6).unwrap());
        runs.push(model.next_logits(&[504], PROMPT.len()).unwrap());
        runs.push(model.next_logits(&[3575], PROMPT.len()).unwrap());
        match &reference {
            None => reference = Some(runs),
            Some(reference) => {
                for (a, b) in runs.iter().zip(reference) {
                    let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "{isa:?} logits differ from the scalar kernels'");
                }
            }
        }
    }
}

#[test]
fn logits_are_close_to_candles_quantized_llama() {
    let path = common::smollm2_gguf();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut candle = ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap();
    let mut theirs = |tokens: &[u32], start: usize| {
        let input = Tensor::new(tokens, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = candle.forward(&input, start).unwrap();
        logits.squeeze(0).unwrap().to_vec1::<f32>().unwrap()
    };
    let mut model = load();
    let ours = model.next_logits(&PROMPT, 0).unwrap();
    let reference = theirs(&PROMPT, 0);
    assert_eq!(argmax(&ours), argmax(&reference));
    let spread = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = ours
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    // Both quantize activations to 8 bits, with slightly different rounding.
    assert!(
        worst < 0.05 * spread,
        "largest difference {worst} (logits up to {spread})"
    );
    model.reset();
    let ours = greedy(&mut |t, s| model.next_logits(t, s).unwrap(), 6);
    assert_eq!(ours, greedy(&mut theirs, 6));
}

#[test]
fn bad_positions_and_tokens_are_errors() {
    let mut model = load();
    let error = model.next_logits(&[1, 2], 5).unwrap_err().to_string();
    assert!(error.contains("start position 5"), "{error}");
    let error = model.next_logits(&[49_152], 0).unwrap_err().to_string();
    assert!(error.contains("token id 49152"), "{error}");
    let error = model.next_logits(&[], 0).unwrap_err().to_string();
    assert!(error.contains("at least one token"), "{error}");
}

#[test]
fn sequences_fed_together_get_the_logits_of_sequences_fed_alone() {
    use aigc_worker::models::SlotFeed;
    let mut model = load();
    let prompts: [&[u32]; 3] = [&PROMPT, &PROMPT[..5], &[1, 504, 3575]];
    // Alone: each prompt, then one greedy token, through the single sequence.
    let mut alone = Vec::new();
    for prompt in prompts {
        let first = model.next_logits(prompt, 0).unwrap();
        let token = argmax(&first);
        let second = model.next_logits(&[token], prompt.len()).unwrap();
        alone.push((first, token, second));
    }
    // Together: the three prompts in one pass (slots 2, 0 and 5), then one token each.
    let slots = [2, 0, 5];
    let batch: Vec<SlotFeed> = prompts
        .iter()
        .zip(slots)
        .map(|(&tokens, slot)| SlotFeed {
            slot,
            tokens,
            start: 0,
        })
        .collect();
    let first = model.feed(&batch).unwrap();
    let tokens: Vec<[u32; 1]> = alone.iter().map(|(_, token, _)| [*token]).collect();
    let batch: Vec<SlotFeed> = prompts
        .iter()
        .zip(slots)
        .zip(&tokens)
        .map(|((prompt, slot), token)| SlotFeed {
            slot,
            tokens: token,
            start: prompt.len(),
        })
        .collect();
    let second = model.feed(&batch).unwrap();
    for (i, (alone_first, _, alone_second)) in alone.iter().enumerate() {
        assert!(
            *alone_first == first[i],
            "prompt {i}: the first logits differ"
        );
        assert!(
            *alone_second == second[i],
            "prompt {i}: the second logits differ"
        );
    }

    // A prompt fed in pieces over several passes ends with the same logits.
    let mut last = Vec::new();
    for (start, end) in [(0, 5), (5, 11), (11, PROMPT.len())] {
        let piece = SlotFeed {
            slot: 7,
            tokens: &PROMPT[start..end],
            start,
        };
        last = model.feed(&[piece]).unwrap().remove(0);
    }
    assert!(last == alone[0].0, "a prompt fed in pieces differs");

    // A bad entry fails the whole pass and changes nothing.
    let duplicate = [
        SlotFeed {
            slot: 0,
            tokens: &[1],
            start: 0,
        },
        SlotFeed {
            slot: 0,
            tokens: &[1],
            start: 0,
        },
    ];
    let error = model.feed(&duplicate).unwrap_err().to_string();
    assert!(error.contains("same sequence slot"), "{error}");
    let past_the_end = [
        SlotFeed {
            slot: 2,
            tokens: &[1],
            start: PROMPT.len() + 1,
        },
        SlotFeed {
            slot: 9,
            tokens: &[1],
            start: 3,
        },
    ];
    let error = model.feed(&past_the_end).unwrap_err().to_string();
    assert!(error.contains("start position 3"), "{error}");
    // Slot 2 still holds the prompt and one token: feeding that token again repeats the
    // second logits.
    let again = model
        .feed(&[SlotFeed {
            slot: 2,
            tokens: &tokens[0],
            start: PROMPT.len(),
        }])
        .unwrap();
    assert!(again[0] == alone[0].2);
    model.release(2);
    let error = model
        .feed(&[SlotFeed {
            slot: 2,
            tokens: &[1],
            start: 1,
        }])
        .unwrap_err()
        .to_string();
    assert!(error.contains("past the 0 positions"), "{error}");
}
