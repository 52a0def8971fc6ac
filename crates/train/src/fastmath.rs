//! `exp` and the row reductions (sum, dot products, max) over slices of f32, vectorised. libm's `expf` is one
//! call per element (about 3 ns here), and the softmax, SiLU and cross-entropy kernels take tens of millions of
//! them per step; this is the Cephes range reduction and polynomial, branch-free so the compiler vectorises the
//! loop, compiled three times on x86-64 (baseline SSE2, AVX2 + FMA, and AVX-512 with 16 lanes, the widest the CPU
//! has chosen at run time). Relative error below 2e-7 over the whole range; exactly 0 below -87.3 (where f32
//! underflows) and +inf above 88.7, as `expf` gives.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 · 2^23: adding and subtracting it rounds an f32 of magnitude < 2^22 to the nearest integer.
const ROUND: f32 = 12_582_912.0;
const MIN_X: f32 = -87.336_55;
const MAX_X: f32 = 88.722_83;

#[inline(always)]
fn exp1(x: f32) -> f32 {
    let xc = x.clamp(MIN_X, MAX_X);
    let rounded = xc * LOG2E + ROUND;
    let n = rounded - ROUND;
    // The integer n read from the rounded float's mantissa bits: an `as i32` cast would be saturating (NaN → 0),
    // which the compiler does lane by lane, and that alone made the loop as slow as `expf`.
    let n_int = (rounded.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let y = p * r * r + r + 1.0;
    // 2^n by building the exponent bits; n + 127 is in 1..=255 after the clamp except at the very top, where
    // MAX_X rounds to n = 128: split the scale in two there so it overflows to inf, not to garbage.
    let half = n_int >> 1;
    let s1 = f32::from_bits(((half + 127) as u32) << 23);
    let s2 = f32::from_bits(((n_int - half + 127) as u32) << 23);
    let v = y * s1 * s2;
    let v = if x < MIN_X { 0.0 } else { v };
    if x > MAX_X {
        f32::INFINITY
    } else {
        v
    }
}

#[inline(always)]
fn exp_slice_generic(xs: &mut [f32]) {
    for x in xs {
        *x = exp1(*x);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_slice_avx2(xs: &mut [f32]) {
    exp_slice_generic(xs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn exp_slice_avx512(xs: &mut [f32]) {
    exp_slice_generic(xs)
}

/// `x = exp(x)` for every element (NaN stays NaN).
pub fn exp_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has the features the function was compiled for (AVX-512F implies AVX2 and FMA).
        unsafe { exp_slice_avx512(xs) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function was compiled for.
        unsafe { exp_slice_avx2(xs) };
        return;
    }
    exp_slice_generic(xs)
}

/// tanh of one value from [`exp1`]: `1 − 2 / (1 + exp(2x))`, and near 0 (|x| < 0.1, where that form loses digits
/// to cancellation) the series `x − x³/3 + 2x⁵/15 − 17x⁷/315`. Absolute error about 1e-7, exactly ±1 in the tails.
#[inline(always)]
fn tanh1(x: f32) -> f32 {
    let wide = 1.0 - 2.0 / (1.0 + exp1(2.0 * x));
    let x2 = x * x;
    let series = x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0))));
    if x.abs() < 0.1 {
        series
    } else {
        wide
    }
}

#[inline(always)]
fn tanh_slice_generic(xs: &mut [f32]) {
    for x in xs {
        *x = tanh1(*x);
    }
}

/// `out = exp(x - shift)` for every element; returns the sum of `out`.
pub fn exp_shifted_sum(x: &[f32], shift: f32, out: &mut [f32]) -> f32 {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v - shift;
    }
    exp_in_place(out);
    sum(out)
}

// Reductions. A plain `iter().sum()` is one serial chain of scalar adds (the compiler may not reorder float
// additions), which profiles showed as the largest share of the fused kernels' time; these keep `LANES`
// independent partial results, which the compiler holds in SIMD registers, and add them up at the end. The
// order of additions differs from a serial sum, within f32 rounding.

const LANES: usize = 16;

/// `x` as whole runs of `LANES` values, and the rest.
#[inline(always)]
fn lanes(x: &[f32]) -> (impl Iterator<Item = &[f32; LANES]>, &[f32]) {
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    (
        chunks.map(|c| c.try_into().expect("chunks_exact yields LANES values")),
        tail,
    )
}

