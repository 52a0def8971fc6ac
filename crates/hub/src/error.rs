//! Errors of the Hub client. Each says what failed and what to do; none ever contains the token.

use std::path::PathBuf;

pub type Result<T, E = HubError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    #[error(
        "{input:?} is not a Hub repo id; write it as owner/name, optionally @revision (e.g. Qwen/Qwen2.5-0.5B@main)"
    )]
    BadRepoId { input: String },

    #[error(
        "{repo} is gated or private (HTTP {status}): accept its license at {page} and set a token \
         (HF_TOKEN, or the token file written by `huggingface-cli login`){hint}"
    )]
    Gated {
        repo: String,
        status: u16,
        page: String,
        hint: &'static str,
    },

    #[error("repository {repo} was not found on {endpoint} (check the spelling; private repos also need a token)")]
    RepoNotFound { repo: String, endpoint: String },

    #[error("revision {revision:?} of {repo} was not found (use a branch, tag or commit hash that exists)")]
    RevisionNotFound { repo: String, revision: String },

    #[error("{file} does not exist in {repo}")]
    EntryNotFound { repo: String, file: String },

    #[error("cannot reach {endpoint}: {reason}{}", cached_hint(.cached))]
    Network {
        endpoint: String,
        reason: String,
        cached: Vec<String>,
    },

    #[error("HF_HUB_OFFLINE is set and {repo}@{revision} is not in the cache {}{}", .cache.display(), cached_hint(.cached))]
    Offline {
        repo: String,
        revision: String,
        cache: PathBuf,
        cached: Vec<String>,
    },

    #[error(
        "the server listed the file name {name:?}, which is not a plain relative path; refusing to download from it"
    )]
    UnsafeFileName { name: String },

    #[error(
        "{repo} has no safetensors weights{}; FreezeTune never loads pickle files. Pick a repo with \
         safetensors (many have a `refs/pr/` conversion) or convert it first",
        if .others.is_empty() { String::new() } else { format!(" (it has {})", .others.join(", ")) }
    )]
    NoSafetensors { repo: String, others: Vec<String> },

    #[error("{file}: checksum mismatch (expected {expected}, got {actual}); the download was deleted, try again")]
    Checksum {
        file: String,
        expected: String,
        actual: String,
    },

    #[error("{file}: size mismatch (expected {expected} bytes, got {actual}); the download was deleted, try again")]
    Size { file: String, expected: u64, actual: u64 },

    #[error(
        "not enough disk space in {}: the download needs {needed} more bytes but {available} are free",
        .dir.display()
    )]
    DiskSpace { dir: PathBuf, needed: u64, available: u64 },

    #[error("download cancelled; partial files were kept and the next download of this repo resumes them")]
    Cancelled,

    #[error("{url}: HTTP {status} after {attempts} attempt(s): {message}")]
    Http {
        url: String,
        status: u16,
        attempts: u32,
        message: String,
    },

    #[error("{url}: {reason}")]
    Protocol { url: String, reason: String },

    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{file}: bad safetensors index: {reason}")]
    Index { file: String, reason: String },

    #[error("{repo} is not in the cache {}", .cache.display())]
    NotCached { repo: String, cache: PathBuf },

    #[error(
        "OS keyring: {reason}; where no keyring service runs (a headless machine), set HF_TOKEN or put the token \
         in the token file instead"
    )]
    Keyring { reason: String },
}

fn cached_hint(cached: &[String]) -> String {
    if cached.is_empty() {
        String::new()
    } else {
        format!("; cached models you can use offline: {}", cached.join(", "))
    }
}

impl HubError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        HubError::Io {
            path: path.into(),
            source,
        }
    }

    /// A stable machine-readable name, for `--json` and IPC.
    pub fn kind(&self) -> &'static str {
        match self {
            HubError::BadRepoId { .. } => "bad_repo_id",
            HubError::Gated { .. } => "gated",
            HubError::RepoNotFound { .. } => "repo_not_found",
            HubError::RevisionNotFound { .. } => "revision_not_found",
            HubError::EntryNotFound { .. } => "entry_not_found",
            HubError::Network { .. } => "network",
            HubError::Offline { .. } => "offline",
            HubError::UnsafeFileName { .. } => "unsafe_file_name",
            HubError::NoSafetensors { .. } => "no_safetensors",
            HubError::Checksum { .. } => "checksum_mismatch",
            HubError::Size { .. } => "size_mismatch",
            HubError::DiskSpace { .. } => "disk_space",
            HubError::Cancelled => "cancelled",
            HubError::Http { .. } => "http",
            HubError::Protocol { .. } => "protocol",
            HubError::Io { .. } => "io",
            HubError::Index { .. } => "bad_index",
            HubError::NotCached { .. } => "not_cached",
            HubError::Keyring { .. } => "keyring",
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "kind": self.kind(), "message": self.to_string() })
    }
}
