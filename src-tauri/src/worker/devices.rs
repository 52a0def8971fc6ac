//! What devices exist, asked of the worker binaries (`freezetune devices --json`), never by creating a device in
//! the app: the CPU worker knows the CPU (and Metal on macOS), the CUDA worker the NVIDIA GPUs. A CUDA worker that
//! cannot start (no driver, an old driver, a missing library) becomes one line that says why.

use super::process::describe_exit;
use super::Workers;
use freezetune_train::inventory::{DeviceInfo, Inventory};
use serde::Serialize;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use ts_rs::TS;

const NO_CUDA_EDITION: &str =
    "CUDA: NVIDIA GPUs need the CUDA edition — install the freezetune-cuda package (make bundle CUDA=1)";

/// Creating a CUDA context can take seconds on a big machine; a worker silent for this long is reported as hung.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Serialize, TS)]
pub struct DeviceOption {
    /// The `runtime.device` value: `auto`, `cpu`, `cuda:0`, `metal`.
    pub id: String,
    pub label: String,
    /// `auto`, `cpu`, `cuda` or `metal`.
    pub backend: String,
    /// Bytes, where the worker could tell.
    #[ts(type = "number | null")]
    pub total_memory: Option<u64>,
    #[ts(type = "number | null")]
    pub free_memory: Option<u64>,
    pub available: bool,
    /// For `auto`, what it picks; for an unavailable backend, why and what to do.
    pub note: Option<String>,
}

/// The device list the Train form shows: `auto`, the CPU, each CUDA GPU, Metal; backends without a device come
/// last, unavailable, with the reason.
pub fn list(workers: &Workers) -> Vec<DeviceOption> {
    let cpu = workers.cpu().map_err(|e| e.message).and_then(probe);
    let cuda = workers.cuda.as_deref().map(probe);
    options(cpu, cuda)
}

/// One log line of the devices found, and one for each backend that is missing and why.
pub fn log_summary(workers: &Workers) {
    let list = list(workers);
    let found: Vec<_> = list
        .iter()
        .filter(|o| o.available && o.id != "auto")
        .map(|o| o.label.as_str())
        .collect();
    tracing::info!(
        "workers: {} and {:?}; devices: {}",
        workers.cpu.display(),
        workers.cuda,
        found.join(", ")
    );
    for o in list.iter().filter(|o| !o.available) {
        tracing::info!("{}: {}", o.label, o.note.as_deref().unwrap_or("not available"));
    }
}

/// Runs `worker devices --json`; the error is one line.
pub fn probe(worker: &Path) -> Result<Inventory, String> {
    let mut child = Command::new(worker)
        .args(["devices", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{} cannot start: {e}", worker.display()))?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > PROBE_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} did not answer within {PROBE_TIMEOUT:?}", worker.display()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("{}: {e}", worker.display())),
        }
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child.stdout.take().map(|mut s| s.read_to_string(&mut stdout));
    child.stderr.take().map(|mut s| s.read_to_string(&mut stderr));
    if status.success() {
        return serde_json::from_str(stdout.trim()).map_err(|e| {
            format!(
                "{} answered `devices --json` with something else: {e}",
                worker.display()
            )
        });
    }
    Err(start_failure(worker, &describe_exit(&status), &stderr))
}

/// One line for a worker that could not run: the dynamic loader's complaint about the driver, about a library of
/// its own, or its first line of stderr.
fn start_failure(worker: &Path, exit: &str, stderr: &str) -> String {
    let name = worker
        .file_name()
        .map_or_else(|| worker.display().to_string(), |n| n.to_string_lossy().into());
    let loader = stderr
        .lines()
        .find_map(|l| l.split_once("error while loading shared libraries: "))
        .map(|(_, r)| r);
    match loader {
        Some(rest) if rest.starts_with("libcuda.so") => format!(
            "{name} cannot start: the NVIDIA driver's libcuda.so.1 is not installed (install the NVIDIA driver, R580 \
             or newer, for CUDA)"
        ),
        Some(rest) => {
            let lib = rest.split(':').next().unwrap_or(rest);
            format!("{name} cannot start: its library {lib} is missing (reinstall the freezetune-cuda package)")
        }
        None => {
            let first = stderr
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("no output");
            format!("{name} cannot start: it {exit}: {first}")
        }
    }
}

fn options(cpu: Result<Inventory, String>, cuda: Option<Result<Inventory, String>>) -> Vec<DeviceOption> {
    let (cpu_devices, mut notes) = match cpu {
        Ok(inv) => (inv.devices, inv.notes),
        Err(line) => (Vec::new(), vec![line]),
    };
    let mut gpus = Vec::new();
    // The CUDA worker, not the CPU build, speaks for CUDA.
    notes.retain(|n| !n.starts_with("CUDA"));
    match cuda {
        Some(Ok(inv)) => {
            gpus.extend(inv.devices.into_iter().filter(|d| d.backend == "cuda"));
            notes.extend(
                inv.notes
                    .into_iter()
                    .filter(|n| n.starts_with("CUDA") || n.starts_with("cuda")),
            );
        }
        Some(Err(line)) => notes.push(format!("CUDA: {line}")),
        None => notes.push(NO_CUDA_EDITION.into()),
    }
    let devices: Vec<DeviceInfo> = cpu_devices.into_iter().chain(gpus).collect();
    let best = devices
        .iter()
        .find(|d| d.backend == "cuda")
        .or_else(|| devices.iter().find(|d| d.backend == "metal"));
    let auto_note = match best {
        Some(d) => format!("auto picks {} ({})", d.id, d.name),
        // Why there is no GPU is the unavailable entries' own note, shown beside this one.
        None => "auto trains on the CPU (no GPU available)".into(),
    };
    let mut out = vec![DeviceOption {
        id: "auto".into(),
        label: "Auto (best available)".into(),
        backend: "auto".into(),
        total_memory: best.or(devices.first()).and_then(|d| d.total_memory),
        free_memory: best.or(devices.first()).and_then(|d| d.free_memory),
        available: !devices.is_empty(),
        note: Some(auto_note),
    }];
    out.extend(devices.iter().map(|d| DeviceOption {
        id: d.id.clone(),
        label: label(d),
        backend: d.backend.clone(),
        total_memory: d.total_memory,
        free_memory: d.free_memory,
        available: true,
        note: None,
    }));
    for (backend, label) in [("cuda", "CUDA GPU"), ("metal", "Apple Metal GPU")] {
        if devices.iter().any(|d| d.backend == backend) {
            continue;
        }
        let prefix = if backend == "cuda" { "CUDA" } else { "Metal" };
        out.push(DeviceOption {
            id: backend.into(),
            label: label.into(),
            backend: backend.into(),
            total_memory: None,
            free_memory: None,
            available: false,
            note: notes.iter().find(|n| n.starts_with(prefix)).cloned(),
        });
    }
    out
}

