//! The Hub before a download: search for models and datasets, a model's "trains here / fits" verdict from its
//! config.json and safetensors headers, a dataset repo's configs and splits; and dataset downloads into the shared
//! cache. The hub crate does the network work; the token stays in Rust as for model downloads.

use crate::batching::Batching;
use crate::error::{IpcError, IpcResult};
use crate::state::AppState;
use crate::tasks::CancelHandle;
use freezetune_core::events::DownloadEvent;
use freezetune_core::fit::DeviceMemory;
use freezetune_hub::token::{find_token, OsKeyring};
use freezetune_hub::{CancellationToken, DownloadRequest, Downloader, HubSettings, RepoKind};
use freezetune_train::remote::{check_remote_model, RemoteModelCheck};
use serde::{Deserialize, Serialize};
use std::future::Future;
use tauri::ipc::Channel;
use tauri::State;
use ts_rs::TS;

/// Rows a search shows.
const SEARCH_LIMIT: usize = 20;

/// A downloader for the app's Hub cache. The token goes only to the Hub the user configured outside the app
/// (HF_ENDPOINT, else huggingface.co); a mirror typed into the window gets none, so a page cannot send the token
/// to a host of its choosing.
pub fn downloader(state: &AppState, endpoint: Option<&str>) -> IpcResult<Downloader> {
    let mut settings = HubSettings::from_env().with_cache_dir(state.paths.hub_cache.clone());
    let mut token = find_token(&OsKeyring).map(|(token, _)| token);
    if let Some(endpoint) = endpoint.map(str::trim).filter(|e| !e.is_empty()) {
        if endpoint.trim_end_matches('/') != settings.endpoint.trim_end_matches('/') {
            token = None;
        }
        settings = settings.with_endpoint(endpoint);
    }
    Ok(Downloader::new(settings.with_token(token))?)
}

/// Runs a hub future to its end on a runtime of its own on a blocking thread: the hub crate's futures are not
/// `Send` in the form Tauri's command runtime needs (their closures borrow across awaits), as in the CLI.
pub async fn on_hub_runtime<T, F, Fut>(name: &'static str, work: F) -> IpcResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = IpcResult<T>>,
{
    crate::blocking::run(name, move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| IpcError::new("app", format!("cannot start the {name} runtime: {e}")))?;
        runtime.block_on(work())
    })
    .await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum HubKind {
    Model,
    Dataset,
}

/// One search row.
#[derive(Debug, Clone, Serialize, TS)]
pub struct HubHit {
    pub id: String,
    pub downloads: u64,
    pub likes: u64,
    /// Access must be requested on the Hub first (a token is then needed).
    pub gated: bool,
    pub last_modified: Option<String>,
    pub architecture: Option<String>,
    /// Parameters, as the Hub counts them (models with safetensors only).
    pub params: Option<u64>,
}

/// Repos whose name contains `query`, most downloaded first.
#[tauri::command]
pub async fn search_hub(
    state: State<'_, AppState>,
    kind: HubKind,
    query: String,
    endpoint: Option<String>,
) -> IpcResult<Vec<HubHit>> {
    let downloader = downloader(&state, endpoint.as_deref())?;
    let kind = match kind {
        HubKind::Model => RepoKind::Model,
        HubKind::Dataset => RepoKind::Dataset,
    };
    let hits = on_hub_runtime("search", move || async move {
        Ok(downloader.search(kind, query.trim(), SEARCH_LIMIT).await?)
    })
    .await?;
    Ok(hits
        .into_iter()
        .map(|h| HubHit {
            id: h.id,
            downloads: h.downloads,
            likes: h.likes,
            gated: h.gated,
            last_modified: h.last_modified,
            architecture: h.architecture,
            params: h.params,
        })
        .collect())
}

/// Whether `repo` trains here and whether the default plan (its last two layers) fits `device`, read from the
/// repo's config.json and safetensors headers without downloading its weights.
#[tauri::command]
pub async fn check_hub_model(
    state: State<'_, AppState>,
    repo: String,
    endpoint: Option<String>,
    device: DeviceMemory,
    cpu: bool,
) -> IpcResult<RemoteModelCheck> {
    let downloader = downloader(&state, endpoint.as_deref())?;
    let request = DownloadRequest::parse(repo.trim())?;
    let remote = on_hub_runtime("check", move || async move {
        Ok(downloader.remote_checkpoint(&request).await?)
    })
    .await?;
    Ok(check_remote_model(
        repo.trim(),
        remote.config,
        &remote.shards,
        &device,
        cpu,
    )?)
}

/// A dataset repo as the picker shows it before a download.
#[derive(Debug, Clone, Serialize, TS)]
pub struct HubDatasetView {
    pub repo: String,
    pub commit: String,
    /// The data files (JSON, JSONL, Parquet, CSV/TSV, Arrow) and their total size.
    pub data_files: usize,
    pub data_bytes: u64,
    pub configs: Vec<HubDatasetConfig>,
}

#[derive(Debug, Clone, Serialize, TS)]
pub struct HubDatasetConfig {
    pub name: String,
    /// The config a run reads when it names none.
    pub default: bool,
    pub splits: Vec<String>,
    /// The data files a download of this config fetches (every split of it), and their bytes as the Hub lists
    /// them; None when its files cannot be told from the listing (the download then says why).
    pub files: Option<usize>,
    pub bytes: Option<u64>,
}

