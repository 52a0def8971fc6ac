//! Packing for the packed matmul (`packed_gemm.rs`): the operands laid out as the kernels (`tile_kernel.rs`) read
//! them, in strips of `W` lines (rows of the left operand, columns of the right), one u32 word per line and step
//! of k:
//! - for the f32 kernel a word is the f32 itself, one k per word;
//! - for the bf16 kernel a word is the line's values at k = 2p and 2p + 1, rounded to bf16 (to nearest, ties to
//!   even, as a cast does) and side by side. The two layouts every training matmul has (a line contiguous in k,
//!   or a k contiguous across the lines) run on AVX2, which every AVX-512 CPU has: scalar packing took a quarter
//!   of the bf16 matmul's time.

/// `x` as bf16 bits, rounded to nearest with ties to even; a NaN stays a (quiet) NaN.
#[inline(always)]
pub(super) fn bf16_bits(x: f32) -> u32 {
    let bits = x.to_bits();
    if x.is_nan() {
        return (bits >> 16) | 0x40;
    }
    (bits + 0x7fff + ((bits >> 16) & 1)) >> 16
}

/// Two values as one u32 of bf16s, the first in the lower half: the pair the kernel multiplies per lane.
#[inline(always)]
fn pair(first: f32, second: f32) -> u32 {
    bf16_bits(first) | (bf16_bits(second) << 16)
}

/// Packs `lines` lines over `kc` values of k into `dst` as consecutive strips of `W` lines, each strip
/// `ceil(kc / 2)` groups of `W` pairs; lines past the last and the odd k's missing partner are zeros. Line `i`'s
/// value at k is at `base + i·line_stride + k·k_stride`.
///
/// # Safety
/// The CPU must have AVX2 (on x86-64); every address named above must be readable; `dst` must hold
/// `ceil(lines / W) · ceil(kc / 2) · W` values; `line`, scratch space, `max(lines, ceil(kc / 2))`.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2"))]
pub(super) unsafe fn pack_bf16_strips<const W: usize>(
    dst: &mut [u32],
    base: *const f32,
    (line_stride, k_stride): (isize, isize),
    lines: usize,
    kc: usize,
    line: &mut [u32],
) {
    let pairs = kc.div_ceil(2);
    let strip = pairs * W;
    zero_partial_strip::<W>(dst, strip, lines);
    let at = |i: usize, k: usize| base.offset(i as isize * line_stride + k as isize * k_stride);
    if k_stride == 1 {
        let mut lines_done = 0;
        #[cfg(target_arch = "x86_64")]
        if W >= 8 {
            // Each line contiguous in k: whole strips go through 8 × 8 transposes of pairs; a partial last strip
            // below.
            lines_done = in_groups_of_8::<W>(dst, strip, lines, |out, line, slot| {
                transpose_pairs::<W>(out, at(line, 0), line_stride, slot, kc)
            });
        }
        // Each line contiguous in k: rounded into its pairs in order, then spread one pair per group.
        for i in lines_done..lines {
            pairs_of_line(std::slice::from_raw_parts(at(i, 0), kc), &mut line[..pairs]);
            let out = &mut dst[(i / W) * strip + i % W..];
            for (p, &v) in line[..pairs].iter().enumerate() {
                out[p * W] = v;
            }
        }
    } else if line_stride == 1 {
        // Each k contiguous across the lines: two k's interleaved over all lines, then cut into the strips.
        for p in 0..pairs {
            let first = std::slice::from_raw_parts(at(0, 2 * p), lines);
            let second = (2 * p + 1 < kc).then(|| std::slice::from_raw_parts(at(0, 2 * p + 1), lines));
            interleave(first, second, &mut line[..lines]);
            for (s, chunk) in line[..lines].chunks(W).enumerate() {
                dst[s * strip + p * W..][..chunk.len()].copy_from_slice(chunk);
            }
        }
    } else {
        for i in 0..lines {
            let out = &mut dst[(i / W) * strip + i % W..];
            for p in 0..pairs {
                let second = if 2 * p + 1 < kc { *at(i, 2 * p + 1) } else { 0.0 };
                out[p * W] = pair(*at(i, 2 * p), second);
            }
        }
    }
}

