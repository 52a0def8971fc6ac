//! `freezetune-data`: training records from where users keep them. A data file or folder (JSON, JSON Lines,
//! CSV/TSV, Parquet, Arrow) read as a stream of rows, each one JSON object naming its file and line (`source.rs`); a
//! dataset's column mapping as LLaMA-Factory's dataset_info.json expresses it (`mapping.rs`, `info.rs`); several
//! datasets mixed by weight (`mix.rs`, `spec.rs`); a Hub snapshot's config and split as its README declares them
//! or its layout implies (`splits.rs`); a record as the conversation it holds (`messages.rs`). How a
//! conversation is rendered (chat templates, tokens) is the trainer's.
//! Depends on core (the run config's dataset specs).

mod arrow;
mod arrow_text;
pub mod error;
pub mod info;
pub mod mapping;
pub mod messages;
pub mod mix;
mod parquet;
pub mod source;
pub mod spec;
mod splits;

pub use error::{DataError, Result};
pub use mapping::Mapping;
pub use messages::Message;
pub use source::{first, is_data_file, open, read_all, FileKind, Row, Rows};
pub use spec::{detect_spec, load_mixed, load_spec, Loaded};
pub use splits::{config_names, list_configs, ConfigSplits};
