//! GGUF in and out. `export_gguf` writes a model folder (or a run's `final/`) as a llama.cpp GGUF file (f32,
//! f16, bf16, q8_0, q4_k_m); `import_gguf` turns a GGUF decoder back into a Hugging Face folder FreezeTune trains.
//! Depends on core (model files, atomic writes) and train (the decoder's config and families).

pub mod error;
pub mod export;
pub mod format;
pub mod import;
pub use freezetune_core::kquant;
pub mod modelfile;
pub mod names;
pub mod patch;
pub mod quant;
pub mod tokenizer;
pub mod validate;
pub mod view;
pub mod weights;

pub use error::{GgufError, Result};
pub use export::{export_gguf, ExportOptions, ExportReport};
pub use import::{import_gguf, ImportDType, ImportOptions, ImportReport};
pub use patch::{export_patched, gguf_source};
pub use quant::ExportType;
pub use view::{is_gguf_file, mapped_folder};

/// Progress of an export or import, one tensor at a time. The callback returns `false` to stop.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS), ts(rename = "GgufProgress"))]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    /// The tensor being written (empty when finished).
    pub tensor: String,
}

/// One line of `export-gguf` / `import-gguf --events jsonl`: the CLI writes them, the app's worker reads them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum GgufEvent {
    Progress(Progress),
    Exported(ExportReport),
    Imported(ImportReport),
}

/// How many tensors each GGML type holds, by llama.cpp's type names.
pub fn count_types(
    types: impl Iterator<Item = candle_core::quantized::GgmlDType>,
) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for t in types {
        *counts.entry(format::type_name(t).to_string()).or_insert(0) += 1;
    }
    counts
}

/// Such counts in words: "9 f32, 30 q8_0".
pub fn describe_types(counts: &std::collections::BTreeMap<String, usize>) -> String {
    counts
        .iter()
        .map(|(t, n)| format!("{n} {t}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A hidden name beside `dest` for work in progress (`.NAME.PID.TAG`), renamed onto `dest` once complete.
pub(crate) fn hidden_sibling(dest: &std::path::Path, tag: &str) -> std::path::PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.{}.{tag}", std::process::id()))
}
