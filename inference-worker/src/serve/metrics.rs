//! Prometheus metrics of the server, rendered in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        for (bound, count) in self.bounds.iter().zip(&mut self.counts) {
            if value <= *bound {
                *count += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// The queues whose depth is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    Generation,
    Embedding,
    Prediction,
}

/// All of the server's metrics. Cheap to update from any thread.
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), (u64, Histogram)>>,
    time_to_first_token: Mutex<Histogram>,
    batch_sizes: Mutex<Histogram>,
    prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    generation_queue: AtomicUsize,
    embedding_queue: AtomicUsize,
    prediction_queue: AtomicUsize,
    model: String,
    device: String,
}

impl Metrics {
    pub fn new(model: &str, device: &str) -> Self {
        Self {
            requests: Mutex::new(BTreeMap::new()),
            time_to_first_token: Mutex::new(Histogram::new(LATENCY_BUCKETS)),
            batch_sizes: Mutex::new(Histogram::new(BATCH_BUCKETS)),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            generation_queue: AtomicUsize::new(0),
            embedding_queue: AtomicUsize::new(0),
            prediction_queue: AtomicUsize::new(0),
            model: model.to_string(),
            device: device.to_string(),
        }
    }

    pub fn observe_request(&self, route: &str, status: u16, latency: Duration) {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let entry = requests
            .entry((route.to_string(), status))
            .or_insert_with(|| (0, Histogram::new(LATENCY_BUCKETS)));
        entry.0 += 1;
        entry.1.observe(latency.as_secs_f64());
    }

    pub fn observe_time_to_first_token(&self, latency: Duration) {
        self.time_to_first_token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(latency.as_secs_f64());
    }

    pub fn observe_batch(&self, size: usize) {
        self.batch_sizes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(size as f64);
    }

    pub fn add_tokens(&self, prompt: usize, generated: usize) {
        self.prompt_tokens
            .fetch_add(prompt as u64, Ordering::Relaxed);
        self.generated_tokens
            .fetch_add(generated as u64, Ordering::Relaxed);
    }

    fn queue(&self, queue: Queue) -> &AtomicUsize {
        match queue {
            Queue::Generation => &self.generation_queue,
            Queue::Embedding => &self.embedding_queue,
            Queue::Prediction => &self.prediction_queue,
        }
    }

    pub fn enqueued(&self, queue: Queue) {
        self.queue(queue).fetch_add(1, Ordering::Relaxed);
    }

    pub fn dequeued(&self, queue: Queue) {
        self.queue(queue).fetch_sub(1, Ordering::Relaxed);
    }

    /// The exposition text for `/metrics`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP aigc_model_info The served model and the device it runs on.\n");
        out.push_str("# TYPE aigc_model_info gauge\n");
        let _ = writeln!(
            out,
            "aigc_model_info{{model=\"{}\",device=\"{}\"}} 1",
            escape(&self.model),
            escape(&self.device)
        );

        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        out.push_str("# HELP aigc_http_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE aigc_http_requests_total counter\n");
        for ((route, status), (count, _)) in requests.iter() {
            let _ = writeln!(
                out,
                "aigc_http_requests_total{{route=\"{}\",status=\"{status}\"}} {count}",
                escape(route)
            );
        }
        out.push_str(
            "# HELP aigc_http_request_duration_seconds Time to the response head, by route and status.\n",
        );
        out.push_str("# TYPE aigc_http_request_duration_seconds histogram\n");
        for ((route, status), (_, histogram)) in requests.iter() {
            let labels = format!("route=\"{}\",status=\"{status}\"", escape(route));
            histogram.render(&mut out, "aigc_http_request_duration_seconds", &labels);
        }
        drop(requests);

        out.push_str("# HELP aigc_prompt_tokens_total Prompt tokens processed.\n");
        out.push_str("# TYPE aigc_prompt_tokens_total counter\n");
        let _ = writeln!(
            out,
            "aigc_prompt_tokens_total {}",
            self.prompt_tokens.load(Ordering::Relaxed)
        );
        out.push_str("# HELP aigc_generated_tokens_total Tokens generated.\n");
        out.push_str("# TYPE aigc_generated_tokens_total counter\n");
        let _ = writeln!(
            out,
            "aigc_generated_tokens_total {}",
            self.generated_tokens.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP aigc_time_to_first_token_seconds From enqueue to the first generated token.\n",
        );
        out.push_str("# TYPE aigc_time_to_first_token_seconds histogram\n");
        self.time_to_first_token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .render(&mut out, "aigc_time_to_first_token_seconds", "");
        out.push_str("# HELP aigc_queue_depth Requests waiting for the model.\n");
        out.push_str("# TYPE aigc_queue_depth gauge\n");
        for (name, queue) in [
            ("generation", Queue::Generation),
            ("embedding", Queue::Embedding),
            ("prediction", Queue::Prediction),
        ] {
            let _ = writeln!(
                out,
                "aigc_queue_depth{{queue=\"{name}\"}} {}",
                self.queue(queue).load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP aigc_batch_size Inputs per embedding forward batch, or requests per generation pass.\n");
        out.push_str("# TYPE aigc_batch_size histogram\n");
        self.batch_sizes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .render(&mut out, "aigc_batch_size", "");
        out
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_cumulative_buckets() {
        let metrics = Metrics::new("m", "cpu");
        metrics.observe_request("/v1/models", 200, Duration::from_millis(20));
        metrics.observe_request("/v1/models", 200, Duration::from_millis(200));
        metrics.observe_batch(3);
        let text = metrics.render();
        assert!(text.contains("aigc_http_requests_total{route=\"/v1/models\",status=\"200\"} 2"));
        assert!(text.contains(
            "aigc_http_request_duration_seconds_bucket{route=\"/v1/models\",status=\"200\",le=\"0.025\"} 1"
        ));
        assert!(text.contains(
            "aigc_http_request_duration_seconds_bucket{route=\"/v1/models\",status=\"200\",le=\"0.25\"} 2"
        ));
        assert!(text.contains("aigc_batch_size_bucket{le=\"4\"} 1"));
        assert!(text.contains("aigc_batch_size_bucket{le=\"2\"} 0"));
    }
}
