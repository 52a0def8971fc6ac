//! A blocked matmul on FreezeTune's own AVX-512 kernels (`tile_kernel.rs`), in f32 or in bf16. In bf16, f32
//! operands are rounded to bf16 (to nearest, ties to even, as a cast does) while they are packed, multiplied on
//! the AVX512-BF16 kernel, summed in f32 and written as f32: what torch's CPU autocast does to a linear layer,
//! except that its sums also end in f32 here. In f32 it is an ordinary sgemm. The layout is the usual one of a
//! blocked gemm: a block of the right operand packed once and shared by the threads, each thread packing its
//! own rows of the left operand and running the kernel over 14 × 32 tiles.

use super::gemm::{Mat, Shared};
use super::pack::{pack_bf16_strips, pack_f32_strips};
use super::tile_kernel::{tile_bf16, tile_f32, MR, NR};
use rayon::prelude::*;
use std::cell::RefCell;
use std::thread::LocalKey;

/// The most packed words of k per block; k is split into equal blocks of at most this many. Few blocks matter
/// more than an L1-sized strip: every block after the first reads and writes the whole result again, which for
/// the head's product (vocabulary-wide) comes from memory. A 32-column strip of the right operand is then at
/// most 40 KiB, read from L2 at a fraction of its bandwidth.
#[cfg(not(test))]
pub(super) const KC_WORDS: usize = 320;
/// Small blocks under test, so that the tests' shapes cross every kind of block boundary.
#[cfg(test)]
pub(super) const KC_WORDS: usize = 48;
/// Columns of the right operand packed at once (5 MiB of words at most): the left operand's rows are packed
/// again for every such block, which a vocabulary-wide head would otherwise do dozens of times.
#[cfg(not(test))]
pub(super) const NC: usize = 4096;
#[cfg(test)]
pub(super) const NC: usize = 256;
/// The most rows one task packs of the left operand (172 KiB, in L2).
const MC_MAX: usize = 24 * MR;

/// What the products are computed in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Precision {
    /// f32 operands and sums (`vfmadd231ps`).
    F32,
    /// Operands rounded to bf16, sums in f32 (`vdpbf16ps`).
    Bf16,
}

impl Precision {
    /// Values of k in one packed word.
    fn k_per_word(self) -> usize {
        match self {
            Precision::F32 => 1,
            Precision::Bf16 => 2,
        }
    }

    /// Packs `lines` lines over `kc` values of k as strips of `W` (see `pack.rs`); `line` is scratch space of
    /// at least `max(lines, kc)` values.
    ///
    /// # Safety
    /// As for the packing functions; the CPU must have AVX2 for bf16.
    unsafe fn pack<const W: usize>(
        self,
        dst: &mut [u32],
        base: *const f32,
        strides: (isize, isize),
        (lines, kc): (usize, usize),
        line: &mut [u32],
    ) {
        match self {
            Precision::F32 => pack_f32_strips::<W>(dst, base, strides, lines, kc),
            Precision::Bf16 => pack_bf16_strips::<W>(dst, base, strides, lines, kc, line),
        }
    }

    /// The kernel over one tile (see `tile_kernel.rs`).
    ///
    /// # Safety
    /// As for the kernels.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        self,
        words: usize,
        a: *const u32,
        b: *const u32,
        c: *mut f32,
        row_bytes: isize,
        scale: f32,
        add: bool,
    ) {
        match self {
            Precision::F32 => tile_f32(words, a, b, c, row_bytes, scale, add),
            Precision::Bf16 => tile_bf16(words, a, b, c, row_bytes, scale, add),
        }
    }

    /// Whether this CPU runs the precision's kernel.
    pub(super) fn available(self) -> bool {
        match self {
            Precision::F32 => f32_available(),
            Precision::Bf16 => available(),
        }
    }
}

