//! Dot products of one weight row with up to [`TILE`] quantized activation rows.
//!
//! Every kernel computes exactly the same numbers: per block, the integer dot product of the
//! 32 quants is split into 8 lanes of 4 consecutive values (lane `l` covers values
//! `4l..4l + 4`), each lane is converted to f32 and accumulated with one fused multiply-add by
//! `d_w * d_x` into the even or the odd blocks' accumulator (two dependency chains); the
//! offset term of `Q4_1` (`m_w * s_x`) is summed separately, also split even/odd; at the end
//! the two accumulators are added lane by lane, the 8 lanes pairwise (`((l0 + l4) +
//! (l2 + l6)) + ((l1 + l5) + (l3 + l7))`), and the offset sums added. Integer sums are exact in every instruction set,
//! so the scalar reference, AVX2 and AVX-512 VNNI give bit-identical results.
//!
//! The SIMD kernels are chosen at run time ([`Isa::detect`]), so one binary runs on any
//! x86-64 and uses what the CPU has.

use crate::formats::{BLOCK, Q8Block, WeightFormat, f16_at, q4_1_quants};

/// Activation rows multiplied per weight-row load.
pub const TILE: usize = 4;

/// The instruction set the kernels run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust; the reference the others must equal.
    Scalar,
    /// AVX2 + FMA + F16C (x86-64, 2013 onwards).
    Avx2,
    /// AVX2 kernels with the integer dot products done by AVX-512 VNNI (`vpdpbusd`, 256-bit).
    Avx512Vnni,
}

impl Isa {
    /// The fastest instruction set this CPU supports (detected once).
    pub fn detect() -> Self {
        static DETECTED: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                let avx2 = is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c");
                if avx2
                    && is_x86_feature_detected!("avx512vnni")
                    && is_x86_feature_detected!("avx512vl")
                {
                    return Isa::Avx512Vnni;
                }
                if avx2 {
                    return Isa::Avx2;
                }
            }
            Isa::Scalar
        })
    }

    /// Every instruction set this CPU can run, the reference first (for tests and benchmarks).
    pub fn available() -> Vec<Self> {
        [Self::Scalar, Self::Avx2, Self::Avx512Vnni]
            .into_iter()
            .filter(|isa| isa.supported())
            .collect()
    }

    /// Whether this CPU can run the kernels of `self`.
    pub fn supported(self) -> bool {
        matches!(
            (self, Self::detect()),
            (Self::Scalar, _)
                | (Self::Avx2, Self::Avx2 | Self::Avx512Vnni)
                | (Self::Avx512Vnni, Self::Avx512Vnni)
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Scalar => "scalar",
            Self::Avx2 => "avx2",
            Self::Avx512Vnni => "avx512vnni",
        }
    }
}

/// Weight rows times activation rows: `dst[i * xs.len() + t] = dot(row i of weights, xs[t])`.
///
/// `weights` holds whole rows of `xs[t].len()` blocks of `format` each, `dst` one value per
/// (row, activation row); `isa` must be [`Isa::supported`]. Each weight row is loaded once
/// per [`TILE`] activation rows.
pub(crate) fn matmul_rows(
    isa: Isa,
    format: WeightFormat,
    weights: &[u8],
    xs: &[&[Q8Block]],
    dst: &mut [f32],
) {
    let blocks = xs.first().map_or(0, |x| x.len());
    let row_bytes = blocks * format.block_bytes();
    assert!(
        blocks > 0
            && xs.iter().all(|x| x.len() == blocks)
            && weights.len().is_multiple_of(row_bytes)
            && dst.len() == weights.len() / row_bytes * xs.len(),
        "matmul_rows: mismatched shapes"
    );
    assert!(
        isa.supported(),
        "{} kernels on a CPU without them",
        isa.name()
    );
    match isa {
        Isa::Scalar => {
            for (row, out) in weights
                .chunks_exact(row_bytes)
                .zip(dst.chunks_exact_mut(xs.len()))
            {
                for (o, x) in out.iter_mut().zip(xs) {
                    *o = match format {
                        WeightFormat::Q4_1 => scalar::q4_1(row, x),
                        WeightFormat::Q8_0 => scalar::q8_0(row, x),
                    };
                }
            }
        }
        // SAFETY: the CPU has the features (checked above), and the shapes were checked
        // at the top, which is all the kernels' pointer reads rely on.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => unsafe {
            x86::matmul_rows(isa, format, weights, row_bytes, xs, dst)
        },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("only the scalar kernels exist off x86-64"),
    }
}

/// Adds 8 lanes in the fixed order every kernel uses.
#[inline(always)]
fn sum_lanes(a: [f32; 8]) -> f32 {
    let s = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    (s[0] + s[2]) + (s[1] + s[3])
}

