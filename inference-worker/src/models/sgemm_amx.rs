//! `dst = scale * lhs @ rhs` for f32 matrices on AMX tiles (Intel Xeon since Sapphire
//! Rapids), several times the multiply-adds per cycle of the AVX-512 kernel.
//!
//! The tiles multiply bf16 (8 significant bits) into f32 sums. To come close to f32's
//! accuracy each value `x` is split as `hi = bf16(x)` and `lo = bf16(x - hi)`, which
//! together hold `x` to within `2^-16` of its size, and the product is `hi·hi + lo·hi +
//! hi·lo`: three tile products into the same sums. The terms left out (`lo·lo` and what
//! `hi + lo` misses) are at most about `3 · 2^-16` of each product term's size and of
//! either sign, so in long sums they mostly cancel: all-MiniLM-L6-v2's vectors come out
//! within 2.1e-6 of sentence-transformers' f32 ones.
//!
//! `rhs` is split and packed once ([`Packed`], for weights); `lhs` is split into a per-thread
//! buffer `MC` rows at a time. The kernel keeps a `32 x 32` block of the product in four
//! tiles over the whole depth and copies it out through a small buffer. Single-threaded:
//! callers split the rows over threads.
//!
//! The tile instructions are written as inline assembly (their intrinsics are not stable
//! Rust); the compiler itself never uses the tile registers, so they hold their values
//! from one `asm!` to the next.

use std::arch::asm;
use std::cell::RefCell;
use std::sync::OnceLock;

use super::cpu::View;

/// Rows of one tile, and of `lhs` per tile.
const TILE_ROWS: usize = 16;
/// bf16 values in one tile row: the depth one tile product covers.
const TILE_DEPTH: usize = 32;
/// Columns of the product per tile (f32).
const TILE_COLS: usize = 16;
/// Rows and columns of the product per kernel call: two tiles each way.
const BLOCK: usize = 32;
/// Rows of `lhs` split at once: `MC * 2 * k * 2` bytes (768 KiB at `k = 1536`).
const MC: usize = 128;

/// Whether this CPU runs [`matmul_packed`]: it has AMX-TILE and AMX-BF16, the OS saves the
/// tile state, this process may use the tile registers (Linux asks each process to request
/// them), and a tile instruction runs without a fault in a child process (some virtual
/// machines advertise AMX and then trap it, which would kill the server).
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        // CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE; leaf 1: ECX bit 27 is
        // OSXSAVE (XGETBV may run).
        let leaf7 = __cpuid_count(7, 0);
        let has_amx = leaf7.edx & (1 << 22) != 0 && leaf7.edx & (1 << 24) != 0;
        let osxsave = __cpuid(1).ecx & (1 << 27) != 0;
        has_amx && osxsave && os_saves_tiles() && request_tiles() && tiles_run()
    })
}

/// Whether XCR0 has the tile configuration and tile data bits (17 and 18) set.
fn os_saves_tiles() -> bool {
    let (low, _high): (u32, u32);
    // SAFETY: XGETBV 0 reads XCR0; the caller checked OSXSAVE.
    unsafe {
        asm!("xgetbv", in("ecx") 0, out("eax") low, out("edx") _high,
             options(nomem, nostack, preserves_flags))
    };
    low & (0b11 << 17) == 0b11 << 17
}

/// Asks Linux for this process's permission to use the tile data registers (granted to all
/// its threads, and inherited by children).
#[cfg(target_os = "linux")]
fn request_tiles() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: the request takes two integers and changes nothing but the permission.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

