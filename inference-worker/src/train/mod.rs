//! `aigc-worker train`: trains a model on a prepared dataset with candle, checkpoints and
//! resumes, reports progress, and publishes the model with its manifest.
//!
//! Determinism: with the same seed, settings, data and thread count, CPU training is bitwise
//! reproducible. All randomness (initialisation, the train/validation split, batch order)
//! comes from seeded [`Rng`]s whose state is saved in checkpoints, and the optimizer is our
//! own [`adamw::AdamW`] whose moments are saved too. So `--resume` after a crash or SIGTERM
//! finishes with the same weights as an uninterrupted run.
//!
//! Output (published all at once, see [`crate::objects`]): `model.safetensors`,
//! `config.json` ([`crate::models::ModelConfig`]), `metrics.json` (per-epoch history),
//! `loss.svg`, and `manifest.json`. Progress: see [`progress`].

pub mod adamw;
pub mod char_cpu;
pub mod checkpoint;
mod data;
mod finetune;
pub mod plot;
pub mod progress;
mod tabular;
mod text;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::device::{self, DevicePreference};
use crate::models::mlp::Task;
use crate::models::text_classifier;
use crate::models::{
    ArchitectureConfig, CONFIG_FORMAT, CONFIG_KEY, ModelConfig, Params, WEIGHTS_KEY,
};
use crate::rng::Rng;
use crate::{Result, WorkerError, objects};
use adamw::{AdamW, AdamWConfig};
use checkpoint::{CheckpointMeta, TrainState};
use data::PreparedDataset;
use progress::{Phase, ProgressServer, Status, StatusWriter};

/// Model architectures `train` can produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    /// Multilayer perceptron for tabular classification or regression.
    Mlp,
    /// Small decoder-only character-level transformer for text.
    CharTransformer,
}

/// Command-line arguments of `aigc-worker train`.
#[derive(Clone, Debug, clap::Args, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrainArgs {
    /// Prepared dataset (output of `prepare`): `file:///abs/dir` or a path.
    #[arg(long)]
    pub dataset: String,
    /// Model architecture.
    #[arg(long, value_enum)]
    pub architecture: Architecture,
    /// Directory to publish the trained model to; must not hold a published version.
    #[arg(long)]
    pub out: String,
    /// Fine-tune: a sentence-embedding model (all-MiniLM-L6-v2 directory, as a path, file://
    /// or s3:// URI) whose frozen embeddings of the text column feed the MLP head. The output
    /// is a self-contained text classifier that `serve` answers at /v1/predict (text in) and
    /// /v1/embeddings.
    #[arg(long)]
    pub base_model: Option<String>,
    /// The text column embedded with --base-model; defaults to the first string column other
    /// than the target.
    #[arg(long, requires = "base_model")]
    pub text_column: Option<String>,
    /// Column to predict (mlp); defaults to the last schema column.
    #[arg(long)]
    pub target: Option<String>,
    /// Classification or regression (mlp); inferred from the target column when omitted.
    #[arg(long, value_enum)]
    pub task: Option<Task>,
    /// Passes over the training split.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub epochs: u64,
    /// Examples per optimizer step.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// AdamW decoupled weight decay.
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Seed of every random choice (initialisation, split, batch order).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write a checkpoint every N optimizer steps (0: only at SIGTERM).
    #[arg(long, default_value_t = 100)]
    #[serde(skip)]
    pub checkpoint_every: u64,
    /// Where checkpoints go; defaults to `<out>.checkpoints` next to the output.
    #[arg(long)]
    #[serde(skip)]
    pub checkpoint_dir: Option<String>,
    /// Continue from the latest checkpoint, if there is one.
    #[arg(long)]
    #[serde(skip)]
    pub resume: bool,
    /// Share of the data held out for validation.
    #[arg(long, default_value_t = 0.2)]
    pub validation_fraction: f64,
    /// Hidden layer widths of the MLP, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "64,32")]
    pub hidden: Vec<usize>,
    /// Residual width of the char-transformer.
    #[arg(long, default_value_t = 64)]
    pub d_model: usize,
    /// Blocks of the char-transformer.
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// Attention heads of the char-transformer.
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Context length of the char-transformer, in characters.
    #[arg(long, default_value_t = 64)]
    pub block_size: usize,
    /// JSON status file, rewritten atomically while training (see `progress`).
    #[arg(long)]
    #[serde(skip)]
    pub status_file: Option<PathBuf>,
    /// Where the final JSON result goes (Kubernetes' termination message).
    #[arg(long, default_value = progress::DEFAULT_TERMINATION_MESSAGE_PATH)]
    #[serde(skip)]
    pub termination_message_path: PathBuf,
    /// Serve `GET /progress` (the status JSON) on this address while training, e.g.
    /// `$(POD_IP):8081`.
    #[arg(long)]
    #[serde(skip)]
    pub progress_listen: Option<std::net::SocketAddr>,
}

