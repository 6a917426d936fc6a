//! Starting a cluster per test and driving it with kubectl and raw HTTP.

use std::process::Output;

use aigc_local_cluster::{Config, LocalCluster};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

pub struct Harness {
    pub cluster: LocalCluster,
    dir: tempfile::TempDir,
}

pub struct HttpResponse {
    pub status: u16,
    pub body: Value,
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Start with a configuration adjusted by `configure`.
    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut config = Config::new(dir.path().join("data"));
        configure(&mut config);
        let cluster = LocalCluster::start(config)
            .await
            .expect("the local cluster starts");
        Self { cluster, dir }
    }

    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("kubectl");
        command
            .args(args)
            .env("KUBECONFIG", self.cluster.kubeconfig_path())
            .env("KUBECACHEDIR", self.dir.path().join("kube-cache"))
            .env("HOME", self.dir.path())
            .kill_on_drop(true);
        command
    }

    /// Run kubectl, feeding `stdin` if given.
    pub async fn kubectl_with(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut command = self.kubectl_command(args);
        command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command
            .spawn()
            .expect("kubectl is on PATH (scripts/install-test-deps.sh checks for it)");
        let mut input = child.stdin.take().expect("stdin is piped");
        input
            .write_all(stdin.unwrap_or("").as_bytes())
            .await
            .expect("writing kubectl's stdin");
        drop(input);
        child.wait_with_output().await.expect("kubectl runs")
    }

    pub async fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with(args, None).await
    }

    /// Run kubectl and return stdout, failing the test with stderr when it fails.
    pub async fn kubectl_ok(&self, args: &[&str]) -> String {
        self.kubectl_stdin_ok(args, None).await
    }

    pub async fn kubectl_stdin_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let output = self.kubectl_with(args, stdin).await;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "kubectl {args:?} failed: {}\n{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// `kubectl get ... -o json`, parsed.
    pub async fn get_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&all).await).expect("kubectl prints JSON")
    }

    pub async fn install_crds(&self) {
        let yaml = aigc_crds::all_crds_yaml().expect("CRDs render");
        self.kubectl_stdin_ok(&["apply", "-f", "-"], Some(&yaml))
            .await;
    }

    /// One HTTP/1.1 request over the plain loopback port.
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        let address = self
            .cluster
            .http_url()
            .trim_start_matches("http://")
            .to_owned();
        let mut stream = tokio::net::TcpStream::connect(&address)
            .await
            .expect("connecting to the plain HTTP port");
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.expect("sending");
        // The server may answer (413) before reading a large body; a broken pipe is fine then.
        let _ = stream.write_all(body).await;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .expect("reading the response");
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let body = serde_json::from_str(body).unwrap_or(Value::Null);
        HttpResponse { status, body }
    }
}
