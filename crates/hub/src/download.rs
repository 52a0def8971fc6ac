//! A whole download: resolve `repo@revision` to a commit and its file list (through hf-hub's repo API), choose the
//! files, check disk space, fetch them concurrently (bounded), and point `refs/<revision>` at the commit.

use crate::cache::{HubCache, RepoKind};
use crate::error::{HubError, Result};
use crate::progress::ProgressTracker;
use crate::select::{select, select_dataset, RemoteFile};
use crate::settings::HubSettings;
use crate::transfer::{check_status, fatal_of, Failure, Transfer};
use freezetune_core::events::{DownloadEvent, EventSink, PlannedFile};
use futures_util::{StreamExt, TryStreamExt};
use hf_hub::api::tokio::ApiBuilder;
use hf_hub::{Repo, RepoType};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// What to download: `owner/name[@revision]` plus optional globs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadRequest {
    pub repo: String,
    pub revision: String,
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    /// A model repo (the default) or a dataset repo.
    #[serde(default)]
    pub kind: RepoKind,
    /// The commit to fetch `revision` at, when a listing has fixed it (`only_files`); `refs/<revision>` then
    /// points at it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<String>,
}

impl DownloadRequest {
    /// Parses `owner/name` or `owner/name@revision`.
    pub fn parse(input: &str) -> Result<DownloadRequest> {
        let (repo, revision) = input.split_once('@').unwrap_or((input, "main"));
        let ok_part = |p: &str| {
            !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && !p.starts_with('.')
        };
        let parts: Vec<&str> = repo.split('/').collect();
        let valid = matches!(parts.as_slice(), [name] | [_, name] if ok_part(name)) && parts.iter().all(|p| ok_part(p));
        if !valid || revision.is_empty() || revision.split('/').any(|s| s.is_empty() || s == "..") {
            return Err(HubError::BadRepoId {
                input: input.to_string(),
            });
        }
        Ok(DownloadRequest {
            repo: repo.into(),
            revision: revision.into(),
            include: Vec::new(),
            exclude: Vec::new(),
            kind: RepoKind::Model,
            pinned: None,
        })
    }
}

impl DownloadRequest {
    /// Fetches exactly `names` (as a listing gives them; glob characters in them are literal) at `commit`, the
    /// commit they were listed at, so a push in between cannot change what they are. The revision stays the
    /// branch or tag asked for, so the cache's `refs/` learn it for offline runs.
    pub fn only_files(&mut self, names: &[String], commit: &str) {
        self.include = names.iter().map(|n| globset::escape(n)).collect();
        self.pinned = Some(commit.to_string());
    }

    /// What the Hub is asked for: the pinned commit, else the revision.
    fn at(&self) -> &str {
        self.pinned.as_deref().unwrap_or(&self.revision)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DownloadOutcome {
    pub snapshot: PathBuf,
    pub commit: String,
    pub files: Vec<String>,
    pub downloaded_bytes: u64,
    pub resumed_bytes: u64,
    pub seconds: f64,
    /// True when the snapshot came from the cache without a request (offline).
    pub from_cache: bool,
}

#[derive(Deserialize)]
pub(crate) struct RepoInfo {
    pub sha: String,
    pub siblings: Vec<RemoteFile>,
}

pub struct Downloader {
    settings: HubSettings,
    client: reqwest::Client,
    cache: HubCache,
}

impl Downloader {
    pub fn new(settings: HubSettings) -> Result<Downloader> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(20))
            .read_timeout(settings.read_timeout)
            .user_agent(concat!("freezetune/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HubError::Protocol {
                url: settings.endpoint.clone(),
                reason: e.to_string(),
            })?;
        let cache = HubCache::new(settings.cache_dir.clone());
        Ok(Downloader {
            settings,
            client,
            cache,
        })
    }

    pub fn cache(&self) -> &HubCache {
        &self.cache
    }

    pub fn settings(&self) -> &HubSettings {
        &self.settings
    }