/// Packs `lines` lines over `kc` values of k into `dst` as rows of `row_words` words, line i's pairs (as in
/// [`pack_bf16_strips`]) at `dst[i · row_words..]`: the layout AMX's left tiles read (`amx.rs`). The words past a
/// line's last pair, and the rows past the last line (to the end of `dst`), are zeros. Line `i`'s value at k is at
/// `base + i·line_stride + k·k_stride`.
///
/// # Safety
/// The CPU must have AVX2 (on x86-64); every address named above must be readable; `row_words ≥ ceil(kc / 2)`;
/// `dst` must hold at least `lines · row_words` values; `line`, scratch space, at least `8 · lines`.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2"))]
pub(super) unsafe fn pack_bf16_rows(
    dst: &mut [u32],
    base: *const f32,
    (line_stride, k_stride): (isize, isize),
    lines: usize,
    kc: usize,
    row_words: usize,
    line: &mut [u32],
) {
    let pairs = kc.div_ceil(2);
    assert!(
        row_words >= pairs && dst.len() >= lines * row_words,
        "rows too short for the pairs"
    );
    let at = |i: usize, k: usize| base.offset(i as isize * line_stride + k as isize * k_stride);
    if k_stride == 1 {
        for i in 0..lines {
            pairs_of_line(
                std::slice::from_raw_parts(at(i, 0), kc),
                &mut dst[i * row_words..][..pairs],
            );
        }
    } else if line_stride == 1 {
        // Each k contiguous across the lines: two k's interleaved over all lines, eight pairs at a time, then
        // turned into the rows' eight words by 8 × 8 transposes (AVX2); the lines and pairs left over one by one.
        let interleaved = |p: usize, out: &mut [u32]| {
            let first = std::slice::from_raw_parts(at(0, 2 * p), lines);
            let second = (2 * p + 1 < kc).then(|| std::slice::from_raw_parts(at(0, 2 * p + 1), lines));
            interleave(first, second, out);
        };
        let mut p0 = 0;
        #[cfg(target_arch = "x86_64")]
        while p0 + 8 <= pairs {
            for j in 0..8 {
                interleaved(p0 + j, &mut line[j * lines..(j + 1) * lines]);
            }
            transpose_into_rows(&line[..8 * lines], lines, &mut dst[p0..], row_words);
            p0 += 8;
        }
        for p in p0..pairs {
            interleaved(p, &mut line[..lines]);
            for (i, &word) in line[..lines].iter().enumerate() {
                dst[i * row_words + p] = word;
            }
        }
    } else {
        for i in 0..lines {
            for p in 0..pairs {
                let second = if 2 * p + 1 < kc { *at(i, 2 * p + 1) } else { 0.0 };
                dst[i * row_words + p] = pair(*at(i, 2 * p), second);
            }
        }
    }
    for i in 0..lines {
        dst[i * row_words + pairs..(i + 1) * row_words].fill(0);
    }
    dst[lines * row_words..].fill(0);
}

/// `rows[i · row_words + j] = words[j · lines + i]` for j < 8 and every line i: eight runs of `lines` words (one per
/// pair) turned into eight words of each line's row, 8 × 8 transposes on AVX2 and the last lines one by one.
///
/// # Safety
/// AVX2; `words` holds `8 · lines` values and `rows` at least `(lines - 1) · row_words + 8`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose_into_rows(words: &[u32], lines: usize, rows: &mut [u32], row_words: usize) {
    use std::arch::x86_64::*;
    debug_assert!(words.len() >= 8 * lines && (lines == 0 || rows.len() >= (lines - 1) * row_words + 8));
    let src = words.as_ptr() as *const f32;
    let mut i = 0;
    while i + 8 <= lines {
        let block = transpose8(std::array::from_fn(|j| _mm256_loadu_ps(src.add(j * lines + i))));
        for (c, line) in block.into_iter().enumerate() {
            _mm256_storeu_ps(rows.as_mut_ptr().add((i + c) * row_words) as *mut f32, line);
        }
        i += 8;
    }
    for i in i..lines {
        for j in 0..8 {
            rows[i * row_words + j] = words[j * lines + i];
        }
    }
}