/// The settings training runs with (the parsed command line).
pub type TrainOptions = TrainArgs;

/// Loss and metric on the validation split.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    /// Mean loss.
    pub loss: f64,
    /// Accuracy, RMSE (target units) or perplexity.
    pub metric: f64,
}

/// One completed epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Optimizer steps completed at its end.
    pub step: u64,
    /// Mean training loss over its batches.
    pub train_loss: f64,
    /// Validation loss after it.
    pub val_loss: f64,
    /// Validation metric after it.
    pub metric: f64,
}

enum Objective {
    Tabular(tabular::Tabular),
    Text(text::Text),
}

impl Objective {
    fn params(&self) -> &Params {
        match self {
            Objective::Tabular(t) => t.mlp.params(),
            Objective::Text(t) => t.model.params(),
        }
    }
    fn examples(&self) -> usize {
        match self {
            Objective::Tabular(t) => t.examples(),
            Objective::Text(t) => t.examples(),
        }
    }
    /// One optimizer step on the examples at `indices`; returns the batch's loss. A loss
    /// that is not finite stops training before the parameters change.
    fn train_step(&self, indices: &[usize], adam: &mut AdamW, step: u64) -> Result<f64> {
        let check = |value: f64| {
            if value.is_finite() {
                Ok(value)
            } else {
                Err(WorkerError::InvalidData(format!(
                    "the training loss became {value} at step {step}; lower --lr or check the data"
                )))
            }
        };
        if let Objective::Text(t) = self
            && let Some((value, grads)) = t.cpu_loss_and_grads(indices)?
        {
            check(value as f64)?;
            adam.step_with(t.model.params(), |i, _| grads.get(i).cloned())?;
            return Ok(value as f64);
        }
        let loss = match self {
            Objective::Tabular(t) => t.batch_loss(indices)?,
            Objective::Text(t) => t.batch_loss(indices)?,
        };
        let value = check(loss.to_scalar::<f32>()? as f64)?;
        adam.step(self.params(), &loss.backward()?)?;
        Ok(value)
    }
    fn evaluate(&self) -> Result<Evaluation> {
        match self {
            Objective::Tabular(t) => t.evaluate(),
            Objective::Text(t) => t.evaluate(),
        }
    }
    fn metric_name(&self) -> &'static str {
        match self {
            Objective::Tabular(t) => t.metric_name(),
            Objective::Text(_) => "perplexity",
        }
    }
    fn baseline(&self) -> Option<f64> {
        match self {
            Objective::Tabular(_) => None,
            Objective::Text(t) => Some(t.baseline()),
        }
    }
    fn architecture_config(&self) -> ArchitectureConfig {
        match self {
            Objective::Tabular(t) => ArchitectureConfig::Mlp(t.mlp.config().clone()),
            Objective::Text(t) => ArchitectureConfig::CharTransformer(t.model.config().clone()),
        }
    }
}

/// Run `aigc-worker train`: exit 0 on success, 143 when preempted by SIGTERM (after a
/// checkpoint), 1 on failure. The final status is printed on stdout and written to the
/// termination-message path.
pub fn run_command(args: TrainArgs) -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&stop)) {
        tracing::warn!(error = %e, "could not install the SIGTERM handler; preemption will not checkpoint");
    }
    let status = train(&args, &stop);
    match status.phase {
        Phase::Succeeded => ExitCode::SUCCESS,
        Phase::Preempted => ExitCode::from(143),
        _ => ExitCode::FAILURE,
    }
}

