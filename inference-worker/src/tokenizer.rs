//! Tokenizers built from model files: byte-level BPE from GGUF metadata, and the
//! chat template that turns messages into a prompt.
//!
//! candle's own GGUF tokenizer falls back to plain GPT-2 pre-tokenization (with a prefix
//! space) for pre-tokenizer names it does not know, which gives wrong ids for SmolLM2's
//! `smollm` pre-tokenizer. This module builds the pipeline from the `tokenizer.ggml.pre`
//! name itself and refuses names it does not know rather than guessing.

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::WorkerError;

/// GGUF token types (`tokenizer.ggml.token_type`) that name special tokens: matched as
/// whole strings in the input before BPE runs.
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Pre-tokenizer names (`tokenizer.ggml.pre`) this module knows how to build.
pub const KNOWN_PRE_TOKENIZERS: &[&str] = &["gpt2", "smollm"];

/// A text tokenizer together with the ids generation needs.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Vocabulary,
    /// Tokens that end generation (EOS and end-of-turn).
    pub stop_ids: Vec<u32>,
}

impl TextTokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(content: &Content) -> Result<Self, WorkerError> {
        let model = string_value(content, "tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(WorkerError::Unsupported(format!(
                "GGUF tokenizer.ggml.model `{model}`: only `gpt2` (byte-level BPE) is supported"
            )));
        }
        let tokens = string_array(content, "tokenizer.ggml.tokens")?;
        let merges = string_array(content, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|merge| {
                merge
                    .split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| {
                        WorkerError::InvalidModel(format!(
                            "GGUF merge `{merge}` is not two tokens separated by a space"
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, token)| (token.clone(), id as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| WorkerError::InvalidModel(format!("GGUF BPE vocabulary: {e}")))?;

        let pre = match content.metadata.get("tokenizer.ggml.pre") {
            Some(value) => value_string(value, "tokenizer.ggml.pre")?,
            None => "gpt2".to_string(),
        };
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer(&pre)?));
        inner.with_decoder(Some(ByteLevelDecoder::new(false, true, true)));

        let token_types = match content.metadata.get("tokenizer.ggml.token_type") {
            Some(value) => value
                .to_vec()
                .map_err(|e| invalid("tokenizer.ggml.token_type", e))?
                .iter()
                .map(value_i64)
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&token_types)
            .filter(|(_, kind)| matches!(**kind, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED))
            .map(|(token, _)| AddedToken::from(token.clone(), true))
            .collect();
        inner
            .add_special_tokens(special)
            .map_err(|e| WorkerError::Tokenizer(format!("GGUF special tokens: {e}")))?;

        let mut stop_ids = Vec::new();
        if let Some(value) = content.metadata.get("tokenizer.ggml.eos_token_id") {
            stop_ids.push(value_i64(value)? as u32);
        }
        // Chat models end a turn with an end-of-turn token that is often not the EOS id.
        for end_of_turn in ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"] {
            if let Some(id) = tokens.iter().position(|t| t == end_of_turn) {
                let id = id as u32;
                if !stop_ids.contains(&id) {
                    stop_ids.push(id);
                }
            }
        }
        Ok(Self {
            inner: Vocabulary::Tokenizer(Box::new(inner)),
            stop_ids,
        })
    }

    /// Wraps a tokenizer loaded some other way (for example from `tokenizer.json`).
    pub fn from_tokenizer(inner: Tokenizer, stop_ids: Vec<u32>) -> Self {
        Self {
            inner: Vocabulary::Tokenizer(Box::new(inner)),
            stop_ids,
        }
    }

    /// One token per character of `vocab` (the char-transformer's vocabulary, in id order).
    /// Such a model has no end-of-sequence token; it stops at `max_tokens` or a stop string.
    pub fn from_chars(vocab: Vec<char>) -> Self {
        Self {
            inner: Vocabulary::Chars(vocab),
            stop_ids: Vec::new(),
        }
    }

    /// Token ids of `text`; special-token strings in it become their single ids. A character
    /// vocabulary refuses text with characters it does not know
    /// ([`WorkerError::InvalidArgument`]).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, WorkerError> {
        match &self.inner {
            Vocabulary::Tokenizer(inner) => {
                let encoding = inner
                    .encode(text, false)
                    .map_err(|e| WorkerError::Tokenizer(e.to_string()))?;
                Ok(encoding.get_ids().to_vec())
            }
            Vocabulary::Chars(vocab) => {
                text.chars()
                    .map(|c| {
                        vocab.iter().position(|&v| v == c).map(|i| i as u32).ok_or_else(|| {
                        WorkerError::InvalidArgument(format!(
                            "character {c:?} is not in the model's vocabulary of {} characters",
                            vocab.len()
                        ))
                    })
                    })
                    .collect()
            }
        }
    }

    /// Text of `ids`, without special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String, WorkerError> {
        match &self.inner {
            Vocabulary::Tokenizer(inner) => inner
                .decode(ids, true)
                .map_err(|e| WorkerError::Tokenizer(e.to_string())),
            Vocabulary::Chars(vocab) => ids
                .iter()
                .map(|&id| {
                    vocab.get(id as usize).copied().ok_or_else(|| {
                        WorkerError::Tokenizer(format!(
                            "token id {id} is outside the vocabulary of {} characters",
                            vocab.len()
                        ))
                    })
                })
                .collect(),
        }
    }
}

