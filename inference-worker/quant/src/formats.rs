//! The GGUF block formats this crate reads, and the 8-bit activation blocks the kernels
//! multiply them with.
//!
//! Every format stores 32 values per block:
//! - `Q4_1`: `f16 d, f16 m, u8 qs[16]` (20 bytes); value `j` is `d * q + m` with `q` the low
//!   nibble of `qs[j]` for `j < 16` and the high nibble of `qs[j - 16]` otherwise.
//! - `Q8_0`: `f16 d, i8 qs[32]` (34 bytes); value `j` is `d * qs[j]`.
//!
//! Activations are quantized once per row to [`Q8Block`]s (llama.cpp's `Q8_1`: a scale, the
//! scale times the sum of the quants, and 32 signed bytes), which serve both formats.

use half::f16;

/// Values per block in every supported format.
pub const BLOCK: usize = 32;

/// A GGUF tensor type this crate multiplies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    Q4_1,
    Q8_0,
}

impl WeightFormat {
    /// Bytes of one block of 32 values.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Q4_1 => "Q4_1",
            Self::Q8_0 => "Q8_0",
        }
    }
}

/// 32 activations quantized to signed bytes: `x[j] ~ d * qs[j]`, with `s = d * sum(qs)`
/// (used by formats with an offset, `Q4_1`). `d` and `s` hold f16-representable values, as
/// llama.cpp stores them, so both engines multiply with the same numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct Q8Block {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; BLOCK],
}

impl Q8Block {
    pub(crate) const ZERO: Self = Self {
        d: 0.0,
        s: 0.0,
        qs: [0; BLOCK],
    };
}

/// Quantizes `x` (a multiple of 32 values) to blocks, the way llama.cpp's x86 code does:
/// `d = max|x| / 127` (stored as f16), quants `round_ties_even(x * 127 / max|x|)`.
pub fn quantize_q8(x: &[f32], out: &mut Vec<Q8Block>) {
    debug_assert_eq!(x.len() % BLOCK, 0);
    out.clear();
    out.extend(x.chunks_exact(BLOCK).map(quantize_q8_block));
}

/// One block of [`quantize_q8`].
pub(crate) fn quantize_q8_block(chunk: &[f32]) -> Q8Block {
    let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut block = Q8Block::ZERO;
    let mut sum = 0i32;
    for (q, v) in block.qs.iter_mut().zip(chunk) {
        let r = round_ties_even(v * id);
        *q = r as i8;
        sum += r;
    }
    block.d = f16::from_f32(d).to_f32();
    block.s = f16::from_f32(d * sum as f32).to_f32();
    block
}

/// `v` rounded to the nearest integer, ties to even (x86's default rounding, which
/// llama.cpp's quantization uses), for |v| <= 2^22: adding and subtracting 1.5 * 2^23 leaves
/// no fraction bits. `f32::round_ties_even` is a libm call on baseline x86-64.
#[inline(always)]
fn round_ties_even(v: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0;
    ((v + MAGIC) - MAGIC) as i32
}

/// Reads the little-endian f16 at `bytes[at..at + 2]` as f32.
#[inline(always)]
pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// The 32 quants of a `Q4_1` block, in value order (0..=15).
#[inline(always)]
pub(crate) fn q4_1_quants(block: &[u8]) -> [u8; BLOCK] {
    let mut q = [0u8; BLOCK];
    for j in 0..16 {
        q[j] = block[4 + j] & 0x0F;
        q[j + 16] = block[4 + j] >> 4;
    }
    q
}

/// Dequantizes one row of `format` blocks into `out` (`out.len()` values).
pub fn dequantize_row(format: WeightFormat, row: &[u8], out: &mut [f32]) {
    let bytes = format.block_bytes();
    for (block, values) in row.chunks_exact(bytes).zip(out.chunks_exact_mut(BLOCK)) {
        match format {
            WeightFormat::Q4_1 => {
                let (d, m) = (f16_at(block, 0), f16_at(block, 2));
                for (v, q) in values.iter_mut().zip(q4_1_quants(block)) {
                    *v = d * f32::from(q) + m;
                }
            }
            WeightFormat::Q8_0 => {
                let d = f16_at(block, 0);
                for (v, &q) in values.iter_mut().zip(&block[2..]) {
                    *v = d * f32::from(q as i8);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_activations_round_trip_within_half_a_step() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let mut blocks = Vec::new();
        quantize_q8(&x, &mut blocks);
        assert_eq!(blocks.len(), 2);
        for (block, chunk) in blocks.iter().zip(x.chunks(BLOCK)) {
            let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(block.qs.iter().any(|&q| q == 127 || q == -127));
            let sum: i32 = block.qs.iter().map(|&q| i32::from(q)).sum();
            assert!((block.s - block.d * sum as f32).abs() <= 1e-2 * block.s.abs().max(1.0));
            for (&q, v) in block.qs.iter().zip(chunk) {
                assert!((f32::from(q) * block.d - v).abs() <= amax / 127.0 * 0.51 + 1e-3);
            }
        }
    }

    #[test]
    fn rounding_is_ties_to_even_like_the_standard_library() {
        for i in -300_000..300_000 {
            let v = i as f32 / 2048.0;
            assert_eq!(round_ties_even(v), v.round_ties_even() as i32, "{v}");
        }
    }

    #[test]
    fn zero_rows_quantize_to_zero() {
        let mut blocks = Vec::new();
        quantize_q8(&[0.0; 32], &mut blocks);
        assert_eq!(blocks, vec![Q8Block::ZERO]);
    }
}