/// Train as `options` say; `stop` set (by SIGTERM) checkpoints and stops after the current
/// step. Returns the final status, also written to the status file, printed on stdout and
/// written to the termination message. With `--progress-listen` the status is served at
/// `GET /progress` while training runs.
pub fn train(options: &TrainOptions, stop: &AtomicBool) -> Status {
    match options
        .progress_listen
        .map(ProgressServer::start)
        .transpose()
    {
        Ok(server) => train_with_progress(options, stop, server.as_ref()),
        Err(e) => {
            let mut status = initial_status(options, "unknown".into());
            status.phase = Phase::Failed;
            status.error = Some(format!("--progress-listen: {e}"));
            progress::emit_final(&options.termination_message_path, &status);
            status
        }
    }
}

/// [`train`] reporting live progress through `server` (already started) instead of
/// `options.progress_listen`.
pub fn train_with_progress(
    options: &TrainOptions,
    stop: &AtomicBool,
    server: Option<&ProgressServer>,
) -> Status {
    let device = device::select(DevicePreference::Auto);
    let mut status = initial_status(
        options,
        device
            .as_ref()
            .map_or_else(|_| "unknown".into(), device::name),
    );
    let mut writer = StatusWriter::new(options.status_file.clone(), server);
    writer.update(&status, true);
    let result = device.and_then(|device| run(options, &device, stop, &mut status, &mut writer));
    match result {
        Ok(()) => status.phase = Phase::Succeeded,
        Err(WorkerError::Preempted { step }) => {
            status.phase = Phase::Preempted;
            status.error = Some(WorkerError::Preempted { step }.to_string());
        }
        Err(e) => {
            status.phase = Phase::Failed;
            status.error = Some(e.to_string());
        }
    }
    match status.phase {
        Phase::Succeeded => tracing::info!(model = ?status.model, "training finished"),
        _ => tracing::error!(error = ?status.error, "training stopped; no model was published"),
    }
    writer.update(&status, true);
    progress::emit_final(&options.termination_message_path, &status);
    status
}

fn initial_status(options: &TrainOptions, device: String) -> Status {
    Status {
        phase: Phase::Starting,
        device,
        architecture: serde_json::to_value(options.architecture)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        epoch: 0,
        epochs: options.epochs as usize,
        step: 0,
        total_steps: 0,
        progress: 0.0,
        train_loss: None,
        val_loss: None,
        metric_name: String::new(),
        metric: None,
        baseline_val_loss: None,
        resumed_from_step: None,
        checkpoint_step: None,
        model: None,
        manifest_digest: None,
        error: None,
    }
}

fn check_options(o: &TrainOptions) -> Result<()> {
    if !(o.lr.is_finite() && o.lr > 0.0) {
        return Err(WorkerError::InvalidArgument(format!(
            "--lr {} must be a positive number",
            o.lr
        )));
    }
    if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
        return Err(WorkerError::InvalidArgument(format!(
            "--weight-decay {} must be 0 or more",
            o.weight_decay
        )));
    }
    if !(o.validation_fraction > 0.0 && o.validation_fraction < 1.0) {
        return Err(WorkerError::InvalidArgument(format!(
            "--validation-fraction {} must be between 0 and 1 (exclusive)",
            o.validation_fraction
        )));
    }
    if o.architecture == Architecture::CharTransformer && o.base_model.is_some() {
        return Err(WorkerError::InvalidArgument(
            "--base-model fine-tunes a classification head: use --architecture mlp".into(),
        ));
    }
    if o.architecture == Architecture::CharTransformer && (o.target.is_some() || o.task.is_some()) {
        return Err(WorkerError::InvalidArgument(
            "--target and --task apply to the mlp architecture only".into(),
        ));
    }
    Ok(())
}

/// The checkpoint directory: `--checkpoint-dir`, or `<out>.checkpoints`. An `s3://` one is
/// a local directory in the cache mirrored to S3 after every checkpoint.
pub fn checkpoint_dir(options: &TrainOptions) -> Result<objects::Mirror> {
    match &options.checkpoint_dir {
        Some(uri) => objects::Mirror::new(uri),
        None => objects::Mirror::new(&format!(
            "{}.checkpoints",
            options.out.trim_end_matches('/')
        )),
    }
}

