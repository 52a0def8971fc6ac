//! llama.cpp's Q4_K encoding, written for speed. The math is candle's `BlockQ4K::from_float` (itself llama.cpp's
//! `quantize_row_q4_K_ref` with `make_qkx1_quants`: per 32 values an affine 4-bit fit refined five times, then the
//! eight scales and minima of a 256-value block quantized to 6 bits against two f16 super-scales). candle's version
//! allocates a vector per 32 values and rounds through a libm call: on a 7B model that was 15 minutes of loading on
//! two cores. This one keeps everything on the stack and rounds inline, the same way (halves away from zero), so its
//! blocks are candle's byte for byte.
//!
//! Block layout (144 bytes): d (f16), dmin (f16), 12 bytes of packed 6-bit scales and minima, 128 bytes of 4-bit
//! levels (the low nibbles hold values 0..32 of each 64, the high nibbles values 32..64).

use half::f16;

pub const BLOCK_VALUES: usize = 256;
pub const BLOCK_BYTES: usize = 144;

/// `v.round() as i32` (halves away from zero) without a libm call: in f64, where `|v| + 0.5` is exact for every
/// f32 below 2^29, and truncation by conversion. Larger values saturate, as the clamps that follow want.
#[inline(always)]
fn nearest_int(v: f32) -> i32 {
    let r = (v.abs() as f64 + 0.5) as i32;
    if v < 0.0 {
        -r
    } else {
        r
    }
}

/// An affine 4-bit fit of 32 values: (scale, -min) with `x ≈ scale * l - (-min)`, `l` in 0..=15.
fn fit_32(x: &[f32]) -> (f32, f32) {
    let (mut min, max) = x.iter().fold((x[0], x[0]), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    if max == min {
        return (0.0, 0.0);
    }
    min = min.min(0.0);
    let mut iscale = 15.0 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut levels = [0u8; 32];
    for _ in 0..5 {
        let (mut sumlx, mut suml2, mut changed) = (0f32, 0i32, false);
        for (l, &v) in levels.iter_mut().zip(x) {
            let li = nearest_int(iscale * (v - min)).clamp(0, 15);
            changed |= li as u8 != *l;
            *l = li as u8;
            sumlx += (v - min) * li as f32;
            suml2 += li * li;
        }
        scale = sumlx / suml2 as f32;
        let sum: f32 = x.iter().zip(&levels).map(|(&v, &l)| v - scale * l as f32).sum();
        min = (sum / 32.0).min(0.0);
        iscale = 1.0 / scale;
        if !changed {
            break;
        }
    }
    (scale, -min)
}

/// 6-bit scale and minimum of sub-block `j` from the packed bytes.
fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Encodes 256 values into one 144-byte block.
pub fn encode_block(x: &[f32], out: &mut [u8]) {
    debug_assert_eq!((x.len(), out.len()), (BLOCK_VALUES, BLOCK_BYTES));
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    for j in 0..8 {
        (scales[j], mins[j]) = fit_32(&x[32 * j..32 * j + 32]);
    }
    let max_scale = scales.iter().fold(0f32, |m, &v| v.max(m));
    let max_min = mins.iter().fold(0f32, |m, &v| v.max(m));
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..8 {
        let ls = nearest_int(inv_scale * scales[j]).min(63) as u8;
        let lm = nearest_int(inv_min * mins[j]).min(63) as u8;
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    let mut levels = [0u8; BLOCK_VALUES];
    for j in 0..8 {
        let (sc, m) = scale_min(j, &packed);
        let step = d.to_f32() * sc as f32;
        if step == 0.0 {
            continue;
        }
        let offset = dmin.to_f32() * m as f32;
        for i in 32 * j..32 * j + 32 {
            levels[i] = nearest_int((x[i] + offset) / step).clamp(0, 15) as u8;
        }
    }
    out[0..2].copy_from_slice(&d.to_le_bytes());
    out[2..4].copy_from_slice(&dmin.to_le_bytes());
    out[4..16].copy_from_slice(&packed);
    for (chunk, q) in out[16..].chunks_mut(32).enumerate() {
        let base = chunk * 64;
        for (i, byte) in q.iter_mut().enumerate() {
            *byte = levels[base + i] | (levels[base + i + 32] << 4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_is_round() {
        for v in [
            0.4f32,
            0.5,
            1.5,
            2.5,
            2.6,
            -1.5,
            -2.5,
            14.49,
            -0.6,
            0.49999997,
            -0.49999997,
            8388607.5,
            0.0,
            -0.0,
        ] {
            assert_eq!(nearest_int(v), v.round() as i32, "{v}");
        }
    }
}
