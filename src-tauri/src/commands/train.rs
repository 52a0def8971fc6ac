//! Training from the app: a run config built by the Train screen, checked against the path allow-list, trained in a
//! worker process (crate::worker) with its events batched onto a channel; `cancel_task` tells the worker to
//! checkpoint and stop.

use crate::batching::Batching;
use crate::error::{IpcError, IpcResult};
use crate::state::AppState;
use crate::tasks::CancelHandle;
use crate::worker::devices::DeviceOption;
use crate::worker::process::StopSignal;
use freezetune_core::data_spec::{Columns, DatasetSpec, Formatting, Tags};
use freezetune_core::events::TrainEvent;
use freezetune_core::run_config::{DataFormat, DataSection, ModelSection, OutputSection, RunConfig};
use freezetune_core::FreezeSpec;
use freezetune_train::data::{preview_run, PreviewItem};
use freezetune_train::probe::{ProbeProgress, ProbeReport};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tauri::ipc::Channel;
use tauri::{AppHandle, State};
use tauri_plugin_notification::NotificationExt;
use ts_rs::TS;

/// Every device the installed workers can train on, with memory; asked of the workers, so it is fresh each time.
#[tauri::command(async)]
pub fn list_devices(state: State<'_, AppState>) -> Vec<DeviceOption> {
    crate::worker::devices::list(&state.workers)
}

/// A starting run config for `model_path`: the demo's own config for the demo, else defaults with no dataset yet.
/// The output folder is a fresh one under the app's runs folder.
#[tauri::command]
pub fn default_run(state: State<'_, AppState>, model_path: String) -> IpcResult<RunConfig> {
    let model = state.access.check(&model_path)?;
    let demo = &state.paths.demo_dir;
    let mut config = if model == demo.join("model") && demo.join("run.toml").is_file() {
        RunConfig::read(&demo.join("run.toml"))?
    } else {
        RunConfig {
            model: ModelSection {
                path: model.clone(),
                repo: None,
                revision: None,
                dtype: "auto".into(),
                quantize_frozen: Default::default(),
            },
            freeze: FreezeSpec::default(),
            data: DataSection {
                train: PathBuf::new(),
                format: DataFormat::Auto,
                datasets: Vec::new(),
                mix: Default::default(),
                eval: None,
                eval_datasets: Vec::new(),
                eval_split: 0.0,
                cutoff_len: 1024,
                train_on_prompt: false,
            },
            training: Default::default(),
            runtime: Default::default(),
            output: OutputSection { dir: PathBuf::new() },
            resolved: None,
        }
    };
    let stem = model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    let stem = if model == demo.join("model") {
        "demo".to_string()
    } else {
        stem
    };
    config.output.dir = fresh_run_dir(&state.paths.runs_dir, &stem);
    Ok(config)
}

/// `runs/<stem>-N` for the first N not taken.
fn fresh_run_dir(runs: &Path, stem: &str) -> PathBuf {
    (1..)
        .map(|n| runs.join(format!("{stem}-{n}")))
        .find(|dir| !dir.exists())
        .expect("some run number is free")
}

/// Every path of `config` must be one the app may use; the checked (canonical) paths replace the ones sent.
pub(crate) fn check_paths(state: &AppState, mut config: RunConfig) -> IpcResult<RunConfig> {
    config.model.path = state.access.check(&config.model.path.to_string_lossy())?;
    if config.data.train.as_os_str().is_empty() && config.data.datasets.is_empty() {
        return Err(IpcError::new("no_dataset", "choose a dataset file first"));
    }
    if !config.data.train.as_os_str().is_empty() {
        config.data.train = state.access.check(&config.data.train.to_string_lossy())?;
    }
    for d in config.data.datasets.iter_mut().chain(&mut config.data.eval_datasets) {
        if let (Some(repo), None) = (&d.hub, &d.path) {
            return Err(IpcError::new(
                "no_dataset",
                format!("the Hub dataset {repo} is not downloaded yet: press Download beside it first"),
            ));
        }
        for p in [&mut d.path, &mut d.dataset_info].into_iter().flatten() {
            *p = state.access.check(&p.to_string_lossy())?;
        }
    }
    if let Some(eval) = &config.data.eval {
        config.data.eval = Some(state.access.check(&eval.to_string_lossy())?);
    }
    config.output.dir = state.access.check(&config.output.dir.to_string_lossy())?;
    Ok(config)
}

#[derive(Debug, Clone, Serialize, TS)]
pub struct DatasetPreview {
    pub format: DataFormat,
    pub examples: Vec<PreviewItem>,
}

/// The first `n` examples rendered, tokenized and masked exactly as training will see them.
#[tauri::command]
pub async fn preview_dataset(state: State<'_, AppState>, config: RunConfig, n: usize) -> IpcResult<DatasetPreview> {
    let config = check_paths(&state, config)?;
    let (format, examples) = crate::blocking::run("preview", move || Ok(preview_run(&config, n)?)).await?;
    Ok(DatasetPreview { format, examples })
}

/// How one dataset's rows are read, for the picker's mapping editor: the formatting and columns given or detected
/// from its first row, and the first row's column names to choose from.
#[derive(Debug, Clone, Serialize, TS)]
pub struct DatasetMapping {
    pub formatting: Formatting,
    pub columns: Columns,
    pub tags: Tags,
    pub keys: Vec<String>,
}

