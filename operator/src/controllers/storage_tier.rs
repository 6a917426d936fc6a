//! StorageTier controller: probes each tier's backend, reports whether it is reachable, how
//! many bytes and objects it holds, and what that costs per month; re-probes periodically.
//!
//! Filesystem tiers are probed through the operator's own view of the path (local mode, or
//! an operator pod that mounts the tier). S3 tiers are probed over the network with the
//! credentials of `credentialsSecretRef`: HeadBucket, then a listing of the tier's prefix
//! bounded to [`LIST_MAX_PAGES`] pages, so a huge bucket cannot stall the controller (the
//! status then says the counts are lower bounds). A change to a referenced Secret probes its
//! tiers again at once. The probe only reads: it never creates, moves or deletes anything on
//! a tier, and its messages name Secrets and keys, never their values.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aigc_crds::common::SecretRef;
use aigc_crds::condition::set_condition;
use aigc_crds::storage_tier::{S3Backend, StorageTier, StorageTierStatus, TierBackend};
use aigc_crds::{Condition, ConditionStatus};
use aigc_storage::{S3Config, S3Credentials, S3Tier};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use crate::Error;
use crate::controllers::{Context, apply_status, instrumented, publish};

/// How often a tier is probed again after a successful probe (a failing one is probed four
/// times as often); `ControllerConfig::tier_probe_interval` overrides it.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(60);
/// Longest an S3 probe may wait for its endpoint before it counts as failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Keys per page when an S3 tier's usage is listed.
pub const LIST_PAGE_SIZE: i32 = 1000;
/// Pages one probe lists at most: beyond [`LIST_PAGE_SIZE`] × this many objects, the usage
/// reported is a lower bound.
pub const LIST_MAX_PAGES: usize = 10;

/// Secret key holding the access key id of an S3 tier.
pub const ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
/// Secret key holding the secret access key of an S3 tier.
pub const SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
/// Optional Secret key holding a session token.
pub const SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";

const GIB: f64 = (1u64 << 30) as f64;

/// What one probe found.
#[derive(Clone, Debug, PartialEq)]
pub enum ProbeOutcome {
    /// The backend answered; its contents add up to this.
    Reachable {
        /// Bytes in regular files under the tier root (objects under the prefix on S3).
        used_bytes: u64,
        /// Regular files under the tier root (objects under the prefix on S3).
        object_count: u64,
        /// Whether everything was counted; when false the counts are lower bounds.
        complete: bool,
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
        complete: true,
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
            complete,
        } => {
            status.used_bytes = Some(*used_bytes);
            status.object_count = Some(*object_count);
            status.usage_partial = !complete;
            status.monthly_cost = tier.spec.cost_per_gib_month.map(|price| {
                let cost = *used_bytes as f64 / GIB * price;
                (cost * 1e6).round() / 1e6
            });
            let mut message = format!("{object_count} objects, {used_bytes} bytes");
            if !complete {
                message = format!(
                    "at least {message} (a probe counts the first {} objects only)",
                    LIST_PAGE_SIZE as usize * LIST_MAX_PAGES
                );
            }
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

/// `namespace/name` of the Secret `reference` names; a reference without a namespace means
/// the operator's own (`default_namespace`).
pub fn secret_key(reference: &SecretRef, default_namespace: &str) -> (String, String) {
    (
        reference
            .namespace
            .clone()
            .unwrap_or_else(|| default_namespace.to_owned()),
        reference.name.clone(),
    )
}

/// The S3 credentials in `secret` (`namespace/name` for messages): [`ACCESS_KEY_ID`] and
/// [`SECRET_ACCESS_KEY`], and [`SESSION_TOKEN`] when present. Surrounding whitespace, such as
/// the newline `echo` leaves, is dropped. Messages name the Secret and its keys, never a value.
pub fn credentials_from_secret(secret: &Secret, name: &str) -> Result<S3Credentials, ProbeOutcome> {
    let value = |key: &str| -> Result<Option<String>, ProbeOutcome> {
        let bytes = secret
            .data
            .as_ref()
            .and_then(|data| data.get(key))
            .map(|b| b.0.clone())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|data| data.get(key))
                    .map(|s| s.clone().into_bytes())
            });
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let text = String::from_utf8(bytes).map_err(|_| ProbeOutcome::Unreachable {
            reason: "SecretKeyInvalid",
            message: format!("key {key} of Secret {name} is not UTF-8 text"),
        })?;
        let text = text.trim();
        Ok((!text.is_empty()).then(|| text.to_owned()))
    };
    let required = |key: &str| -> Result<String, ProbeOutcome> {
        value(key)?.ok_or_else(|| ProbeOutcome::Unreachable {
            reason: "SecretKeyMissing",
            message: format!(
                "Secret {name} (spec.backend.s3.credentialsSecretRef) has no non-empty key {key}; \
                 it needs {ACCESS_KEY_ID} and {SECRET_ACCESS_KEY} ({SESSION_TOKEN} optional)"
            ),
        })
    };
    Ok(S3Credentials::Static {
        access_key_id: required(ACCESS_KEY_ID)?,
        secret_access_key: required(SECRET_ACCESS_KEY)?,
        session_token: value(SESSION_TOKEN)?,
    })
}

