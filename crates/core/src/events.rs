//! Event streams, one enum per stream, produced by the libraries through [`EventSink`]; the CLI renders them as a
//! progress bar, the app forwards them over a Tauri channel, run folders keep them.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Receives events; implementations must be cheap and never block for long (they are called from transfer loops).
pub trait EventSink<E>: Send + Sync {
    fn emit(&self, event: E);
}

/// A sink that drops everything.
pub struct NullSink;

impl<E> EventSink<E> for NullSink {
    fn emit(&self, _: E) {}
}

impl<E, F: Fn(E) + Send + Sync> EventSink<E> for F {
    fn emit(&self, event: E) {
        self(event)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedFile {
    pub name: String,
    pub size: u64,
    /// Bytes already on disk: complete blob, or a partial download that will be resumed.
    pub present: u64,
}

/// Events of one Hub download.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DownloadEvent {
    /// The repo was resolved to a commit and the files to fetch are known.
    Resolved {
        repo: String,
        revision: String,
        commit: String,
        files: Vec<PlannedFile>,
        total_bytes: u64,
    },
    FileStarted {
        file: String,
        size: u64,
        resumed_from: u64,
    },
    /// Throttled (about 10 per second).
    Progress {
        file: String,
        file_bytes: u64,
        file_size: u64,
        done_bytes: u64,
        total_bytes: u64,
        bytes_per_second: f64,
        eta_seconds: Option<f64>,
    },
    Retrying {
        file: String,
        attempt: u32,
        wait_ms: u64,
        reason: String,
    },
    FileFinished {
        file: String,
    },
    /// Size and checksum matched; the file is now in the snapshot.
    FileVerified {
        file: String,
        sha256: Option<String>,
    },
    Finished {
        snapshot: PathBuf,
        downloaded_bytes: u64,
        resumed_bytes: u64,
        seconds: f64,
    },
    Cancelled {
        partial_bytes: u64,
    },
}
