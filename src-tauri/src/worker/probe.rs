//! The layer probe in a worker: `freezetune probe --config F --cache DIR --json` on the run's device (it runs a
//! backward pass, so it belongs where training runs, not in the app's process); measuring the same model, data
//! and settings again is read back from the cache.

use super::train::ConfigFile;
use super::Workers;
use crate::error::{IpcError, IpcResult};
use freezetune_core::run_config::RunConfig;
use freezetune_train::probe::ProbeReport;
use std::path::Path;
use std::process::Command;

pub fn probe(workers: &Workers, config: &RunConfig, scratch: &Path, batches: usize) -> IpcResult<ProbeReport> {
    let (worker, _) = workers.for_device(&config.runtime.device)?;
    let file = ConfigFile::write(scratch, config)?;
    let out = Command::new(&worker)
        .arg("probe")
        .arg("--config")
        .arg(&file.0)
        .arg(format!("--batches={}", batches.max(1)))
        .arg("--cache")
        .arg(scratch.join("probes"))
        .arg("--json")
        .output()
        .map_err(|e| {
            IpcError::new(
                "worker_failed",
                format!("{}: cannot start the probe: {e}", worker.display()),
            )
        })?;
    if !out.status.success() {
        // The worker prints its error as JSON on stdout with --json, or text on stderr.
        let stdout = String::from_utf8_lossy(&out.stdout);
        let message = serde_json::from_str::<serde_json::Value>(&stdout)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
        return Err(IpcError::new(
            "probe_failed",
            format!("the layer probe failed: {message}"),
        ));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| IpcError::new("probe_failed", format!("the layer probe's answer is not a report: {e}")))
}
