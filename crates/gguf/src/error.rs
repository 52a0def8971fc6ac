//! GGUF errors: each names the file, tensor or key involved and what to do.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {reason}", path.display())]
    BadInput { path: PathBuf, reason: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("{} already exists; choose another name or pass --force to replace it", .0.display())]
    Exists(PathBuf),
    #[error("{context}: {source}")]
    Candle {
        context: String,
        source: candle_core::Error,
    },
    #[error(transparent)]
    Train(#[from] freezetune_train::TrainError),
    #[error(transparent)]
    Core(#[from] freezetune_core::error::Error),
    #[error("stopped")]
    Stopped,
}

pub type Result<T> = std::result::Result<T, GgufError>;

impl GgufError {
    pub fn io(path: &Path, source: std::io::Error) -> GgufError {
        GgufError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn candle(context: impl Into<String>) -> impl FnOnce(candle_core::Error) -> GgufError {
        let context = context.into();
        move |source| GgufError::Candle { context, source }
    }

    /// A stable name for the kind of error (the CLI's and the app's `kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            GgufError::Io { .. } => "io",
            GgufError::BadInput { .. } => "bad_input",
            GgufError::Unsupported(_) => "unsupported",
            GgufError::Exists(_) => "exists",
            GgufError::Candle { .. } => "tensor",
            GgufError::Train(e) => e.kind(),
            GgufError::Core(_) => "model",
            GgufError::Stopped => "stopped",
        }
    }
}
