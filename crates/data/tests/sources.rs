//! Every source format against an independent writer and reader: the fixtures were written by pyarrow and
//! Python's csv module (tests/fixtures/scripts/make_data_fixtures.py), and `expected.json` holds what pyarrow and
//! csv read back from them. FreezeTune's rows must be those, value for value.

use freezetune_data::{first, open, read_all, DataError};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/data")
}

fn expected(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    let all: Value = serde_json::from_str(&text).unwrap();
    all["files"][name].as_array().unwrap().clone()
}

fn values(path: &Path) -> Vec<Value> {
    read_all(path).unwrap().into_iter().map(|r| r.value).collect()
}

#[test]
fn parquet_csv_and_tsv_rows_are_what_pyarrow_and_csv_read() {
    for name in [
        "alpaca.parquet",
        "sharegpt.parquet",
        "messages.parquet",
        "alpaca.csv",
        "alpaca.tsv",
    ] {
        assert_eq!(values(&fixtures().join(name)), expected(name), "{name}");
    }
    // Rows are numbered from 1 across a Parquet file's row groups (two rows a group here).
    let rows = read_all(&fixtures().join("alpaca.parquet")).unwrap();
    assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    // A CSV record names the line it starts on (the third spans two lines).
    let rows = read_all(&fixtures().join("alpaca.csv")).unwrap();
    assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), [2, 3, 4, 6, 7]);
}

#[test]
fn a_folder_is_its_data_files_in_name_order_and_first_stops_early() {
    let dir = tempfile::tempdir().unwrap();
    for (i, name) in ["alpaca.parquet", "alpaca.csv"].iter().enumerate() {
        std::fs::copy(
            fixtures().join(name),
            dir.path().join(format!("part-{i}.{}", name.split('.').nth(1).unwrap())),
        )
        .unwrap();
    }
    std::fs::write(dir.path().join("README.md"), "not data").unwrap();
    let rows = values(dir.path());
    assert_eq!(rows.len(), 10);
    assert_eq!(rows[..5], expected("alpaca.parquet")[..]);
    assert_eq!(first(dir.path(), 3).unwrap().len(), 3);
    let empty = tempfile::tempdir().unwrap();
    let err = open(empty.path()).err().unwrap().to_string();
    assert!(err.contains("no data files") && err.contains(".parquet"), "{err}");
}

#[test]
fn json_arrays_and_lines_stream_and_bad_bytes_are_named_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let array = dir.path().join("a.json");
    std::fs::write(&array, r#" [{"text": "a"}, {"text": "b"}]"#).unwrap();
    assert_eq!(
        values(&array),
        [serde_json::json!({"text": "a"}), serde_json::json!({"text": "b"})]
    );
    let lines = dir.path().join("l.json");
    std::fs::write(&lines, "{\"text\": \"a\"}\n\n{\"text\": \"b\"}\n").unwrap();
    let rows = read_all(&lines).unwrap();
    assert_eq!((rows[1].line, rows[1].value["text"].as_str()), (3, Some("b")));
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, b"{\"text\": \"a\"}\n{\"text\": \"\xff\"}\n").unwrap();
    let mut rows = open(&bad).unwrap();
    assert!(
        rows.next().unwrap().is_ok(),
        "the first line reads before the bad one is reached"
    );
    let err = rows.next().unwrap().unwrap_err().to_string();
    assert!(
        err.contains("bad.jsonl:2") && err.contains("byte 24") && err.contains("UTF-8"),
        "{err}"
    );
}

#[test]
fn unreadable_files_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let truncated = dir.path().join("cut.parquet");
    let bytes = std::fs::read(fixtures().join("alpaca.parquet")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = open(&truncated).err().unwrap();
    assert!(matches!(err, DataError::Bad { .. }), "{err}");
    assert!(err.to_string().contains("not a Parquet file"), "{err}");
    let unknown = dir.path().join("data.xlsx");
    std::fs::write(&unknown, "x").unwrap();
    let err = open(&unknown).err().unwrap().to_string();
    assert!(
        err.contains("cannot tell the file's format") && err.contains(".csv"),
        "{err}"
    );
    for (name, text) in [
        ("ragged.csv", "a,b\n1,2\n3\n"),
        ("ragged-crlf.csv", "a,b\r\n1,2\r\n3\r\n"),
    ] {
        let ragged = dir.path().join(name);
        std::fs::write(&ragged, text).unwrap();
        let err = read_all(&ragged).unwrap_err().to_string();
        assert!(err.contains(&format!("{name}:3")), "{err}");
    }
}

#[test]
fn csv_rows_name_their_line_with_either_line_ending() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [("lf.csv", "a,b\n1,2\n3,4\n"), ("crlf.csv", "a,b\r\n1,2\r\n3,4\r\n")] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let lines: Vec<usize> = read_all(&path).unwrap().iter().map(|r| r.line).collect();
        assert_eq!(lines, [2, 3], "{name}");
    }
}