fn run(
    options: &TrainOptions,
    device: &Device,
    stop: &AtomicBool,
    status: &mut Status,
    writer: &mut StatusWriter,
) -> Result<()> {
    check_options(options)?;
    let out = objects::Output::parse(&options.out)?;
    out.check_unpublished()?;
    let ckpt_mirror = checkpoint_dir(options)?;
    let ckpt_dir = ckpt_mirror.local().to_path_buf();
    let dataset = PreparedDataset::open(&options.dataset)?;

    // Independent streams, so that changing one use of randomness does not shift the others.
    let mut init_rng = Rng::new(options.seed);
    let mut split_rng = Rng::new(options.seed.wrapping_add(1));
    let mut fine_tune = None;
    let objective = match (options.architecture, &options.base_model) {
        (Architecture::Mlp, Some(base_model)) => {
            let table = finetune::embedded_table(&dataset, options, base_model, device)?;
            let objective = tabular::Tabular::from_table(
                (table.header, table.rows),
                &table.schema,
                options,
                &mut split_rng,
                &mut init_rng,
                device,
            )?;
            status.architecture = "text-classifier".into();
            fine_tune = Some(FineTune {
                base_model: base_model.clone(),
                base_dir: table.base_dir,
                text_column: table.text_column,
            });
            Objective::Tabular(objective)
        }
        (Architecture::Mlp, None) => Objective::Tabular(tabular::Tabular::build(
            &dataset,
            options,
            &mut split_rng,
            &mut init_rng,
            device,
        )?),
        (Architecture::CharTransformer, _) => {
            Objective::Text(text::Text::build(&dataset, options, &mut init_rng, device)?)
        }
    };
    status.metric_name = objective.metric_name().to_owned();
    status.baseline_val_loss = objective.baseline();
    let params = objective.params();
    let mut adam = AdamW::new(
        params,
        AdamWConfig {
            lr: options.lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: options.weight_decay,
        },
    )?;
    let batch = options.batch_size as usize;
    let n = objective.examples();
    let steps_per_epoch = n.div_ceil(batch);
    status.total_steps = steps_per_epoch as u64 * options.epochs;

    let mut fingerprint = serde_json::to_value(options).expect("options serialise");
    fingerprint["datasetDigest"] = dataset.digest().into();
    let mut state = TrainState {
        step: 0,
        epoch: 0,
        step_in_epoch: 0,
        epoch_rng: Rng::new(options.seed.wrapping_add(2)).state(),
        loss_sum: 0.0,
        history: Vec::new(),
    };
    if options.resume {
        ckpt_mirror.pull()?;
        match checkpoint::load_latest(&ckpt_dir, device)? {
            Some((meta, tensors)) => {
                let diffs = checkpoint::fingerprint_differences(&meta.fingerprint, &fingerprint);
                if !diffs.is_empty() {
                    return Err(WorkerError::InvalidArgument(format!(
                        "the checkpoint in {} was made with other settings; resume with the same ones or use another --checkpoint-dir ({})",
                        ckpt_dir.display(),
                        diffs.join("; ")
                    )));
                }
                checkpoint::restore(params, &mut adam, &tensors, meta.state.step)?;
                state = meta.state;
                status.resumed_from_step = Some(state.step);
                status.checkpoint_step = Some(state.step);
                tracing::info!(step = state.step, dir = %ckpt_dir.display(), "resumed from checkpoint");
            }
            None => {
                tracing::info!(dir = %ckpt_dir.display(), "no checkpoint to resume from; starting fresh")
            }
        }
    }
    status.phase = Phase::Running;
    refresh(status, &state, steps_per_epoch);
    writer.update(status, true);

    let save = |state: &TrainState, adam: &AdamW, status: &mut Status| -> Result<()> {
        let meta = CheckpointMeta {
            fingerprint: fingerprint.clone(),
            state: state.clone(),
        };
        checkpoint::save(&ckpt_dir, params, adam, &meta)?;
        ckpt_mirror.push()?;
        status.checkpoint_step = Some(state.step);
        Ok(())
    };

    while state.epoch < options.epochs as usize {
        let mut rng = Rng::from_state(state.epoch_rng);
        let mut order: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut order);
        for s in state.step_in_epoch..steps_per_epoch {
            let indices = &order[s * batch..((s + 1) * batch).min(n)];
            let value = objective.train_step(indices, &mut adam, state.step + 1)?;
            state.step += 1;
            state.step_in_epoch = s + 1;
            state.loss_sum += value;
            let checkpoint_due =
                options.checkpoint_every > 0 && state.step.is_multiple_of(options.checkpoint_every);
            let stopping = stop.load(Ordering::SeqCst);
            if checkpoint_due || stopping {
                save(&state, &adam, status)?;
            }
            refresh(status, &state, steps_per_epoch);
            if stopping {
                return Err(WorkerError::Preempted { step: state.step });
            }
            writer.update(status, checkpoint_due);
        }
        let eval = objective.evaluate()?;
        let record = EpochRecord {
            epoch: state.epoch + 1,
            step: state.step,
            train_loss: state.loss_sum / steps_per_epoch as f64,
            val_loss: eval.loss,
            metric: eval.metric,
        };
        tracing::info!(
            epoch = record.epoch,
            step = record.step,
            train_loss = record.train_loss,
            val_loss = record.val_loss,
            metric = record.metric,
            metric_name = objective.metric_name(),
            "epoch finished"
        );
        state.history.push(record);
        state.epoch += 1;
        state.step_in_epoch = 0;
        state.loss_sum = 0.0;
        state.epoch_rng = rng.state();
        refresh(status, &state, steps_per_epoch);
        writer.update(status, true);
    }

    let staging = out.staging_dir()?;
    let published = publish_model(
        &objective,
        fine_tune.as_ref(),
        options,
        status,
        &state.history,
        &staging,
        &out,
    );
    if published.is_err() {
        // Best effort: the staging directory is hidden and never read.
        let _ = std::fs::remove_dir_all(&staging);
    }
    published
}

