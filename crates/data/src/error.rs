//! Data errors name the file and the row (line) and say what is wrong.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}:{line}: {reason}", file.display())]
    Bad { file: PathBuf, line: usize, reason: String },
}

pub type Result<T> = std::result::Result<T, DataError>;

impl DataError {
    pub fn io(path: &Path, source: std::io::Error) -> DataError {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn bad(file: &Path, line: usize, reason: String) -> DataError {
        DataError::Bad {
            file: file.to_path_buf(),
            line,
            reason,
        }
    }
}

/// Runs third-party parser code (arrow-rs's IPC reader, the parquet crate) that can panic on a malformed file
/// instead of returning an error: a panic becomes the reason the file cannot be read, so a hostile file is refused
/// by name and never takes the process down. Callers drop the reader after one.
pub(crate) fn unpanicked<T>(read: impl FnOnce() -> T) -> std::result::Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).map_err(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "an unknown fault".into());
        format!("the file is malformed (its reader failed: {what})")
    })
}
