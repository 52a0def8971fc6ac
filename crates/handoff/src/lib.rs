//! `freezetune-handoff`: a FreezeTune run as a folder the engines built for many GPUs train as it is, for
//! LLaMA-Factory (`llamafactory.rs`) or Axolotl (`axolotl.rs`). For LLaMA-Factory: `train.yaml` with every setting of the run that has an equivalent (the freeze selection as
//! core's export computes and checks it), the training rows exactly as FreezeTune would train on them (mapped,
//! limited and mixed) converted to LLaMA-Factory's alpaca / sharegpt files with their `dataset_info.json`, a
//! DeepSpeed or FSDP config when asked for, `launch.sh`, and a README naming every setting that could not be
//! carried over. The chat template is left to LLaMA-Factory to parse from the model's own tokenizer, which renders
//! the same examples as FreezeTune (crates/train/tests/llamafactory_renderings.rs). For Axolotl: `config.yml` with
//! the plan's exact `unfrozen_parameters` patterns (or its LISA keys), the same rows as OpenAI-style conversations
//! rendered with the model's own chat template (`chat_template: tokenizer_default`), the DeepSpeed config or FSDP2
//! keys, `launch.sh` and the README.
//!
//! Depends on core (the run config, the plan, the freeze export) and data (the rows).

mod axolotl;
mod data;
mod hf;
mod launch;
mod llamafactory;
mod readme;
mod yaml;

use freezetune_core::layout::ModelLayout;
use freezetune_core::run_config::RunConfig;
use std::path::{Path, PathBuf};

/// The engine a bundle is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// LLaMA-Factory 0.9.5 (`llamafactory-cli train`).
    Llamafactory,
    /// Axolotl 0.19 (`axolotl train`).
    Axolotl,
}

impl Engine {
    /// The engine's name as users know it.
    pub fn title(self) -> &'static str {
        match self {
            Engine::Llamafactory => "LLaMA-Factory",
            Engine::Axolotl => "Axolotl",
        }
    }
}

/// How the bundle is launched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distributed {
    /// Data parallel only (one process per GPU through torchrun when there are several).
    None,
    /// DeepSpeed ZeRO stage 2 (optimizer states and gradients sharded).
    Zero2,
    /// DeepSpeed ZeRO stage 3 (parameters sharded too).
    Zero3,
    /// PyTorch FSDP through accelerate.
    Fsdp,
}

#[derive(Debug, Clone)]
pub struct BundleOptions {
    /// GPUs per node the launch uses.
    pub gpus: usize,
    pub distributed: Distributed,
}

/// What was written, and what the user must know.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    /// Files, relative to `dir`.
    pub files: Vec<String>,
    /// Settings of the run with no equivalent in the engine: listed in the README, never dropped silently.
    pub unmapped: Vec<String>,
    /// Settings carried over with a difference worth knowing.
    pub notes: Vec<String>,
    /// Training rows written (after limits and mixing).
    pub train_rows: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error(transparent)]
    Plan(#[from] freezetune_core::Error),
    #[error(transparent)]
    Data(#[from] freezetune_data::DataError),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Refused(String),
}

pub type Result<T> = std::result::Result<T, HandoffError>;

pub(crate) fn io(path: &Path, source: std::io::Error) -> HandoffError {
    HandoffError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the `engine` bundle of `config` (its model's `layout`) into `out`, a folder that must not exist:
/// everything is written into a temporary folder beside it and renamed into place at the end, so a failure
/// leaves nothing half-written and nothing of the user's is replaced.
pub fn write_bundle(
    engine: Engine,
    config: &RunConfig,
    layout: &ModelLayout,
    out: &Path,
    options: &BundleOptions,
) -> Result<Bundle> {
    if options.gpus == 0 {
        return Err(HandoffError::Refused("--gpus must be at least 1".into()));
    }
    freezetune_core::fp8::refuse_handoff(layout, engine.title()).map_err(HandoffError::Refused)?;
    if out.exists() {
        return Err(HandoffError::Refused(format!(
            "{} already exists; choose a new folder for the bundle (nothing is replaced)",
            out.display()
        )));
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle".into());
    let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| io(&staging, e))?;
    }
    std::fs::create_dir_all(&staging).map_err(|e| io(&staging, e))?;
    let result = match engine {
        Engine::Llamafactory => llamafactory::write(config, layout, &staging, options),
        Engine::Axolotl => axolotl::write(config, layout, &staging, options),
    };
    match result {
        Ok(mut bundle) => {
            std::fs::rename(&staging, out).map_err(|e| io(out, e))?;
            bundle.dir = out.to_path_buf();
            Ok(bundle)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

/// Writes `text` to `dir/name`, recording it.
pub(crate) fn put(dir: &Path, files: &mut Vec<String>, name: &str, text: &str) -> Result<()> {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    }
    std::fs::write(&path, text).map_err(|e| io(&path, e))?;
    files.push(name.to_string());
    Ok(())
}