/// Whether this CPU runs the f32 kernel: x86-64 with AVX512-F, whose registers the OS saves (the detection
/// checks that too).
pub fn f32_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU runs the bf16 kernel: x86-64 with AVX512-F (whose registers the OS must save, which the detection
/// checks) and AVX512-BF16 (CPUID leaf 7, sub-leaf 1, EAX bit 5).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

/// Whether this CPU's bf16 matmul has at least twice f32's multiply-adds per cycle, so that `auto` computes in
/// bf16 on it:
/// - AMD's (Zen 4 on) runs `vdpbf16ps` on all 512 bits at once where its f32 FMAs run as two 256-bit halves, and
///   its bf16 products measured 1.6-2.2x f32's at the layers' shapes (`bench-matmul`);
/// - Intel's with AMX (Sapphire Rapids on) multiply on tiles (`amx.rs`): 1.3-2.8x FreezeTune's f32 at those
///   shapes in one `bench-matmul` run on an Emerald Rapids Xeon, and a bf16 training step 0.42-0.54x as long as
///   f32's there (`bench-train 3 --bf16`).
///
/// Intel's AVX512-BF16 without AMX runs `vdpbf16ps` at its FMA's rate, and PyTorch's bf16 matmul measured half
/// its f32's on such a Xeon: there bf16 would only add rounding, so it is not picked.
pub fn faster_than_f32() -> bool {
    available() && (amd() || super::amx::supported())
}

#[cfg(target_arch = "x86_64")]
fn amd() -> bool {
    // SAFETY: as in `detect`. (See there for the allow.)
    #[allow(unused_unsafe)]
    let leaf = unsafe { std::arch::x86_64::__cpuid(0) };
    let vendor = [leaf.ebx, leaf.edx, leaf.ecx].map(u32::to_le_bytes).concat();
    vendor == b"AuthenticAMD"
}

#[cfg(not(target_arch = "x86_64"))]
fn amd() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn detect() -> bool {
    // AVX2 too: the packing runs on it.
    if !std::is_x86_feature_detected!("avx512f") || !std::is_x86_feature_detected!("avx2") {
        return false;
    }
    // SAFETY: CPUID exists on every x86-64 CPU; leaf 7 does wherever AVX512-F was detected, and its sub-leaf 0
    // says how many sub-leaves follow. (The call is safe from Rust 1.87 on; this project builds with 1.85 too.)
    #[allow(unused_unsafe)]
    let (sub_leaves, leaf) = unsafe {
        use std::arch::x86_64::__cpuid_count;
        (__cpuid_count(7, 0).eax, __cpuid_count(7, 1))
    };
    sub_leaves >= 1 && leaf.eax & (1 << 5) != 0
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> bool {
    false
}

thread_local! {
    /// Each thread's packed operand blocks, kept between calls: the right operand's on the calling thread, the
    /// left operand's rows on each task's, and a line of scratch for the packing.
    pub(super) static PACKED_RHS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    pub(super) static PACKED_LHS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    pub(super) static LINE: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's buffer `key`, grown to at least `len` values (its contents are left over from the
/// last use: the packing writes every value the kernel reads); on a fresh one if the buffer is in use.
pub(super) fn with_buffer<R>(
    key: &'static LocalKey<RefCell<Vec<u32>>>,
    len: usize,
    f: impl FnOnce(&mut [u32]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => {
            if buffer.len() < len {
                buffer.resize(len, 0);
            }
            f(&mut buffer[..len])
        }
        Err(_) => f(&mut vec![0; len]),
    })
}

/// `dst (m×n) = [dst +] scale · lhs (m×k) · rhs (k×n)` in `precision` (for bf16: lhs and rhs rounded to bf16,
/// the sums in f32), over rayon's threads when `threads` > 1.
///
/// # Safety
/// `precision` must be available on this CPU; every pointer must address a matrix of the stated shape and strides, and `dst`
/// must not overlap the operands or be used by another thread meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn matmul(
    precision: Precision,
    threads: usize,
    m: usize,
    n: usize,
    k: usize,
    dst: Mat,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    scale: f32,
) {
    assert!(precision.available(), "this CPU has no {precision:?} kernel");
    if empty_product((m, n, k), dst, accumulate) {
        return;
    }
    let out = Shared(dst.0 as *mut f32);
    let blocks = row_blocks(m, threads, MR, MC_MAX);
    let per_word = precision.k_per_word();
    let k_block = k.div_ceil(k.div_ceil(KC_WORDS * per_word)).next_multiple_of(per_word);
    with_buffer(
        &PACKED_RHS,
        NC.min(n).div_ceil(NR) * NR * k_block / per_word,
        |packed_rhs| {
            let dims = (m, n, k, k_block, threads);
            multiply(
                precision,
                dims,
                (dst, out),
                accumulate,
                (lhs, rhs),
                scale,
                &blocks,
                packed_rhs,
            )
        },
    )
}

/// Finishes a product with no rows, no columns or no k (an empty sum: zeros, or `dst` as it is when
/// accumulating) and says so; says no to any other.
///
/// # Safety
/// `dst` must address an m × n matrix of the stated strides, no other thread's.
pub(super) unsafe fn empty_product((m, n, k): (usize, usize, usize), dst: Mat, accumulate: bool) -> bool {
    if m == 0 || n == 0 {
        return true;
    }
    if k != 0 {
        return false;
    }
    if !accumulate {
        let out = dst.0 as *mut f32;
        for i in 0..m {
            for j in 0..n {
                *out.offset(offset(dst, i, j)) = 0.0;
            }
        }
    }
    true
}

/// [`matmul`]'s loops over blocks of columns and of k, with `packed_rhs` to pack the right operand's blocks in.
///
/// # Safety
/// As for [`matmul`].
#[allow(clippy::too_many_arguments)]
unsafe fn multiply(
    precision: Precision,
    (m, n, k, k_block, threads): (usize, usize, usize, usize, usize),
    (dst, out): (Mat, Shared),
    accumulate: bool,
    (lhs, rhs): (Mat, Mat),
    scale: f32,
    blocks: &[(usize, usize)],
    packed_rhs: &mut [u32],
) {
    debug_assert!(blocks.iter().map(|b| b.1).sum::<usize>() == m);
    for j0 in (0..n).step_by(NC) {
        let nc = NC.min(n - j0);
        for k0 in (0..k).step_by(k_block) {
            let kc = k_block.min(k - k0);
            let strip = kc.div_ceil(precision.k_per_word()) * NR;
            let strips = nc.div_ceil(NR);
            let pack_strip = |(s, chunk): (usize, &mut [u32])| {
                let base = element(rhs, k0, j0 + s * NR);
                let lines = NR.min(nc - s * NR);
                with_buffer(&LINE, kc.max(NR), |line| {
                    precision.pack::<NR>(chunk, base, (rhs.2, rhs.1), (lines, kc), line)
                });
            };
            let packed = &mut packed_rhs[..strips * strip];
            if threads > 1 {
                packed.par_chunks_mut(strip).enumerate().for_each(pack_strip);
            } else {
                packed.chunks_mut(strip).enumerate().for_each(pack_strip);
            }
            let packed: &[u32] = packed;
            let first = k0 == 0 && !accumulate;
            let block = |&(i0, rows): &(usize, usize)| {
                let lhs_block = Mat(element(lhs, i0, k0), lhs.1, lhs.2);
                let dst_block = (out, offset(dst, i0, j0), dst.1, dst.2);
                row_block(precision, (rows, nc, kc), lhs_block, packed, dst_block, first, scale);
            };
            if threads > 1 {
                blocks.par_iter().for_each(block);
            } else {
                blocks.iter().for_each(block);
            }
        }
    }
}

/// The rows each task takes, as (first row, count): a multiple of the threads in number, of at most `max_rows`
/// rows each and a multiple of the tile's rows (`tile_rows`) where it can be, so that the threads end together.
pub(super) fn row_blocks(m: usize, threads: usize, tile_rows: usize, max_rows: usize) -> Vec<(usize, usize)> {
    let threads = threads.max(1);
    let count = threads * m.div_ceil(threads * max_rows);
    let rows = m.div_ceil(count).div_ceil(tile_rows) * tile_rows;
    (0..m).step_by(rows).map(|i0| (i0, rows.min(m - i0))).collect()
}

/// One task's rows over one packed block of the right operand: packs the rows, then runs the kernel on every
/// tile, which adds `scale ·` the tile into `dst` (or writes it, on the first block of k when not accumulating);
/// a partial tile, or one whose columns are not contiguous in `dst`, goes through a buffer.
/// `dst` is (buffer, offset of the block's first value, row stride, column stride), in values.
///
/// # Safety
/// As for [`matmul`]; no other task writes these rows of `dst`.
unsafe fn row_block(
    precision: Precision,
    (rows, nc, kc): (usize, usize, usize),
    lhs: Mat,
    packed_rhs: &[u32],
    dst: (Shared, isize, isize, isize),
    first: bool,
    scale: f32,
) {
    let words = kc.div_ceil(precision.k_per_word());
    with_buffer(&PACKED_LHS, rows.div_ceil(MR) * words * MR, |packed_lhs| {
        with_buffer(&LINE, kc.max(rows), |line| {
            precision.pack::<MR>(packed_lhs, lhs.0, (lhs.1, lhs.2), (rows, kc), line)
        });
        run_tiles(precision, (rows, nc, words), packed_lhs, packed_rhs, dst, first, scale)
    })
}

/// Every tile of one task's rows over one packed block of the right operand (see [`row_block`]).
///
/// # Safety
/// As for [`row_block`].
unsafe fn run_tiles(
    precision: Precision,
    (rows, nc, words): (usize, usize, usize),
    packed_lhs: &[u32],
    packed_rhs: &[u32],
    dst: (Shared, isize, isize, isize),
    first: bool,
    scale: f32,
) {
    let (panel_a, panel_b) = (words * MR, words * NR);
    let strips = rows.div_ceil(MR);
    let mut tile = [0f32; MR * NR];
    let (out, start, row_stride, col_stride) = dst;
    for s in 0..nc.div_ceil(NR) {
        let b = packed_rhs[s * panel_b..].as_ptr();
        let cols = NR.min(nc - s * NR);
        for r in 0..strips {
            let a = packed_lhs[r * panel_a..].as_ptr();
            let tile_rows = MR.min(rows - r * MR);
            let corner = out
                .0
                .offset(start + (r * MR) as isize * row_stride + (s * NR) as isize * col_stride);
            if tile_rows == MR && cols == NR && col_stride == 1 {
                // A whole tile with contiguous rows: the kernel meets dst itself.
                precision.tile(words, a, b, corner, row_stride * 4, scale, !first);
                continue;
            }
            precision.tile(words, a, b, tile.as_mut_ptr(), (NR * 4) as isize, 1.0, false);
            for i in 0..tile_rows {
                for (j, &v) in tile[i * NR..i * NR + cols].iter().enumerate() {
                    let at = corner.offset(i as isize * row_stride + j as isize * col_stride);
                    *at = if first { scale * v } else { *at + scale * v };
                }
            }
        }
    }
}

/// The address of `m`'s element (i, j). (A function of the whole `Mat`, so that the closures that call it
/// capture the `Mat`, which threads may share, not its raw pointer.)
///
/// # Safety
/// The element must be inside `m`'s buffer.
pub(super) unsafe fn element(m: Mat, i: usize, j: usize) -> *const f32 {
    m.0.offset(i as isize * m.1 + j as isize * m.2)
}

/// The offset of `dst`'s element (i, j) from its start.
pub(super) fn offset(dst: Mat, i: usize, j: usize) -> isize {
    i as isize * dst.1 + j as isize * dst.2
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::pack::bf16_bits;
    use super::*;

    /// The product of the operands (rounded to bf16 for bf16), summed in f64.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        precision: Precision,
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        b: &[f32],
        (ars, acs): (usize, usize),
        (brs, bcs): (usize, usize),
    ) -> Vec<f64> {
        let r = |x: f32| match precision {
            Precision::F32 => x as f64,
            Precision::Bf16 => f32::from_bits(bf16_bits(x) << 16) as f64,
        };
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| r(a[i * ars + p * acs]) * r(b[p * brs + j * bcs])).sum();
            }
        }
        c
    }

    /// The product of the operands rounded to bf16, summed in f64: what the bf16 kernels (`amx_gemm.rs` too)
    /// must give within f32 summation error.
    pub(in super::super) fn bf16_reference(
        (m, n, k): (usize, usize, usize),
        a: &[f32],
        b: &[f32],
        a_strides: (usize, usize),
        b_strides: (usize, usize),
    ) -> Vec<f64> {
        reference(Precision::Bf16, m, n, k, a, b, a_strides, b_strides)
    }

    pub(in super::super) fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[test]
    fn row_blocks_cover_every_row_once() {
        for (m, threads) in [(1, 1), (13, 2), (1024, 2), (1000, 16), (5000, 2), (14, 3)] {
            let blocks = row_blocks(m, threads, MR, MC_MAX);
            let mut next = 0;
            for &(i0, rows) in &blocks {
                assert_eq!(i0, next);
                assert!(rows > 0 && rows <= MC_MAX.max(MR));
                next += rows;
            }
            assert_eq!(next, m, "{m} rows, {threads} threads");
        }
    }

    /// `matmul` on one shape and orientation against the (for bf16, rounded) operands' exact product, within f32
    /// summation error (1e-5 relative; rounding an operand wrongly, to zero say, moves sums by 1e-3).
    fn check(
        precision: Precision,
        (m, n, k): (usize, usize, usize),
        (lhs_t, rhs_t, dst_t): (bool, bool, bool),
        accumulate: bool,
        threads: usize,
    ) {
        let (a, b) = (values(m * k, 1), values(k * n, 2));
        let sa = if lhs_t { (1, m) } else { (k, 1) };
        let sb = if rhs_t { (1, k) } else { (n, 1) };
        let sc = if dst_t { (1, m) } else { (n, 1) };
        let mut c = values(m * n, 3);
        let before = c.clone();
        let scale = 0.75;
        unsafe {
            matmul(
                precision,
                threads,
                m,
                n,
                k,
                Mat(c.as_mut_ptr(), sc.0 as isize, sc.1 as isize),
                accumulate,
                Mat(a.as_ptr(), sa.0 as isize, sa.1 as isize),
                Mat(b.as_ptr(), sb.0 as isize, sb.1 as isize),
                scale,
            );
        }
        let want = reference(precision, m, n, k, &a, &b, sa, sb);
        for i in 0..m {
            for j in 0..n {
                let at = i * sc.0 + j * sc.1;
                let sum = scale as f64 * want[i * n + j];
                let expected = if accumulate { before[at] as f64 + sum } else { sum };
                assert!(
                    (c[at] as f64 - expected).abs() < 1e-5 * (1.0 + expected.abs()),
                    "{precision:?} {m}x{n}x{k}, transposed {lhs_t} {rhs_t} {dst_t}, accumulate {accumulate}: ({i}, {j}) is {} \
                     against {expected}",
                    c[at]
                );
            }
        }
    }

    /// In each precision this CPU has: every orientation of both operands and of the result over several blocks
    /// of k (an odd k, so bf16's last pair is half padding) and five blocks of columns (the test's blocks are
    /// small), partial tiles, accumulation and a scale, on one thread and on several; then one-word, two-word and
    /// empty products and shapes smaller than a tile.
    #[test]
    fn matches_the_exact_product() {
        const {
            assert!(
                301 > 3 * 2 * KC_WORDS && 1061 > 4 * NC,
                "the shape crosses k and column blocks"
            )
        };
        for precision in [Precision::F32, Precision::Bf16] {
            if !precision.available() {
                eprintln!("this CPU has no {precision:?} kernel: it is never chosen here, nothing to run");
                continue;
            }
            matches_in(precision);
        }
    }

    fn matches_in(precision: Precision) {
        let orientations = [
            ((false, false, false), false, 1),
            ((true, false, false), true, 2),
            ((false, true, false), false, 2),
            ((true, true, false), true, 1),
            ((false, true, true), true, 2),
        ];
        for (transposed, accumulate, threads) in orientations {
            check(precision, (37, 1061, 301), transposed, accumulate, threads);
        }
        for shape in [(5, 20, 1), (13, 31, 2), (14, 32, 3), (3, 7, 0), (29, 70, 0)] {
            for accumulate in [false, true] {
                check(precision, shape, (false, true, false), accumulate, 2);
            }
        }
    }

    /// The rounding is the operands' and nothing else's: on values that are exactly bf16 the product is the
    /// exact one (small integers sum without error in f32), in either precision.
    #[test]
    fn exact_on_bf16_values() {
        for precision in [Precision::F32, Precision::Bf16] {
            if precision.available() {
                exact_in(precision);
            }
        }
    }

    fn exact_in(precision: Precision) {
        let (m, n, k) = (20, 40, 9);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 - 2.0).collect();
        let mut c = vec![f32::NAN; m * n];
        unsafe {
            matmul(
                precision,
                1,
                m,
                n,
                k,
                Mat(c.as_mut_ptr(), n as isize, 1),
                false,
                Mat(a.as_ptr(), k as isize, 1),
                Mat(b.as_ptr(), n as isize, 1),
                1.0,
            );
        }
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
                assert_eq!(c[i * n + j], want);
            }
        }
    }
}
