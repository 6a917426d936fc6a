//! Throughput of every kernel this CPU has on SmolLM2-135M's matrix shapes (not in CI):
//!
//! ```text
//! cargo run --release -p aigc-quant --example bench_kernels [ROWS_OF_ACTIVATIONS...]
//! ```
//! For each instruction set and activation row count (default 1 and 78: decoding and the
//! benchmark prompt), prints the effective multiply-adds per second over one layer's
//! matrices (Q4_1) and the output projection (Q8_0), per second of CPU time of the calling
//! thread (steadier than wall-clock time on a loaded machine; run it with
//! `RAYON_NUM_THREADS=1`, which keeps the work on that thread). The instruction sets
//! alternate, round after round; the best round counts.

use aigc_quant::{Activations, Isa, QMatrix, WeightFormat};

fn matrix(format: WeightFormat, rows: usize, cols: usize, seed: u64) -> QMatrix {
    // Arbitrary bytes make valid blocks as long as the f16 scales are finite and small.
    let mut state = seed;
    let bytes = rows * cols / 32 * format.block_bytes();
    let mut data: Vec<u8> = (0..bytes)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect();
    for block in data.chunks_exact_mut(format.block_bytes()) {
        block[0..2].copy_from_slice(&0x2000u16.to_le_bytes());
        if format == WeightFormat::Q4_1 {
            block[2..4].copy_from_slice(&0xa000u16.to_le_bytes());
        }
    }
    QMatrix::new(format, rows, cols, data).expect("valid shape")
}

/// CPU time of the calling thread, in seconds (`/proc/thread-self/schedstat`).
fn cpu_now() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").expect("Linux schedstat");
    let nanos: u64 = stat
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("schedstat starts with the run time in ns");
    nanos as f64 / 1e9
}

fn main() {
    let ns: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("activation row counts are numbers"))
        .collect();
    let ns = if ns.is_empty() { vec![1, 78] } else { ns };
    let (e, kv, ff, vocab) = (576, 192, 1536, 49152);
    // AIGC_BENCH_LAYERS=30 multiplies the whole model's layers in turn, as decoding does
    // (weights streamed from memory); the default, one layer, keeps them in cache.
    let layers: u64 = std::env::var("AIGC_BENCH_LAYERS")
        .map(|v| v.parse().expect("AIGC_BENCH_LAYERS is a number"))
        .unwrap_or(1);
    let layer: Vec<QMatrix> = (0..layers)
        .flat_map(|l| {
            [
                matrix(WeightFormat::Q4_1, e, e, 10 * l + 1),
                matrix(WeightFormat::Q4_1, kv, e, 10 * l + 2),
                matrix(WeightFormat::Q4_1, kv, e, 10 * l + 3),
                matrix(WeightFormat::Q4_1, e, e, 10 * l + 4),
                matrix(WeightFormat::Q4_1, ff, e, 10 * l + 5),
                matrix(WeightFormat::Q4_1, ff, e, 10 * l + 6),
                matrix(WeightFormat::Q4_1, e, ff, 10 * l + 7),
            ]
        })
        .collect();
    let output = matrix(WeightFormat::Q8_0, vocab, e, 8);
    println!(
        "threads: {}, layers: {layers}",
        rayon::current_num_threads()
    );
    for n in ns {
        let inputs = |cols: usize| {
            let x: Vec<f32> = (0..n * cols)
                .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 50.0)
                .collect();
            let mut a = Activations::default();
            a.quantize(&x, cols).expect("shape");
            a
        };
        let (narrow, wide) = (inputs(e), inputs(ff));
        let mut best = vec![(f64::MAX, f64::MAX); Isa::available().len()];
        // Enough repetitions for 0.1 s of the fast kernels (schedstat's resolution is coarse).
        let reps = (1_000_000_000 / (3_500_000 * n * layers as usize)).max(1);
        for _round in 0..3 {
            for (i, isa) in Isa::available().into_iter().enumerate() {
                let started = cpu_now();
                for _ in 0..reps {
                    for m in &layer {
                        let x = if m.cols() == ff { &wide } else { &narrow };
                        let mut out = vec![0f32; n * m.rows()];
                        m.matmul_quantized(x, &mut out, isa).expect("shapes");
                    }
                }
                let layer_s = (cpu_now() - started) / reps as f64;
                let started = cpu_now();
                for _ in 0..reps {
                    if n == 1 {
                        let mut out = vec![0f32; vocab];
                        output
                            .matmul_quantized(&narrow, &mut out, isa)
                            .expect("shapes");
                    }
                }
                let output_s = (cpu_now() - started) / reps as f64;
                best[i] = (best[i].0.min(layer_s), best[i].1.min(output_s));
            }
        }
        let layer_macs: usize = layer.iter().map(|m| m.rows() * m.cols() * n).sum();
        for (isa, (layer_s, output_s)) in Isa::available().into_iter().zip(best) {
            print!(
                "n={n:3} {:>10}: layer (Q4_1) {:7.2} GMAC/s",
                isa.name(),
                layer_macs as f64 / layer_s / 1e9
            );
            if n == 1 {
                print!(
                    ", output (Q8_0) {:7.2} GMAC/s",
                    (vocab * e) as f64 / output_s / 1e9
                );
            }
            println!();
        }
    }
}
