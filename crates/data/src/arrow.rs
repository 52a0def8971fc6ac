//! Arrow files as Hugging Face `datasets` writes them: `save_to_disk` folders (`data-0000N-of-0000M.arrow` in the
//! IPC stream format, beside `state.json` and `dataset_info.json`) and its cache files; the IPC file format
//! (`ARROW1` magic) too. Read one record batch at a time through arrow-rs's IPC reader, each row turned into the
//! JSON object the other sources give: strings, numbers, booleans, lists and structs (conversations) as they are,
//! dictionary-encoded columns decoded, maps as objects, and binary, temporal and decimal cells as the Parquet
//! reader gives them (`arrow_text.rs`), so that a column the mapping does not use (an image, a timestamp) never
//! stops a file from being read. A column of a type Parquet has no value for (intervals, unions) is refused by
//! name.

use crate::error::{unpanicked, DataError, Result};
use crate::source::{Row, Rows};
use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType};
use serde_json::{Map, Number, Value};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The IPC file format's leading magic; without it a file is read as a stream.
const FILE_MAGIC: &[u8; 6] = b"ARROW1";

pub fn rows(file: Arc<PathBuf>, mut handle: std::fs::File) -> Result<Rows> {
    let mut magic = [0u8; 6];
    let is_file_format = handle.read_exact(&mut magic).is_ok() && &magic == FILE_MAGIC;
    let not_arrow = |e: String| DataError::bad(&file, 1, format!("not an Arrow file FreezeTune can read: {e}"));
    check_framing(&mut handle, is_file_format).map_err(not_arrow)?;
    handle.seek(SeekFrom::Start(0)).map_err(|e| DataError::io(&file, e))?;
    let opened = unpanicked(|| -> std::result::Result<Batches, ArrowError> {
        Ok(if is_file_format {
            Box::new(arrow_ipc::reader::FileReader::try_new(handle, None)?)
        } else {
            let reader = BufReader::with_capacity(1 << 20, handle);
            Box::new(arrow_ipc::reader::StreamReader::try_new(reader, None)?)
        })
    });
    let batches = match opened {
        Ok(Ok(batches)) => batches,
        Ok(Err(e)) => return Err(not_arrow(e.to_string())),
        Err(panicked) => return Err(not_arrow(panicked)),
    };
    Ok(Box::new(BatchRows {
        file,
        batches,
        batch: None,
        next_in_batch: 0,
        line: 0,
    }))
}

/// arrow-rs allocates a message's body at the length its metadata claims before reading it, so a damaged or
/// hostile file claiming exabytes would abort the process (an allocation failure is not a panic). The framing is
/// walked first, metadata only with the bodies skipped, and a length past the end of the file is refused.
fn check_framing(handle: &mut std::fs::File, is_file_format: bool) -> std::result::Result<(), String> {
    let len = handle.metadata().map_err(|e| e.to_string())?.len();
    if is_file_format {
        check_footer(handle, len)
    } else {
        check_stream(handle, len)
    }
}

fn read_at(handle: &mut std::fs::File, at: u64, buf: &mut [u8]) -> std::result::Result<(), String> {
    handle.seek(SeekFrom::Start(at)).map_err(|e| e.to_string())?;
    handle
        .read_exact(buf)
        .map_err(|e| format!("cannot read {} bytes at byte {at}: {e}", buf.len()))
}

/// Each message: an optional 0xFFFFFFFF marker, its metadata length, the metadata (a flatbuffer naming the body's
/// length), the body. A zero length, or the end of the file, ends the stream.
fn check_stream(handle: &mut std::fs::File, len: u64) -> std::result::Result<(), String> {
    let mut at = 0u64;
    let mut word = [0u8; 4];
    loop {
        if len - at < 4 {
            return Ok(());
        }
        read_at(handle, at, &mut word)?;
        at += 4;
        if word == [0xFF; 4] {
            if len - at < 4 {
                return Ok(());
            }
            read_at(handle, at, &mut word)?;
            at += 4;
        }
        let meta_len = i32::from_le_bytes(word);
        if meta_len == 0 {
            return Ok(());
        }
        let message_at = at;
        let meta_len = u64::try_from(meta_len)
            .ok()
            .filter(|&n| n <= len - at)
            .ok_or_else(|| format!("the message at byte {message_at} claims {meta_len} bytes of metadata"))?;
        let mut meta = vec![0u8; meta_len as usize];
        read_at(handle, at, &mut meta)?;
        at += meta_len;
        let message = arrow_ipc::root_as_message(&meta)
            .map_err(|e| format!("the message at byte {message_at} is not an Arrow message: {e}"))?;
        let body = message.bodyLength();
        at += u64::try_from(body).ok().filter(|&n| n <= len - at).ok_or_else(|| {
            format!("the message at byte {message_at} claims a {body}-byte body the file does not hold")
        })?;
    }
}

