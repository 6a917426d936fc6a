//! kube-rs against the embedded cluster: typed Api calls, server-side apply, watchers through
//! a `410 Gone`, streaming lists, and a Controller that reconciles a custom resource.

use std::sync::Arc;
use std::time::Duration;

use aigc_crds::StorageTier;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{conditions, wait::await_condition, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::harness::Harness;

fn config_map(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "test"}},
        "data": {"key": value},
    }))
    .unwrap()
}

async fn install_crds(h: &Harness) {
    let crds: Api<CustomResourceDefinition> = Api::all(h.cluster.client());
    for crd in aigc_crds::all_crds() {
        crds.patch(
            &crd.name_any(),
            &PatchParams::apply("test").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn api_create_list_patch_apply_and_conflicts() {
    let h = Harness::start().await;
    let api: Api<ConfigMap> = Api::namespaced(h.cluster.client(), "default");
    let created = api
        .create(&PostParams::default(), &config_map("a", "1"))
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some());
    api.create(&PostParams::default(), &config_map("b", "1"))
        .await
        .unwrap();
    let listed = api
        .list(&ListParams::default().labels("app=test"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 2);

    let patched = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"key": "2"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap()["key"], "2");

    let mut stale = created.clone();
    stale.data = Some([("key".to_owned(), "stale".to_owned())].into());
    let error = api
        .replace("a", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(error, kube::Error::Api(ref s) if s.code == 409 && s.reason == "Conflict"),
        "{error:?}"
    );

    let applied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"owned": "x"}});
    api.patch("c", &PatchParams::apply("alice"), &Patch::Apply(&applied))
        .await
        .unwrap();
    let rival = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"owned": "y"}});
    let error = api
        .patch("c", &PatchParams::apply("bob"), &Patch::Apply(&rival))
        .await
        .unwrap_err();
    assert!(
        matches!(error, kube::Error::Api(ref s) if s.code == 409),
        "{error:?}"
    );
    let forced = api
        .patch(
            "c",
            &PatchParams::apply("bob").force(),
            &Patch::Apply(&rival),
        )
        .await
        .unwrap();
    assert_eq!(forced.data.unwrap()["owned"], "y");
    let managers: Vec<String> = forced
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, ["bob"]);

    let generated: ConfigMap =
        serde_json::from_value(json!({"metadata": {"generateName": "gen-"}})).unwrap();
    let generated = api
        .create(&PostParams::default(), &generated)
        .await
        .unwrap();
    let name = generated.name_any();
    assert!(
        name.starts_with("gen-") && name.len() == "gen-".len() + 5,
        "{name}"
    );
    let versions: Vec<u64> = [&created, &generated]
        .iter()
        .map(|cm| cm.resource_version().unwrap().parse().unwrap())
        .collect();
    assert!(
        versions[0] < versions[1],
        "one global, increasing resourceVersion"
    );

    api.delete("a", &DeleteParams::default()).await.unwrap();
    let error = api.get("a").await.unwrap_err();
    assert!(
        matches!(error, kube::Error::Api(ref s) if s.code == 404),
        "{error:?}"
    );
}

#[tokio::test]
async fn watcher_recovers_from_410_gone() {
    let h = Harness::start().await;
    let api: Api<ConfigMap> = Api::namespaced(h.cluster.client(), "default");
    api.create(&PostParams::default(), &config_map("before", "1"))
        .await
        .unwrap();
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    let mut inits = 0;
    let mut gone = 0;
    let mut seen_after = false;
    let mut expired = false;
    while let Some(event) = events.next().await {
        match event {
            Err(watcher::Error::WatchError(status)) => {
                assert_eq!(status.code, 410, "{status:?}");
                gone += 1;
            }
            Err(other) => panic!("unexpected watcher error: {other}"),
            Ok(watcher::Event::Init) => inits += 1,
            Ok(watcher::Event::InitDone) if !expired => {
                api.create(&PostParams::default(), &config_map("during", "1"))
                    .await
                    .unwrap();
            }
            Ok(watcher::Event::Apply(cm)) if cm.name_any() == "during" => {
                h.cluster.expire_watches();
                expired = true;
                api.create(&PostParams::default(), &config_map("after", "1"))
                    .await
                    .unwrap();
            }
            Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm))
                if cm.name_any() == "after" =>
            {
                seen_after = true;
                break;
            }
            Ok(_) => {}
        }
    }
    assert_eq!(gone, 1, "the watch ended with 410 Gone");
    assert!(seen_after);
    assert_eq!(inits, 2, "the 410 made the watcher list again");
}

