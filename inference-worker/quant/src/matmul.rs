//! Quantized weight matrices times f32 activations: `y = x W^T`, with the activations
//! quantized once per row and the weight rows spread over rayon's threads.

use rayon::prelude::*;

use crate::QuantError;
use crate::formats::{
    BLOCK, Q8Block, WeightFormat, dequantize_row, quantize_q8, quantize_q8_block,
};
use crate::kernels::{Isa, matmul_rows};

/// A `rows x cols` matrix of GGUF blocks, row-major (the layout GGUF stores a linear
/// layer's weight in: one row per output).
#[derive(Debug, Clone)]
pub struct QMatrix {
    format: WeightFormat,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

/// Activation rows quantized for [`QMatrix::matmul_quantized`]; reusable, so that the
/// matrices sharing an input (q, k, v; gate, up) quantize it once.
#[derive(Debug, Clone, Default)]
pub struct Activations {
    rows: usize,
    cols: usize,
    blocks: Vec<Q8Block>,
}

impl Activations {
    /// Quantizes `x`, `rows` rows of `cols` values each.
    pub fn quantize(&mut self, x: &[f32], cols: usize) -> Result<(), QuantError> {
        if cols == 0 || !cols.is_multiple_of(BLOCK) || !x.len().is_multiple_of(cols) {
            return Err(QuantError::Shape(format!(
                "activations: {} values in rows of {cols}; rows must be a non-zero multiple of {BLOCK} and divide the values",
                x.len()
            )));
        }
        self.rows = x.len() / cols;
        self.cols = cols;
        if self.rows == 1 || rayon::current_num_threads() == 1 {
            quantize_q8(x, &mut self.blocks);
        } else {
            // A prompt's rows, spread over the threads.
            self.blocks.clear();
            self.blocks.resize(x.len() / BLOCK, Q8Block::ZERO);
            x.par_chunks_exact(cols)
                .zip(self.blocks.par_chunks_exact_mut(cols / BLOCK))
                .for_each(|(x, blocks)| {
                    for (chunk, block) in x.chunks_exact(BLOCK).zip(blocks) {
                        *block = quantize_q8_block(chunk);
                    }
                });
        }
        Ok(())
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    fn row(&self, i: usize) -> &[Q8Block] {
        let per_row = self.cols / BLOCK;
        &self.blocks[i * per_row..(i + 1) * per_row]
    }
}

impl QMatrix {
    /// Wraps `data`, `rows` rows of `cols / 32` blocks of `format`.
    pub fn new(
        format: WeightFormat,
        rows: usize,
        cols: usize,
        data: Vec<u8>,
    ) -> Result<Self, QuantError> {
        if rows == 0 || cols == 0 || !cols.is_multiple_of(BLOCK) {
            return Err(QuantError::Shape(format!(
                "{} matrix {rows}x{cols}: both sizes must be non-zero and columns a multiple of {BLOCK}",
                format.name()
            )));
        }
        let expected = rows * cols / BLOCK * format.block_bytes();
        if data.len() != expected {
            return Err(QuantError::Shape(format!(
                "{} matrix {rows}x{cols} needs {expected} bytes, got {}",
                format.name(),
                data.len()
            )));
        }
        Ok(Self {
            format,
            rows,
            cols,
            data,
        })
    }

    pub fn format(&self) -> WeightFormat {
        self.format
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    fn row_bytes(&self) -> usize {
        self.cols / BLOCK * self.format.block_bytes()
    }

    fn row(&self, r: usize) -> &[u8] {
        let bytes = self.row_bytes();
        &self.data[r * bytes..(r + 1) * bytes]
    }

    /// Row `r` as f32 values (an embedding lookup).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<(), QuantError> {
        if r >= self.rows || out.len() != self.cols {
            return Err(QuantError::Shape(format!(
                "row {r} of a {}x{} matrix into {} values",
                self.rows,
                self.cols,
                out.len()
            )));
        }
        dequantize_row(self.format, self.row(r), out);
        Ok(())
    }

    /// `out = x W^T` for `x` with rows of `cols` values: `out` gets `rows` values per row of
    /// `x`, with the fastest kernels this CPU has.
    pub fn matmul(&self, x: &[f32], out: &mut [f32]) -> Result<(), QuantError> {
        let mut activations = Activations::default();
        activations.quantize(x, self.cols)?;
        self.matmul_quantized(&activations, out, Isa::detect())
    }

    /// The instruction set whose kernels multiply this matrix with one activation row
    /// fastest on this CPU (each of [`Isa::available`] timed a few times on the calling
    /// thread, alternating; the best time counts). Every kernel gives the same numbers, so
    /// the choice changes only the speed.
    pub fn fastest_isa(&self) -> Isa {
        // The scalar reference is never the fastest where there is another.
        let mut candidates = Isa::available();
        if candidates.len() > 1 {
            candidates.retain(|isa| *isa != Isa::Scalar);
        }
        let x: Vec<f32> = (0..self.cols)
            .map(|i| (i * 7919 % 211) as f32 / 105.0 - 1.0)
            .collect();
        let mut activations = Activations::default();
        activations
            .quantize(&x, self.cols)
            .expect("a matrix's column count is a valid activation width");
        let mut out = vec![0f32; self.rows];
        let mut best = vec![std::time::Duration::MAX; candidates.len()];
        for _round in 0..5 {
            for (isa, best) in candidates.iter().zip(&mut best) {
                let started = std::time::Instant::now();
                self.rows_into(*isa, &activations, 0, &mut out);
                *best = (*best).min(started.elapsed());
            }
        }
        let (isa, _) = candidates
            .iter()
            .zip(&best)
            .min_by_key(|(_, time)| **time)
            .expect("the scalar kernels are always available");
        *isa
    }

