//! StorageTier controller: probes each tier's backend, reports whether it is reachable, how
//! many bytes and objects it holds, and what that costs per month; re-probes periodically.
//!
//! Filesystem tiers are probed through the operator's own view of the path (local mode, or
//! an operator pod that mounts the tier). The probe only reads: it never creates, moves or
//! deletes anything on a tier.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aigc_crds::condition::set_condition;
use aigc_crds::storage_tier::{StorageTier, StorageTierStatus, TierBackend};
use aigc_crds::{Condition, ConditionStatus};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt;
use kube::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::watcher;

use crate::Error;
use crate::controllers::{Context, apply_status, instrumented, publish};

/// How often a tier is probed again after a successful probe.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(60);

const GIB: f64 = (1u64 << 30) as f64;

/// What one probe found.
#[derive(Clone, Debug, PartialEq)]
pub enum ProbeOutcome {
    /// The backend answered; its contents add up to this.
    Reachable {
        /// Bytes in regular files under the tier root.
        used_bytes: u64,
        /// Regular files under the tier root.
        object_count: u64,
    },
    /// The backend could not be used, and why.
    Unreachable {
        /// CamelCase reason for the condition.
        reason: &'static str,
        /// What went wrong, with the path or endpoint.
        message: String,
    },
}

/// Walk a filesystem tier's root and add up its regular files. Symlinks are not followed, so
/// a link out of the tier can never make it count (or later touch) foreign data.
pub fn probe_filesystem(root: &Path) -> ProbeOutcome {
    match std::fs::metadata(root) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return ProbeOutcome::Unreachable {
                reason: "NotADirectory",
                message: format!("{} exists but is not a directory", root.display()),
            };
        }
        Err(error) => {
            return ProbeOutcome::Unreachable {
                reason: "PathUnreachable",
                message: format!("cannot read {}: {error}", root.display()),
            };
        }
    }
    let mut used_bytes = 0;
    let mut object_count = 0;
    let mut pending: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) => {
                return ProbeOutcome::Unreachable {
                    reason: "PathUnreadable",
                    message: format!("cannot list {}: {error}", dir.display()),
                };
            }
        };
        for entry in entries.flatten() {
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            if file_type.is_dir() {
                pending.push(entry.path());
            } else if file_type.is_file() {
                object_count += 1;
                used_bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    ProbeOutcome::Reachable {
        used_bytes,
        object_count,
    }
}

/// The status after a probe at `now`.
pub fn desired_status(
    tier: &StorageTier,
    outcome: &ProbeOutcome,
    now: DateTime<Utc>,
) -> StorageTierStatus {
    let generation = tier.metadata.generation;
    let mut status = tier.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    status.last_probe_time = Some(now.to_rfc3339_opts(SecondsFormat::Secs, true));
    let condition = match outcome {
        ProbeOutcome::Reachable {
            used_bytes,
            object_count,
        } => {
            status.used_bytes = Some(*used_bytes);
            status.object_count = Some(*object_count);
            status.monthly_cost = tier.spec.cost_per_gib_month.map(|price| {
                let cost = *used_bytes as f64 / GIB * price;
                (cost * 1e6).round() / 1e6
            });
            let mut message = format!("{object_count} objects, {used_bytes} bytes");
            if let Some(capacity) = &tier.spec.capacity {
                message.push_str(&format!(" of {capacity} capacity"));
            }
            Condition::new(
                "Ready",
                ConditionStatus::True,
                "Reachable",
                message,
                generation,
                now,
            )
        }
        ProbeOutcome::Unreachable { reason, message } => Condition::new(
            "Ready",
            ConditionStatus::False,
            reason,
            message.clone(),
            generation,
            now,
        ),
    };
    set_condition(&mut status.conditions, condition);
    status
}

/// Where the operator itself sees a filesystem tier's `path`: under `local_root` when it runs
/// beside the local cluster (`local up`), which keeps hostPath volumes there; as written
/// otherwise (the operator's own mount).
pub fn visible_root(path: &str, local_root: Option<&Path>) -> PathBuf {
    match local_root {
        Some(root) => root.join(path.trim_start_matches('/')),
        None => PathBuf::from(path),
    }
}

async fn probe(tier: &StorageTier, local_root: Option<&Path>) -> ProbeOutcome {
    match &tier.spec.backend {
        TierBackend::Filesystem(fs) => {
            let root = visible_root(&fs.path, local_root);
            if local_root.is_some() {
                // The local cluster creates hostPath directories on demand, as
                // `DirectoryOrCreate` would; an empty tier is a reachable tier.
                let _ = std::fs::create_dir_all(&root);
            }
            tokio::task::spawn_blocking(move || probe_filesystem(&root))
                .await
                .unwrap_or_else(|error| ProbeOutcome::Unreachable {
                    reason: "ProbeFailed",
                    message: format!("the probe stopped: {error}"),
                })
        }
        TierBackend::S3(s3) => ProbeOutcome::Unreachable {
            reason: "ProbeNotAvailable",
            message: format!(
                "this operator build cannot probe S3 tiers yet (bucket {:?}); the S3 backend of aigc-storage adds it",
                s3.bucket
            ),
        },
    }
}

/// Probe one StorageTier and write its status.
pub async fn reconcile(tier: Arc<StorageTier>, ctx: Arc<Context>) -> Result<Action, Error> {
    let outcome = probe(&tier, ctx.config.local_root.as_deref()).await;
    let status = desired_status(&tier, &outcome, Utc::now());
    let was_ready = tier
        .status
        .as_ref()
        .and_then(|s| aigc_crds::condition::find_condition(&s.conditions, "Ready"))
        .map(|c| c.status);
    let ready = matches!(outcome, ProbeOutcome::Reachable { .. });
    if was_ready
        != Some(if ready {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        })
    {
        let (type_, reason, note) = match &outcome {
            ProbeOutcome::Reachable { .. } => (
                EventType::Normal,
                "Reachable",
                "the backend answered".to_owned(),
            ),
            ProbeOutcome::Unreachable { reason, message } => {
                (EventType::Warning, *reason, message.clone())
            }
        };
        publish(&ctx.recorder, tier.as_ref(), type_, reason, note).await;
    }
    let api: Api<StorageTier> = Api::all(ctx.client.clone());
    apply_status(&api, tier.as_ref(), &status).await?;
    Ok(Action::requeue(if ready {
        PROBE_INTERVAL
    } else {
        PROBE_INTERVAL / 4
    }))
}

/// Retry soon after an error.
pub fn error_policy(_tier: Arc<StorageTier>, _error: &Error, _ctx: Arc<Context>) -> Action {
    Action::requeue(Duration::from_secs(5))
}

/// Run the StorageTier controller until [`Context::stopped`].
pub async fn run(ctx: Arc<Context>) {
    ctx.controller(
        "StorageTier",
        Api::<StorageTier>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(ctx.stopped())
    .run(instrumented("StorageTier", reconcile), error_policy, ctx)
    .for_each(|result| async move {
        match result {
            Ok((tier, _)) => tracing::debug!(tier = %tier, "probed StorageTier"),
            Err(error) => tracing::warn!(%error, "StorageTier reconcile failed"),
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use aigc_crds::storage_tier::StorageTierSpec;
    use chrono::TimeZone;

    fn tier(spec: serde_json::Value) -> StorageTier {
        let mut t = StorageTier::new(
            "hot",
            serde_json::from_value::<StorageTierSpec>(spec).unwrap(),
        );
        t.metadata.generation = Some(2);
        t
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("aigc-probe-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("datasets/default/d/v1")).unwrap();
        dir
    }

    #[test]
    fn a_probe_adds_up_files_recursively_and_ignores_symlinks() {
        let root = scratch("count");
        std::fs::write(
            root.join("datasets/default/d/v1/part-0.csv"),
            vec![b'x'; 1000],
        )
        .unwrap();
        std::fs::write(root.join("datasets/default/d/v1/manifest.json"), b"{}").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("escape")).unwrap();
        assert_eq!(
            probe_filesystem(&root),
            ProbeOutcome::Reachable {
                used_bytes: 1002,
                object_count: 2
            }
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_missing_or_wrong_path_is_unreachable_with_the_path_named() {
        let missing = probe_filesystem(Path::new("/nonexistent/aigc/tier"));
        let ProbeOutcome::Unreachable { reason, message } = missing else {
            panic!("{missing:?}")
        };
        assert_eq!(reason, "PathUnreachable");
        assert!(message.contains("/nonexistent/aigc/tier"), "{message}");
        let root = scratch("file");
        let file = root.join("plain");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(
            probe_filesystem(&file),
            ProbeOutcome::Unreachable {
                reason: "NotADirectory",
                ..
            }
        ));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn status_reports_usage_cost_and_readiness() {
        let t = tier(
            serde_json::json!({"class": "hot", "backend": {"filesystem": {"path": "/t"}}, "costPerGiBMonth": 0.5, "capacity": "10Gi"}),
        );
        let now = Utc.with_ymd_and_hms(2026, 12, 4, 0, 0, 0).unwrap();
        let status = desired_status(
            &t,
            &ProbeOutcome::Reachable {
                used_bytes: 3 << 30,
                object_count: 7,
            },
            now,
        );
        assert_eq!(status.used_bytes, Some(3 << 30));
        assert_eq!(status.object_count, Some(7));
        assert_eq!(status.monthly_cost, Some(1.5));
        assert_eq!(
            status.last_probe_time.as_deref(),
            Some("2026-12-04T00:00:00Z")
        );
        assert_eq!(status.observed_generation, Some(2));
        let ready = &status.conditions[0];
        assert_eq!(
            (ready.status, ready.reason.as_str()),
            (ConditionStatus::True, "Reachable")
        );
        assert_eq!(
            ready.message,
            "7 objects, 3221225472 bytes of 10Gi capacity"
        );

        let down = ProbeOutcome::Unreachable {
            reason: "PathUnreachable",
            message: "cannot read /t".into(),
        };
        let status = desired_status(&t, &down, now);
        assert_eq!(status.conditions[0].status, ConditionStatus::False);
        assert_eq!(status.conditions[0].message, "cannot read /t");
    }
}
