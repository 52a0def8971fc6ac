//! Models: the built-in demo, local folders, the Hub cache, downloads, and the Hub token (which stays in Rust: the
//! web view only learns whether one is set and where it comes from).

use crate::error::IpcResult;
use crate::state::AppState;
use freezetune_core::events::DownloadEvent;
use freezetune_core::ModelLayout;
use freezetune_hub::token::{find_token, store_token, OsKeyring, SecretStore, TokenSource};
use freezetune_hub::DownloadRequest;
use serde::Serialize;
use std::path::Path;
use tauri::ipc::Channel;
use tauri::State;
use ts_rs::TS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum ModelSource {
    Demo,
    Hub,
    Local,
}

/// What the Model screen shows about a checkpoint.
#[derive(Debug, Clone, Serialize, TS)]
pub struct ModelSummary {
    pub path: String,
    /// The repo id for Hub snapshots, else the folder name.
    pub name: String,
    pub source: ModelSource,
    pub architecture: String,
    pub model_type: Option<String>,
    pub num_layers: usize,
    pub total_params: u64,
    pub weight_bytes: u64,
    pub tie_word_embeddings: bool,
    pub multimodal: bool,
    /// Module names inside a layer (`self_attn`, `mlp`, ...) and outside (`embed_tokens`, `norm`, `lm_head`).
    pub layer_modules: Vec<String>,
    pub extra_modules: Vec<String>,
    /// Why this model cannot be trained here (it can still be inspected and planned), if so.
    pub training_unsupported: Option<String>,
    /// Each layer's attention as the decoder runs it ("sliding 512", "full", "full, no rope"); empty when the
    /// model cannot be trained.
    pub layer_kinds: Vec<String>,
    pub warnings: Vec<String>,
}

