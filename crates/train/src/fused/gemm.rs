//! Direct calls into the `gemm` crate (candle's own CPU matmul) on raw strided f32 matrices, for fused kernels
//! that write straight into their output layout instead of going through candle's matmul and a copy; and, for
//! the big matmuls of a linear layer, the choice between `gemm` and OpenBLAS (`blas.rs`), measured once per shape.

use super::packed_gemm::{self, Precision};
use super::{amx, amx_gemm, blas};
pub(super) use gemm::Parallelism;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// A raw pointer that tasks writing disjoint parts of one buffer may share.
#[derive(Clone, Copy)]
pub(super) struct Shared(pub *mut f32);
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The element `offset` past the start (a method, so closures capture the `Shared`, not its raw pointer).
    ///
    /// # Safety
    /// `offset` must be inside the buffer.
    pub(super) unsafe fn at(self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

/// A buffer of `len` f32s that `fill` writes in full, never zero-filled first: the zero-fill of every matmul's
/// output (which the matmul then overwrites) was 2-3% of a training step's CPU time, memset on recycled heap memory.
///
/// # Safety
/// `fill` must write every one of the `len` values through the pointer it is given, and read none it has not
/// written.
pub(super) unsafe fn written(len: usize, fill: impl FnOnce(*mut f32)) -> Vec<f32> {
    let mut buffer: Vec<f32> = Vec::with_capacity(len);
    fill(buffer.as_mut_ptr());
    buffer.set_len(len);
    buffer
}

/// gemm's own threads for the big matmuls of a layer (rows × features is large); one thread where splitting
/// would cost more than it saves.
pub(super) fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 && m * n * k >= 1 << 18 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// A strided matrix: pointer, row stride, column stride.
#[derive(Clone, Copy)]
pub(super) struct Mat(pub *const f32, pub isize, pub isize);
// SAFETY: a Mat is an address; the functions that use it state what must hold: operands are only read, and
// tasks that share a destination write disjoint parts of it.
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}

thread_local! {
    /// Whether the big matmuls issued from this thread run in bf16 ([`with_bf16_matmuls`]).
    static BF16_MATMULS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the layers' matmuls (a linear layer's, the MLP's and attention's projections, the head's: every
/// product of [`matmul_on`], [`matmul_scaled`] and [`matmul_fastest`], whatever its size) in bf16 on this thread
/// when `on` and the CPU has AVX512-BF16: f32 operands rounded to bf16, sums in f32, as torch's CPU autocast runs
/// a linear layer. The fused ops issue those products from the thread that runs the op, so a training step run
/// inside `f` gets them. Attention's per-head products ([`matmul`]) and the delta rule's chunks ([`f32_matmul`])
/// stay f32: they are a small part of the work, and the scores keep f32's precision.
pub fn with_bf16_matmuls<R>(on: bool, f: impl FnOnce() -> R) -> R {
    with_thread_setting(&BF16_MATMULS, on && packed_gemm::available(), f)
}

/// Runs `f` with this thread's `setting` at `value`, and puts the old value back however `f` ends, a panic
/// included.
fn with_thread_setting<T: Copy + 'static, R>(
    setting: &'static std::thread::LocalKey<std::cell::Cell<T>>,
    value: T,
    f: impl FnOnce() -> R,
) -> R {
    struct Restore<T: Copy + 'static>(&'static std::thread::LocalKey<std::cell::Cell<T>>, T);
    impl<T: Copy + 'static> Drop for Restore<T> {
        fn drop(&mut self) {
            self.0.with(|c| c.set(self.1));
        }
    }
    let _restore = Restore(setting, setting.with(|c| c.replace(value)));
    f()
}

thread_local! {
    /// Which kernel this thread's f32 layer products run on, where [`with_f32_kernel`] says.
    static F32_KERNEL: std::cell::Cell<Option<F32Kernel>> = const { std::cell::Cell::new(None) };
}

/// The kernels an f32 layer product can run on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum F32Kernel {
    /// The `gemm` crate's (candle's CPU matmul).
    Gemm,
    /// FreezeTune's own AVX-512 kernel (`packed_gemm.rs`).
    Packed,
}

