//! Checking one value against its schema column, and the per-column statistics of the rows
//! that pass.

use aigc_crds::dataset::{Column, ColumnType};
use serde::Serialize;

/// Why a row was dropped. Serialised as the keys of the report's `rejected` map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RejectReason {
    /// Not a well-formed row: a truncated or invalid JSON line, a CSV row with the wrong
    /// number of fields.
    ParseError,
    /// Bytes that are not UTF-8.
    InvalidUtf8,
    /// A value of the wrong type for its column.
    WrongType,
    /// No value for a required column.
    MissingRequired,
    /// A number outside the column's minimum/maximum.
    OutOfRange,
    /// NaN or infinity in a numeric column.
    NotFinite,
    /// Longer than the maximum row size.
    TooLong,
    /// Same content as an earlier row.
    Duplicate,
}

/// A rejected value: the reason and a message naming the column and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Reject {
    /// Category for the report's counters.
    pub reason: RejectReason,
    /// What was wrong, for a human.
    pub message: String,
}

impl Reject {
    pub(crate) fn new(reason: RejectReason, message: impl Into<String>) -> Self {
        Reject {
            reason,
            message: message.into(),
        }
    }
}

/// A value read from the source, before checking.
pub enum RawValue<'a> {
    /// Absent, empty (CSV) or JSON null.
    Null,
    /// Text from a CSV field.
    Text(&'a str),
    /// A value from a JSON object.
    Json(&'a serde_json::Value),
}

/// A checked value, normalised to its text form for the output shard, with its numeric value
/// for statistics.
pub struct Checked {
    /// Text written to the cleaned shard.
    pub text: String,
    /// The number, for integer and number columns.
    pub number: Option<f64>,
}

/// Check one value against its column. `Ok(None)` is an allowed null.
pub fn check_value(column: &Column, raw: RawValue<'_>) -> Result<Option<Checked>, Reject> {
    let name = &column.name;
    let text_or_json = match raw {
        RawValue::Null => None,
        RawValue::Text("") => None,
        RawValue::Json(serde_json::Value::Null) => None,
        other => Some(other),
    };
    let Some(raw) = text_or_json else {
        if column.required {
            return Err(Reject::new(
                RejectReason::MissingRequired,
                format!("column {name:?} is required but has no value"),
            ));
        }
        return Ok(None);
    };
    let wrong = |shown: String| {
        Reject::new(
            RejectReason::WrongType,
            format!(
                "column {name:?}: {shown} is not {}",
                type_phrase(column.type_)
            ),
        )
    };
    let checked = match (column.type_, raw) {
        (ColumnType::String, RawValue::Text(t)) => plain(t.to_owned()),
        (ColumnType::String, RawValue::Json(serde_json::Value::String(s))) => plain(s.clone()),
        (ColumnType::Integer, RawValue::Text(t)) => {
            let n: i64 = t.trim().parse().map_err(|_| wrong(format!("{t:?}")))?;
            numeric(n.to_string(), n as f64)
        }
        (ColumnType::Integer, RawValue::Json(serde_json::Value::Number(n))) => {
            if let Some(i) = n.as_i64() {
                numeric(i.to_string(), i as f64)
            } else if let Some(u) = n.as_u64() {
                numeric(u.to_string(), u as f64)
            } else {
                return Err(wrong(n.to_string()));
            }
        }
        (ColumnType::Number, RawValue::Text(t)) => {
            let x: f64 = t.trim().parse().map_err(|_| wrong(format!("{t:?}")))?;
            if !x.is_finite() {
                return Err(Reject::new(
                    RejectReason::NotFinite,
                    format!("column {name:?}: {t:?} is not a finite number"),
                ));
            }
            numeric(t.trim().to_owned(), x)
        }
        (ColumnType::Number, RawValue::Json(serde_json::Value::Number(n))) => {
            let x = n.as_f64().ok_or_else(|| wrong(n.to_string()))?;
            numeric(n.to_string(), x)
        }
        (ColumnType::Boolean, RawValue::Text(t)) => match t.trim().to_ascii_lowercase().as_str() {
            "true" => plain("true".into()),
            "false" => plain("false".into()),
            _ => return Err(wrong(format!("{t:?}"))),
        },
        (ColumnType::Boolean, RawValue::Json(serde_json::Value::Bool(b))) => plain(b.to_string()),
        (ColumnType::Timestamp, RawValue::Text(t)) => {
            timestamp(t).ok_or_else(|| wrong(format!("{t:?}")))?
        }
        (ColumnType::Timestamp, RawValue::Json(serde_json::Value::String(s))) => {
            timestamp(s).ok_or_else(|| wrong(format!("{s:?}")))?
        }
        (_, RawValue::Json(v)) => return Err(wrong(v.to_string())),
        (_, RawValue::Null) => unreachable!("nulls are handled above"),
    };
    if let Some(x) = checked.number {
        let below = column.minimum.is_some_and(|min| x < min);
        let above = column.maximum.is_some_and(|max| x > max);
        if below || above {
            return Err(Reject::new(
                RejectReason::OutOfRange,
                format!(
                    "column {name:?}: {} is outside [{}, {}]",
                    checked.text,
                    column.minimum.map_or("-inf".into(), |m| m.to_string()),
                    column.maximum.map_or("inf".into(), |m| m.to_string())
                ),
            ));
        }
    }
    Ok(Some(checked))
}

fn plain(text: String) -> Checked {
    Checked { text, number: None }
}

fn numeric(text: String, x: f64) -> Checked {
    Checked {
        text,
        number: Some(x),
    }
}

fn timestamp(t: &str) -> Option<Checked> {
    chrono::DateTime::parse_from_rfc3339(t.trim())
        .ok()
        .map(|_| plain(t.trim().to_owned()))
}

fn type_phrase(t: ColumnType) -> &'static str {
    match t {
        ColumnType::String => "a string",
        ColumnType::Integer => "an integer",
        ColumnType::Number => "a number",
        ColumnType::Boolean => "a boolean (true or false)",
        ColumnType::Timestamp => "an RFC 3339 timestamp",
    }
}