/// Packs `lines` lines over `kc` values of k into `dst` as consecutive strips of `W` lines, each strip `kc`
/// groups of `W` f32s (as their bits); lines past the last are zeros. Line `i`'s value at k is at
/// `base + i·line_stride + k·k_stride`.
///
/// # Safety
/// Every address named above must be readable; `dst` must hold `ceil(lines / W) · kc · W` values.
pub(super) unsafe fn pack_f32_strips<const W: usize>(
    dst: &mut [u32],
    base: *const f32,
    (line_stride, k_stride): (isize, isize),
    lines: usize,
    kc: usize,
) {
    let strip = kc * W;
    zero_partial_strip::<W>(dst, strip, lines);
    let at = |i: usize, k: usize| base.offset(i as isize * line_stride + k as isize * k_stride);
    if line_stride == 1 {
        // Each k contiguous across the lines: cut into the strips as it is.
        for k in 0..kc {
            let across = std::slice::from_raw_parts(at(0, k) as *const u32, lines);
            for (s, chunk) in across.chunks(W).enumerate() {
                dst[s * strip + k * W..][..chunk.len()].copy_from_slice(chunk);
            }
        }
    } else {
        let mut lines_done = 0;
        #[cfg(target_arch = "x86_64")]
        if k_stride == 1 && W >= 8 && std::is_x86_feature_detected!("avx2") {
            // Each line contiguous in k: whole strips go through 8 × 8 transposes; a partial last strip below.
            lines_done = in_groups_of_8::<W>(dst, strip, lines, |out, line, slot| {
                transpose_lines::<W>(out, at(line, 0), line_stride, slot, kc)
            });
        }
        // Each line (contiguous in k, or strided) spread one value per group.
        for i in lines_done..lines {
            let out = &mut dst[(i / W) * strip + i % W..];
            for k in 0..kc {
                out[k * W] = (*at(i, k)).to_bits();
            }
        }
    }
}

/// Zeroes the last strip (`strip_len` values) when `lines` leaves it partial: the kernel reads all `W` lines of a
/// strip, and the ones past the last must add nothing.
fn zero_partial_strip<const W: usize>(dst: &mut [u32], strip_len: usize, lines: usize) {
    if lines % W != 0 {
        let last = lines / W;
        dst[last * strip_len..(last + 1) * strip_len].fill(0);
    }
}

/// Runs `group(strip, line, slot)` for each group of 8 lines of every whole strip of `W` lines in `dst`
/// (`strip_len` values a strip): `strip` is the strip's part of `dst`, `line` the group's first line and `slot` its
/// position in the strip. The last group of a strip whose width is not a multiple of 8 overlaps the one before
/// it, writing its lines' values a second time, the same. Returns how many lines the whole strips hold.
#[cfg(target_arch = "x86_64")]
fn in_groups_of_8<const W: usize>(
    dst: &mut [u32],
    strip_len: usize,
    lines: usize,
    mut group: impl FnMut(&mut [u32], usize, usize),
) -> usize {
    const { assert!(W >= 8, "a strip narrower than a group of 8 lines") };
    for s in 0..lines / W {
        let strip = &mut dst[s * strip_len..(s + 1) * strip_len];
        for first in (0..W).step_by(8) {
            let slot = first.min(W - 8);
            group(strip, s * W + slot, slot);
        }
    }
    lines / W * W
}

/// `out[k·W + at + r] = line r's value at k` for 8 lines, each contiguous in k, the first at `base` and the next
/// `line_stride` after the one before: 8 × 8 transposes on AVX2, the last k's one by one.
///
/// # Safety
/// AVX2; the 8 lines' `kc` values must be readable; `at + 8 ≤ W`; `out` must hold `kc · W` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose_lines<const W: usize>(out: &mut [u32], base: *const f32, line_stride: isize, at: usize, kc: usize) {
    use std::arch::x86_64::*;
    debug_assert!(at + 8 <= W && out.len() >= kc * W);
    let row = |r: usize| base.offset(r as isize * line_stride);
    let dst = out.as_mut_ptr().add(at) as *mut f32;
    let mut k = 0;
    while k + 8 <= kc {
        let columns = transpose8(std::array::from_fn(|i| _mm256_loadu_ps(row(i).add(k))));
        for (j, column) in columns.into_iter().enumerate() {
            _mm256_storeu_ps(dst.add((k + j) * W), column);
        }
        k += 8;
    }
    for k in k..kc {
        for r in 0..8 {
            *dst.add(k * W + r) = *row(r).add(k);
        }
    }
}

/// As [`transpose_lines`] for the bf16 kernel: `out[p·W + at + r] = line r's pair p`, rounded.
///
/// # Safety
/// As for [`transpose_lines`], with `out` of `ceil(kc / 2) · W` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose_pairs<const W: usize>(out: &mut [u32], base: *const f32, line_stride: isize, at: usize, kc: usize) {
    use std::arch::x86_64::*;
    let pairs = kc.div_ceil(2);
    debug_assert!(at + 8 <= W && out.len() >= pairs * W);
    let row = |r: usize| base.offset(r as isize * line_stride);
    let dst = out.as_mut_ptr().add(at);
    let mut p = 0;
    while 2 * p + 16 <= kc {
        let lines = std::array::from_fn(|i| _mm256_castsi256_ps(eight_pairs(row(i).add(2 * p))));
        for (j, column) in transpose8(lines).into_iter().enumerate() {
            _mm256_storeu_ps(dst.add((p + j) * W) as *mut f32, column);
        }
        p += 8;
    }
    for p in p..pairs {
        for r in 0..8 {
            let second = if 2 * p + 1 < kc { *row(r).add(2 * p + 1) } else { 0.0 };
            *dst.add(p * W + r) = pair(*row(r).add(2 * p), second);
        }
    }
}

