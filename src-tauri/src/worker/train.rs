//! A training run in a worker: `freezetune train --config RUN.toml --events jsonl [--resume]`, its events relayed
//! as they come, its end turned into an outcome. A worker that dies is an error naming how it died, its last output
//! and the checkpoint the run resumes from; the run folder is the worker's, so nothing in it is lost.

use super::process::{self, StopSignal};
use super::Workers;
use crate::error::{io_error, IpcError, IpcResult};
use freezetune_core::events::{EventSink, TrainEvent};
use freezetune_core::run_config::RunConfig;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub run_dir: PathBuf,
    pub steps: u64,
    /// `None` when the run stopped before its end (its checkpoint resumes it).
    pub final_dir: Option<PathBuf>,
    pub last_loss: Option<f64>,
}

/// What the relay saw of the run, for the outcome and for the report of a worker that died.
#[derive(Default)]
struct Seen {
    run_dir: Option<PathBuf>,
    step: u64,
    last_loss: Option<f64>,
    checkpoint_step: Option<u64>,
    stopped: bool,
    final_dir: Option<PathBuf>,
}

impl Seen {
    fn note(&mut self, event: &TrainEvent) {
        match event {
            TrainEvent::Started { run_dir, .. } => self.run_dir = Some(run_dir.clone()),
            TrainEvent::Step { step, loss, .. } => (self.step, self.last_loss) = (*step, Some(*loss)),
            TrainEvent::Checkpoint { step, .. } => self.checkpoint_step = Some(*step),
            TrainEvent::Stopped { step, .. } => (self.step, self.stopped) = (*step, true),
            TrainEvent::Finished { step, final_dir } => (self.step, self.final_dir) = (*step, Some(final_dir.clone())),
            TrainEvent::Eval { .. } | TrainEvent::Phase { .. } => {}
        }
    }
}

/// Trains `config` in the worker its device needs. `scratch` holds the config file handed to the worker.
pub fn train(
    workers: &Workers,
    config: &RunConfig,
    resume: bool,
    scratch: &Path,
    stop: &StopSignal,
    sink: &dyn EventSink<TrainEvent>,
) -> IpcResult<Outcome> {
    let (worker, fallback_note) = workers.for_device(&config.runtime.device)?;
    let config_file = ConfigFile::write(scratch, config)?;
    let mut cmd = Command::new(&worker);
    cmd.arg("train")
        .arg("--config")
        .arg(&config_file.0)
        .args(["--events", "jsonl"]);
    if resume {
        cmd.arg("--resume");
    }
    tracing::info!("training {} in {}", config.output.dir.display(), worker.display());
    let mut seen = Seen::default();
    let end = process::run::<TrainEvent>(cmd, stop, |mut event| {
        if let (TrainEvent::Started { device_note, .. }, Some(note)) = (&mut event, &fallback_note) {
            *device_note = Some(note.clone());
        }
        seen.note(&event);
        sink.emit(event);
    })?;
    if seen.final_dir.is_some() || seen.stopped {
        return Ok(Outcome {
            run_dir: seen.run_dir.unwrap_or_else(|| config.output.dir.clone()),
            steps: seen.step,
            final_dir: seen.final_dir,
            last_loss: seen.last_loss,
        });
    }
    let mut e = end.failure("training worker");
    if e.kind == "worker_died" {
        e = IpcError::new(
            "worker_died",
            format!("training stopped: {}. {}", e.message, resume_hint(&seen)),
        );
    }
    Err(e)
}

fn resume_hint(seen: &Seen) -> String {
    match seen.checkpoint_step {
        Some(step) => format!("The run resumes from its checkpoint at step {step} (Runs → Resume)."),
        None => format!(
            "It had saved no checkpoint in this session (step {}); resuming starts from the last one it has, if any.",
            seen.step
        ),
    }
}

/// The run config written for the worker, removed when the run ends.
pub(super) struct ConfigFile(pub(super) PathBuf);

impl ConfigFile {
    pub(super) fn write(scratch: &Path, config: &RunConfig) -> IpcResult<ConfigFile> {
        std::fs::create_dir_all(scratch).map_err(|e| io_error(scratch, e))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = scratch.join(format!("run-{}-{nanos}.toml", std::process::id()));
        std::fs::write(&path, config.to_toml()).map_err(|e| io_error(&path, e))?;
        Ok(ConfigFile(path))
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_remembers_the_last_checkpoint_for_the_resume_hint() {
        let mut seen = Seen::default();
        seen.note(&TrainEvent::Checkpoint {
            step: 4,
            path: "c4".into(),
        });
        seen.note(&TrainEvent::Eval {
            step: 5,
            eval_loss: 1.0,
        });
        assert!(resume_hint(&seen).contains("checkpoint at step 4"));
        assert!(resume_hint(&Seen::default()).contains("no checkpoint"));
    }
}
