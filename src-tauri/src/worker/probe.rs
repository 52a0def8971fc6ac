//! The layer probe in a worker: `freezetune probe --config F --cache DIR --events jsonl` on the run's device (it
//! runs a backward pass, so it belongs where training runs, not in the app's process); measuring the same model,
//! data and settings again is read back from the cache.

use super::process::{self, StopSignal};
use super::train::ConfigFile;
use super::Workers;
use crate::error::IpcResult;
use freezetune_core::run_config::RunConfig;
use freezetune_train::probe::ProbeReport;
use std::path::Path;
use std::process::Command;

pub fn probe(workers: &Workers, config: &RunConfig, scratch: &Path, batches: usize) -> IpcResult<ProbeReport> {
    let (worker, _) = workers.for_device(&config.runtime.device)?;
    let file = ConfigFile::write(scratch, config)?;
    let mut cmd = Command::new(&worker);
    cmd.arg("probe")
        .arg("--config")
        .arg(&file.0)
        .arg(format!("--batches={}", batches.max(1)))
        .arg("--cache")
        .arg(scratch.join("probes"))
        .args(["--events", "jsonl"]);
    let mut report = None;
    let end = process::run::<ProbeReport>(cmd, &StopSignal::default(), |r| report = Some(r))?;
    match report {
        Some(r) if end.status.success() => Ok(r),
        _ => Err(end.failure("layer probe worker")),
    }
}
