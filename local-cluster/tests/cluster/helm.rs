//! Helm (the real Go library, through the `helm-sdkpy` Python package) installs a chart into
//! the embedded cluster and uninstalls it cleanly.

use serde_json::Value;

use crate::harness::Harness;

#[tokio::test]
async fn helm_installs_and_uninstalls_a_chart() {
    let h = Harness::start().await;
    let manifest = env!("CARGO_MANIFEST_DIR");
    let script = format!("{manifest}/tests/cluster/helm.py");
    let chart = format!("{manifest}/tests/charts/smoke");
    let mut helm = tokio::process::Command::new("python3");
    helm.arg(&script)
        .arg(h.cluster.kubeconfig_path())
        .arg(&chart)
        .kill_on_drop(true);
    let output = helm.output().await.expect("python3 runs");
    assert!(
        output.status.success(),
        "helm failed (is helm-sdkpy installed? run scripts/install-test-deps.sh): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("helm.py prints JSON");
    assert_eq!(report["lint_errors"], Value::Null, "{report}");
    assert_eq!(report["install_status"], "deployed", "{report}");
    assert_eq!(report["listed"], serde_json::json!(["smoke"]), "{report}");
    assert_eq!(report["uninstall_status"], "uninstalled", "{report}");
    let left = h
        .kubectl_ok(&["get", "configmaps,secrets", "-o", "name"])
        .await;
    assert_eq!(left.trim(), "", "uninstall leaves nothing behind");
}
