//! The closed loop as a user runs it: `aigc-operator local up` with the quickstart on the
//! embedded cluster, a separate `aigc-operator run` managing it, a real S3 server for the
//! archive tier, and the real `kubectl`, `curl` and `openai` clients.
//!
//! data -> Dataset prepared -> TrainingJob -> Model -> InferenceService answers, plus the chat
//! and embeddings services; the operator and one worker are killed mid-run; an invalid
//! TrainingJob is rejected at apply time; a TrainingJob for a missing Dataset waits and then
//! proceeds; the Dataset is demoted to `cold` and promoted back when a second job uses it.
//!
//! It needs the `aigc-operator` and `aigc-worker` binaries of this build (`cargo test
//! --workspace` builds them next to the test binaries) and the model packages and moto from
//! `scripts/install-test-deps.sh`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use aigc_storage::testing::MotoServer;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(600);

/// A binary of this workspace build: `target/<profile>/<name>`, next to `deps/`.
fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p aigc-operator -p aigc-worker` \
         (`cargo test --workspace` builds it)",
        path.display()
    );
    path
}

struct Loop {
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    up: Child,
    operator: Option<Child>,
    moto: MotoServer,
}

impl Loop {
    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("aigc")
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("kubectl runs")
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        let output = self.kubectl(args);
        assert!(
            output.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn kubectl_apply(&self, yaml: &str) -> Output {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(yaml.as_bytes())
            .expect("writing to kubectl");
        child.wait_with_output().expect("kubectl finishes")
    }

    /// `kubectl get KIND NAME -o json`, or None when it does not exist (yet).
    fn get(&self, kind: &str, name: &str) -> Option<Value> {
        let output = self.kubectl(&["get", kind, name, "-o", "json"]);
        output
            .status
            .success()
            .then(|| serde_json::from_slice(&output.stdout).expect("kubectl prints JSON"))
    }

    fn list(&self, kind: &str) -> Vec<Value> {
        let text = self.kubectl_ok(&["get", kind, "-o", "json"]);
        let list: Value = serde_json::from_str(&text).expect("kubectl prints JSON");
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// Poll `check` every half second until it returns a value; on timeout, fail with the
    /// state of every aigc resource and pod.
    fn wait_for<T>(&self, what: &str, mut check: impl FnMut(&Loop) -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(value) = check(self) {
                eprintln!("[{:>5.1}s] {what}", start.elapsed().as_secs_f64());
                return value;
            }
            if start.elapsed() > WAIT {
                let state =
                    self.kubectl(&["get", "aigc,jobs,pods,deployments,svc", "-A", "-o", "yaml"]);
                panic!(
                    "timed out waiting for {what}; cluster state:\n{}",
                    String::from_utf8_lossy(&state.stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn field(&self, kind: &str, name: &str, path: &[&str]) -> Option<Value> {
        let mut value = self.get(kind, name)?;
        for key in path {
            value = value.get(*key)?.clone();
        }
        (!value.is_null()).then_some(value)
    }

    fn wait_phase(&self, kind: &str, name: &str, phase: &str) -> Value {
        self.wait_for(&format!("{kind} {name} {phase}"), |l| {
            let object = l.get(kind, name)?;
            let current = object["status"]["phase"].as_str().unwrap_or_default();
            assert!(
                current != "Failed" || phase == "Failed",
                "{kind} {name} failed: {:#}",
                object["status"]
            );
            (current == phase).then_some(object)
        })
    }

    fn start_operator(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("operator.log")).expect("log file");
        let child = Command::new(workspace_binary("aigc-operator"))
            .args(["run", "--metrics-addr", "127.0.0.1:0", "--local-root"])
            .arg(aigc_operator::local::host_root(&self.data_dir()))
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("aigc-operator run starts");
        self.operator = Some(child);
    }

    fn kill_operator(&mut self) {
        if let Some(mut operator) = self.operator.take() {
            let _ = operator.kill();
            let _ = operator.wait();
        }
    }

    /// Processes whose command line mentions the data directory (the workers the kubelet
    /// started: their volume paths are under it).
    fn worker_pids(&self, needle: &str) -> Vec<i32> {
        let data_dir = self.data_dir().display().to_string();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&data_dir)
                && cmdline.contains(needle)
                && pid != std::process::id() as i32
            {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        self.kill_operator();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.up.id().to_string())
            .status();
        let _ = self.up.wait();
    }
}

fn owned_by(objects: &[Value], uid: &str) -> usize {
    objects
        .iter()
        .filter(|o| {
            o["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
        })
        .count()
}

#[test]
fn the_quickstart_closes_the_loop() {
    let moto = MotoServer::start().expect("moto server (scripts/install-test-deps.sh installs it)");
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(moto.create_bucket("aigc-archive"));
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("aigc");
    let up_log = std::fs::File::create(dir.path().join("local-up.log")).expect("log file");
    let up = Command::new(workspace_binary("aigc-operator"))
        .current_dir(aigc_e2e::repo_root())
        .args(["local", "up", "--ephemeral", "--no-operator", "--data-dir"])
        .arg(&data_dir)
        .args(["--manifests", "examples/quickstart", "--s3-endpoint"])
        .arg(moto.endpoint())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .stdout(up_log.try_clone().expect("log file"))
        .stderr(up_log)
        .spawn()
        .expect("aigc-operator local up starts");
    let mut run = Loop {
        kubeconfig: data_dir.join("kubeconfig"),
        dir,
        up,
        operator: None,
        moto,
    };
    run.wait_for("the quickstart applied", |l| {
        l.get("inferenceservice", "embeddings").map(|_| ())
    });
    run.start_operator();

    // Bad input along the way: rejected at apply time, naming the field and the accepted values.
    let invalid = run.kubectl_apply(
        "apiVersion: aigc.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: bad, namespace: default}\n\
         spec:\n  datasetRef: {name: breast-cancer}\n  architecture: transformer-xl\n  \
         output: {modelName: bad, version: 1.0.0}\n",
    );
    let stderr = String::from_utf8_lossy(&invalid.stderr);
    assert!(
        !invalid.status.success(),
        "an invalid TrainingJob was accepted"
    );
    assert!(stderr.contains("spec.architecture"), "{stderr}");
    assert!(stderr.contains("\"mlp\""), "{stderr}");

    // A TrainingJob whose Dataset does not exist yet waits and says why.
    let late_job = "apiVersion: aigc.dev/v1alpha1\nkind: TrainingJob\n\
        metadata: {name: late, namespace: default}\n\
        spec:\n  datasetRef: {name: late-data}\n  architecture: mlp\n  target: diagnosis_benign\n  \
        output: {modelName: late-mlp, version: 1.0.0}\n  hyperparameters: {epochs: 3, seed: 7}\n  \
        resources: {accelerator: cpu, cpu: 500m, memory: 512Mi}\n";
    let applied = run.kubectl_apply(late_job);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    run.wait_for("TrainingJob late waits for its Dataset", |l| {
        let conditions = l.field("trainingjob", "late", &["status", "conditions"])?;
        conditions
            .as_array()?
            .iter()
            .any(|c| {
                c["status"] != "True"
                    && c["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("late-data"))
            })
            .then_some(())
    });

    // The archive tier on the real S3 server is probed with its Secret's keys.
    for tier in ["hot", "archive"] {
        run.wait_for(&format!("StorageTier {tier} Ready"), |l| {
            let conditions = l.field("storagetier", tier, &["status", "conditions"])?;
            conditions
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                .then_some(())
        });
    }
    assert!(
        run.field("storagetier", "archive", &["status", "objectCount"])
            .is_some(),
        "the archive tier reports its object count"
    );

    let dataset = run.wait_phase("dataset", "breast-cancer", "Ready");
    let rows = dataset["status"]["rows"].as_u64().expect("status.rows");
    assert!((500..=569).contains(&rows), "rows {rows}");
    assert_eq!(dataset["status"]["tier"], "hot");
    assert!(
        dataset["status"]["manifestDigest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:"))
    );

    // Training runs; the operator is killed and restarted meanwhile.
    run.wait_for("TrainingJob breast-cancer-mlp admitted", |l| {
        let phase = l.field("trainingjob", "breast-cancer-mlp", &["status", "phase"])?;
        matches!(phase.as_str(), Some("Admitted" | "Running" | "Succeeded")).then_some(())
    });
    run.kill_operator();
    run.start_operator();
    let job = run.wait_phase("trainingjob", "breast-cancer-mlp", "Succeeded");
    let progress = &job["status"]["progress"];
    assert!(progress["loss"].as_f64().is_some(), "{progress:#}");
    assert_eq!(job["status"]["placement"]["accelerator"], "cpu");

    let model = run.wait_phase("model", "breast-cancer-mlp", "Ready");
    assert!(
        model["metadata"]["annotations"]["aigc.dev/artifacts-uri"]
            .as_str()
            .is_some_and(|uri| uri.contains("models/default/breast-cancer-mlp")),
        "{:#}",
        model["metadata"]
    );
    let service = run.wait_phase("inferenceservice", "breast-cancer", "Ready");
    let url = service["status"]["url"]
        .as_str()
        .expect("status.url")
        .to_owned();
    let curl = Command::new("curl")
        .args([
            "-sS",
            "--fail-with-body",
            "-H",
            "Content-Type: application/json",
            "-d",
        ])
        .arg(
            r#"{"instances": [{"mean_radius": 11.0, "mean_texture": 14.0, "worst_area": 400.0},
                              {"mean_radius": 25.0, "mean_texture": 30.0, "worst_area": 2500.0}]}"#,
        )
        .arg(format!("{url}/predict"))
        .output()
        .expect("curl runs");
    assert!(
        curl.status.success(),
        "{}",
        String::from_utf8_lossy(&curl.stdout)
    );
    let predictions: Value = serde_json::from_slice(&curl.stdout).expect("JSON predictions");
    let predictions = predictions["predictions"].as_array().expect("predictions");
    assert_eq!(predictions.len(), 2);
    // A small benign-looking tumour and a large malignant-looking one.
    assert_eq!(predictions[0], 1, "{predictions:?}");
    assert_eq!(predictions[1], 0, "{predictions:?}");

    // Chat and embeddings through the official client; one worker is killed first and comes back.
    let chat = run.wait_phase("inferenceservice", "chat", "Ready");
    let chat_url = chat["status"]["url"].as_str().expect("chat url").to_owned();
    let embeddings = run.wait_phase("inferenceservice", "embeddings", "Ready");
    let embeddings_url = embeddings["status"]["url"]
        .as_str()
        .expect("url")
        .to_owned();
    let serving = run.worker_pids("smollm2-135m-instruct");
    assert_eq!(serving.len(), 1, "one chat worker process");
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg(serving[0].to_string())
        .status();
    run.wait_for("the chat worker restarted", |l| {
        let pods = l.list("pods");
        pods.iter()
            .find(|p| {
                p["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("chat-"))
            })
            .filter(|p| p["status"]["containerStatuses"][0]["restartCount"].as_u64() >= Some(1))
            .filter(|p| p["status"]["containerStatuses"][0]["ready"] == true)
            .map(|_| ())
    });
    run.wait_phase("inferenceservice", "chat", "Ready");
    let clients = aigc_e2e::run_python_script(
        "openai_clients.py",
        &[
            &chat_url,
            "smollm2-135m-instruct",
            &embeddings_url,
            "all-minilm-l6-v2",
        ],
    );
    let clients: Value = serde_json::from_str(&clients).expect("the script prints JSON");
    assert!(
        clients["answer"]
            .as_str()
            .is_some_and(|a| a.contains("Paris")),
        "{clients:#}"
    );
    assert!(
        clients["streamed"]
            .as_str()
            .is_some_and(|a| a.contains("Paris")),
        "{clients:#}"
    );
    assert!(clients["chunks"].as_u64() > Some(1), "{clients:#}");
    assert_eq!(clients["dimensions"], serde_json::json!([384, 384, 384]));
    assert!(
        clients["paraphrase"].as_f64() > clients["unrelated"].as_f64(),
        "{clients:#}"
    );

    // The late Dataset appears: its TrainingJob proceeds.
    let late_data =
        std::fs::read_to_string(aigc_e2e::repo_root().join("examples/quickstart/01-dataset.yaml"))
            .expect("quickstart dataset");
    let late_data = late_data
        .split("---")
        .find(|d| d.contains("kind: Dataset"))
        .expect("a Dataset document")
        .replace("name: breast-cancer", "name: late-data");
    let applied = run.kubectl_apply(&late_data);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    run.wait_phase("trainingjob", "late", "Succeeded");

    // Lifecycle: idle data is demoted to cold, then promoted back for the next TrainingJob.
    run.kubectl_ok(&[
        "patch",
        "dataset",
        "breast-cancer",
        "--type",
        "merge",
        "-p",
        r#"{"spec": {"lifecycle": {"demoteAfter": "5s"}}}"#,
    ]);
    run.wait_for("Dataset breast-cancer demoted to cold", |l| {
        let object = l.get("dataset", "breast-cancer")?;
        (object["status"]["tier"] == "cold" && object["status"]["phase"] == "Ready").then_some(())
    });
    run.kubectl_ok(&[
        "patch",
        "dataset",
        "breast-cancer",
        "--type",
        "merge",
        "-p",
        r#"{"spec": {"lifecycle": {"demoteAfter": "1h"}}}"#,
    ]);
    let second = std::fs::read_to_string(
        aigc_e2e::repo_root().join("examples/quickstart/02-training-job.yaml"),
    )
    .expect("quickstart training job")
    .replace(
        "name: breast-cancer-mlp\n  namespace",
        "name: breast-cancer-mlp-2\n  namespace",
    )
    .replace(
        "modelName: breast-cancer-mlp",
        "modelName: breast-cancer-mlp-2",
    );
    let applied = run.kubectl_apply(&second);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    run.wait_phase("trainingjob", "breast-cancer-mlp-2", "Succeeded");
    let dataset = run.get("dataset", "breast-cancer").expect("dataset");
    assert_eq!(dataset["status"]["tier"], "hot", "{:#}", dataset["status"]);

    // No duplicate children after the operator restart.
    let deployments = run.list("deployments");
    for name in ["breast-cancer", "chat", "embeddings"] {
        let service = run.get("inferenceservice", name).expect("service");
        let uid = service["metadata"]["uid"].as_str().expect("uid");
        assert_eq!(owned_by(&deployments, uid), 1, "Deployments of {name}");
    }
    let pods = run.list("pods");
    let job = run.get("trainingjob", "breast-cancer-mlp").expect("job");
    let attempts = job["status"]["attempts"].as_u64().unwrap_or(1) as usize;
    let uid = job["metadata"]["uid"].as_str().expect("uid");
    assert!(
        owned_by(&pods, uid) <= attempts,
        "more training pods than attempts"
    );
    assert!(run.moto.endpoint().starts_with("http://"));

    // Stopping local up stops every worker it started.
    run.kill_operator();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(run.up.id().to_string())
        .status();
    let status = run.up.wait().expect("local up exits");
    assert!(status.success(), "local up exited with {status}");
    assert_eq!(
        run.worker_pids("aigc-worker"),
        Vec::<i32>::new(),
        "workers left behind"
    );
}
