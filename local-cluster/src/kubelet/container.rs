//! One container's life on a simulated node: start its process, pump its output into the log,
//! probe it, collect its exit and termination message, and restart it as the pod's
//! `restartPolicy` says, with exponential back-off (`CrashLoopBackOff`). It reports every
//! change to the pod worker as an [`Event`] and stops (SIGTERM, grace period, SIGKILL) when
//! told to.

use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{mpsc, watch};

use super::logs::{self, InstanceLog, LogDir, LogWriter};
use super::prepare::ContainerPlan;
use super::probes;
use super::process::{self, ProcessTable};
use super::status::Terminated;

/// Longest termination message kept.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Back-off never grows beyond this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// An instance that ran this long resets the back-off.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);

/// `spec.restartPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Restart after every exit.
    Always,
    /// Restart after a non-zero exit.
    OnFailure,
    /// Never restart.
    Never,
}

impl RestartPolicy {
    /// From the pod spec (default `Always`).
    pub fn parse(text: Option<&str>) -> Self {
        match text {
            Some("OnFailure") => Self::OnFailure,
            Some("Never") => Self::Never,
            _ => Self::Always,
        }
    }

    /// Whether an instance that exited with `exit_code` is restarted.
    pub fn restarts(self, exit_code: i32) -> bool {
        match self {
            Self::Always => true,
            Self::OnFailure => exit_code != 0,
            Self::Never => false,
        }
    }
}

/// The delay before the next restart, given the one before (none before the first restart).
pub fn next_backoff(previous: Option<Duration>, base: Duration) -> Duration {
    match previous {
        None => Duration::ZERO,
        Some(d) if d.is_zero() => base,
        Some(d) => (d * 2).min(MAX_BACKOFF),
    }
}

/// What a container runner tells its pod worker.
#[derive(Debug)]
pub enum Event {
    /// An instance started.
    Running {
        /// Container index.
        index: usize,
        /// Its process id (and process group).
        pid: u32,
        /// Start time.
        started_at: String,
    },
    /// Readiness changed (only for containers with a readiness probe).
    Ready {
        /// Container index.
        index: usize,
        /// Now ready or not.
        ready: bool,
    },
    /// An instance exited.
    Exited {
        /// Container index.
        index: usize,
        /// How.
        terminated: Terminated,
        /// Whether it stays exited.
        finished: bool,
    },
    /// The liveness probe failed; the instance is being killed.
    Unhealthy {
        /// Container index.
        index: usize,
    },
    /// Waiting before a restart.
    BackingOff {
        /// Container index.
        index: usize,
        /// Details.
        message: String,
    },
}

/// Where the runner's logs go.
#[derive(Clone, Debug)]
pub struct LogTarget {
    /// Log directory.
    pub dir: LogDir,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Pod uid.
    pub uid: String,
}

impl LogTarget {
    fn instance(&self, container: &str, restart: u32) -> InstanceLog {
        self.dir
            .instance(&self.namespace, &self.pod, &self.uid, container, restart)
    }
}

/// Everything one container runner needs.
pub struct Runner {
    /// The container's position in the pod spec.
    pub index: usize,
    /// What to run.
    pub plan: ContainerPlan,
    /// Restart policy.
    pub policy: RestartPolicy,
    /// First non-zero back-off.
    pub backoff_base: Duration,
    /// Logs.
    pub logs: LogTarget,
    /// Running process groups.
    pub processes: Arc<ProcessTable>,
    /// Events to the pod worker.
    pub events: mpsc::UnboundedSender<Event>,
    /// Set to the grace period when the container must stop.
    pub stop: watch::Receiver<Option<Duration>>,
}

fn exit_code(status: std::io::Result<std::process::ExitStatus>) -> (i32, Option<i32>) {
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => (code, None),
            (None, Some(signal)) => (128 + signal, Some(signal)),
            (None, None) => (255, None),
        },
        Err(_) => (255, None),
    }
}

async fn pump(stream: impl AsyncRead + Unpin, writer: LogWriter) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    line.pop();
                }
                writer.write_line(&line);
            }
        }
    }
}

fn termination_message(plan: &ContainerPlan, exit_code: i32, log: &InstanceLog) -> String {
    let mut bytes = std::fs::read(&plan.termination_file).unwrap_or_default();
    if bytes.is_empty() && plan.fallback_to_logs && exit_code != 0 {
        let stored = std::fs::read(&log.path).unwrap_or_default();
        bytes = logs::render(logs::tail(&stored, 80), false);
        if bytes.len() > 2048 {
            bytes = bytes[bytes.len() - 2048..].to_vec();
        }
    }
    bytes.truncate(MAX_MESSAGE_BYTES);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// SIGTERM the group, wait up to `grace`, then SIGKILL; returns the exit status.
async fn terminate(
    pid: u32,
    grace: Duration,
    child: &mut tokio::process::Child,
) -> std::io::Result<std::process::ExitStatus> {
    if !grace.is_zero() {
        process::signal_group(pid, libc::SIGTERM);
        if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
            return status;
        }
    }
    process::signal_group(pid, libc::SIGKILL);
    child.wait().await
}

/// How an instance's wait ended.
enum Outcome {
    Exited(std::io::Result<std::process::ExitStatus>),
    Unhealthy,
    Stop(Duration),
}

fn stopping(stop: &watch::Receiver<Option<Duration>>) -> bool {
    stop.borrow().is_some() || stop.has_changed().is_err()
}

/// Wait until told to stop; the grace period (zero when the worker went away).
async fn stop_requested(stop: &mut watch::Receiver<Option<Duration>>) -> Duration {
    match stop.wait_for(Option::is_some).await {
        Ok(grace) => grace.unwrap_or_default(),
        Err(_) => Duration::ZERO,
    }
}