    fn cached_outcome(&self, req: &DownloadRequest) -> Option<DownloadOutcome> {
        let snapshot = self.cache.resolve(&req.repo, &req.revision)?;
        let commit = snapshot.file_name()?.to_string_lossy().into_owned();
        Some(DownloadOutcome {
            snapshot,
            commit,
            files: Vec::new(),
            downloaded_bytes: 0,
            resumed_bytes: 0,
            seconds: 0.0,
            from_cache: true,
        })
    }

    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub(crate) async fn repo_info(&self, req: &DownloadRequest) -> Result<RepoInfo> {
        let api = ApiBuilder::from_cache(hf_hub::Cache::new(self.settings.cache_dir.clone()))
            .with_endpoint(self.settings.endpoint.clone())
            .with_token(self.settings.token.as_ref().map(|t| t.expose().to_string()))
            .with_progress(false)
            .build()
            .map_err(|e| HubError::Protocol {
                url: self.settings.endpoint.clone(),
                reason: e.to_string(),
            })?;
        let repo_type = match req.kind {
            RepoKind::Model => RepoType::Model,
            RepoKind::Dataset => RepoType::Dataset,
        };
        let repo = api.repo(Repo::with_revision(req.repo.clone(), repo_type, req.at().to_string()));
        let url = format!(
            "{}/api/{}/{}/revision/{}",
            self.settings.endpoint,
            req.kind.api_segment(),
            req.repo,
            req.at()
        );
        let mut attempt = 0;
        loop {
            let resp = repo
                .info_request()
                .query(&[("blobs", "true")])
                .send()
                .await
                .map_err(|e| HubError::Network {
                    endpoint: self.settings.endpoint.clone(),
                    reason: e.to_string(),
                    cached: self.cache.cached_repo_ids(),
                })?;
            match check_status(
                resp.status(),
                resp.headers(),
                &req.repo,
                "",
                &url,
                &self.settings.endpoint,
            ) {
                Ok(()) => {
                    return resp.json::<RepoInfo>().await.map_err(|e| HubError::Protocol {
                        url,
                        reason: format!("bad repo info: {e}"),
                    })
                }
                Err(Failure::Transient(_)) if attempt < self.settings.max_retries => {
                    attempt += 1;
                    tokio::time::sleep(self.settings.retry_base * attempt).await;
                }
                Err(f) => {
                    return Err(match fatal_of(f, &url) {
                        HubError::RevisionNotFound { repo, .. } => HubError::RevisionNotFound {
                            repo,
                            revision: req.revision.clone(),
                        },
                        e => e,
                    })
                }
            }
        }
    }

