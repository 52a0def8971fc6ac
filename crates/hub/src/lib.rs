//! `freezetune-hub`: models from the Hugging Face Hub (or a mirror) into the standard cache, reliably: bounded
//! concurrent transfers, progress events, cancellation, resume with HTTP ranges, retries with backoff, size and
//! checksum verification before a file enters a snapshot, a disk-space check up front, offline resolution.
//!
//! hf-hub provides the repo API call, the `Repo` naming and the cache's ref lookup; the byte transfer is FreezeTune's
//! own, because hf-hub 0.4's downloader has no cancel token, no resume across runs and no checksum verification.

pub mod browse;
pub mod cache;
pub mod download;
pub mod error;
mod progress;
pub mod select;
pub mod settings;
mod sink;
pub mod token;
mod transfer;

pub use browse::{RemoteCheckpoint, RepoListing, SearchHit};
pub use cache::{CachedModel, HubCache, RepoKind};
pub use download::{DownloadOutcome, DownloadRequest, Downloader};
pub use error::{HubError, Result};
pub use settings::{HubSettings, Token};
pub use tokio_util::sync::CancellationToken;

pub(crate) const INDEX_FILE: &str = freezetune_core::files::INDEX_FILE;
