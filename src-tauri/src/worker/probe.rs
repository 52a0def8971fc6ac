//! The layer probe in a worker: `freezetune probe --config F --cache DIR --events jsonl` on the run's device (it
//! runs a backward pass, so it belongs where training runs, not in the app's process); measuring the same model,
//! data and settings again is read back from the cache.

use super::process::{self, StopSignal};
use super::train::ConfigFile;
use super::Workers;
use crate::error::IpcResult;
use freezetune_core::run_config::RunConfig;
use freezetune_train::probe::{ProbeProgress, ProbeReport};
use std::path::Path;
use std::process::Command;

/// One stdout line of `probe --events jsonl`: a progress report, or the result.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum ProbeLine {
    Progress {
        #[allow(dead_code)]
        event: ProgressTag,
        #[serde(flatten)]
        progress: ProbeProgress,
    },
    Report(Box<ProbeReport>),
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum ProgressTag {
    ProbeProgress,
}

/// Runs the probe (or, `cached_only`, reads an earlier result), handing each progress report to `on_progress`;
/// `stop` stops it (an error of kind `stopped`).
pub fn probe(
    workers: &Workers,
    config: &RunConfig,
    scratch: &Path,
    batches: usize,
    cached_only: bool,
    stop: &StopSignal,
    on_progress: &mut dyn FnMut(ProbeProgress),
) -> IpcResult<ProbeReport> {
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
    if cached_only {
        cmd.arg("--cached-only");
    }
    let mut report = None;
    let end = process::run::<ProbeLine>(cmd, stop, |line| match line {
        ProbeLine::Progress { progress, .. } => on_progress(progress),
        ProbeLine::Report(r) => report = Some(*r),
    })?;
    match report {
        Some(r) if end.status.success() => Ok(r),
        _ => Err(end.failure("layer probe worker")),
    }
}