/// Runs `f` with this thread's f32 layer products on `kernel` (the packed one only where the CPU has AVX-512).
pub fn with_f32_kernel<R>(kernel: F32Kernel, f: impl FnOnce() -> R) -> R {
    with_thread_setting(&F32_KERNEL, Some(kernel), f)
}

/// The process's f32 kernel: `gemm` unless `FREEZETUNE_F32_MATMUL=packed`. The packed kernel is not the default
/// because on the one CPU it was measured on in training (AMD EPYC, Zen 4) it ran level with `gemm` alone and
/// 1.0-1.1x slower in the step (`bench-train`'s f32 kernel table); it is there to be measured on other AVX-512
/// CPUs.
pub fn default_f32_kernel() -> F32Kernel {
    static KERNEL: std::sync::OnceLock<F32Kernel> = std::sync::OnceLock::new();
    *KERNEL.get_or_init(|| match std::env::var("FREEZETUNE_F32_MATMUL").as_deref() {
        Ok("packed") => F32Kernel::Packed,
        Ok("gemm") | Ok("") | Err(_) => F32Kernel::Gemm,
        Ok(other) => {
            eprintln!("FREEZETUNE_F32_MATMUL={other:?} is neither \"gemm\" nor \"packed\": using gemm");
            F32Kernel::Gemm
        }
    })
}

/// Whether the layers' f32 products run on FreezeTune's own AVX-512 kernel rather than the `gemm` crate.
fn packed_f32() -> bool {
    let chosen = F32_KERNEL.with(|c| c.get()).unwrap_or_else(default_f32_kernel);
    chosen == F32Kernel::Packed && packed_gemm::f32_available()
}

/// Whether the layers' products run in bf16 on this thread (see [`with_bf16_matmuls`]).
fn in_bf16() -> bool {
    BF16_MATMULS.with(|c| c.get())
}

/// `dst (m×n) = [dst +] lhs (m×k) · rhs (k×n)` on the calling thread.
///
/// # Safety
/// Every pointer must address a matrix of the stated shape and strides, and `dst` must not be written by another
/// thread meanwhile.
pub(super) unsafe fn matmul(m: usize, n: usize, k: usize, dst: Mat, accumulate: bool, lhs: Mat, rhs: Mat) {
    f32_matmul(Parallelism::None, m, n, k, dst, accumulate, lhs, rhs, 1.0)
}

/// As [`matmul`], split across `par`'s threads.
///
/// # Safety
/// As for [`matmul`].
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn matmul_on(
    par: Parallelism,
    m: usize,
    n: usize,
    k: usize,
    dst: Mat,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
) {
    matmul_scaled(par, m, n, k, dst, accumulate, lhs, rhs, 1.0)
}

/// `dst (m×n) = [dst +] scale · lhs (m×k) · rhs (k×n)`, split across `par`'s threads; in bf16 where
/// [`with_bf16_matmuls`] asks for it.
///
/// # Safety
/// As for [`matmul`].
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn matmul_scaled(
    par: Parallelism,
    m: usize,
    n: usize,
    k: usize,
    dst: Mat,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    scale: f32,
) {
    let threads = match par {
        Parallelism::Rayon(t) => t.max(1),
        _ => 1,
    };
    if in_bf16() {
        if amx::available() {
            return amx_gemm::matmul(threads, m, n, k, dst, accumulate, lhs, rhs, scale);
        }
        return packed_gemm::matmul(Precision::Bf16, threads, m, n, k, dst, accumulate, lhs, rhs, scale);
    }
    if packed_f32() {
        return packed_gemm::matmul(Precision::F32, threads, m, n, k, dst, accumulate, lhs, rhs, scale);
    }
    f32_matmul(par, m, n, k, dst, accumulate, lhs, rhs, scale)
}

