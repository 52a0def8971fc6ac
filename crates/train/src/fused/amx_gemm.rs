//! The bf16 matmul on AMX tiles (`amx.rs`), blocked as the AVX-512 one (`packed_gemm.rs`): a block of the right
//! operand packed once per block of columns and k, in the AVX-512 kernels' strips of 32 columns (the layout AMX's
//! right tiles read), and each task's rows of the left operand packed as rows of pairs (what its left tiles
//! read). k is padded with zeros to whole 32-value steps. A whole 32 × 32 block with contiguous rows and no scale
//! is loaded from (when adding to it) and stored into the result by the tiles themselves; any other lands in a
//! buffer and is scaled (and added) into the result from there.

use super::amx::{self, MR, NR, STEP_WORDS};
use super::gemm::{Mat, Shared};
use super::pack::{pack_bf16_rows, pack_bf16_strips};
use super::packed_gemm::{
    element, empty_product, offset, row_blocks, with_buffer, KC_WORDS, LINE, NC, PACKED_LHS, PACKED_RHS,
};
use rayon::prelude::*;

// Blocks of k and of columns as `packed_gemm.rs`'s (`KC_WORDS`, `NC`), k's each a whole number of 32-value
// steps here, equal but for the last.

/// The most rows one task packs of the left operand (320 KiB at most, in L2).
const MC_MAX: usize = 8 * MR;

/// `dst (m×n) = [dst +] scale · lhs (m×k) · rhs (k×n)`, lhs and rhs rounded to bf16 and the sums in f32, over
/// rayon's threads when `threads` > 1.
///
/// # Safety
/// [`amx::supported`] must have said yes; every pointer must address a matrix of the stated shape and strides,
/// and `dst` must not overlap the operands or be used by another thread meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn matmul(
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
    assert!(amx::supported() || cfg!(test), "this CPU has no AMX bf16 tiles");
    if empty_product((m, n, k), dst, accumulate) {
        return;
    }
    let out = Shared(dst.0 as *mut f32);
    let blocks = row_blocks(m, threads, MR, MC_MAX);
    let step_values = 2 * STEP_WORDS;
    let k_block = k.div_ceil(k.div_ceil(2 * KC_WORDS)).next_multiple_of(step_values);
    with_buffer(&PACKED_RHS, NC.min(n).div_ceil(NR) * NR * k_block / 2, |packed_rhs| {
        for j0 in (0..n).step_by(NC) {
            let nc = NC.min(n - j0);
            for k0 in (0..k).step_by(k_block) {
                let kc = k_block.min(k - k0);
                let words = kc.div_ceil(step_values) * STEP_WORDS;
                let packed = &mut packed_rhs[..nc.div_ceil(NR) * NR * words];
                pack_rhs(packed, threads, element(rhs, k0, j0), (rhs.2, rhs.1), (nc, kc), words);
                let packed: &[u32] = packed;
                let first = k0 == 0 && !accumulate;
                let block = |&(i0, rows): &(usize, usize)| {
                    let lhs_block = Mat(element(lhs, i0, k0), lhs.1, lhs.2);
                    let dst_block = (out, offset(dst, i0, j0), dst.1, dst.2);
                    row_block((rows, nc, kc, words), lhs_block, packed, dst_block, first, scale);
                };
                if threads > 1 {
                    blocks.par_iter().for_each(block);
                } else {
                    blocks.iter().for_each(block);
                }
            }
        }
    })
}

/// Packs `nc` columns over `kc` values of k into strips of [`NR`] columns of `words` rows each (the rows past
/// `kc`'s pairs zero).
///
/// # Safety
/// Column j's value at k must be readable at `base + j·strides.0 + k·strides.1`.
unsafe fn pack_rhs(
    packed: &mut [u32],
    threads: usize,
    base: *const f32,
    strides: (isize, isize),
    (nc, kc): (usize, usize),
    words: usize,
) {
    let base = Mat(base, strides.0, strides.1);
    let pack_strip = |(s, chunk): (usize, &mut [u32])| {
        let lines = NR.min(nc - s * NR);
        let pairs = kc.div_ceil(2);
        with_buffer(&LINE, kc.max(NR), |line| {
            pack_bf16_strips::<NR>(chunk, element(base, s * NR, 0), (base.1, base.2), lines, kc, line)
        });
        chunk[pairs * NR..].fill(0);
    };
    if threads > 1 {
        packed.par_chunks_mut(words * NR).enumerate().for_each(pack_strip);
    } else {
        packed.chunks_mut(words * NR).enumerate().for_each(pack_strip);
    }
}