/// Statistics of one column over the rows kept.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ColumnStats {
    /// Column name.
    pub name: String,
    /// Column type.
    #[serde(rename = "type")]
    pub type_: ColumnType,
    /// Rows kept with no value in this column.
    pub null_count: u64,
    /// Smallest value (numeric columns with at least one value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Largest value (numeric columns with at least one value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

impl ColumnStats {
    /// Empty statistics for a column.
    pub fn new(column: &Column) -> Self {
        ColumnStats {
            name: column.name.clone(),
            type_: column.type_,
            null_count: 0,
            min: None,
            max: None,
        }
    }

    /// Count one kept value.
    pub fn observe(&mut self, value: Option<&Checked>) {
        match value {
            None => self.null_count += 1,
            Some(Checked {
                number: Some(x), ..
            }) => {
                self.min = Some(self.min.map_or(*x, |m| m.min(*x)));
                self.max = Some(self.max.map_or(*x, |m| m.max(*x)));
            }
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(t: ColumnType, required: bool, min: Option<f64>, max: Option<f64>) -> Column {
        Column {
            name: "c".into(),
            type_: t,
            required,
            minimum: min,
            maximum: max,
        }
    }

    fn reason(c: &Column, raw: RawValue<'_>) -> RejectReason {
        match check_value(c, raw) {
            Err(r) => r.reason,
            Ok(_) => panic!("expected a reject"),
        }
    }

    #[test]
    fn types_ranges_and_nulls_are_checked() {
        let int = col(ColumnType::Integer, true, Some(0.0), Some(10.0));
        assert_eq!(
            check_value(&int, RawValue::Text("7"))
                .unwrap()
                .unwrap()
                .number,
            Some(7.0)
        );
        assert_eq!(reason(&int, RawValue::Text("7.5")), RejectReason::WrongType);
        assert_eq!(reason(&int, RawValue::Text("11")), RejectReason::OutOfRange);
        assert_eq!(
            reason(&int, RawValue::Text("")),
            RejectReason::MissingRequired
        );
        let num = col(ColumnType::Number, false, None, None);
        assert_eq!(reason(&num, RawValue::Text("NaN")), RejectReason::NotFinite);
        assert_eq!(reason(&num, RawValue::Text("inf")), RejectReason::NotFinite);
        assert!(check_value(&num, RawValue::Text("")).unwrap().is_none());
        let json = serde_json::json!("3");
        assert_eq!(reason(&num, RawValue::Json(&json)), RejectReason::WrongType);
        let b = col(ColumnType::Boolean, false, None, None);
        assert_eq!(
            check_value(&b, RawValue::Text("TRUE"))
                .unwrap()
                .unwrap()
                .text,
            "true"
        );
        assert_eq!(reason(&b, RawValue::Text("yes")), RejectReason::WrongType);
        let ts = col(ColumnType::Timestamp, false, None, None);
        assert!(check_value(&ts, RawValue::Text("2024-01-02T03:04:05Z")).is_ok());
        assert_eq!(
            reason(&ts, RawValue::Text("yesterday")),
            RejectReason::WrongType
        );
    }

    #[test]
    fn messages_name_the_column_and_value() {
        let int = col(ColumnType::Integer, false, None, None);
        let r = check_value(&int, RawValue::Text("abc")).err().unwrap();
        assert_eq!(r.message, "column \"c\": \"abc\" is not an integer");
    }
}
