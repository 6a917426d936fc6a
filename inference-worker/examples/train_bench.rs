//! Training throughput of the worker's architectures, for comparison with PyTorch
//! (`benches/train_torch.py` builds the same models). Not run by `cargo test`.
//!
//! `RAYON_NUM_THREADS=T cargo run --release -p aigc-worker --example train_bench -- STEPS`
//! prints one JSON line per architecture: steps per second and peak RSS (the char-transformer
//! both through candle's autograd and through the hand-written step `train` uses on the CPU).
//! The full side-by-side run is `scripts/bench-train.sh`.

use std::time::Instant;

use aigc_worker::models::mlp::{Feature, Task};
use aigc_worker::models::{CharTransformer, CharTransformerConfig, Mlp, MlpConfig};
use aigc_worker::rng::Rng;
use aigc_worker::train::adamw::{AdamW, AdamWConfig};
use aigc_worker::train::char_cpu::CharTrainer;
use candle_core::{Device, Tensor};

const BATCH: usize = 32;

fn adamw_config() -> AdamWConfig {
    AdamWConfig {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    }
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn report(name: &str, steps: usize, seconds: f64) {
    println!(
        "{}",
        serde_json::json!({
            "framework": "candle",
            "model": name,
            "batch": BATCH,
            "threads": candle_core::utils::get_num_threads(),
            "steps": steps,
            "stepsPerSecond": steps as f64 / seconds,
            "peakRssMiB": peak_rss_mib(),
        })
    );
}

/// Runs `step` `warmup` times, then times `steps` runs and reports them as `name`.
fn timed(
    name: &str,
    warmup: usize,
    steps: usize,
    mut step: impl FnMut() -> aigc_worker::Result<()>,
) -> aigc_worker::Result<()> {
    for _ in 0..warmup {
        step()?;
    }
    let start = Instant::now();
    for _ in 0..steps {
        step()?;
    }
    report(name, steps, start.elapsed().as_secs_f64());
    Ok(())
}

fn main() -> aigc_worker::Result<()> {
    let steps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let device = Device::Cpu;
    let mut rng = Rng::new(0);

    // MLP: 30 features -> 64 -> 32 -> 2 classes (the breast-cancer shape).
    let config = MlpConfig {
        task: Task::Classification,
        features: (0..30)
            .map(|i| Feature {
                name: format!("f{i}"),
                mean: 0.0,
                std: 1.0,
            })
            .collect(),
        target: "y".into(),
        labels: vec!["0".into(), "1".into()],
        target_mean: None,
        target_std: None,
        hidden: vec![64, 32],
    };
    let mlp = Mlp::new(config, &mut rng, &device)?;
    let mut adam = AdamW::new(mlp.params(), adamw_config())?;
    let x: Vec<f32> = (0..BATCH * 30).map(|_| rng.normal(1.0)).collect();
    let x = Tensor::from_vec(x, (BATCH, 30), &device)?;
    let y = Tensor::from_vec(
        (0..BATCH as u32).map(|i| i % 2).collect::<Vec<_>>(),
        BATCH,
        &device,
    )?;
    let step = || -> aigc_worker::Result<()> {
        let loss = candle_nn::loss::cross_entropy(&mlp.forward(&x)?, &y)?;
        adam.step(mlp.params(), &loss.backward()?)
    };
    timed("mlp-30-64-32-2", 10, steps * 10, step)?;

    // Char transformer: vocab 64, d_model 64, 2 layers, 4 heads, context 64.
    let config = CharTransformerConfig {
        vocab: (0..64u8).map(|i| (b' ' + i) as char).collect(),
        d_model: 64,
        layers: 2,
        heads: 4,
        block_size: 64,
    };
    let model = CharTransformer::new(config, &mut rng, &device)?;
    let mut adam = AdamW::new(model.params(), adamw_config())?;
    let ids: Vec<u32> = (0..BATCH * 65).map(|_| rng.below(64) as u32).collect();
    let all = Tensor::from_vec(ids, (BATCH, 65), &device)?;
    let inputs = all.narrow(1, 0, 64)?.contiguous()?;
    let targets = all.narrow(1, 1, 64)?.contiguous()?.flatten_all()?;
    // The same step through candle's autograd, for comparison (skipped when
    // AIGC_BENCH_SKIP_AUTOGRAD is set, e.g. to profile the hand-written step alone).
    if std::env::var_os("AIGC_BENCH_SKIP_AUTOGRAD").is_none() {
        let autograd_step = || -> aigc_worker::Result<()> {
            let logits = model.forward(&inputs)?.reshape((BATCH * 64, 64))?;
            let loss = candle_nn::loss::cross_entropy(&logits, &targets)?;
            adam.step(model.params(), &loss.backward()?)
        };
        let name = "char-transformer-d64-l2-h4-t64 (candle autograd)";
        timed(name, 3, steps, autograd_step)?;
    }

    // What `aigc-worker train` runs on the CPU: the hand-written step.
    let inputs = inputs.flatten_all()?.to_vec1::<u32>()?;
    let targets = targets.to_vec1::<u32>()?;
    let mut trainer = CharTrainer::new(&model)?;
    let step = || -> aigc_worker::Result<()> {
        let (_, grads) = trainer.loss_and_grads(&model, &inputs, &targets, BATCH)?;
        adam.step_with(model.params(), |i, _| grads.get(i).cloned())
    };
    timed("char-transformer-d64-l2-h4-t64", 3, steps, step)
}