/// A paged list is one snapshot: writes between its pages show up in the watch that starts
/// from its resourceVersion, never lost between a page and the watch (a watcher that lists
/// again after a 410 while objects are created relies on this).
#[tokio::test]
async fn paged_lists_are_one_snapshot_and_the_watch_after_them_sees_the_rest() {
    let h = Harness::start().await;
    let api: Api<ConfigMap> = Api::namespaced(h.cluster.client(), "default");
    for name in ["b", "d", "f", "h"] {
        api.create(&PostParams::default(), &config_map(name, "1"))
            .await
            .unwrap();
    }
    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    let names = |list: &kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        list.items.iter().map(ResourceExt::name_any).collect()
    };
    assert_eq!(names(&first), ["b", "d"]);
    let snapshot = first.metadata.resource_version.clone().unwrap();
    // Between the pages: one object before the continue key, one after, one changed and
    // one deleted.
    api.create(&PostParams::default(), &config_map("a", "1"))
        .await
        .unwrap();
    api.create(&PostParams::default(), &config_map("g", "1"))
        .await
        .unwrap();
    api.patch(
        "f",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"key": "2"}})),
    )
    .await
    .unwrap();
    api.delete("h", &DeleteParams::default()).await.unwrap();
    let token = first.metadata.continue_.clone().unwrap();
    let second = api
        .list(&ListParams::default().limit(10).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(&second), ["f", "h"], "the rest as of the first page");
    assert_eq!(second.items[0].data.as_ref().unwrap()["key"], "1");
    assert_eq!(
        second.metadata.resource_version.as_deref(),
        Some(&*snapshot)
    );
    assert!(second.metadata.continue_.is_none());

    // The watch from the list's version brings the four writes, in order.
    let mut events = api
        .watch(&kube::api::WatchParams::default().timeout(10), &snapshot)
        .await
        .unwrap()
        .boxed();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        match events.try_next().await.unwrap().unwrap() {
            kube::api::WatchEvent::Added(cm) => seen.push(format!("ADDED {}", cm.name_any())),
            kube::api::WatchEvent::Modified(cm) => seen.push(format!("MODIFIED {}", cm.name_any())),
            kube::api::WatchEvent::Deleted(cm) => seen.push(format!("DELETED {}", cm.name_any())),
            _ => {}
        }
    }
    assert_eq!(seen, ["ADDED a", "ADDED g", "MODIFIED f", "DELETED h"]);

    // A continue token older than the history answers 410 Expired, as the API server does.
    h.cluster.expire_watches();
    let error = api
        .list(&ListParams::default().limit(10).continue_token(&token))
        .await
        .unwrap_err();
    match error {
        kube::Error::Api(status) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
            assert!(status.message.contains("continue"), "{}", status.message);
        }
        other => panic!("expected 410 Expired, got {other}"),
    }
}

