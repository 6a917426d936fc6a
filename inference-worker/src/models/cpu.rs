//! CPU building blocks of the hand-written model passes (the char-transformer's training
//! step, the BERT embedding forward): strided matrix products through `gemm` (or an AVX-512
//! kernel where the CPU has one, and an AMX one for packed weights where it has AMX-BF16)
//! split in one band of rows per thread with a fused epilogue,
//! row loops compiled for AVX-512 or AVX2 where the CPU has them, layer norm and activations.

use rayon::prelude::*;

/// Rows per parallel task in a loop over `rows` rows: one band per thread, as few tasks as
/// can keep the threads busy (the work per row is even).
pub(crate) fn band(rows: usize) -> usize {
    rows.div_ceil(rayon::current_num_threads().max(1)).max(1)
}

/// Defines `fn $name`, which runs `$body` compiled for AVX-512F or for AVX2 and FMA when
/// the CPU has them (the binary itself targets any x86-64) and the portable build otherwise.
/// `$body` must be `#[inline(always)]` and free of closures, which would not inherit the
/// features. The results agree up to rounding, and are always the same on one machine.
macro_rules! with_simd {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $body:ident) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn wide($($arg: $ty),*) {
                    $body($($arg),*)
                }
                // SAFETY: the CPU has the features `wide` is compiled for.
                return unsafe { wide($($arg),*) };
            }
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($arg: $ty),*) {
                    $body($($arg),*)
                }
                // SAFETY: the CPU has the features `fast` is compiled for.
                return unsafe { fast($($arg),*) };
            }
            $body($($arg),*)
        }
    };
}

pub(crate) use with_simd;