    /// Downloads `req` into the cache and returns its snapshot folder. Offline (`HF_HUB_OFFLINE`, or the Hub
    /// unreachable) a cached snapshot is returned without a request.
    pub async fn download(
        &self,
        req: &DownloadRequest,
        sink: &dyn EventSink<DownloadEvent>,
        cancel: &CancellationToken,
    ) -> Result<DownloadOutcome> {
        if req.kind != self.cache.kind() {
            // The same downloader over the cache folders of the request's kind of repo.
            let for_kind = Downloader {
                settings: self.settings.clone(),
                client: self.client.clone(),
                cache: self.cache.with_kind(req.kind),
            };
            return Box::pin(for_kind.download(req, sink, cancel)).await;
        }
        if self.settings.offline {
            return self.cached_outcome(req).ok_or_else(|| HubError::Offline {
                repo: req.repo.clone(),
                revision: req.revision.clone(),
                cache: self.cache.root().to_path_buf(),
                cached: self.cache.cached_repo_ids(),
            });
        }
        let info = match self.repo_info(req).await {
            Err(HubError::Network { .. }) if self.cached_outcome(req).is_some() => {
                tracing::warn!(repo = %req.repo, "the Hub is unreachable; using the cached snapshot");
                return Ok(self.cached_outcome(req).expect("checked"));
            }
            other => other?,
        };
        crate::select::check_name(&info.sha).map_err(|_| HubError::Protocol {
            url: req.repo.clone(),
            reason: format!("bad commit {:?}", info.sha),
        })?;
        let chosen = match req.kind {
            RepoKind::Model => select(&req.repo, &info.siblings, &req.include, &req.exclude)?,
            RepoKind::Dataset => select_dataset(&info.siblings, &req.include, &req.exclude)?,
        };
        let mut files: Vec<RemoteFile> = chosen.into_iter().cloned().collect();
        if files.is_empty() {
            return Err(HubError::EntryNotFound {
                repo: req.repo.clone(),
                file: format!(
                    "any file matching --include {} (minus --exclude)",
                    req.include.join(" ")
                ),
            });
        }
        let commit = info.sha.clone();
        let tracker = ProgressTracker::new(sink, 0, 0);
        let transfer = Transfer {
            settings: &self.settings,
            client: &self.client,
            cache: &self.cache,
            progress: &tracker,
            cancel,
            repo: &req.repo,
            kind: req.kind,
            commit: &commit,
        };
        // The index decides which shards belong to the checkpoint; fetch it first.
        let mut pre = (0, 0);
        if let Some(index) = files.iter().find(|f| f.name == crate::INDEX_FILE).cloned() {
            let r = transfer.fetch(&index.name, index.size(), index.etag()).await?;
            pre = (r.fetched, r.resumed);
            let shards = read_index_shards(&self.cache.snapshot_dir(&req.repo, &commit).join(&index.name))?;
            for shard in &shards {
                if !info.siblings.iter().any(|f| &f.name == shard) {
                    return Err(HubError::Index {
                        file: index.name.clone(),
                        reason: format!("names shard {shard}, which the repo does not have"),
                    });
                }
            }
            files
                .retain(|f| !crate::select::is_weights(&f.name) || shards.contains(&f.name) || !req.include.is_empty());
        }
        let planned: Vec<PlannedFile> = files
            .iter()
            .map(|f| PlannedFile {
                name: f.name.clone(),
                size: f.size().unwrap_or(0),
                present: self.present_bytes(&req.repo, f),
            })
            .collect();
        let total: u64 = planned.iter().map(|p| p.size).sum();
        let present: u64 = planned.iter().map(|p| p.present).sum();
        check_disk_space(self.cache.root(), total - present.min(total))?;
        let tracker = ProgressTracker::new(sink, total, present);
        let transfer = Transfer {
            progress: &tracker,
            ..transfer
        };
        tracker.emit(DownloadEvent::Resolved {
            repo: req.repo.clone(),
            revision: req.revision.clone(),
            commit: commit.clone(),
            files: planned,
            total_bytes: total,
        });
        let child = cancel.child_token();
        let transfer = Transfer {
            cancel: &child,
            ..transfer
        };
        // Files with the same bytes share one blob (a dataset often holds the same shard twice): each blob is
        // fetched once, and its other names are linked to it afterwards. Fetching it twice at once would race
        // on its one partial file.
        let mut blobs = std::collections::HashSet::new();
        let (unique, same_blob): (Vec<&RemoteFile>, Vec<&RemoteFile>) = files
            .iter()
            .partition(|f| f.etag().is_none_or(|e| blobs.insert(e.to_string())));
        let results: Vec<_> = futures_util::stream::iter(unique)
            .map(|f| {
                let t = &transfer;
                async move { t.fetch(&f.name, f.size(), f.etag()).await }
            })
            .buffer_unordered(self.settings.concurrency.max(1))
            .inspect_err(|_| child.cancel())
            .collect()
            .await;
        let mut resumed = pre.1;
        let mut first_error = None;
        for r in results {
            match r {
                Ok(r) => resumed += r.resumed,
                Err(e) => {
                    if first_error.is_none() || matches!(first_error, Some(HubError::Cancelled)) {
                        first_error = Some(e);
                    }
                }
            }
        }
        if let Some(e) = first_error {
            if matches!(e, HubError::Cancelled) {
                tracker.emit(DownloadEvent::Cancelled {
                    partial_bytes: self.partial_bytes(&req.repo),
                });
            }
            return Err(e);
        }
        for f in same_blob {
            let etag = f.etag().expect("partitioned on etags");
            self.cache.link(&req.repo, &commit, &f.name, etag)?;
        }
        self.cache.write_ref(&req.repo, &req.revision, &commit)?;
        let snapshot = self.cache.snapshot_dir(&req.repo, &commit);
        let downloaded = tracker.transferred() + pre.0;
        let seconds = tracker.elapsed().as_secs_f64();
        tracker.emit(DownloadEvent::Finished {
            snapshot: snapshot.clone(),
            downloaded_bytes: downloaded,
            resumed_bytes: resumed,
            seconds,
        });
        Ok(DownloadOutcome {
            snapshot,
            commit,
            files: files.iter().map(|f| f.name.clone()).collect(),
            downloaded_bytes: downloaded,
            resumed_bytes: resumed,
            seconds,
            from_cache: false,
        })
    }

