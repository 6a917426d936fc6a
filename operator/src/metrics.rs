//! The operator's Prometheus metrics: reconciles per kind (count, errors, duration histogram;
//! the tier policy's passes count under the kind `TierPolicy`),
//! the resource scheduler's queues (pending and admitted workloads per queue) and whether this
//! replica leads. [`Metrics`] is a cheap handle shared by every controller through the
//! `Context`; [`Metrics::render`] writes the Prometheus text exposition format served at
//! `/metrics`. This module only counts; it never decides anything.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Upper bounds (seconds) of the reconcile duration histogram's buckets.
pub const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Shared, thread-safe metrics of one operator process.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    inner: Arc<Mutex<Registry>>,
}

#[derive(Debug, Default)]
struct Registry {
    reconciles: BTreeMap<String, Reconciles>,
    queues: BTreeMap<String, QueueGauges>,
    leader: bool,
}

#[derive(Debug, Default)]
struct Reconciles {
    count: u64,
    errors: u64,
    /// Observations at or below each bound of [`DURATION_BUCKETS`] (not yet cumulative).
    buckets: [u64; DURATION_BUCKETS.len()],
    sum_seconds: f64,
}

#[derive(Clone, Copy, Debug, Default)]
struct QueueGauges {
    pending: u64,
    admitted: u64,
}

