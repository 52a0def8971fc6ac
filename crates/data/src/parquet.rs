//! Parquet rows through the `parquet` crate's record API: the footer is read first, then one row group at a time,
//! so a multi-GB file yields its first rows at once and never sits whole in memory. Each row becomes the JSON the
//! crate gives it (lists as arrays, structs and maps as objects, binary as base64... only what a dataset column
//! holds in practice: strings, numbers, lists of them, lists of structs for conversations).

use crate::error::{unpanicked, DataError, Result};
use crate::source::{Row, Rows};
use parquet::file::reader::{FileReader, SerializedFileReader};
use std::path::PathBuf;
use std::sync::Arc;

pub fn rows(file: Arc<PathBuf>, handle: std::fs::File) -> Result<Rows> {
    let not_parquet = |e: String| DataError::bad(&file, 1, format!("not a Parquet file FreezeTune can read: {e}"));
    let reader = match unpanicked(|| SerializedFileReader::new(handle)) {
        Ok(Ok(reader)) => reader,
        Ok(Err(e)) => return Err(not_parquet(e.to_string())),
        Err(panicked) => return Err(not_parquet(panicked)),
    };
    if reader.metadata().file_metadata().num_rows() < 0 {
        return Err(DataError::bad(&file, 1, "the footer gives a negative row count".into()));
    }
    let mut rows = reader.into_iter();
    let mut line = 0;
    let mut failed = false;
    let rows = std::iter::from_fn(move || {
        if failed {
            return None;
        }
        line += 1;
        let read = unpanicked(|| rows.next().map(|row| row.map(|r| r.to_json_value())));
        let reason = match read {
            Ok(None) => return None,
            Ok(Some(Ok(value))) => {
                return Some(Ok(Row {
                    file: file.clone(),
                    line,
                    value,
                }))
            }
            Ok(Some(Err(e))) => format!("cannot read row: {e}"),
            Err(panicked) => panicked,
        };
        // After an error the reader's state is unknown: nothing more is read.
        failed = true;
        Some(Err(DataError::bad(&file, line, reason)))
    });
    Ok(Box::new(rows))
}