/// The file format's footer (its last 10 bytes give its length) lists each block's offset and lengths.
fn check_footer(handle: &mut std::fs::File, len: u64) -> std::result::Result<(), String> {
    let mut tail = [0u8; 10];
    if len < 18 {
        return Err("too short for the Arrow file format".into());
    }
    read_at(handle, len - 10, &mut tail)?;
    let footer_len = i32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    let footer_len = u64::try_from(footer_len)
        .ok()
        .filter(|&n| n <= len - 18)
        .ok_or_else(|| format!("the footer claims {footer_len} bytes"))?;
    let mut footer = vec![0u8; footer_len as usize];
    read_at(handle, len - 10 - footer_len, &mut footer)?;
    let footer = arrow_ipc::root_as_footer(&footer).map_err(|e| format!("the footer is not an Arrow footer: {e}"))?;
    let blocks = footer
        .recordBatches()
        .into_iter()
        .chain(footer.dictionaries())
        .flatten();
    for block in blocks {
        let (offset, meta, body) = (block.offset(), block.metaDataLength(), block.bodyLength());
        let end = u64::try_from(offset)
            .ok()
            .zip(u64::try_from(meta).ok())
            .zip(u64::try_from(body).ok())
            .and_then(|((o, m), b)| o.checked_add(m)?.checked_add(b));
        if end.is_none_or(|end| end > len) {
            return Err(format!(
                "a block at byte {offset} claims {meta} bytes of metadata and {body} of body, past the file's end"
            ));
        }
    }
    Ok(())
}

type Batches = Box<dyn Iterator<Item = std::result::Result<RecordBatch, ArrowError>>>;

/// Rows of one batch at a time: only the current batch is in memory.
struct BatchRows {
    file: Arc<PathBuf>,
    batches: Batches,
    batch: Option<RecordBatch>,
    next_in_batch: usize,
    line: usize,
}

impl Iterator for BatchRows {
    type Item = Result<Row>;

    fn next(&mut self) -> Option<Result<Row>> {
        loop {
            if let Some(batch) = &self.batch {
                if self.next_in_batch < batch.num_rows() {
                    let i = self.next_in_batch;
                    self.next_in_batch += 1;
                    self.line += 1;
                    let value = unpanicked(|| row_of(batch, i)).and_then(|v| v);
                    if value.is_err() {
                        self.stop();
                    }
                    return Some(
                        value
                            .map_err(|e| DataError::bad(&self.file, self.line, e))
                            .map(|value| Row {
                                file: self.file.clone(),
                                line: self.line,
                                value,
                            }),
                    );
                }
            }
            let next = unpanicked(|| self.batches.next());
            let failure = match next {
                Ok(None) => return None,
                Ok(Some(Ok(batch))) => {
                    self.batch = Some(batch);
                    self.next_in_batch = 0;
                    continue;
                }
                Ok(Some(Err(e))) => format!("cannot read the record batch: {e}"),
                Err(panicked) => panicked,
            };
            self.stop();
            return Some(Err(DataError::bad(&self.file, self.line + 1, failure)));
        }
    }
}

impl BatchRows {
    /// After an error nothing more is read: the reader's state is unknown.
    fn stop(&mut self) {
        self.batches = Box::new(std::iter::empty());
        self.batch = None;
    }
}

fn row_of(batch: &RecordBatch, i: usize) -> std::result::Result<Value, String> {
    let mut out = Map::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let v = value(column.as_ref(), i).map_err(|e| format!("column `{}`: {e}", field.name()))?;
        out.insert(field.name().clone(), v);
    }
    Ok(Value::Object(out))
}

