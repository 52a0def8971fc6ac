//! What compute devices this machine has, for `freezetune devices` and the app's device list: the CPU, each CUDA
//! GPU (name, memory, compute capability) and the Apple GPU, with a note for each backend that is missing and
//! why. Asking never allocates a tensor, so it is cheap and safe to run in a short-lived worker process.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct DeviceInfo {
    /// As `runtime.device` spells it: `cpu`, `cuda:0`, `metal`.
    pub id: String,
    /// `cpu`, `cuda` or `metal`.
    pub backend: String,
    pub name: String,
    /// Bytes; for the CPU the machine's memory.
    pub total_memory: Option<u64>,
    pub free_memory: Option<u64>,
    /// CUDA only: `major.minor` (bf16 needs 8.0 or newer).
    pub compute_capability: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Inventory {
    pub devices: Vec<DeviceInfo>,
    /// Why a backend has no device here (not in this build, no driver, no GPU).
    pub notes: Vec<String>,
}

/// The devices of this machine, the CPU first.
pub fn inventory() -> Inventory {
    let mut inv = Inventory {
        devices: vec![cpu()],
        notes: Vec::new(),
    };
    cuda(&mut inv);
    metal(&mut inv);
    inv
}

fn cpu() -> DeviceInfo {
    let (total, free) = host_memory();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    DeviceInfo {
        id: "cpu".into(),
        backend: "cpu".into(),
        name: format!("{} ({cores} threads)", cpu_name().unwrap_or_else(|| "CPU".into())),
        total_memory: total,
        free_memory: free,
        compute_capability: None,
    }
}

fn cpu_name() -> Option<String> {
    if cfg!(target_os = "macos") {
        let out = std::process::Command::new("sysctl")
            .args(["-n", "machdep.cpu.brand_string"])
            .output()
            .ok()?;
        return Some(String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|s| !s.is_empty());
    }
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// (total, available) bytes of host memory (Linux's /proc/meminfo; None where it cannot be read).
pub fn host_memory() -> (Option<u64>, Option<u64>) {
    let Ok(text) = std::fs::read_to_string("/proc/meminfo") else {
        return (None, None);
    };
    let field = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

#[cfg(feature = "cuda")]
fn cuda(inv: &mut Inventory) {
    use cudarc::driver::CudaContext;
    let count = match CudaContext::device_count() {
        Ok(n) => n.max(0) as usize,
        Err(e) => {
            inv.notes.push(format!(
                "CUDA: no usable driver or GPU ({e}); CUDA needs an NVIDIA driver R580 or newer"
            ));
            return;
        }
    };
    if count == 0 {
        inv.notes.push("CUDA: the driver sees no GPU".into());
    }
    for i in 0..count {
        match CudaContext::new(i) {
            Ok(ctx) if ctx.compute_capability().is_ok_and(|(major, _)| major < 8) => {
                let (major, minor) = ctx.compute_capability().unwrap_or_default();
                let name = ctx.name().unwrap_or_else(|_| format!("CUDA GPU {i}"));
                inv.notes.push(format!(
                    "cuda:{i} ({name}) has compute capability {major}.{minor}; FreezeTune's CUDA kernels need 8.0 \
                     or newer (Ampere and later)"
                ));
            }
            Ok(ctx) => {
                let (free, total) = ctx
                    .mem_get_info()
                    .map_or((None, None), |(f, t)| (Some(f as u64), Some(t as u64)));
                inv.devices.push(DeviceInfo {
                    id: format!("cuda:{i}"),
                    backend: "cuda".into(),
                    name: ctx.name().unwrap_or_else(|_| format!("CUDA GPU {i}")),
                    total_memory: total,
                    free_memory: free,
                    compute_capability: ctx.compute_capability().ok().map(|(a, b)| format!("{a}.{b}")),
                });
            }
            Err(e) => inv.notes.push(format!("cuda:{i} did not start: {e}")),
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda(inv: &mut Inventory) {
    inv.notes
        .push("CUDA: not in this build (the CUDA edition, freezetune-cuda, has it)".into());
}

#[cfg(feature = "metal")]
fn metal(inv: &mut Inventory) {
    // start_metal turns candle's panic on a Mac without a Metal device into an error.
    match crate::device::start_metal() {
        Ok(_) => inv.devices.push(DeviceInfo {
            id: "metal".into(),
            backend: "metal".into(),
            name: "Apple GPU (Metal)".into(),
            // Apple GPUs share the host's memory.
            total_memory: host_memory().0,
            free_memory: None,
            compute_capability: None,
        }),
        Err(e) => inv.notes.push(format!("Metal: {e}")),
    }
}

#[cfg(not(feature = "metal"))]
fn metal(inv: &mut Inventory) {
    inv.notes.push(if cfg!(target_os = "macos") {
        "Metal: not in this build (build with --features metal)".into()
    } else {
        "Metal: Apple GPUs only (macOS)".into()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_comes_first_with_its_memory_and_missing_backends_are_explained() {
        let inv = inventory();
        let cpu = &inv.devices[0];
        assert_eq!((cpu.id.as_str(), cpu.backend.as_str()), ("cpu", "cpu"));
        assert!(cpu.name.contains("threads"), "{}", cpu.name);
        if cfg!(target_os = "linux") {
            let (total, free) = (cpu.total_memory.unwrap(), cpu.free_memory.unwrap());
            assert!(total > (1 << 28) && free <= total, "{total} {free}");
        }
        if !cfg!(feature = "cuda") {
            assert!(
                inv.notes.iter().any(|n| n.starts_with("CUDA: not in this build")),
                "{:?}",
                inv.notes
            );
        }
    }
}