/// As [`matmul_scaled`], always in f32 (on the `gemm` crate): for the small products inside other ops.
///
/// # Safety
/// As for [`matmul`].
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn f32_matmul(
    par: Parallelism,
    m: usize,
    n: usize,
    k: usize,
    dst: Mat,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    scale: f32,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst.0 as *mut f32,
        dst.2,
        dst.1,
        accumulate,
        lhs.0,
        lhs.2,
        lhs.1,
        rhs.0,
        rhs.2,
        rhs.1,
        1.0,
        scale,
        false,
        false,
        false,
        par,
    )
}

/// Which library multiplies a shape.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Backend {
    Gemm,
    OpenBlas,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Gemm => "gemm",
            Backend::OpenBlas => "OpenBLAS",
        }
    }
}

/// A shape and the operands' orientations (row-major or transposed): what a backend's speed depends on.
type ShapeKey = (usize, usize, usize, bool, bool);

/// Matmuls smaller than this always go to `gemm`: too short for timing to tell backends apart, and where
/// OpenBLAS's thread start-up dominates.
const MEASURED_WORK: usize = 1 << 22;

fn choices() -> &'static Mutex<HashMap<ShapeKey, Backend>> {
    static CHOICES: std::sync::OnceLock<Mutex<HashMap<ShapeKey, Backend>>> = std::sync::OnceLock::new();
    CHOICES.get_or_init(Default::default)
}

/// Every shape measured so far and its backend, sorted.
pub(super) fn all_chosen() -> Vec<(ShapeKey, Backend)> {
    let mut all: Vec<_> = choices()
        .lock()
        .map(|c| c.iter().map(|(k, b)| (*k, *b)).collect())
        .unwrap_or_default();
    all.sort_by_key(|(k, _)| *k);
    all
}

/// `dst (m×n) = lhs (m×k) · rhs (k×n)`, overwriting dst, on whichever of `gemm` (over `par`'s threads) and
/// OpenBLAS is faster for this shape on this CPU. The first call of a shape runs both twice, timed, and keeps the
/// faster; every run writes the same product, so the caller gets its result either way.
///
/// # Safety
/// As for [`matmul`].
pub(super) unsafe fn matmul_fastest(par: Parallelism, m: usize, n: usize, k: usize, dst: Mat, lhs: Mat, rhs: Mat) {
    // The per-shape choice is between gemm and OpenBLAS only: FreezeTune's own kernels, when asked for, run as
    // asked and are never timed under gemm's name.
    let measured = m * n * k >= MEASURED_WORK && !in_bf16() && !packed_f32();
    let Some(openblas) = blas::openblas().filter(|_| measured) else {
        return matmul_on(par, m, n, k, dst, false, lhs, rhs);
    };
    let run = |backend: Backend| match backend {
        Backend::OpenBlas => openblas.sgemm(
            m,
            n,
            k,
            (dst.0 as *mut f32, dst.1, dst.2),
            (lhs.0, lhs.1, lhs.2),
            (rhs.0, rhs.1, rhs.2),
        ),
        Backend::Gemm => {
            matmul_on(par, m, n, k, dst, false, lhs, rhs);
            true
        }
    };
    let key = (m, n, k, lhs.2 != 1, rhs.2 != 1);
    let known = if blas::forced() {
        Some(Backend::OpenBlas)
    } else {
        choices().lock().ok().and_then(|c| c.get(&key).copied())
    };
    if let Some(backend) = known {
        if !run(backend) {
            run(Backend::Gemm);
        }
        return;
    }
    let mut best = (f64::INFINITY, Backend::Gemm);
    for backend in [Backend::Gemm, Backend::OpenBlas, Backend::Gemm, Backend::OpenBlas] {
        let t = Instant::now();
        if !run(backend) {
            best = (0.0, Backend::Gemm);
            break;
        }
        let seconds = t.elapsed().as_secs_f64();
        if seconds < best.0 {
            best = (seconds, backend);
        }
    }
    if best.1 == Backend::Gemm {
        run(Backend::Gemm); // the last run was OpenBLAS's: same product, but keep the chosen one's rounding.
    }
    if let Ok(mut c) = choices().lock() {
        c.insert(key, best.1);
    }
}
