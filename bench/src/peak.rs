//! The machine's f32 peak, measured rather than looked up: every thread runs independent fused multiply-adds at
//! the widest width this CPU has (AVX-512, else AVX2+FMA), a dozen accumulators deep so each FMA unit stays busy.
//! A training step's GFLOP/s over this is the share of the machine it used (clock boost and a shared host make the
//! figure approximate; it is a ceiling, not a target).

use std::time::Instant;

/// Peak f32 GFLOP/s on `threads` threads at once.
pub fn f32_gflops(threads: usize) -> f64 {
    let iters = 20_000_000usize;
    let start = Instant::now();
    let flops_each: f64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(move || one_thread(iters))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
    });
    flops_each / start.elapsed().as_secs_f64() / 1e9
}

/// Runs `iters` rounds of FMAs and returns the FLOPs done.
fn one_thread(iters: usize) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked above).
            let sink = unsafe { fma_avx512(iters) };
            std::hint::black_box(sink);
            return ((iters / INNER * INNER) * ACC * 16 * 2) as f64;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            let sink = unsafe { fma_avx2(iters) };
            std::hint::black_box(sink);
            return ((iters / INNER * INNER) * ACC * 8 * 2) as f64;
        }
    }
    let mut acc = [1.0f32; ACC * 4];
    for _ in 0..iters / 4 {
        for a in acc.iter_mut() {
            *a = a.mul_add(0.999_999_9, 1e-7);
        }
    }
    std::hint::black_box(acc);
    (iters / 4 * ACC * 4 * 2) as f64
}

const ACC: usize = 12;
/// FMA rounds between two black boxes.
const INNER: usize = 256;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_avx512(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_ps(0.999_999_9), _mm512_set1_ps(1e-7));
    let mut acc = [_mm512_set1_ps(1.0); ACC];
    for _ in 0..iters / INNER {
        // black_box per block of rounds: the accumulators must really be computed (LLVM otherwise drops the loop).
        acc = std::hint::black_box(acc);
        for _ in 0..INNER {
            for r in acc.iter_mut() {
                *r = _mm512_fmadd_ps(*r, a, b);
            }
        }
    }
    acc.iter().map(|r| _mm512_reduce_add_ps(*r)).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_avx2(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_set1_ps(0.999_999_9), _mm256_set1_ps(1e-7));
    let mut acc = [_mm256_set1_ps(1.0); ACC];
    for _ in 0..iters / INNER {
        acc = std::hint::black_box(acc);
        for _ in 0..INNER {
            for r in acc.iter_mut() {
                *r = _mm256_fmadd_ps(*r, a, b);
            }
        }
    }
    let mut out = [0f32; 8];
    let sum = acc.iter().fold(_mm256_setzero_ps(), |s, r| _mm256_add_ps(s, *r));
    _mm256_storeu_ps(out.as_mut_ptr(), sum);
    out.iter().sum()
}