/// One task's rows over one packed block of the right operand: packs the rows, then runs the kernel on every
/// 32 × 32 block and adds `scale ·` it into `dst` (or writes it, on the first block of k when not accumulating).
/// `dst` is (buffer, offset of the block's first value, row stride, column stride), in values.
///
/// # Safety
/// As for [`matmul`]; no other task writes these rows of `dst`.
unsafe fn row_block(
    (rows, nc, kc, words): (usize, usize, usize, usize),
    lhs: Mat,
    packed_rhs: &[u32],
    dst: (Shared, isize, isize, isize),
    first: bool,
    scale: f32,
) {
    let row_tiles = rows.div_ceil(MR);
    with_buffer(&PACKED_LHS, row_tiles * MR * words, |packed_lhs| {
        with_buffer(&LINE, 8 * rows, |line| {
            pack_bf16_rows(packed_lhs, lhs.0, (lhs.1, lhs.2), rows, kc, words, line)
        });
        amx::with_tiles(|| {
            let mut sums = Sums([0.0; MR * NR]);
            let (out, start, row_stride, col_stride) = dst;
            let a_rows = (words * 4) as isize;
            for s in 0..nc.div_ceil(NR) {
                let b = packed_rhs[s * words * NR..].as_ptr();
                let cols = NR.min(nc - s * NR);
                for r in 0..row_tiles {
                    let a = (packed_lhs[r * MR * words..].as_ptr(), a_rows);
                    let corner = out
                        .0
                        .offset(start + (r * MR) as isize * row_stride + (s * NR) as isize * col_stride);
                    let tile_rows = MR.min(rows - r * MR);
                    if tile_rows == MR && cols == NR && col_stride == 1 && scale == 1.0 {
                        // A whole block with contiguous rows: the tiles load and store dst itself.
                        amx::block(words / STEP_WORDS, a, b, (corner, row_stride * 4), !first);
                        continue;
                    }
                    amx::block(
                        words / STEP_WORDS,
                        a,
                        b,
                        (sums.0.as_mut_ptr(), (NR * 4) as isize),
                        false,
                    );
                    sums.write((tile_rows, cols), (corner, row_stride, col_stride), first, scale);
                }
            }
        })
    })
}

/// One block's sums, aligned for the tile stores.
#[repr(C, align(64))]
struct Sums([f32; MR * NR]);

