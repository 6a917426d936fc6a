//! Request and response bodies of the OpenAI-compatible API, and the parsing that turns
//! untrusted bytes into validated requests or an [`ApiError`].

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::error::ApiError;
use crate::sampling::SamplingParams;
use crate::tokenizer::ChatMessage;

/// Parses a JSON body into `T`: 400 when it is not JSON, 422 naming the field when the
/// JSON has the wrong shape.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    from_value(parse_object(body)?)
}

/// Parses a chat or completion body into its own fields and the generation settings
/// (which live at the same level of the JSON object).
pub fn parse_generation_request<T: DeserializeOwned>(
    body: &[u8],
) -> Result<(T, GenerationFields), ApiError> {
    let value = parse_object(body)?;
    Ok((from_value(value.clone())?, from_value(value)?))
}

fn parse_object(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(ApiError::malformed_json)?;
    if !value.is_object() {
        return Err(ApiError::invalid_field(
            "body",
            "expected a JSON object".to_string(),
        ));
    }
    Ok(value)
}

fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { "body".into() } else { path };
        ApiError::invalid_field(path, e.into_inner())
    })
}

/// A string or a list of strings (`stop`, `input`, `prompt`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// Sampling and length fields shared by chat and completion requests.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct GenerationFields {
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<OneOrMany>,
    pub n: Option<i64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Most stop strings a request may give (as OpenAI).
pub const MAX_STOP_STRINGS: usize = 4;

/// Generation settings after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationSettings {
    /// `None`: up to the context length.
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
}

impl GenerationFields {
    /// Checks ranges; `context_length` bounds `max_tokens`.
    pub fn validate(&self, context_length: usize) -> Result<GenerationSettings, ApiError> {
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            None => None,
            Some(n) if n >= 1 && (n as u64) <= context_length as u64 => Some(n as usize),
            Some(n) => {
                return Err(ApiError::out_of_range(
                    "max_tokens",
                    format!(
                        "`max_tokens` is {n}; accepted: 1 to {context_length} (the context length)"
                    ),
                ));
            }
        };
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::out_of_range(
                "temperature",
                format!("`temperature` is {temperature}; accepted: 0 to 2"),
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        // Written so that NaN is refused too.
        let top_p_valid = top_p > 0.0 && top_p <= 1.0;
        if !top_p_valid {
            return Err(ApiError::out_of_range(
                "top_p",
                format!("`top_p` is {top_p}; accepted: greater than 0, at most 1"),
            ));
        }
        let top_k = match self.top_k {
            None => 0,
            Some(k) if k >= 0 => k as usize,
            Some(k) => {
                return Err(ApiError::out_of_range(
                    "top_k",
                    format!("`top_k` is {k}; accepted: 0 (all tokens) or more"),
                ));
            }
        };
        let seed = self.seed.map(|s| s as u64);
        if let Some(n) = self.n
            && n != 1
        {
            return Err(ApiError::out_of_range(
                "n",
                format!("`n` is {n}; this server returns exactly 1 choice"),
            ));
        }
        let stop = self
            .stop
            .clone()
            .map(OneOrMany::into_vec)
            .unwrap_or_default();
        if stop.len() > MAX_STOP_STRINGS {
            return Err(ApiError::out_of_range(
                "stop",
                format!(
                    "`stop` has {} strings; accepted: at most {MAX_STOP_STRINGS}",
                    stop.len()
                ),
            ));
        }
        if stop.iter().any(String::is_empty) {
            return Err(ApiError::out_of_range(
                "stop",
                "`stop` strings must not be empty".into(),
            ));
        }
        Ok(GenerationSettings {
            max_tokens,
            sampling: SamplingParams {
                temperature,
                top_p,
                top_k,
                seed,
            },
            stop,
            stream: self.stream,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
        })
    }
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<RequestMessage>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RequestMessage {
    pub role: String,
    pub content: MessageContent,
}

/// Message content: a string, or a list of parts of which only `text` parts are accepted.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

impl ChatRequest {
    /// The messages as plain text, refusing roles and parts a text model cannot take.
    pub fn chat_messages(&self) -> Result<Vec<ChatMessage>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::out_of_range(
                "messages",
                "`messages` is empty; give at least one message".into(),
            ));
        }
        self.messages
            .iter()
            .enumerate()
            .map(|(i, message)| {
                if !matches!(
                    message.role.as_str(),
                    "system" | "developer" | "user" | "assistant"
                ) {
                    return Err(ApiError::out_of_range(
                        &format!("messages[{i}].role"),
                        format!(
                            "`messages[{i}].role` is `{}`; accepted: system, developer, user, assistant",
                            message.role
                        ),
                    ));
                }
                let content = match &message.content {
                    MessageContent::Text(text) => text.clone(),
                    MessageContent::Parts(parts) => {
                        let mut text = String::new();
                        for (j, part) in parts.iter().enumerate() {
                            match (part.kind.as_str(), &part.text) {
                                ("text", Some(t)) => text.push_str(t),
                                _ => {
                                    return Err(ApiError::out_of_range(
                                        &format!("messages[{i}].content[{j}]"),
                                        format!(
                                            "`messages[{i}].content[{j}]` is a `{}` part; accepted: `text` parts with a `text` field",
                                            part.kind
                                        ),
                                    ));
                                }
                            }
                        }
                        text
                    }
                };
                let role = if message.role == "developer" {
                    "system".to_string()
                } else {
                    message.role.clone()
                };
                Ok(ChatMessage { role, content })
            })
            .collect()
    }
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: OneOrMany,
}

