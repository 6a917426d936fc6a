//! Container processes: started in their own process group with a clean environment and
//! `PR_SET_PDEATHSIG`, so they die with the cluster process; tracked in a [`ProcessTable`]
//! that kills every group still alive on shutdown and on drop.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// What to run for one container instance.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The executable.
    pub program: PathBuf,
    /// `argv[0]` (the container's `command[0]` when given).
    pub argv0: String,
    /// The remaining arguments.
    pub args: Vec<String>,
    /// The whole environment.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub workdir: PathBuf,
}

/// Start an instance: stdout and stderr piped, stdin closed, own process group, killed by
/// the kernel if the thread that started it (a runtime worker of the cluster) goes away.
pub fn spawn(launch: &Launch) -> std::io::Result<tokio::process::Child> {
    let mut command = tokio::process::Command::new(&launch.program);
    command
        .arg0(&launch.argv0)
        .args(&launch.args)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&launch.workdir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: the closure only calls prctl(2), which is async-signal-safe, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn()
}

/// Send `signal` to every process of the group led by `pgid`.
pub fn signal_group(pgid: u32, signal: i32) {
    let Ok(pgid) = i32::try_from(pgid) else {
        return;
    };
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid addresses a process group; no memory is involved.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

/// Process groups of running containers.
#[derive(Debug, Default)]
pub struct ProcessTable {
    groups: Mutex<HashMap<u64, u32>>,
    next: AtomicU64,
}

impl ProcessTable {
    /// Track a running group; returns the ticket to [`ProcessTable::release`] it with.
    pub fn track(&self, pgid: u32) -> u64 {
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(ticket, pgid);
        ticket
    }

    /// Stop tracking a group whose leader has been reaped.
    pub fn release(&self, ticket: u64) {
        self.lock().remove(&ticket);
    }

    /// SIGKILL every tracked group.
    pub fn kill_all(&self) {
        for pgid in self.lock().values() {
            signal_group(*pgid, libc::SIGKILL);
        }
    }

    /// How many groups are tracked.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no group is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u32>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for ProcessTable {
    fn drop(&mut self) {
        self.kill_all();
    }
}
