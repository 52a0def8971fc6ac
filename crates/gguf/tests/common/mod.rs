//! What the GGUF tests share: the reference checkpoints, tiny models of every family with the reference
//! tokenizer, FreezeTune's own logits and greedy tokens, and the independent checker (llama.cpp and the `gguf`
//! package, in the venv `scripts/python-venv.sh` builds; `make test` builds it first).
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
        .unwrap_or_else(|| PathBuf::from("/var/tmp/freezetune-python-venv/bin/python"));
    assert!(
        p.exists(),
        "{} is missing: run `bash scripts/python-venv.sh` (it builds llama.cpp's Python binding and the gguf \
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

/// A family's reference model (tests/fixtures/models, made with transformers) with the llama fixture's tokenizer and
/// config.json changed by `edit` to what llama.cpp hard-codes for the family.
pub fn family_variant(dir: &Path, case: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(case).join(f), dir.join(f)).unwrap();
    }
    for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
        std::fs::copy(fixture("llama").join(f), dir.join(f)).unwrap();
    }
    let path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, config.to_string()).unwrap();
    dir.to_path_buf()
}

/// Rewrites a model's weights without the tensors `drop` names.
pub fn drop_tensors(model: &Path, drop: impl Fn(&str) -> bool) {
    let path = model.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    tensors.retain(|name, _| !drop(name));
    candle_core::safetensors::save(&tensors, &path).unwrap();
}

/// The newer families' reference models as llama.cpp runs them (what it hard-codes set in config.json), by their
/// GGUF architecture: Gemma 2 (query scale 1/sqrt(head_dim), tied output), Gemma 3 (every 6th layer full, local
/// rope base 10000), SmolLM3 (every 4th layer NoPE: none of three), Granite (no MLP biases), OLMo 2, LFM2 (no
/// convolution biases), Qwen3 MoE (experts on every layer), gpt-oss (YaRN rounded), Mixtral (llama.cpp's llama,
/// no window), OLMoE, GLM-4.5 (one expert group, a prediction layer), EXAONE 4 (no window), ERNIE 4.5 (no biases).
pub fn newer_family_models(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    let gemma2 = family_variant(&dir.join("gemma2"), "gemma2", |c| {
        c["query_pre_attn_scalar"] = 16.into();
        c["tie_word_embeddings"] = true.into();
    });
    drop_tensors(&gemma2, |name| name == "lm_head.weight");
    let gemma3 = family_variant(&dir.join("gemma3"), "gemma3", |c| {
        c["query_pre_attn_scalar"] = 16.into();
        let mut types = vec!["sliding_attention"; 5];
        types.push("full_attention");
        c["layer_types"] = serde_json::json!(types);
        c["rope_parameters"]["sliding_attention"]["rope_theta"] = 10000.0.into();
    });
    let smollm3 = family_variant(&dir.join("smollm3"), "smollm3", |c| {
        c["no_rope_layers"] = serde_json::json!([1, 1, 1])
    });
    let granite = family_variant(&dir.join("granite"), "granite", |c| c["mlp_bias"] = false.into());
    drop_tensors(&granite, |name| {
        name.starts_with("model.layers.") && name.contains(".mlp.") && name.ends_with(".bias")
    });
    let olmo2 = family_variant(&dir.join("olmo2"), "olmo2", |_| {});
    // llama.cpp's LFM2 has no convolution biases: the reference model without them (they are all the family's
    // biases; its attention has none).
    let lfm2 = family_variant(&dir.join("lfm2"), "lfm2", |c| c["conv_bias"] = false.into());
    drop_tensors(&lfm2, |name| {
        name.starts_with("model.layers.") && name.ends_with(".bias")
    });
    // gpt-oss with YaRN's ramp rounded to whole dimensions (`truncate: true`), as llama.cpp always computes it; the
    // released `truncate: false` exports with a warning.
    let gpt_oss = family_variant(&dir.join("gpt_oss"), "gpt_oss", |c| {
        c["rope_parameters"]["truncate"] = true.into()
    });
    // Mixtral without a sliding window (llama.cpp's llama has none; Mixtral 8x7B's own config has none either).
    let mixtral = family_variant(&dir.join("mixtral"), "mixtral", |c| {
        c["sliding_window"] = serde_json::Value::Null
    });
    let olmoe = olmoe_without_gqa(&dir.join("olmoe"));
    // EXAONE 4 as llama.cpp runs every model but the 64-layer one: no window, rope on every layer (EXAONE 4.0 1.2B).
    let exaone4 = family_variant(&dir.join("exaone4"), "exaone4", |c| {
        c["sliding_window"] = serde_json::Value::Null;
        c["layer_types"] = serde_json::json!(["full_attention", "full_attention", "full_attention", "full_attention"]);
    });
    // ERNIE 4.5 without biases (llama.cpp's ernie4_5 has none on the MLP; ERNIE 4.5 0.3B has none).
    let ernie = family_variant(&dir.join("ernie4_5"), "ernie4_5", |c| c["use_bias"] = false.into());
    drop_tensors(&ernie, |name| name.ends_with(".bias"));
    vec![
        ("ernie4_5", ernie),
        ("exaone4", exaone4),
        ("glm4moe", glm4_moe_as_released(&dir.join("glm4moe"))),
        ("gpt-oss", gpt_oss),
        ("llama", mixtral),
        ("olmoe", olmoe),
        ("gemma2", gemma2),
        ("gemma3", gemma3),
        ("smollm3", smollm3),
        ("granite", granite),
        ("olmo2", olmo2),
        ("lfm2", lfm2),
        ("qwen3moe", qwen3_moe_all_sparse(&dir.join("qwen3moe"))),
    ]
}