/// Runs a tile instruction in a forked child and reports whether it exited normally.
#[cfg(target_os = "linux")]
fn tiles_run() -> bool {
    // SAFETY: the child runs only system calls and tile instructions, then `_exit`: nothing
    // that takes a lock another thread may have held at the fork.
    unsafe {
        match libc::fork() {
            -1 => false,
            0 => {
                // A trapped instruction should not leave a core file behind.
                libc::prctl(libc::PR_SET_DUMPABLE, 0);
                asm!("ldtilecfg [{}]", in(reg) &TILE_CONFIG, options(nostack, readonly));
                asm!("tilezero tmm0", "tilerelease", options(nostack, nomem));
                libc::_exit(0)
            }
            child => {
                let mut status = 0;
                libc::waitpid(child, &mut status, 0) == child
                    && libc::WIFEXITED(status)
                    && libc::WEXITSTATUS(status) == 0
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn request_tiles() -> bool {
    false
}

#[cfg(not(target_os = "linux"))]
fn tiles_run() -> bool {
    false
}

/// A `k x n` matrix split into bf16 halves and laid out as tiles: for each group of 16
/// columns, the `hi` halves then the `lo` halves, each as `k / 32` tiles of 16 rows. Row `r`
/// of a tile holds, for each of its 16 columns, the values at depth `2r` and `2r + 1` side
/// by side (the pairs the tile product multiplies). `k` is padded with zeros to a multiple
/// of 32 and `n` to a multiple of 32.
pub(crate) struct Packed {
    k: usize,
    n: usize,
    /// `k` rounded up to a multiple of `TILE_DEPTH`.
    depth: usize,
    data: Tiles,
}

impl Packed {
    pub(crate) fn new(rhs: &[f32], rv: View) -> Packed {
        let (k, n) = (rv.rows, rv.cols);
        let depth = k.div_ceil(TILE_DEPTH) * TILE_DEPTH;
        let groups = n.div_ceil(BLOCK) * BLOCK / TILE_COLS;
        let mut data = Tiles::zeroed(groups * 2 * depth * TILE_COLS);
        for (g, group) in data
            .as_mut_slice()
            .chunks_exact_mut(2 * depth * TILE_COLS)
            .enumerate()
        {
            let (hi, lo) = group.split_at_mut(depth * TILE_COLS);
            for c in 0..TILE_COLS.min(n.saturating_sub(g * TILE_COLS)) {
                let col = g * TILE_COLS + c;
                for p in 0..k {
                    let (h, l) = split(rhs[p * rv.row_stride + col * rv.col_stride]);
                    // Depth `p` is row `p / 2` of the tiles, slot `p % 2` of column `c`.
                    let at = (p / 2) * 2 * TILE_COLS + 2 * c + p % 2;
                    hi[at] = h;
                    lo[at] = l;
                }
            }
        }
        Packed { k, n, depth, data }
    }

    /// Rows and columns of the matrix.
    pub(crate) fn shape(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// The `hi` (`part` 0) or `lo` (1) tiles of the 16 columns of group `g`.
    fn tiles(&self, g: usize, part: usize) -> &[u16] {
        let len = self.depth * TILE_COLS;
        &self.data.as_slice()[(2 * g + part) * len..][..len]
    }
}

/// `x` as bf16 rounded to nearest, and the rest `x - hi` likewise (both NaN when `x` is;
/// infinite `hi` and NaN `lo` when `x` is infinite or rounds to infinity).
#[inline(always)]
fn split(x: f32) -> (u16, u16) {
    let hi = to_bf16(x);
    (hi, to_bf16(x - f32::from_bits((hi as u32) << 16)))
}

#[inline(always)]
fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    // Round to nearest, ties to even, on the 16 bits dropped (a carry out of the largest
    // finite values gives infinity, as it should); a NaN stays a quiet NaN.
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    if x.is_nan() {
        (bits >> 16) as u16 | 0x0040
    } else {
        rounded
    }
}

/// bf16 values in whole 64-byte lines: every tile row starts on a cache line (a row split
/// over two lines would cost two reads).
struct Tiles(Vec<Line>);

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u16; 32]);

impl Tiles {
    /// `len` zeros (a multiple of 32).
    fn zeroed(len: usize) -> Tiles {
        assert!(len.is_multiple_of(32), "tiles fill whole lines");
        Tiles(vec![Line([0; 32]); len / 32])
    }

    fn as_slice(&self) -> &[u16] {
        // SAFETY: a `Line` is 32 `u16`s with no padding (64 bytes, aligned to 64).
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast(), self.0.len() * 32) }
    }

    fn as_mut_slice(&mut self) -> &mut [u16] {
        // SAFETY: as in `as_slice`.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), self.0.len() * 32) }
    }
}

