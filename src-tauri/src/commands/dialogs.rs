//! Native file dialogs, opened by the backend so that a picked path is recorded in the allow-list (see `paths`):
//! the web view gets no dialog or file-system permission of its own.

use crate::error::IpcResult;
use crate::state::AppState;
use serde::Deserialize;
use tauri::{AppHandle, State};
use tauri_plugin_dialog::DialogExt;
use ts_rs::TS;

#[derive(Debug, Clone, Copy, Deserialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum PickKind {
    ModelFolder,
    OutputFolder,
    DatasetFile,
    /// A folder of data files (a dataset repo's files, `datasets`' `save_to_disk` output).
    DatasetFolder,
    PresetFile,
    GgufFile,
}

/// Opens a dialog to choose an existing file or folder; `None` when the user cancels.
#[tauri::command]
pub async fn pick_path(app: AppHandle, state: State<'_, AppState>, kind: PickKind) -> IpcResult<Option<String>> {
    let dialog = app.dialog().file();
    let picked = tauri::async_runtime::spawn_blocking(move || match kind {
        PickKind::ModelFolder => dialog.set_title("Open a model folder").blocking_pick_folder(),
        PickKind::OutputFolder => dialog
            .set_title("Choose the run's output folder")
            .blocking_pick_folder(),
        PickKind::DatasetFile => dialog
            .set_title("Choose a dataset")
            .add_filter(
                "Data (JSON, JSONL, Parquet, CSV, TSV, Arrow)",
                &["json", "jsonl", "ndjson", "parquet", "csv", "tsv", "arrow"],
            )
            .blocking_pick_file(),
        PickKind::DatasetFolder => dialog.set_title("Choose a folder of data files").blocking_pick_folder(),
        PickKind::PresetFile => dialog
            .set_title("Import a preset")
            .add_filter("Preset (TOML)", &["toml"])
            .blocking_pick_file(),
        PickKind::GgufFile => dialog
            .set_title("Open a GGUF file")
            .add_filter("GGUF", &["gguf"])
            .blocking_pick_file(),
    })
    .await
    .map_err(|e| crate::error::IpcError::new("app", e.to_string()))?;
    Ok(record(&state, picked))
}

/// Opens a save dialog; the chosen file may then be written by the command that asked.
pub async fn pick_save_path(
    app: &AppHandle,
    state: &AppState,
    title: &str,
    name: &str,
    ext: &str,
) -> IpcResult<Option<std::path::PathBuf>> {
    let dialog = app
        .dialog()
        .file()
        .set_title(title)
        .set_file_name(name)
        .add_filter(ext, &[ext]);
    let picked = tauri::async_runtime::spawn_blocking(move || dialog.blocking_save_file())
        .await
        .map_err(|e| crate::error::IpcError::new("app", e.to_string()))?;
    Ok(record(state, picked).map(std::path::PathBuf::from))
}

fn record(state: &AppState, picked: Option<tauri_plugin_dialog::FilePath>) -> Option<String> {
    // On desktop a dialog always answers with a path; a URL (mobile content URIs) is refused as "nothing picked".
    let path = match picked?.into_path() {
        Ok(path) => path,
        Err(e) => {
            tracing::warn!("the dialog answered with something that is not a file path: {e}");
            return None;
        }
    };
    state.access.allow(&path);
    Some(path.to_string_lossy().into_owned())
}
