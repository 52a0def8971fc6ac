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
