//! `aigc-operator local up`: serves until SIGTERM, writes the kubeconfig once it answers,
//! installs the CRDs, stops cleanly and keeps its objects across a restart.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

fn start(data_dir: &Path) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_aigc-operator"))
        .args(["local", "up", "--no-manifests", "--data-dir"])
        .arg(data_dir)
        .stderr(Stdio::piped())
        .spawn()
        .expect("aigc-operator starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut lines = BufReader::new(stderr).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|line| line.starts_with("local cluster ready"));
    assert!(ready.is_some(), "local up never reported ready");
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

fn kubectl(data_dir: &Path, args: &[&str]) -> String {
    let output = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", data_dir.join("kubeconfig"))
        .env("KUBECACHEDIR", data_dir.join("kube-cache"))
        .output()
        .expect("kubectl is on PATH (scripts/install-test-deps.sh checks for it)");
    assert!(
        output.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn terminate(mut child: Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let exit = child.wait().expect("local up exits");
    assert!(exit.success(), "local up exited with {exit}");
}

#[test]
fn local_up_serves_installs_crds_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let data_dir = dir.path().join(".aigc");
    let first = start(&data_dir);
    let crds = kubectl(&data_dir, &["get", "crds", "-o", "name"]);
    assert_eq!(
        crds.lines().filter(|l| l.ends_with(".aigc.dev")).count(),
        5,
        "{crds}"
    );
    kubectl(
        &data_dir,
        &["create", "configmap", "kept", "--from-literal=k=v"],
    );
    terminate(first);
    assert!(data_dir.join("state.json").is_file());

    let second = start(&data_dir);
    let kept = kubectl(
        &data_dir,
        &["get", "configmap", "kept", "-o", "jsonpath={.data.k}"],
    );
    assert_eq!(kept, "v");
    terminate(second);
}