    /// `out = x W^T` for already quantized activations, with the kernels of `isa`.
    pub fn matmul_quantized(
        &self,
        x: &Activations,
        out: &mut [f32],
        isa: Isa,
    ) -> Result<(), QuantError> {
        if x.cols != self.cols || out.len() != x.rows * self.rows {
            return Err(QuantError::Shape(format!(
                "{}x{} activations times a {}x{} matrix into {} outputs",
                x.rows,
                x.cols,
                self.rows,
                self.cols,
                out.len()
            )));
        }
        if !isa.supported() {
            return Err(QuantError::Unsupported(format!(
                "{} kernels on this CPU (it has: {})",
                isa.name(),
                Isa::available()
                    .iter()
                    .map(|i| i.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let n = x.rows;
        // Weight rows per task: a few tasks per thread so uneven threads even out.
        let threads = rayon::current_num_threads();
        let chunk = if threads == 1 {
            self.rows
        } else {
            self.rows.div_ceil(threads * 4).max(16)
        };
        let work = |r0: usize, dst: &mut [f32]| self.rows_into(isa, x, r0, dst);
        if n == 1 {
            // One activation row: the output is already in weight-row order.
            if chunk >= self.rows {
                work(0, out);
            } else {
                out.par_chunks_mut(chunk)
                    .enumerate()
                    .for_each(|(i, dst)| work(i * chunk, dst));
            }
            return Ok(());
        }
        // Several rows: compute in weight-row-major order (each weight row is read once for
        // all activation rows), then transpose.
        let mut by_weight_row = vec![0f32; self.rows * n];
        if chunk >= self.rows {
            work(0, &mut by_weight_row);
        } else {
            by_weight_row
                .par_chunks_mut(chunk * n)
                .enumerate()
                .for_each(|(i, dst)| work(i * chunk, dst));
        }
        out.par_chunks_exact_mut(self.rows)
            .enumerate()
            .for_each(|(t, out)| {
                for (o, values) in out.iter_mut().zip(by_weight_row.chunks_exact(n)) {
                    *o = values[t];
                }
            });
        Ok(())
    }

    /// `out_i = x W_i^T` for several matrices that share the activations (a layer's query,
    /// key and value projections; its gate and up projections). For one activation row (a
    /// decode step) the products run as one parallel region instead of one each: a decode
    /// step is a couple of hundred small products, and each region costs the threads a
    /// hand-off. Results equal separate [`QMatrix::matmul_quantized`] calls.
    pub fn matmul_quantized_many(
        parts: &mut [(&QMatrix, &mut [f32])],
        x: &Activations,
        isa: Isa,
    ) -> Result<(), QuantError> {
        let threads = rayon::current_num_threads();
        if x.rows != 1 || threads == 1 || parts.len() < 2 {
            for (matrix, out) in parts.iter_mut() {
                matrix.matmul_quantized(x, out, isa)?;
            }
            return Ok(());
        }
        for (matrix, out) in parts.iter() {
            if x.cols != matrix.cols || out.len() != matrix.rows {
                return Err(QuantError::Shape(format!(
                    "1x{} activations times a {}x{} matrix into {} outputs",
                    x.cols,
                    matrix.rows,
                    matrix.cols,
                    out.len()
                )));
            }
        }
        if !isa.supported() {
            // The single-product path words the error.
            return parts[0].0.matmul_quantized(x, parts[0].1, isa);
        }
        // Tasks of about equal size across all the matrices, a few per thread.
        let total: usize = parts.iter().map(|(m, _)| m.rows).sum();
        let chunk = total.div_ceil(threads * 4).max(16);
        let mut tasks: Vec<(&QMatrix, usize, &mut [f32])> = Vec::new();
        for (matrix, out) in parts.iter_mut() {
            for (i, dst) in out.chunks_mut(chunk).enumerate() {
                tasks.push((*matrix, i * chunk, dst));
            }
        }
        tasks
            .into_par_iter()
            .for_each(|(matrix, r0, dst)| matrix.rows_into(isa, x, r0, dst));
        Ok(())
    }

    /// Weight rows `r0..` (as many as `dst` has room for) times every activation row, into
    /// `dst[(r - r0) * n + t]`.
    fn rows_into(&self, isa: Isa, x: &Activations, r0: usize, dst: &mut [f32]) {
        let xs: Vec<&[Q8Block]> = (0..x.rows).map(|t| x.row(t)).collect();
        let rows = dst.len() / x.rows;
        let bytes = self.row_bytes();
        let weights = &self.data[r0 * bytes..(r0 + rows) * bytes];
        matmul_rows(isa, self.format, weights, &xs, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantizing_rows_in_parallel_gives_the_serial_blocks() {
        let cols = 96;
        let x: Vec<f32> = (0..7 * cols)
            .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 13.0)
            .collect();
        let mut serial = Vec::new();
        quantize_q8(&x, &mut serial);
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut activations = Activations::default();
            pool.install(|| activations.quantize(&x, cols)).unwrap();
            assert_eq!(activations.blocks, serial, "{threads} threads");
            assert_eq!((activations.rows, activations.cols), (7, cols));
        }
    }
}
