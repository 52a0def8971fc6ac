//! Tauri commands, one file per domain. Each is a thin `verb_noun` wrapper: check the paths the web view sent, call
//! a tested library function, map its error to `IpcError`.

pub mod dialogs;
pub mod gguf;
pub mod handoff;
pub mod hub;
pub mod models;
pub mod plan;
pub mod presets;
pub mod runs;
pub mod train;