fn label(d: &DeviceInfo) -> String {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    match (d.backend.as_str(), d.total_memory) {
        ("cpu", _) => format!("CPU — {}", d.name),
        (_, Some(total)) => format!("{} — {} ({:.0} GiB)", d.id, d.name, gib(total)),
        _ => format!("{} — {}", d.id, d.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str, backend: &str, total: u64) -> DeviceInfo {
        DeviceInfo {
            id: id.into(),
            backend: backend.into(),
            name: format!("{backend} device"),
            total_memory: Some(total),
            free_memory: Some(total / 2),
            compute_capability: None,
        }
    }

    fn cpu_inventory() -> Inventory {
        Inventory {
            devices: vec![device("cpu", "cpu", 24 << 30)],
            notes: vec![
                "CUDA: not in this build (the CUDA edition, freezetune-cuda, has it)".into(),
                "Metal: Apple GPUs only (macOS)".into(),
            ],
        }
    }

    #[test]
    fn gpus_of_the_cuda_worker_join_the_cpu_and_auto_picks_the_first() {
        let cuda = Inventory {
            devices: vec![device("cpu", "cpu", 1), device("cuda:0", "cuda", 141 << 30)],
            notes: vec![],
        };
        let list = options(Ok(cpu_inventory()), Some(Ok(cuda)));
        let ids: Vec<_> = list.iter().map(|o| (o.id.as_str(), o.available)).collect();
        assert_eq!(ids, [("auto", true), ("cpu", true), ("cuda:0", true), ("metal", false)]);
        assert_eq!(list[0].note.as_deref(), Some("auto picks cuda:0 (cuda device)"));
        assert_eq!(list[0].total_memory, Some(141 << 30));
        assert_eq!(list[2].label, "cuda:0 — cuda device (141 GiB)");
        assert_eq!(
            list[1].total_memory,
            Some(24 << 30),
            "the CPU comes from the CPU worker"
        );
    }

    #[test]
    fn a_cuda_worker_that_cannot_start_is_one_line_and_the_cpu_stays() {
        let stderr = "/usr/lib/freezetune-cuda/freezetune-cuda: error while loading shared libraries: libcuda.so.1: \
                      cannot open shared object file: No such file or directory\n";
        let line = start_failure(
            Path::new("/usr/lib/freezetune-cuda/freezetune-cuda"),
            "exited with code 127",
            stderr,
        );
        assert_eq!(
            line,
            "freezetune-cuda cannot start: the NVIDIA driver's libcuda.so.1 is not installed (install the NVIDIA \
             driver, R580 or newer, for CUDA)"
        );
        let list = options(Ok(cpu_inventory()), Some(Err(line.clone())));
        let cuda = list.iter().find(|o| o.id == "cuda").unwrap();
        assert!(!cuda.available);
        assert_eq!(cuda.note, Some(format!("CUDA: {line}")));
        assert_eq!(
            list[0].note.as_deref(),
            Some("auto trains on the CPU (no GPU available)")
        );
        assert!(list.iter().any(|o| o.id == "cpu" && o.available));
    }

    #[test]
    fn other_start_failures_name_the_library_or_quote_the_worker() {
        let w = Path::new("freezetune-cuda");
        let missing = "x: error while loading shared libraries: libcublasLt.so.13: cannot open shared object file";
        assert!(start_failure(w, "exited with code 127", missing).contains("its library libcublasLt.so.13 is missing"));
        let other = start_failure(
            w,
            "was killed by signal 11 (SIGSEGV: it crashed)",
            "\nSegfault in cuInit\n",
        );
        assert_eq!(
            other,
            "freezetune-cuda cannot start: it was killed by signal 11 (SIGSEGV: it crashed): Segfault in cuInit"
        );
    }

    #[test]
    fn without_the_cuda_edition_cuda_says_where_to_get_it() {
        let list = options(Ok(cpu_inventory()), None);
        let cuda = list.iter().find(|o| o.id == "cuda").unwrap();
        assert!(
            cuda.note.as_ref().unwrap().contains("freezetune-cuda"),
            "{:?}",
            cuda.note
        );
        assert_eq!(
            list[0].note.as_deref(),
            Some("auto trains on the CPU (no GPU available)")
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_probe_of_a_broken_worker_is_one_line() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = tmp.path().join("freezetune-cuda");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho \"$0: error while loading shared libraries: libcuda.so.1: cannot open shared object \
             file: No such file or directory\" >&2\nexit 127\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let line = probe(&fake).unwrap_err();
        assert!(
            line.starts_with("freezetune-cuda cannot start: the NVIDIA driver's libcuda.so.1"),
            "{line}"
        );
    }
}
