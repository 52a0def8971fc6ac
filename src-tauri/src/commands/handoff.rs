//! "Export for a cluster": the run being edited (Train screen) or a past run (Runs screen) as a folder
//! LLaMA-Factory or Axolotl trains as it is (the handoff crate). Bundles go into fresh folders the app names — the data
//! folder's `exports/` for a run not started yet, the run's own `exports/` for a past one — so nothing is replaced.

use crate::error::{IpcError, IpcResult};
use crate::state::AppState;
use freezetune_core::run_config::RunConfig;
use freezetune_handoff::{BundleOptions, Distributed, Engine};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tauri::State;
use ts_rs::TS;

/// The engine the bundle is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum BundleEngine {
    Llamafactory,
    Axolotl,
}

impl BundleEngine {
    fn engine(self) -> Engine {
        match self {
            BundleEngine::Llamafactory => Engine::Llamafactory,
            BundleEngine::Axolotl => Engine::Axolotl,
        }
    }

    /// The folder-name stem of its bundles.
    fn stem(self) -> &'static str {
        match self {
            BundleEngine::Llamafactory => "llamafactory",
            BundleEngine::Axolotl => "axolotl",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum Sharding {
    None,
    Zero2,
    Zero3,
    Fsdp,
}

/// What the bundle holds, for the window to show.
#[derive(Debug, Clone, Serialize, TS)]
pub struct RunBundleView {
    pub dir: String,
    pub files: Vec<String>,
    pub train_rows: usize,
    /// Settings with no equivalent in the engine (also in the bundle's README).
    pub unmapped: Vec<String>,
    pub notes: Vec<String>,
}

/// Bundles the run config the Train screen is editing, into `<data folder>/exports/<model>-<engine>-N`.
#[tauri::command]
pub async fn export_run(
    state: State<'_, AppState>,
    config: RunConfig,
    engine: BundleEngine,
    gpus: usize,
    sharding: Sharding,
) -> IpcResult<RunBundleView> {
    let config = super::train::check_paths(&state, config)?;
    let stem = config
        .model
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    let dest = fresh(
        &state.paths.data_dir.join("exports"),
        &format!("{stem}-{}", engine.stem()),
    );
    bundle(&state, config, engine, dest, gpus, sharding).await
}

/// Bundles a past run (its `run.toml`), into `<run>/exports/<engine>-N`.
#[tauri::command]
pub async fn export_run_dir(
    state: State<'_, AppState>,
    run_dir: String,
    engine: BundleEngine,
    gpus: usize,
    sharding: Sharding,
) -> IpcResult<RunBundleView> {
    let run = state.access.check(&run_dir)?;
    let config = RunConfig::read(&run.join("run.toml"))?;
    let config = super::train::check_paths(&state, config)?;
    let dest = fresh(&run.join("exports"), engine.stem());
    bundle(&state, config, engine, dest, gpus, sharding).await
}

async fn bundle(
    state: &AppState,
    config: RunConfig,
    engine: BundleEngine,
    dest: PathBuf,
    gpus: usize,
    sharding: Sharding,
) -> IpcResult<RunBundleView> {
    let layout = state.layout(&config.model.path)?;
    let options = BundleOptions {
        gpus,
        distributed: match sharding {
            Sharding::None => Distributed::None,
            Sharding::Zero2 => Distributed::Zero2,
            Sharding::Zero3 => Distributed::Zero3,
            Sharding::Fsdp => Distributed::Fsdp,
        },
    };
    let b = crate::blocking::run("export-run", move || {
        freezetune_handoff::write_bundle(engine.engine(), &config, &layout, &dest, &options)
            .map_err(|e| IpcError::new("export_run", e.to_string()))
    })
    .await?;
    Ok(RunBundleView {
        dir: b.dir.to_string_lossy().into_owned(),
        files: b.files,
        train_rows: b.train_rows,
        unmapped: b.unmapped,
        notes: b.notes,
    })
}

/// `dir/stem-N` for the first N not taken.
fn fresh(dir: &Path, stem: &str) -> PathBuf {
    (1..)
        .map(|n| dir.join(format!("{stem}-{n}")))
        .find(|d| !d.exists())
        .expect("some number is free")
}
