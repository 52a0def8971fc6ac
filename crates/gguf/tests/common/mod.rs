//! What the GGUF tests share: the reference checkpoints, tiny models of every family with the reference
//! tokenizer, FreezeTune's own logits and greedy tokens, and the independent checker (llama.cpp and the `gguf`
//! package, in the venv `scripts/gguf-venv.sh` builds; `make test` builds it first).
#![allow(dead_code)]

use freezetune_core::synth::{write_checkpoint, Family, SynthSpec};
use freezetune_train::generate::{GenerateOptions, Generator};
use freezetune_train::Batch;
use serde_json::Value;
use std::path::{Path, PathBuf};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures/models").join(name)
}

/// The venv's python. A missing venv fails the test with what to run: these tests are the only check that
/// llama.cpp reads what FreezeTune writes.
pub fn python() -> PathBuf {
    let p = std::env::var_os("FREEZETUNE_GGUF_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/freezetune-gguf-venv/bin/python"));
    assert!(
        p.exists(),
        "{} is missing: run `bash scripts/gguf-venv.sh` (it builds llama.cpp's Python binding and the gguf \
         package once), or set FREEZETUNE_GGUF_PYTHON",
        p.display()
    );
    p
}

/// Runs one of tests/gguf/*.py with the venv's python; its stdout is JSON.
pub fn run_py(script: &str, args: &[&str]) -> Value {
    let out = std::process::Command::new(python())
        .arg(repo().join("tests/gguf").join(script))
        .args(args)
        .output()
        .expect("python starts");
    assert!(
        out.status.success(),
        "{script} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// llama.cpp's view of a file: metadata, tensors, logits of `ids`, `greedy` tokens after them, `text`'s ids.
pub fn llama_cpp(gguf: &Path, ids: &[u32], greedy: usize, text: &str) -> Value {
    let req = gguf.with_extension("request.json");
    let body = serde_json::json!({"ids": ids, "greedy": greedy, "text": text});
    std::fs::write(&req, body.to_string()).unwrap();
    run_py("llama_cpp_check.py", &[gguf.to_str().unwrap(), req.to_str().unwrap()])
}

/// A tiny model of `family` with the reference tokenizer and chat template (synth checkpoints have none).
pub fn tiny_model(dir: &Path, family: Family, hidden: u64) -> PathBuf {
    let mut spec = SynthSpec::tiny(family, 3);
    spec.hidden = hidden;
    spec.intermediate = hidden * 2;
    write_checkpoint(dir, &spec).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
        std::fs::copy(fixture("llama").join(f), dir.join(f)).unwrap();
    }
    dir.to_path_buf()
}

/// FreezeTune's logits (f32 on the CPU) for every position of `ids`.
pub fn freezetune_logits(model: &Path, ids: &[u32]) -> Vec<Vec<f32>> {
    let g = Generator::load(model, &candle_core::Device::Cpu).unwrap();
    let batch = Batch {
        input_ids: vec![ids.to_vec()],
        lengths: vec![ids.len()],
    };
    g.model()
        .forward(&batch)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap()
}

pub fn freezetune_greedy(model: &Path, ids: &[u32], n: usize) -> Vec<u32> {
    let g = Generator::load(model, &candle_core::Device::Cpu).unwrap();
    let o = GenerateOptions {
        max_new_tokens: n,
        temperature: 0.0,
        seed: 0,
        chat: false,
    };
    g.generate_ids(ids, &o).unwrap()
}

/// The largest absolute difference between two logit tables.
pub fn max_diff(a: &[Vec<f32>], b: &Value) -> f64 {
    let b: Vec<Vec<f64>> = serde_json::from_value(b.clone()).unwrap();
    assert_eq!(a.len(), b.len(), "positions");
    a.iter()
        .zip(&b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len(), "vocab");
            x.iter().zip(y).map(|(p, q)| (*p as f64 - q).abs())
        })
        .fold(0.0, f64::max)
}

pub fn ids_of(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

/// The reference tokenizer's ids for a text (no special tokens added).
pub fn hf_ids(model: &Path, text: &str) -> Vec<u32> {
    let t = tokenizers::Tokenizer::from_file(model.join("tokenizer.json")).unwrap();
    t.encode(text, false).unwrap().get_ids().to_vec()
}

pub const SAMPLE: &str = "Hello world, the cat sat on 12345 mats.\nWhat is 3 plus 4? It's 7!";
pub const PROMPT: [u32; 8] = [5, 17, 100, 200, 33, 7, 301, 44];
