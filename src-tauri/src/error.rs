//! The one error type that crosses IPC: `{ kind, message }`. `kind` is the library error's stable kind (the UI
//! branches on a few, such as `gated`), `message` says in words what is wrong and what to do.

use serde::Serialize;
use ts_rs::TS;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
pub struct IpcError {
    pub kind: String,
    pub message: String,
}

pub type IpcResult<T> = std::result::Result<T, IpcError>;

impl IpcError {
    pub fn new(kind: &str, message: impl Into<String>) -> IpcError {
        IpcError {
            kind: kind.to_string(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for IpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl From<freezetune_core::Error> for IpcError {
    fn from(e: freezetune_core::Error) -> Self {
        IpcError::new(e.kind(), e.to_string())
    }
}

impl From<freezetune_hub::HubError> for IpcError {
    fn from(e: freezetune_hub::HubError) -> Self {
        IpcError::new(e.kind(), e.to_string())
    }
}

impl From<freezetune_train::TrainError> for IpcError {
    fn from(e: freezetune_train::TrainError) -> Self {
        IpcError::new(e.kind(), e.to_string())
    }
}

impl From<tauri::Error> for IpcError {
    fn from(e: tauri::Error) -> Self {
        IpcError::new("app", e.to_string())
    }
}

/// An I/O error on `path`, named.
pub fn io_error(path: &std::path::Path, e: std::io::Error) -> IpcError {
    IpcError::new("io", format!("{}: {e}", path.display()))
}
