//! Helpers shared by the integration tests that check exported checkpoints.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// Each tensor of a single-file checkpoint: its dtype name and raw bytes.
pub fn tensors(file: &Path) -> BTreeMap<String, (String, Vec<u8>)> {
    let bytes = std::fs::read(file).unwrap();
    let header = freezetune_core::safetensors::read_header(file).unwrap();
    let base = 8 + header.header_len as usize;
    header
        .tensors
        .iter()
        .map(|t| {
            let data = bytes[base + t.data_offsets.0 as usize..base + t.data_offsets.1 as usize].to_vec();
            (t.name.clone(), (t.dtype.name().to_string(), data))
        })
        .collect()
}

/// The trainable tensor names of a run (its `freeze_plan.json`).
pub fn trainable(run_dir: &Path) -> Vec<String> {
    let plan: Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("freeze_plan.json")).unwrap()).unwrap();
    plan["trainable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// The freeze mask, proven on the exported checkpoint: every tensor exported in its input dtype, frozen ones
/// byte-identical, trainable ones changed.
pub fn assert_mask(input: &Path, exported: &Path, run_dir: &Path, what: &str) {
    let before = tensors(input);
    let after = tensors(exported);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "{what}: every tensor is exported"
    );
    let trainable = trainable(run_dir);
    assert!(!trainable.is_empty(), "{what}: the plan trains something");
    for (name, (dtype, bytes)) in &before {
        let (out_dtype, out_bytes) = &after[name];
        assert_eq!(dtype, out_dtype, "{what}: {name} keeps the checkpoint's dtype");
        if trainable.contains(name) {
            assert_ne!(bytes, out_bytes, "{what}: {name} is trainable and must change");
        } else {
            assert_eq!(bytes, out_bytes, "{what}: {name} is frozen and must be byte-identical");
        }
    }
}

/// Raw bytes of every tensor of a single-file checkpoint, by name.
pub fn tensor_bytes(file: &Path) -> BTreeMap<String, Vec<u8>> {
    tensors(file).into_iter().map(|(n, (_, b))| (n, b)).collect()
}

/// The tiny llama's reference numbers from PyTorch (`tests/fixtures/reference/parity.json`).
pub fn llama_reference() -> Value {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference/parity.json")).unwrap()).unwrap();
    v["models"]["llama"].clone()
}

/// The reference batch (two examples) as a tokenized JSONL file in `dir`.
pub fn write_reference_data(dir: &Path) -> PathBuf {
    let r = llama_reference();
    let path = dir.join("data.jsonl");
    let lines: Vec<String> = (0..2)
        .map(|i| serde_json::json!({"input_ids": r["input_ids"][i], "labels": r["labels"][i]}).to_string())
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

/// A case of tests/fixtures/reference/families.json: its input ids as a batch with their labels, and transformers'
/// first loss on them.
pub fn family_batch(case: &str) -> (freezetune_train::Batch, Vec<Vec<i64>>, f64) {
    let all: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference/families.json")).unwrap()).unwrap();
    let case = &all["cases"][case];
    let ids: Vec<Vec<u32>> = case["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    let labels = ids.iter().map(|r| r.iter().map(|&v| v as i64).collect()).collect();
    let batch = freezetune_train::Batch {
        lengths: ids.iter().map(Vec::len).collect(),
        input_ids: ids,
    };
    (batch, labels, case["losses"][0].as_f64().unwrap())
}
