//! The StorageTier controller probing S3 tiers on a real S3 server (moto, over HTTP, checking
//! credentials): a good bucket becomes Ready with the usage under its prefix; a missing
//! bucket, refused credentials, a missing Secret, a Secret without a key and an endpoint
//! nobody answers on are each Ready=False with a reason and a message naming the problem; and
//! fixing a Secret makes its tier Ready without waiting for the next periodic probe.
//!
//! The tiers here have no key prefix: moto's signature check rejects listings with a `/` in
//! the prefix parameter. Counting under a prefix is covered in `storage/tests/probe.rs`.

mod support;

use std::net::{Ipv4Addr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use aigc_crds::storage_tier::StorageTier;
use aigc_crds::{Condition, ConditionStatus, condition::find_condition};
use aigc_operator::controllers::{self, Context, ControllerConfig};
use aigc_storage::testing::MotoServer;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use support::Harness;

const BUCKET: &str = "aigc-cold";

/// Run the StorageTier controller in this process. Periodic probes are an hour apart, so
/// anything that happens sooner is the controller reacting to a change.
fn run_tier_controller(h: &Harness) -> tokio::task::JoinHandle<()> {
    let config = ControllerConfig {
        tier_probe_interval: Some(Duration::from_secs(3600)),
        ..ControllerConfig::default()
    };
    let ctx: Arc<Context> = Context::new(h.client.clone(), config);
    tokio::spawn(controllers::storage_tier::run(ctx))
}

async fn secret(h: &Harness, name: &str, data: Value) {
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), "default");
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
                        "metadata": {"name": name, "namespace": "default"}, "stringData": data});
    secrets
        .patch(
            name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&secret),
        )
        .await
        .unwrap_or_else(|e| panic!("applying Secret {name}: {e}"));
}

fn keys(server: &MotoServer, secret_key: &str) -> Value {
    json!({"AWS_ACCESS_KEY_ID": server.access_key(), "AWS_SECRET_ACCESS_KEY": secret_key})
}

async fn s3_tier(h: &Harness, name: &str, endpoint: &str, bucket: &str, secret: &str) {
    h.apply(
        "storagetiers",
        json!({"apiVersion": "aigc.dev/v1alpha1", "kind": "StorageTier", "metadata": {"name": name},
               "spec": {"class": "cold", "costPerGiBMonth": 0.02, "backend": {"s3": {
                   "endpoint": endpoint, "bucket": bucket, "forcePathStyle": true,
                   "credentialsSecretRef": {"name": secret, "namespace": "default"}}}}}),
    )
    .await;
}

/// The tier once its Ready condition has `status`; on timeout, fail showing the tier.
async fn tier_when(h: &Harness, name: &str, status: ConditionStatus) -> (StorageTier, Condition) {
    let tiers: Api<StorageTier> = Api::all(h.client.clone());
    let deadline = tokio::time::Instant::now() + support::PATIENCE;
    loop {
        let tier = tiers.get_opt(name).await.unwrap();
        let ready = tier
            .as_ref()
            .and_then(|t| find_condition(&t.status.as_ref()?.conditions, "Ready"))
            .cloned();
        if let (Some(tier), Some(ready)) = (&tier, ready)
            && ready.status == status
        {
            return (tier.clone(), ready);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "StorageTier {name} never became Ready={status:?}; it is now {:#?}",
            tier.map(|t| t.status)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_tiers_report_usage_or_name_the_problem_and_recover_when_the_secret_is_fixed() {
    let server = MotoServer::start_with_user().expect("moto (scripts/install-test-deps.sh)");
    server.create_bucket(BUCKET).await;
    let s3 = server.client().await;
    server.create_bucket("elsewhere").await;
    for (bucket, key, size) in [
        (BUCKET, "datasets/a/part-0.csv", 100),
        (BUCKET, "datasets/a/manifest.json", 20),
        (BUCKET, "models/m/model.gguf", 3),
        ("elsewhere", "x.bin", 1000),
    ] {
        s3.put_object()
            .bucket(bucket)
            .key(key)
            .body(vec![7u8; size].into())
            .send()
            .await
            .unwrap();
    }
    let endpoint = server.endpoint();
    let h = Harness::start().await;
    let controller = run_tier_controller(&h);

    secret(&h, "s3-credentials", keys(&server, server.secret_key())).await;
    secret(&h, "wrong-credentials", keys(&server, "not-the-secret")).await;
    secret(
        &h,
        "half-credentials",
        json!({"AWS_ACCESS_KEY_ID": server.access_key()}),
    )
    .await;
    s3_tier(&h, "cold", &endpoint, BUCKET, "s3-credentials").await;
    s3_tier(
        &h,
        "no-bucket",
        &endpoint,
        "no-such-bucket",
        "s3-credentials",
    )
    .await;
    s3_tier(&h, "wrong-keys", &endpoint, BUCKET, "wrong-credentials").await;
    s3_tier(&h, "half-keys", &endpoint, BUCKET, "half-credentials").await;
    s3_tier(&h, "no-secret", &endpoint, BUCKET, "not-created-yet").await;
    let silent_port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let silent = format!("http://127.0.0.1:{silent_port}");
    s3_tier(&h, "silent", &silent, BUCKET, "s3-credentials").await;

    let (cold, ready) = tier_when(&h, "cold", ConditionStatus::True).await;
    let status = cold.status.unwrap();
    assert_eq!(
        (status.used_bytes, status.object_count),
        (Some(123), Some(3))
    );
    assert!(!status.usage_partial);
    assert!(status.monthly_cost.is_some());
    assert_eq!(ready.reason, "Reachable");
    assert_eq!(ready.message, "3 objects, 123 bytes");

    for (tier, reason, named) in [
        ("no-bucket", "BucketNotFound", "\"no-such-bucket\""),
        (
            "wrong-keys",
            "AccessDenied",
            "Secret default/wrong-credentials",
        ),
        ("half-keys", "SecretKeyMissing", "AWS_SECRET_ACCESS_KEY"),
        (
            "no-secret",
            "SecretNotFound",
            "Secret default/not-created-yet",
        ),
        ("silent", "EndpointUnreachable", silent.as_str()),
    ] {
        let (_, ready) = tier_when(&h, tier, ConditionStatus::False).await;
        assert_eq!(ready.reason, reason, "{tier}: {}", ready.message);
        assert!(ready.message.contains(named), "{tier}: {}", ready.message);
        assert!(
            !ready.message.contains(server.secret_key()),
            "{tier}: a secret value in {}",
            ready.message
        );
    }

    // Fixing the Secrets: the tiers are probed again at once, not an hour later.
    secret(&h, "wrong-credentials", keys(&server, server.secret_key())).await;
    secret(&h, "not-created-yet", keys(&server, server.secret_key())).await;
    secret(&h, "half-credentials", keys(&server, server.secret_key())).await;
    for tier in ["wrong-keys", "no-secret", "half-keys"] {
        let (fixed, _) = tier_when(&h, tier, ConditionStatus::True).await;
        assert_eq!(fixed.status.unwrap().object_count, Some(3), "{tier}");
    }
    // Each transition is an Event: the problem, then the recovery.
    let events: Api<Event> = Api::all(h.client.clone());
    support::eventually(
        "SecretNotFound and Reachable Events on no-secret",
        || async {
            let reasons: Vec<String> = events
                .list(&Default::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .filter(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("no-secret")
                })
                .filter_map(|e| e.reason)
                .collect();
            (reasons.iter().any(|r| r == "SecretNotFound")
                && reasons.iter().any(|r| r == "Reachable"))
            .then_some(())
        },
    )
    .await;
    controller.abort();
}