impl Metrics {
    /// Fresh metrics with nothing counted.
    pub fn new() -> Self {
        Self::default()
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves plain counters behind, still worth serving.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Count one reconcile of `kind` that took `elapsed` and succeeded or failed.
    pub fn record_reconcile(&self, kind: &str, elapsed: Duration, succeeded: bool) {
        let mut registry = self.registry();
        let entry = registry.reconciles.entry(kind.to_owned()).or_default();
        entry.count += 1;
        if !succeeded {
            entry.errors += 1;
        }
        let seconds = elapsed.as_secs_f64();
        entry.sum_seconds += seconds;
        if let Some(bucket) = DURATION_BUCKETS.iter().position(|bound| seconds <= *bound) {
            entry.buckets[bucket] += 1;
        }
    }

    /// Make `kind` appear (with zero counts) before its first reconcile.
    pub fn register_kind(&self, kind: &str) {
        self.registry()
            .reconciles
            .entry(kind.to_owned())
            .or_default();
    }

    /// Set the scheduler's view of `queue`: workloads waiting for admission and admitted ones.
    pub fn set_queue(&self, queue: &str, pending: u64, admitted: u64) {
        self.registry()
            .queues
            .insert(queue.to_owned(), QueueGauges { pending, admitted });
    }

    /// Replace the scheduler's view of every queue: `(pending, admitted)` per queue name.
    /// Queues left out disappear from `/metrics`.
    pub fn set_queues(&self, queues: BTreeMap<String, (u64, u64)>) {
        self.registry().queues = queues
            .into_iter()
            .map(|(queue, (pending, admitted))| (queue, QueueGauges { pending, admitted }))
            .collect();
    }

    /// Whether this replica holds the leader Lease (always true without leader election).
    pub fn set_leader(&self, leading: bool) {
        self.registry().leader = leading;
    }

    /// Reconciles of `kind` counted so far: (total, errors).
    pub fn reconcile_counts(&self, kind: &str) -> (u64, u64) {
        self.registry()
            .reconciles
            .get(kind)
            .map_or((0, 0), |r| (r.count, r.errors))
    }

    /// Everything in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let registry = self.registry();
        let mut out = String::new();
        header(
            &mut out,
            "aigc_reconcile_total",
            "counter",
            "Reconciles run, by kind.",
        );
        for (kind, r) in &registry.reconciles {
            sample(&mut out, "aigc_reconcile_total", &[("kind", kind)], r.count);
        }
        header(
            &mut out,
            "aigc_reconcile_errors_total",
            "counter",
            "Reconciles that returned an error, by kind.",
        );
        for (kind, r) in &registry.reconciles {
            sample(
                &mut out,
                "aigc_reconcile_errors_total",
                &[("kind", kind)],
                r.errors,
            );
        }
        header(
            &mut out,
            "aigc_reconcile_duration_seconds",
            "histogram",
            "Time one reconcile took, by kind.",
        );
        for (kind, r) in &registry.reconciles {
            let mut cumulative = 0;
            for (bound, count) in DURATION_BUCKETS.iter().zip(r.buckets) {
                cumulative += count;
                let le = bound.to_string();
                sample(
                    &mut out,
                    "aigc_reconcile_duration_seconds_bucket",
                    &[("kind", kind), ("le", &le)],
                    cumulative,
                );
            }
            sample(
                &mut out,
                "aigc_reconcile_duration_seconds_bucket",
                &[("kind", kind), ("le", "+Inf")],
                r.count,
            );
            sample(
                &mut out,
                "aigc_reconcile_duration_seconds_sum",
                &[("kind", kind)],
                r.sum_seconds,
            );
            sample(
                &mut out,
                "aigc_reconcile_duration_seconds_count",
                &[("kind", kind)],
                r.count,
            );
        }
        header(
            &mut out,
            "aigc_queue_pending_workloads",
            "gauge",
            "Workloads waiting for admission, by scheduler queue.",
        );
        for (queue, q) in &registry.queues {
            sample(
                &mut out,
                "aigc_queue_pending_workloads",
                &[("queue", queue)],
                q.pending,
            );
        }
        header(
            &mut out,
            "aigc_admitted_workloads",
            "gauge",
            "Workloads admitted and holding resources, by scheduler queue.",
        );
        for (queue, q) in &registry.queues {
            sample(
                &mut out,
                "aigc_admitted_workloads",
                &[("queue", queue)],
                q.admitted,
            );
        }
        header(
            &mut out,
            "aigc_leader",
            "gauge",
            "1 while this replica holds the leader Lease and runs the controllers.",
        );
        sample(&mut out, "aigc_leader", &[], u8::from(registry.leader));
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{label}=\"{}\"", escape_label(value));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Label values escape backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in\n{text}"))
    }

    #[test]
    fn reconciles_are_counted_per_kind_with_a_cumulative_histogram() {
        let metrics = Metrics::new();
        metrics.record_reconcile("Dataset", Duration::from_millis(3), true);
        metrics.record_reconcile("Dataset", Duration::from_millis(300), false);
        metrics.record_reconcile("Dataset", Duration::from_secs(60), true);
        metrics.register_kind("Model");
        let text = metrics.render();
        assert_eq!(
            line(&text, "aigc_reconcile_total{kind=\"Dataset\"}"),
            "aigc_reconcile_total{kind=\"Dataset\"} 3"
        );
        assert_eq!(
            line(&text, "aigc_reconcile_total{kind=\"Model\"}"),
            "aigc_reconcile_total{kind=\"Model\"} 0"
        );
        assert!(text.contains("aigc_reconcile_errors_total{kind=\"Dataset\"} 1\n"));
        assert!(
            text.contains(
                "aigc_reconcile_duration_seconds_bucket{kind=\"Dataset\",le=\"0.005\"} 1\n"
            )
        );
        assert!(
            text.contains(
                "aigc_reconcile_duration_seconds_bucket{kind=\"Dataset\",le=\"0.5\"} 2\n"
            )
        );
        assert!(
            text.contains("aigc_reconcile_duration_seconds_bucket{kind=\"Dataset\",le=\"30\"} 2\n")
        );
        assert!(
            text.contains(
                "aigc_reconcile_duration_seconds_bucket{kind=\"Dataset\",le=\"+Inf\"} 3\n"
            )
        );
        assert!(text.contains("aigc_reconcile_duration_seconds_count{kind=\"Dataset\"} 3\n"));
        assert_eq!(metrics.reconcile_counts("Dataset"), (3, 1));
    }

    #[test]
    fn queues_and_leadership_are_gauges() {
        let metrics = Metrics::new();
        assert!(metrics.render().contains("aigc_leader 0\n"));
        metrics.set_leader(true);
        metrics.set_queue("gpu-team", 4, 2);
        metrics.set_queue("gpu-team", 3, 3);
        let text = metrics.render();
        assert!(text.contains("aigc_leader 1\n"));
        assert!(text.contains("aigc_queue_pending_workloads{queue=\"gpu-team\"} 3\n"));
        assert!(text.contains("aigc_admitted_workloads{queue=\"gpu-team\"} 3\n"));
        assert!(text.contains("# TYPE aigc_admitted_workloads gauge\n"));
        metrics.set_queues(BTreeMap::from([("default".to_owned(), (1, 0))]));
        let text = metrics.render();
        assert!(text.contains("aigc_queue_pending_workloads{queue=\"default\"} 1\n"));
        assert!(!text.contains("gpu-team"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
