//! Malformed and invalid requests get the API server's status codes and `Status` shapes.

use serde_json::{Value, json};

use crate::harness::Harness;

const JSON: (&str, &str) = ("Content-Type", "application/json");

fn assert_status(body: &Value, code: u16, reason: &str) {
    assert_eq!(body["kind"], "Status", "not a Status: {body}");
    assert_eq!(body["status"], "Failure");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["reason"], reason, "{body}");
}

#[tokio::test]
async fn malformed_bodies_are_bad_requests() {
    let h = Harness::start().await;
    let path = "/api/v1/namespaces/default/configmaps";
    let broken = h
        .http(
            "POST",
            path,
            &[JSON],
            br#"{"apiVersion": "v1", "kind": "Con"#,
        )
        .await;
    assert_eq!(broken.status, 400);
    assert_status(&broken.body, 400, "BadRequest");
    let yaml = h
        .http(
            "POST",
            path,
            &[("Content-Type", "application/yaml")],
            b"kind: [unclosed",
        )
        .await;
    assert_status(&yaml.body, 400, "BadRequest");
    let not_object = h.http("POST", path, &[JSON], b"[1, 2]").await;
    assert_status(&not_object.body, 400, "BadRequest");
    let wrong_kind = h
        .http(
            "POST",
            path,
            &[JSON],
            br#"{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}}"#,
        )
        .await;
    assert_status(&wrong_kind.body, 400, "BadRequest");
}

#[tokio::test]
async fn unknown_resources_are_not_found() {
    let h = Harness::start().await;
    let unknown = h
        .http("GET", "/apis/nope.example/v1/things", &[], b"")
        .await;
    assert_eq!(unknown.status, 404);
    assert_status(&unknown.body, 404, "NotFound");
    let missing = h
        .http(
            "GET",
            "/api/v1/namespaces/default/configmaps/absent",
            &[],
            b"",
        )
        .await;
    assert_status(&missing.body, 404, "NotFound");
    assert_eq!(missing.body["message"], "configmaps \"absent\" not found");
    assert_eq!(
        missing.body["details"],
        json!({"name": "absent", "kind": "configmaps"})
    );
    let odd = h
        .http("GET", "/api/v1/namespaces/%zz/configmaps/%", &[], b"")
        .await;
    assert_eq!(odd.status, 404);
}

#[tokio::test]
async fn wrong_media_types_and_oversized_bodies_are_refused() {
    let h = Harness::start().await;
    let path = "/api/v1/namespaces/default/configmaps";
    let text = h
        .http("POST", path, &[("Content-Type", "text/plain")], b"x")
        .await;
    assert_status(&text.body, 415, "UnsupportedMediaType");
    let protobuf_only = h
        .http(
            "GET",
            path,
            &[("Accept", "application/vnd.kubernetes.protobuf")],
            b"",
        )
        .await;
    assert_status(&protobuf_only.body, 406, "NotAcceptable");
    let big = vec![b' '; 4 * 1024 * 1024];
    let too_large = h.http("POST", path, &[JSON], &big).await;
    assert_eq!(too_large.status, 413);
    let created = h
        .http(
            "POST",
            path,
            &[JSON],
            br#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}"#,
        )
        .await;
    assert_eq!(created.status, 201);
    let patch = h
        .http(
            "PATCH",
            &format!("{path}/c"),
            &[("Content-Type", "application/xml")],
            b"<a/>",
        )
        .await;
    assert_status(&patch.body, 415, "UnsupportedMediaType");
    let bad_patch = h
        .http(
            "PATCH",
            &format!("{path}/c"),
            &[("Content-Type", "application/json-patch+json")],
            br#"{"op": 1}"#,
        )
        .await;
    assert_status(&bad_patch.body, 400, "BadRequest");
}

#[tokio::test]
async fn conflicts_and_schema_violations_carry_causes() {
    let h = Harness::start().await;
    h.install_crds().await;
    let path = "/api/v1/namespaces/default/configmaps";
    let body = br#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}}"#;
    let first = h.http("POST", path, &[JSON], body).await;
    assert_eq!(first.status, 201);
    let again = h.http("POST", path, &[JSON], body).await;
    assert_status(&again.body, 409, "AlreadyExists");
    let stale = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "c", "resourceVersion": "1"}, "data": {"a": "2"}});
    let stale = h
        .http(
            "PUT",
            &format!("{path}/c"),
            &[JSON],
            stale.to_string().as_bytes(),
        )
        .await;
    assert_status(&stale.body, 409, "Conflict");
    let bad_name = h
        .http(
            "POST",
            path,
            &[JSON],
            br#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad_Name"}}"#,
        )
        .await;
    assert_status(&bad_name.body, 422, "Invalid");
    assert_eq!(
        bad_name.body["details"]["causes"][0]["field"],
        "metadata.name"
    );

    let tier = json!({"apiVersion": "aigc.dev/v1alpha1", "kind": "StorageTier",
        "metadata": {"name": "bad"},
        "spec": {"class": "lukewarm", "backend": {"filesystem": {"path": "relative"}}}});
    let invalid = h
        .http(
            "POST",
            "/apis/aigc.dev/v1alpha1/storagetiers",
            &[JSON],
            tier.to_string().as_bytes(),
        )
        .await;
    assert_status(&invalid.body, 422, "Invalid");
    let fields: Vec<&str> = invalid.body["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&"spec.class"), "{fields:?}");
    assert!(
        fields.contains(&"spec.backend.filesystem.path"),
        "{fields:?}"
    );
    assert_eq!(invalid.body["details"]["group"], "aigc.dev");

    let unknown = json!({"apiVersion": "aigc.dev/v1alpha1", "kind": "StorageTier",
        "metadata": {"name": "extra"},
        "spec": {"class": "hot", "bogus": 1, "backend": {"filesystem": {"path": "/x"}}}});
    let strict = h
        .http(
            "POST",
            "/apis/aigc.dev/v1alpha1/storagetiers?fieldValidation=Strict",
            &[JSON],
            unknown.to_string().as_bytes(),
        )
        .await;
    assert_status(&strict.body, 400, "BadRequest");
    assert!(
        strict.body["message"]
            .as_str()
            .unwrap()
            .contains("unknown field \"spec.bogus\"")
    );
    let pruned = h
        .http(
            "POST",
            "/apis/aigc.dev/v1alpha1/storagetiers?fieldValidation=Ignore",
            &[JSON],
            unknown.to_string().as_bytes(),
        )
        .await;
    assert_eq!(pruned.status, 201);
    assert!(pruned.body["spec"].get("bogus").is_none());
    let smp = h
        .http(
            "PATCH",
            "/apis/aigc.dev/v1alpha1/storagetiers/extra",
            &[("Content-Type", "application/strategic-merge-patch+json")],
            b"{}",
        )
        .await;
    assert_status(&smp.body, 415, "UnsupportedMediaType");
}
