//! The Helm chart, checked with the real Helm library (helm-sdkpy, driven by
//! `tests/scripts/helm_chart.py`): it lints clean, its RBAC is exactly what the operator's code
//! declares, its pods are hardened, and values.schema.json rejects bad values.

use aigc_crds::common::{Accelerator, Resources};
use aigc_e2e::{repo_root, run_python_script};
use aigc_operator::config::{OperatorConfig, RunArgs};
use aigc_operator::rbac;
use aigc_operator::worker_pod::{WorkerImages, worker_pod_spec};
use clap::Parser;
use serde_json::{Value, json};

const CHART: &str = "charts/aigc-operator";

fn chart_dir() -> String {
    repo_root().join(CHART).display().to_string()
}

/// Helm lint errors with `values` merged over values.yaml, as `path` or `path: message`.
fn lint_errors(values: &Value) -> Vec<String> {
    let out = run_python_script(
        "helm_chart.py",
        &["lint", &chart_dir(), &values.to_string()],
    );
    let report: Value = serde_json::from_str(&out).expect("lint report is JSON");
    report["errors"]
        .as_array()
        .expect("errors list")
        .iter()
        .map(|e| {
            let path = e["path"].as_str().unwrap_or_default();
            match e["message"].as_str() {
                Some(message) => format!("{path}: {message}"),
                None => path.to_owned(),
            }
        })
        .collect()
}

/// Every template the chart renders with `values`, by path (`templates/NOTES.txt` included).
fn render_templates(values: &Value) -> serde_json::Map<String, Value> {
    let out = run_python_script(
        "helm_chart.py",
        &["render", &chart_dir(), &values.to_string()],
    );
    let rendered: Value = serde_json::from_str(&out).expect("render output is JSON");
    rendered["templates"]
        .as_object()
        .expect("templates")
        .clone()
}

/// Every object the chart renders with `values`, as JSON.
fn render(values: &Value) -> Vec<Value> {
    let mut objects = Vec::new();
    for (template, text) in render_templates(values) {
        if template.ends_with("NOTES.txt") {
            continue;
        }
        for doc in serde_yaml::Deserializer::from_str(text.as_str().unwrap()) {
            let yaml = <serde_yaml::Value as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("{template} renders invalid YAML: {e}\n{text}"));
            if !yaml.is_null() {
                objects.push(serde_json::to_value(yaml).unwrap());
            }
        }
    }
    objects
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Option<&'a Value> {
    objects.iter().find(|o| o["kind"] == kind)
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("the chart renders no {kind} {name}"))
}

fn the<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    find(objects, kind).unwrap_or_else(|| panic!("the chart renders no {kind}"))
}

#[test]
fn committed_rbac_files_match_the_code() {
    let dir = repo_root().join(CHART).join("files");
    for (name, rules) in [
        (rbac::CLUSTER_RULES_FILE, rbac::cluster_rules()),
        (
            rbac::LEADER_ELECTION_RULES_FILE,
            rbac::leader_election_rules(),
        ),
    ] {
        let committed = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        assert!(
            committed == rbac::rules_yaml(&rules).unwrap(),
            "{CHART}/files/{name} differs from the rules in operator/src/rbac.rs; run `aigc-operator rbac --write-dir {CHART}/files`"
        );
    }
}

#[test]
fn chart_lints_clean_with_defaults_and_with_two_replicas() {
    assert_eq!(lint_errors(&json!({})), Vec::<String>::new());
    assert_eq!(
        lint_errors(&json!({"replicaCount": 2, "serviceMonitor": {"enabled": true}})),
        Vec::<String>::new()
    );
}

