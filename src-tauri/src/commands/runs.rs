//! Run history (the run folders under the app's runs folder), their metrics for the loss curve, opening a folder in
//! the file manager, and the "try it" box that generates from a model.

use crate::error::{io_error, IpcError, IpcResult};
use crate::state::AppState;
use freezetune_core::events::TrainEvent;
use freezetune_core::run_config::RunConfig;
use freezetune_core::schedule::Timeline;
use serde::Serialize;
use std::path::Path;
use tauri::State;
use ts_rs::TS;

#[derive(Debug, Clone, Serialize, TS)]
pub struct RunSummary {
    pub name: String,
    pub dir: String,
    /// The run's settings (`run.toml`), or why they could not be read.
    pub config: Option<RunConfig>,
    pub config_error: Option<String>,
    pub steps_done: u64,
    pub last_loss: Option<f64>,
    pub last_eval_loss: Option<f64>,
    pub final_dir: Option<String>,
    /// Stopped before its end with a checkpoint to continue from.
    pub resumable: bool,
    /// The step of that checkpoint: a resume redoes the steps logged after it.
    pub checkpoint_step: Option<u64>,
    /// Seconds since the epoch of the last write to `metrics.jsonl`, for sorting.
    pub modified: u64,
    /// The run's layer schedule (`schedule.json`), when it has one.
    pub schedule: Option<Timeline>,
    /// Seconds of training so far (across resumes), from the last step.
    pub elapsed_s: Option<f64>,
    /// Learned tokens per second over the whole run.
    pub tokens_per_second: Option<f64>,
    pub best_eval_loss: Option<f64>,
    /// The layers the run trains, for the comparison's layer strip (`freeze_plan.json`).
    pub layers: Option<RunLayers>,
}

/// Which layers of how many a run trains (a layer with any trainable tensor; with a schedule, every layer of its
/// selection).
#[derive(Debug, Clone, Serialize, TS)]
pub struct RunLayers {
    pub total: usize,
    pub trained: Vec<usize>,
    /// Trained layers where only some of their tensors train.
    pub partial: Vec<usize>,
}

/// Every run folder, newest first. The model and data of each run were checked when it started (only the backend
/// writes `run.toml`), so they are allowed again: resume and try-it work after a restart.
#[tauri::command(async)]
pub fn list_runs(state: State<'_, AppState>) -> IpcResult<Vec<RunSummary>> {
    let runs = list_runs_in(&state.paths.runs_dir, &external_runs(&state.paths.data_dir))?;
    for run in &runs {
        state.access.allow(Path::new(&run.dir));
    }
    for config in runs.iter().filter_map(|r| r.config.as_ref()) {
        state.access.allow(&config.model.path);
        state.access.allow(&config.data.train);
        for d in &config.data.datasets {
            for p in [&d.path, &d.dataset_info].into_iter().flatten() {
                state.access.allow(p);
            }
        }
        if let Some(eval) = &config.data.eval {
            state.access.allow(eval);
        }
    }
    Ok(runs)
}

/// The runs in the folders of `runs` and in the `external` run folders, newest first.
pub fn list_runs_in(runs: &Path, external: &[std::path::PathBuf]) -> IpcResult<Vec<RunSummary>> {
    let mut dirs = match std::fs::read_dir(runs) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.path()).map_err(|e| io_error(runs, e)))
            .collect::<IpcResult<Vec<_>>>()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io_error(runs, e)),
    };
    dirs.extend(external.iter().filter(|d| !d.starts_with(runs)).cloned());
    let mut out = Vec::new();
    for dir in dirs {
        if dir.join("run.toml").is_file() {
            out.push(summarize_run(&dir)?);
        }
    }
    out.sort_by(|a, b| b.modified.cmp(&a.modified).then(a.name.cmp(&b.name)));
    Ok(out)
}

const EXTERNAL_RUNS: &str = "external-runs.txt";

/// Run folders outside the runs folder (picked with Browse), one per line, so the history still lists them.
fn external_runs(data_dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_to_string(data_dir.join(EXTERNAL_RUNS))
        .map(|text| text.lines().filter(|l| !l.trim().is_empty()).map(Into::into).collect())
        .unwrap_or_default()
}

/// Records `dir` for the history when it is outside `runs_dir`.
pub fn remember_run(data_dir: &Path, runs_dir: &Path, dir: &Path) -> IpcResult<()> {
    if dir.starts_with(runs_dir) {
        return Ok(());
    }
    let mut known = external_runs(data_dir);
    if known.iter().any(|d| d == dir) {
        return Ok(());
    }
    known.push(dir.to_path_buf());
    let text: String = known.iter().map(|d| format!("{}\n", d.display())).collect();
    freezetune_core::fsutil::write_atomic(
        &data_dir.join(EXTERNAL_RUNS),
        text.as_bytes(),
        freezetune_core::fsutil::Overwrite::Allow,
    )?;
    Ok(())
}