/// A dataset repo's configs and splits, from its file listing and README, by the rules a run reads them with.
#[tauri::command]
pub async fn inspect_hub_dataset(
    state: State<'_, AppState>,
    repo: String,
    endpoint: Option<String>,
) -> IpcResult<HubDatasetView> {
    let downloader = downloader(&state, endpoint.as_deref())?;
    let mut request = DownloadRequest::parse(repo.trim())?;
    request.kind = RepoKind::Dataset;
    let (listing, readme) = on_hub_runtime("inspect", move || async move {
        Ok(downloader.dataset_card(&request).await?)
    })
    .await?;
    let names = listing.names();
    let configs = freezetune_data::list_configs(&names, readme.as_deref())
        .map_err(|e| IpcError::new("bad_dataset", format!("{}: {e}", repo.trim())))?;
    let data: Vec<_> = listing
        .files
        .iter()
        .filter(|f| freezetune_data::is_data_file(std::path::Path::new(&f.name)))
        .collect();
    let sizes: std::collections::HashMap<&str, Option<u64>> =
        listing.files.iter().map(|f| (f.name.as_str(), f.size())).collect();
    Ok(HubDatasetView {
        repo: repo.trim().to_string(),
        commit: listing.commit.clone(),
        data_files: data.len(),
        data_bytes: data.iter().filter_map(|f| f.size()).sum(),
        configs: configs
            .into_iter()
            .map(|c| {
                // A download asks for the default config as None, as the picker does.
                let config = (!c.default).then_some(c.name.as_str());
                let fetched =
                    freezetune_data::config_names(repo.trim(), &names, readme.as_deref(), (config, None), &[]).ok();
                let size = |f: &Vec<String>| f.iter().filter_map(|n| sizes.get(n.as_str()).copied().flatten()).sum();
                HubDatasetConfig {
                    files: fetched.as_ref().map(Vec::len),
                    bytes: fetched.as_ref().map(size),
                    name: c.name,
                    default: c.default,
                    splits: c.splits,
                }
            })
            .collect(),
    })
}

/// Downloads a dataset repo into the shared cache, streaming progress: the data files of `config` (the default
/// config when None; every split of it, `split` included), narrowed by `files` globs, and no other config's.
/// Answers its snapshot folder, which a run's dataset `path` then names. Cached files are not fetched again; a
/// partial download resumes.
#[tauri::command]
#[allow(clippy::too_many_arguments)]
pub async fn download_dataset(
    state: State<'_, AppState>,
    repo: String,
    config: Option<String>,
    split: Option<String>,
    files: Vec<String>,
    endpoint: Option<String>,
    task_id: String,
    on_event: Channel<Vec<DownloadEvent>>,
) -> IpcResult<String> {
    let downloader = downloader(&state, endpoint.as_deref())?;
    let mut request = DownloadRequest::parse(repo.trim())?;
    request.kind = RepoKind::Dataset;
    request.include = files.clone();
    if downloader.settings().offline {
        // Offline: the cached snapshot as it is (`download` asks nothing of the Hub then).
        let outcome = download(&state, downloader, request, &task_id, on_event).await?;
        return Ok(outcome.snapshot.to_string_lossy().into_owned());
    }
    let card = self::downloader(&state, endpoint.as_deref())?;
    let listed = request.clone();
    let card = on_hub_runtime("inspect", move || async move { Ok(card.dataset_card(&listed).await) }).await?;
    match card {
        Ok((listing, readme)) => {
            let names = listing.names();
            let wanted = freezetune_data::config_names(
                repo.trim(),
                &names,
                readme.as_deref(),
                (config.as_deref(), split.as_deref()),
                &files,
            )
            .map_err(|e| IpcError::new("bad_dataset", e.to_string()))?;
            request.only_files(&wanted, &listing.commit);
        }
        // Unreachable: the cached snapshot as it is, if any; never a download of every config's files.
        Err(e @ freezetune_hub::HubError::Network { .. }) => {
            let mut settings = downloader.settings().clone();
            settings.offline = true;
            let cached = Downloader::new(settings)?;
            return match download(&state, cached, request, &task_id, on_event).await {
                Ok(outcome) => Ok(outcome.snapshot.to_string_lossy().into_owned()),
                Err(_) => Err(e.into()),
            };
        }
        Err(e) => return Err(e.into()),
    }
    let outcome = download(&state, downloader, request, &task_id, on_event).await?;
    Ok(outcome.snapshot.to_string_lossy().into_owned())
}

/// Runs one download as task `task_id` (cancel with `cancel_task`), its events batched onto `on_event`.
pub async fn download(
    state: &AppState,
    downloader: Downloader,
    request: DownloadRequest,
    task_id: &str,
    on_event: Channel<Vec<DownloadEvent>>,
) -> IpcResult<freezetune_hub::DownloadOutcome> {
    let cancel = CancellationToken::new();
    let _guard = state.tasks.start(task_id, CancelHandle::Download(cancel.clone()))?;
    on_hub_runtime("download", move || async move {
        let sink = Batching::new(move |batch| {
            if let Err(e) = on_event.send(batch) {
                tracing::warn!("download events: the window is gone: {e}");
            }
        });
        let result = downloader.download(&request, &sink, &cancel).await;
        sink.flush();
        Ok(result?)
    })
    .await
}