/// The 8 × 8 transpose of `r` (eight rows of eight lanes): column j of the block as the j-th vector.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose8(r: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xee>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xee>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xee>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xee>(t5, t7);
    // Column j: rows 0..4 in the lower half, 4..8 in the upper.
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}

/// `out[p] = pair(values[2p], values[2p + 1])`, the last one's second zero when `values` is odd in length.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2"))]
unsafe fn pairs_of_line(values: &[f32], out: &mut [u32]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        while done + 16 <= values.len() {
            let packed = eight_pairs(values.as_ptr().add(done));
            _mm256_storeu_si256(out.as_mut_ptr().add(done / 2) as *mut __m256i, packed);
            done += 16;
        }
    }
    for (slot, two) in out[done / 2..].iter_mut().zip(values[done..].chunks(2)) {
        *slot = pair(two[0], two.get(1).copied().unwrap_or(0.0));
    }
}

/// `out[i] = pair(first[i], second[i])`, or the first alone where there is no second.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2"))]
unsafe fn interleave(first: &[f32], second: Option<&[f32]>, out: &mut [u32]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if let Some(second) = second {
        use std::arch::x86_64::*;
        let high = _mm256_set1_epi32(0xffff_0000u32 as i32);
        while done + 8 <= first.len() {
            let a = _mm256_srli_epi32::<16>(rounded(first.as_ptr().add(done)));
            let b = _mm256_and_si256(rounded(second.as_ptr().add(done)), high);
            _mm256_storeu_si256(out.as_mut_ptr().add(done) as *mut __m256i, _mm256_or_si256(a, b));
            done += 8;
        }
    }
    for i in done..first.len() {
        out[i] = pair(first[i], second.map_or(0.0, |s| s[i]));
    }
}

/// The 16 values at `at` as 8 pairs in order: both halves rounded, their bf16s (the upper 16 bits) packed into
/// one run of 16 u16s, which as u32s are the pairs (packus interleaves 128-bit lanes; the permute puts them back).
///
/// # Safety
/// AVX2; 16 f32s readable at `at`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn eight_pairs(at: *const f32) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let a = _mm256_srli_epi32::<16>(rounded(at));
    let b = _mm256_srli_epi32::<16>(rounded(at.add(8)));
    _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(a, b))
}