#[test]
fn rendered_rbac_is_exactly_what_the_code_declares() {
    let objects = render(&json!({}));
    let cluster_role = named(&objects, "ClusterRole", "test-release-aigc-operator");
    assert_eq!(
        cluster_role["rules"],
        serde_json::to_value(rbac::cluster_rules()).unwrap()
    );
    let role = the(&objects, "Role");
    assert_eq!(
        role["rules"],
        serde_json::to_value(rbac::leader_election_rules()).unwrap()
    );
    for rule in cluster_role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .chain(role["rules"].as_array().unwrap())
    {
        for field in ["apiGroups", "resources", "verbs"] {
            assert!(
                !rule[field].as_array().unwrap().contains(&json!("*")),
                "wildcard in {rule}"
            );
        }
    }
    for (suffix, rules) in [
        ("view", rbac::user_view_rules()),
        ("edit", rbac::user_edit_rules()),
    ] {
        let role = named(
            &objects,
            "ClusterRole",
            &format!("test-release-aigc-operator-{suffix}"),
        );
        assert_eq!(role["rules"], serde_json::to_value(rules).unwrap());
        assert_eq!(
            role["metadata"]["labels"][format!("rbac.authorization.k8s.io/aggregate-to-{suffix}")],
            "true"
        );
    }
    let without = render(&json!({"rbac": {"aggregateToDefaultRoles": false}}));
    let roles: Vec<&Value> = without
        .iter()
        .filter(|o| o["kind"] == "ClusterRole")
        .collect();
    assert_eq!(roles.len(), 1, "only the operator's ClusterRole: {roles:?}");

    let binding = the(&objects, "ClusterRoleBinding");
    let account = the(&objects, "ServiceAccount");
    assert_eq!(binding["roleRef"]["name"], cluster_role["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["name"], account["metadata"]["name"]);
    assert_eq!(
        the(&objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"],
        account["metadata"]["name"]
    );
}

fn assert_hardened(pod_security: &Value, container_security: &Value, what: &str) {
    assert_eq!(pod_security["runAsNonRoot"], true, "{what}");
    assert_eq!(
        pod_security["seccompProfile"]["type"], "RuntimeDefault",
        "{what}"
    );
    assert_eq!(container_security["runAsNonRoot"], true, "{what}");
    assert_eq!(container_security["readOnlyRootFilesystem"], true, "{what}");
    assert_eq!(
        container_security["allowPrivilegeEscalation"], false,
        "{what}"
    );
    assert_eq!(
        container_security["capabilities"]["drop"],
        json!(["ALL"]),
        "{what}"
    );
    // A container without its own seccomp profile inherits the pod's (checked above).
    let seccomp = &container_security["seccompProfile"];
    assert!(
        seccomp.is_null() || seccomp["type"] == "RuntimeDefault",
        "{what}: {seccomp}"
    );
}

#[test]
fn operator_and_worker_pods_are_hardened() {
    let objects = render(&json!({}));
    let pod = &the(&objects, "Deployment")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_hardened(
        &pod["securityContext"],
        &container["securityContext"],
        "operator",
    );
    for field in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][field][resource].is_string(),
                "operator {field}.{resource} is set"
            );
        }
    }
    assert_eq!(container["args"][0], "run");
    // The root filesystem is read-only, so /tmp is an emptyDir.
    assert!(
        container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == "/tmp")
    );

    // Worker pods are hardened by the operator's own pod template, whatever the values say.
    let worker = serde_json::to_value(worker_pod_spec(
        &WorkerImages::default(),
        vec!["serve".into()],
        &Resources::default(),
        Accelerator::Cpu,
        &[],
    ))
    .unwrap();
    assert_hardened(
        &worker["securityContext"],
        &worker["containers"][0]["securityContext"],
        "workers",
    );
}

/// The chart's ConfigMap as the operator reads it.
fn operator_config(objects: &[Value]) -> OperatorConfig {
    let config_map = objects
        .iter()
        .find(|o| {
            o["kind"] == "ConfigMap" && o["metadata"]["name"].as_str().unwrap().ends_with("-config")
        })
        .expect("the config ConfigMap");
    OperatorConfig::from_yaml(
        config_map["data"]["config.yaml"].as_str().unwrap(),
        "the chart's ConfigMap",
    )
    .unwrap_or_else(|err| panic!("the operator rejects the chart's config: {err}"))
}

#[derive(Parser)]
struct Operator {
    #[command(subcommand)]
    command: OperatorCommand,
}

#[derive(clap::Subcommand)]
enum OperatorCommand {
    Run(RunArgs),
}

