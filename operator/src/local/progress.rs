//! What `local up` shows while the applied resources converge: one line per resource, from its
//! status alone, rendered as progress bars on a terminal and as plain lines otherwise.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use aigc_crds::condition::{ConditionStatus, find_condition};
use aigc_crds::dataset::{Dataset, DatasetPhase};
use aigc_crds::inference_service::{InferenceService, InferenceServicePhase};
use aigc_crds::model::{Architecture, Model, ModelPhase};
use aigc_crds::storage_tier::StorageTier;
use aigc_crds::training_job::{TrainingJob, TrainingJobPhase};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kube::ResourceExt;

/// The aigc resources of the cluster at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// StorageTiers.
    pub tiers: Vec<StorageTier>,
    /// Datasets.
    pub datasets: Vec<Dataset>,
    /// TrainingJobs.
    pub training_jobs: Vec<TrainingJob>,
    /// Models.
    pub models: Vec<Model>,
    /// InferenceServices.
    pub services: Vec<InferenceService>,
}

/// Where one resource is.
#[derive(Clone, Debug, PartialEq)]
pub enum State {
    /// Not there yet; the message says what it waits for.
    Waiting,
    /// Counting steps, e.g. training steps.
    Counting {
        /// Done so far.
        done: u64,
        /// Of this many.
        total: u64,
    },
    /// Finished successfully.
    Done,
    /// Failed; the message says why.
    Failed,
}

/// One line of the display.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    /// `Kind namespace/name`, unique.
    pub key: String,
    /// Where it is.
    pub state: State,
    /// What a person reads.
    pub message: String,
}

fn ready_message(conditions: &[aigc_crds::condition::Condition]) -> Option<String> {
    find_condition(conditions, "Ready")
        .filter(|c| c.status != ConditionStatus::True)
        .map(|c| {
            if c.message.is_empty() {
                c.reason.clone()
            } else {
                c.message.clone()
            }
        })
}

fn key<K: ResourceExt>(kind: &str, object: &K) -> String {
    format!(
        "{kind} {}/{}",
        object.namespace().unwrap_or_else(|| "-".into()),
        object.name_any()
    )
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The display lines for `snapshot`, tiers first, then data, training, models and services.
pub fn lines(snapshot: &Snapshot) -> Vec<Line> {
    let mut lines = Vec::new();
    for tier in &snapshot.tiers {
        let status = tier.status.clone().unwrap_or_default();
        let ready = find_condition(&status.conditions, "Ready")
            .is_some_and(|c| c.status == ConditionStatus::True);
        let (state, message) = if ready {
            (
                State::Done,
                format!(
                    "ready: {} in {} objects",
                    bytes(status.used_bytes.unwrap_or(0)),
                    status.object_count.unwrap_or(0)
                ),
            )
        } else {
            let why = ready_message(&status.conditions).unwrap_or_else(|| "probing".into());
            (State::Waiting, why)
        };
        lines.push(Line {
            key: key("StorageTier", tier),
            state,
            message,
        });
    }
    for dataset in &snapshot.datasets {
        let status = dataset.status.clone().unwrap_or_default();
        let (state, message) = match status.phase {
            Some(DatasetPhase::Ready) => (
                State::Done,
                format!(
                    "prepared: {} rows, {} on tier {}",
                    status.rows.unwrap_or(0),
                    bytes(status.bytes.unwrap_or(0)),
                    status.tier.as_deref().unwrap_or("?")
                ),
            ),
            Some(DatasetPhase::Failed) => (
                State::Failed,
                ready_message(&status.conditions).unwrap_or_else(|| "failed".into()),
            ),
            Some(DatasetPhase::Migrating) => (
                State::Waiting,
                ready_message(&status.conditions).unwrap_or_else(|| "moving between tiers".into()),
            ),
            Some(DatasetPhase::Preparing) => (State::Waiting, "preparing".into()),
            Some(DatasetPhase::Pending) | None => (
                State::Waiting,
                ready_message(&status.conditions).unwrap_or_else(|| "pending".into()),
            ),
        };
        lines.push(Line {
            key: key("Dataset", dataset),
            state,
            message,
        });
    }
    for job in &snapshot.training_jobs {
        let status = job.status.clone().unwrap_or_default();
        let progress = status.progress.clone().unwrap_or_default();
        let mut detail = Vec::new();
        if let Some(epoch) = progress.epoch {
            detail.push(format!("epoch {epoch}/{}", job.spec.hyperparameters.epochs));
        }
        if let Some(loss) = progress.loss {
            detail.push(format!("loss {loss:.4}"));
        }
        if let Some(metric) = progress.metric {
            detail.push(format!("metric {metric:.4}"));
        }
        if let Some(eta) = &progress.eta {
            detail.push(format!("eta {eta}"));
        }
        let (state, message) = match status.phase {
            Some(TrainingJobPhase::Succeeded) => (
                State::Done,
                format!(
                    "trained{}: model {}",
                    if detail.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", detail.join(", "))
                    },
                    job.spec.output.model_name
                ),
            ),
            Some(TrainingJobPhase::Failed) => (
                State::Failed,
                ready_message(&status.conditions).unwrap_or_else(|| "failed".into()),
            ),
            Some(TrainingJobPhase::Running) => match (progress.step, progress.total_steps) {
                (Some(done), Some(total)) if total > 0 => (
                    State::Counting { done, total },
                    format!("training: {}", detail.join(", ")),
                ),
                _ => (State::Waiting, "starting".into()),
            },
            _ => (
                State::Waiting,
                ready_message(&status.conditions).unwrap_or_else(|| "queued".into()),
            ),
        };
        lines.push(Line {
            key: key("TrainingJob", job),
            state,
            message,
        });
    }
    for model in &snapshot.models {
        let status = model.status.clone().unwrap_or_default();
        let (state, message) = match status.phase {
            Some(ModelPhase::Ready) => {
                let mut message = "registered".to_owned();
                if let Some(parameters) = status.parameters {
                    message.push_str(&format!(": {parameters} parameters"));
                }
                if let Some(size) = status.size_bytes {
                    message.push_str(&format!(", {}", bytes(size)));
                }
                if let Some(tier) = &status.tier {
                    message.push_str(&format!(" on tier {tier}"));
                }
                (State::Done, message)
            }
            Some(ModelPhase::Failed) => (
                State::Failed,
                ready_message(&status.conditions).unwrap_or_else(|| "failed".into()),
            ),
            _ => (
                State::Waiting,
                ready_message(&status.conditions).unwrap_or_else(|| "verifying".into()),
            ),
        };
        lines.push(Line {
            key: key("Model", model),
            state,
            message,
        });
    }
    for service in &snapshot.services {
        let status = service.status.clone().unwrap_or_default();
        let (state, message) = match status.phase {
            Some(InferenceServicePhase::Ready) => (
                State::Done,
                format!(
                    "ready at {} ({}/{} replicas)",
                    status.url.as_deref().unwrap_or("?"),
                    status.ready_replicas,
                    status.replicas
                ),
            ),
            Some(InferenceServicePhase::Failed) => (
                State::Failed,
                ready_message(&status.conditions).unwrap_or_else(|| "failed".into()),
            ),
            _ => (
                State::Waiting,
                ready_message(&status.conditions).unwrap_or_else(|| "deploying".into()),
            ),
        };
        lines.push(Line {
            key: key("InferenceService", service),
            state,
            message,
        });
    }
    lines
}

