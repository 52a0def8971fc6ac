//! Which device and compute dtype a run uses, chosen honestly: a named device that does not start is an error that
//! says why and what to do; `auto` says what it picked, what it tried and why it fell back. Nothing falls back
//! silently.

use crate::error::{Result, TrainError};
use candle_core::{DType, Device};
use std::path::PathBuf;

/// candle's pool for elementwise CPU ops (binary maps, the backward pass's gradient sums) spins 25,000 times after
/// each op before its threads sleep. Between those ops a training step mostly runs a matmul on rayon's threads,
/// which the spinning thread slows: on 2 cores the default cost 7% of a full step (`bench-train`, alternating runs,
/// spin limits 25,000 / 2,000 / 0: 890 / 827 / 821 ms median). Unless the user set `CANDLE_BARRIER_POOL_SPIN_LIMIT`,
/// it is cut to 2,000. Call first thing in `main`, before any thread starts (the environment is process-wide).
///
/// It also keeps freed activation buffers in the process for reuse ([`keep_freed_buffers`]).
pub fn cpu_runtime_defaults() {
    const SPIN_LIMIT: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(SPIN_LIMIT).is_none() {
        std::env::set_var(SPIN_LIMIT, "2000");
    }
    keep_freed_buffers();
}

/// A training step allocates and frees the same activation-sized buffers every step. glibc hands buffers above
/// its mmap threshold (128 KiB, raised only as big blocks are freed) straight back to the kernel, so the next step
/// maps them again and the kernel zeroes every page on first touch; and it trims the heap's free top eagerly.
/// With buffers up to 32 MiB served from the heap and the heap never trimmed, freed buffers are reused: "top 2" on
/// the 31M bench model, 3 alternating runs each on an AMD EPYC (2 threads), 726-770 → 665-684 ms, peak RSS
/// 433-457 → 446-463 MiB; the 135M shape unchanged (2909-2976 ms either way). Skipped when the user tuned malloc
/// (`GLIBC_TUNABLES` or `MALLOC_*` set) and off glibc.
fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tuned = std::env::vars_os().any(|(k, _)| {
            let k = k.to_string_lossy();
            k == "GLIBC_TUNABLES" || k.starts_with("MALLOC_")
        });
        if !tuned {
            // SAFETY: mallopt only changes allocator parameters; both values are in range for glibc on 64-bit.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            }
        }
    }
}

/// The CPU matmul this run uses and the kernels it picks on this CPU, for benchmarks: the `gemm` crate (candle's
/// own CPU matmul, and the fused kernels' through `fused::gemm`), which dispatches at run time to the widest SIMD
/// level present; and OpenBLAS beside it where `FREEZETUNE_BLAS` loads it (`fused::blas`); then what bf16 runs
/// multiply with on this CPU.
pub fn cpu_matmul_backend() -> String {
    let gemm = format!("gemm crate 0.19 (candle's CPU matmul), {} kernels", cpu_simd_level());
    let f32 = match crate::fused::blas::openblas() {
        Some(b) if crate::fused::blas::forced() => format!("{} for linear layers; {gemm} elsewhere", b.description),
        Some(b) => format!("{gemm}, or {} where measured faster per shape", b.description),
        None => gemm,
    };
    let packed =
        crate::fused::f32_kernel_available() && crate::fused::default_f32_kernel() == crate::fused::F32Kernel::Packed;
    let f32 = match packed {
        true => {
            format!("{f32}, except the layers' matmuls: FreezeTune's AVX-512 kernel (FREEZETUNE_F32_MATMUL=packed)")
        }
        false => f32,
    };
    let bf16 = if compute("auto", &Device::Cpu, DType::F32).bf16_matmuls && crate::fused::amx_available() {
        "FreezeTune's AMX kernel for the layers' matmuls (bf16 and auto runs)"
    } else if compute("auto", &Device::Cpu, DType::F32).bf16_matmuls {
        "FreezeTune's AVX512-BF16 kernel for the layers' matmuls (bf16 and auto runs)"
    } else if crate::fused::bf16_matmul_available() {
        "bf16 tensors on candle's ops (this CPU's AVX512-BF16 is not faster than its f32; bench-train measures it)"
    } else {
        "bf16 tensors on candle's ops (no AVX512-BF16)"
    };
    format!("f32: {f32}; bf16: {bf16}")
}

