//! `FreezePlan`: the exact set of trainable tensor names for a model, with per-layer states, counts, warnings and a
//! memory estimate. Computed once here; the CLI, the app and the trainer only render or apply it.

use crate::error::{Error, Result};
use crate::ids::format_layer_ids;
use crate::layout::{ModelLayout, ModuleInfo};
use crate::memory::{estimate_memory, MemoryEstimate};
use crate::spec::FreezeSpec;
use crate::{llamafactory, native};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum FreezeMode {
    Native,
    Llamafactory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum TrainState {
    Trainable,
    Frozen,
    Partial,
}

impl TrainState {
    fn of(trainable: usize, total: usize) -> TrainState {
        match trainable {
            0 => TrainState::Frozen,
            n if n == total => TrainState::Trainable,
            _ => TrainState::Partial,
        }
    }
}

/// A note about the plan the user should see (tied embeddings, LLaMA-Factory quirks, nothing trainable, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Warning {
    pub code: String,
    pub message: String,
}

impl Warning {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Warning {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct ModulePlan {
    pub name: String,
    pub path: String,
    pub state: TrainState,
    pub trainable_params: u64,
    pub params: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct LayerPlan {
    pub id: usize,
    pub state: TrainState,
    pub trainable_params: u64,
    pub params: u64,
    pub modules: Vec<ModulePlan>,
}

/// Sizes the memory estimate assumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct PlanOptions {
    pub batch_size: u64,
    pub seq_len: u64,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            batch_size: 1,
            seq_len: 512,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct FreezePlan {
    pub mode: FreezeMode,
    /// Sorted names of every trainable tensor.
    pub trainable: Vec<String>,
    pub trainable_params: u64,
    pub total_params: u64,
    pub trainable_percent: f64,
    /// Canonical ids of the layers holding at least one trainable tensor (`"1-2,10"`).
    pub trainable_layer_ids: String,
    pub layers: Vec<LayerPlan>,
    /// States of the modules outside the layers (embeddings, final norm, lm_head, ...).
    pub extra_modules: Vec<ModulePlan>,
    pub warnings: Vec<Warning>,
    pub memory: MemoryEstimate,
}

impl FreezePlan {
    /// For training: a plan with nothing trainable is refused.
    pub fn require_trainable(&self) -> Result<&Self> {
        if self.trainable.is_empty() {
            Err(Error::NothingTrainable)
        } else {
            Ok(self)
        }
    }

    pub fn is_trainable(&self, name: &str) -> bool {
        self.trainable.binary_search_by(|n| n.as_str().cmp(name)).is_ok()
    }
}

/// Computes the plan of `spec` on `layout`. A plan with nothing trainable is allowed here (with a warning); training
/// calls [`FreezePlan::require_trainable`].
pub fn plan(layout: &ModelLayout, spec: &FreezeSpec, options: PlanOptions) -> Result<FreezePlan> {
    spec.check_mode()?;
    let (mode, trainable, mut warnings) = match &spec.llamafactory {
        Some(args) => {
            let (set, warnings) = llamafactory::trainable_set(layout, args)?;
            (FreezeMode::Llamafactory, set, warnings)
        }
        None => {
            let (set, warnings) = native::trainable_set(layout, spec)?;
            (FreezeMode::Native, set, warnings)
        }
    };
    if trainable.is_empty() {
        warnings.push(Warning::new(
            "nothing_trainable",
            "nothing trains with this choice; training will refuse it",
        ));
    }
    Ok(build_plan(layout, mode, trainable, warnings, options))
}

fn module_plan(m: &ModuleInfo, trainable: &BTreeSet<String>) -> ModulePlan {
    let n = m.tensors.iter().filter(|t| trainable.contains(&t.name)).count();
    let trainable_params = m
        .tensors
        .iter()
        .filter(|t| trainable.contains(&t.name))
        .map(|t| t.params)
        .sum();
    ModulePlan {
        name: m.name.clone(),
        path: m.path.clone(),
        state: TrainState::of(n, m.tensors.len()),
        trainable_params,
        params: m.params,
    }
}

fn build_plan(
    layout: &ModelLayout,
    mode: FreezeMode,
    trainable: BTreeSet<String>,
    warnings: Vec<Warning>,
    options: PlanOptions,
) -> FreezePlan {
    let layers: Vec<LayerPlan> = layout
        .layers
        .iter()
        .map(|l| {
            let modules: Vec<ModulePlan> = l.modules.iter().map(|m| module_plan(m, &trainable)).collect();
            let n = l.tensors().filter(|t| trainable.contains(&t.name)).count();
            let total = l.modules.iter().map(|m| m.tensors.len()).sum();
            LayerPlan {
                id: l.id,
                state: TrainState::of(n, total),
                trainable_params: modules.iter().map(|m| m.trainable_params).sum(),
                params: l.params,
                modules,
            }
        })
        .collect();
    let extra_modules: Vec<ModulePlan> = layout
        .non_layer_modules
        .iter()
        .map(|m| module_plan(m, &trainable))
        .collect();
    let trainable_params = layers.iter().map(|l| l.trainable_params).sum::<u64>()
        + extra_modules.iter().map(|m| m.trainable_params).sum::<u64>();
    let trained_layers: Vec<usize> = layers
        .iter()
        .filter(|l| l.trainable_params > 0 || l.state != TrainState::Frozen)
        .map(|l| l.id)
        .collect();
    let memory = estimate_memory(layout, &trainable, options);
    FreezePlan {
        mode,
        trainable_percent: if layout.total_params == 0 {
            0.0
        } else {
            100.0 * trainable_params as f64 / layout.total_params as f64
        },
        trainable: trainable.into_iter().collect(),
        trainable_params,
        total_params: layout.total_params,
        trainable_layer_ids: format_layer_ids(&trained_layers),
        layers,
        extra_modules,
        warnings,
        memory,
    }
}
