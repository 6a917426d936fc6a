//! The one Condition type every kind's status uses, following the Kubernetes API conventions
//! (`type`, `status`, `reason`, `message`, `lastTransitionTime`, `observedGeneration`).

use chrono::{DateTime, SecondsFormat, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Whether a condition holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// The operator cannot tell yet.
    Unknown,
}

/// One aspect of a resource's current state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type of the condition in CamelCase, e.g. `Ready`, `Admitted`, `Validated`, `Migrating`.
    #[serde(rename = "type")]
    #[schemars(pattern(r"^[A-Z][A-Za-z0-9]*$"), length(max = 316))]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// One CamelCase word for machines and dashboards, e.g. `WaitingForDataset`.
    #[schemars(
        pattern(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"),
        length(min = 1, max = 1024)
    )]
    pub reason: String,
    /// A sentence for humans saying why, with the values involved.
    #[serde(default)]
    #[schemars(length(max = 32768))]
    pub message: String,
    /// When `status` last changed, RFC 3339.
    #[schemars(extend("format" = "date-time"))]
    pub last_transition_time: String,
    /// The `metadata.generation` the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,
}

impl Condition {
    /// A condition that took effect at `now`.
    pub fn new(
        type_: &str,
        status: ConditionStatus,
        reason: &str,
        message: impl Into<String>,
        observed_generation: Option<i64>,
        now: DateTime<Utc>,
    ) -> Self {
        Condition {
            type_: type_.to_owned(),
            status,
            reason: reason.to_owned(),
            message: message.into(),
            last_transition_time: now.to_rfc3339_opts(SecondsFormat::Secs, true),
            observed_generation,
        }
    }
}

/// Put `new` into `conditions`, replacing the one of the same type. The previous
/// `lastTransitionTime` is kept when the status did not change, as the conventions require.
/// Returns whether anything changed, so callers can skip a no-op status patch.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => {
            if existing.status == new.status {
                new.last_transition_time = existing.last_transition_time.clone();
            }
            let changed = *existing != new;
            *existing = new;
            changed
        }
        None => {
            conditions.push(new);
            true
        }
    }
}

/// The condition of the given type, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(second: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, second).unwrap()
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut conds = Vec::new();
        let ready = |status, reason, t| Condition::new("Ready", status, reason, "", Some(1), at(t));
        assert!(set_condition(
            &mut conds,
            ready(ConditionStatus::False, "Preparing", 0)
        ));
        assert!(set_condition(
            &mut conds,
            ready(ConditionStatus::False, "Validating", 5)
        ));
        assert_eq!(conds[0].last_transition_time, "2026-01-01T00:00:00Z");
        assert_eq!(conds[0].reason, "Validating");
        assert!(!set_condition(
            &mut conds,
            ready(ConditionStatus::False, "Validating", 9)
        ));
        assert!(set_condition(
            &mut conds,
            ready(ConditionStatus::True, "Prepared", 10)
        ));
        assert_eq!(conds[0].last_transition_time, "2026-01-01T00:00:10Z");
        assert_eq!(conds.len(), 1);
    }

    #[test]
    fn conditions_of_different_types_coexist() {
        let mut conds = Vec::new();
        set_condition(
            &mut conds,
            Condition::new("Ready", ConditionStatus::False, "Waiting", "", None, at(0)),
        );
        set_condition(
            &mut conds,
            Condition::new(
                "Validated",
                ConditionStatus::True,
                "SchemaOk",
                "",
                None,
                at(0),
            ),
        );
        assert_eq!(conds.len(), 2);
        assert_eq!(
            find_condition(&conds, "Validated").unwrap().reason,
            "SchemaOk"
        );
        assert!(find_condition(&conds, "Migrating").is_none());
    }
}
