//! GGUF in and out. `export_gguf` writes a model folder (or a run's `final/`) as a llama.cpp GGUF file (f32,
//! f16, bf16, q8_0, q4_k_m); `import_gguf` turns a GGUF decoder back into a Hugging Face folder FreezeTune trains.
//! Depends on core (model files, atomic writes) and train (the decoder's config and families).

pub mod error;
pub mod export;
pub mod format;
pub mod import;
pub mod kquant;
pub mod modelfile;
pub mod names;
pub mod quant;
pub mod tokenizer;

pub use error::{GgufError, Result};
pub use export::{export_gguf, ExportOptions, ExportReport};
pub use import::{import_gguf, ImportDType, ImportOptions, ImportReport};
pub use quant::ExportType;

/// Progress of an export or import, one tensor at a time. The callback returns `false` to stop.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    /// The tensor being written (empty when finished).
    pub tensor: String,
}