impl CompletionRequest {
    /// The single prompt; lists are accepted when they hold exactly one string.
    pub fn single_prompt(&self) -> Result<&str, ApiError> {
        match &self.prompt {
            OneOrMany::One(prompt) => Ok(prompt),
            OneOrMany::Many(prompts) if prompts.len() == 1 => Ok(&prompts[0]),
            OneOrMany::Many(prompts) => Err(ApiError::out_of_range(
                "prompt",
                format!(
                    "`prompt` has {} strings; this server completes one prompt per request",
                    prompts.len()
                ),
            )),
        }
    }
}

/// `POST /v1/embeddings`.
#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: OneOrMany,
    #[serde(default)]
    pub encoding_format: EncodingFormat,
    pub dimensions: Option<i64>,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

/// `POST /v1/predict`, KServe's v1 protocol: one object per instance, keyed by input column.
#[derive(Debug, Clone, Deserialize)]
pub struct PredictRequest {
    /// Optional; when given it must name the served model.
    #[serde(default)]
    pub model: Option<String>,
    pub instances: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// Token counts reported with every response.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<usize>,
    pub total_tokens: usize,
}

/// Why generation ended, in OpenAI's words.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// EOS, end of turn, or a stop string.
    Stop,
    /// `max_tokens` or the context length.
    Length,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_json_is_400_and_wrong_type_is_422_naming_the_field() {
        let error = parse_json::<ChatRequest>(b"{not json").unwrap_err();
        assert_eq!(error.status.as_u16(), 400);
        let error = parse_generation_request::<ChatRequest>(
            br#"{"model": "m", "messages": [], "temperature": "hot"}"#,
        )
        .unwrap_err();
        assert_eq!(error.status.as_u16(), 422);
        assert_eq!(error.param.as_deref(), Some("temperature"), "{error:?}");
        let error = parse_json::<ChatRequest>(br#"{"messages": []}"#).unwrap_err();
        assert_eq!(error.status.as_u16(), 422);
        assert!(error.message.contains("model"), "{error:?}");
        let error = parse_json::<ChatRequest>(b"[1, 2]").unwrap_err();
        assert_eq!(error.status.as_u16(), 422);
    }

    #[test]
    fn ranges_are_checked_with_the_accepted_values_in_the_message() {
        let fields = GenerationFields {
            max_tokens: Some(0),
            ..GenerationFields::default()
        };
        let error = fields.validate(2048).unwrap_err();
        assert_eq!(error.param.as_deref(), Some("max_tokens"));
        assert!(error.message.contains("1 to 2048"), "{}", error.message);
        let fields = GenerationFields {
            temperature: Some(f32::NAN),
            ..GenerationFields::default()
        };
        assert_eq!(
            fields.validate(2048).unwrap_err().param.as_deref(),
            Some("temperature")
        );
        let fields = GenerationFields {
            top_p: Some(0.0),
            ..GenerationFields::default()
        };
        assert_eq!(
            fields.validate(2048).unwrap_err().param.as_deref(),
            Some("top_p")
        );
        let settings = GenerationFields {
            temperature: Some(0.0),
            stop: Some(OneOrMany::One("\n".into())),
            ..GenerationFields::default()
        }
        .validate(2048)
        .unwrap();
        assert_eq!(settings.sampling.temperature, 0.0);
        assert_eq!(settings.stop, vec!["\n".to_string()]);
    }

    #[test]
    fn content_parts_are_joined_and_images_refused() {
        let request: ChatRequest = parse_json(
            br#"{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}"#,
        )
        .unwrap();
        assert_eq!(request.chat_messages().unwrap()[0].content, "ab");
        let request: ChatRequest = parse_json(
            br#"{"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#,
        )
        .unwrap();
        assert_eq!(request.chat_messages().unwrap_err().status.as_u16(), 422);
        let request: ChatRequest =
            parse_json(br#"{"model": "m", "messages": [{"role": "robot", "content": "x"}]}"#)
                .unwrap();
        assert!(
            request
                .chat_messages()
                .unwrap_err()
                .message
                .contains("robot")
        );
    }
}
