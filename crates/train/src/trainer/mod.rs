//! The training loop: a run config in, a run folder out (`run.toml`, `freeze_plan.json`, `metrics.jsonl`,
//! `checkpoints/step-N/`, `final/`). Decisions — how many steps, which examples form a batch, which learning rate —
//! are plain functions of the config, so a resumed run repeats exactly what an uninterrupted one would do.
//!
//! `setup` prepares a [`Run`], `phase` applies a layer schedule's phase changes, `step` does one optimizer step,
//! `metrics` evaluates, logs and checkpoints when due; [`train`] only sequences them.

mod metrics;
mod phase;
pub mod scaler;
mod setup;
mod step;

pub(crate) use setup::load_data;
pub(crate) use step::collate as collate_examples;

use crate::checkpoint::{self, Progress};
use crate::device::{Compute, DeviceChoice};
use crate::error::Result;
use crate::model::Decoder;
use crate::optim::Optimizer;
use crate::params::Params;
use freezetune_core::events::{EventSink, TrainEvent};
use freezetune_core::run_config::RunConfig;
use freezetune_core::ModelLayout;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub run_dir: PathBuf,
    pub steps: u64,
    /// `None` when the run was stopped before the end.
    pub final_dir: Option<PathBuf>,
    pub last_loss: Option<f64>,
    /// The device the run used (`cpu`, `cuda:N`, `metal`) and its compute dtype.
    pub device: String,
    pub dtype: String,
}

/// A run being trained: everything `setup` prepared and where it stands.
struct Run {
    config: RunConfig,
    run_dir: PathBuf,
    metrics: std::fs::File,
    metrics_path: PathBuf,
    layout: ModelLayout,
    trainable_params: u64,
    params: Params,
    model: Decoder,
    optimizer: Optimizer,
    decoder_config: crate::DecoderConfig,
    /// The layer schedule's phases (one static phase without a schedule), and the one entered.
    timeline: freezetune_core::schedule::Timeline,
    phase: Option<usize>,
    data: setup::RunData,
    micro_per_epoch: usize,
    total_steps: u64,
    progress: Progress,
    /// The data order of the current epoch.
    order: Vec<usize>,
    /// Time already spent before a resume, plus this session's (an `Instant` cannot go back past boot).
    started: Instant,
    elapsed_before: f64,
    device: DeviceChoice,
    compute: Compute,
    last_loss: Option<f64>,
}

/// Runs (or, with `resume`, continues) the training described by `config`.
pub fn train(
    config: &RunConfig,
    resume: bool,
    sink: &dyn EventSink<TrainEvent>,
    cancel: &AtomicBool,
) -> Result<TrainOutcome> {
    let run = Run::prepare(config, resume)?;
    crate::fused::with_bf16_matmuls(run.compute.bf16_matmuls, || run.drive(sink, cancel))
}

impl Run {
    fn drive(mut self, sink: &dyn EventSink<TrainEvent>, cancel: &AtomicBool) -> Result<TrainOutcome> {
        sink.emit(self.started_event());
        while self.progress.step < self.total_steps {
            if cancel.load(Ordering::Relaxed) {
                return self.stop(sink);
            }
            self.enter_phase_if_due(sink)?;
            let micro = self.next_micro_batches();
            let event = self.step(&micro)?;
            self.record(&event)?;
            sink.emit(event);
            self.eval_if_due(sink)?;
            self.checkpoint_if_due(sink)?;
        }
        self.finish(sink)
    }

    fn started_event(&self) -> TrainEvent {
        TrainEvent::Started {
            run_dir: self.run_dir.clone(),
            total_steps: self.total_steps,
            trainable_params: self.trainable_params,
            examples: self.data.train.len(),
            eval_examples: self.data.eval.len(),
            truncated: self.data.truncated,
            skipped: self.data.skipped,
            device: self.device.name.clone(),
            dtype: self.compute.name().into(),
            device_note: self.device.note.clone(),
            frozen_weight_bytes: self.params.frozen_bytes(),
            quantized_tensors: self.params.quantized_count() + self.params.packed_count() + self.params.fp8_count(),
            quantize_frozen: self.held_formats(),
        }
    }

    /// How frozen tensors are held in blocks, if any are: `quantize_frozen`'s format, the checkpoint's own MXFP4
    /// blocks (gpt-oss's experts) or FP8 codes (DeepSeek-V3, Qwen3's FP8 builds), or several.
    fn held_formats(&self) -> Option<String> {
        let p = &self.params;
        let formats: Vec<&str> = [
            (p.quantized_count(), self.config.model.quantize_frozen.name()),
            (p.packed_count(), "MXFP4 (the checkpoint's own blocks)"),
            (p.fp8_count(), "FP8 (the checkpoint's own codes and scales)"),
        ]
        .into_iter()
        .filter(|(count, _)| *count > 0)
        .map(|(_, name)| name)
        .collect();
        (!formats.is_empty()).then(|| formats.join(" or "))
    }

    fn outcome(&self, final_dir: Option<PathBuf>) -> TrainOutcome {
        TrainOutcome {
            run_dir: self.run_dir.clone(),
            steps: self.progress.step,
            final_dir,
            last_loss: self.last_loss,
            device: self.device.name.clone(),
            dtype: self.compute.name().into(),
        }
    }

    /// Cancelled: a checkpoint, so the run resumes where it stopped.
    fn stop(self, sink: &dyn EventSink<TrainEvent>) -> Result<TrainOutcome> {
        let path = checkpoint::save(&self.run_dir, &self.params, &self.optimizer, &self.progress)?;
        sink.emit(TrainEvent::Stopped {
            step: self.progress.step,
            checkpoint: Some(path),
        });
        Ok(self.outcome(None))
    }

    /// Done: the complete checkpoint in `final/`.
    fn finish(self, sink: &dyn EventSink<TrainEvent>) -> Result<TrainOutcome> {
        let final_dir = crate::export::export_checkpoint(&self.layout, &self.params, &self.run_dir.join("final"))?;
        sink.emit(TrainEvent::Finished {
            step: self.progress.step,
            final_dir: final_dir.clone(),
        });
        Ok(self.outcome(Some(final_dir)))
    }
}
