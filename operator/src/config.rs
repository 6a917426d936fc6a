//! How `aigc-operator run` is configured: its flags (each with an environment fallback) and
//! the YAML file the Helm chart mounts from its ConfigMap (`--config`). Flags and environment
//! override the file; the file overrides the built-in defaults.
//!
//! ```yaml
//! workers:
//!   images:
//!     cpu: registry.example/aigc-worker:0.1.0
//!     gpu: registry.example/aigc-worker:0.1.0-cuda
//! scheduler:            # scheduler::SchedulerConfig
//!   autoFallbackAfter: 10m
//!   queues:
//!     - name: default
//! localRoot: /srv/aigc  # only on a single machine (`local up`)
//! ```
//!
//! This module owns parsing and checking; it must not touch the cluster.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::Error;
use crate::controllers::ControllerConfig;
use crate::scheduler::SchedulerConfig;
use crate::worker_pod::WorkerImages;

/// Where the chart mounts the config file.
pub const CHART_CONFIG_PATH: &str = "/etc/aigc-operator/config.yaml";

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log pipelines.
    Json,
    /// Human-readable lines.
    Text,
}

/// The flags of `aigc-operator run`. The chart passes `--config`, `--metrics-addr`,
/// `--leader-election` and `--lease-name`, and sets `POD_NAME`, `POD_NAMESPACE`, `RUST_LOG`
/// and `AIGC_LOG_FORMAT`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Operator configuration file (YAML): worker images, scheduler queues and quotas.
    #[arg(long, env = "AIGC_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address serving /metrics, /healthz and /readyz (port 0 picks a free port).
    #[arg(long, env = "AIGC_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Reconcile only while holding a coordination.k8s.io Lease, so that one of several
    /// replicas is active and another takes over when it dies.
    #[arg(long, env = "AIGC_LEADER_ELECTION")]
    pub leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "AIGC_LEASE_NAME", default_value = "aigc-operator")]
    pub lease_name: String,
    /// Namespace of the Lease; defaults to the kubeconfig's (in a pod: its own) namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// This replica's name in the Lease; defaults to the host name and process id.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Log filter in tracing's env-filter syntax, e.g. `info` or `aigc_operator=debug,info`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_level: String,
    /// Log line format.
    #[arg(long, env = "AIGC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// Image of CPU worker pods (overrides `workers.images.cpu` of the config file).
    #[arg(long, env = "AIGC_WORKER_IMAGE")]
    pub worker_image: Option<String>,
    /// Image of GPU worker pods (overrides `workers.images.gpu`).
    #[arg(long, env = "AIGC_WORKER_GPU_IMAGE")]
    pub worker_gpu_image: Option<String>,
    /// Directory under which filesystem tier paths are visible to the operator itself
    /// (overrides `localRoot`; set on a single machine, never in a cluster).
    #[arg(long, env = "AIGC_LOCAL_ROOT", value_name = "DIR")]
    pub local_root: Option<PathBuf>,
    /// Objects each controller reconciles at once (default 16). More spends more memory on
    /// bursts of changes (thousands of objects applied together).
    #[arg(long, env = "AIGC_MAX_CONCURRENT_RECONCILES", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub max_concurrent_reconciles: Option<u16>,
}

/// The config file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    workers: WorkersFile,
    #[serde(default)]
    scheduler: SchedulerConfig,
    #[serde(default)]
    local_root: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkersFile {
    #[serde(default)]
    images: ImagesFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImagesFile {
    cpu: Option<String>,
    gpu: Option<String>,
}

/// What the controllers are configured with, after the file and the flags are merged.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OperatorConfig {
    /// Images of worker pods.
    pub worker_images: WorkerImages,
    /// Admission queues, quotas and cohorts.
    pub scheduler: SchedulerConfig,
    /// Root under which filesystem tier paths are visible to the operator process; `None` in
    /// a cluster.
    pub local_root: Option<PathBuf>,
    /// Reconciles in flight per controller; the controllers' default (16) when `None`.
    pub max_concurrent_reconciles: Option<u16>,
}