/// Whether every line is done (and there is at least one).
pub fn all_done(lines: &[Line]) -> bool {
    !lines.is_empty() && lines.iter().all(|line| line.state == State::Done)
}

/// How to call each ready InferenceService with curl, by the architecture of its model.
pub fn curl_examples(snapshot: &Snapshot) -> Vec<String> {
    let mut examples = Vec::new();
    for service in &snapshot.services {
        let Some(url) = service.status.as_ref().and_then(|s| s.url.clone()) else {
            continue;
        };
        let architecture = snapshot
            .models
            .iter()
            .find(|m| {
                m.name_any() == service.spec.model_ref.name && m.namespace() == service.namespace()
            })
            .map(|m| m.spec.architecture);
        let example = match architecture {
            Some(Architecture::Llama) | Some(Architecture::CharTransformer) => format!(
                "curl -s {url}/chat/completions -H 'Content-Type: application/json' \
                 -d '{{\"model\": \"{}\", \"messages\": [{{\"role\": \"user\", \"content\": \"What is the capital of France?\"}}]}}'",
                service.spec.model_ref.name
            ),
            Some(Architecture::Bert) => format!(
                "curl -s {url}/embeddings -H 'Content-Type: application/json' \
                 -d '{{\"model\": \"{}\", \"input\": \"a sentence to embed\"}}'",
                service.spec.model_ref.name
            ),
            _ => format!(
                "curl -s {url}/predict -H 'Content-Type: application/json' \
                 -d '{{\"instances\": [{{\"mean_radius\": 14.1, \"mean_texture\": 19.3, \"worst_area\": 880.6}}]}}'"
            ),
        };
        examples.push(format!("{}: {example}", service.name_any()));
    }
    examples
}

/// Draws lines: bars on a terminal, one printed line per change otherwise.
pub struct Display {
    bars: Option<(MultiProgress, BTreeMap<String, ProgressBar>)>,
    printed: BTreeMap<String, String>,
}

