//! Freeze plans: the layer picker sends the user's choice, the backend answers with the whole plan (states per layer
//! and module, counts, memory, warnings). The web view never computes a mask itself.

use crate::commands::dialogs::pick_save_path;
use crate::error::{IpcError, IpcResult};
use crate::state::AppState;
use freezetune_core::export::{to_axolotl_yaml, to_llamafactory_yaml};
use freezetune_core::fit::{fit, DeviceMemory, FitSetup, FitVerdict};
use freezetune_core::fsutil::{write_atomic, Overwrite};
use freezetune_core::schedule::{timeline, Timeline, TimelineContext};
use freezetune_core::{plan, FreezePlan, FreezeSpec, PlanOptions};
use serde::{Deserialize, Serialize};
use tauri::{AppHandle, State};
use ts_rs::TS;

#[tauri::command]
pub fn plan_freeze(
    state: State<'_, AppState>,
    model_path: String,
    spec: FreezeSpec,
    options: PlanOptions,
) -> IpcResult<FreezePlan> {
    Ok(plan(&*state.checked_layout(&model_path)?, &spec, options)?)
}

/// The timeline of the spec's layer schedule for a run of `total_steps` (the Layers screen draws it before a run;
/// the trainer computes the same one from the same inputs).
#[tauri::command]
pub fn plan_timeline(
    state: State<'_, AppState>,
    model_path: String,
    spec: FreezeSpec,
    options: PlanOptions,
    total_steps: u64,
    steps_per_epoch: u64,
    seed: u64,
) -> IpcResult<Timeline> {
    let layout = state.checked_layout(&model_path)?;
    let plan = plan(&layout, &spec, options)?;
    let schedule = spec.schedule.clone().unwrap_or_default();
    let context = TimelineContext {
        total_steps,
        steps_per_epoch,
        seed,
        options,
    };
    Ok(timeline(&layout, &plan, &schedule, context)?)
}

/// Whether the spec's training fits on a device, and if not the cheapest changes that would make it fit (core's
/// `fit`; the Train screen draws it).
#[tauri::command]
pub fn check_fit(
    state: State<'_, AppState>,
    model_path: String,
    spec: FreezeSpec,
    setup: FitSetup,
    device: DeviceMemory,
) -> IpcResult<FitVerdict> {
    let layout = state.checked_layout(&model_path)?;
    let mut setup = setup;
    if setup.cpu && freezetune_train::device::cpu_half_keeps_f32() {
        setup.half_precision = false;
    }
    let options = PlanOptions {
        batch_size: setup.batch_size,
        seq_len: setup.seq_len,
    };
    let plan = plan(&layout, &spec, options)?;
    let trainable = plan.trainable.iter().cloned().collect();
    Ok(fit(&layout, &trainable, setup, &device))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    Llamafactory,
    Axolotl,
}

/// The config text another trainer needs for the same trainable set; an error when it cannot say it exactly.
#[tauri::command]
pub fn preview_export(
    state: State<'_, AppState>,
    model_path: String,
    spec: FreezeSpec,
    format: ExportFormat,
) -> IpcResult<String> {
    let layout = state.checked_layout(&model_path)?;
    let plan = plan(&layout, &spec, PlanOptions::default())?;
    Ok(match format {
        ExportFormat::Llamafactory => to_llamafactory_yaml(&layout, &spec, &plan)?,
        ExportFormat::Axolotl => to_axolotl_yaml(&layout, &spec, &plan)?,
    })
}

/// Writes the export to a file the user picks; `None` when the dialog is cancelled.
#[tauri::command]
pub async fn export_config(
    app: AppHandle,
    state: State<'_, AppState>,
    model_path: String,
    spec: FreezeSpec,
    format: ExportFormat,
) -> IpcResult<Option<String>> {
    let text = preview_export(state.clone(), model_path, spec, format)?;
    let name = match format {
        ExportFormat::Llamafactory => "freeze_llamafactory.yaml",
        ExportFormat::Axolotl => "freeze_axolotl.yaml",
    };
    let Some(path) = pick_save_path(&app, &state, "Export freeze config", name, "yaml").await? else {
        return Ok(None);
    };
    // The save dialog already asked before replacing an existing file.
    write_atomic(&path, text.as_bytes(), Overwrite::Allow)?;
    Ok(Some(path.to_string_lossy().into_owned()))
}

/// Canonical form of a layer-id list, or the error the planner would give for it (checked as the user types).
#[tauri::command]
pub fn check_layer_ids(text: String, num_layers: usize) -> IpcResult<String> {
    let ids = freezetune_core::ids::parse_layer_ids(&text, num_layers).map_err(IpcError::from)?;
    Ok(freezetune_core::ids::format_layer_ids(&ids))
}