/// The mapping `spec` is read with (reads its first row only).
#[tauri::command]
pub async fn detect_dataset(state: State<'_, AppState>, mut spec: DatasetSpec) -> IpcResult<DatasetMapping> {
    if let (Some(repo), None) = (&spec.hub, &spec.path) {
        return Err(IpcError::new(
            "no_dataset",
            format!("the Hub dataset {repo} is not downloaded yet: press Download beside it first"),
        ));
    }
    for p in [&mut spec.path, &mut spec.dataset_info].into_iter().flatten() {
        *p = state.access.check(&p.to_string_lossy())?;
    }
    crate::blocking::run("detect", move || {
        let (mapping, keys) =
            freezetune_data::detect_spec(&spec).map_err(|e| IpcError::new("bad_dataset", e.to_string()))?;
        Ok(DatasetMapping {
            formatting: mapping.formatting,
            columns: mapping.columns,
            tags: mapping.tags,
            keys,
        })
    })
    .await
}

#[derive(Debug, Clone, Serialize, TS)]
pub struct TrainOutcomeView {
    pub run_dir: String,
    pub steps: u64,
    /// `None` when the run was stopped before its end (a checkpoint resumes it).
    pub final_dir: Option<String>,
    pub last_loss: Option<f64>,
}

/// Trains (or with `resume`, continues) the run; events stream on `on_event`. Resolves when the run ends or stops.
#[tauri::command]
pub async fn train_model(
    app: AppHandle,
    state: State<'_, AppState>,
    config: RunConfig,
    resume: bool,
    task_id: String,
    on_event: Channel<Vec<TrainEvent>>,
) -> IpcResult<TrainOutcomeView> {
    let config = check_paths(&state, config)?;
    super::runs::remember_run(&state.paths.data_dir, &state.paths.runs_dir, &config.output.dir)?;
    config.check().map_err(|reason| IpcError::new("bad_config", reason))?;
    let stop = Arc::new(StopSignal::default());
    let _guard = state.tasks.start(&task_id, CancelHandle::Worker(stop.clone()))?;
    let workers = state.workers.clone();
    let scratch = state.paths.data_dir.join("worker");
    let result = crate::blocking::run("train", move || {
        let sink = Batching::new(move |batch| {
            if let Err(e) = on_event.send(batch) {
                tracing::warn!("training events: the window is gone: {e}");
            }
        });
        let result = crate::worker::train::train(&workers, &config, resume, &scratch, &stop, &sink);
        sink.flush();
        Ok(result)
    })
    .await?;
    let body = match &result {
        Ok(o) if o.final_dir.is_some() => format!("Finished after {} steps", o.steps),
        Ok(o) => format!("Stopped at step {}; resume it from the run history", o.steps),
        Err(e) => format!("Failed: {}", e.message),
    };
    if let Err(e) = app
        .notification()
        .builder()
        .title("FreezeTune run ended")
        .body(body)
        .show()
    {
        tracing::warn!("no desktop notification: {e}");
    }
    let outcome = result?;
    Ok(TrainOutcomeView {
        run_dir: outcome.run_dir.to_string_lossy().into_owned(),
        steps: outcome.steps,
        final_dir: outcome.final_dir.map(|d| d.to_string_lossy().into_owned()),
        last_loss: outcome.last_loss,
    })
}

/// Measures the run's layers on its own data (Block Influence, angular distance, gradient norms) in a worker, with
/// its progress on `on_event`; `cancel_task(task_id)` stops it.
#[tauri::command]
pub async fn probe_layers(
    state: State<'_, AppState>,
    config: RunConfig,
    batches: usize,
    task_id: String,
    on_event: Channel<ProbeProgress>,
) -> IpcResult<ProbeReport> {
    let config = check_paths(&state, config)?;
    let stop = Arc::new(StopSignal::default());
    let _guard = state.tasks.start(&task_id, CancelHandle::Worker(stop.clone()))?;
    let workers = state.workers.clone();
    let scratch = state.paths.data_dir.join("worker");
    crate::blocking::run("probe", move || {
        let mut send = |p: ProbeProgress| {
            if let Err(e) = on_event.send(p) {
                tracing::warn!("probe progress: the window is gone: {e}");
            }
        };
        crate::worker::probe::probe(&workers, &config, &scratch, batches, false, &stop, &mut send)
    })
    .await
}

/// The probe's earlier result for the same model, data and settings, if it was measured before (the Layers screen
/// shows it as soon as it opens); an error when it was not.
#[tauri::command]
pub async fn cached_probe(state: State<'_, AppState>, config: RunConfig, batches: usize) -> IpcResult<ProbeReport> {
    let config = check_paths(&state, config)?;
    let workers = state.workers.clone();
    let scratch = state.paths.data_dir.join("worker");
    crate::blocking::run("cached probe", move || {
        let stop = StopSignal::default();
        crate::worker::probe::probe(&workers, &config, &scratch, batches, true, &stop, &mut |_| {})
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_run_dirs_skip_taken_numbers() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("demo-1")).unwrap();
        assert_eq!(fresh_run_dir(tmp.path(), "demo"), tmp.path().join("demo-2"));
    }
}
