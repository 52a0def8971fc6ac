//! Presets: the same TOML files, in the same folder, as `freezetune preset` — one saved here is listed there.

use crate::commands::dialogs::pick_save_path;
use crate::error::{IpcError, IpcResult};
use crate::state::AppState;
use freezetune_core::preset::{Preset, PresetStore};
use serde::Serialize;
use tauri::{AppHandle, State};
use ts_rs::TS;

fn store(state: &AppState) -> PresetStore {
    PresetStore::at(state.paths.presets_dir.clone())
}

/// One preset file: its preset, or in words why it could not be read (the file is left as it is).
#[derive(Debug, Clone, Serialize, TS)]
pub struct PresetListItem {
    pub name: String,
    pub path: String,
    pub preset: Option<Preset>,
    pub error: Option<String>,
}

#[tauri::command]
pub fn list_presets(state: State<'_, AppState>) -> IpcResult<Vec<PresetListItem>> {
    Ok(store(&state)
        .list()?
        .into_iter()
        .map(|entry| {
            let (preset, error) = match entry.preset {
                Ok(p) => (Some(p), None),
                Err(e) => (None, Some(e.to_string())),
            };
            PresetListItem {
                name: entry.name,
                path: entry.path.to_string_lossy().into_owned(),
                preset,
                error,
            }
        })
        .collect())
}

/// Saves `preset` under its name; an existing preset of that name is only replaced with `replace`.
#[tauri::command]
pub fn save_preset(state: State<'_, AppState>, preset: Preset, replace: bool) -> IpcResult<String> {
    let path = store(&state).save(&preset, replace)?;
    Ok(path.to_string_lossy().into_owned())
}

#[tauri::command]
pub fn load_preset(state: State<'_, AppState>, name: String) -> IpcResult<Preset> {
    Ok(store(&state).load(&name)?)
}

#[tauri::command]
pub fn rename_preset(state: State<'_, AppState>, from: String, to: String) -> IpcResult<()> {
    store(&state).rename(&from, &to)?;
    Ok(())
}

/// Copies preset `from` to a new name; refuses to replace an existing preset.
#[tauri::command]
pub fn duplicate_preset(state: State<'_, AppState>, from: String, to: String) -> IpcResult<()> {
    let store = store(&state);
    let mut preset = store.load(&from)?;
    preset.name = to;
    store.save(&preset, false)?;
    Ok(())
}

#[tauri::command]
pub fn delete_preset(state: State<'_, AppState>, name: String) -> IpcResult<()> {
    store(&state).delete(&name)?;
    Ok(())
}

/// Imports a preset file the user picked (with `pick_path`), under `name` or its own name.
#[tauri::command]
pub fn import_preset(state: State<'_, AppState>, path: String, name: Option<String>) -> IpcResult<Preset> {
    let file = state.access.check(&path)?;
    let name = name.filter(|n| !n.trim().is_empty());
    Ok(store(&state).import(&file, name.as_deref(), false)?)
}

/// Exports preset `name` to a file the user picks; `None` when the dialog is cancelled.
#[tauri::command]
pub async fn export_preset(app: AppHandle, state: State<'_, AppState>, name: String) -> IpcResult<Option<String>> {
    let store = store(&state);
    store.load(&name)?;
    let Some(path) = pick_save_path(&app, &state, "Export preset", &format!("{name}.toml"), "toml").await? else {
        return Ok(None);
    };
    // The save dialog asked before replacing; the store's export writes atomically.
    store.export(&name, &path, true).map_err(IpcError::from)?;
    Ok(Some(path.to_string_lossy().into_owned()))
}
