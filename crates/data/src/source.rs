//! Rows of a data file or folder, one JSON object each, streamed: a JSON Lines file line by line, CSV/TSV record by
//! record (every cell a string, keyed by the header), Parquet one row group at a time through the record API
//! (nested lists and structs become JSON arrays and objects), Arrow (`datasets`' `save_to_disk` and cache files) one
//! record batch at a time. A folder is every data file in it, in name order (a dataset's shards); a DatasetDict
//! folder its `train` split. Only a JSON array file is read whole: its format has no row boundary to stop at.

use crate::error::{DataError, Result};
use serde_json::{Map, Value};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::splits::split_files;

/// One row: where it is (for errors that name it) and its fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub file: Arc<PathBuf>,
    /// 1-based: the line of a JSON Lines file, the record of a CSV file (its line when no cell spans lines), the
    /// row of a Parquet file or the element of a JSON array.
    pub line: usize,
    pub value: Value,
}

/// The file formats rows are read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `.json`: an array of objects, or (as many `.json` files are) one object per line.
    Json,
    Jsonl,
    Csv,
    Tsv,
    Parquet,
    /// Arrow IPC, stream or file format (what `datasets` saves).
    Arrow,
}

impl FileKind {
    /// The kind a file's extension names.
    pub fn of(path: &Path) -> Option<FileKind> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match ext.as_str() {
            "json" => FileKind::Json,
            "jsonl" | "ndjson" => FileKind::Jsonl,
            "csv" => FileKind::Csv,
            "tsv" => FileKind::Tsv,
            "parquet" => FileKind::Parquet,
            "arrow" => FileKind::Arrow,
            _ => return None,
        })
    }
}

pub const SUPPORTED: &str = ".json, .jsonl, .csv, .tsv, .parquet and .arrow";

/// A file a folder's rows are read from: a data file's extension, and not one of the metadata files `datasets`
/// and LLaMA-Factory keep beside their data (`state.json`, `dataset_info.json`, `dataset_dict.json`).
pub fn is_data_file(path: &Path) -> bool {
    let metadata = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| crate::arrow::METADATA_FILES.contains(&n));
    FileKind::of(path).is_some() && !metadata
}

/// A stream of rows.
pub type Rows = Box<dyn Iterator<Item = Result<Row>>>;

/// The rows of `path`, a data file or a folder of them.
pub fn open(path: &Path) -> Result<Rows> {
    if path.is_dir() {
        return open_files(&data_files(path)?);
    }
    open_file(path)
}

/// Every row of `path`.
pub fn read_all(path: &Path) -> Result<Vec<Row>> {
    open(path)?.collect()
}

/// The first `n` rows of `path`, reading no further than they need.
pub fn first(path: &Path, n: usize) -> Result<Vec<Row>> {
    open(path)?.take(n).collect()
}

/// The data files of a folder, in name order; a folder with none is refused, naming what was looked for.
pub fn data_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if let Some(train) = crate::arrow::dataset_dict_train(dir)? {
        return data_files(&train);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_data_file(p))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(DataError::bad(
            dir,
            1,
            format!("the folder holds no data files ({SUPPORTED})"),
        ));
    }
    Ok(files)
}

/// Every data file below `dir`, as paths relative to `root` with `/` separators.
pub(crate) fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let path = entry.path();
        let hidden = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
        // A linked folder is not followed (a link to a parent would never end); linked files are (a Hub
        // snapshot's files are links to its blobs).
        let linked_dir = entry.file_type().is_ok_and(|t| t.is_symlink()) && path.is_dir();
        if hidden || linked_dir {
            continue;
        }
        if path.is_dir() {
            walk(root, &path, out)?;
        } else if is_data_file(&path) {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push(
                rel.components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/"),
            );
        }
    }
    Ok(())
}

/// The rows of several files, one after another; each file is opened only when the rows before it are read (a
/// preview of a dataset of a thousand shards opens one).
pub fn open_files(files: &[PathBuf]) -> Result<Rows> {
    let files = files.to_vec();
    Ok(Box::new(files.into_iter().flat_map(|f| match open_file(&f) {
        Ok(rows) => rows,
        Err(e) => Box::new(std::iter::once(Err(e))) as Rows,
    })))
}

