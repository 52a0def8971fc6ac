//! CPU matmul throughput at the shapes a training step multiplies (the bench-train models' projections, lm_head
//! and their backward products, 1024 rows), for each backend this machine has: the `gemm` crate (candle's) and
//! the system's OpenBLAS (loaded at run time when installed); then PyTorch's own (MKL on x86) at the same shapes,
//! from the bench venv (bench/pytorch/matmul.py). GFLOP/s, best of several runs; the first line names the CPU.
//!
//! Then causal self-attention, forward and backward, at the bench models' shapes: FreezeTune's fused CPU kernel
//! against PyTorch's `scaled_dot_product_attention(is_causal=True)`, milliseconds, best of several runs.
//!
//! Run: `cargo run --release -p freezetune-bench --bin bench-matmul`

use std::time::Instant;

/// (label, m, k, n, transposed rhs): dst (m×n) = lhs (m×k) · rhs (k×n); "xWᵀ" reads a weight stored (n, k).
const SHAPES: &[(&str, usize, usize, usize, bool)] = &[
    ("31M q/o  x·Wᵀ", 1024, 512, 512, true),
    ("31M qkv x·Wᵀ", 1024, 512, 1536, true),
    ("31M gate x·Wᵀ", 1024, 512, 1376, true),
    ("31M down x·Wᵀ", 1024, 1376, 512, true),
    ("31M head x·Wᵀ", 1024, 512, 8000, true),
    ("31M dx  dy·W", 1024, 1376, 512, false),
    ("135M gate x·Wᵀ", 1024, 576, 1536, true),
    ("135M down x·Wᵀ", 1024, 1536, 576, true),
    ("135M head x·Wᵀ", 1024, 576, 49152, true),
];

fn best_seconds(mut f: impl FnMut()) -> f64 {
    f();
    (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    // OpenBLAS is off in training unless asked for (fused/blas.rs); here it is the point of comparison.
    if std::env::var_os("FREEZETUNE_BLAS").is_none() {
        std::env::set_var("FREEZETUNE_BLAS", "auto");
    }
    let threads = rayon::current_num_threads();
    println!("{}", bench_cpu_line());
    println!("threads: {threads}");
    let blas = freezetune_train::fused::blas::openblas();
    match blas {
        Some(b) => println!("OpenBLAS: {}", b.description),
        None => println!("OpenBLAS: not loaded (install libopenblas0, or FREEZETUNE_BLAS=/path/libopenblas.so)"),
    }
    println!(
        "\n{:<16} {:>16} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "shape", "m x k x n", "gemm", "OpenBLAS", "FT f32", "FT packed", "FT bf16"
    );
    let bf16 = freezetune_train::fused::bf16_matmul_available();
    for &(label, m, k, n, transposed) in SHAPES {
        let lhs: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 * 1e-3).collect();
        let rhs: Vec<f32> = (0..k * n).map(|i| ((i * 104729) % 1000) as f32 * 1e-3).collect();
        let mut dst = vec![0f32; m * n];
        // rhs (k×n): row-major (n, 1) strides, or a weight (n, k) read transposed: (1, k).
        let (rs, cs) = if transposed { (1, k as isize) } else { (n as isize, 1) };
        let flops = 2.0 * (m * n * k) as f64;
        let gemm_s = best_seconds(|| unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                n as isize,
                false,
                lhs.as_ptr(),
                1,
                k as isize,
                rhs.as_ptr(),
                cs,
                rs,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(threads),
            )
        });
        let blas_s = blas.map(|b| {
            best_seconds(|| unsafe {
                b.sgemm(
                    m,
                    n,
                    k,
                    (dst.as_mut_ptr(), n as isize, 1),
                    (lhs.as_ptr(), k as isize, 1),
                    (rhs.as_ptr(), rs, cs),
                );
            })
        });
        // The layers' f32 products as training runs them, on each f32 kernel, alternating.
        let f32_on = |kernel| {
            freezetune_train::fused::with_f32_kernel(kernel, || {
                best_seconds(|| {
                    let out = freezetune_train::fused::rows_times_weight(&lhs, &rhs, m, n, k, transposed).unwrap();
                    assert_eq!(out.len(), m * n);
                })
            })
        };
        use freezetune_train::fused::F32Kernel;
        let packed = freezetune_train::fused::f32_kernel_available();
        let (mut f32_s, mut packed_s) = (f64::INFINITY, packed.then_some(f64::INFINITY));
        for _ in 0..3 {
            f32_s = f32_s.min(f32_on(F32Kernel::Gemm));
            packed_s = packed_s.map(|s| s.min(f32_on(F32Kernel::Packed)));
        }
        // FreezeTune's bf16 matmul (operands rounded to bf16, f32 sums), as a bf16 run's layers multiply.
        let bf16_s = bf16.then(|| {
            freezetune_train::fused::with_bf16_matmuls(true, || {
                best_seconds(|| {
                    let out = freezetune_train::fused::rows_times_weight(&lhs, &rhs, m, n, k, transposed).unwrap();
                    assert_eq!(out.len(), m * n);
                })
            })
        });
        let rate = |s: Option<f64>| s.map_or("-".into(), |s| format!("{:.1}", flops / s / 1e9));
        println!(
            "{:<16} {:>16} {:>10.1} {:>10} {:>10.1} {:>10} {:>10}",
            label,
            format!("{m}x{k}x{n}"),
            flops / gemm_s / 1e9,
            rate(blas_s),
            flops / f32_s / 1e9,
            rate(packed_s),
            rate(bf16_s),
        );
    }
    println!(
        "(GFLOP/s, best of 5; FT f32: a linear layer's product as training runs it (on gemm); FT packed: the same on \
         FreezeTune's own AVX-512 f32 kernel (FREEZETUNE_F32_MATMUL=packed); FT bf16: on its AMX kernel where the \
         CPU has AMX (FREEZETUNE_AMX=0: its AVX512-BF16 kernel), else its AVX512-BF16 one; '-' where this CPU has \
         none)"
    );
    let attention = attention_shapes();
    let venv = std::env::var("FREEZETUNE_BENCH_VENV").unwrap_or_else(|_| "/var/tmp/freezetune-bench-venv".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/pytorch/matmul.py");
    let shapes: Vec<String> = SHAPES
        .iter()
        .map(|&(_, m, k, n, t)| format!("{m},{k},{n},{}", t as u8))
        .collect();
    match std::process::Command::new(format!("{venv}/bin/python"))
        .arg(script)
        .arg(threads.to_string())
        .args(&shapes)
        .args(
            attention
                .iter()
                .map(|&(_, b, h, kv, t, d)| format!("attn:{b},{h},{kv},{t},{d}")),
        )
        .output()
    {
        Ok(out) if out.status.success() => print!("\nPyTorch, same shapes:\n{}", String::from_utf8_lossy(&out.stdout)),
        _ => println!("\nPyTorch comparison skipped (run bench-train once to install its venv at {venv})"),
    }
}

