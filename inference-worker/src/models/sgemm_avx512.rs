//! `dst = scale * lhs @ rhs` in f32 with AVX-512F, for CPUs with full-width 512-bit FMA
//! units, where it does up to twice the work per cycle of `gemm`'s AVX2 kernel (its AVX-512
//! kernel needs a nightly compiler).
//!
//! `rhs` is packed in `KC x 32` column panels (zero-padded); `lhs` is read in place, eight
//! rows at a time, whatever its strides; an `8 x 32` kernel keeps its tile of the product in
//! 16 registers over the whole `KC` and writes it with masked stores. Single-threaded:
//! callers split the rows over threads.

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::sync::OnceLock;

use super::cpu::View;

/// Rows of `lhs` per kernel call.
const MR: usize = 8;
/// Columns of `rhs` per kernel call (two 16-lane registers).
const NR: usize = 32;
/// Depth of one packed block: a `KC x NR` panel of `rhs` (32 KiB) stays in L1.
const KC: usize = 256;
/// Rows of `lhs` run against one packed block before the next (96 KiB of `lhs`, in L2).
const MC: usize = 96;
/// Columns of `rhs` packed at once (512 KiB, in L2).
const NC: usize = 512;

/// Whether this CPU runs [`matmul`].
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| is_x86_feature_detected!("avx512f"))
}