impl Default for Display {
    fn default() -> Self {
        Self::new()
    }
}

impl Display {
    /// A display on standard error.
    pub fn new() -> Self {
        let bars = std::io::stderr().is_terminal().then(|| {
            (
                MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                BTreeMap::new(),
            )
        });
        Display {
            bars,
            printed: BTreeMap::new(),
        }
    }

    /// Show `lines`.
    pub fn update(&mut self, lines: &[Line]) {
        match &mut self.bars {
            Some((multi, bars)) => {
                for line in lines {
                    let bar = bars.entry(line.key.clone()).or_insert_with(|| {
                        let bar = multi.add(ProgressBar::new(1));
                        bar.set_prefix(line.key.clone());
                        bar
                    });
                    let template = match line.state {
                        State::Counting { .. } => "{prefix:40} [{bar:24}] {pos}/{len} {wide_msg}",
                        State::Done => "{prefix:40} done: {wide_msg}",
                        State::Failed => "{prefix:40} FAILED: {wide_msg}",
                        State::Waiting => "{prefix:40} {spinner} {wide_msg}",
                    };
                    if let Ok(style) = ProgressStyle::with_template(template) {
                        bar.set_style(style.progress_chars("=> "));
                    }
                    if let State::Counting { done, total } = line.state {
                        bar.set_length(total);
                        bar.set_position(done);
                    }
                    if line.state == State::Waiting {
                        bar.tick();
                    }
                    bar.set_message(line.message.clone());
                }
            }
            None => {
                for line in lines {
                    let text = match line.state {
                        State::Counting { done, total } => {
                            format!("{} [{done}/{total}] {}", line.key, line.message)
                        }
                        State::Done => format!("{} done: {}", line.key, line.message),
                        State::Failed => format!("{} FAILED: {}", line.key, line.message),
                        State::Waiting => format!("{} {}", line.key, line.message),
                    };
                    if self.printed.get(&line.key) != Some(&text) {
                        eprintln!("{text}");
                        self.printed.insert(line.key.clone(), text);
                    }
                }
            }
        }
    }

    /// Print a message above the bars.
    pub fn println(&self, text: &str) {
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(text);
            }
            None => eprintln!("{text}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aigc_crds::condition::{Condition, ConditionStatus};
    use aigc_crds::training_job::{Progress, TrainingJobStatus};

    fn job(status: TrainingJobStatus) -> TrainingJob {
        let mut job: TrainingJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "aigc.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "tj", "namespace": "default"},
            "spec": {
                "datasetRef": {"name": "d"}, "architecture": "mlp",
                "output": {"modelName": "m", "version": "1.0.0"},
                "hyperparameters": {"epochs": 30},
            }
        }))
        .unwrap();
        job.status = Some(status);
        job
    }

    #[test]
    fn a_running_job_counts_steps_and_shows_loss() {
        let snapshot = Snapshot {
            training_jobs: vec![job(TrainingJobStatus {
                phase: Some(TrainingJobPhase::Running),
                progress: Some(Progress {
                    epoch: Some(3),
                    step: Some(40),
                    total_steps: Some(450),
                    loss: Some(0.25),
                    eta: Some("1m2s".into()),
                    ..Progress::default()
                }),
                ..TrainingJobStatus::default()
            })],
            ..Snapshot::default()
        };
        let lines = lines(&snapshot);
        assert_eq!(lines[0].key, "TrainingJob default/tj");
        assert_eq!(
            lines[0].state,
            State::Counting {
                done: 40,
                total: 450
            }
        );
        assert_eq!(
            lines[0].message,
            "training: epoch 3/30, loss 0.2500, eta 1m2s"
        );
        assert!(!all_done(&lines));
    }

    #[test]
    fn a_waiting_job_shows_why_from_its_ready_condition() {
        let condition = Condition::new(
            "Ready",
            ConditionStatus::False,
            "DatasetMissing",
            "Dataset d not found",
            None,
            chrono::Utc::now(),
        );
        let snapshot = Snapshot {
            training_jobs: vec![job(TrainingJobStatus {
                phase: Some(TrainingJobPhase::Pending),
                conditions: vec![condition],
                ..TrainingJobStatus::default()
            })],
            ..Snapshot::default()
        };
        assert_eq!(lines(&snapshot)[0].message, "Dataset d not found");
    }

    #[test]
    fn all_done_needs_every_line_done() {
        let done = Line {
            key: "a".into(),
            state: State::Done,
            message: String::new(),
        };
        assert!(all_done(std::slice::from_ref(&done)));
        assert!(!all_done(&[]));
        let waiting = Line {
            state: State::Waiting,
            ..done.clone()
        };
        assert!(!all_done(&[done, waiting]));
    }

    #[test]
    fn bytes_are_human_readable() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
