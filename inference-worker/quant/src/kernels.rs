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

/// The instruction set the kernels run with; each one needs the features of those before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Portable Rust; the reference the others must equal.
    Scalar,
    /// AVX2 + FMA + F16C (x86-64, 2013 onwards).
    Avx2,
    /// The AVX2 kernels with the integer dot products done by AVX-512 VNNI (`vpdpbusd` on
    /// 256 bits; AVX512-VL).
    Avx512Vnni,
    /// 512-bit Q4_1 kernel, two blocks per instruction (AVX512-F/BW/VL/VNNI); Q8_0 as
    /// `Avx512Vnni`.
    Avx512,
}

impl Isa {
    /// The widest instruction set this CPU supports (detected once). Wider is not always
    /// faster: on a Xeon with AVX-512 the AVX2 kernels measured fastest, so models pick by
    /// timing ([`crate::QMatrix::fastest_isa`]).
    pub fn detect() -> Self {
        static DETECTED: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                let avx2 = is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c");
                let vnni = avx2
                    && is_x86_feature_detected!("avx512vnni")
                    && is_x86_feature_detected!("avx512vl");
                let avx512 = vnni
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw");
                if avx512 {
                    return Isa::Avx512;
                }
                if vnni {
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
        [Self::Scalar, Self::Avx2, Self::Avx512Vnni, Self::Avx512]
            .into_iter()
            .filter(|isa| isa.supported())
            .collect()
    }

    /// Whether this CPU can run the kernels of `self`.
    pub fn supported(self) -> bool {
        self <= Self::detect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Scalar => "scalar",
            Self::Avx2 => "avx2",
            Self::Avx512Vnni => "avx512vnni",
            Self::Avx512 => "avx512",
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
        Isa::Avx2 | Isa::Avx512Vnni | Isa::Avx512 => unsafe {
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
                (Isa::Avx512, WeightFormat::Q4_1) => q4_1_512(weights, row_bytes, xs, dst),
                // The 512-bit Q8_0 kernel measured slower than the 256-bit one here
                // (examples/bench_kernels.rs); both give the same numbers.
                (Isa::Avx512, WeightFormat::Q8_0) => q8_0_vnni(weights, row_bytes, xs, dst),
                (Isa::Avx512Vnni, WeightFormat::Q4_1) => q4_1_vnni(weights, row_bytes, xs, dst),
                (Isa::Avx512Vnni, WeightFormat::Q8_0) => q8_0_vnni(weights, row_bytes, xs, dst),
                (_, WeightFormat::Q4_1) => q4_1_avx2(weights, row_bytes, xs, dst),
                (_, WeightFormat::Q8_0) => q8_0_avx2(weights, row_bytes, xs, dst),
            }
        }
    }

    /// How far ahead of the row being multiplied the kernels ask for weight bytes. The
    /// hardware prefetcher alone left a decode step (every weight streamed from memory once)
    /// waiting on loads: SmolLM2's decoding went from 89 to 120-140 tokens/s on 2 cores of
    /// a Xeon. Distances of 2 to 12 rows (0.7-4.3 KiB of its 576-column matrices) measured
    /// within the noise of each other.
    const PREFETCH_AHEAD: usize = 2048;

    /// Asks for the cache lines of `weights[start..start + len]` that exist.
    #[inline(always)]
    unsafe fn prefetch(weights: &[u8], start: usize, len: usize) {
        let end = weights.len().min(start + len);
        let mut at = start;
        while at < end {
            // SAFETY: `at` is inside `weights`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(weights.as_ptr().add(at).cast()) };
            at += 64;
        }
    }

    /// A kernel: every weight row times every activation row, [`TILE`] activation rows at a
    /// time, the weights [`PREFETCH_AHEAD`] bytes on prefetched meanwhile. Its body has no
    /// closures: they would not inherit the target features.
    macro_rules! kernel {
        ($name:ident, $features:literal, $body:ident, $dot:ty) => {
            #[target_feature(enable = $features)]
            unsafe fn $name(weights: &[u8], row_bytes: usize, xs: &[&[Q8Block]], dst: &mut [f32]) {
                unsafe {
                    for (r, (row, out)) in weights
                        .chunks_exact(row_bytes)
                        .zip(dst.chunks_exact_mut(xs.len()))
                        .enumerate()
                    {
                        prefetch(weights, r * row_bytes + PREFETCH_AHEAD, row_bytes);
                        for (x, o) in xs.chunks(TILE).zip(out.chunks_mut(TILE)) {
                            match x.len() {
                                4 => {
                                    o.copy_from_slice(&$body::<$dot, 4>(row, x.try_into().unwrap()))
                                }
                                3 => {
                                    o.copy_from_slice(&$body::<$dot, 3>(row, x.try_into().unwrap()))
                                }
                                2 => {
                                    o.copy_from_slice(&$body::<$dot, 2>(row, x.try_into().unwrap()))
                                }
                                _ => {
                                    o.copy_from_slice(&$body::<$dot, 1>(row, x.try_into().unwrap()))
                                }
                            }
                        }
                    }
                }
            }
        };
    }

