//! GGUF in and out from the app: a run's final model exported for llama.cpp / Ollama / LM Studio (into the run's
//! own `gguf/` folder, beside an optional Modelfile), and a GGUF file the user picked imported as a model folder
//! under the data folder (`imported/<name>`), then opened. Both run in a worker process (a crafted file that
//! crashes the reader ends the worker, not the window) with per-tensor progress, and can be cancelled by task id;
//! nothing is replaced without being asked.

use crate::commands::models::{summarize, ModelSource, ModelSummary};
use crate::error::{IpcError, IpcResult};
use crate::state::AppState;
use crate::tasks::CancelHandle;
use crate::worker::process::StopSignal;
use freezetune_gguf::{ExportType, Progress};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tauri::ipc::Channel;
use tauri::State;
use ts_rs::TS;

/// What an export wrote.
#[derive(Debug, Clone, Serialize, TS)]
pub struct GgufExport {
    pub path: String,
    pub folder: String,
    pub bytes: u64,
    pub kind: String,
    pub architecture: String,
    pub tensors: usize,
    /// "30 q4_K, 9 f32", ...
    pub tensor_types: String,
    pub modelfile: Option<String>,
    pub warnings: Vec<String>,
}

/// Where a run's export of `kind` goes: `<run>/gguf/<run name>-<kind>.gguf`.
pub fn export_path(run_dir: &Path, kind: ExportType) -> PathBuf {
    let name = run_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    run_dir.join("gguf").join(format!("{name}-{}.gguf", kind.name()))
}

/// Where an imported file goes: `<data>/imported/<file stem>`, with `-2`, `-3`, ... when that is taken.
pub fn import_dir(data_dir: &Path, file: &Path) -> PathBuf {
    let stem = file
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let base = data_dir.join("imported");
    (1..)
        .map(|n| {
            if n == 1 {
                base.join(&stem)
            } else {
                base.join(format!("{stem}-{n}"))
            }
        })
        .find(|p| !p.exists())
        .expect("some name is free")
}

/// Sends each tensor's progress to the window (the end is `done == total`).
fn forward(on_event: Channel<Progress>) -> impl FnMut(Progress) {
    move |p: Progress| {
        if let Err(e) = on_event.send(p) {
            tracing::warn!("gguf progress: the window is gone: {e}");
        }
    }
}

/// Exports a run's final model (or a model folder) as `kind`; `force` replaces an earlier export of that kind.
#[tauri::command]
pub async fn export_gguf(
    state: State<'_, AppState>,
    run_dir: String,
    kind: String,
    modelfile: bool,
    force: bool,
    task_id: String,
    on_event: Channel<Progress>,
) -> IpcResult<GgufExport> {
    let run = state.access.check(&run_dir)?;
    let kind = ExportType::parse(&kind).ok_or_else(|| {
        IpcError::new(
            "bad_input",
            format!("unknown GGUF type {kind:?}; one of {}", ExportType::names()),
        )
    })?;
    let dest = export_path(&run, kind);
    let stop = Arc::new(StopSignal::default());
    let _guard = state.tasks.start(&task_id, CancelHandle::Worker(stop.clone()))?;
    let workers = state.workers.clone();
    let report = crate::blocking::run("export-gguf", move || {
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(|e| IpcError::new("io", format!("{}: {e}", dir.display())))?;
        }
        let on_progress = &mut forward(on_event);
        let job = crate::worker::gguf::ExportJob {
            input: &run,
            output: &dest,
            kind,
            modelfile,
            force,
        };
        crate::worker::gguf::export(&workers, job, &stop, on_progress)
    })
    .await?;
    Ok(GgufExport {
        folder: report
            .path
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default(),
        path: report.path.to_string_lossy().into_owned(),
        bytes: report.bytes,
        kind: report.kind,
        architecture: report.architecture,
        tensors: report.tensors,
        tensor_types: freezetune_gguf::describe_types(&report.tensor_types),
        modelfile: report.modelfile.map(|m| m.to_string_lossy().into_owned()),
        warnings: report.warnings,
    })
}

/// Imports a GGUF file the user picked (`pick_path` with `gguf_file`) into the data folder and opens it.
#[tauri::command]
pub async fn import_gguf(
    state: State<'_, AppState>,
    path: String,
    task_id: String,
    on_event: Channel<Progress>,
) -> IpcResult<ModelSummary> {
    let file = state.access.check(&path)?;
    let dest = import_dir(&state.paths.data_dir, &file);
    let stop = Arc::new(StopSignal::default());
    let _guard = state.tasks.start(&task_id, CancelHandle::Worker(stop.clone()))?;
    let workers = state.workers.clone();
    let target = dest.clone();
    crate::blocking::run("import-gguf", move || {
        crate::worker::gguf::import(&workers, &file, &target, &stop, &mut forward(on_event))
    })
    .await?;
    let layout = state.layout(&dest)?;
    Ok(summarize(&layout, ModelSource::Local))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_go_into_the_run_and_imports_never_replace_a_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("runs/demo");
        assert_eq!(export_path(&run, ExportType::Q4KM), run.join("gguf/demo-q4_k_m.gguf"));
        let file = tmp.path().join("Qwen3-0.6B-Q8_0.gguf");
        let first = import_dir(tmp.path(), &file);
        assert_eq!(first, tmp.path().join("imported/Qwen3-0.6B-Q8_0"));
        std::fs::create_dir_all(&first).unwrap();
        assert_eq!(
            import_dir(tmp.path(), &file),
            tmp.path().join("imported/Qwen3-0.6B-Q8_0-2")
        );
    }
}
