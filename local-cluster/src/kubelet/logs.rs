//! Container logs on disk, shared by the kubelet (which writes them) and the API server's
//! `pods/log` subresource (which reads them). One file per container instance:
//! `<root>/<namespace>/<pod>/<uid>/<container>/<restartCount>.log`, each line prefixed with its
//! RFC 3339 timestamp; `<restartCount>.done` appears once the instance has exited and all of
//! its output is in the file, which ends a follow.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where container logs live.
#[derive(Clone, Debug)]
pub struct LogDir {
    root: PathBuf,
}

/// One container instance's log files.
#[derive(Clone, Debug)]
pub struct InstanceLog {
    /// The log lines.
    pub path: PathBuf,
    /// Present once the instance exited and its output is complete.
    pub done: PathBuf,
}

impl InstanceLog {
    /// Whether the instance has exited and its log is complete.
    pub fn is_done(&self) -> bool {
        self.done.exists()
    }
}

impl LogDir {
    /// Logs under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory of one pod's logs (removed with the pod).
    pub fn pod_dir(&self, namespace: &str, pod: &str, uid: &str) -> PathBuf {
        self.root.join(namespace).join(pod).join(uid)
    }

    /// The files of a container's `restart`-th instance.
    pub fn instance(
        &self,
        namespace: &str,
        pod: &str,
        uid: &str,
        container: &str,
        restart: u32,
    ) -> InstanceLog {
        let dir = self.pod_dir(namespace, pod, uid).join(container);
        InstanceLog {
            path: dir.join(format!("{restart}.log")),
            done: dir.join(format!("{restart}.done")),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Appends timestamped lines to an instance's log; shared by the stdout and stderr readers.
#[derive(Clone)]
pub struct LogWriter {
    file: Arc<Mutex<std::fs::File>>,
}

impl LogWriter {
    /// Create (truncate) the log file of an instance.
    pub fn create(log: &InstanceLog) -> std::io::Result<Self> {
        if let Some(dir) = log.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(&log.done);
        let file = std::fs::File::create(&log.path)?;
        Ok(Self {
            file: Arc::new(Mutex::new(file)),
        })
    }

    /// Append one line of output (without its newline).
    pub fn write_line(&self, line: &[u8]) {
        let stamp = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.9fZ ");
        let mut record = stamp.to_string().into_bytes();
        record.extend_from_slice(line);
        record.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = file.write_all(&record) {
            tracing::warn!(error = %e, "writing a container log failed");
        }
    }
}

/// Mark an instance's log complete.
pub fn mark_done(log: &InstanceLog) {
    if let Err(e) = std::fs::write(&log.done, b"") {
        tracing::warn!(path = %log.done.display(), error = %e, "marking a container log complete failed");
    }
}

/// Stored lines (complete lines only) rendered for a reader: with or without timestamps.
pub fn render(stored: &[u8], timestamps: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(stored.len());
    for line in stored.split_inclusive(|b| *b == b'\n') {
        if timestamps {
            out.extend_from_slice(line);
        } else {
            let text = line
                .iter()
                .position(|b| *b == b' ')
                .map_or(line, |space| &line[space + 1..]);
            out.extend_from_slice(text);
        }
    }
    out
}

/// The stored lines written at or after `since` (an RFC 3339 time).
pub fn since(stored: &[u8], since: chrono::DateTime<chrono::Utc>) -> Vec<u8> {
    stored
        .split_inclusive(|b| *b == b'\n')
        .filter(|line| {
            let stamp = line.split(|b| *b == b' ').next().unwrap_or_default();
            std::str::from_utf8(stamp)
                .ok()
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .is_none_or(|t| t >= since)
        })
        .flatten()
        .copied()
        .collect()
}

/// The last `lines` complete lines of `stored`.
pub fn tail(stored: &[u8], lines: usize) -> &[u8] {
    if lines == 0 {
        return &stored[stored.len()..];
    }
    let mut seen = 0;
    let end = if stored.ends_with(b"\n") {
        stored.len() - 1
    } else {
        stored.len()
    };
    for (i, b) in stored[..end].iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == lines {
                return &stored[i + 1..];
            }
        }
    }
    stored
}

/// The stored bytes up to the last newline (a line still being written waits for its end).
pub fn complete_lines(stored: &[u8]) -> &[u8] {
    match stored.iter().rposition(|b| *b == b'\n') {
        Some(last) => &stored[..=last],
        None => &stored[..0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORED: &[u8] =
        b"2026-01-01T00:00:00.000000001Z one\n2026-01-01T00:00:01.000000001Z two words\n2026-01-01T00:00:02.000000001Z three\n";

    #[test]
    fn lines_render_with_or_without_timestamps() {
        assert_eq!(render(STORED, false), b"one\ntwo words\nthree\n");
        assert!(render(STORED, true).starts_with(b"2026-01-01T00:00:00.000000001Z one\n"));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(render(tail(STORED, 2), false), b"two words\nthree\n");
        assert_eq!(render(tail(STORED, 9), false), b"one\ntwo words\nthree\n");
        assert!(tail(STORED, 0).is_empty());
        assert_eq!(complete_lines(b"a\nb"), b"a\n");
        let later = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:01Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(render(&since(STORED, later), false), b"two words\nthree\n");
    }
}