#[test]
fn the_operator_accepts_the_rendered_config_and_arguments() {
    let objects = render(&json!({
        "replicaCount": 2,
        "leaderElection": {"leaseName": "ops-lease"},
        "metrics": {"port": 9090},
        "workers": {"image": {"gpu": {"repository": "registry.example/aigc-worker", "tag": "1.2.0-cuda"}}},
        "config": {
            "autoFallbackAfter": "90s",
            "inferencePriority": 500,
            "queues": [
                {"name": "default"},
                {"name": "gpu-team", "namespaces": ["research", "vision"], "cohort": "shared",
                 "quota": {"gpu": 8, "cpu": "64", "memory": "256Gi"}},
                {"name": "batch", "cohort": "shared", "quota": {"cpu": 16}},
            ],
        },
    }));
    let config = operator_config(&objects);
    assert_eq!(config.worker_images.cpu, "aigc-operator/aigc-worker:0.1.0");
    assert_eq!(
        config.worker_images.gpu,
        "registry.example/aigc-worker:1.2.0-cuda"
    );
    assert_eq!(config.scheduler.auto_fallback_after.0, "90s");
    assert_eq!(config.scheduler.inference_priority, 500);
    assert_eq!(config.scheduler.queues.len(), 3);
    assert_eq!(config.scheduler.queue_for_namespace("vision"), "default");
    assert_eq!(config.scheduler.queues[1].cohort.as_deref(), Some("shared"));
    assert_eq!(config.local_root, None);

    let defaults = operator_config(&render(&json!({})));
    assert_eq!(defaults.scheduler.queues.len(), 1);
    assert_eq!(defaults.scheduler.auto_fallback_after.0, "10m");

    let container = &the(&objects, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    let mut argv = vec!["aigc-operator".to_owned()];
    argv.extend(
        container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned()),
    );
    let OperatorCommand::Run(args) = Operator::try_parse_from(&argv)
        .unwrap_or_else(|err| panic!("the operator rejects the chart's arguments {argv:?}: {err}"))
        .command;
    assert_eq!(
        args.config.as_deref(),
        Some(std::path::Path::new(
            aigc_operator::config::CHART_CONFIG_PATH
        ))
    );
    assert!(args.leader_election);
    assert_eq!(args.lease_name, "ops-lease");
    assert_eq!(args.metrics_addr.port(), 9090);
    assert_eq!(container["ports"][0]["containerPort"], 9090);
    let env: Vec<&str> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        env,
        ["POD_NAME", "POD_NAMESPACE", "RUST_LOG", "AIGC_LOG_FORMAT"]
    );
}

