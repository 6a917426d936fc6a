//! The `aigc-operator run` process around the controllers: serves `/metrics`, `/healthz` and
//! `/readyz`, campaigns for the leader Lease (when asked to), runs the controllers only while
//! leading, and shuts down in order: controllers first, then the Lease is released, then the
//! HTTP endpoints close.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Error;
use crate::config::{OperatorConfig, RunArgs};
use crate::controllers::{self, Context};
use crate::health::{Health, Role};
use crate::leader::{LeaderElector, LeaseTiming};
use crate::metrics::Metrics;

/// Log targets held at `info` whatever the configured level: the AWS SDK's debug and trace
/// logs print the resolved credentials (the access key id) and request signatures, and the
/// operator uses the SDK with the credentials of StorageTier Secrets.
pub const CREDENTIAL_LOGGING_TARGETS: &[&str] = &[
    "aws_config",
    "aws_credential_types",
    "aws_runtime",
    "aws_sdk_s3",
    "aws_sigv4",
    "aws_smithy_runtime",
];

/// The log filter for `directives` (`RUST_LOG` syntax) with the
/// [`CREDENTIAL_LOGGING_TARGETS`] held at `info`.
pub fn log_filter(
    directives: &str,
) -> Result<tracing_subscriber::EnvFilter, tracing_subscriber::filter::ParseError> {
    let mut filter = tracing_subscriber::EnvFilter::try_new(directives)?;
    for target in CREDENTIAL_LOGGING_TARGETS {
        filter = filter.add_directive(format!("{target}=info").parse()?);
    }
    Ok(filter)
}

/// How long stopping controllers may take before their tasks are cancelled.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Run until `shutdown` completes, then stop cleanly.
pub async fn run(
    client: kube::Client,
    args: &RunArgs,
    config: OperatorConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let metrics = Metrics::new();
    let health = Health::new();
    for queue in config.scheduler.effective_queues() {
        metrics.set_queue(&queue.name, 0, 0);
    }

    let listener = TcpListener::bind(args.metrics_addr)
        .await
        .map_err(|source| Error::Listen {
            addr: args.metrics_addr,
            source,
        })?;
    let metrics_addr = listener.local_addr().map_err(|source| Error::Listen {
        addr: args.metrics_addr,
        source,
    })?;
    let (http_stop, http_stopped) = watch::channel(false);
    let http = tokio::spawn(serve(
        listener,
        metrics.clone(),
        health.clone(),
        wait_true(http_stopped),
    ));
    tracing::info!(%metrics_addr, "serving /metrics, /healthz and /readyz");

    let (role_tx, mut role) = watch::channel(Role::Starting);
    let (elector_stop, elector_stopped) = watch::channel(false);
    // Without leader election the role stays `Leading`; its sender lives as long as the loop
    // below, since a dropped sender reads as "stop".
    let (elector, _fixed_role) = if args.leader_election {
        let namespace = args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let identity = args.identity.clone().unwrap_or_else(default_identity);
        tracing::info!(%identity, lease = %format!("{namespace}/{}", args.lease_name), "campaigning for the leader Lease");
        let elector = LeaderElector::new(
            client.clone(),
            &namespace,
            &args.lease_name,
            &identity,
            LeaseTiming::default(),
        );
        let task = tokio::spawn(elector.run(role_tx, wait_true(elector_stopped)));
        (Some(task), None)
    } else {
        role_tx.send_replace(Role::Leading);
        (None, Some(role_tx))
    };

    let controller_config = config.controller_config();
    tokio::pin!(shutdown);
    'process: loop {
        // Stand by until leading.
        loop {
            let current = role.borrow_and_update().clone();
            health.set_role(current.clone());
            metrics.set_leader(current == Role::Leading);
            if current == Role::Leading {
                break;
            }
            tokio::select! {
                () = &mut shutdown => break 'process,
                changed = role.changed() => if changed.is_err() { break 'process },
            }
        }
        tracing::info!("starting controllers");
        let (stop, stopped) = watch::channel(false);
        let ctx = Context::with_process(
            client.clone(),
            controller_config.clone(),
            metrics.clone(),
            health.clone(),
            stopped,
        );
        let mut running = tokio::spawn(controllers::run_all(Arc::clone(&ctx)));
        // Lead until leadership is lost, the controllers end, or the process is asked to stop.
        let asked_to_stop = loop {
            tokio::select! {
                () = &mut shutdown => break true,
                _ = &mut running => break false,
                changed = role.changed() => {
                    if changed.is_err() || *role.borrow() != Role::Leading {
                        break false;
                    }
                }
            }
        };
        tracing::info!("stopping controllers");
        stop.send_replace(true);
        if !running.is_finished()
            && tokio::time::timeout(STOP_GRACE, &mut running)
                .await
                .is_err()
        {
            tracing::warn!(grace = ?STOP_GRACE, "controllers did not stop in time; cancelling them");
            running.abort();
        }
        metrics.set_leader(false);
        health.set_role(Role::Standby { leader: None });
        if asked_to_stop {
            break;
        }
    }

    elector_stop.send_replace(true);
    if let Some(elector) = elector {
        let _ = elector.await;
    }
    http_stop.send_replace(true);
    match http.await {
        Ok(result) => result,
        Err(join) => Err(Error::Serve(std::io::Error::other(join))),
    }
}

/// Serve the probes and metrics on `listener` until `stop` completes.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    health: Health,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = metrics.render();
                async move { ([(CONTENT_TYPE, "text/plain; version=0.0.4")], text) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let readiness = health.readiness();
                async move {
                    match readiness {
                        Ok(why) => (StatusCode::OK, format!("{why}\n")),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                    }
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
        .map_err(Error::Serve)
}

/// Completes once `flag` is true or its sender is gone.
async fn wait_true(mut flag: watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}

/// `<host name>-<pid>`: unique per replica when no `--identity`/`POD_NAME` is given.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "aigc-operator".to_owned());
    format!("{host}-{}", std::process::id())
}