/// Where `backend` is, for messages.
fn endpoint_name(backend: &S3Backend) -> String {
    backend
        .endpoint
        .clone()
        .unwrap_or_else(|| format!("AWS S3 in {}", backend.region))
}

/// The outcome a failed S3 probe reports: a reason per kind of problem and a message that
/// names the bucket, the endpoint and, for refused credentials, where they came from.
pub fn s3_failure(
    error: &aigc_storage::Error,
    backend: &S3Backend,
    secret: Option<&str>,
) -> ProbeOutcome {
    let bucket = &backend.bucket;
    let endpoint = endpoint_name(backend);
    let (reason, message) = match error {
        aigc_storage::Error::TierNotFound { .. } => (
            "BucketNotFound",
            format!("bucket {bucket:?} does not exist at {endpoint}"),
        ),
        aigc_storage::Error::AccessDenied { code, detail, .. } => (
            "AccessDenied",
            format!(
                "{endpoint} refused access to bucket {bucket:?} ({code}: {detail}) with {}",
                match secret {
                    Some(name) => format!(
                        "the credentials of Secret {name}; check its keys {ACCESS_KEY_ID} and {SECRET_ACCESS_KEY}"
                    ),
                    None => "the operator's default AWS credentials (no spec.backend.s3.credentialsSecretRef)".to_owned(),
                }
            ),
        ),
        aigc_storage::Error::Unreachable { detail, .. } => {
            let mut message = format!("cannot reach {endpoint} for bucket {bucket:?}: {detail}");
            if backend.endpoint.is_some() && !backend.force_path_style {
                // Virtual-hosted addressing puts the bucket in the host name, which
                // S3-compatible servers rarely resolve.
                message.push_str(
                    "; most S3-compatible servers need spec.backend.s3.forcePathStyle: true",
                );
            }
            ("EndpointUnreachable", message)
        }
        other => ("ProbeFailed", other.to_string()),
    };
    ProbeOutcome::Unreachable { reason, message }
}

/// The credentials an S3 tier's probe uses: those of its Secret, or the default chain.
async fn s3_credentials(
    client: &Client,
    reference: Option<&SecretRef>,
) -> Result<S3Credentials, ProbeOutcome> {
    let Some(reference) = reference else {
        return Ok(S3Credentials::DefaultChain);
    };
    let (namespace, name) = secret_key(reference, client.default_namespace());
    let full = format!("{namespace}/{name}");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    match secrets.get_opt(&name).await {
        Ok(Some(secret)) => credentials_from_secret(&secret, &full),
        Ok(None) => Err(ProbeOutcome::Unreachable {
            reason: "SecretNotFound",
            message: format!(
                "Secret {full} named in spec.backend.s3.credentialsSecretRef does not exist; \
                 create it with keys {ACCESS_KEY_ID} and {SECRET_ACCESS_KEY}"
            ),
        }),
        Err(error) => Err(ProbeOutcome::Unreachable {
            reason: "SecretUnreadable",
            message: format!("cannot read Secret {full}: {error}"),
        }),
    }
}