impl OperatorConfig {
    /// Parses and checks a config file's text; `source` names it in errors.
    pub fn from_yaml(text: &str, source: &str) -> Result<Self, Error> {
        let invalid = |field: String, message: String| Error::Config {
            file: source.to_owned(),
            field,
            message,
        };
        let file: ConfigFile = if text.trim().is_empty() {
            ConfigFile::default()
        } else {
            let deserializer = serde_yaml::Deserializer::from_str(text);
            serde_path_to_error::deserialize(deserializer).map_err(|err| {
                let field = match err.path().to_string() {
                    root if root == "." => "top level".to_owned(),
                    path => path,
                };
                invalid(field, err.into_inner().to_string())
            })?
        };
        file.scheduler.validate().map_err(|err| {
            let message = match err {
                Error::SchedulerConfig(message) => message,
                other => other.to_string(),
            };
            invalid("scheduler".to_owned(), message)
        })?;
        let defaults = WorkerImages::default();
        let worker_images = WorkerImages {
            cpu: file.workers.images.cpu.unwrap_or(defaults.cpu),
            gpu: file.workers.images.gpu.unwrap_or(defaults.gpu),
        };
        let config = OperatorConfig {
            worker_images,
            scheduler: file.scheduler,
            local_root: file.local_root,
            max_concurrent_reconciles: None,
        };
        config
            .validate()
            .map_err(|(field, message)| invalid(field, message))?;
        Ok(config)
    }

