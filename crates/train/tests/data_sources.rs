//! The same records from Parquet, CSV, TSV and JSON Lines become the same training examples: the pyarrow- and
//! csv-written fixtures (tests/fixtures/data) against a JSONL file of what pyarrow read from them.

use freezetune_core::run_config::DataFormat;
use freezetune_train::data::{load, DataOptions};
use freezetune_train::template::ChatFormatter;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn parquet_csv_and_tsv_train_the_examples_their_jsonl_trains() {
    let model = repo().join("tests/fixtures/models/llama");
    let formatter = ChatFormatter::load(&model).unwrap();
    let options = DataOptions {
        format: DataFormat::Auto,
        cutoff_len: 512,
        vocab_size: usize::MAX,
        train_on_prompt: false,
        formatter: Some(&formatter),
    };
    let data = repo().join("tests/fixtures/data");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("expected.json")).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, canonical) in [
        ("alpaca.parquet", "alpaca.parquet"),
        ("alpaca.csv", "alpaca.csv"),
        ("alpaca.tsv", "alpaca.tsv"),
        ("sharegpt.parquet", "sharegpt.parquet"),
        ("messages.parquet", "messages.parquet"),
    ] {
        let jsonl = dir.path().join(format!("{name}.jsonl"));
        let lines: Vec<String> = expected["files"][canonical]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.to_string())
            .collect();
        std::fs::write(&jsonl, lines.join("\n")).unwrap();
        let ours = load(&data.join(name), &options).unwrap().examples;
        let reference = load(&jsonl, &options).unwrap().examples;
        assert!(!ours.is_empty(), "{name}");
        assert_eq!(ours, reference, "{name}");
    }
}
