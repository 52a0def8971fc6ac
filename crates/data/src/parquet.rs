//! Parquet rows through the `parquet` crate's record API: the footer is read first, then one row group at a time,
//! so a multi-GB file yields its first rows at once and never sits whole in memory. Each row becomes the JSON the
//! crate gives it (lists as arrays, structs and maps as objects, binary as base64... only what a dataset column
//! holds in practice: strings, numbers, lists of them, lists of structs for conversations).

use crate::error::{DataError, Result};
use crate::source::{Row, Rows};
use parquet::file::reader::{FileReader, SerializedFileReader};
use std::path::PathBuf;
use std::sync::Arc;

pub fn rows(file: Arc<PathBuf>, handle: std::fs::File) -> Result<Rows> {
    let reader = SerializedFileReader::new(handle)
        .map_err(|e| DataError::bad(&file, 1, format!("not a Parquet file FreezeTune can read: {e}")))?;
    if reader.metadata().file_metadata().num_rows() < 0 {
        return Err(DataError::bad(&file, 1, "the footer gives a negative row count".into()));
    }
    let rows = reader.into_iter().enumerate().map(move |(i, row)| {
        let row = row.map_err(|e| DataError::bad(&file, i + 1, format!("cannot read row: {e}")))?;
        Ok(Row {
            file: file.clone(),
            line: i + 1,
            value: row.to_json_value(),
        })
    });
    Ok(Box::new(rows))
}
