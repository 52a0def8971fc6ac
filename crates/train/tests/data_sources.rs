//! The same records from Parquet, CSV, TSV and JSON Lines become the same training examples: the pyarrow- and
//! csv-written fixtures (tests/fixtures/data) against a JSONL file of what pyarrow read from them.

use freezetune_core::run_config::DataFormat;
use freezetune_train::data::{load, DataOptions};
use freezetune_train::template::ChatFormatter;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What training uses: the model's chat template, auto-detected formats.
fn options(formatter: &ChatFormatter) -> DataOptions<'_> {
    DataOptions {
        format: DataFormat::Auto,
        cutoff_len: 512,
        vocab_size: usize::MAX,
        train_on_prompt: false,
        formatter: Some(formatter),
    }
}

#[test]
fn parquet_csv_and_tsv_train_the_examples_their_jsonl_trains() {
    let model = repo().join("tests/fixtures/models/llama");
    let formatter = ChatFormatter::load(&model).unwrap();
    let options = options(&formatter);
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

/// A run config named `name` in `dir` on `model` with this `[data]` section, read as the CLI reads it.
fn write_config(
    dir: &Path,
    model: &Path,
    name: &str,
    data_section: &str,
) -> freezetune_core::Result<freezetune_core::run_config::RunConfig> {
    let text =
        format!("[model]\npath = {model:?}\n[freeze]\ntop = 1\n[data]\n{data_section}\n[output]\ndir = \"run\"\n");
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    freezetune_core::run_config::RunConfig::read(&path)
}

#[test]
fn a_run_mixes_its_datasets_each_with_its_own_mapping() {
    let model = repo().join("tests/fixtures/models/llama");
    let data = repo().join("tests/fixtures/data");
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, data_section: &str| write_config(dir.path(), &model, name, data_section);
    let config = write(
        "mixed.toml",
        &format!(
            "[[data.datasets]]\ndataset_info = {:?}\nname = \"identity\"\n\
             [[data.datasets]]\npath = {:?}\nlimit = 4\n\
             [[data.datasets]]\npath = {:?}\nformatting = \"sharegpt\"\n",
            data.join("llamafactory/dataset_info.json"),
            data.join("alpaca.parquet"),
            data.join("sharegpt.parquet"),
        ),
    )
    .unwrap();
    let formatter = ChatFormatter::load(&model).unwrap();
    let options = options(&formatter);
    let mixed = freezetune_train::data::load_run(&config, &options).unwrap().examples;
    let identity = load(&data.join("llamafactory/identity.json"), &options)
        .unwrap()
        .examples;
    let alpaca = load(&data.join("alpaca.parquet"), &options).unwrap().examples;
    let sharegpt = load(&data.join("sharegpt.parquet"), &options).unwrap().examples;
    let want: Vec<_> = identity
        .into_iter()
        .chain(alpaca.into_iter().take(4))
        .chain(sharegpt)
        .collect();
    assert_eq!(mixed, want, "concatenated in order, the parquet file cut to its limit");

    let err = write(
        "both.toml",
        "train = \"x.jsonl\"\n[[data.datasets]]\npath = \"y.jsonl\"",
    )
    .unwrap_err();
    assert!(err.to_string().contains("both `train` and [[data.datasets]]"), "{err}");
    let err = write("neither.toml", "format = \"auto\"").unwrap_err();
    assert!(err.to_string().contains("needs `train`"), "{err}");
    let err = write(
        "column.toml",
        "[[data.datasets]]\npath = \"y.jsonl\"\ncolumns = { answer = \"a\" }",
    )
    .unwrap_err();
    assert!(err.to_string().contains("unknown field `answer`"), "{err}");
}

#[test]
fn the_eval_set_comes_from_a_split_of_another_dataset_and_only_one_eval_source_is_allowed() {
    let model = repo().join("tests/fixtures/models/llama");
    let data = repo().join("tests/fixtures/data");
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, data_section: &str| write_config(dir.path(), &model, name, data_section);
    // Train on the DatasetDict's train split, evaluate on its test split (OpenAI messages).
    let dict = data.join("arrow/dict");
    let config = write(
        "split.toml",
        &format!("[[data.datasets]]\npath = {dict:?}\n[[data.eval_datasets]]\npath = {dict:?}\nsplit = \"test\"\n"),
    )
    .unwrap();
    let formatter = ChatFormatter::load(&model).unwrap();
    let options = options(&formatter);
    let eval = freezetune_train::data::load_eval_datasets(&config, &options)
        .unwrap()
        .examples;
    let train = freezetune_train::data::load_run(&config, &options).unwrap().examples;
    let messages = load(&data.join("messages.parquet"), &options).unwrap().examples;
    assert_eq!(eval, messages, "the test split holds the messages rows");
    assert_eq!(train.len(), 2, "the train split's two conversations");

    for (name, section) in [
        (
            "file+split.toml",
            "train = \"x.jsonl\"\neval = \"e.jsonl\"\neval_split = 0.1",
        ),
        (
            "file+datasets.toml",
            "train = \"x.jsonl\"\neval = \"e.jsonl\"\n[[data.eval_datasets]]\npath = \"e.jsonl\"",
        ),
    ] {
        let err = write(name, section).unwrap_err().to_string();
        assert!(err.contains("more than one evaluation set"), "{name}: {err}");
    }
    let err = write(
        "bad-eval.toml",
        "train = \"x.jsonl\"\n[[data.eval_datasets]]\nname = \"orphan\"",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("data.eval_datasets[0]"), "{err}");
}
