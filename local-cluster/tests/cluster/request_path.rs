//! The fuzz target's request path over a seed corpus of awkward inputs: none may panic.

#[path = "../../fuzz/request_path.rs"]
mod fuzz;

const SEEDS: &[&str] = &[
    "/api/v1/namespaces/default/configmaps\napplication/json\n{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"a\"}}",
    "/api/v1/namespaces/default/configmaps?labelSelector=a%20in%20(&fieldSelector=x\n*/*\n{\"metadata\":{\"generateName\":\"x-\",\"ownerReferences\":[{\"uid\":1}]}}",
    "/api/v1/namespaces/default/configmaps\n\n[{\"op\":\"add\",\"path\":\"/metadata/finalizers\",\"value\":[\"a\"]}]",
    "/apis/apps/v1/namespaces/default/deployments\n\n{\"kind\":\"Deployment\",\"metadata\":{\"name\":\"d\"},\"spec\":{\"template\":{\"spec\":{\"containers\":[{\"name\":\"c\",\"$patch\":\"delete\"}]}}}}",
    "/api/v1/namespaces\n\nmetadata: {name: -bad-}\n",
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions\n\n{\"metadata\":{\"name\":\"x.y.z\"},\"spec\":{\"group\":\"y.z\",\"names\":{\"plural\":\"x\",\"kind\":\"X\"},\"scope\":\"Namespaced\",\"versions\":[{\"name\":\"v1\",\"served\":true,\"storage\":true,\"schema\":{\"openAPIV3Schema\":{\"type\":\"object\",\"properties\":{\"spec\":{\"type\":\"integer\",\"minimum\":\"x\"}}}}}]}}",
    "/api/v1/namespaces/default/secrets\napplication/vnd.kubernetes.protobuf\nk8s\u{0}\n\u{ff}\u{ff}",
    "%%%/api/v1/namespaces/%zz/configmaps/%/status\n;;;as=\n",
    "/apis/fuzz.dev/v1/namespaces/default/widgets\n\n{\"metadata\":{\"name\":\"w\"},\"spec\":{\"size\":5,\"max\":2,\"name\":\"Ab\",\"when\":\"x\",\"mode\":\"c\",\"tags\":[\"a\",\"a\"],\"extra\":{\"k\":[1]},\"labels\":{\"a\":1}}}",
    "/apis/fuzz.dev/v1/namespaces/default/widgets\n\n{\"metadata\":{\"name\":\"w\"},\"spec\":{\"size\":1,\"max\":3}}",
    "/api/v1/namespaces/default/configmaps\n\n{\"metadata\":{\"name\":\"a\",\"labels\":null,\"managedFields\":[{\"fieldsV1\":{\"f:x\":1}}]},\"data\":7}",
];

#[test]
fn awkward_requests_never_panic() {
    for seed in SEEDS {
        fuzz::exercise(seed.as_bytes());
    }
}