    /// Reads the file at `path`, or the defaults without one.
    pub fn load(path: Option<&Path>) -> Result<Self, Error> {
        let Some(path) = path else {
            return Ok(OperatorConfig::default());
        };
        let text = std::fs::read_to_string(path).map_err(|err| Error::Config {
            file: path.display().to_string(),
            field: "file".to_owned(),
            message: format!("cannot read the file: {err}"),
        })?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// The file named by `--config` with the flags' overrides applied.
    pub fn from_args(args: &RunArgs) -> Result<Self, Error> {
        let mut config = Self::load(args.config.as_deref())?;
        if let Some(image) = &args.worker_image {
            config.worker_images.cpu = image.clone();
        }
        if let Some(image) = &args.worker_gpu_image {
            config.worker_images.gpu = image.clone();
        }
        if let Some(root) = &args.local_root {
            config.local_root = Some(root.clone());
        }
        config.max_concurrent_reconciles = args.max_concurrent_reconciles;
        config
            .validate()
            .map_err(|(field, message)| Error::Config {
                file: "flags".to_owned(),
                field,
                message,
            })?;
        Ok(config)
    }

    /// The settings every controller shares.
    pub fn controller_config(&self) -> ControllerConfig {
        ControllerConfig {
            worker_images: self.worker_images.clone(),
            scheduler: self.scheduler.clone(),
            local_root: self.local_root.clone(),
            tier_policy_interval: None,
            tier_probe_interval: None,
            max_concurrent_reconciles: self.max_concurrent_reconciles,
        }
    }

    /// (field, problem) of the first value that cannot be used.
    fn validate(&self) -> Result<(), (String, String)> {
        for (field, image) in [
            ("workers.images.cpu", &self.worker_images.cpu),
            ("workers.images.gpu", &self.worker_images.gpu),
        ] {
            if image.is_empty() || image.chars().any(char::is_whitespace) {
                return Err((
                    field.to_owned(),
                    format!(
                        "{image:?} is not an image reference; expected e.g. registry/aigc-worker:0.1.0"
                    ),
                ));
            }
        }
        if let Some(root) = &self.local_root
            && !root.is_absolute()
        {
            return Err((
                "localRoot".to_owned(),
                format!("{:?} is not an absolute path", root.display().to_string()),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::scheduler::Gpus;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn a_full_file_sets_images_queues_and_local_root() {
        let config = OperatorConfig::from_yaml(
            "workers:\n  images:\n    cpu: r/aigc-worker:1\n    gpu: r/aigc-worker:1-cuda\nscheduler:\n  autoFallbackAfter: 2m\n  queues:\n    - name: gpu-team\n      namespaces: [research]\n      cohort: shared\n      quota: {gpu: 4}\nlocalRoot: /srv/aigc\n",
            "test.yaml",
        )
        .unwrap();
        assert_eq!(config.worker_images.cpu, "r/aigc-worker:1");
        assert_eq!(config.worker_images.gpu, "r/aigc-worker:1-cuda");
        assert_eq!(config.scheduler.queues[0].quota.gpu, Some(Gpus(4)));
        assert_eq!(config.scheduler.queue_for_namespace("research"), "gpu-team");
        assert_eq!(config.local_root.as_deref(), Some(Path::new("/srv/aigc")));
        let controllers = config.controller_config();
        assert_eq!(controllers.scheduler, config.scheduler);
        assert_eq!(controllers.local_root, config.local_root);
    }

    #[test]
    fn an_empty_file_means_the_defaults() {
        assert_eq!(
            OperatorConfig::from_yaml("", "empty.yaml").unwrap(),
            OperatorConfig::default()
        );
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        for (text, field, problem) in [
            (
                "workers:\n  images:\n    cpuu: x\n",
                "workers.images",
                "cpuu",
            ),
            (
                "scheduler:\n  queues:\n    - name: a\n      quota: {gpu: \"0.5\"}\n",
                "scheduler.queues[0].quota.gpu",
                "whole",
            ),
            (
                "scheduler:\n  queues: [{name: a}, {name: a}]\n",
                "scheduler",
                "defined twice",
            ),
            (
                "workers:\n  images:\n    gpu: \"\"\n",
                "workers.images.gpu",
                "image",
            ),
            ("localRoot: relative/dir\n", "localRoot", "absolute"),
            ("queues: []\n", "queues", "unknown field `queues`"),
            ("[1, 2]\n", "top level", "invalid type"),
        ] {
            let err = OperatorConfig::from_yaml(text, "c.yaml")
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("c.yaml: {field}")) && err.contains(problem),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn flags_and_environment_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, "workers:\n  images:\n    cpu: from/file:1\n").unwrap();
        let cli = Cli::try_parse_from([
            "run",
            "--config",
            file.to_str().unwrap(),
            "--worker-gpu-image",
            "from/flag:2",
            "--local-root",
            "/data",
            "--max-concurrent-reconciles",
            "4",
        ])
        .unwrap();
        let config = OperatorConfig::from_args(&cli.run).unwrap();
        assert_eq!(
            config.controller_config().max_concurrent_reconciles,
            Some(4)
        );
        assert_eq!(config.worker_images.cpu, "from/file:1");
        assert_eq!(config.worker_images.gpu, "from/flag:2");
        assert_eq!(config.local_root.as_deref(), Some(Path::new("/data")));
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = OperatorConfig::load(Some(Path::new("/nonexistent/aigc.yaml")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/nonexistent/aigc.yaml") && err.contains("cannot read"),
            "{err}"
        );
    }

    #[test]
    fn the_charts_arguments_parse() {
        let cli = Cli::try_parse_from([
            "run",
            "--config=/etc/aigc-operator/config.yaml",
            "--metrics-addr=0.0.0.0:8080",
            "--leader-election",
            "--lease-name=aigc-operator",
        ])
        .unwrap();
        assert!(cli.run.leader_election);
        assert_eq!(cli.run.lease_name, "aigc-operator");
        assert_eq!(cli.run.metrics_addr.port(), 8080);
        assert!(Cli::try_parse_from(["run", "--metrics-addr=nowhere"]).is_err());
        assert!(Cli::try_parse_from(["run", "--log-format=xml"]).is_err());
        for bad in ["0", "1025", "many"] {
            let err = Cli::try_parse_from(["run", "--max-concurrent-reconciles", bad])
                .unwrap_err()
                .to_string();
            assert!(err.contains("--max-concurrent-reconciles"), "{bad}: {err}");
        }
    }
}
