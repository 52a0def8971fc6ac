//! Evaluation, `metrics.jsonl` and checkpoints: what a run does between steps when they are due.

use super::step::collate;
use super::Run;
use crate::checkpoint;
use crate::data::Example;
use crate::error::{candle, io, Result, TrainError};
use crate::loss::causal_lm_loss;
use crate::model::Decoder;
use candle_core::{DType, Tensor};
use freezetune_core::events::{EventSink, TrainEvent};
use freezetune_core::fsutil::{write_atomic, Overwrite};
use std::io::Write;
use std::path::Path;

impl Run {
    /// Appends a step or eval event to `metrics.jsonl`.
    pub(super) fn record(&mut self, event: &TrainEvent) -> Result<()> {
        log_metric(&mut self.metrics, &self.metrics_path, event)
    }

    /// Evaluates when `eval_steps` says so, and after the last step.
    pub(super) fn eval_if_due(&mut self, sink: &dyn EventSink<TrainEvent>) -> Result<()> {
        let t = &self.config.training;
        let step = self.progress.step;
        let due = (t.eval_steps > 0 && step % t.eval_steps == 0) || step == self.total_steps;
        if self.data.eval.is_empty() || !due {
            return Ok(());
        }
        let event = TrainEvent::Eval {
            step,
            eval_loss: evaluate(&self.model, &self.data.eval, t.batch_size)?,
        };
        self.record(&event)?;
        sink.emit(event);
        Ok(())
    }

    /// Saves a checkpoint when `save_steps` says so, and after the last step.
    pub(super) fn checkpoint_if_due(&mut self, sink: &dyn EventSink<TrainEvent>) -> Result<()> {
        let t = &self.config.training;
        let step = self.progress.step;
        if (t.save_steps > 0 && step % t.save_steps == 0) || step == self.total_steps {
            let path = checkpoint::save(&self.run_dir, &self.params, &self.optimizer, &self.progress)?;
            sink.emit(TrainEvent::Checkpoint { step, path });
        }
        Ok(())
    }
}

/// Token-weighted mean loss over the evaluation examples; the per-batch sums stay on the device until the end.
fn evaluate(model: &Decoder, examples: &[Example], batch_size: usize) -> Result<f64> {
    let err = candle("eval loss");
    let mut total: Option<Tensor> = None;
    let mut count = 0usize;
    for chunk in examples.chunks(batch_size) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let (batch, labels) = collate(&refs);
        let logits = model.forward_logits(&batch)?.detach();
        let (mean, n) = causal_lm_loss(&logits, &labels).map_err(&err)?;
        let sum = (mean * n as f64).map_err(&err)?;
        total = Some(match total {
            Some(t) => (t + sum).map_err(&err)?,
            None => sum,
        });
        count += n;
    }
    let Some(total) = total else { return Ok(0.0) };
    let total = total
        .to_dtype(DType::F32)
        .and_then(|t| t.to_scalar::<f32>())
        .map_err(&err)?;
    Ok(total as f64 / count.max(1) as f64)
}

fn log_metric(file: &mut std::fs::File, path: &Path, event: &TrainEvent) -> Result<()> {
    let mut value = serde_json::to_value(event).expect("json");
    if let Some(obj) = value.as_object_mut() {
        obj.remove("event");
    }
    writeln!(file, "{value}").and_then(|_| file.flush()).map_err(io(path))
}

/// On resume, drops metric lines written after the checkpoint, so the file reads like one uninterrupted run. A
/// schedule's phase that began right at the checkpoint is dropped too: the resumed run enters it again.
pub(super) fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
                return false;
            };
            let is_phase = v.get("phase").is_some();
            v["step"].as_u64().is_some_and(|s| s < step || (s == step && !is_phase))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(path, kept.as_bytes(), Overwrite::Allow)
        .map(|_| ())
        .map_err(TrainError::from)
}