thread_local! {
    /// The packed block of `rhs`, kept per thread between calls.
    static PACKED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `dst = scale * lhs @ rhs`.
///
/// # Safety
/// The CPU has AVX-512F ([`available`]); every view lies inside its slice; `dst`'s columns
/// are contiguous (`col_stride == 1`) and the shapes agree (`lhs` is `m x k`, `rhs` is
/// `k x n`, `dst` is `m x n`).
pub(crate) unsafe fn matmul(
    dst: (&mut [f32], View),
    lhs: (&[f32], View),
    (rhs, rv): (&[f32], View),
    scale: f32,
) {
    assert!(
        rv.rows == lhs.1.cols && rv.cols == dst.1.cols,
        "matrix shapes do not match"
    );
    // SAFETY: passed on from the caller.
    unsafe { product(dst, lhs, Source::View(rhs, rv), scale) }
}

/// [`matmul`] with `rhs` packed beforehand, for weights used in many products.
///
/// # Safety
/// As for [`matmul`], with `rhs`'s shape from [`Packed::shape`].
pub(crate) unsafe fn matmul_packed(
    dst: (&mut [f32], View),
    lhs: (&[f32], View),
    rhs: &Packed,
    scale: f32,
) {
    assert!(
        rhs.shape() == (lhs.1.cols, dst.1.cols),
        "matrix shapes do not match"
    );
    // SAFETY: passed on from the caller.
    unsafe { product(dst, lhs, Source::Packed(rhs), scale) }
}

/// A `k x n` matrix in the kernel's layout: for each block of `NC` columns, each block of
/// `KC` rows as [`pack_rhs`] lays it out.
pub(crate) struct Packed {
    k: usize,
    n: usize,
    data: Vec<f32>,
}

impl Packed {
    pub(crate) fn new(rhs: &[f32], rv: View) -> Packed {
        let (k, n) = (rv.rows, rv.cols);
        let mut data = Vec::with_capacity(n.div_ceil(NR) * NR * k);
        let mut block = Vec::new();
        for jc in (0..n).step_by(NC) {
            for pc in (0..k).step_by(KC) {
                pack_rhs(&mut block, rhs, rv, pc, KC.min(k - pc), jc, NC.min(n - jc));
                data.extend_from_slice(&block);
            }
        }
        Packed { k, n, data }
    }

    /// Rows and columns of the matrix.
    pub(crate) fn shape(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// The block starting at row `pc` and column `jc`: every earlier block of columns is
    /// `NC` (a multiple of `NR`) wide, so unpadded.
    fn block(&self, jc: usize, pc: usize) -> &[f32] {
        let padded = NC.min(self.n - jc).div_ceil(NR) * NR;
        let kc = KC.min(self.k - pc);
        &self.data[jc * self.k + pc * padded..][..padded * kc]
    }
}

#[derive(Clone, Copy)]
enum Source<'a> {
    View(&'a [f32], View),
    Packed(&'a Packed),
}

/// # Safety
/// As for [`matmul`].
unsafe fn product(
    (dst, dv): (&mut [f32], View),
    (lhs, lv): (&[f32], View),
    rhs: Source<'_>,
    scale: f32,
) {
    let (m, k) = (lv.rows, lv.cols);
    let n = dv.cols;
    assert!(
        dv.col_stride == 1 && dv.rows == m,
        "the kernel writes rows of contiguous columns"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for row in dst.chunks_mut(dv.row_stride).take(m) {
            row[..n].fill(0.0);
        }
        return;
    }
    PACKED.with(|packed| {
        let scratch = &mut *packed.borrow_mut();
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            let panels = nc.div_ceil(NR);
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                let pb: &[f32] = match rhs {
                    Source::View(rhs, rv) => {
                        pack_rhs(scratch, rhs, rv, pc, kc, jc, nc);
                        scratch
                    }
                    Source::Packed(packed) => packed.block(jc, pc),
                };
                for ic in (0..m).step_by(MC) {
                    let mc = MC.min(m - ic);
                    for jr in 0..panels {
                        let cols = (nc - jr * NR).min(NR);
                        let b = &pb[jr * kc * NR..][..kc * NR];
                        for i0 in (ic..ic + mc).step_by(MR) {
                            let rows = (ic + mc - i0).min(MR);
                            let a = &lhs[i0 * lv.row_stride + pc * lv.col_stride..];
                            let first = i0 * dv.row_stride + jc + jr * NR;
                            let last = first + (rows - 1) * dv.row_stride + cols;
                            // SAFETY: the caller vouches for AVX-512F; the kernel checks its
                            // reads of `a`, and the tile lies in `dst[first..last]`.
                            unsafe {
                                kernel(
                                    (a, lv.row_stride, lv.col_stride),
                                    kc,
                                    b,
                                    (&mut dst[first..last], dv.row_stride),
                                    (rows, cols),
                                    scale,
                                    pc > 0,
                                )
                            };
                        }
                    }
                }
            }
        }
    });
}

/// `rhs[pc..pc+kc, jc..jc+nc]` as `NR`-column panels, each `kc` rows of `NR` values, the
/// columns past `nc` zero.
fn pack_rhs(pb: &mut Vec<f32>, rhs: &[f32], rv: View, pc: usize, kc: usize, jc: usize, nc: usize) {
    let panels = nc.div_ceil(NR);
    pb.clear();
    pb.resize(panels * kc * NR, 0.0);
    for (jr, panel) in pb.chunks_exact_mut(kc * NR).enumerate() {
        let cols = (nc - jr * NR).min(NR);
        let col0 = jc + jr * NR;
        if rv.col_stride == 1 {
            for (p, out) in panel.chunks_exact_mut(NR).enumerate() {
                let start = (pc + p) * rv.row_stride + col0;
                out[..cols].copy_from_slice(&rhs[start..start + cols]);
            }
        } else if rv.row_stride == 1 {
            // A transposed matrix (weights stored `n x k`): each column is a run in memory.
            for j in 0..cols {
                let start = (col0 + j) * rv.col_stride + pc;
                for (out, &v) in panel.chunks_exact_mut(NR).zip(&rhs[start..start + kc]) {
                    out[j] = v;
                }
            }
        } else {
            for (p, out) in panel.chunks_exact_mut(NR).enumerate() {
                for (j, o) in out[..cols].iter_mut().enumerate() {
                    *o = rhs[(pc + p) * rv.row_stride + (col0 + j) * rv.col_stride];
                }
            }
        }
    }
}

/// One `MR x NR` tile: `c = scale * a @ b`, or `c += scale * a @ b` when `add`, for the
/// tile's first `rows` rows and `cols` columns. Element `(i, p)` of `a` is at
/// `i * a_rows + p * a_depth`; `b` is a packed panel; `c`'s rows are `ldc` apart.
#[target_feature(enable = "avx512f")]
fn kernel(
    (a, a_rows, a_depth): (&[f32], usize, usize),
    kc: usize,
    b: &[f32],
    (c, ldc): (&mut [f32], usize),
    (rows, cols): (usize, usize),
    scale: f32,
    add: bool,
) {
    assert!(rows > 0 && rows <= MR && cols <= NR && kc > 0 && b.len() >= kc * NR);
    assert!((rows - 1) * a_rows + (kc - 1) * a_depth < a.len());
    assert!(c.len() >= (rows - 1) * ldc + cols);
    // Rows past `rows` repeat the last one; their results are never stored.
    const { assert!(MR == 8) };
    let row = |i: usize| a[i.min(rows - 1) * a_rows..].as_ptr();
    let a_row = [
        row(0),
        row(1),
        row(2),
        row(3),
        row(4),
        row(5),
        row(6),
        row(7),
    ];
    let mut acc = [_mm512_setzero_ps(); 2 * MR];
    let b = b.as_ptr();
    for p in 0..kc {
        // SAFETY: `p < kc`: the reads of `a` are within the bound asserted above, and `b`
        // holds `kc` rows of `NR` values.
        unsafe {
            let b0 = _mm512_loadu_ps(b.add(p * NR));
            let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
            for i in 0..MR {
                let ai = _mm512_set1_ps(*a_row[i].add(p * a_depth));
                acc[2 * i] = _mm512_fmadd_ps(ai, b0, acc[2 * i]);
                acc[2 * i + 1] = _mm512_fmadd_ps(ai, b1, acc[2 * i + 1]);
            }
        }
    }
    let lanes = |n: usize| -> __mmask16 { ((1u32 << n.min(16)) - 1) as __mmask16 };
    let (mask0, mask1) = (lanes(cols), lanes(cols.saturating_sub(16)));
    let s = _mm512_set1_ps(scale);
    let c = c.as_mut_ptr();
    // Constant indices into `acc` (the loop unrolls), so the tile stays in registers.
    for i in 0..MR {
        if i < rows {
            // SAFETY: row `i < rows` spans `c[i * ldc..i * ldc + cols]` (asserted); masked
            // lanes past `cols` are neither read nor written.
            unsafe {
                let row = c.add(i * ldc);
                let mut v0 = _mm512_mul_ps(acc[2 * i], s);
                let mut v1 = _mm512_mul_ps(acc[2 * i + 1], s);
                if add {
                    v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(mask0, row));
                    v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(mask1, row.wrapping_add(16)));
                }
                _mm512_mask_storeu_ps(row, mask0, v0);
                _mm512_mask_storeu_ps(row.wrapping_add(16), mask1, v1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product in f64, element by element.
    fn reference(lhs: &[f32], lv: View, rhs: &[f32], rv: View, scale: f32) -> Vec<f64> {
        let (m, k, n) = (lv.rows, lv.cols, rv.cols);
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut sum = 0.0f64;
                for p in 0..k {
                    sum += lhs[i * lv.row_stride + p * lv.col_stride] as f64
                        * rhs[p * rv.row_stride + j * rv.col_stride] as f64;
                }
                out[i * n + j] = sum * scale as f64;
            }
        }
        out
    }

    #[test]
    fn products_of_every_edge_shape_and_layout_match_f64() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512F");
            return;
        }
        let mut rng = fastrand::Rng::with_seed(3);
        // Shapes around the tile and block edges, with plain and transposed operands and a
        // destination wider than the product.
        for &(m, k, n) in &[
            (1, 1, 1),
            (7, 3, 31),
            (8, 256, 32),
            (9, 257, 33),
            (97, 300, 70),
            (130, 520, 600),
            (5, 0, 4),
        ] {
            for (lhs_t, rhs_t) in [(false, false), (true, false), (false, true), (true, true)] {
                let lhs: Vec<f32> = (0..m * k).map(|_| rng.f32() - 0.5).collect();
                let rhs: Vec<f32> = (0..k * n).map(|_| rng.f32() - 0.5).collect();
                let lv = if lhs_t {
                    View::rows(k, m, m).t()
                } else {
                    View::rows(m, k, k)
                };
                let rv = if rhs_t {
                    View::rows(n, k, k).t()
                } else {
                    View::rows(k, n, n)
                };
                let stride = n + 3;
                let mut dst = vec![f32::NAN; m * stride];
                // SAFETY: checked above; the views are built to fit their slices.
                unsafe {
                    matmul(
                        (&mut dst, View::rows(m, n, stride)),
                        (&lhs, lv),
                        (&rhs, rv),
                        0.5,
                    )
                };
                let want = reference(&lhs, lv, &rhs, rv, 0.5);
                let mut from_packed = vec![f32::NAN; m * stride];
                // SAFETY: as above.
                unsafe {
                    matmul_packed(
                        (&mut from_packed, View::rows(m, n, stride)),
                        (&lhs, lv),
                        &Packed::new(&rhs, rv),
                        0.5,
                    )
                };
                // NaN padding compares unequal: compare the bits.
                assert!(
                    dst.iter()
                        .zip(&from_packed)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{m}x{k}x{n}: packed beforehand or not, the product is the same"
                );
                for i in 0..m {
                    for j in 0..n {
                        let got = dst[i * stride + j] as f64;
                        let w = want[i * n + j];
                        assert!(
                            (got - w).abs() <= 1e-5 * (1.0 + k as f64).sqrt(),
                            "{m}x{k}x{n} (lhs_t {lhs_t}, rhs_t {rhs_t}) at ({i}, {j}): {got} vs {w}"
                        );
                    }
                    // The padding past each row is untouched.
                    assert!(
                        dst[i * stride + n..(i + 1) * stride]
                            .iter()
                            .all(|v| v.is_nan())
                    );
                }
            }
        }
    }
}
