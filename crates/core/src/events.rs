//! Event streams, one enum per stream, produced by the libraries through [`EventSink`]; the CLI renders them as a
//! progress bar, the app forwards them over a Tauri channel, run folders keep them.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Receives events; implementations must be cheap and never block for long (they are called from transfer loops).
pub trait EventSink<E>: Send + Sync {
    fn emit(&self, event: E);
}

/// A sink that drops everything.
pub struct NullSink;

impl<E> EventSink<E> for NullSink {
    fn emit(&self, _: E) {}
}

impl<E, F: Fn(E) + Send + Sync> EventSink<E> for F {
    fn emit(&self, event: E) {
        self(event)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct PlannedFile {
    pub name: String,
    pub size: u64,
    /// Bytes already on disk: complete blob, or a partial download that will be resumed.
    pub present: u64,
}

/// Events of one Hub download.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DownloadEvent {
    /// The repo was resolved to a commit and the files to fetch are known.
    Resolved {
        repo: String,
        revision: String,
        commit: String,
        files: Vec<PlannedFile>,
        total_bytes: u64,
    },
    FileStarted {
        file: String,
        size: u64,
        resumed_from: u64,
    },
    /// Throttled (about 10 per second).
    Progress {
        file: String,
        file_bytes: u64,
        file_size: u64,
        done_bytes: u64,
        total_bytes: u64,
        bytes_per_second: f64,
        eta_seconds: Option<f64>,
    },
    Retrying {
        file: String,
        attempt: u32,
        wait_ms: u64,
        reason: String,
    },
    FileFinished {
        file: String,
    },
    /// Size and checksum matched; the file is now in the snapshot.
    FileVerified {
        file: String,
        sha256: Option<String>,
    },
    Finished {
        snapshot: PathBuf,
        downloaded_bytes: u64,
        resumed_bytes: u64,
        seconds: f64,
    },
    Cancelled {
        partial_bytes: u64,
    },
}

/// Events of one generation (`freezetune generate --events jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum GenerateEvent {
    /// The model is loaded on `device` in `dtype`; `device_note` says how `auto` chose.
    Loaded {
        device: String,
        dtype: String,
        device_note: Option<String>,
    },
    Reply {
        text: String,
    },
}

fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Events of one training run; `Step` and `Eval` are also the lines of the run's `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TrainEvent {
    Started {
        run_dir: PathBuf,
        total_steps: u64,
        trainable_params: u64,
        examples: usize,
        eval_examples: usize,
        /// Examples cut to `cutoff_len`, and examples dropped: nothing in them was left to learn, or a
        /// conversation's turns do not alternate user / assistant (as LLaMA-Factory drops them).
        truncated: usize,
        skipped: usize,
        /// The device the run uses (`cpu`, `cuda:N`, `metal`) and its compute dtype (`f32`, `bf16`, `f16`).
        device: String,
        dtype: String,
        /// How `auto` chose the device, or why it fell back.
        device_note: Option<String>,
        /// Bytes the frozen weights take on the device, and how many of them are held quantized
        /// (`quantize_frozen`) and in which format.
        #[serde(default)]
        frozen_weight_bytes: u64,
        #[serde(default, skip_serializing_if = "is_zero")]
        quantized_tensors: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "ts", ts(optional))]
        quantize_frozen: Option<String>,
    },
    /// One optimizer step (1-based); `loss` is that step's forward loss, before its update.
    Step {
        step: u64,
        epoch: f64,
        /// Non-finite values (an f16 overflow) are written as `null` by JSON and read back as NaN.
        #[serde(deserialize_with = "nan_if_null")]
        loss: f64,
        lr: f64,
        #[serde(deserialize_with = "nan_if_null")]
        grad_norm: f64,
        tokens: u64,
        tokens_per_second: f64,
        elapsed_s: f64,
        /// f16 runs: the dynamic loss scale the step used.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "ts", ts(optional))]
        loss_scale: Option<f64>,
        /// f16 runs: the gradients overflowed at this loss scale, so the update was skipped (and the scale halved).
        #[serde(default, skip_serializing_if = "is_false")]
        skipped: bool,
    },
    Eval {
        step: u64,
        eval_loss: f64,
    },
    /// A layer schedule's phase begins after `step` optimizer steps: from now on `layers` (of the selection) train,
    /// with `trainable_params` parameters in all, until step `end_step`.
    Phase {
        step: u64,
        phase: usize,
        phases: usize,
        end_step: u64,
        layers: Vec<usize>,
        trainable_params: u64,
    },
    Checkpoint {
        step: u64,
        path: PathBuf,
    },
    /// Stopped early (cancel); the checkpoint resumes the run.
    Stopped {
        step: u64,
        checkpoint: Option<PathBuf>,
    },
    Finished {
        step: u64,
        final_dir: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_with_an_overflowed_gradient_norm_round_trips_through_json() {
        let step = TrainEvent::Step {
            step: 3,
            epoch: 0.5,
            loss: 2.0,
            lr: 1e-4,
            grad_norm: f64::INFINITY,
            tokens: 10,
            tokens_per_second: 1.0,
            elapsed_s: 1.0,
            loss_scale: Some(32768.0),
            skipped: true,
        };
        let line = serde_json::to_string(&step).unwrap();
        assert!(
            line.contains("\"grad_norm\":null") && line.contains("\"skipped\":true"),
            "{line}"
        );
        match serde_json::from_str::<TrainEvent>(&line).unwrap() {
            TrainEvent::Step { grad_norm, loss, .. } => assert!(grad_norm.is_nan() && loss == 2.0),
            other => panic!("{other:?}"),
        }
        let plain = r#"{"event":"step","step":1,"epoch":0.1,"loss":1.5,"lr":0.1,"grad_norm":1.0,"tokens":4,"tokens_per_second":2.0,"elapsed_s":1.0}"#;
        assert!(matches!(
            serde_json::from_str::<TrainEvent>(plain).unwrap(),
            TrainEvent::Step {
                skipped: false,
                loss_scale: None,
                ..
            }
        ));
    }
}