/// How text maps to token ids.
#[derive(Clone)]
enum Vocabulary {
    /// A Hugging Face tokenizer (byte-level BPE from GGUF metadata, or `tokenizer.json`).
    Tokenizer(Box<Tokenizer>),
    /// One token per character, the id being the character's position.
    Chars(Vec<char>),
}

fn pre_tokenizer(name: &str) -> Result<PreTokenizerWrapper, WorkerError> {
    // GPT-2's split (contractions, letters, numbers, other, whitespace) without a prefix space.
    let byte_level = ByteLevel::new(false, true, true);
    match name {
        "gpt2" => Ok(byte_level.into()),
        // SmolLM: every digit is its own pre-token, then the GPT-2 split.
        "smollm" => Ok(Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()),
        other => Err(WorkerError::Unsupported(format!(
            "GGUF tokenizer.ggml.pre `{other}`; supported: {}",
            KNOWN_PRE_TOKENIZERS.join(", ")
        ))),
    }
}

/// One chat message, as in an OpenAI chat request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// How chat messages become a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatTemplate {
    /// `<|im_start|>role\ncontent<|im_end|>\n` per message, then the assistant's turn.
    ChatMl,
    /// `role: content\n` per message, then `assistant:`; for models without a template.
    Plain,
}

impl ChatTemplate {
    /// The template a GGUF vocabulary calls for: ChatML when it has the ChatML markers.
    pub fn for_vocabulary(tokenizer: &TextTokenizer) -> Self {
        let Vocabulary::Tokenizer(inner) = &tokenizer.inner else {
            return Self::Plain;
        };
        let vocab = inner.get_vocab(true);
        if vocab.contains_key("<|im_start|>") && vocab.contains_key("<|im_end|>") {
            Self::ChatMl
        } else {
            Self::Plain
        }
    }

    /// The prompt for `messages`, ending where the assistant's reply starts.
    pub fn render(&self, messages: &[ChatMessage]) -> String {
        let mut prompt = String::new();
        match self {
            Self::ChatMl => {
                for message in messages {
                    prompt.push_str("<|im_start|>");
                    prompt.push_str(&message.role);
                    prompt.push('\n');
                    prompt.push_str(&message.content);
                    prompt.push_str("<|im_end|>\n");
                }
                prompt.push_str("<|im_start|>assistant\n");
            }
            Self::Plain => {
                for message in messages {
                    prompt.push_str(&message.role);
                    prompt.push_str(": ");
                    prompt.push_str(&message.content);
                    prompt.push('\n');
                }
                prompt.push_str("assistant:");
            }
        }
        prompt
    }
}

fn invalid(key: &str, error: impl std::fmt::Display) -> WorkerError {
    WorkerError::InvalidModel(format!("GGUF metadata `{key}`: {error}"))
}

fn string_value(content: &Content, key: &str) -> Result<String, WorkerError> {
    let value = content
        .metadata
        .get(key)
        .ok_or_else(|| WorkerError::InvalidModel(format!("GGUF metadata `{key}` is missing")))?;
    value_string(value, key)
}

fn value_string(value: &Value, key: &str) -> Result<String, WorkerError> {
    value.to_string().cloned().map_err(|e| invalid(key, e))
}

fn string_array(content: &Content, key: &str) -> Result<Vec<String>, WorkerError> {
    let value = content
        .metadata
        .get(key)
        .ok_or_else(|| WorkerError::InvalidModel(format!("GGUF metadata `{key}` is missing")))?;
    value
        .to_vec()
        .map_err(|e| invalid(key, e))?
        .iter()
        .map(|v| value_string(v, key))
        .collect()
}

fn value_i64(value: &Value) -> Result<i64, WorkerError> {
    match value {
        Value::U8(v) => Ok(i64::from(*v)),
        Value::I8(v) => Ok(i64::from(*v)),
        Value::U16(v) => Ok(i64::from(*v)),
        Value::I16(v) => Ok(i64::from(*v)),
        Value::U32(v) => Ok(i64::from(*v)),
        Value::I32(v) => Ok(i64::from(*v)),
        Value::U64(v) => i64::try_from(*v)
            .map_err(|_| WorkerError::InvalidModel(format!("GGUF integer {v} is out of range"))),
        Value::I64(v) => Ok(*v),
        other => Err(WorkerError::InvalidModel(format!(
            "GGUF value {other:?} is not an integer"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_prompt_opens_the_assistant_turn() {
        let prompt = ChatTemplate::ChatMl.render(&[ChatMessage {
            role: "user".into(),
            content: "Hi".into(),
        }]);
        assert_eq!(
            prompt,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn unknown_pre_tokenizer_is_refused_by_name() {
        let Err(error) = pre_tokenizer("falcon") else {
            panic!("falcon is not supported");
        };
        assert!(error.to_string().contains("falcon"), "{error}");
    }
}