#[test]
fn one_replica_by_default_two_with_leader_election_and_spread() {
    let single = render(&json!({}));
    let deployment = the(&single, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert!(deployment["spec"]["template"]["spec"]["affinity"].is_null());
    assert!(find(&single, "ServiceMonitor").is_none());

    let pair = render(&json!({"replicaCount": 2, "serviceMonitor": {"enabled": true}}));
    let deployment = the(&pair, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(deployment["spec"]["replicas"], 2);
    let args: Vec<&str> = pod["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--leader-election"), "{args:?}");
    assert_eq!(
        pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
            ["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert_eq!(
        the(&pair, "PodDisruptionBudget")["spec"]["maxUnavailable"],
        1
    );
    let monitor = the(&pair, "ServiceMonitor");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http-metrics");
    let service = the(&pair, "Service");
    assert_eq!(service["spec"]["ports"][0]["name"], "http-metrics");
    assert_eq!(
        the(&pair, "NetworkPolicy")["spec"]["ingress"][0]["ports"][0]["port"],
        "http-metrics"
    );
}

#[test]
fn values_schema_rejects_bad_values() {
    let bad = [
        json!({"replicaCount": -1}),
        json!({"replicaCount": 0}),
        json!({"replicaCount": "2"}),
        json!({"replicaCount": 2, "leaderElection": {"enabled": false}}),
        json!({"image": {"pullPolicy": "Sometimes"}}),
        json!({"image": {"repository": ""}}),
        json!({"workers": {"image": {"gpu": {"repository": ""}}}}),
        json!({"workers": {"image": {"cpu": {"pullPolicy": "Always"}}}}),
        json!({"serviceMonitor": {"enabled": "yes"}}),
        json!({"securityContext": {"readOnlyRootFilesystem": false}}),
        json!({"securityContext": {"allowPrivilegeEscalation": true}}),
        json!({"podSecurityContext": {"runAsNonRoot": false}}),
        json!({"workers": {"securityContext": {"privileged": true}}}),
        json!({"resources": {"limits": {"memory": "lots"}}}),
        json!({"config": {"queues": []}}),
        json!({"config": {"queues": [{"name": "Team_A"}]}}),
        json!({"config": {"queues": [{"name": "a", "namespaces": ["Research"]}]}}),
        json!({"config": {"queues": [{"name": "a", "quota": {"gpu": -2}}]}}),
        json!({"config": {"queues": [{"name": "a", "quota": {"gpu": 1.5}}]}}),
        json!({"config": {"queues": [{"name": "a", "quota": {"cpu": 0.5}}]}}),
        json!({"config": {"queues": [{"name": "a", "quota": {"disk": "1Ti"}}]}}),
        json!({"config": {"queues": [{"name": "a", "cohort": "Shared"}]}}),
        json!({"config": {"inferencePriority": "high"}}),
        json!({"config": {"autoFallbackAfter": "ten minutes"}}),
        json!({"config": {"quotas": []}}),
        json!({"logFormat": "xml"}),
        json!({"replicas": 2}),
    ];
    for values in bad {
        let errors = lint_errors(&values);
        assert!(
            errors.iter().any(|path| path == "values.yaml"),
            "values {values} were accepted; lint errors: {errors:?}"
        );
    }
}

#[test]
fn a_queue_defined_twice_fails_the_install() {
    // JSON Schema cannot require unique names in a list of objects; the config template does.
    assert_eq!(
        lint_errors(
            &json!({"config": {"queues": [{"name": "a"}, {"name": "a", "quota": {"gpu": 1}}]}})
        ),
        [r#"templates/: config.queues: queue "a" is defined twice; queue names must be unique"#]
    );
}

#[test]
fn values_schema_accepts_documented_variations() {
    let good = [
        json!({"config": {"queues": [{"name": "team-a", "namespaces": ["team-a"], "quota": {"gpu": 8, "cpu": "64", "memory": "256Gi"}}]}}),
        json!({"config": {"queues": [{"name": "default"}, {"name": "batch", "cohort": "shared", "quota": {"cpu": 16}}], "inferencePriority": 0}}),
        json!({"image": {"tag": "v0.2.0", "pullPolicy": "Always"}, "logFormat": "text"}),
        json!({"networkPolicy": {"enabled": false}, "podDisruptionBudget": {"enabled": false}}),
    ];
    for values in good {
        assert_eq!(
            lint_errors(&values),
            Vec::<String>::new(),
            "values {values} were rejected"
        );
    }
}

#[test]
fn notes_tell_the_user_what_to_do_next() {
    let templates = render_templates(&json!({"replicaCount": 2}));
    let notes = templates["templates/NOTES.txt"].as_str().unwrap();
    for expected in [
        "rollout status deployment/test-release-aigc-operator",
        "kubectl apply -f examples/quickstart/",
        "kubectl get aigc",
        "2 replicas, one leader elected through a Lease",
        "get lease test-release-aigc-operator -o jsonpath='{.spec.holderIdentity}'",
        "service test-release-aigc-operator-metrics:8080/metrics",
        "aigc-operator/aigc-worker:0.1.0 on CPU",
        "aigc-operator/worker-gpu:0.1.0 on GPU",
    ] {
        assert!(
            notes.contains(expected),
            "NOTES.txt lacks {expected:?}:\n{notes}"
        );
    }
}

#[test]
fn every_value_is_documented() {
    let text = std::fs::read_to_string(repo_root().join(CHART).join("values.yaml")).unwrap();
    // (indent, key, documented) of the keys enclosing the current line.
    let mut enclosing: Vec<(usize, String, bool)> = Vec::new();
    let mut comment_above = false;
    let mut undocumented = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.starts_with("# --") {
            comment_above = true;
            continue;
        }
        if trimmed.starts_with('#') {
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with('-') {
            comment_above = false;
            continue;
        }
        let Some((key, value)) = trimmed.split_once(':') else {
            continue;
        };
        enclosing.retain(|(i, _, _)| *i < indent);
        let inherited = enclosing.iter().any(|(_, _, documented)| *documented);
        let is_leaf = !value.trim().is_empty();
        if is_leaf && !comment_above && !inherited {
            let path: Vec<&str> = enclosing.iter().map(|(_, k, _)| k.as_str()).collect();
            undocumented.push(format!("{}.{key}", path.join(".")));
        }
        enclosing.push((indent, key.to_owned(), comment_above));
        comment_above = false;
    }
    assert!(
        undocumented.is_empty(),
        "values.yaml fields without a `# --` comment: {undocumented:?}"
    );
}