/// Eight values at `at` with their bf16 in the upper 16 bits of each lane (the lower bits are left over):
/// [`bf16_bits`] on eight lanes at once.
///
/// # Safety
/// AVX2; eight f32s readable at `at`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn rounded(at: *const f32) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let x = _mm256_loadu_ps(at);
    let bits = _mm256_castps_si256(x);
    let odd = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(1));
    let nearest = _mm256_add_epi32(bits, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd));
    let quiet = _mm256_or_si256(bits, _mm256_set1_epi32(0x40_0000));
    let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
    _mm256_blendv_epi8(nearest, quiet, nan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even one, 1.
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up.
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16_bits(1.0 + 1.5 / 256.0), 0x3f81);
        assert_eq!(bf16_bits(-2.0), 0xc000);
        assert!(f32::from_bits(bf16_bits(f32::NAN) << 16).is_nan());
        assert_eq!(bf16_bits(f32::INFINITY), 0x7f80);
    }

    /// Values that exercise every rounding case, NaNs with payloads only in the low bits (which plain rounding
    /// would carry into infinity) and infinities.
    fn awkward(len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| match i % 9 {
                0 => f32::from_bits(0x7f80_0001),
                1 => f32::from_bits(0xff80_7fff),
                2 => f32::NEG_INFINITY,
                3 => 1.0 + 1.0 / 256.0,
                4 => 1.0 + 3.0 / 256.0,
                _ => (i as f32 * 0.731).sin() * 1e3,
            })
            .collect()
    }

    /// The vector paths give what the scalar rounding gives, value by value, on both layouts, for odd k and
    /// partial strips.
    #[test]
    fn vector_packing_matches_scalar_rounding() {
        if !std::is_x86_feature_detected!("avx2") {
            return;
        }
        bf16_packing_in_strips_of::<14>();
        bf16_packing_in_strips_of::<32>();
    }

    fn bf16_packing_in_strips_of<const W: usize>() {
        for (lines, kc) in [(37, 33), (14, 64), (5, 1), (29, 200), (70, 47)] {
            let values = awkward(lines * kc);
            let mut line = vec![0u32; 512];
            for (line_stride, k_stride) in [(kc as isize, 1), (1, lines as isize), (2 * kc as isize, 2)] {
                let needed = if k_stride == 2 { lines * kc * 2 } else { lines * kc };
                let mut source = vec![0f32; needed];
                for i in 0..lines {
                    for k in 0..kc {
                        source[(i as isize * line_stride + k as isize * k_stride) as usize] = values[i * kc + k];
                    }
                }
                let pairs = kc.div_ceil(2);
                let mut dst = vec![u32::MAX; lines.div_ceil(W) * pairs * W];
                unsafe {
                    pack_bf16_strips::<W>(&mut dst, source.as_ptr(), (line_stride, k_stride), lines, kc, &mut line)
                };
                for i in 0..lines.div_ceil(W) * W {
                    for p in 0..pairs {
                        let at = |k: usize| if i < lines && k < kc { values[i * kc + k] } else { 0.0 };
                        let want = bf16_bits(at(2 * p)) | (bf16_bits(at(2 * p + 1)) << 16);
                        let got = dst[(i / W) * pairs * W + p * W + i % W];
                        assert_eq!(got, want, "line {i}, pair {p}, strides ({line_stride}, {k_stride})");
                    }
                }
            }
        }
    }

    /// Row packing (AMX's left tiles) gives each line's rounded pairs in its row, zeros after them and in the
    /// rows past the last line, on both layouts and a generic stride, over a buffer that held other values.
    #[test]
    fn bf16_rows_hold_each_lines_pairs() {
        if !std::is_x86_feature_detected!("avx2") {
            return;
        }
        for (lines, kc, row_words) in [(37, 33, 32), (14, 64, 32), (5, 1, 16), (70, 47, 48)] {
            let values = awkward(lines * kc);
            let mut line = vec![0u32; 8 * lines];
            for (line_stride, k_stride) in [(kc as isize, 1), (1, lines as isize), (2 * kc as isize, 2)] {
                let mut source = vec![0f32; lines * kc * 2];
                for i in 0..lines {
                    for k in 0..kc {
                        source[(i as isize * line_stride + k as isize * k_stride) as usize] = values[i * kc + k];
                    }
                }
                let rows = lines.next_multiple_of(32);
                let mut dst = vec![u32::MAX; rows * row_words];
                let strides = (line_stride, k_stride);
                unsafe { pack_bf16_rows(&mut dst, source.as_ptr(), strides, lines, kc, row_words, &mut line) };
                for i in 0..rows {
                    for p in 0..row_words {
                        let at = |k: usize| if i < lines && k < kc { values[i * kc + k] } else { 0.0 };
                        let want = bf16_bits(at(2 * p)) | (bf16_bits(at(2 * p + 1)) << 16);
                        let got = dst[i * row_words + p];
                        assert_eq!(got, want, "line {i}, word {p}, strides ({line_stride}, {k_stride})");
                    }
                }
            }
        }
    }

    /// f32 packing puts every value, as it is, where the f32 kernel reads it, on both layouts and a generic
    /// stride, with partial strips.
    #[test]
    fn f32_packing_places_every_value() {
        f32_packing_in_strips_of::<14>();
        f32_packing_in_strips_of::<32>();
    }

    fn f32_packing_in_strips_of<const W: usize>() {
        for (lines, kc) in [(37, 33), (14, 64), (5, 1), (70, 47)] {
            let values = awkward(lines * kc);
            for (line_stride, k_stride) in [(kc as isize, 1), (1, lines as isize), (2 * kc as isize, 2)] {
                let mut source = vec![0f32; lines * kc * 2];
                for i in 0..lines {
                    for k in 0..kc {
                        source[(i as isize * line_stride + k as isize * k_stride) as usize] = values[i * kc + k];
                    }
                }
                let mut dst = vec![u32::MAX; lines.div_ceil(W) * kc * W];
                unsafe { pack_f32_strips::<W>(&mut dst, source.as_ptr(), (line_stride, k_stride), lines, kc) };
                for i in 0..lines.div_ceil(W) * W {
                    for k in 0..kc {
                        let want = if i < lines { values[i * kc + k].to_bits() } else { 0 };
                        let got = dst[(i / W) * kc * W + k * W + i % W];
                        assert_eq!(got, want, "line {i}, k {k}, strides ({line_stride}, {k_stride})");
                    }
                }
            }
        }
    }
}
