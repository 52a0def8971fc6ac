//! The standard Hugging Face cache layout (`<cache>/models--owner--name/{blobs,snapshots/<commit>,refs/<rev>}`,
//! `datasets--owner--name/...` for dataset repos), shared with Python's `huggingface_hub`: a blob is stored once
//! under its etag and linked from each snapshot.

use crate::error::{HubError, Result};
use freezetune_core::fsutil::{write_atomic, Overwrite};
use hf_hub::{Cache, Repo, RepoType};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct HubCache {
    root: PathBuf,
    kind: RepoKind,
}

/// What a repo holds: a model (the default) or a dataset. Each has its own cache folders and Hub paths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RepoKind {
    #[default]
    Model,
    Dataset,
}

impl RepoKind {
    fn repo_type(self) -> RepoType {
        match self {
            RepoKind::Model => RepoType::Model,
            RepoKind::Dataset => RepoType::Dataset,
        }
    }

    /// The Hub's path segment: `models` / `datasets` in API paths.
    pub fn api_segment(self) -> &'static str {
        match self {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        }
    }

    /// What file URLs put before the repo id: nothing for models, `datasets/` for datasets.
    pub fn url_prefix(self) -> &'static str {
        match self {
            RepoKind::Model => "",
            RepoKind::Dataset => "datasets/",
        }
    }
}

/// A model in the cache, for `freezetune models` and the app's model list.
#[derive(Debug, Clone, Serialize)]
pub struct CachedModel {
    pub repo: String,
    /// `(ref name, commit)` pairs from `refs/`.
    pub refs: Vec<(String, String)>,
    /// The snapshot folder of the newest ref (or of the only snapshot).
    pub snapshot: Option<PathBuf>,
    /// Bytes of all blobs (shared by every snapshot).
    pub size_bytes: u64,
    pub architecture: Option<String>,
    pub num_layers: Option<usize>,
    /// Partial downloads waiting to be resumed.
    pub incomplete_bytes: u64,
}