fn open_file(path: &Path) -> Result<Rows> {
    let kind = FileKind::of(path).ok_or_else(|| {
        DataError::bad(
            path,
            1,
            format!("cannot tell the file's format from its name; FreezeTune reads {SUPPORTED}"),
        )
    })?;
    let file = Arc::new(path.to_path_buf());
    let handle = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    match kind {
        FileKind::Json | FileKind::Jsonl => json_rows(file, handle),
        FileKind::Csv => delimited_rows(file, handle, b','),
        FileKind::Tsv => delimited_rows(file, handle, b'\t'),
        FileKind::Parquet => crate::parquet::rows(file, handle),
        FileKind::Arrow => crate::arrow::rows(file, handle),
    }
}

/// A JSON array (read whole) or one object per line (streamed), whatever the extension says: many `.json` files
/// are JSON Lines.
fn json_rows(file: Arc<PathBuf>, handle: std::fs::File) -> Result<Rows> {
    let mut reader = BufReader::with_capacity(1 << 20, handle);
    let starts_array = loop {
        let buf = reader.fill_buf().map_err(|e| DataError::io(&file, e))?;
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => break buf[i] == b'[',
            None if buf.is_empty() => break false,
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    };
    if starts_array {
        let mut text = String::new();
        reader
            .read_to_string(&mut text)
            .map_err(|e| DataError::bad(&file, 1, format!("not UTF-8 text: {e}; save the file as UTF-8")))?;
        let rows: Vec<Value> =
            serde_json::from_str(&text).map_err(|e| DataError::bad(&file, e.line(), e.to_string()))?;
        let rows = rows.into_iter().enumerate().map(move |(i, value)| {
            Ok(Row {
                file: file.clone(),
                line: i + 1,
                value,
            })
        });
        return Ok(Box::new(rows));
    }
    Ok(Box::new(JsonLines {
        file,
        reader,
        line: 0,
        offset: 0,
    }))
}

struct JsonLines {
    file: Arc<PathBuf>,
    reader: BufReader<std::fs::File>,
    line: usize,
    /// Bytes read so far, to name where a non-UTF-8 byte is.
    offset: usize,
}

impl Iterator for JsonLines {
    type Item = Result<Row>;

    fn next(&mut self) -> Option<Result<Row>> {
        let mut bytes = Vec::new();
        loop {
            bytes.clear();
            match self.reader.read_until(b'\n', &mut bytes) {
                Ok(0) => return None,
                Ok(n) => {
                    self.line += 1;
                    self.offset += n;
                }
                Err(e) => return Some(Err(DataError::io(&self.file, e))),
            }
            let text = match std::str::from_utf8(&bytes) {
                Ok(t) => t,
                Err(e) => {
                    let at = self.offset - bytes.len() + e.valid_up_to();
                    let reason = format!("not UTF-8 text (byte {at} of the file); save the file as UTF-8");
                    return Some(Err(DataError::bad(&self.file, self.line, reason)));
                }
            };
            if text.trim().is_empty() {
                continue;
            }
            return Some(match serde_json::from_str(text) {
                Ok(value) => Ok(Row {
                    file: self.file.clone(),
                    line: self.line,
                    value,
                }),
                Err(e) => Err(DataError::bad(&self.file, self.line, format!("not valid JSON: {e}"))),
            });
        }
    }
}

/// CSV or TSV with a header row: each record an object of the header's names to the cells' strings.
fn delimited_rows(file: Arc<PathBuf>, mut handle: std::fs::File, delimiter: u8) -> Result<Rows> {
    // csv places a record after a CRLF one line short (before the LF of the break above it): a file whose first
    // line ends in CRLF (Python's csv writes them) counts one more.
    let crlf = {
        let mut head = vec![0u8; 64 * 1024];
        let n = handle.read(&mut head).map_err(|e| DataError::io(&file, e))?;
        head[..n]
            .windows(2)
            .find(|w| w[1] == b'\n')
            .is_some_and(|w| w[0] == b'\r')
    };
    std::io::Seek::rewind(&mut handle).map_err(|e| DataError::io(&file, e))?;
    let shift = usize::from(crlf);
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(false)
        .from_reader(BufReader::with_capacity(1 << 20, handle));
    let header = reader
        .headers()
        .map_err(|e| DataError::bad(&file, 1, format!("cannot read the header row: {e}")))?
        .clone();
    if header.is_empty() {
        return Err(DataError::bad(&file, 1, "the header row is empty".into()));
    }
    let rows = reader.into_records().map(move |record| {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line() as usize + shift);
            DataError::bad(&file, line, e.to_string())
        })?;
        let line = record.position().map_or(0, |p| p.line() as usize + shift);
        let value: Map<String, Value> = header
            .iter()
            .zip(record.iter())
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        Ok(Row {
            file: file.clone(),
            line,
            value: Value::Object(value),
        })
    });
    Ok(Box::new(rows))
}
