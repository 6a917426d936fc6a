//! The final result of the Job-style subcommands (`prepare`, `train`, `transfer`, `inspect`):
//! one compact JSON object, at most [`MAX_SUMMARY_BYTES`], printed as the last line on stdout
//! and written to the termination-message path, which the kubelet copies into the pod's
//! `state.terminated.message` (it keeps 4096 bytes) for the operator to read.
//!
//! At Kubernetes' default path the message is written only when the file already exists
//! (inside a container), so running the worker on a workstation creates nothing under `/dev`.

use std::path::Path;

use serde_json::Value;

/// Kubernetes' default termination-message path.
pub const DEFAULT_TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
/// The most bytes the kubelet keeps of a termination message.
pub const MAX_SUMMARY_BYTES: usize = 4096;
/// Longest string kept whole when a summary must shrink.
const SHRUNK_STRING_CHARS: usize = 300;

/// `value` as one line of JSON of at most [`MAX_SUMMARY_BYTES`]. When it is longer, the
/// top-level fields in `droppable` go first (in order; their names are listed under
/// `"omitted"`), then long strings are cut; the shape of what remains is unchanged.
pub fn compact(value: &Value, droppable: &[&str]) -> String {
    let text = value.to_string();
    if text.len() <= MAX_SUMMARY_BYTES {
        return text;
    }
    let mut value = value.clone();
    if let Value::Object(map) = &mut value {
        let mut omitted = Vec::new();
        for key in droppable {
            if map.remove(*key).is_some() {
                omitted.push(Value::String((*key).to_string()));
            }
            map.insert("omitted".into(), Value::Array(omitted.clone()));
            let text = Value::Object(map.clone()).to_string();
            if text.len() <= MAX_SUMMARY_BYTES {
                return text;
            }
        }
    }
    shorten_strings(&mut value);
    let text = value.to_string();
    if text.len() <= MAX_SUMMARY_BYTES {
        return text;
    }
    serde_json::json!({
        "omitted": "the summary exceeded 4096 bytes even after shortening",
        "summaryBytes": text.len(),
    })
    .to_string()
}

fn shorten_strings(value: &mut Value) {
    match value {
        Value::String(s) if s.chars().count() > SHRUNK_STRING_CHARS => {
            let mut short: String = s.chars().take(SHRUNK_STRING_CHARS).collect();
            short.push('…');
            *s = short;
        }
        Value::Array(items) => items.iter_mut().for_each(shorten_strings),
        Value::Object(map) => map.values_mut().for_each(shorten_strings),
        _ => {}
    }
}

/// Print `summary` as the last line on stdout and write it to `termination_message_path`
/// (see the module docs for the default path).
pub fn emit(summary: &str, termination_message_path: Option<&Path>) {
    println!("{summary}");
    let Some(path) = termination_message_path else {
        return;
    };
    if path == Path::new(DEFAULT_TERMINATION_MESSAGE_PATH) && !path.exists() {
        tracing::debug!("no {DEFAULT_TERMINATION_MESSAGE_PATH}; not running in a container");
        return;
    }
    if let Err(e) = std::fs::write(path, summary) {
        tracing::warn!(error = %e, path = %path.display(), "could not write the termination message");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn small_summaries_are_one_unchanged_line() {
        let value = json!({"rowsIn": 3, "error": null});
        assert_eq!(
            compact(&value, &["columns"]),
            r#"{"error":null,"rowsIn":3}"#
        );
    }

    #[test]
    fn large_summaries_drop_listed_fields_then_cut_strings() {
        let columns: Vec<Value> = (0..200)
            .map(|i| json!({"name": format!("column_{i}"), "min": i, "max": i * 2}))
            .collect();
        let value = json!({"rowsIn": 9, "columns": columns, "error": "x".repeat(10_000)});
        let text = compact(&value, &["columns"]);
        assert!(text.len() <= MAX_SUMMARY_BYTES, "{}", text.len());
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["rowsIn"], 9);
        assert_eq!(back["omitted"], json!(["columns"]));
        assert!(back["error"].as_str().unwrap().starts_with("xxx"));

        let huge = json!({"list": vec!["y".repeat(200); 100]});
        let text = compact(&huge, &[]);
        assert!(text.len() <= MAX_SUMMARY_BYTES);
        assert!(serde_json::from_str::<Value>(&text).unwrap()["omitted"].is_string());
    }
}