/// One block of the product, aligned like the tiles it is stored from.
#[repr(C, align(64))]
struct Block([f32; BLOCK * BLOCK]);

thread_local! {
    /// `MC` rows of `lhs`, split and laid out by [`split_rows`].
    static SPLIT: RefCell<Tiles> = const { RefCell::new(Tiles(Vec::new())) };
}

/// The tile shapes: palette 1, all eight tiles 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

const TILE_CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    bytes_per_row: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// `dst = scale * lhs @ rhs`.
///
/// # Safety
/// [`available`] is true; `lhs`'s view lies inside its slice; `dst`'s view lies inside its
/// slice with contiguous columns; the shapes agree (`lhs` is `m x k`, `dst` is `m x n`).
pub(crate) unsafe fn matmul_packed(
    (dst, dv): (&mut [f32], View),
    (lhs, lv): (&[f32], View),
    rhs: &Packed,
    scale: f32,
) {
    let (m, k, n) = (lv.rows, lv.cols, dv.cols);
    assert!(
        rhs.shape() == (k, n) && dv.rows == m && dv.col_stride == 1,
        "matrix shapes do not match"
    );
    if m == 0 || n == 0 {
        return;
    }
    let depth = rhs.depth;
    SPLIT.with(|split| {
        let split = &mut *split.borrow_mut();
        let len = MC.min(m).div_ceil(BLOCK) * BLOCK * 2 * depth;
        if split.0.len() * 32 < len {
            *split = Tiles::zeroed(len);
        }
        let split = split.as_mut_slice();
        // SAFETY: the caller vouches for the tiles; the configuration is valid.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &TILE_CONFIG, options(nostack, readonly)) };
        let mut block = Block([0.0; BLOCK * BLOCK]);
        for ic in (0..m).step_by(MC) {
            let mc = MC.min(m - ic);
            let rows = mc.div_ceil(BLOCK) * BLOCK;
            split_rows(&mut split[..rows * 2 * depth], lhs, lv, ic, mc, depth);
            for j0 in (0..n).step_by(BLOCK) {
                let g = j0 / TILE_COLS;
                let b = [
                    [rhs.tiles(g, 0), rhs.tiles(g + 1, 0)],
                    [rhs.tiles(g, 1), rhs.tiles(g + 1, 1)],
                ];
                for i0 in (0..mc).step_by(BLOCK) {
                    let group = |half: usize, part: usize| {
                        let start = ((i0 / TILE_ROWS + half) * 2 + part) * depth * TILE_ROWS;
                        &split[start..][..depth * TILE_ROWS]
                    };
                    let a = [[group(0, 0), group(1, 0)], [group(0, 1), group(1, 1)]];
                    // SAFETY: the tiles are configured; `a` and `b` span the whole depth.
                    unsafe { block_product(a, b, depth, &mut block.0) };
                    let cols = BLOCK.min(n - j0);
                    for (r, out) in block.0.chunks_exact(BLOCK).take(mc - i0).enumerate() {
                        let row = &mut dst[(ic + i0 + r) * dv.row_stride + j0..][..cols];
                        for (d, v) in row.iter_mut().zip(out) {
                            *d = scale * v;
                        }
                    }
                }
            }
        }
        // SAFETY: ends this thread's use of the tiles (so switching threads saves less).
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    });
}

