//! `freezetune-data`: training records from where users keep them. A data file or folder (JSON, JSON Lines,
//! CSV/TSV, Parquet) read as a stream of rows, each one JSON object naming its file and line. What the rows mean
//! (formats, chat templates, tokens) is the trainer's; this crate only reads. Depends on nothing of FreezeTune's.

pub mod error;
mod parquet;
pub mod source;

pub use error::{DataError, Result};
pub use source::{first, open, read_all, FileKind, Row, Rows};