pub fn summarize(layout: &ModelLayout, source: ModelSource) -> ModelSummary {
    let dir = &layout.model_dir;
    let name = match source {
        ModelSource::Hub => repo_of_snapshot(dir),
        ModelSource::Demo => Some("FreezeTune demo (tiny llama)".to_string()),
        ModelSource::Local => None,
    }
    .unwrap_or_else(|| {
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let decoder = freezetune_train::DecoderConfig::read(dir);
    ModelSummary {
        path: dir.to_string_lossy().into_owned(),
        name,
        source,
        architecture: layout.architecture.clone(),
        model_type: layout.model_type.clone(),
        num_layers: layout.num_layers,
        total_params: layout.total_params,
        weight_bytes: layout.weight_bytes(),
        tie_word_embeddings: layout.tie_word_embeddings,
        multimodal: layout.multimodal,
        layer_modules: layout.layer_module_names(),
        extra_modules: layout.non_layer_modules.iter().map(|m| m.name.clone()).collect(),
        training_unsupported: decoder.as_ref().err().map(|e| e.to_string()),
        layer_kinds: decoder
            .map(|c| c.layers.iter().map(|l| l.kind()).collect())
            .unwrap_or_default(),
        warnings: layout.warnings.clone(),
    }
}

/// `.../models--owner--name/snapshots/<commit>` -> `owner/name`.
fn repo_of_snapshot(dir: &Path) -> Option<String> {
    let repo_dir = dir.parent()?.parent()?.file_name()?.to_str()?;
    Some(repo_dir.strip_prefix("models--")?.replacen("--", "/", 1))
}

/// Opens the built-in demo, writing it on first use.
#[tauri::command]
pub async fn open_demo_model(state: State<'_, AppState>) -> IpcResult<ModelSummary> {
    let dir = state.paths.demo_dir.clone();
    let model = dir.join("model");
    if !model.join("config.json").is_file() {
        crate::blocking::run("demo", move || Ok(freezetune_core::demo::write_demo(&dir, true)?)).await?;
    }
    let layout = state.layout(&model)?;
    Ok(summarize(&layout, ModelSource::Demo))
}

/// Opens a checkpoint folder (picked in a dialog, in the Hub cache, or the demo).
#[tauri::command]
pub async fn open_model(state: State<'_, AppState>, path: String) -> IpcResult<ModelSummary> {
    let layout = state.checked_layout(&path)?;
    let dir = &layout.model_dir;
    let source = if dir.starts_with(&state.paths.demo_dir) {
        ModelSource::Demo
    } else if dir.starts_with(&state.paths.hub_cache) {
        ModelSource::Hub
    } else {
        ModelSource::Local
    };
    Ok(summarize(&layout, source))
}

#[derive(Debug, Clone, Serialize, TS)]
pub struct CachedModelView {
    pub repo: String,
    pub snapshot: Option<String>,
    pub size_bytes: u64,
    pub architecture: Option<String>,
    pub num_layers: Option<usize>,
    /// Bytes of partial downloads that "Download" would resume.
    pub incomplete_bytes: u64,
}

#[tauri::command(async)]
pub fn list_cached_models(state: State<'_, AppState>) -> Vec<CachedModelView> {
    freezetune_hub::HubCache::new(state.paths.hub_cache.clone())
        .list()
        .into_iter()
        .map(|m| CachedModelView {
            repo: m.repo,
            snapshot: m.snapshot.map(|p| p.to_string_lossy().into_owned()),
            size_bytes: m.size_bytes,
            architecture: m.architecture,
            num_layers: m.num_layers,
            incomplete_bytes: m.incomplete_bytes,
        })
        .collect()
}

/// Downloads `repo` (`owner/name[@revision]`) into the Hub cache, streaming progress; cancel with `cancel_task`.
/// Partial files stay, so downloading again resumes.
#[tauri::command]
pub async fn download_model(
    state: State<'_, AppState>,
    repo: String,
    endpoint: Option<String>,
    task_id: String,
    on_event: Channel<Vec<DownloadEvent>>,
) -> IpcResult<ModelSummary> {
    let request = DownloadRequest::parse(repo.trim())?;
    let downloader = super::hub::downloader(&state, endpoint.as_deref())?;
    let outcome = super::hub::download(&state, downloader, request, &task_id, on_event).await?;
    let layout = state.layout(&outcome.snapshot)?;
    Ok(summarize(&layout, ModelSource::Hub))
}

#[tauri::command]
pub fn cancel_task(state: State<'_, AppState>, task_id: String) -> bool {
    state.tasks.cancel(&task_id)
}

#[derive(Debug, Clone, Serialize, TS)]
pub struct TokenStatus {
    pub present: bool,
    /// `HF_TOKEN`, the token file, or the OS keyring.
    pub source: Option<String>,
}

#[tauri::command(async)]
pub fn get_token_status() -> TokenStatus {
    let found = find_token(&OsKeyring);
    TokenStatus {
        present: found.is_some(),
        source: found.map(|(_, source)| match source {
            TokenSource::Env => "the HF_TOKEN environment variable".to_string(),
            TokenSource::File(path) => format!("the token file {}", path.display()),
            TokenSource::Keyring => "the OS keyring".to_string(),
        }),
    }
}

/// Stores a Hub token in the OS keyring (for gated models).
#[tauri::command(async)]
pub fn set_hub_token(token: String) -> IpcResult<TokenStatus> {
    store_token(&OsKeyring, token.trim())?;
    Ok(get_token_status())
}

#[tauri::command(async)]
pub fn clear_hub_token() -> IpcResult<TokenStatus> {
    OsKeyring.delete()?;
    Ok(get_token_status())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_snapshot_folders_are_named_by_repo() {
        let dir = Path::new("/c/hub/models--Qwen--Qwen2.5-0.5B/snapshots/abc123");
        assert_eq!(repo_of_snapshot(dir).as_deref(), Some("Qwen/Qwen2.5-0.5B"));
        assert_eq!(repo_of_snapshot(Path::new("/x/y")), None);
    }

    #[test]
    fn the_demo_summary_describes_the_demo_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let demo = freezetune_core::demo::write_demo(tmp.path(), false).unwrap();
        let layout = ModelLayout::inspect(&demo.model).unwrap();
        let s = summarize(&layout, ModelSource::Demo);
        assert_eq!(s.num_layers, 8);
        assert_eq!(s.architecture, "LlamaForCausalLM");
        assert!(
            s.layer_modules.contains(&"self_attn".to_string()),
            "{:?}",
            s.layer_modules
        );
        assert!(s.extra_modules.contains(&"norm".to_string()));
        assert_eq!(s.training_unsupported, None);
    }
}
