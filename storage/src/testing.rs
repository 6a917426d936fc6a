//! Test support (feature `test-support`): a real S3 server (`python3 -m moto.server`, from the
//! `moto[server]` package in `scripts/requirements-test.txt`) on a free loopback port,
//! stopped when dropped.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aigc_crds::storage_tier::S3StorageClass;

use crate::{S3Config, S3Credentials};

/// Access key the harness uses; moto accepts any key unless started with auth checks.
pub const ACCESS_KEY: &str = "aigc-test";
/// Secret key the harness uses.
pub const SECRET_KEY: &str = "aigc-test-secret";

/// A running moto S3 server.
pub struct MotoServer {
    child: Child,
    port: u16,
}

impl MotoServer {
    /// Start a server that accepts any credentials.
    pub fn start() -> Result<Self, String> {
        Self::spawn(false)
    }

    /// Start a server that checks credentials; it knows none, so every request is denied.
    pub fn start_with_auth() -> Result<Self, String> {
        Self::spawn(true)
    }

    fn spawn(auth: bool) -> Result<Self, String> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free loopback port: {e}"))?
            .port();
        let mut command = Command::new("python3");
        command
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if auth {
            command.env("INITIAL_NO_AUTH_ACTION_COUNT", "0");
        }
        let mut child = command.spawn().map_err(|e| {
            format!("cannot run python3 -m moto.server ({e}); run scripts/install-test-deps.sh")
        })?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    use std::io::Read;
                    let _ = pipe.read_to_string(&mut stderr);
                }
                return Err(format!(
                    "python3 -m moto.server exited with {status}: {}\nmoto[server] is needed; run scripts/install-test-deps.sh",
                    stderr.trim()
                ));
            }
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                // Nobody reads its log from here on; don't let a full pipe block it.
                child.stderr.take();
                return Ok(MotoServer { child, port });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!(
                    "moto.server did not listen on port {port} within 60s"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An [`S3Config`] for this server with the harness's static credentials.
    pub fn config(&self, storage_class: Option<S3StorageClass>) -> S3Config {
        S3Config {
            endpoint: Some(self.endpoint()),
            force_path_style: true,
            credentials: S3Credentials::Static {
                access_key_id: ACCESS_KEY.into(),
                secret_access_key: SECRET_KEY.into(),
                session_token: None,
            },
            storage_class,
            ..S3Config::default()
        }
    }

    /// A plain S3 client for this server, for setting up what the API under test must not
    /// be able to produce (e.g. keys with `..`).
    pub async fn client(&self) -> aws_sdk_s3::Client {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                ACCESS_KEY, SECRET_KEY, None, None, "test",
            ))
            .load()
            .await;
        let conf = aws_sdk_s3::config::Builder::from(&shared)
            .endpoint_url(self.endpoint())
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// Create a bucket; panics (this is test support) when the server refuses.
    pub async fn create_bucket(&self, bucket: &str) {
        if let Err(e) = self
            .client()
            .await
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
        {
            panic!(
                "creating bucket {bucket}: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            );
        }
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