fn summarize_run(dir: &Path) -> IpcResult<RunSummary> {
    let (config, config_error) = match RunConfig::read(&dir.join("run.toml")) {
        Ok(c) => (Some(c), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let metrics = read_metrics(dir)?;
    let last_step = metrics.iter().rev().find_map(|e| match e {
        TrainEvent::Step { step, loss, .. } => Some((*step, *loss)),
        _ => None,
    });
    let last_eval_loss = metrics.iter().rev().find_map(|e| match e {
        TrainEvent::Eval { eval_loss, .. } => Some(*eval_loss),
        _ => None,
    });
    let best_eval_loss = metrics
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Eval { eval_loss, .. } if eval_loss.is_finite() => Some(*eval_loss),
            _ => None,
        })
        .min_by(f64::total_cmp);
    let last_speed = metrics.iter().rev().find_map(|e| match e {
        TrainEvent::Step {
            elapsed_s,
            tokens_per_second,
            ..
        } => Some((*elapsed_s, *tokens_per_second)),
        _ => None,
    });
    let final_dir = dir.join("final");
    let finished = final_dir.join("config.json").is_file();
    let checkpoint = freezetune_train::checkpoint::latest(dir).filter(|_| !finished);
    let modified = std::fs::metadata(dir.join("metrics.jsonl"))
        .or_else(|_| std::fs::metadata(dir.join("run.toml")))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    Ok(RunSummary {
        name: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        dir: dir.to_string_lossy().into_owned(),
        config,
        config_error,
        steps_done: last_step.map_or(0, |(s, _)| s),
        last_loss: last_step.map(|(_, l)| l),
        last_eval_loss,
        final_dir: finished.then(|| final_dir.to_string_lossy().into_owned()),
        resumable: !finished && checkpoint.is_some(),
        checkpoint_step: checkpoint
            .and_then(|c| freezetune_train::checkpoint::read_progress(&c).ok())
            .map(|p| p.step),
        modified,
        schedule: read_schedule(dir),
        elapsed_s: last_speed.map(|(e, _)| e),
        tokens_per_second: last_speed.map(|(_, t)| t),
        best_eval_loss,
        layers: read_layers(dir),
    })
}

/// The trained layers of a run's `freeze_plan.json`; a file that cannot be read is left out (logged).
fn read_layers(dir: &Path) -> Option<RunLayers> {
    use freezetune_core::plan::{FreezePlan, TrainState};
    let path = dir.join("freeze_plan.json");
    let text = std::fs::read_to_string(&path).ok()?;
    let plan: FreezePlan = serde_json::from_str(&text)
        .map_err(|e| tracing::warn!(path = %path.display(), error = %e, "unreadable freeze_plan.json"))
        .ok()?;
    let with =
        |state: TrainState| -> Vec<usize> { plan.layers.iter().filter(|l| l.state == state).map(|l| l.id).collect() };
    let mut trained = with(TrainState::Trainable);
    let partial = with(TrainState::Partial);
    trained.extend(&partial);
    trained.sort_unstable();
    Some(RunLayers {
        total: plan.layers.len(),
        trained,
        partial,
    })
}

/// A run's `schedule.json`; a file that cannot be read is left out (logged), the run itself still lists.
fn read_schedule(dir: &Path) -> Option<Timeline> {
    let path = dir.join("schedule.json");
    let text = std::fs::read_to_string(&path).ok()?;
    serde_json::from_str(&text)
        .map_err(|e| tracing::warn!(path = %path.display(), error = %e, "unreadable schedule.json"))
        .ok()
}

/// The `Step` and `Eval` lines of a run's `metrics.jsonl`. A line cut short by a crash is skipped (it is the last
/// line, written without its newline); any other bad line is an error naming it.
pub fn read_metrics(dir: &Path) -> IpcResult<Vec<TrainEvent>> {
    let path = dir.join("metrics.jsonl");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(&path, e)),
    };
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut events = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_metric(line) {
            Ok(event) => events.push(event),
            Err(_) if i + 1 == lines.len() && !complete => {}
            Err(e) => {
                return Err(IpcError::new(
                    "bad_metrics",
                    format!("{}:{}: {e}", path.display(), i + 1),
                ))
            }
        }
    }
    Ok(events)
}

/// One line of `metrics.jsonl`: a `Step`, `Eval` or `Phase` event without its `event` tag (the trainer writes bare
/// records; an eval line is the one with `eval_loss`, a layer schedule's phase the one with `phase`).
fn parse_metric(line: &str) -> serde_json::Result<TrainEvent> {
    let mut value: serde_json::Value = serde_json::from_str(line)?;
    if let Some(obj) = value.as_object_mut() {
        if !obj.contains_key("event") {
            let tag = if obj.contains_key("eval_loss") {
                "eval"
            } else if obj.contains_key("phase") {
                "phase"
            } else {
                "step"
            };
            obj.insert("event".into(), tag.into());
        }
    }
    serde_json::from_value(value)
}

