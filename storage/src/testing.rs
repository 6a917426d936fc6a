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
    access_key: String,
    secret_key: String,
}

/// Creates an IAM user allowed everything on S3 and prints its access key and secret key,
/// one per line. Run against a server that checks credentials only after these three
/// requests (`INITIAL_NO_AUTH_ACTION_COUNT=3`).
const CREATE_USER: &str = r#"
import json, sys, boto3
iam = boto3.client("iam", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
iam.create_user(UserName="aigc-test")
key = iam.create_access_key(UserName="aigc-test")["AccessKey"]
iam.put_user_policy(UserName="aigc-test", PolicyName="s3", PolicyDocument=json.dumps(
    {"Version": "2012-10-17",
     "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
print(key["AccessKeyId"])
print(key["SecretAccessKey"])
"#;

impl MotoServer {
    /// Start a server that accepts any credentials.
    pub fn start() -> Result<Self, String> {
        Self::spawn(None)
    }

    /// Start a server that checks credentials; it knows none, so every request is denied.
    pub fn start_with_auth() -> Result<Self, String> {
        Self::spawn(Some(0))
    }

    /// Start a server that checks credentials and knows one user, allowed everything on S3,
    /// whose keys [`MotoServer::access_key`] and [`MotoServer::secret_key`] return (and
    /// [`MotoServer::config`] and [`MotoServer::client`] use). Any other keys are refused.
    pub fn start_with_user() -> Result<Self, String> {
        let mut server = Self::spawn(Some(3))?;
        let output = Command::new("python3")
            .args(["-c", CREATE_USER, &server.endpoint()])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run python3 ({e}); run scripts/install-test-deps.sh"))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let mut lines = stdout.lines();
        match (output.status.success(), lines.next(), lines.next()) {
            (true, Some(access), Some(secret)) => {
                server.access_key = access.to_owned();
                server.secret_key = secret.to_owned();
                Ok(server)
            }
            _ => Err(format!(
                "creating a moto IAM user failed ({}): {}\nboto3 comes with moto[server]; run scripts/install-test-deps.sh",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )),
        }
    }

    /// `auth_after`: check credentials after this many requests; never when `None`.
    fn spawn(auth_after: Option<u32>) -> Result<Self, String> {
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
        if let Some(count) = auth_after {
            command.env("INITIAL_NO_AUTH_ACTION_COUNT", count.to_string());
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
                return Ok(MotoServer {
                    child,
                    port,
                    access_key: ACCESS_KEY.to_owned(),
                    secret_key: SECRET_KEY.to_owned(),
                });
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

    /// The server's process id (for resource accounting in benchmarks).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The access key id [`MotoServer::config`] uses.
    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// The secret key [`MotoServer::config`] uses.
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// An [`S3Config`] for this server with the harness's static credentials.
    pub fn config(&self, storage_class: Option<S3StorageClass>) -> S3Config {
        S3Config {
            endpoint: Some(self.endpoint()),
            force_path_style: true,
            credentials: S3Credentials::Static {
                access_key_id: self.access_key.clone(),
                secret_access_key: self.secret_key.clone(),
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
                &self.access_key,
                &self.secret_key,
                None,
                None,
                "test",
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