#[tokio::test]
async fn streaming_list_watcher_gets_initial_events_and_bookmark() {
    let h = Harness::start().await;
    let api: Api<ConfigMap> = Api::namespaced(h.cluster.client(), "default");
    for name in ["one", "two"] {
        api.create(&PostParams::default(), &config_map(name, "1"))
            .await
            .unwrap();
    }
    let mut events = watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut initial = Vec::new();
    while let Some(event) = events.try_next().await.unwrap() {
        match event {
            watcher::Event::InitApply(cm) => initial.push(cm.name_any()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    initial.sort();
    assert_eq!(initial, ["one", "two"]);
    api.create(&PostParams::default(), &config_map("three", "1"))
        .await
        .unwrap();
    let next = events.try_next().await.unwrap();
    assert!(matches!(next, Some(watcher::Event::Apply(ref cm)) if cm.name_any() == "three"));
}

struct Context {
    client: kube::Client,
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct ReconcileError(#[from] kube::Error);

async fn reconcile(tier: Arc<StorageTier>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let owner = tier.controller_owner_ref(&()).expect("tiers have uids");
    let class = serde_json::to_value(tier.spec.class).unwrap_or_default();
    let desired = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": format!("tier-{}", tier.name_any()), "ownerReferences": [owner]},
        "data": {"class": class},
    });
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), "default");
    config_maps
        .patch(
            &format!("tier-{}", tier.name_any()),
            &PatchParams::apply("tier-controller").force(),
            &Patch::Apply(&desired),
        )
        .await?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

fn error_policy(_: Arc<StorageTier>, _: &ReconcileError, _: Arc<Context>) -> Action {
    Action::requeue(Duration::from_secs(1))
}

#[tokio::test]
async fn controller_reconciles_a_custom_resource_into_a_config_map() {
    let h = Harness::start().await;
    install_crds(&h).await;
    let client = h.cluster.client();
    let tiers: Api<StorageTier> = Api::all(client.clone());
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let controller = Controller::new(tiers.clone(), watcher::Config::default())
        .owns(config_maps.clone(), watcher::Config::default())
        .run(
            reconcile,
            error_policy,
            Arc::new(Context {
                client: client.clone(),
            }),
        )
        .for_each(|_| async {});
    let controller = tokio::spawn(controller);

    let tier: StorageTier = serde_json::from_value(json!({
        "apiVersion": "aigc.dev/v1alpha1", "kind": "StorageTier",
        "metadata": {"name": "hot"},
        "spec": {"class": "hot", "backend": {"filesystem": {"path": "/data/hot"}}},
    }))
    .unwrap();
    let created = tiers.create(&PostParams::default(), &tier).await.unwrap();
    let has_class = |cm: Option<&ConfigMap>| {
        cm.and_then(|cm| cm.data.as_ref())
            .is_some_and(|d| d.get("class").map(String::as_str) == Some("hot"))
    };
    let child = await_condition(config_maps.clone(), "tier-hot", has_class)
        .await
        .unwrap()
        .unwrap();
    let owner = &child.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(Some(&owner.uid), created.meta().uid.as_ref());

    tiers.delete("hot", &DeleteParams::default()).await.unwrap();
    let uid = child.metadata.uid.clone().unwrap();
    await_condition(
        config_maps.clone(),
        "tier-hot",
        conditions::is_deleted(&uid),
    )
    .await
    .unwrap();
    controller.abort();
}

#[tokio::test]
async fn apply_of_a_partial_body_is_validated_after_the_merge() {
    let h = Harness::start().await;
    install_crds(&h).await;
    let tiers: Api<StorageTier> = Api::all(h.cluster.client());
    let full = json!({
        "apiVersion": "aigc.dev/v1alpha1", "kind": "StorageTier",
        "metadata": {"name": "cold"},
        "spec": {"class": "cold", "backend": {"filesystem": {"path": "/data/cold"}}},
    });
    tiers
        .patch(
            "cold",
            &PatchParams::apply("installer"),
            &Patch::Apply(&full),
        )
        .await
        .unwrap();

    let status = json!({
        "apiVersion": "aigc.dev/v1alpha1", "kind": "StorageTier",
        "status": {"usedBytes": 2048},
    });
    let with_status = tiers
        .patch_status(
            "cold",
            &PatchParams::apply("prober"),
            &Patch::Apply(&status),
        )
        .await
        .unwrap();
    let status = serde_json::to_value(with_status.status).unwrap();
    assert_eq!(status["usedBytes"], 2048);

    let partial = json!({
        "apiVersion": "aigc.dev/v1alpha1", "kind": "StorageTier",
        "metadata": {"name": "cold", "labels": {"team": "data"}},
    });
    let labelled = tiers
        .patch(
            "cold",
            &PatchParams::apply("labeller"),
            &Patch::Apply(&partial),
        )
        .await
        .unwrap();
    assert_eq!(labelled.labels()["team"], "data");
    assert_eq!(
        serde_json::to_value(&labelled.spec).unwrap()["backend"]["filesystem"]["path"],
        "/data/cold",
        "the installer's spec stays"
    );

    let dropped = json!({
        "apiVersion": "aigc.dev/v1alpha1", "kind": "StorageTier",
        "metadata": {"name": "cold"},
    });
    let error = tiers
        .patch(
            "cold",
            &PatchParams::apply("installer"),
            &Patch::Apply(&dropped),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, kube::Error::Api(ref s) if s.code == 422 && s.message.contains("spec")),
        "the installer gave up the spec it alone owned, which the schema requires: {error:?}"
    );
}

#[tokio::test]
async fn a_json_patch_test_on_an_absent_path_is_a_422_with_the_cause() {
    let h = Harness::start().await;
    let api: Api<ConfigMap> = Api::namespaced(h.cluster.client(), "default");
    api.create(&PostParams::default(), &config_map("guarded", "1"))
        .await
        .unwrap();
    let guarded: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/data/absent", "value": "1"},
        {"op": "replace", "path": "/data/key", "value": "2"},
    ]))
    .unwrap();
    let error = api
        .patch(
            "guarded",
            &PatchParams::default(),
            &Patch::Json::<()>(guarded),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = error else {
        panic!("an API error, not {error:?}");
    };
    assert_eq!(status.code, 422);
    assert_eq!(status.reason, "Invalid");
    assert_eq!(
        status.message,
        "the server rejected our request due to an error in our request"
    );
    let cause = &status.details.expect("details").causes[0];
    assert_eq!(cause.reason, "UnexpectedServerResponse");
    assert_eq!(
        cause.message,
        "testing value /data/absent failed: test failed"
    );
    let unchanged = api.get("guarded").await.unwrap();
    assert_eq!(unchanged.data.unwrap()["key"], "1");
}