    kernel!(q4_1_avx2, "avx2,fma,f16c", q4_1, Maddubs);
    kernel!(q4_1_vnni, "avx2,fma,f16c,avx512vnni,avx512vl", q4_1, Vnni);
    kernel!(q8_0_avx2, "avx2,fma,f16c", q8_0, Maddubs);
    kernel!(q8_0_vnni, "avx2,fma,f16c,avx512vnni,avx512vl", q8_0, Vnni);
    kernel!(
        q4_1_512,
        "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl",
        q4_1_wide,
        Vnni
    );

    /// Adds the 8 lanes in [`sum_lanes`]' order.
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        unsafe {
            let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
            _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)))
        }
    }

    /// A Q4_1 block's `d` and `m`.
    #[inline(always)]
    unsafe fn q4_1_scales(block: *const u8) -> (f32, f32) {
        unsafe {
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(block.cast::<i32>().read_unaligned()));
            (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)))
        }
    }

    /// A Q4_1 block's 32 quants as bytes, in value order.
    #[inline(always)]
    unsafe fn q4_1_quants(block: *const u8) -> __m256i {
        unsafe {
            let low = _mm_set1_epi8(0x0F);
            let packed = _mm_loadu_si128(block.add(4).cast());
            let lo = _mm_and_si128(packed, low);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(packed), low);
            _mm256_set_m128i(hi, lo)
        }
    }

    /// A Q8_0 block's `d`.
    #[inline(always)]
    unsafe fn q8_0_scale(block: *const u8) -> f32 {
        unsafe {
            let bits = i32::from(block.cast::<u16>().read_unaligned());
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)))
        }
    }

    /// Block `b` of a Q4_1 row times block `b` of `N` activation rows, into one of the two
    /// accumulator sets.
    #[inline(always)]
    unsafe fn q4_1_step<D: ByteDot, const N: usize>(
        block: *const u8,
        b: usize,
        xs: &[&[Q8Block]; N],
        acc: &mut [__m256; N],
    ) {
        unsafe {
            let (d, _) = q4_1_scales(block);
            let quants = q4_1_quants(block);
            for r in 0..N {
                let x = xs[r].get_unchecked(b);
                let xq = _mm256_loadu_si256(x.qs.as_ptr().cast());
                let lanes = _mm256_cvtepi32_ps(D::dot(quants, xq));
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * x.d), lanes, acc[r]);
            }
        }
    }

    /// The offset term of a Q4_1 row with one activation row: `m * s` summed over the even
    /// and the odd blocks separately, in block order (a loop of its own, so the main loop
    /// keeps its registers for the accumulators).
    #[inline(always)]
    unsafe fn q4_1_offsets(row: &[u8], x: &[Q8Block]) -> f32 {
        const BYTES: usize = WeightFormat::Q4_1.block_bytes();
        unsafe {
            // (No closures here: they would not inherit the target features.)
            let (mut even, mut odd) = (0f32, 0f32);
            let mut b = 0;
            while b + 1 < x.len() {
                let (_, m_even) = q4_1_scales(row.as_ptr().add(b * BYTES));
                let (_, m_odd) = q4_1_scales(row.as_ptr().add((b + 1) * BYTES));
                even += m_even * x.get_unchecked(b).s;
                odd += m_odd * x.get_unchecked(b + 1).s;
                b += 2;
            }
            if b < x.len() {
                even += q4_1_scales(row.as_ptr().add(b * BYTES)).1 * x.get_unchecked(b).s;
            }
            even + odd
        }
    }

    /// Q4_1 weights: unpack the 32 nibbles once, then multiply with `N` activation rows.
    #[inline(always)]
    unsafe fn q4_1<D: ByteDot, const N: usize>(row: &[u8], xs: &[&[Q8Block]; N]) -> [f32; N] {
        const BYTES: usize = WeightFormat::Q4_1.block_bytes();
        unsafe {
            let blocks = row.len() / BYTES;
            let (mut even, mut odd) = ([_mm256_setzero_ps(); N], [_mm256_setzero_ps(); N]);
            let at = |b: usize| row.as_ptr().add(b * BYTES);
            let mut b = 0;
            while b + 1 < blocks {
                q4_1_step::<D, N>(at(b), b, xs, &mut even);
                q4_1_step::<D, N>(at(b + 1), b + 1, xs, &mut odd);
                b += 2;
            }
            if b < blocks {
                q4_1_step::<D, N>(at(b), b, xs, &mut even);
            }
            // A loop, not `array::from_fn`: its closure would not inherit the target
            // features, and every intrinsic in it would become a call.
            let mut sums = [0f32; N];
            for (r, sum) in sums.iter_mut().enumerate() {
                *sum = hsum(_mm256_add_ps(even[r], odd[r])) + q4_1_offsets(row, xs[r]);
            }
            sums
        }
    }

    /// Block `b` of a Q8_0 row times block `b` of `N` activation rows. The sign trick (`|w|`
    /// times `x` with w's sign) keeps the bytes in the unsigned x signed form of
    /// [`ByteDot`]; activations are in -127..=127, so negating them never overflows.
    #[inline(always)]
    unsafe fn q8_0_step<D: ByteDot, const N: usize>(
        block: *const u8,
        b: usize,
        xs: &[&[Q8Block]; N],
        acc: &mut [__m256; N],
    ) {
        unsafe {
            let d = q8_0_scale(block);
            let w = _mm256_loadu_si256(block.add(2).cast());
            let magnitude = _mm256_sign_epi8(w, w);
            for r in 0..N {
                let x = xs[r].get_unchecked(b);
                let xq = _mm256_loadu_si256(x.qs.as_ptr().cast());
                let lanes = _mm256_cvtepi32_ps(D::dot(magnitude, _mm256_sign_epi8(xq, w)));
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * x.d), lanes, acc[r]);
            }
        }
    }

    /// Q8_0 weights times `N` activation rows.
    #[inline(always)]
    unsafe fn q8_0<D: ByteDot, const N: usize>(row: &[u8], xs: &[&[Q8Block]; N]) -> [f32; N] {
        const BYTES: usize = WeightFormat::Q8_0.block_bytes();
        unsafe {
            let blocks = row.len() / BYTES;
            let (mut even, mut odd) = ([_mm256_setzero_ps(); N], [_mm256_setzero_ps(); N]);
            let at = |b: usize| row.as_ptr().add(b * BYTES);
            let mut b = 0;
            while b + 1 < blocks {
                q8_0_step::<D, N>(at(b), b, xs, &mut even);
                q8_0_step::<D, N>(at(b + 1), b + 1, xs, &mut odd);
                b += 2;
            }
            if b < blocks {
                q8_0_step::<D, N>(at(b), b, xs, &mut even);
            }
            let mut sums = [0f32; N];
            for (r, sum) in sums.iter_mut().enumerate() {
                *sum = hsum(_mm256_add_ps(even[r], odd[r]));
            }
            sums
        }
    }

    /// Two blocks' 8-lane accumulators in one register: even blocks in the low half, odd
    /// blocks in the high half, exactly the two accumulator sets of the 256-bit kernels.
    #[inline(always)]
    unsafe fn halves(acc: __m512) -> (__m256, __m256) {
        unsafe {
            let high = _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc));
            (_mm512_castps512_ps256(acc), _mm256_castpd_ps(high))
        }
    }

    /// `[a; 8]` in the low half, `[b; 8]` in the high half.
    #[inline(always)]
    unsafe fn pair_scale(a: f32, b: f32) -> __m512 {
        unsafe { _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(a), _mm512_set1_ps(b)) }
    }

    /// Two activation blocks' quants in one register.
    #[inline(always)]
    unsafe fn pair_quants(even: &Q8Block, odd: &Q8Block) -> __m512i {
        unsafe {
            let low = _mm512_castsi256_si512(_mm256_loadu_si256(even.qs.as_ptr().cast()));
            _mm512_inserti64x4::<1>(low, _mm256_loadu_si256(odd.qs.as_ptr().cast()))
        }
    }

    /// [`q4_1`] two blocks per instruction on 512 bits; the same numbers.
    #[inline(always)]
    unsafe fn q4_1_wide<D: ByteDot, const N: usize>(row: &[u8], xs: &[&[Q8Block]; N]) -> [f32; N] {
        const BYTES: usize = WeightFormat::Q4_1.block_bytes();
        unsafe {
            let blocks = row.len() / BYTES;
            let mut acc = [_mm512_setzero_ps(); N];
            let mut b = 0;
            while b + 1 < blocks {
                let even = row.as_ptr().add(b * BYTES);
                let odd = even.add(BYTES);
                let ((de, _), (d_o, _)) = (q4_1_scales(even), q4_1_scales(odd));
                // [even, odd] quants -> [lo_even, hi_even, lo_odd, hi_odd] (128-bit lanes)
                let (qe, qo) = (q4_1_quants(even), q4_1_quants(odd));
                let quants = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(qe), qo);
                for r in 0..N {
                    let (xe, xo) = (xs[r].get_unchecked(b), xs[r].get_unchecked(b + 1));
                    let dot =
                        _mm512_dpbusd_epi32(_mm512_setzero_si512(), quants, pair_quants(xe, xo));
                    let scale = pair_scale(de * xe.d, d_o * xo.d);
                    acc[r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(dot), acc[r]);
                }
                b += 2;
            }
            let mut even = [_mm256_setzero_ps(); N];
            let mut odd = [_mm256_setzero_ps(); N];
            for r in 0..N {
                (even[r], odd[r]) = halves(acc[r]);
            }
            if b < blocks {
                q4_1_step::<D, N>(row.as_ptr().add(b * BYTES), b, xs, &mut even);
            }
            // A loop, not `array::from_fn`: its closure would not inherit the target
            // features, and every intrinsic in it would become a call.
            let mut sums = [0f32; N];
            for (r, sum) in sums.iter_mut().enumerate() {
                *sum = hsum(_mm256_add_ps(even[r], odd[r])) + q4_1_offsets(row, xs[r]);
            }
            sums
        }
    }
}