fn is_commit(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

impl HubCache {
    /// The cache of model repos under `root`.
    pub fn new(root: impl Into<PathBuf>) -> HubCache {
        HubCache {
            root: root.into(),
            kind: RepoKind::Model,
        }
    }

    /// The same cache, for repos of `kind`.
    pub fn with_kind(&self, kind: RepoKind) -> HubCache {
        HubCache {
            root: self.root.clone(),
            kind,
        }
    }

    pub fn kind(&self) -> RepoKind {
        self.kind
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn hf(&self, repo: &str, revision: &str) -> Repo {
        Repo::with_revision(repo.to_string(), self.kind.repo_type(), revision.to_string())
    }

    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.root.join(self.hf(repo, "main").folder_name())
    }

    pub fn blob_path(&self, repo: &str, etag: &str) -> PathBuf {
        self.repo_dir(repo).join("blobs").join(etag)
    }

    pub fn incomplete_path(&self, repo: &str, etag: &str) -> PathBuf {
        self.repo_dir(repo).join("blobs").join(format!("{etag}.incomplete"))
    }

    pub fn snapshot_dir(&self, repo: &str, commit: &str) -> PathBuf {
        self.repo_dir(repo).join("snapshots").join(commit)
    }

    /// Points `refs/<revision>` at `commit` (not needed when the revision is the commit itself).
    pub fn write_ref(&self, repo: &str, revision: &str, commit: &str) -> Result<()> {
        if revision == commit {
            return Ok(());
        }
        let path = self.repo_dir(repo).join("refs").join(revision);
        write_atomic(&path, commit.as_bytes(), Overwrite::Allow)
            .map(|_| ())
            .map_err(|e| HubError::Protocol {
                url: path.display().to_string(),
                reason: e.to_string(),
            })
    }

    /// Links `snapshots/<commit>/<file>` to its blob with a relative symlink (a copy where symlinks are unavailable).
    pub fn link(&self, repo: &str, commit: &str, file: &str, etag: &str) -> Result<PathBuf> {
        let pointer = self.snapshot_dir(repo, commit).join(file);
        let parent = pointer.parent().expect("pointer has a parent");
        std::fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
        let depth = file.matches('/').count() + 2;
        let target: PathBuf = std::iter::repeat_n("..", depth)
            .collect::<PathBuf>()
            .join("blobs")
            .join(etag);
        let _ = std::fs::remove_file(&pointer);
        #[cfg(unix)]
        std::os::unix::fs::symlink(&target, &pointer).map_err(|e| HubError::io(&pointer, e))?;
        #[cfg(not(unix))]
        std::fs::copy(self.blob_path(repo, etag), &pointer)
            .map(|_| ())
            .map_err(|e| HubError::io(&pointer, e))?;
        Ok(pointer)
    }

    /// The snapshot folder of `repo@revision` if it is cached (a branch or tag through `refs/`, or a commit hash).
    pub fn resolve(&self, repo: &str, revision: &str) -> Option<PathBuf> {
        if self.kind == RepoKind::Dataset {
            // A dataset has no config.json to find: its ref (or the commit itself) and a snapshot folder.
            let commit = match is_commit(revision) {
                true => revision.to_string(),
                false => std::fs::read_to_string(self.repo_dir(repo).join("refs").join(revision)).ok()?,
            };
            // The ref's contents name a folder: only a commit hash, never a path.
            let commit = commit.trim();
            if !is_commit(commit) {
                return None;
            }
            let dir = self.snapshot_dir(repo, commit);
            return dir.is_dir().then_some(dir);
        }
        if is_commit(revision) {
            let dir = self.snapshot_dir(repo, revision);
            return dir.join("config.json").exists().then_some(dir);
        }
        // hf-hub's CacheRepo reads refs/<revision> and finds the file in that snapshot.
        let config = Cache::new(self.root.clone())
            .repo(self.hf(repo, revision))
            .get("config.json")?;
        config.parent().map(Path::to_path_buf)
    }

    /// Every cached model, sorted by repo id. Folders that are not models are skipped.
    pub fn list(&self) -> Vec<CachedModel> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut out: Vec<CachedModel> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let rest = name.strip_prefix("models--")?;
                Some(self.describe(&rest.replacen("--", "/", 1)))
            })
            .collect();
        out.sort_by(|a, b| a.repo.cmp(&b.repo));
        out
    }

    fn describe(&self, repo: &str) -> CachedModel {
        let dir = self.repo_dir(repo);
        let mut refs = Vec::new();
        collect_refs(&dir.join("refs"), "", &mut refs);
        refs.sort();
        let (mut size_bytes, mut incomplete_bytes) = (0, 0);
        if let Ok(blobs) = std::fs::read_dir(dir.join("blobs")) {
            for b in blobs.filter_map(|b| b.ok()) {
                let len = b.metadata().map(|m| m.len()).unwrap_or(0);
                if b.file_name().to_string_lossy().ends_with(".incomplete") {
                    incomplete_bytes += len;
                } else {
                    size_bytes += len;
                }
            }
        }
        let snapshot = refs
            .iter()
            .find(|(r, _)| r == "main")
            .or(refs.first())
            .map(|(_, c)| self.snapshot_dir(repo, c))
            .or_else(|| {
                std::fs::read_dir(dir.join("snapshots"))
                    .ok()?
                    .filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .next()
            });
        let layout = snapshot
            .as_deref()
            .and_then(|s| freezetune_core::ModelLayout::inspect(s).ok());
        CachedModel {
            repo: repo.to_string(),
            refs,
            snapshot,
            size_bytes,
            architecture: layout.as_ref().map(|l| l.architecture.clone()),
            num_layers: layout.as_ref().map(|l| l.num_layers),
            incomplete_bytes,
        }
    }

    /// Removes a cached model (all its revisions and partial downloads); returns the bytes freed.
    pub fn remove(&self, repo: &str) -> Result<u64> {
        let dir = self.repo_dir(repo);
        if !dir.is_dir() {
            return Err(HubError::NotCached {
                repo: repo.to_string(),
                cache: self.root.clone(),
            });
        }
        let m = self.describe(repo);
        std::fs::remove_dir_all(&dir).map_err(|e| HubError::io(&dir, e))?;
        Ok(m.size_bytes + m.incomplete_bytes)
    }

    pub fn cached_repo_ids(&self) -> Vec<String> {
        self.list()
            .into_iter()
            .filter(|m| m.snapshot.is_some())
            .map(|m| m.repo)
            .collect()
    }
}

fn collect_refs(dir: &Path, prefix: &str, out: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.filter_map(|e| e.ok()) {
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        let path = e.path();
        if path.is_dir() {
            collect_refs(&path, &format!("{name}/"), out);
        } else if let Ok(commit) = std::fs::read_to_string(&path) {
            out.push((name, commit.trim().to_string()));
        }
    }
}
