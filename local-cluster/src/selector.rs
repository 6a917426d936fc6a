//! Label and field selectors (`?labelSelector=`, `?fieldSelector=`), parsed once per request
//! and matched against stored objects. Parse errors are 400s worded like the API server's.

use serde_json::Value;

use crate::status::ApiError;

#[derive(Clone, Debug, PartialEq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector(Vec<Requirement>);

/// A parsed field selector over dotted paths (`metadata.name`, `involvedObject.uid`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSelector(Vec<Requirement>);

/// Split at commas that are not inside parentheses.
fn split_terms(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
        .into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 317
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

fn set_values(text: &str) -> Option<Vec<String>> {
    let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect(),
    )
}

impl LabelSelector {
    /// Parse `app=web,tier!=db,env in (a,b),!legacy`.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let invalid = |term: &str| {
            ApiError::bad_request(format!(
                "unable to parse requirement: found '{term}', expected: '=', '!=', '==', 'in', notin'"
            ))
        };
        let mut requirements = Vec::new();
        for term in split_terms(text) {
            let requirement = if let Some(key) = term.strip_prefix('!') {
                Requirement::DoesNotExist(key.trim().to_owned())
            } else if let Some((key, value)) = term.split_once("!=") {
                Requirement::NotEquals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, value)) = term.split_once("==") {
                Requirement::Equals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, value)) = term.split_once('=') {
                Requirement::Equals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, values)) = term.split_once(" notin ") {
                Requirement::NotIn(
                    key.trim().to_owned(),
                    set_values(values).ok_or_else(|| invalid(term))?,
                )
            } else if let Some((key, values)) = term.split_once(" in ") {
                Requirement::In(
                    key.trim().to_owned(),
                    set_values(values).ok_or_else(|| invalid(term))?,
                )
            } else {
                Requirement::Exists(term.to_owned())
            };
            let key = match &requirement {
                Requirement::Equals(k, _)
                | Requirement::NotEquals(k, _)
                | Requirement::In(k, _)
                | Requirement::NotIn(k, _)
                | Requirement::Exists(k)
                | Requirement::DoesNotExist(k) => k,
            };
            if !valid_key(key) {
                return Err(ApiError::bad_request(format!(
                    "unable to parse requirement: invalid label key \"{key}\": name part must consist of alphanumeric characters, '-', '_' or '.'"
                )));
            }
            requirements.push(requirement);
        }
        Ok(Self(requirements))
    }

    /// Whether an object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let labels = &object["metadata"]["labels"];
        let label = |key: &str| labels.get(key).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::DoesNotExist(k) => label(k).is_none(),
        })
    }

    /// Whether the selector is empty (matches everything).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The value at a dotted field path, as a string (numbers and booleans in JSON form).
fn field_value(object: &Value, path: &str) -> String {
    let mut current = object;
    for part in path.split('.') {
        match current.get(part) {
            Some(next) => current = next,
            None => return String::new(),
        }
    }
    match current {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

impl FieldSelector {
    /// Parse `metadata.name=x,status.phase!=Running`.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        for term in split_terms(text) {
            let requirement = if let Some((key, value)) = term.split_once("!=") {
                Requirement::NotEquals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, value)) = term.split_once("==") {
                Requirement::Equals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, value)) = term.split_once('=') {
                Requirement::Equals(key.trim().to_owned(), value.trim().to_owned())
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector: invalid selector: '{term}'; can't understand '{term}'"
                )));
            };
            requirements.push(requirement);
        }
        Ok(Self(requirements))
    }

    /// Whether the object's fields satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => field_value(object, k) == *v,
            Requirement::NotEquals(k, v) => field_value(object, k) != *v,
            _ => true,
        })
    }

    /// The name this selector pins, if it is `metadata.name=X`.
    pub fn pinned_name(&self) -> Option<&str> {
        self.0.iter().find_map(|r| match r {
            Requirement::Equals(k, v) if k == "metadata.name" => Some(v.as_str()),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors_cover_every_operator() {
        let object = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        let matches = |s: &str| LabelSelector::parse(s).unwrap().matches(&object);
        assert!(matches("app=web"));
        assert!(matches("app==web,tier!=db"));
        assert!(matches("tier in (front, back)"));
        assert!(!matches("tier notin (front)"));
        assert!(matches("app,!legacy"));
        assert!(!matches("legacy"));
        assert!(matches(""));
        assert!(LabelSelector::parse("a in b").is_err());
        assert!(LabelSelector::parse("bad key!x=1").is_err());
    }

    #[test]
    fn field_selectors_read_dotted_paths() {
        let object = json!({"metadata": {"name": "x"}, "involvedObject": {"kind": "Pod"}});
        let selector = FieldSelector::parse("metadata.name=x,involvedObject.kind!=Node").unwrap();
        assert!(selector.matches(&object));
        assert_eq!(selector.pinned_name(), Some("x"));
        assert!(FieldSelector::parse("metadata.name").is_err());
    }
}