/// A matrix inside a slice: element `(r, c)` is at `r * row_stride + c * col_stride`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct View {
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl View {
    /// A row-major `rows x cols` matrix with rows `row_stride` apart.
    pub(crate) fn rows(rows: usize, cols: usize, row_stride: usize) -> View {
        View {
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    pub(crate) fn t(self) -> View {
        View {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// The elements the view spans; panics when they are not all inside `len`.
    fn check(self, len: usize) {
        let last =
            (self.rows.max(1) - 1) * self.row_stride + (self.cols.max(1) - 1) * self.col_stride;
        assert!(
            self.rows == 0 || self.cols == 0 || last < len,
            "matrix view out of bounds"
        );
    }
}

/// Products smaller than this (in multiply-adds) go to `gemm`, whose packing costs less.
#[cfg(target_arch = "x86_64")]
const AVX512_MIN_WORK: usize = 1 << 15;

/// Whether products run on the AVX-512 kernel: when the CPU has AVX-512F, unless
/// `AIGC_NO_AVX512=1` (for benchmarking the two side by side).
#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    static USE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USE.get_or_init(|| super::sgemm_avx512::available() && !env_flag("AIGC_NO_AVX512"))
}

/// Whether weights are packed for the AMX kernel: when the CPU has AMX-BF16, unless
/// `AIGC_NO_AMX=1` (for benchmarking against the f32 kernels).
#[cfg(target_arch = "x86_64")]
fn amx() -> bool {
    static USE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USE.get_or_init(|| super::sgemm_amx::available() && !env_flag("AIGC_NO_AMX"))
}

/// Whether the variable `name` is set to something other than empty or `0`.
#[cfg(target_arch = "x86_64")]
fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `dst = scale * lhs @ rhs` through `gemm`, or an AVX-512 kernel where the CPU has one.
/// `parallel` splits the rows of the product over rayon's threads; the inner dimension is
/// never split.
pub(crate) fn matmul(
    dst: (&mut [f32], View),
    lhs: (&[f32], View),
    rhs: (&[f32], View),
    scale: f32,
    parallel: bool,
) {
    matmul_then(dst, lhs, rhs, scale, parallel, &|_, _| {});
}

/// [`matmul`], then `epilogue(first_row, rows)` on each band of rows of `dst` right after
/// its product, while it is in cache.
pub(crate) fn matmul_then(
    dst: (&mut [f32], View),
    lhs: (&[f32], View),
    (rhs, rhs_view): (&[f32], View),
    scale: f32,
    parallel: bool,
    epilogue: &(dyn Fn(usize, &mut [f32]) + Sync),
) {
    rhs_view.check(rhs.len());
    product(
        dst,
        lhs,
        Rhs::View(rhs, rhs_view),
        scale,
        parallel,
        epilogue,
    );
}

/// The right-hand side of a product.
#[derive(Clone, Copy)]
pub(crate) enum Rhs<'a> {
    /// A view, checked to lie inside its slice.
    View(&'a [f32], View),
    /// A matrix packed for the AVX-512 kernel.
    #[cfg(target_arch = "x86_64")]
    Packed(&'a super::sgemm_avx512::Packed),
    /// A matrix split and packed for the AMX kernel.
    #[cfg(target_arch = "x86_64")]
    Tiles(&'a super::sgemm_amx::Packed),
}

impl Rhs<'_> {
    fn shape(self) -> (usize, usize) {
        match self {
            Rhs::View(_, view) => (view.rows, view.cols),
            #[cfg(target_arch = "x86_64")]
            Rhs::Packed(packed) => packed.shape(),
            #[cfg(target_arch = "x86_64")]
            Rhs::Tiles(packed) => packed.shape(),
        }
    }
}

fn product(
    (dst, dst_view): (&mut [f32], View),
    (lhs, lhs_view): (&[f32], View),
    rhs: Rhs<'_>,
    scale: f32,
    parallel: bool,
    epilogue: &(dyn Fn(usize, &mut [f32]) + Sync),
) {
    let (m, k, n) = (lhs_view.rows, lhs_view.cols, dst_view.cols);
    assert!(
        rhs.shape() == (k, n) && dst_view.rows == m,
        "matrix shapes do not match"
    );
    dst_view.check(dst.len());
    lhs_view.check(lhs.len());
    let threads = rayon::current_num_threads();
    if parallel && threads > 1 && m >= 2 * threads && dst_view.col_stride == 1 {
        // One band of rows of the result (and of `lhs`) per thread: at these sizes finer
        // splitting, like `gemm`'s own, costs more in waiting than it gains.
        let band = m.div_ceil(threads);
        let len = (m - 1) * dst_view.row_stride + n;
        dst[..len]
            .par_chunks_mut(band * dst_view.row_stride)
            .enumerate()
            .for_each(|(i, dst)| {
                let r0 = i * band;
                let rows = band.min(m - r0);
                let lhs = &lhs[r0 * lhs_view.row_stride..];
                let views = (View { rows, ..dst_view }, View { rows, ..lhs_view });
                product(
                    (dst, views.0),
                    (lhs, views.1),
                    rhs,
                    scale,
                    false,
                    &|r, rows| epilogue(r0 + r, rows),
                );
            });
        return;
    }
    let (rhs, rhs_view) = match rhs {
        Rhs::View(rhs, view) => (rhs, view),
        #[cfg(target_arch = "x86_64")]
        Rhs::Packed(packed) => {
            // Only `Weight::new` packs, and only where the kernel runs.
            assert!(dst_view.col_stride == 1 && avx512());
            // SAFETY: the views were checked, and the CPU has AVX-512F.
            unsafe {
                super::sgemm_avx512::matmul_packed((dst, dst_view), (lhs, lhs_view), packed, scale)
            };
            epilogue(0, dst);
            return;
        }
        #[cfg(target_arch = "x86_64")]
        Rhs::Tiles(packed) => {
            // Only `Weight::new` packs, and only where the kernel runs.
            assert!(dst_view.col_stride == 1 && amx());
            // SAFETY: the views were checked, and the CPU has AMX-BF16.
            unsafe {
                super::sgemm_amx::matmul_packed((dst, dst_view), (lhs, lhs_view), packed, scale)
            };
            epilogue(0, dst);
            return;
        }
    };
    #[cfg(target_arch = "x86_64")]
    if dst_view.col_stride == 1 && m * n * k >= AVX512_MIN_WORK && avx512() {
        // SAFETY: as below, and the CPU has AVX-512F.
        unsafe {
            super::sgemm_avx512::matmul((dst, dst_view), (lhs, lhs_view), (rhs, rhs_view), scale)
        };
        epilogue(0, dst);
        return;
    }
    // SAFETY: every view was checked to lie inside its slice, `dst` is borrowed mutably and
    // so overlaps neither source.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_view.col_stride as isize,
            dst_view.row_stride as isize,
            false,
            lhs.as_ptr(),
            lhs_view.col_stride as isize,
            lhs_view.row_stride as isize,
            rhs.as_ptr(),
            rhs_view.col_stride as isize,
            rhs_view.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    epilogue(0, dst);
}

/// A layer's weight matrix for [`linear`], `n x k` (outputs by inputs): packed once for
/// the fastest kernel the CPU runs, AMX then AVX-512 (and then not kept as rows).
pub(crate) enum Weight {
    Rows {
        values: Vec<f32>,
        n: usize,
        k: usize,
    },
    #[cfg(target_arch = "x86_64")]
    Packed(super::sgemm_avx512::Packed),
    #[cfg(target_arch = "x86_64")]
    Tiles(super::sgemm_amx::Packed),
}

impl Weight {
    pub(crate) fn new(values: Vec<f32>, n: usize, k: usize) -> Weight {
        assert_eq!(values.len(), n * k, "a weight's values must fill its shape");
        #[cfg(target_arch = "x86_64")]
        if amx() {
            let view = View::rows(n, k, k).t();
            return Weight::Tiles(super::sgemm_amx::Packed::new(&values, view));
        }
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            let view = View::rows(n, k, k).t();
            return Weight::Packed(super::sgemm_avx512::Packed::new(&values, view));
        }
        Weight::Rows { values, n, k }
    }
}

/// The weights [`linear`] multiplies by: `n x k` rows in a slice, or a [`Weight`].
pub(crate) trait LinearWeight {
    /// The weight as the `k x n` right-hand side of a product.
    fn rhs(&self, n: usize, k: usize) -> Rhs<'_>;
}

impl LinearWeight for [f32] {
    fn rhs(&self, n: usize, k: usize) -> Rhs<'_> {
        let view = View::rows(n, k, k);
        view.check(self.len());
        Rhs::View(self, view.t())
    }
}

impl LinearWeight for Weight {
    /// The shape is the weight's own; the product checks it against `n` and `k`.
    fn rhs(&self, _n: usize, _k: usize) -> Rhs<'_> {
        match self {
            Weight::Rows { values, n, k } => Rhs::View(values, View::rows(*n, *k, *k).t()),
            #[cfg(target_arch = "x86_64")]
            Weight::Packed(packed) => Rhs::Packed(packed),
            #[cfg(target_arch = "x86_64")]
            Weight::Tiles(packed) => Rhs::Tiles(packed),
        }
    }
}

/// `out[m, n] = x[m, k] @ w[n, k]^T (+ bias[n]) (+ residual[m, n])`, then `activation`.
/// The additions run on each band of rows right after its product, while it is in cache.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear<W: LinearWeight + ?Sized>(
    out: &mut [f32],
    x: &[f32],
    w: &W,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    activation: Activation,
    m: usize,
    k: usize,
    n: usize,
) {
    let epilogue = |r0: usize, rows: &mut [f32]| {
        for (i, row) in rows.chunks_exact_mut(n).enumerate() {
            if let Some(b) = bias {
                for (o, b) in row.iter_mut().zip(b) {
                    *o += b;
                }
            }
            if let Some(res) = residual {
                let r = r0 + i;
                for (o, x) in row.iter_mut().zip(&res[r * n..(r + 1) * n]) {
                    *o += x;
                }
            }
            match activation {
                Activation::None => {}
                Activation::Relu => {
                    for o in row.iter_mut() {
                        *o = o.max(0.0);
                    }
                }
                Activation::Gelu => gelu(row),
            }
        }
    };
    product(
        (out, View::rows(m, n, n)),
        (x, View::rows(m, k, k)),
        w.rhs(n, k),
        1.0,
        true,
        &epilogue,
    );
}