async fn probe_s3(client: &Client, backend: &S3Backend) -> ProbeOutcome {
    let credentials = match s3_credentials(client, backend.credentials_secret_ref.as_ref()).await {
        Ok(credentials) => credentials,
        Err(outcome) => return outcome,
    };
    let secret = backend
        .credentials_secret_ref
        .as_ref()
        .map(|r| secret_key(r, client.default_namespace()))
        .map(|(namespace, name)| format!("{namespace}/{name}"));
    let config = S3Config {
        endpoint: backend.endpoint.clone(),
        region: backend.region.clone(),
        force_path_style: backend.force_path_style,
        credentials,
        storage_class: backend.storage_class,
        ..S3Config::default()
    };
    let prefix = backend.prefix.as_deref().unwrap_or_default();
    let probe = async {
        let tier = S3Tier::new(&config, &backend.bucket, prefix).await?;
        tier.head_bucket().await?;
        tier.usage(LIST_PAGE_SIZE, LIST_MAX_PAGES).await
    };
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(usage)) => ProbeOutcome::Reachable {
            used_bytes: usage.bytes,
            object_count: usage.objects,
            complete: usage.complete,
        },
        Ok(Err(error)) => s3_failure(&error, backend, secret.as_deref()),
        Err(_) => ProbeOutcome::Unreachable {
            reason: "ProbeTimedOut",
            message: format!(
                "{} did not answer for bucket {:?} within {}s",
                endpoint_name(backend),
                backend.bucket,
                PROBE_TIMEOUT.as_secs()
            ),
        },
    }
}

async fn probe(tier: &StorageTier, ctx: &Context) -> ProbeOutcome {
    let local_root = ctx.config.local_root.as_deref();
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
        TierBackend::S3(s3) => probe_s3(&ctx.client, s3).await,
    }
}

/// The StorageTiers among `tiers` whose credentials are the Secret `namespace/name`.
pub fn tiers_using_secret(
    tiers: &[Arc<StorageTier>],
    namespace: &str,
    name: &str,
    default_namespace: &str,
) -> Vec<ObjectRef<StorageTier>> {
    tiers
        .iter()
        .filter(|tier| match &tier.spec.backend {
            TierBackend::S3(s3) => s3.credentials_secret_ref.as_ref().is_some_and(|r| {
                secret_key(r, default_namespace) == (namespace.to_owned(), name.to_owned())
            }),
            TierBackend::Filesystem(_) => false,
        })
        .map(|tier| ObjectRef::from_obj(tier.as_ref()))
        .collect()
}