impl Runner {
    /// Run instances until the container is finished or told to stop.
    pub async fn run(mut self) {
        let mut restart = 0_u32;
        let mut backoff: Option<Duration> = None;
        loop {
            if stopping(&self.stop) {
                return;
            }
            let began = Instant::now();
            let (terminated, stopped) = self.run_instance(restart).await;
            let finished = stopped || !self.policy.restarts(terminated.exit_code);
            let _ = self.events.send(Event::Exited {
                index: self.index,
                terminated,
                finished,
            });
            if finished {
                return;
            }
            if began.elapsed() >= BACKOFF_RESET_AFTER {
                backoff = None;
            }
            let delay = next_backoff(backoff, self.backoff_base);
            backoff = Some(delay);
            if !delay.is_zero() {
                let _ = self.events.send(Event::BackingOff {
                    index: self.index,
                    message: format!(
                        "back-off {}s restarting failed container={} pod={}_{}({})",
                        delay.as_secs(),
                        self.plan.name,
                        self.logs.pod,
                        self.logs.namespace,
                        self.logs.uid
                    ),
                });
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop_requested(&mut self.stop) => return,
                }
            }
            restart += 1;
        }
    }

    /// One instance from start to exit; whether it was stopped on request.
    async fn run_instance(&mut self, restart: u32) -> (Terminated, bool) {
        let log = self.logs.instance(&self.plan.name, restart);
        let started_at = crate::api::now();
        let failed_start = |message: String, log: &InstanceLog| {
            logs::mark_done(log);
            Terminated {
                exit_code: 128,
                signal: None,
                reason: "StartError".into(),
                message,
                started_at: started_at.clone(),
                finished_at: crate::api::now(),
            }
        };
        let writer = match LogWriter::create(&log) {
            Ok(writer) => writer,
            Err(e) => {
                let message = format!("creating the log {}: {e}", log.path.display());
                return (failed_start(message, &log), false);
            }
        };
        if let Err(e) = std::fs::write(&self.plan.termination_file, b"") {
            let message = format!(
                "creating the termination message file {}: {e}",
                self.plan.termination_file.display()
            );
            return (failed_start(message, &log), false);
        }
        let mut child = match process::spawn(&self.plan.launch) {
            Ok(child) => child,
            Err(e) => {
                let message = format!(
                    "starting {} for image {:?}: {e}",
                    self.plan.launch.program.display(),
                    self.plan.image
                );
                return (failed_start(message, &log), false);
            }
        };
        let pid = child.id().unwrap_or_default();
        let ticket = self.processes.track(pid);
        let _ = self.events.send(Event::Running {
            index: self.index,
            pid,
            started_at: started_at.clone(),
        });
        let mut pumps = tokio::task::JoinSet::new();
        if let Some(stdout) = child.stdout.take() {
            pumps.spawn(pump(stdout, writer.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            pumps.spawn(pump(stderr, writer));
        }
        let liveness = async {
            match &self.plan.liveness {
                Some(probe) => probes::until_failed(probe, &self.plan.probe_target).await,
                None => std::future::pending().await,
            }
        };
        let readiness = async {
            match &self.plan.readiness {
                Some(probe) => {
                    let events = self.events.clone();
                    let index = self.index;
                    probes::report_readiness(probe, &self.plan.probe_target, |ready| {
                        let _ = events.send(Event::Ready { index, ready });
                    })
                    .await;
                }
                None => std::future::pending().await,
            }
        };
        // Completes only when the liveness probe fails: readiness reports and never ends.
        let watchdog = async {
            tokio::select! {
                _ = liveness => {}
                _ = readiness => {}
            }
        };
        let mut stop = self.stop.clone();
        let outcome = tokio::select! {
            status = child.wait() => Outcome::Exited(status),
            _ = watchdog => Outcome::Unhealthy,
            grace = stop_requested(&mut stop) => Outcome::Stop(grace),
        };
        let (status, stopped) = match outcome {
            Outcome::Exited(status) => (status, false),
            Outcome::Unhealthy => {
                let _ = self.events.send(Event::Unhealthy { index: self.index });
                process::signal_group(pid, libc::SIGKILL);
                (child.wait().await, false)
            }
            Outcome::Stop(grace) => (terminate(pid, grace, &mut child).await, true),
        };
        // Whatever the main process left behind in its group goes with it, as with a container.
        process::signal_group(pid, libc::SIGKILL);
        self.processes.release(ticket);
        let drained = async { while pumps.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(2), drained)
            .await
            .is_err()
        {
            tracing::warn!(container = %self.plan.name, "output still open after exit (a process left its group); log may be incomplete");
        }
        logs::mark_done(&log);
        let (exit_code, signal) = exit_code(status);
        let terminated = Terminated {
            exit_code,
            signal,
            reason: if exit_code == 0 { "Completed" } else { "Error" }.into(),
            message: termination_message(&self.plan, exit_code, &log),
            started_at,
            finished_at: crate::api::now(),
        };
        (terminated, stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_immediate_once_then_doubles_up_to_the_cap() {
        let base = Duration::from_secs(10);
        let mut delays = Vec::new();
        let mut previous = None;
        for _ in 0..8 {
            let next = next_backoff(previous, base);
            delays.push(next.as_secs());
            previous = Some(next);
        }
        assert_eq!(delays, [0, 10, 20, 40, 80, 160, 300, 300]);
    }

    #[test]
    fn restart_policies_decide_on_the_exit_code() {
        assert!(RestartPolicy::parse(None).restarts(0));
        assert!(RestartPolicy::parse(Some("OnFailure")).restarts(1));
        assert!(!RestartPolicy::parse(Some("OnFailure")).restarts(0));
        assert!(!RestartPolicy::parse(Some("Never")).restarts(1));
    }
}
