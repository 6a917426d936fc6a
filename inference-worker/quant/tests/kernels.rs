//! The kernels against each other (bit for bit), against an exact integer reference, and
//! against candle's dequantize-then-matmul (within float tolerance).

use aigc_quant::formats::{BLOCK, Q8Block, quantize_q8};
use aigc_quant::{Activations, Isa, QMatrix, WeightFormat};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

fn random_values(rng: &mut fastrand::Rng, n: usize) -> Vec<f32> {
    // Blocks of very different magnitudes, some all-zero, some with an outlier.
    (0..n)
        .map(|i| {
            let block = i / BLOCK;
            let scale = [0.0, 1e-3, 0.05, 1.0, 30.0][block % 5];
            let v = (rng.f32() * 2.0 - 1.0) * scale;
            if rng.u32(..64) == 0 { v * 8.0 } else { v }
        })
        .collect()
}

/// A random matrix quantized by candle (so the bytes are real GGUF blocks) and candle's
/// dequantized copy of it.
fn random_matrix(
    rng: &mut fastrand::Rng,
    format: WeightFormat,
    rows: usize,
    cols: usize,
) -> (QMatrix, Tensor) {
    let values = random_values(rng, rows * cols);
    let tensor = Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap();
    let dtype = match format {
        WeightFormat::Q4_1 => GgmlDType::Q4_1,
        WeightFormat::Q8_0 => GgmlDType::Q8_0,
    };
    let qtensor = QTensor::quantize(&tensor, dtype).unwrap();
    let bytes = qtensor.data().unwrap().into_owned();
    let matrix = QMatrix::new(format, rows, cols, bytes).unwrap();
    (matrix, qtensor.dequantize(&Device::Cpu).unwrap())
}

/// The exact value of one output from the quants, in f64.
fn exact_dot(matrix: &QMatrix, weights: &Tensor, r: usize, x: &[Q8Block]) -> f64 {
    // Dequantized weights are exact (d * q + m in f32 is what the block means up to one
    // rounding); the activations contribute d * q exactly.
    let w = weights.get(r).unwrap().to_vec1::<f32>().unwrap();
    let _ = matrix;
    w.iter()
        .enumerate()
        .map(|(k, &w)| {
            let block = &x[k / BLOCK];
            f64::from(w) * f64::from(block.d) * f64::from(block.qs[k % BLOCK])
        })
        .sum()
}

