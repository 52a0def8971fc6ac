//! Errors of the training engine; each names the file, tensor, key or line involved.

use std::path::PathBuf;

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    #[error("architecture {found:?} cannot be trained yet (inspect and plan still work); supported: {}", .supported.join(", "))]
    UnsupportedArchitecture {
        found: String,
        supported: Vec<&'static str>,
    },

    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },

    /// Asked to stop before the end (the app's Cancel).
    #[error("{0} stopped before the end")]
    Stopped(&'static str),

    #[error("tensor {name}: {reason}")]
    Tensor { name: String, reason: String },

    #[error("{file}:{line}: {reason}")]
    Data { file: PathBuf, line: usize, reason: String },

    #[error(transparent)]
    Core(#[from] freezetune_core::Error),

    #[error("{context}: {source}")]
    Candle {
        context: String,
        #[source]
        source: candle_core::Error,
    },

    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl TrainError {
    pub fn kind(&self) -> &'static str {
        match self {
            TrainError::UnsupportedArchitecture { .. } => "unsupported_architecture",
            TrainError::Config { .. } => "bad_config",
            TrainError::Tensor { .. } => "bad_tensor",
            TrainError::Data { .. } => "bad_data",
            TrainError::Core(e) => e.kind(),
            TrainError::Candle { .. } => "compute",
            TrainError::Io { .. } => "io",
            TrainError::Stopped(_) => "stopped",
        }
    }
}

/// Maps a candle error to one that says what was being done.
pub(crate) fn candle(context: &str) -> impl Fn(candle_core::Error) -> TrainError + '_ {
    move |e| TrainError::Candle {
        context: context.to_string(),
        source: e,
    }
}

/// Maps an I/O error to one that names the file.
pub(crate) fn io(path: &std::path::Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |e| TrainError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}