#[tauri::command(async)]
pub fn read_run_metrics(state: State<'_, AppState>, run_dir: String) -> IpcResult<Vec<TrainEvent>> {
    read_metrics(&state.access.check(&run_dir)?)
}

/// Shows a folder in the OS file manager.
#[tauri::command]
pub fn open_folder(state: State<'_, AppState>, path: String) -> IpcResult<()> {
    let dir = state.access.check(&path)?;
    if !dir.is_dir() {
        return Err(IpcError::new("not_found", format!("{} is not a folder", dir.display())));
    }
    let opener = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
    std::process::Command::new(opener).arg(&dir).spawn().map_err(|e| {
        IpcError::new(
            "no_file_manager",
            format!("could not run {opener} {}: {e}", dir.display()),
        )
    })?;
    Ok(())
}

/// Generates a reply from the model in `model_path` (greedy, with its chat template).
#[tauri::command]
pub async fn generate_text(
    state: State<'_, AppState>,
    model_path: String,
    prompt: String,
    max_new_tokens: usize,
) -> IpcResult<String> {
    let dir = state.access.check(&model_path)?;
    let workers = state.workers.clone();
    let max_new_tokens = max_new_tokens.clamp(1, 512);
    crate::blocking::run("generate", move || {
        crate::worker::generate::generate(&workers, &dir, &prompt, max_new_tokens)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_skip_a_torn_last_line_and_name_a_bad_one() {
        let tmp = tempfile::tempdir().unwrap();
        let step = r#"{"step":1,"epoch":0.1,"loss":2.5,"lr":0.01,"grad_norm":1.0,"tokens":10,"tokens_per_second":100.0,"elapsed_s":0.1}"#;
        std::fs::write(tmp.path().join("metrics.jsonl"), format!("{step}\n{{\"event\":\"st")).unwrap();
        assert_eq!(read_metrics(tmp.path()).unwrap().len(), 1);
        std::fs::write(tmp.path().join("metrics.jsonl"), format!("garbage\n{step}\n")).unwrap();
        let err = read_metrics(tmp.path()).unwrap_err();
        assert!(err.message.contains("metrics.jsonl:1"), "{}", err.message);
    }

    #[test]
    fn runs_outside_the_runs_folder_are_remembered_once() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, runs) = (tmp.path().join("data"), tmp.path().join("data/runs"));
        remember_run(&data, &runs, &runs.join("inside")).unwrap();
        assert!(external_runs(&data).is_empty());
        let outside = tmp.path().join("elsewhere/run-1");
        remember_run(&data, &runs, &outside).unwrap();
        remember_run(&data, &runs, &outside).unwrap();
        assert_eq!(external_runs(&data), vec![outside]);
    }

    #[test]
    fn no_runs_folder_is_an_empty_history() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(list_runs_in(&tmp.path().join("runs"), &[]).unwrap().is_empty());
    }
}

#[cfg(test)]
mod history_tests {
    use super::*;
    use freezetune_core::events::NullSink;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn a_trained_run_is_listed_with_its_settings_and_metrics() {
        let tmp = tempfile::tempdir().unwrap();
        let demo = freezetune_core::demo::write_demo(&tmp.path().join("demo"), false).unwrap();
        let mut config = RunConfig::read(&demo.run_config).unwrap();
        config.training.max_steps = 2;
        config.training.eval_steps = 1;
        config.output.dir = tmp.path().join("runs/demo-1");
        freezetune_train::train(&config, false, &NullSink, &AtomicBool::new(false)).unwrap();
        let runs = list_runs_in(&tmp.path().join("runs"), &[]).unwrap();
        assert_eq!(runs.len(), 1, "{runs:?}");
        let run = &runs[0];
        assert_eq!(run.name, "demo-1");
        assert_eq!(run.steps_done, 2);
        assert!(run.config.is_some(), "{:?}", run.config_error);
        assert!(run.final_dir.is_some());
        assert!(!run.resumable);
        assert!(run.last_eval_loss.is_some());
        // What the comparison table shows: the best eval of the two, the time and speed of the last step, and the
        // layers the demo's run trains (4-7 of 8).
        let evals: Vec<f64> = read_metrics(Path::new(&run.dir))
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                TrainEvent::Eval { eval_loss, .. } => Some(*eval_loss),
                _ => None,
            })
            .collect();
        assert_eq!(evals.len(), 2);
        assert_eq!(run.best_eval_loss, Some(evals[0].min(evals[1])));
        assert!(run.elapsed_s.unwrap() > 0.0 && run.tokens_per_second.unwrap() > 0.0);
        let layers = run.layers.as_ref().expect("the layers of freeze_plan.json");
        assert_eq!((layers.total, layers.trained.clone()), (8, vec![4, 5, 6, 7]));
        assert!(layers.partial.is_empty());
    }
}