/// (label, batch, heads, kv heads, seq, head_dim): the bench-train models' attention.
const ATTENTION: &[(&str, usize, usize, usize, usize, usize)] = &[
    ("31M attention", 4, 8, 8, 256, 64),
    ("135M attention", 2, 9, 3, 512, 64),
];

/// Times the fused causal attention's forward and backward pass at each [`ATTENTION`] shape and prints them;
/// returns the shapes for PyTorch's side.
fn attention_shapes() -> &'static [(&'static str, usize, usize, usize, usize, usize)] {
    use candle_core::{Device, Tensor, Var};
    println!("\ncausal attention, forward + backward (ms, best of 5):");
    for &(label, b, h, kv, t, d) in ATTENTION {
        let dev = Device::Cpu;
        let var = |heads: usize| Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, heads, t, d), &dev).unwrap()).unwrap();
        let (q, k, v) = (var(h), var(kv), var(kv));
        let lens = Tensor::from_vec(vec![t as f32; b], (b, 1, 1), &dev).unwrap();
        let mask = freezetune_train::attention::additive_mask(0..t, 0..t, None, Some(&lens), &dev).unwrap();
        let seconds = best_seconds(|| {
            let y = freezetune_train::fused::causal_attention(&q, &k, &v, &mask, 0.125).unwrap();
            let grads = y.sum_all().unwrap().backward().unwrap();
            assert!(grads.get(&q).is_some());
        });
        println!(
            "{label:<16} {:>16} {:>10.1}",
            format!("{b}x{h}/{kv}x{t}x{d}"),
            seconds * 1e3
        );
    }
    ATTENTION
}

fn bench_cpu_line() -> String {
    format!(
        "CPU: {}, SIMD {}",
        freezetune_train::device::cpu_name(),
        freezetune_train::device::cpu_simd_level()
    )
}