/// Layer norm (weight, bias) of each `d`-wide row; keeps each row's mean and reciprocal
/// deviation.
pub(crate) fn layer_norm(
    x: &[f32],
    out: &mut [f32],
    stats: &mut [(f32, f32)],
    (w, b): (&[f32], &[f32]),
    d: usize,
    eps: f32,
) {
    let band = band(stats.len());
    out.par_chunks_mut(d * band)
        .zip(stats.par_chunks_mut(band))
        .zip(x.par_chunks(d * band))
        .for_each(|((out, stats), x)| {
            for ((o, s), x) in out.chunks_exact_mut(d).zip(stats).zip(x.chunks_exact(d)) {
                let mean = x.iter().sum::<f32>() / d as f32;
                let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
                let rstd = 1.0 / (var + eps).sqrt();
                for (((o, x), w), b) in o.iter_mut().zip(x).zip(w).zip(b) {
                    *o = (x - mean) * rstd * w + b;
                }
                *s = (mean, rstd);
            }
        });
}

/// `sum(a * b)` in eight independent lanes, so it vectorises.
#[inline(always)]
pub(crate) fn lane_sum(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let mut tail = 0.0f32;
    for (a, b) in a_chunks.remainder().iter().zip(b_chunks.remainder()) {
        tail += a * b;
    }
    for (a, b) in a_chunks.zip(b_chunks) {
        for l in 0..8 {
            lanes[l] += a[l] * b[l];
        }
    }
    let mut sum = tail;
    for l in lanes {
        sum += l;
    }
    sum
}