/// Rows `ic..ic + mc` of `lhs`, split and laid out like [`Packed`]'s columns: for each
/// group of 16 rows, the `hi` then the `lo` halves, each as `depth / 32` tiles of 16 rows
/// of 32 values. The depth past `k` and the rows past `mc` (up to a multiple of `BLOCK`)
/// are zero.
fn split_rows(out: &mut [u16], lhs: &[f32], lv: View, ic: usize, mc: usize, depth: usize) {
    let k = lv.cols;
    let mut hi = vec![0u16; depth];
    let mut lo = vec![0u16; depth];
    for (g, group) in out.chunks_exact_mut(2 * depth * TILE_ROWS).enumerate() {
        let (group_hi, group_lo) = group.split_at_mut(depth * TILE_ROWS);
        for r in 0..TILE_ROWS {
            let row = g * TILE_ROWS + r;
            if row >= mc {
                hi[..k].fill(0);
                lo[..k].fill(0);
            } else {
                let start = (ic + row) * lv.row_stride;
                if lv.col_stride == 1 {
                    split_run(&lhs[start..start + k], &mut hi[..k], &mut lo[..k]);
                } else {
                    for (p, (h, l)) in hi[..k].iter_mut().zip(&mut lo[..k]).enumerate() {
                        (*h, *l) = split(lhs[start + p * lv.col_stride]);
                    }
                }
            }
            for (tiles, run) in [(&mut *group_hi, &hi), (&mut *group_lo, &lo)] {
                for (s, chunk) in run.chunks_exact(TILE_DEPTH).enumerate() {
                    tiles[(s * TILE_ROWS + r) * TILE_DEPTH..][..TILE_DEPTH].copy_from_slice(chunk);
                }
            }
        }
    }
}

super::cpu::with_simd! {
    /// [`split`] over a contiguous run.
    fn split_run(x: &[f32], hi: &mut [u16], lo: &mut [u16]) => split_run_body
}

#[inline(always)]
fn split_run_body(x: &[f32], hi: &mut [u16], lo: &mut [u16]) {
    for ((x, h), l) in x.iter().zip(hi).zip(lo) {
        (*h, *l) = split(*x);
    }
}

