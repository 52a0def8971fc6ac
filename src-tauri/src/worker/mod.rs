//! Training, generation, GGUF export and import, and device discovery run in worker processes — the `freezetune`
//! CLI itself — never in the app's own process: a GPU out-of-memory error, a driver fault, a panic in a kernel or a
//! crafted file that crashes a parser ends the worker, not the window; each run gets fresh thread pools and hands
//! all its memory back when it ends; and the app never links CUDA, so one app starts on every machine.
//!
//! Two workers can be installed: `freezetune` (CPU, and Metal on macOS; shipped inside the app's bundle) and the
//! CUDA edition `freezetune-cuda` (its own package, with NVIDIA's libraries beside it). A run on `cuda`/`cuda:N`
//! goes to the CUDA worker; `auto` goes to it when it starts and sees a GPU, else to the CPU worker, with one line
//! saying why.

pub mod devices;
pub mod generate;
pub mod gguf;
pub mod probe;
pub mod process;
pub mod train;

use crate::error::{IpcError, IpcResult};
use std::path::{Path, PathBuf};

/// Overrides where the CPU worker is (tests, development builds).
pub const WORKER_ENV: &str = "FREEZETUNE_WORKER";
/// Overrides where the CUDA worker is (`make run CUDA=1` points it at the staged build).
pub const CUDA_WORKER_ENV: &str = "FREEZETUNE_CUDA_WORKER";
/// Where the freezetune-cuda package installs the CUDA worker (with its libraries in `lib/` beside it).
const CUDA_PACKAGE_DIR: &str = "/usr/lib/freezetune-cuda";

#[derive(Debug, Clone)]
pub struct Workers {
    pub cpu: PathBuf,
    pub cuda: Option<PathBuf>,
}

impl Workers {
    /// The installed workers: beside the app's own executable (where the bundle puts its sidecar, and where cargo
    /// builds both), unless the environment names them.
    pub fn locate() -> Workers {
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.canonicalize().ok())
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        Workers::locate_in(&exe_dir, |k| {
            std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from)
        })
    }

    fn locate_in(exe_dir: &Path, env: impl Fn(&str) -> Option<PathBuf>) -> Workers {
        let cpu = env(WORKER_ENV).unwrap_or_else(|| exe_dir.join(exe("freezetune")));
        let cuda = env(CUDA_WORKER_ENV).or_else(|| {
            [
                exe_dir.join("freezetune-cuda"),
                Path::new(CUDA_PACKAGE_DIR).join("freezetune-cuda"),
            ]
            .into_iter()
            .find(|p| p.is_file())
        });
        Workers { cpu, cuda }
    }

    /// The CPU worker, or an error that says how to get it back.
    pub fn cpu(&self) -> IpcResult<&Path> {
        if self.cpu.is_file() {
            return Ok(&self.cpu);
        }
        Err(IpcError::new(
            "worker_missing",
            format!(
                "the training worker {} is missing: reinstall FreezeTune, or in a source checkout build it with \
                 `cargo build -p freezetune-cli` (or set {WORKER_ENV})",
                self.cpu.display()
            ),
        ))
    }

    /// The worker for `runtime.device`, and a line for the user when `auto` falls back to the CPU because the
    /// CUDA worker cannot run here.
    pub fn for_device(&self, device: &str) -> IpcResult<(PathBuf, Option<String>)> {
        let wants_cuda = device == "cuda" || device.starts_with("cuda:");
        if !wants_cuda && device != "auto" {
            return Ok((self.cpu()?.to_path_buf(), None));
        }
        let Some(cuda) = &self.cuda else {
            if wants_cuda {
                return Err(IpcError::new(
                    "no_cuda",
                    "CUDA needs the CUDA edition: install the freezetune-cuda package (make bundle CUDA=1), or choose \
                     the CPU",
                ));
            }
            return Ok((self.cpu()?.to_path_buf(), None));
        };
        let probe = devices::probe(cuda);
        let gpus = probe
            .as_ref()
            .map_or(0, |inv| inv.devices.iter().filter(|d| d.backend == "cuda").count());
        match (probe, wants_cuda) {
            (Ok(_), true) => Ok((cuda.clone(), None)),
            (Ok(_), false) if gpus > 0 => Ok((cuda.clone(), None)),
            (Ok(inv), false) => {
                let why = inv
                    .notes
                    .into_iter()
                    .find(|n| n.starts_with("CUDA"))
                    .unwrap_or_default();
                Ok((self.cpu()?.to_path_buf(), Some(format!("{why}; training on the CPU"))))
            }
            (Err(line), true) => Err(IpcError::new("cuda_worker", format!("{line}; choose the CPU to train"))),
            (Err(line), false) => Ok((self.cpu()?.to_path_buf(), Some(format!("{line}; training on the CPU")))),
        }
    }
}

fn exe(name: &str) -> String {
    format!("{name}{}", std::env::consts::EXE_SUFFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_are_found_beside_the_app_unless_the_environment_names_them() {
        let tmp = tempfile::tempdir().unwrap();
        let w = Workers::locate_in(tmp.path(), |_| None);
        assert_eq!(w.cpu, tmp.path().join("freezetune"));
        let err = w.cpu().unwrap_err();
        assert!(err.message.contains("cargo build -p freezetune-cli"), "{}", err.message);
        std::fs::write(tmp.path().join("freezetune-cuda"), "").unwrap();
        assert_eq!(
            Workers::locate_in(tmp.path(), |_| None).cuda,
            Some(tmp.path().join("freezetune-cuda"))
        );
        let w = Workers::locate_in(tmp.path(), |k| Some(PathBuf::from(format!("/opt/{k}"))));
        assert_eq!(w.cpu, PathBuf::from("/opt/FREEZETUNE_WORKER"));
        assert_eq!(w.cuda, Some(PathBuf::from("/opt/FREEZETUNE_CUDA_WORKER")));
    }

    #[test]
    fn cuda_without_the_cuda_edition_says_what_to_install() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("freezetune"), "").unwrap();
        let w = Workers {
            cpu: tmp.path().join("freezetune"),
            cuda: None,
        };
        let err = w.for_device("cuda:0").unwrap_err();
        assert!(err.message.contains("freezetune-cuda"), "{}", err.message);
        assert_eq!(w.for_device("auto").unwrap(), (tmp.path().join("freezetune"), None));
        assert_eq!(w.for_device("cpu").unwrap().0, tmp.path().join("freezetune"));
    }
}