/// What `datasets` / pyarrow read back from the Arrow fixtures (tests/fixtures/scripts/make_arrow_fixtures.py).
fn arrow_expected(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("arrow/expected.json")).unwrap();
    let all: Value = serde_json::from_str(&text).unwrap();
    all["files"][name].as_array().unwrap().clone()
}

#[test]
fn arrow_files_datasets_saved_read_as_datasets_reads_them() {
    let arrow = fixtures().join("arrow");
    // save_to_disk in two shards: the folder's Arrow files in order, its state.json and dataset_info.json skipped.
    assert_eq!(values(&arrow.join("saved")), arrow_expected("saved"));
    // A DatasetDict: its train split when none is named; another split through the spec.
    assert_eq!(values(&arrow.join("dict")), arrow_expected("dict/train"));
    let test = freezetune_data::load_spec(&freezetune_core::data_spec::DatasetSpec {
        path: Some(arrow.join("dict")),
        split: Some("test".into()),
        ..Default::default()
    })
    .unwrap();
    let want = arrow_expected("dict/test");
    assert_eq!(test.rows.len(), want.len());
    assert_eq!(
        test.formatting,
        freezetune_core::data_spec::Formatting::Sharegpt,
        "OpenAI messages, detected"
    );
    // The IPC file format, written in record batches of two rows: the reader goes on to the next batch.
    assert_eq!(values(&arrow.join("alpaca.arrow")), arrow_expected("alpaca.arrow"));
    let rows = first(&arrow.join("alpaca.arrow"), 3).unwrap();
    assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), [1, 2, 3]);
}

/// Columns no training row format holds beside alpaca rows: an `Image` feature's bytes, a timestamp and a date
/// (saved by `datasets`), dictionary-encoded strings, a decimal, a time of day, time-zoned timestamps and a map
/// (pyarrow), and one column of each other type FreezeTune gives a value for. They read exactly as the `parquet`
/// crate reads the same table written to Parquet by pyarrow (and, for the first two, as `expected.json` spells
/// out), so they never stop a file from being read; the rows beside them are detected and trained as alpaca.
#[test]
fn arrow_cells_of_other_types_read_as_parquet_writes_them() {
    let arrow = fixtures().join("arrow");
    assert_eq!(values(&arrow.join("media")), arrow_expected("media"));
    assert_eq!(values(&arrow.join("columns.arrow")), arrow_expected("columns.arrow"));
    for (ours, twin) in [
        ("media", "media.parquet"),
        ("columns.arrow", "columns.parquet"),
        ("types.arrow", "types.parquet"),
    ] {
        let (a, b) = (values(&arrow.join(ours)), values(&arrow.join(twin)));
        assert_eq!(a.len(), 3, "{ours}");
        for (row, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(x, y, "{ours} row {row} against the parquet crate's reading of {twin}");
        }
    }
    for name in ["media", "columns.arrow"] {
        let loaded = freezetune_data::load_spec(&freezetune_core::data_spec::DatasetSpec {
            path: Some(arrow.join(name)),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(loaded.rows.len(), 3, "{name}");
        assert_eq!(
            loaded.formatting,
            freezetune_core::data_spec::Formatting::Alpaca,
            "{name}"
        );
    }
}

#[test]
fn damaged_arrow_and_parquet_files_are_refused_by_name_never_panicking() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "arrow/alpaca.arrow",
        "arrow/saved/data-00000-of-00002.arrow",
        "alpaca.parquet",
    ] {
        let bytes = std::fs::read(fixtures().join(name)).unwrap();
        let ext = Path::new(name).extension().unwrap().to_str().unwrap();
        // Cut at every sixteenth byte, and each byte flipped in turn in the first 256: an error or rows, never a panic.
        let mut cases: Vec<Vec<u8>> = (0..bytes.len()).step_by(16).map(|n| bytes[..n].to_vec()).collect();
        for i in 0..bytes.len().min(256) {
            let mut b = bytes.clone();
            b[i] ^= 0xA5;
            cases.push(b);
        }
        for (k, case) in cases.iter().enumerate() {
            let path = dir.path().join(format!("case-{k}.{ext}"));
            std::fs::write(&path, case).unwrap();
            if let Err(e) = open(&path).and_then(|rows| rows.collect::<Result<Vec<_>, _>>()) {
                assert!(
                    e.to_string().contains(&format!("case-{k}.{ext}")),
                    "{name} case {k}: {e}"
                );
            }
        }
    }
    // A record batch claiming a 2^60-byte body (fuzz/regressions/arrow): refused by its framing before arrow-rs
    // would allocate it (an allocation failure aborts; it is not a panic to catch).
    let huge = dir.path().join("huge.arrow");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/arrow/huge-body"),
        &huge,
    )
    .unwrap();
    let err = read_all(&huge).unwrap_err().to_string();
    assert!(
        err.contains("huge.arrow") && err.contains("body the file does not hold"),
        "{err}"
    );
    let cut = dir.path().join("cut.arrow");
    let bytes = std::fs::read(fixtures().join("arrow/alpaca.arrow")).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = read_all(&cut).unwrap_err().to_string();
    assert!(err.contains("cut.arrow") && err.contains("Arrow"), "{err}");
}