/// GLM-4.5's reference model as llama.cpp's glm4moe runs it (choosing among all experts: one group), and as Z.ai
/// releases it: with a multi-token-prediction layer after the last, which export leaves behind.
pub fn glm4_moe_as_released(dir: &Path) -> PathBuf {
    let model = family_variant(dir, "glm4_moe", |c| {
        c["n_group"] = 1.into();
        c["topk_group"] = 1.into();
        c["num_nextn_predict_layers"] = 1.into();
    });
    let path = model.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    copy_prefix(&mut tensors, "model.layers.2.", "model.layers.3.");
    let eh = candle_core::Tensor::zeros((64, 128), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    tensors.insert("model.layers.3.eh_proj.weight".into(), eh);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    model
}

/// Qwen3 MoE's reference model with experts on every layer, as llama.cpp's qwen3moe has them: its dense layer 1
/// takes layer 0's router and experts (the values differ from layer 0's after layer 0 has run).
pub fn qwen3_moe_all_sparse(dir: &Path) -> PathBuf {
    all_sparse(dir, "qwen3_moe")
}

/// [`qwen3_moe_all_sparse`] of the fixture `case` (the FP8 one too: layer 0's scales go with its weights).
pub fn all_sparse(dir: &Path, case: &str) -> PathBuf {
    let model = family_variant(dir, case, |c| c["mlp_only_layers"] = serde_json::json!([]));
    let path = model.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    tensors.retain(|name, _| !name.starts_with("model.layers.1.mlp."));
    copy_prefix(&mut tensors, "model.layers.0.mlp.", "model.layers.1.mlp.");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    model
}

/// Every tensor under `from` copied under `to`.
fn copy_prefix(tensors: &mut std::collections::HashMap<String, candle_core::Tensor>, from: &str, to: &str) {
    let copies: Vec<(String, candle_core::Tensor)> = tensors
        .iter()
        .filter_map(|(n, t)| n.strip_prefix(from).map(|rest| (format!("{to}{rest}"), t.clone())))
        .collect();
    tensors.extend(copies);
}

/// OLMoE's reference model (4 query heads sharing 2 key/value heads) as the same function with 4 key/value heads, as
/// llama.cpp's olmoe needs them: each key/value head's rows of k_proj and v_proj, and its part of the k norm (taken
/// over the whole projection, whose RMS repeating a head leaves unchanged), repeated for each query head it serves.
pub fn olmoe_without_gqa(dir: &Path) -> PathBuf {
    let model = family_variant(dir, "olmoe", |c| {
        c["num_key_value_heads"] = c["num_attention_heads"].clone()
    });
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("olmoe").join("config.json")).unwrap()).unwrap();
    let (heads, kv) = (
        config["num_attention_heads"].as_u64().unwrap() as usize,
        config["num_key_value_heads"].as_u64().unwrap() as usize,
    );
    let path = model.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    for (name, t) in tensors.iter_mut() {
        let shared = [
            ".self_attn.k_proj.weight",
            ".self_attn.v_proj.weight",
            ".self_attn.k_norm.weight",
        ];
        if !shared.iter().any(|s| name.ends_with(s)) {
            continue;
        }
        let per_head = t.dim(0).unwrap() / kv;
        let blocks: Vec<candle_core::Tensor> = (0..heads)
            .map(|h| t.narrow(0, (h / (heads / kv)) * per_head, per_head).unwrap())
            .collect();
        *t = candle_core::Tensor::cat(&blocks, 0).unwrap();
    }
    candle_core::safetensors::save(&tensors, &path).unwrap();
    model
}

/// The largest difference between two runs' logits.
pub fn max_abs(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let rows = a.iter().zip(b);
    rows.flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs() as f64))
        .fold(0.0, f64::max)
}