impl Sums {
    /// Writes `scale ·` the block's first `rows × cols` sums into the matrix at `corner` (row and column strides in
    /// values), or adds them where `!first`.
    ///
    /// # Safety
    /// Those elements must be writable and no other thread's.
    unsafe fn write(
        &self,
        (rows, cols): (usize, usize),
        (corner, row_stride, col_stride): (*mut f32, isize, isize),
        first: bool,
        scale: f32,
    ) {
        for i in 0..rows {
            let sums = &self.0[i * NR..i * NR + cols];
            let row = corner.offset(i as isize * row_stride);
            if col_stride == 1 {
                let row = std::slice::from_raw_parts_mut(row, cols);
                if first {
                    row.iter_mut().zip(sums).for_each(|(d, &v)| *d = scale * v);
                } else {
                    row.iter_mut().zip(sums).for_each(|(d, &v)| *d += scale * v);
                }
            } else {
                for (j, &v) in sums.iter().enumerate() {
                    let at = row.offset(j as isize * col_stride);
                    *at = if first { scale * v } else { *at + scale * v };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::packed_gemm::tests::{bf16_reference, values};
    use super::*;

    /// One shape and orientation against the rounded operands' exact product, within f32 summation error. Each
    /// matrix's rows (or columns, transposed) are `pad` values longer than the matrix, and what lies outside the
    /// result must stay as it was.
    fn check(
        (m, n, k): (usize, usize, usize),
        (lhs_t, rhs_t, dst_t): (bool, bool, bool),
        accumulate: bool,
        threads: usize,
        (scale, pad): (f32, usize),
    ) {
        let (a, b) = (values((m + pad) * (k + pad), 1), values((k + pad) * (n + pad), 2));
        let sa = if lhs_t { (1, m + pad) } else { (k + pad, 1) };
        let sb = if rhs_t { (1, k + pad) } else { (n + pad, 1) };
        let sc = if dst_t { (1, m + pad) } else { (n + pad, 1) };
        let mut c = values((m + pad) * (n + pad), 3);
        let before = c.clone();
        unsafe {
            matmul(
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
        let want = bf16_reference((m, n, k), &a, &b, sa, sb);
        let mut inside = vec![false; c.len()];
        (0..m).for_each(|i| (0..n).for_each(|j| inside[i * sc.0 + j * sc.1] = true));
        for at in (0..c.len()).filter(|&at| !inside[at]) {
            assert_eq!(
                c[at].to_bits(),
                before[at].to_bits(),
                "{m}x{n}x{k}: wrote outside the result at {at}"
            );
        }
        for i in 0..m {
            for j in 0..n {
                let at = i * sc.0 + j * sc.1;
                let sum = scale as f64 * want[i * n + j];
                let expected = if accumulate { before[at] as f64 + sum } else { sum };
                assert!(
                    (c[at] as f64 - expected).abs() < 1e-5 * (1.0 + expected.abs()),
                    "{m}x{n}x{k}, transposed {lhs_t} {rhs_t} {dst_t}, accumulate {accumulate}, scale {scale}: ({i}, {j}) is {} \
                     against {expected}",
                    c[at]
                );
            }
        }
    }

    /// Every orientation over several blocks of k (an odd k: the last step is mostly padding) and of columns,
    /// partial blocks of rows and columns, accumulation, with a scale (through the block buffer) and without (whole
    /// blocks straight into the result), dense and with padded strides, on one thread and on several; then
    /// products shorter than one step and empty ones. On the tiles where the CPU has AMX, else on the kernel's
    /// scalar stand-in (the driver's part).
    #[test]
    fn matches_the_exact_product() {
        if !std::is_x86_feature_detected!("avx2") {
            return;
        }
        const {
            assert!(
                301 > 3 * 2 * KC_WORDS && 1061 > 4 * NC,
                "the shape crosses k and column blocks"
            )
        };
        let orientations = [
            ((false, false, false), false, 1),
            ((true, false, false), true, 2),
            ((false, true, false), false, 2),
            ((true, true, false), true, 1),
            ((false, true, true), true, 2),
        ];
        for (transposed, accumulate, threads) in orientations {
            for scale_and_pad in [(0.75, 0), (1.0, 0), (1.0, 5)] {
                check((37, 1061, 301), transposed, accumulate, threads, scale_and_pad);
                check((300, 70, 96), transposed, accumulate, threads, scale_and_pad);
            }
        }
        for shape in [
            (5, 20, 1),
            (13, 31, 2),
            (32, 32, 33),
            (64, 64, 64),
            (3, 7, 0),
            (29, 70, 0),
        ] {
            for accumulate in [false, true] {
                check(shape, (false, true, false), accumulate, 2, (1.0, 3));
            }
        }
    }

    /// Stale values in the reused packing buffers (a NaN or an infinity from an earlier product) never reach a
    /// later product through the padding: 0 · NaN would be NaN.
    #[test]
    fn padding_is_zero_whatever_the_buffers_held() {
        if !std::is_x86_feature_detected!("avx2") {
            return;
        }
        let (m, n, k) = (40, 40, 64);
        let poison = vec![f32::NAN; m * k];
        let mut c = vec![0f32; m * n];
        unsafe {
            let at = |v: &Vec<f32>, cols: usize| Mat(v.as_ptr(), cols as isize, 1);
            matmul(
                1,
                m,
                n,
                k,
                Mat(c.as_mut_ptr(), n as isize, 1),
                false,
                at(&poison, k),
                at(&poison, n),
                1.0,
            );
            let (a, b) = (values(m * 3, 4), values(3 * n, 5));
            matmul(
                1,
                m,
                n,
                3,
                Mat(c.as_mut_ptr(), n as isize, 1),
                false,
                at(&a, 3),
                at(&b, n),
                1.0,
            );
        }
        assert!(c.iter().all(|v| v.is_finite()), "padding picked up an earlier NaN");
    }
}