/// The CPU's model name ("AMD EPYC 9B14", "Intel(R) Xeon(R) Platinum 8581C", ...), for benchmark headers.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|n| n.trim().to_string())
        })
        .or_else(|| {
            std::process::Command::new("sysctl")
                .args(["-n", "machdep.cpu.brand_string"])
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The widest SIMD level the CPU kernels dispatch to here.
pub fn cpu_simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "AVX-512";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return "AVX2+FMA";
        }
        "SSE2"
    }
    #[cfg(target_arch = "aarch64")]
    {
        "NEON"
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "scalar"
    }
}

/// What `runtime.device` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    Auto,
    Cpu,
    Cuda(usize),
    Metal,
}

/// The device a run uses, its name as `runtime.device` spells it (`cpu`, `cuda:0`, `metal`) and, for `auto` or a
/// fallback, how it was chosen.
#[derive(Debug, Clone)]
pub struct DeviceChoice {
    pub device: Device,
    pub name: String,
    pub note: Option<String>,
}

fn bad(reason: String) -> TrainError {
    TrainError::Config {
        path: PathBuf::from("runtime.device"),
        reason,
    }
}

/// Parses `auto`, `cpu`, `cuda`, `cuda:N`, `metal`; anything else is refused with the accepted spellings.
pub fn parse_device(name: &str) -> Result<DeviceRequest> {
    let name = name.trim();
    Ok(match name {
        "auto" => DeviceRequest::Auto,
        "cpu" => DeviceRequest::Cpu,
        "cuda" => DeviceRequest::Cuda(0),
        "metal" => DeviceRequest::Metal,
        _ => match name.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => DeviceRequest::Cuda(n),
            _ => {
                return Err(bad(format!(
                    "{name:?} is not a device; use auto, cpu, cuda, cuda:N (N = 0, 1, ...) or metal"
                )))
            }
        },
    })
}

/// Whether this build can drive CUDA / Metal at all.
pub fn built_with_cuda() -> bool {
    candle_core::utils::cuda_is_available()
}

pub fn built_with_metal() -> bool {
    candle_core::utils::metal_is_available()
}

const CUDA_NEEDS: &str = "a CUDA build needs an NVIDIA GPU, driver R580 or newer, and the CUDA 13 libraries \
     (cudart, cublas, cublasLt, curand, nvrtc) where the loader finds them";
const NO_CUDA: &str = "this build has no CUDA support: use the CUDA edition (freezetune-cuda), or build with \
     `--features cuda` (needs the CUDA 13 toolkit's nvcc; building needs no GPU)";
const NO_METAL: &str =
    "this build has no Metal support (Apple GPUs, macOS only): on a Mac, build with `--features metal`";

fn start_cuda(n: usize) -> std::result::Result<Device, String> {
    if !built_with_cuda() {
        return Err(NO_CUDA.into());
    }
    let device = Device::new_cuda(n).map_err(|e| format!("cuda:{n} did not start: {e} ({CUDA_NEEDS})"))?;
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = &device {
        cuda::refuse_old_gpu(n, d)?;
        cuda::keep_pooled_memory(d);
    }
    Ok(device)
}

