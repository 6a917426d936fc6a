//! Throughput of the served models, outside the HTTP layer; compared against llama.cpp
//! and sentence-transformers by `scripts/bench-serve.py` (not part of CI).
//!
//! ```text
//! cargo run --release -p aigc-worker --example bench_models -- llama MODEL.gguf THREADS
//! cargo run --release -p aigc-worker --example bench_models -- bert MODEL_DIR THREADS
//! ```
//! Prints one JSON object: tokens/s (llama: prompt and decode, per wall-clock second and per
//! CPU second of the whole process, which is steadier on a loaded machine) or sentences/s
//! (bert), the greedy token ids (llama), the kernels used, and the peak RSS of the process;
//! with `AIGC_BENCH_VECTORS=1`, every bert vector too.

use std::path::PathBuf;
use std::time::Instant;

use aigc_worker::models::llama::QuantizedLlama;
use aigc_worker::models::{self, Capability, TextGenerator};
use aigc_worker::sampling::{Sampler, SamplingParams};
use serde_json::json;

/// The prompt whose processing speed is measured (about 100 tokens).
const PROMPT: &str = "Kubernetes is an open-source system for automating deployment, scaling, \
and management of containerized applications. It groups containers that make up an \
application into logical units for easy management and discovery. Kubernetes builds upon \
fifteen years of experience of running production workloads, combined with best-of-breed \
ideas and practices from the community. Explain in simple words what a pod is.";
const DECODE_TOKENS: usize = 128;
const SENTENCES: usize = 256;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, path, threads] = args.as_slice() else {
        anyhow::bail!("usage: bench_models (llama|bert) PATH THREADS");
    };
    // SAFETY: set before any thread starts; candle's CPU kernels read it.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", threads) };
    let path = PathBuf::from(path);
    let report = match kind.as_str() {
        "llama" => {
            // Loaded as the concrete type, to report the kernels it picked.
            let mut model = QuantizedLlama::load(&path, &candle_core::Device::Cpu)?;
            let prompt = model.tokenizer().encode(PROMPT)?;
            // One warm-up pass so page faults and allocations are not timed.
            model.next_logits(&prompt, 0)?;
            model.reset();
            let (started, cpu) = (Instant::now(), cpu_seconds());
            let mut logits = model.next_logits(&prompt, 0)?;
            let prompt_seconds = started.elapsed().as_secs_f64();
            let prompt_cpu = cpu_seconds() - cpu;
            let mut sampler = Sampler::new(SamplingParams {
                temperature: 0.0,
                ..SamplingParams::default()
            });
            let mut generated = Vec::new();
            let (started, cpu) = (Instant::now(), cpu_seconds());
            for step in 0..DECODE_TOKENS {
                let token = sampler.next_token(&logits);
                generated.push(token);
                logits = model.next_logits(&[token], prompt.len() + step)?;
            }
            let decode_seconds = started.elapsed().as_secs_f64();
            let decode_cpu = cpu_seconds() - cpu;
            json!({
                "engine": "aigc-worker",
                "kernels": model.kernels(),
                "prompt_tokens": prompt.len(),
                "prompt_tokens_per_s": prompt.len() as f64 / prompt_seconds,
                "prompt_tokens_per_cpu_s": prompt.len() as f64 / prompt_cpu,
                "decode_tokens": DECODE_TOKENS,
                "decode_tokens_per_s": DECODE_TOKENS as f64 / decode_seconds,
                "decode_tokens_per_cpu_s": DECODE_TOKENS as f64 / decode_cpu,
                "greedy_ids": generated,
                "peak_rss_mib": peak_rss_mib(),
            })
        }
        "bert" => {
            let loaded = models::load(&path, &candle_core::Device::Cpu)?;
            let Capability::Embedding(model) = loaded.capability else {
                anyhow::bail!("{} is not an embedding model", path.display());
            };
            let sentences = bench_sentences();
            let tokenize = |sentences: &[String]| {
                sentences
                    .iter()
                    .map(|s| model.tokenize(s))
                    .collect::<Result<Vec<_>, _>>()
            };
            model.embed(&tokenize(&sentences[..32])?)?;
            // Tokenizing is timed too, as sentence-transformers' `encode` includes it.
            let started = Instant::now();
            let vectors = model.embed(&tokenize(&sentences)?)?;
            let seconds = started.elapsed().as_secs_f64();
            let mut report = json!({
                "engine": "aigc-worker",
                "sentences": vectors.len(),
                "sentences_per_s": vectors.len() as f64 / seconds,
                "first_vector_head": &vectors[0][..8],
                "peak_rss_mib": peak_rss_mib(),
            });
            if std::env::var_os("AIGC_BENCH_VECTORS").is_some() {
                report["vectors"] = json!(vectors);
            }
            report
        }
        other => anyhow::bail!("unknown model kind `{other}`: llama or bert"),
    };
    println!("{report}");
    Ok(())
}

/// 256 sentences of about 12 words, the same ones `scripts/bench-serve.py` feeds to
/// sentence-transformers.
fn bench_sentences() -> Vec<String> {
    const WORDS: &[&str] = &[
        "the",
        "cluster",
        "schedules",
        "training",
        "jobs",
        "onto",
        "nodes",
        "with",
        "free",
        "GPUs",
        "while",
        "datasets",
        "move",
        "between",
        "hot",
        "and",
        "cold",
        "storage",
        "tiers",
        "every",
        "night",
        "model",
        "serves",
        "requests",
        "quickly",
    ];
    (0..SENTENCES)
        .map(|i| {
            let length = 9 + i % 7;
            (0..length)
                .map(|j| WORDS[(i * 7 + j * 3 + j * j) % WORDS.len()])
                .collect::<Vec<_>>()
                .join(" ")
                + "."
        })
        .collect()
}

/// CPU time of all the process's threads so far (`/proc/self/task/*/schedstat`, in ns).
fn cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    let nanos: u64 = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    nanos as f64 / 1e9
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}