fn refresh(status: &mut Status, state: &TrainState, steps_per_epoch: usize) {
    status.step = state.step;
    status.epoch = state.epoch;
    status.progress = if status.total_steps == 0 {
        0.0
    } else {
        state.step as f64 / status.total_steps as f64
    };
    if let Some(last) = state.history.last() {
        status.train_loss = Some(last.train_loss);
        status.val_loss = Some(last.val_loss);
        status.metric = Some(last.metric);
    } else if state.step_in_epoch > 0 {
        status.train_loss = Some(state.loss_sum / state.step_in_epoch.min(steps_per_epoch) as f64);
    }
}

/// What a fine-tuned model adds to its head.
struct FineTune {
    base_model: String,
    base_dir: PathBuf,
    text_column: String,
}

fn publish_model(
    objective: &Objective,
    fine_tune: Option<&FineTune>,
    options: &TrainOptions,
    status: &mut Status,
    history: &[EpochRecord],
    staging: &Path,
    out: &objects::Output,
) -> Result<()> {
    objective.params().save(&staging.join(WEIGHTS_KEY))?;
    let training = serde_json::json!({
        "options": options,
        "device": status.device,
        "steps": status.step,
        "metricName": status.metric_name,
        "final": history.last(),
        "baselineValLoss": status.baseline_val_loss,
    });
    let mut keys = vec![WEIGHTS_KEY.to_string(), CONFIG_KEY.into()];
    let model = match (objective.architecture_config(), fine_tune) {
        (ArchitectureConfig::Mlp(head), Some(fine_tune)) => {
            keys.extend(finetune::copy_base(
                &fine_tune.base_dir,
                staging,
                text_classifier::BASE_DIR,
            )?);
            ArchitectureConfig::TextClassifier(text_classifier::TextClassifierConfig {
                text_column: fine_tune.text_column.clone(),
                base_model: fine_tune.base_model.clone(),
                head,
            })
        }
        (config, _) => config,
    };
    let config = ModelConfig {
        format: CONFIG_FORMAT,
        model,
        training,
    };
    let write = |key: &str, bytes: Vec<u8>| {
        std::fs::write(staging.join(key), bytes)
            .map_err(|e| WorkerError::io(format!("writing {key}"), e))
    };
    write(
        CONFIG_KEY,
        serde_json::to_vec_pretty(&config).expect("config serialises"),
    )?;
    write(
        "metrics.json",
        serde_json::to_vec_pretty(history).expect("history serialises"),
    )?;
    let title = format!("{} loss", status.architecture);
    plot::loss_curve_svg(history, &title, &staging.join("loss.svg"))?;
    keys.extend(["metrics.json", "loss.svg"].map(String::from));
    let manifest = objects::write_manifest(staging, &keys)?;
    out.publish(staging, &manifest)?;
    status.model = Some(out.name());
    status.manifest_digest = Some(manifest.digest());
    Ok(())
}