/// The first Metal device. candle panics where a Mac has none (a VM, a CI runner): that panic is caught and told.
pub(crate) fn start_metal() -> std::result::Result<Device, String> {
    if !built_with_metal() {
        return Err(NO_METAL.into());
    }
    match std::panic::catch_unwind(|| Device::new_metal(0)) {
        Ok(Ok(device)) => Ok(device),
        Ok(Err(e)) => Err(format!("metal did not start: {e}")),
        Err(_) => Err(
            "this Mac has no Metal device that candle can use (a virtual machine or a headless \
                       runner?): train on the CPU"
                .into(),
        ),
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use cudarc::driver::sys;

    /// FreezeTune's kernels are PTX for compute capability 8.0: older GPUs cannot JIT them and would fail at the
    /// first kernel, mid-run. They are refused here, by name.
    pub fn refuse_old_gpu(n: usize, d: &candle_core::CudaDevice) -> Result<(), String> {
        let ctx = d.cuda_stream().context().clone();
        let name = ctx.name().unwrap_or_else(|_| "an unnamed GPU".into());
        match ctx.compute_capability() {
            Ok((major, minor)) if major < 8 => Err(format!(
                "cuda:{n} ({name}) has compute capability {major}.{minor}; FreezeTune's CUDA kernels need 8.0 or \
                 newer (Ampere: A100, RTX 30xx and later): train on the CPU, or on a newer GPU"
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(format!(
                "cuda:{n} ({name}): its compute capability could not be read: {e}"
            )),
        }
    }

    /// The default memory pool hands freed memory back to the driver whenever the stream synchronises (its release
    /// threshold is 0), which the step's one host read does every step: memory is then re-mapped every step. Keep
    /// it pooled; other processes still get memory back when this one ends.
    pub fn keep_pooled_memory(d: &candle_core::CudaDevice) {
        let cu_device = d.cuda_stream().context().cu_device();
        // SAFETY: plain driver calls on a device whose context candle has made current; the out-pointer and the
        // attribute value live for the calls' duration.
        unsafe {
            let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
            if sys::cuDeviceGetDefaultMemPool(&mut pool, cu_device) == sys::CUresult::CUDA_SUCCESS {
                let mut threshold = u64::MAX;
                let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD;
                let _ = sys::cuMemPoolSetAttribute(pool, attr, (&mut threshold as *mut u64).cast());
            }
        }
    }
}

/// Starts the device `runtime.device` names.
pub fn select_device(name: &str) -> Result<DeviceChoice> {
    let choice = |device, name: &str, note: Option<String>| DeviceChoice {
        device,
        name: name.to_string(),
        note,
    };
    match parse_device(name)? {
        DeviceRequest::Cpu => Ok(choice(Device::Cpu, "cpu", None)),
        DeviceRequest::Cuda(n) => start_cuda(n)
            .map(|d| choice(d, &format!("cuda:{n}"), None))
            .map_err(bad),
        DeviceRequest::Metal => start_metal().map(|d| choice(d, "metal", None)).map_err(bad),
        DeviceRequest::Auto => Ok(select_auto()),
    }
}

/// `auto`: CUDA device 0, then Metal, then the CPU; every GPU backend this build has is tried and reported.
fn select_auto() -> DeviceChoice {
    type Start = fn() -> std::result::Result<Device, String>;
    let candidates: [(bool, &str, &str, Start); 2] = [
        (built_with_cuda(), "cuda:0", "the first CUDA GPU", || start_cuda(0)),
        (built_with_metal(), "metal", "the Apple GPU", start_metal),
    ];
    let mut tried = Vec::new();
    for (_, name, what, start) in candidates.into_iter().filter(|c| c.0) {
        match start() {
            Ok(device) => {
                return DeviceChoice {
                    device,
                    name: name.into(),
                    note: Some(format!("auto picked {name}, {what}")),
                }
            }
            Err(e) => tried.push(e),
        }
    }
    let note = if tried.is_empty() {
        "auto picked the CPU: this build has no GPU backend (CUDA or Metal)".to_string()
    } else {
        format!("auto fell back to the CPU: {}", tried.join("; "))
    };
    DeviceChoice {
        device: Device::Cpu,
        name: "cpu".into(),
        note: Some(note),
    }
}

/// How a run computes: the dtype of its activations and frozen weights (trainable tensors are always f32
/// masters), and whether the CPU's layer matmuls round their operands to bf16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compute {
    pub dtype: DType,
    /// bf16 (asked for, or `auto`'s pick) on a CPU whose bf16 matmul has twice f32's rate (AMD's AVX512-BF16,
    /// Intel's AMX):
    /// tensors stay f32, so the fused CPU kernels serve them, and the layers' matmuls multiply bf16-rounded
    /// operands into f32 sums, as torch's CPU autocast does. Elsewhere bf16 on the CPU holds the tensors in bf16.
    pub bf16_matmuls: bool,
}

impl Compute {
    /// The dtype a run reports: "bf16" for bf16 matmuls on f32 tensors, as asked.
    pub fn name(self) -> &'static str {
        if self.bf16_matmuls {
            "bf16"
        } else {
            dtype_name(self.dtype)
        }
    }

    /// What the device note adds about it, if anything.
    pub fn note(self) -> Option<&'static str> {
        let note = if crate::fused::amx_available() {
            "bf16 on this CPU: the layers' matmuls round their operands to bf16 (AMX) and sum in f32; weights and \
             activations stay f32 (dtype = \"f32\" computes every matmul in f32)"
        } else {
            "bf16 on this CPU: the layers' matmuls round their operands to bf16 (AVX512-BF16) and sum in f32; \
             weights and activations stay f32 (dtype = \"f32\" computes every matmul in f32)"
        };
        self.bf16_matmuls.then_some(note)
    }
}