#[inline(always)]
fn sum_generic(x: &[f32]) -> f32 {
    let (chunks, tail) = lanes(x);
    let mut acc = [0f32; LANES];
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

#[inline(always)]
fn dot_generic(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len().min(y.len());
    let ((xc, xt), (yc, yt)) = (lanes(&x[..n]), lanes(&y[..n]));
    let mut acc = [0f32; LANES];
    for (a, b) in xc.zip(yc) {
        for l in 0..LANES {
            acc[l] += a[l] * b[l];
        }
    }
    acc.iter().sum::<f32>() + xt.iter().zip(yt).map(|(a, b)| a * b).sum::<f32>()
}

#[inline(always)]
fn dot3_generic(x: &[f32], y: &[f32], z: &[f32]) -> f32 {
    let n = x.len().min(y.len()).min(z.len());
    let (xc, xt) = lanes(&x[..n]);
    let (yc, yt) = lanes(&y[..n]);
    let (zc, zt) = lanes(&z[..n]);
    let mut acc = [0f32; LANES];
    for ((a, b), c) in xc.zip(yc).zip(zc) {
        for l in 0..LANES {
            acc[l] += a[l] * b[l] * c[l];
        }
    }
    let tail: f32 = xt.iter().zip(yt).zip(zt).map(|((a, b), c)| a * b * c).sum();
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn max_generic(x: &[f32]) -> f32 {
    let (chunks, tail) = lanes(x);
    let mut acc = [f32::NEG_INFINITY; LANES];
    for c in chunks {
        for l in 0..LANES {
            acc[l] = acc[l].max(c[l]);
        }
    }
    acc.into_iter()
        .chain(tail.iter().copied())
        .fold(f32::NEG_INFINITY, f32::max)
}

/// A function over slices compiled for AVX-512 and for AVX2 + FMA besides the baseline, the widest the CPU has
/// chosen at run time (the feature checks are cached loads).
macro_rules! simd_dispatch {
    ($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $generic:ident) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) -> $ret {
                    $generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) -> $ret {
                    $generic($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features `avx512` was compiled for (AVX-512F implies AVX2 and FMA).
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}

simd_dispatch!(
    /// `x = tanh(x)` for every element, vectorised as [`exp_in_place`] is (libm's `tanhf` is one call per element).
    #[allow(clippy::unused_unit)]
    tanh_in_place(xs: &mut [f32]) -> () = tanh_slice_generic
);
simd_dispatch!(
    /// Σ x.
    sum(x: &[f32]) -> f32 = sum_generic
);
simd_dispatch!(
    /// Σ x·y over the shorter length.
    dot(x: &[f32], y: &[f32]) -> f32 = dot_generic
);
simd_dispatch!(
    /// Σ x·y·z over the shortest length.
    dot3(x: &[f32], y: &[f32], z: &[f32]) -> f32 = dot3_generic
);
simd_dispatch!(
    /// The largest element, NaNs ignored (as `f32::max` folds); −∞ for an empty slice.
    max(x: &[f32]) -> f32 = max_generic
);

/// `σ(x) = 1 / (1 + exp(-x))` for every element of `x`, written to `out`.
pub fn sigmoid_into(x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = -v;
    }
    exp_in_place(out);
    for o in out.iter_mut() {
        *o = 1.0 / (1.0 + *o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tanh_is_within_2e7_of_libms_over_the_whole_range() {
        let xs: Vec<f32> = (-40_000..=40_000)
            .map(|i| i as f32 * 2.5e-4)
            .chain([-90.0, 90.0, 1e-30, -1e-30])
            .collect();
        let mut got = xs.clone();
        tanh_in_place(&mut got);
        for (&x, &t) in xs.iter().zip(&got) {
            let want = (x as f64).tanh();
            assert!((t as f64 - want).abs() < 2e-7, "tanh({x}) = {t}, want {want}");
        }
        let mut nan = [f32::NAN];
        tanh_in_place(&mut nan);
        assert!(nan[0].is_nan());
    }

    fn rel_err(x: f32) -> f64 {
        let mut v = [x];
        exp_in_place(&mut v);
        let want = (x as f64).exp();
        ((v[0] as f64 - want) / want).abs()
    }

    #[test]
    fn exp_matches_f64_across_the_range() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.5 {
            worst = worst.max(rel_err(x));
            x += 0.0137;
        }
        assert!(worst < 2e-7, "worst relative error {worst}");
        for x in [0.0f32, 1e-8, -1e-8, 0.5, -0.5, 1.0, std::f32::consts::LN_2] {
            assert!(rel_err(x) < 2e-7, "exp({x})");
        }
    }

    #[test]
    fn exp_edges_are_those_of_expf() {
        let mut v = [-1e9f32, -100.0, f32::NEG_INFINITY, 100.0, f32::INFINITY, f32::NAN, 0.0];
        exp_in_place(&mut v);
        assert_eq!(
            &v[..6].iter().map(|v| v.to_bits()).collect::<Vec<_>>()[..5],
            &[0, 0, 0, f32::INFINITY.to_bits(), f32::INFINITY.to_bits()]
        );
        assert!(v[5].is_nan());
        assert_eq!(v[6], 1.0);
        // The largest finite input still gives a finite result, the smallest normal region stays normal.
        let mut top = [88.7f32, -87.0];
        exp_in_place(&mut top);
        assert!(top[0].is_finite() && (top[0] as f64 / (88.7f32 as f64).exp() - 1.0).abs() < 1e-6);
        assert!(top[1] > 0.0 && top[1].is_normal());
    }

    #[test]
    fn the_vector_and_scalar_paths_agree() {
        let xs: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.173).collect();
        let mut fast = xs.clone();
        exp_in_place(&mut fast);
        let mut plain = xs.clone();
        exp_slice_generic(&mut plain);
        assert_eq!(fast, plain, "the SIMD path differs from the scalar one");
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            let mut avx2 = xs.clone();
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            unsafe { exp_slice_avx2(&mut avx2) };
            assert_eq!(avx2, plain, "the AVX2 path differs from the scalar one");
        }
    }

    #[test]
    fn reductions_agree_with_serial_f64_at_every_tail_length() {
        for len in [0usize, 1, 15, 16, 17, 100, 8000] {
            let x: Vec<f32> = (0..len).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
            let y: Vec<f32> = (0..len).map(|i| ((i * 104729) % 997) as f32 * 1e-3 - 0.4).collect();
            let z: Vec<f32> = (0..len).map(|i| ((i * 31) % 101) as f32 * 1e-2).collect();
            let f64sum = |f: &dyn Fn(usize) -> f64| (0..len).map(f).sum::<f64>();
            let close = |got: f32, want: f64| (got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs());
            assert!(close(sum(&x), f64sum(&|i| x[i] as f64)), "sum, {len}");
            assert!(close(dot(&x, &y), f64sum(&|i| x[i] as f64 * y[i] as f64)), "dot, {len}");
            let want3 = f64sum(&|i| x[i] as f64 * y[i] as f64 * z[i] as f64);
            assert!(close(dot3(&x, &y, &z), want3), "dot3, {len}");
            let want_max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&x), want_max, "max, {len}");
            assert_eq!(max_generic(&x), want_max, "baseline max, {len}");
            assert!(close(sum_generic(&x), f64sum(&|i| x[i] as f64)), "baseline sum, {len}");
        }
        // NaNs are passed over by max as f32::max folds them; a lone NaN leaves −∞.
        let mut x = vec![1.0f32; 40];
        x[3] = f32::NAN;
        x[33] = 7.0;
        assert_eq!(max(&x), 7.0);
        assert_eq!(max(&[f32::NAN]), f32::NEG_INFINITY);
    }

    #[test]
    fn sigmoid_and_shifted_sum() {
        let x = [-3.0f32, 0.0, 2.5];
        let mut s = [0f32; 3];
        sigmoid_into(&x, &mut s);
        for (s, x) in s.iter().zip(x) {
            assert!((s - 1.0 / (1.0 + (-x).exp())).abs() < 1e-7);
        }
        let mut out = [0f32; 3];
        let sum = exp_shifted_sum(&x, 2.5, &mut out);
        let want: f32 = x.iter().map(|v| (v - 2.5).exp()).sum();
        assert!((sum - want).abs() < 1e-6 && out[2] == 1.0);
    }
}