#[test]
fn every_instruction_set_gives_the_scalar_results_bit_for_bit() {
    let mut rng = fastrand::Rng::with_seed(7);
    let isas = Isa::available();
    eprintln!("kernels on this CPU: {isas:?}");
    for format in [WeightFormat::Q4_1, WeightFormat::Q8_0] {
        for (rows, cols, n) in [
            (1, 32, 1),
            (37, 64, 1),
            (19, 576, 5),
            (40, 1536, 9),
            (8, 96, 4),
        ] {
            let (matrix, _) = random_matrix(&mut rng, format, rows, cols);
            let mut x = Activations::default();
            x.quantize(&random_values(&mut rng, n * cols), cols)
                .unwrap();
            let mut reference = vec![0f32; n * rows];
            matrix
                .matmul_quantized(&x, &mut reference, Isa::Scalar)
                .unwrap();
            for &isa in &isas {
                for threads in [1, 3] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let mut out = vec![f32::NAN; n * rows];
                    pool.install(|| matrix.matmul_quantized(&x, &mut out, isa))
                        .unwrap();
                    let same = out
                        .iter()
                        .zip(&reference)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{format:?} {rows}x{cols} n={n} {isa:?} threads={threads}: {out:?} vs {reference:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn tiles_give_the_same_numbers_as_single_rows() {
    let mut rng = fastrand::Rng::with_seed(11);
    let (rows, cols, n) = (23, 192, 7);
    for format in [WeightFormat::Q4_1, WeightFormat::Q8_0] {
        let (matrix, _) = random_matrix(&mut rng, format, rows, cols);
        let values = random_values(&mut rng, n * cols);
        let mut all = vec![0f32; n * rows];
        matrix.matmul(&values, &mut all).unwrap();
        for (t, row) in values.chunks(cols).enumerate() {
            let mut one = vec![0f32; rows];
            matrix.matmul(row, &mut one).unwrap();
            assert_eq!(one, all[t * rows..(t + 1) * rows], "{format:?} row {t}");
        }
    }
}

#[test]
fn results_match_the_exact_product_of_the_quants() {
    let mut rng = fastrand::Rng::with_seed(3);
    let (rows, cols, n) = (17, 320, 3);
    for format in [WeightFormat::Q4_1, WeightFormat::Q8_0] {
        let (matrix, weights) = random_matrix(&mut rng, format, rows, cols);
        let values = random_values(&mut rng, n * cols);
        let mut blocks = Vec::new();
        quantize_q8(&values, &mut blocks);
        let mut x = Activations::default();
        x.quantize(&values, cols).unwrap();
        let mut out = vec![0f32; n * rows];
        matrix
            .matmul_quantized(&x, &mut out, Isa::detect())
            .unwrap();
        for t in 0..n {
            let xb = &blocks[t * cols / BLOCK..(t + 1) * cols / BLOCK];
            for r in 0..rows {
                let exact = exact_dot(&matrix, &weights, r, xb);
                let got = f64::from(out[t * rows + r]);
                // Q4_1's offset term uses s = d * sum(q) rounded to f16, as llama.cpp does.
                let scale: f64 = weights
                    .get(r)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .map(f64::from)
                    .unwrap()
                    * xb.iter()
                        .map(|b| f64::from(b.d) * 127.0)
                        .fold(0.0, f64::max);
                assert!(
                    (got - exact).abs() <= 2e-3 * scale + 1e-6,
                    "{format:?} [{t},{r}]: {got} vs exact {exact} (scale {scale})"
                );
            }
        }
    }
}

#[test]
fn results_match_candles_dequantized_matmul() {
    let mut rng = fastrand::Rng::with_seed(5);
    let (rows, cols, n) = (48, 576, 6);
    for format in [WeightFormat::Q4_1, WeightFormat::Q8_0] {
        let (matrix, weights) = random_matrix(&mut rng, format, rows, cols);
        // Activations of one magnitude, as a normalised hidden state has.
        let values: Vec<f32> = (0..n * cols).map(|_| rng.f32() * 2.0 - 1.0).collect();
        let mut out = vec![0f32; n * rows];
        matrix.matmul(&values, &mut out).unwrap();
        let x = Tensor::from_vec(values, (n, cols), &Device::Cpu).unwrap();
        let expected = x
            .matmul(&weights.t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let norm = expected.iter().map(|v| v.abs()).fold(0f32, f32::max);
        for (i, (a, b)) in out.iter().zip(&expected).enumerate() {
            // Activation quantization to 8 bits is the only difference.
            assert!(
                (a - b).abs() <= 0.02 * norm,
                "{format:?} output {i}: {a} vs candle {b} (largest {norm})"
            );
        }
    }
}

#[test]
fn bad_shapes_are_errors_naming_the_sizes() {
    let error = QMatrix::new(WeightFormat::Q4_1, 2, 48, vec![0; 40]).unwrap_err();
    assert!(error.to_string().contains("2x48"), "{error}");
    let error = QMatrix::new(WeightFormat::Q4_1, 2, 64, vec![0; 10]).unwrap_err();
    assert!(
        error.to_string().contains("needs 80 bytes, got 10"),
        "{error}"
    );
    let matrix = QMatrix::new(WeightFormat::Q8_0, 2, 32, vec![0; 68]).unwrap();
    let error = matrix.matmul(&[0.0; 64], &mut [0.0; 3]).unwrap_err();
    assert!(error.to_string().contains("into 3 outputs"), "{error}");
    let error = matrix.matmul(&[0.0; 33], &mut [0.0; 2]).unwrap_err();
    assert!(error.to_string().contains("33 values"), "{error}");
}

#[test]
fn products_sharing_activations_equal_separate_ones() {
    let mut rng = fastrand::Rng::with_seed(21);
    let cols = 96;
    let (q, _) = random_matrix(&mut rng, WeightFormat::Q4_1, 72, cols);
    let (k, _) = random_matrix(&mut rng, WeightFormat::Q4_1, 24, cols);
    let (v, _) = random_matrix(&mut rng, WeightFormat::Q8_0, 40, cols);
    let isa = Isa::detect();
    for rows in [1, 3] {
        let mut x = Activations::default();
        x.quantize(&random_values(&mut rng, rows * cols), cols)
            .unwrap();
        let mut want = Vec::new();
        for m in [&q, &k, &v] {
            let mut out = vec![0.0; rows * m.rows()];
            m.matmul_quantized(&x, &mut out, isa).unwrap();
            want.push(out);
        }
        let mut got: Vec<Vec<f32>> = want.iter().map(|w| vec![f32::NAN; w.len()]).collect();
        let [a, b, c] = &mut got[..] else {
            unreachable!()
        };
        QMatrix::matmul_quantized_many(&mut [(&q, a), (&k, b), (&v, c)], &x, isa).unwrap();
        assert_eq!(got, want, "{rows} activation rows");
    }
    let mut x = Activations::default();
    x.quantize(&random_values(&mut rng, cols), cols).unwrap();
    let mut short = vec![0.0; 10];
    let mut fine = vec![0.0; 24];
    let error = QMatrix::matmul_quantized_many(&mut [(&k, &mut fine), (&q, &mut short)], &x, isa)
        .unwrap_err();
    assert!(
        error.to_string().contains("72x96 matrix into 10 outputs"),
        "{error}"
    );
}