    fn present_bytes(&self, repo: &str, f: &RemoteFile) -> u64 {
        let Some(etag) = f.etag() else { return 0 };
        let blob = self
            .cache
            .blob_path(repo, etag)
            .metadata()
            .map(|m| m.len())
            .unwrap_or(0);
        if blob > 0 {
            return blob;
        }
        self.cache
            .incomplete_path(repo, etag)
            .metadata()
            .map(|m| m.len())
            .unwrap_or(0)
    }

    fn partial_bytes(&self, repo: &str) -> u64 {
        let Ok(entries) = std::fs::read_dir(self.cache.repo_dir(repo).join("blobs")) else {
            return 0;
        };
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".incomplete"))
            .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
            .sum()
    }
}

fn read_index_shards(path: &std::path::Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| HubError::io(path, e))?;
    let file = crate::INDEX_FILE.to_string();
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| HubError::Index {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    let map = v["weight_map"].as_object().ok_or_else(|| HubError::Index {
        file: file.clone(),
        reason: "no weight_map".into(),
    })?;
    let mut shards: Vec<String> = map.values().filter_map(|s| s.as_str().map(str::to_string)).collect();
    shards.sort();
    shards.dedup();
    for s in &shards {
        crate::select::check_name(s)?;
    }
    Ok(shards)
}

/// Compares the bytes still needed with the free space of the cache's file system (its nearest existing folder).
fn check_disk_space(dir: &std::path::Path, needed: u64) -> Result<()> {
    let mut probe = dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            return Ok(());
        }
    }
    let available = fs4::available_space(&probe).map_err(|e| HubError::io(&probe, e))?;
    if needed > available {
        return Err(HubError::DiskSpace {
            dir: dir.to_path_buf(),
            needed,
            available,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_enough_disk_space_is_an_error_up_front() {
        let dir = tempfile::tempdir().unwrap();
        check_disk_space(&dir.path().join("not/yet/created"), 1 << 20).unwrap();
        let e = check_disk_space(dir.path(), u64::MAX / 2).unwrap_err();
        assert_eq!(e.kind(), "disk_space");
        assert!(
            e.to_string().contains("more bytes") && e.to_string().contains("free"),
            "{e}"
        );
    }

    #[test]
    fn repo_ids() {
        let r = DownloadRequest::parse("Qwen/Qwen2.5-0.5B@refs/pr/1").unwrap();
        assert_eq!(
            (r.repo.as_str(), r.revision.as_str()),
            ("Qwen/Qwen2.5-0.5B", "refs/pr/1")
        );
        assert_eq!(DownloadRequest::parse("gpt2").unwrap().revision, "main");
        for bad in ["", "a/b/c", "../x", "a/..", "a b/c", "a/b@", "a/b@x/../y", "/a"] {
            assert_eq!(
                DownloadRequest::parse(bad).unwrap_err().kind(),
                "bad_repo_id",
                "{bad:?}"
            );
        }
    }
}