/// Whether half precision on this machine's CPU keeps f32 tensors (a bf16 run's matmuls on AMD's AVX512-BF16 or
/// Intel's AMX): the
/// fit check then counts its memory as f32's, with the fused kernels'. (An f16 run still holds f16 tensors, so
/// for it that count errs high, the safe side.)
pub fn cpu_half_keeps_f32() -> bool {
    compute("bf16", &Device::Cpu, DType::F32).bf16_matmuls
}

/// The [`Compute`] of a run that asked for `requested` on `device`. On the CPU (with the fused kernels), where
/// bf16 matmuls are twice as fast as f32's ([`crate::fused::bf16_matmul_faster`]), both `bf16` and `auto` run
/// them (within the mixed-precision tolerance, which `tests/mixed_precision.rs` holds them to); elsewhere the
/// tensors' dtype is [`compute_dtype`]'s.
pub fn compute(requested: &str, device: &Device, checkpoint: DType) -> Compute {
    use crate::fused;
    // Only where they are faster: elsewhere bf16 keeps halving the tensors' memory, and f32 stays exact.
    let wanted = matches!(requested, "bf16" | "auto") && fused::bf16_matmul_faster();
    let bf16_matmuls = wanted && device.is_cpu() && fused::enabled();
    Compute {
        dtype: if bf16_matmuls {
            DType::F32
        } else {
            compute_dtype(requested, device, checkpoint)
        },
        bf16_matmuls,
    }
}

/// The compute dtype of frozen weights and activations (trainable tensors are always f32 masters): `f32`, `bf16`
/// or `f16` as asked; `auto` is f32 on the CPU (its kernels are fastest and exact there) and, on a GPU, bf16 (it
/// has f32's range, so an f32 or bf16 checkpoint cannot overflow in it), except f16 for an f16 checkpoint or a
/// GPU without bf16 (CUDA compute capability below 8.0), where f16 runs with loss scaling.
pub fn compute_dtype(requested: &str, device: &Device, checkpoint: DType) -> DType {
    match requested {
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        "f32" => DType::F32,
        _ if device.is_cpu() => DType::F32,
        _ if checkpoint == DType::F16 || !has_bf16(device) => DType::F16,
        _ => DType::BF16,
    }
}

/// Whether a GPU computes in bf16: CUDA from compute capability 8.0 (Ampere) on; an Apple GPU when a bf16 matmul
/// runs there (its bf16 kernels need Metal 3.1, macOS 14).
fn has_bf16(device: &Device) -> bool {
    if device.is_metal() {
        return bf16_matmul_runs(device);
    }
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        return d
            .cuda_stream()
            .context()
            .compute_capability()
            .is_ok_and(|(major, _)| major >= 8);
    }
    let _ = device;
    true
}

/// A small bf16 matmul on `device`, read back: whether the backend has working bf16 kernels. A panic in the
/// backend counts as no.
fn bf16_matmul_runs(device: &Device) -> bool {
    let probe = || -> candle_core::Result<bool> {
        let a = candle_core::Tensor::ones((4, 4), DType::BF16, device)?;
        let v = a.matmul(&a)?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
        Ok(v == 64.0)
    };
    std::panic::catch_unwind(probe).is_ok_and(|r| r.unwrap_or(false))
}