mod scalar {
    use super::*;

    /// Lane `l` of the integer dot product: values `4l..4l + 4`.
    #[inline(always)]
    fn lanes(w: impl Fn(usize) -> i32, x: &[i8; BLOCK]) -> [i32; 8] {
        std::array::from_fn(|l| (4 * l..4 * l + 4).map(|j| w(j) * i32::from(x[j])).sum())
    }

    pub(super) fn q4_1(row: &[u8], xs: &[Q8Block]) -> f32 {
        let mut acc = [[0f32; 8]; 2];
        let mut offsets = [0f32; 2];
        let blocks = row.chunks_exact(WeightFormat::Q4_1.block_bytes());
        for (b, (block, x)) in blocks.zip(xs).enumerate() {
            let (d, m) = (f16_at(block, 0), f16_at(block, 2));
            let q = q4_1_quants(block);
            let scale = d * x.d;
            for (a, s) in acc[b & 1].iter_mut().zip(lanes(|j| i32::from(q[j]), &x.qs)) {
                *a = scale.mul_add(s as f32, *a);
            }
            offsets[b & 1] += m * x.s;
        }
        sum_lanes(std::array::from_fn(|l| acc[0][l] + acc[1][l])) + (offsets[0] + offsets[1])
    }

    pub(super) fn q8_0(row: &[u8], xs: &[Q8Block]) -> f32 {
        let mut acc = [[0f32; 8]; 2];
        let blocks = row.chunks_exact(WeightFormat::Q8_0.block_bytes());
        for (b, (block, x)) in blocks.zip(xs).enumerate() {
            let scale = f16_at(block, 0) * x.d;
            let w = &block[2..];
            for (a, s) in acc[b & 1]
                .iter_mut()
                .zip(lanes(|j| i32::from(w[j] as i8), &x.qs))
            {
                *a = scale.mul_add(s as f32, *a);
            }
        }
        sum_lanes(std::array::from_fn(|l| acc[0][l] + acc[1][l]))
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::*;

    /// The 8-lane integer dot product of 32 unsigned bytes with 32 signed bytes.
    trait ByteDot {
        unsafe fn dot(unsigned: __m256i, signed: __m256i) -> __m256i;
    }

    /// `vpmaddubsw` + `vpmaddwd`. The i16 pair sums never saturate here: the unsigned side
    /// is at most 15 (Q4_1) or 128 (|Q8_0|) and the signed side within -127..=127, so a
    /// pair is at most 2 * 128 * 127 = 32512.
    struct Maddubs;
    /// `vpdpbusd`: the same 4-byte lanes in one instruction.
    struct Vnni;

    impl ByteDot for Maddubs {
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn dot(unsigned: __m256i, signed: __m256i) -> __m256i {
            let pairs = _mm256_maddubs_epi16(unsigned, signed);
            _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
        }
    }

    impl ByteDot for Vnni {
        #[inline]
        #[target_feature(enable = "avx2,avx512vnni,avx512vl")]
        unsafe fn dot(unsigned: __m256i, signed: __m256i) -> __m256i {
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), unsigned, signed)
        }
    }

    /// # Safety
    /// The CPU supports `isa`; `weights` holds whole rows of `row_bytes`, every `xs[t]` as
    /// many blocks as a row, and `dst` one value per (row, activation row).
    pub(super) unsafe fn matmul_rows(
        isa: Isa,
        format: WeightFormat,
        weights: &[u8],
        row_bytes: usize,
        xs: &[&[Q8Block]],
        dst: &mut [f32],
    ) {
        unsafe {
            match (isa, format) {
                (Isa::Avx512Vnni, WeightFormat::Q4_1) => q4_1_vnni(weights, row_bytes, xs, dst),
                (Isa::Avx512Vnni, WeightFormat::Q8_0) => q8_0_vnni(weights, row_bytes, xs, dst),
                (_, WeightFormat::Q4_1) => q4_1_avx2(weights, row_bytes, xs, dst),
                (_, WeightFormat::Q8_0) => q8_0_avx2(weights, row_bytes, xs, dst),
            }
        }
    }

    /// Every weight row times every activation row, [`TILE`] activation rows at a time.
    #[inline(always)]
    unsafe fn rows(
        weights: &[u8],
        row_bytes: usize,
        xs: &[&[Q8Block]],
        dst: &mut [f32],
        tile: impl Fn(&[u8], &[&[Q8Block]], &mut [f32]),
    ) {
        for (row, out) in weights
            .chunks_exact(row_bytes)
            .zip(dst.chunks_exact_mut(xs.len()))
        {
            for (x, o) in xs.chunks(TILE).zip(out.chunks_mut(TILE)) {
                tile(row, x, o);
            }
        }
    }

    macro_rules! kernel {
        ($name:ident, $features:literal, $body:ident, $dot:ty) => {
            #[target_feature(enable = $features)]
            unsafe fn $name(weights: &[u8], row_bytes: usize, xs: &[&[Q8Block]], dst: &mut [f32]) {
                unsafe {
                    rows(weights, row_bytes, xs, dst, |row, x, o| match x.len() {
                        4 => o.copy_from_slice(&$body::<$dot, 4>(row, x.try_into().unwrap())),
                        3 => o.copy_from_slice(&$body::<$dot, 3>(row, x.try_into().unwrap())),
                        2 => o.copy_from_slice(&$body::<$dot, 2>(row, x.try_into().unwrap())),
                        _ => o.copy_from_slice(&$body::<$dot, 1>(row, x.try_into().unwrap())),
                    })
                }
            }
        };
    }

    kernel!(q4_1_avx2, "avx2,fma,f16c", q4_1, Maddubs);
    kernel!(q4_1_vnni, "avx2,fma,f16c,avx512vnni,avx512vl", q4_1, Vnni);
    kernel!(q8_0_avx2, "avx2,fma,f16c", q8_0, Maddubs);
    kernel!(q8_0_vnni, "avx2,fma,f16c,avx512vnni,avx512vl", q8_0, Vnni);

    /// Adds the 8 lanes in [`sum_lanes`]' order.
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        unsafe {
            let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
            _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)))
        }
    }

    /// Q4_1 weights: unpack the 32 nibbles once, then multiply with `N` activation rows.
    #[inline(always)]
    unsafe fn q4_1<D: ByteDot, const N: usize>(row: &[u8], xs: &[&[Q8Block]; N]) -> [f32; N] {
        const BYTES: usize = WeightFormat::Q4_1.block_bytes();
        unsafe {
            let blocks = row.len() / BYTES;
            let low = _mm_set1_epi8(0x0F);
            let mut acc = [[_mm256_setzero_ps(); N]; 2];
            let mut offsets = [[0f32; N]; 2];
            for (b, parity) in (0..blocks).map(|b| (b, b & 1)) {
                let block = row.as_ptr().add(b * BYTES);
                // d and m are the block's first two f16 values.
                let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(block.cast::<i32>().read_unaligned()));
                let d = _mm_cvtss_f32(dm);
                let m = _mm_cvtss_f32(_mm_movehdup_ps(dm));
                let packed = _mm_loadu_si128(block.add(4).cast());
                let lo = _mm_and_si128(packed, low);
                let hi = _mm_and_si128(_mm_srli_epi16::<4>(packed), low);
                let quants = _mm256_set_m128i(hi, lo);
                for r in 0..N {
                    let x = xs[r].get_unchecked(b);
                    let xq = _mm256_loadu_si256(x.qs.as_ptr().cast());
                    let lanes = _mm256_cvtepi32_ps(D::dot(quants, xq));
                    acc[parity][r] =
                        _mm256_fmadd_ps(_mm256_set1_ps(d * x.d), lanes, acc[parity][r]);
                    offsets[parity][r] += m * x.s;
                }
            }
            std::array::from_fn(|r| {
                hsum(_mm256_add_ps(acc[0][r], acc[1][r])) + (offsets[0][r] + offsets[1][r])
            })
        }
    }

    /// Q8_0 weights. The sign trick (`|w|` times `x` with w's sign) keeps the bytes in the
    /// unsigned x signed form of [`ByteDot`]; activations are in -127..=127, so negating
    /// them never overflows.
    #[inline(always)]
    unsafe fn q8_0<D: ByteDot, const N: usize>(row: &[u8], xs: &[&[Q8Block]; N]) -> [f32; N] {
        const BYTES: usize = WeightFormat::Q8_0.block_bytes();
        unsafe {
            let blocks = row.len() / BYTES;
            let mut acc = [[_mm256_setzero_ps(); N]; 2];
            for (b, parity) in (0..blocks).map(|b| (b, b & 1)) {
                let block = row.as_ptr().add(b * BYTES);
                let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
                    block.cast::<u16>().read_unaligned(),
                ))));
                let w = _mm256_loadu_si256(block.add(2).cast());
                let magnitude = _mm256_sign_epi8(w, w);
                for r in 0..N {
                    let x = xs[r].get_unchecked(b);
                    let xq = _mm256_loadu_si256(x.qs.as_ptr().cast());
                    let lanes = _mm256_cvtepi32_ps(D::dot(magnitude, _mm256_sign_epi8(xq, w)));
                    acc[parity][r] =
                        _mm256_fmadd_ps(_mm256_set1_ps(d * x.d), lanes, acc[parity][r]);
                }
            }
            std::array::from_fn(|r| hsum(_mm256_add_ps(acc[0][r], acc[1][r])))
        }
    }
}