/// Probe one StorageTier and write its status.
pub async fn reconcile(tier: Arc<StorageTier>, ctx: Arc<Context>) -> Result<Action, Error> {
    let outcome = probe(&tier, &ctx).await;
    let status = desired_status(&tier, &outcome, Utc::now());
    let before = tier
        .status
        .as_ref()
        .and_then(|s| aigc_crds::condition::find_condition(&s.conditions, "Ready"))
        .map(|c| (c.status, c.reason.clone()));
    let ready = matches!(outcome, ProbeOutcome::Reachable { .. });
    let now = aigc_crds::condition::find_condition(&status.conditions, "Ready")
        .map(|c| (c.status, c.reason.clone()));
    // An Event per transition, including from one problem to another.
    if before != now {
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
    let interval = ctx.config.tier_probe_interval.unwrap_or(PROBE_INTERVAL);
    Ok(Action::requeue(if ready { interval } else { interval / 4 }))
}

/// Retry soon after an error.
pub fn error_policy(_tier: Arc<StorageTier>, _error: &Error, _ctx: Arc<Context>) -> Action {
    Action::requeue(Duration::from_secs(5))
}

/// Run the StorageTier controller until [`Context::stopped`].
pub async fn run(ctx: Arc<Context>) {
    let controller = ctx.controller(
        "StorageTier",
        Api::<StorageTier>::all(ctx.client.clone()),
        watcher::Config::default(),
    );
    let tiers = controller.store();
    let default_namespace = ctx.client.default_namespace().to_owned();
    // Secrets are only mapped to the tiers naming them, never kept.
    let secrets = watcher(
        Api::<Secret>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .touched_objects();
    controller
        .watches_stream(secrets, move |secret: Secret| {
            tiers_using_secret(
                &tiers.state(),
                &secret.namespace().unwrap_or_default(),
                &secret.name_any(),
                &default_namespace,
            )
        })
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
                object_count: 2,
                complete: true
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
                complete: true,
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

    #[test]
    fn a_partial_count_is_reported_as_a_lower_bound() {
        let t = tier(serde_json::json!({"class": "cold", "backend": {"s3": {"bucket": "big"}}}));
        let now = Utc.with_ymd_and_hms(2026, 12, 4, 0, 0, 0).unwrap();
        let partial = ProbeOutcome::Reachable {
            used_bytes: 5,
            object_count: 10_000,
            complete: false,
        };
        let status = desired_status(&t, &partial, now);
        assert!(status.usage_partial);
        assert_eq!(
            status.conditions[0].message,
            "at least 10000 objects, 5 bytes (a probe counts the first 10000 objects only)"
        );
        let mut again = t.clone();
        again.status = Some(status);
        let complete = ProbeOutcome::Reachable {
            used_bytes: 5,
            object_count: 3,
            complete: true,
        };
        assert!(!desired_status(&again, &complete, now).usage_partial);
    }

    fn secret(data: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            k8s_openapi::ByteString(v.as_bytes().to_vec()),
                        )
                    })
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    fn unready(outcome: ProbeOutcome) -> (&'static str, String) {
        match outcome {
            ProbeOutcome::Unreachable { reason, message } => (reason, message),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn credentials_come_from_the_secret_and_problems_name_the_key_never_a_value() {
        let good = secret(&[
            (ACCESS_KEY_ID, "AKIAEXAMPLE"),
            (SECRET_ACCESS_KEY, "s3cr3t-value\n"),
        ]);
        assert_eq!(
            credentials_from_secret(&good, "ops/creds"),
            Ok(S3Credentials::Static {
                access_key_id: "AKIAEXAMPLE".into(),
                secret_access_key: "s3cr3t-value".into(),
                session_token: None,
            })
        );
        for data in [
            &[(ACCESS_KEY_ID, "AKIAEXAMPLE")][..],
            &[(ACCESS_KEY_ID, "AKIAEXAMPLE"), (SECRET_ACCESS_KEY, "  ")],
        ] {
            let (reason, message) =
                unready(credentials_from_secret(&secret(data), "ops/creds").unwrap_err());
            assert_eq!(reason, "SecretKeyMissing");
            assert!(message.contains("Secret ops/creds"), "{message}");
            assert!(message.contains("key AWS_SECRET_ACCESS_KEY"), "{message}");
            assert!(!message.contains("AKIAEXAMPLE"), "{message}");
        }
    }

    #[test]
    fn s3_failures_say_what_is_wrong_and_where() {
        let backend: S3Backend = serde_json::from_value(serde_json::json!({
            "bucket": "archive", "endpoint": "http://127.0.0.1:9000"
        }))
        .unwrap();
        let (reason, message) = unready(s3_failure(
            &aigc_storage::Error::TierNotFound {
                tier: "s3://archive/".into(),
                detail: "gone".into(),
            },
            &backend,
            None,
        ));
        assert_eq!(reason, "BucketNotFound");
        assert_eq!(
            message,
            "bucket \"archive\" does not exist at http://127.0.0.1:9000"
        );
        let denied = aigc_storage::Error::AccessDenied {
            tier: "s3://archive/".into(),
            code: "403".into(),
            detail: "Forbidden".into(),
        };
        let (reason, message) = unready(s3_failure(&denied, &backend, Some("ops/creds")));
        assert_eq!(reason, "AccessDenied");
        assert!(message.contains("Secret ops/creds"), "{message}");
        let (_, message) = unready(s3_failure(&denied, &backend, None));
        assert!(message.contains("default AWS credentials"), "{message}");
        let (reason, message) = unready(s3_failure(
            &aigc_storage::Error::Unreachable {
                endpoint: "http://127.0.0.1:9000".into(),
                detail: "connection refused".into(),
            },
            &backend,
            None,
        ));
        assert_eq!(reason, "EndpointUnreachable");
        assert!(message.contains("connection refused"), "{message}");
        assert!(message.contains("forcePathStyle: true"), "{message}");
    }

    #[test]
    fn a_secret_maps_to_the_tiers_that_use_it() {
        let s3 = |name: &str, secret: serde_json::Value| {
            let mut t = StorageTier::new(
                name,
                serde_json::from_value(serde_json::json!({"class": "cold",
                    "backend": {"s3": {"bucket": "b", "credentialsSecretRef": secret}}}))
                .unwrap(),
            );
            t.metadata.generation = Some(1);
            Arc::new(t)
        };
        let tiers = vec![
            s3(
                "explicit",
                serde_json::json!({"name": "creds", "namespace": "ops"}),
            ),
            s3("defaulted", serde_json::json!({"name": "creds"})),
            s3(
                "other",
                serde_json::json!({"name": "else", "namespace": "ops"}),
            ),
            Arc::new(tier(
                serde_json::json!({"class": "hot", "backend": {"filesystem": {"path": "/t"}}}),
            )),
        ];
        let names = |ns: &str| -> Vec<String> {
            tiers_using_secret(&tiers, ns, "creds", "ops")
                .into_iter()
                .map(|r| r.name)
                .collect()
        };
        assert_eq!(names("ops"), ["explicit", "defaulted"]);
        assert!(names("default").is_empty());
    }
}