/// The dtype holding most of a checkpoint's parameters.
pub fn checkpoint_dtype(layout: &freezetune_core::ModelLayout) -> DType {
    use freezetune_core::safetensors::DType as StDType;
    let mut counts: Vec<(StDType, u64)> = Vec::new();
    for t in layout.tensors() {
        let n: u64 = t.shape.iter().product();
        match counts.iter_mut().find(|(d, _)| *d == t.dtype) {
            Some((_, c)) => *c += n,
            None => counts.push((t.dtype, n)),
        }
    }
    match counts.iter().max_by_key(|(_, n)| *n).map(|(d, _)| *d) {
        Some(StDType::F16) => DType::F16,
        Some(StDType::BF16) => DType::BF16,
        _ => DType::F32,
    }
}

/// `f32`, `bf16`, `f16`: the spelling run configs use.
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::F64 => "f64",
        _ => "other",
    }
}

/// Applies `runtime.threads` / `runtime.op_threads`. candle reads these once, at its first CPU op, so this must run
/// before any tensor work in the process (the CLI and the app call `train` on a fresh worker).
pub fn apply_thread_settings(threads: usize, op_threads: usize) {
    if threads > 0 {
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    if op_threads > 0 {
        std::env::set_var("CANDLE_NUM_THREADS", op_threads.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_strictly() {
        assert_eq!(parse_device("cuda").unwrap(), DeviceRequest::Cuda(0));
        assert_eq!(parse_device("cuda:3").unwrap(), DeviceRequest::Cuda(3));
        assert_eq!(parse_device("metal").unwrap(), DeviceRequest::Metal);
        for bad in ["cuda:abc", "cuda:", "cuda:-1", "gpu", "tpu", "CUDA"] {
            let e = parse_device(bad).unwrap_err().to_string();
            assert!(e.contains("cuda:N") && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn a_device_this_build_lacks_is_an_error_that_says_what_to_do() {
        if !built_with_cuda() {
            let e = select_device("cuda:1").unwrap_err().to_string();
            assert!(e.contains("no CUDA support") && e.contains("--features cuda"), "{e}");
        }
        if !built_with_metal() {
            let e = select_device("metal").unwrap_err().to_string();
            assert!(e.contains("--features metal"), "{e}");
        }
    }

    #[test]
    fn auto_reports_what_it_picked() {
        let c = select_device("auto").unwrap();
        let note = c.note.expect("auto always explains itself");
        if !built_with_cuda() && !built_with_metal() {
            assert_eq!(c.name, "cpu");
            assert!(note.contains("no GPU backend"), "{note}");
        } else {
            assert!(note.contains(&c.name) || note.contains("fell back"), "{note}");
        }
        assert!(select_device("cpu").unwrap().note.is_none());
    }

    #[test]
    fn auto_dtype_follows_the_device_and_checkpoint() {
        assert_eq!(compute_dtype("auto", &Device::Cpu, DType::BF16), DType::F32);
        assert_eq!(compute_dtype("bf16", &Device::Cpu, DType::F32), DType::BF16);
        assert_eq!(compute_dtype("f16", &Device::Cpu, DType::F32), DType::F16);
    }

    #[test]
    fn cpu_bf16_keeps_f32_tensors_where_the_cpu_multiplies_in_bf16() {
        use crate::fused;
        let has = fused::enabled() && fused::bf16_matmul_faster();
        let bf16 = compute("bf16", &Device::Cpu, DType::F32);
        assert_eq!(bf16.bf16_matmuls, has);
        assert_eq!(bf16.dtype, if has { DType::F32 } else { DType::BF16 });
        assert_eq!(bf16.name(), "bf16");
        assert_eq!(bf16.note().is_some(), has);
        let auto = compute("auto", &Device::Cpu, DType::BF16);
        assert_eq!(auto.bf16_matmuls, has);
        assert_eq!(auto.dtype, DType::F32);
        // Faster only where the CPU has the instructions at all.
        assert!(!fused::bf16_matmul_faster() || fused::bf16_matmul_available());
        for (asked, dtype) in [("f32", DType::F32), ("f16", DType::F16)] {
            let c = compute(asked, &Device::Cpu, DType::F32);
            assert_eq!((c.dtype, c.bf16_matmuls, c.name()), (dtype, false, asked));
        }
        assert_eq!(cpu_half_keeps_f32(), has);
    }

    #[test]
    fn the_bf16_probe_runs_a_matmul() {
        assert!(bf16_matmul_runs(&Device::Cpu));
    }
}