with_simd! {
    /// Softmax in place of each `width`-wide row of `x`; with `causal`, row `i` over its
    /// columns `0..=i` only, zero after them.
    pub(crate) fn softmax_rows(x: &mut [f32], width: usize, causal: bool) => softmax_rows_body
}

#[inline(always)]
fn softmax_rows_body(x: &mut [f32], width: usize, causal: bool) {
    for (i, row) in x.chunks_exact_mut(width).enumerate() {
        let (row, masked) = row.split_at_mut(if causal { i + 1 } else { width });
        masked.fill(0.0);
        let mut max = f32::NEG_INFINITY;
        for &v in row.iter() {
            max = max.max(v);
        }
        let mut sum = 0.0f32;
        for v in row.iter_mut() {
            *v = exp(*v - max);
            sum += *v;
        }
        let inv = 1.0 / sum;
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

/// The activation [`linear`] applies to its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Activation {
    None,
    Relu,
    /// The exact GELU, `x * (1 + erf(x / sqrt(2))) / 2`, as BERT uses.
    Gelu,
}

with_simd! {
    /// Exact GELU in place, through [`erf`].
    pub(crate) fn gelu(x: &mut [f32]) => gelu_body
}

#[inline(always)]
fn gelu_body(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// `e^x` from arithmetic only, so loops over it vectorise (a libm call does not): `2^n * e^r`
/// with `n = round(x / ln 2)` and a degree-6 polynomial for `e^r`, `|r| <= ln 2 / 2`. Relative
/// error below 3e-7; 0 at and below -87, and it saturates at `e^88.3` (about 2e38).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.3);
    let n = (x * std::f32::consts::LOG2_E).round();
    // ln 2 in two parts, so r keeps its low bits.
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x <= -87.0 { 0.0 } else { p * scale }
}

/// The error function from arithmetic only (Abramowitz and Stegun 7.1.26, absolute error
/// below 1.5e-7), so loops over it vectorise.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_72 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-a * a);
    if x < 0.0 { -y } else { y }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_match_libm() {
        for i in -2000..=2000 {
            let x = i as f32 / 100.0;
            let (got, want) = (exp(x), x.exp());
            assert!(
                (got - want).abs() <= 3e-7 * want,
                "exp({x}) = {got}, libm {want}"
            );
            let (got, want) = (erf(x), libm_erf(x as f64));
            assert!(
                (got as f64 - want).abs() < 3e-7,
                "erf({x}) = {got}, want {want}"
            );
        }
        assert_eq!(exp(-100.0), 0.0);
        assert!(exp(100.0) > 1e38);
    }

    /// erf by its Taylor series (small |x|) or continued fraction (large), in f64.
    fn libm_erf(x: f64) -> f64 {
        if x.abs() < 3.0 {
            let mut term = x;
            let mut sum = x;
            for n in 1..200 {
                term *= -x * x / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let a = x.abs();
            let mut f = 0.0;
            for n in (1..60).rev() {
                f = (n as f64 / 2.0) / (a + f);
            }
            let erfc = (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f);
            (1.0 - erfc).copysign(x)
        }
    }
}