/// One `32 x 32` block of the product into `out` (rows of 32): `a[part][half]` are the `hi`
/// (part 0) or `lo` (1) tiles of the block's first and second 16 rows, `b[part][half]`
/// those of its first and second 16 columns, each `depth / 32` tiles.
///
/// # Safety
/// This thread has loaded [`TILE_CONFIG`].
#[inline(always)]
unsafe fn block_product(
    a: [[&[u16]; 2]; 2],
    b: [[&[u16]; 2]; 2],
    depth: usize,
    out: &mut [f32; BLOCK * BLOCK],
) {
    let tile = TILE_ROWS * TILE_DEPTH;
    assert!(
        a.iter()
            .chain(&b)
            .flatten()
            .all(|t| t.len() >= depth * TILE_ROWS),
        "every tile run spans the depth"
    );
    // SAFETY (every block below): the loads read 16 rows of 64 bytes inside `a` and `b`,
    // the stores write 16 rows of 64 bytes inside `out`.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
        for s in 0..depth / TILE_DEPTH {
            let at = |part: usize, half: usize| a[part][half].as_ptr().add(s * tile);
            let bt = |part: usize, half: usize| b[part][half].as_ptr().add(s * tile);
            // hi·hi, then hi·lo, then lo·hi: ten loads for twelve products.
            asm!(
                "tileloadd tmm4, [{ah0} + {st}*1]",
                "tileloadd tmm5, [{ah1} + {st}*1]",
                "tileloadd tmm6, [{bh0} + {st}*1]",
                "tileloadd tmm7, [{bh1} + {st}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "tileloadd tmm6, [{bl0} + {st}*1]",
                "tileloadd tmm7, [{bl1} + {st}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "tileloadd tmm4, [{al0} + {st}*1]",
                "tileloadd tmm5, [{al1} + {st}*1]",
                "tileloadd tmm6, [{bh0} + {st}*1]",
                "tileloadd tmm7, [{bh1} + {st}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                ah0 = in(reg) at(0, 0),
                ah1 = in(reg) at(0, 1),
                al0 = in(reg) at(1, 0),
                al1 = in(reg) at(1, 1),
                bh0 = in(reg) bt(0, 0),
                bh1 = in(reg) bt(0, 1),
                bl0 = in(reg) bt(1, 0),
                bl1 = in(reg) bt(1, 1),
                st = in(reg) 64usize,
                options(nostack, readonly, preserves_flags)
            );
        }
        let out = out.as_mut_ptr();
        asm!(
            "tilestored [{c00} + {sc}*1], tmm0",
            "tilestored [{c01} + {sc}*1], tmm1",
            "tilestored [{c10} + {sc}*1], tmm2",
            "tilestored [{c11} + {sc}*1], tmm3",
            c00 = in(reg) out,
            c01 = in(reg) out.add(TILE_COLS),
            c10 = in(reg) out.add(TILE_ROWS * BLOCK),
            c11 = in(reg) out.add(TILE_ROWS * BLOCK + TILE_COLS),
            sc = in(reg) BLOCK * 4,
            options(nostack, preserves_flags)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `lhs @ rhs` in f64, and the sum of the terms' sizes for each element.
    fn reference(lhs: &[f32], lv: View, rhs: &[f32], rv: View) -> (Vec<f64>, Vec<f64>) {
        let (m, k, n) = (lv.rows, lv.cols, rv.cols);
        let (mut sum, mut size) = (vec![0.0; m * n], vec![0.0; m * n]);
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let term = lhs[i * lv.row_stride + p * lv.col_stride] as f64
                        * rhs[p * rv.row_stride + j * rv.col_stride] as f64;
                    sum[i * n + j] += term;
                    size[i * n + j] += term.abs();
                }
            }
        }
        (sum, size)
    }

    #[test]
    fn splitting_keeps_sixteen_bits() {
        for x in [1.0f32, -5.123_457, 1e-3, 123_456.79, 0.1, -7.0e-20] {
            let (hi, lo) = split(x);
            let back = f32::from_bits((hi as u32) << 16) + f32::from_bits((lo as u32) << 16);
            assert!((back - x).abs() <= x.abs() * 2f32.powi(-16), "{x}: {back}");
        }
        // Ties round to even.
        assert_eq!(to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        // Past the largest finite bf16: infinity. NaNs stay NaN, whatever their bits.
        assert_eq!(to_bf16(f32::MAX), 0x7f80);
        assert_eq!(to_bf16(f32::NEG_INFINITY), 0xff80);
        for nan in [
            f32::NAN,
            f32::from_bits(0xffff_ffff),
            f32::from_bits(0x7f80_0001),
        ] {
            let (hi, lo) = split(nan);
            assert!(
                f32::from_bits((hi as u32) << 16).is_nan(),
                "{:#x}",
                nan.to_bits()
            );
            assert!(f32::from_bits((lo as u32) << 16).is_nan());
        }
    }

    #[test]
    fn products_match_f64_to_f32_accuracy() {
        if !available() {
            eprintln!("skipped: this CPU has no AMX-BF16");
            return;
        }
        let mut rng = fastrand::Rng::with_seed(7);
        for (m, k, n) in [
            (1, 1, 1),
            (5, 37, 19),
            (33, 384, 64),
            (300, 96, 40),
            (64, 1536, 32),
        ] {
            let lhs: Vec<f32> = (0..m * k).map(|_| rng.f32() * 2.0 - 1.0).collect();
            let rhs: Vec<f32> = (0..k * n).map(|_| rng.f32() * 2.0 - 1.0).collect();
            for lhs_t in [false, true] {
                let lv = if lhs_t {
                    View::rows(k, m, m).t()
                } else {
                    View::rows(m, k, k)
                };
                // Weights are stored `n x k`: the packed side is always a transposed view.
                let rv = View::rows(n, k, k).t();
                let stride = n + 3;
                let mut dst = vec![f32::NAN; m * stride];
                // SAFETY: AMX is available; the views fit their slices.
                unsafe {
                    matmul_packed(
                        (&mut dst, View::rows(m, n, stride)),
                        (&lhs, lv),
                        &Packed::new(&rhs, rv),
                        0.5,
                    )
                };
                let (want, size) = reference(&lhs, lv, &rhs, rv);
                for i in 0..m {
                    for j in 0..n {
                        let (got, w) = (dst[i * stride + j] as f64, 0.5 * want[i * n + j]);
                        // The terms left out, and the rounding of an f32 sum of `k` terms;
                        // a term missing altogether would be off by about 2^-8.
                        let error = 3.0 * 2f64.powi(-16) + k as f64 * 2f64.powi(-24);
                        let bound = 0.5 * size[i * n + j] * error + 1e-30;
                        assert!(
                            (got - w).abs() <= bound,
                            "{m}x{k}x{n} (lhs_t {lhs_t}) at ({i}, {j}): {got} vs {w}"
                        );
                    }
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
