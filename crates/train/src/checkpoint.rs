//! Checkpoints: `checkpoints/step-N/` holds the trained tensors (the trainable ones, and those a layer schedule
//! trained earlier and froze again), the optimizer state (a schedule's kept-aside moments too) and where the data
//! order stood, enough for `--resume` to continue exactly. A checkpoint is written into `.step-N.partial` and renamed, so
//! a folder named `step-N` is always complete.

use crate::error::{candle, io, Result, TrainError};
use crate::optim::Optimizer;
use crate::params::Params;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Where the run stood after an optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Progress {
    /// Optimizer steps done.
    pub step: u64,
    /// Epoch (0-based) and micro-batch index within it of the next batch.
    pub epoch: u64,
    pub cursor: usize,
    pub tokens: u64,
    pub elapsed_s: f64,
    pub optimizer_step: u64,
    /// f16 runs: the dynamic loss scale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaler: Option<crate::trainer::scaler::LossScaler>,
    /// The optimizer whose state the checkpoint holds (`adamw`, `adamw8bit`, `adafactor`, `sgd`); written by
    /// [`save`], absent from checkpoints written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<String>,
}

pub fn save(run_dir: &Path, params: &Params, optimizer: &Optimizer, progress: &Progress) -> Result<PathBuf> {
    let root = run_dir.join("checkpoints");
    let dest = root.join(format!("step-{}", progress.step));
    let staging = root.join(format!(".step-{}.partial", progress.step));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let trainable: HashMap<String, Tensor> = params.trained_values().map(|(n, t)| (n.clone(), t)).collect();
    let path = staging.join("trainable.safetensors");
    candle_core::safetensors::save(&trainable, &path).map_err(candle(&format!("writing {}", path.display())))?;
    let (state, _) = optimizer.state();
    if !state.is_empty() {
        let path = staging.join("optimizer.safetensors");
        let state: HashMap<String, Tensor> = state.into_iter().collect();
        candle_core::safetensors::save(&state, &path).map_err(candle(&format!("writing {}", path.display())))?;
    }
    let path = staging.join("progress.json");
    let progress = Progress {
        optimizer: Some(optimizer.kind_name().to_string()),
        ..progress.clone()
    };
    std::fs::write(&path, serde_json::to_string_pretty(&progress).expect("json")).map_err(io(&path))?;
    if dest.exists() {
        std::fs::remove_dir_all(&dest).map_err(io(&dest))?;
    }
    std::fs::rename(&staging, &dest).map_err(io(&dest))?;
    Ok(dest)
}

/// The newest complete checkpoint of a run, if any.
pub fn latest(run_dir: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(run_dir.join("checkpoints")).ok()?;
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n: u64 = name.strip_prefix("step-")?.parse().ok()?;
            e.path().join("progress.json").is_file().then_some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, p)| p)
}

/// Where the run stood when `dir` was saved.
pub fn read_progress(dir: &Path) -> Result<Progress> {
    let path = dir.join("progress.json");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Config {
        path: path.clone(),
        reason: e.to_string(),
    })
}

/// Loads a checkpoint into the parameters and the optimizer; returns where the run stood. Every name in
/// `required` (what trained before the checkpoint) must be in it.
pub fn restore(
    dir: &Path,
    params: &mut Params,
    optimizer: &mut Optimizer,
    device: &Device,
    required: &[String],
) -> Result<Progress> {
    let progress = read_progress(dir)?;
    let path = dir.join("trainable.safetensors");
    let saved =
        candle_core::safetensors::load(&path, device).map_err(candle(&format!("reading {}", path.display())))?;
    if let Some(missing) = required.iter().find(|n| !saved.contains_key(*n)) {
        return Err(TrainError::Tensor {
            name: missing.clone(),
            reason: format!(
                "trained before this checkpoint but is missing from {}; the run's model or freeze settings changed \
                 since it was saved",
                dir.display()
            ),
        });
    }
    for (name, t) in &saved {
        params.restore_value(name, t)?;
    }
    if let Some(saved) = progress.optimizer.as_deref().filter(|k| *k != optimizer.kind_name()) {
        return Err(TrainError::Config {
            path: dir.to_path_buf(),
            reason: format!(
                "this checkpoint holds {saved}'s optimizer state, but the run now uses {}: set training.optimizer \
                 back to \"{saved}\" to resume, or start a new run",
                optimizer.kind_name()
            ),
        });
    }
    let path = dir.join("optimizer.safetensors");
    if path.is_file() {
        let state =
            candle_core::safetensors::load(&path, device).map_err(candle(&format!("reading {}", path.display())))?;
        let state: BTreeMap<String, Tensor> = state.into_iter().collect();
        optimizer
            .load_state(&state, progress.optimizer_step)
            .map_err(candle(&format!("restoring the optimizer state of {}", dir.display())))?;
    }
    Ok(progress)
}