fn value(array: &dyn Array, i: usize) -> std::result::Result<Value, String> {
    if array.is_null(i) {
        return Ok(Value::Null);
    }
    let int = |n: i64| Value::Number(n.into());
    let float = |x: f64| Number::from_f64(x).map_or(Value::Null, Value::Number);
    Ok(match array.data_type() {
        DataType::Null => Value::Null,
        DataType::Boolean => Value::Bool(array.as_boolean().value(i)),
        DataType::Int8 => int(array.as_primitive::<Int8Type>().value(i).into()),
        DataType::Int16 => int(array.as_primitive::<Int16Type>().value(i).into()),
        DataType::Int32 => int(array.as_primitive::<Int32Type>().value(i).into()),
        DataType::Int64 => int(array.as_primitive::<Int64Type>().value(i)),
        DataType::UInt8 => int(array.as_primitive::<UInt8Type>().value(i).into()),
        DataType::UInt16 => int(array.as_primitive::<UInt16Type>().value(i).into()),
        DataType::UInt32 => int(array.as_primitive::<UInt32Type>().value(i).into()),
        DataType::UInt64 => Value::Number(array.as_primitive::<UInt64Type>().value(i).into()),
        DataType::Float16 => float(array.as_primitive::<Float16Type>().value(i).to_f64()),
        DataType::Float32 => float(array.as_primitive::<Float32Type>().value(i).into()),
        DataType::Float64 => float(array.as_primitive::<Float64Type>().value(i)),
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Value::String(array.as_string::<i64>().value(i).to_string()),
        DataType::Utf8View => Value::String(array.as_string_view().value(i).to_string()),
        DataType::List(_) => list(array.as_list::<i32>().value(i))?,
        DataType::LargeList(_) => list(array.as_list::<i64>().value(i))?,
        DataType::FixedSizeList(..) => list(array.as_fixed_size_list().value(i))?,
        DataType::Struct(fields) => {
            let s = array.as_struct();
            let mut out = Map::new();
            for (field, column) in fields.iter().zip(s.columns()) {
                let v = value(column.as_ref(), i).map_err(|e| format!("field `{}`: {e}", field.name()))?;
                out.insert(field.name().clone(), v);
            }
            Value::Object(out)
        }
        DataType::Dictionary(..) => {
            let dictionary = array.as_any_dictionary();
            let key = key_at(dictionary.keys(), i).ok_or("a dictionary key outside the dictionary")?;
            if key >= dictionary.values().len() {
                return Err("a dictionary key outside the dictionary".into());
            }
            value(dictionary.values().as_ref(), key)?
        }
        DataType::Map(..) => {
            let entries = array.as_map().value(i);
            let (keys, values) = (entries.column(0), entries.column(1));
            let mut out = Map::new();
            for j in 0..entries.len() {
                let key = match value(keys.as_ref(), j)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                out.insert(key, value(values.as_ref(), j)?);
            }
            Value::Object(out)
        }
        other => match crate::arrow_text::cell(array, i) {
            Some(value) => value,
            None => return Err(format!("holds {other} values, which no training row format holds")),
        },
    })
}

/// Key `i` of a dictionary's keys (any integer type) as an index; None if negative.
fn key_at(keys: &dyn Array, i: usize) -> Option<usize> {
    let key: i64 = match keys.data_type() {
        DataType::Int8 => keys.as_primitive::<Int8Type>().value(i).into(),
        DataType::Int16 => keys.as_primitive::<Int16Type>().value(i).into(),
        DataType::Int32 => keys.as_primitive::<Int32Type>().value(i).into(),
        DataType::Int64 => keys.as_primitive::<Int64Type>().value(i),
        DataType::UInt8 => keys.as_primitive::<UInt8Type>().value(i).into(),
        DataType::UInt16 => keys.as_primitive::<UInt16Type>().value(i).into(),
        DataType::UInt32 => keys.as_primitive::<UInt32Type>().value(i).into(),
        DataType::UInt64 => return usize::try_from(keys.as_primitive::<UInt64Type>().value(i)).ok(),
        _ => return None,
    };
    usize::try_from(key).ok()
}

fn list(values: ArrayRef) -> std::result::Result<Value, String> {
    (0..values.len())
        .map(|j| value(values.as_ref(), j))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map(Value::Array)
}

/// Files `datasets` writes beside its Arrow files (and LLaMA-Factory beside its data): never training rows.
pub const METADATA_FILES: [&str; 4] = [
    "state.json",
    "dataset_info.json",
    "dataset_infos.json",
    "dataset_dict.json",
];

/// A `DatasetDict.save_to_disk` folder (`dataset_dict.json` naming its splits, one folder each): its `train`
/// split's folder, which a run reads when it names no split; `None` for any other folder.
pub fn dataset_dict_train(dir: &Path) -> Result<Option<PathBuf>> {
    let index = dir.join("dataset_dict.json");
    if !index.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&index).map_err(|e| DataError::io(&index, e))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| DataError::bad(&index, e.line(), e.to_string()))?;
    let splits: Vec<&str> = value["splits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if splits.contains(&"train") && dir.join("train").is_dir() {
        return Ok(Some(dir.join("train")));
    }
    Err(DataError::bad(
        &index,
        1,
        format!(
            "a `datasets` DatasetDict with the splits {splits:?} and no `train` folder: name the split to read \
             (`split = \"...\"` in [[data.datasets]]) or give its folder as the path"
        ),
    ))
}
