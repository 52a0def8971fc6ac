//! LLaMA-Factory's own dataset_info.json (0.9.5's `data/` folder, tests/fixtures/data/llamafactory-0.9.5) renders
//! the same training examples through FreezeTune's loader as through LLaMA-Factory's: the same input ids and the
//! same learned tokens, for three of its entries. The expected examples were written once by LLaMA-Factory itself
//! (tests/fixtures/scripts/make_llamafactory_renderings.py), with the template it parses from the model's chat
//! template.

use freezetune_core::run_config::RunConfig;
use freezetune_train::data::{load_run, DataOptions};
use freezetune_train::template::ChatFormatter;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run_config(entry: &str, cutoff: usize) -> RunConfig {
    let dir = tempfile::tempdir().unwrap();
    let info = repo().join("tests/fixtures/data/llamafactory-0.9.5/dataset_info.json");
    let model = repo().join("tests/fixtures/models/qwen2");
    let text = format!(
        "[model]\npath = {model:?}\n\n[freeze]\ntop = 1\n\n[data]\ncutoff_len = {cutoff}\n\n[[data.datasets]]\ndataset_info = {info:?}\nname = \"{entry}\"\n\n[output]\ndir = \"out\"\n"
    );
    let path = dir.path().join("run.toml");
    std::fs::write(&path, text).unwrap();
    RunConfig::read(&path).unwrap()
}

#[test]
fn llamafactorys_own_entries_render_the_examples_its_loader_renders() {
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/fixtures/data/llamafactory-0.9.5/renderings.json")).unwrap(),
    )
    .unwrap();
    let cutoff = expected["cutoff_len"].as_u64().unwrap() as usize;
    let formatter = ChatFormatter::load(&repo().join("tests/fixtures/models/qwen2")).unwrap();
    let entries = expected["entries"].as_object().unwrap();
    assert_eq!(entries.len(), 3);
    for (entry, examples) in entries {
        let config = run_config(entry, cutoff);
        let options = DataOptions {
            format: config.data.format,
            cutoff_len: cutoff,
            vocab_size: usize::MAX,
            train_on_prompt: false,
            formatter: Some(&formatter),
        };
        let ours = load_run(&config, &options).unwrap().examples;
        let theirs = examples.as_array().unwrap();
        assert_eq!(ours.len(), theirs.len(), "{entry}: number of examples");
        for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
            let ids: Vec<u32> = serde_json::from_value(b["input_ids"].clone()).unwrap();
            let labels: Vec<i64> = serde_json::from_value(b["labels"].clone()).unwrap();
            assert_eq!(a.input_ids, ids, "{entry} example {i}: input ids");
            assert_eq!(a.labels, labels, "{entry} example {i}: labels (what is learned)");
        }
    }
}
