//! Qwen3 MoE as FP8 builds release it (tests/fixtures/models/qwen3_moe_fp8, written with its answers by
//! tests/fixtures/scripts/make_fp8_fixture.py): every decoder projection in float8_e4m3fn with one scale per 32 × 32
//! block (f32 for attention, bf16 for the MLPs). FreezeTune reads each pair as the dense tensor transformers'
//! Fp8Dequantize makes of it, trains it to transformers' losses with every tensor trainable and with the bottom
//! layer alone (the backward pass crossing the frozen layers, held in their FP8 codes), and writes a model that
//! keeps the frozen units in FP8, byte for byte, and the trained ones dense, listed in `modules_to_not_convert`.
//! transformers itself loads that model to the loss FreezeTune computes on it.

use candle_core::{DType, Device, Tensor};
use freezetune_core::{plan, FreezeSpec, ModelLayout, PlanOptions};
use freezetune_train::export::export_checkpoint;
use freezetune_train::{Decoder, DecoderConfig, Params};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

const CASE: &str = "qwen3_moe";

fn fp8_dir() -> PathBuf {
    common::fixtures().join("models/qwen3_moe_fp8")
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn reference() -> Value {
    json(&common::fixtures().join("reference/fp8.json"))
}

/// Every tensor of the model (the layers and the rest) trainable, or the layers `layers` names alone.
fn spec(layout: &ModelLayout, layers: Option<&str>) -> FreezeSpec {
    match layers {
        Some(ids) => FreezeSpec {
            layers: Some(ids.into()),
            ..Default::default()
        },
        None => FreezeSpec {
            all_layers: true,
            extra: layout.non_layer_modules.iter().map(|m| m.path.clone()).collect(),
            ..Default::default()
        },
    }
}

fn load(dir: &Path, layers: Option<&str>) -> (ModelLayout, Params, Decoder) {
    let layout = ModelLayout::inspect(dir).unwrap();
    let plan = plan(&layout, &spec(&layout, layers), PlanOptions::default()).unwrap();
    let params = Params::load(dir, &plan, &Device::Cpu, DType::F32).unwrap();
    let model = Decoder::new(DecoderConfig::read(dir).unwrap(), &params, &Device::Cpu).unwrap();
    (layout, params, model)
}

fn loss_of(model: &Decoder) -> f64 {
    let (batch, labels, _) = common::family_batch(CASE);
    let (loss, _) = model.loss(&batch, &labels).unwrap();
    loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// The losses of `steps` plain SGD steps (lr 0.1) on the trainable tensors.
fn sgd(params: &Params, model: &Decoder, steps: usize) -> Vec<f64> {
    let (batch, labels, _) = common::family_batch(CASE);
    (0..steps)
        .map(|_| {
            let (loss, _) = model.loss(&batch, &labels).unwrap();
            let grads = loss.backward().unwrap();
            for (name, var) in &params.vars {
                let g = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("no gradient for {name}"));
                var.set(&(var.as_tensor() - (g * 0.1).unwrap()).unwrap()).unwrap();
            }
            loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
        })
        .collect()
}

fn assert_losses(got: &[f64], want: &Value, what: &str) {
    let want: Vec<f64> = want.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() / w < 1e-5, "{what}: {got:?} vs transformers' {want:?}");
    }
}

#[test]
fn fp8_weights_read_and_train_as_transformers_dequantizes_them() {
    let reference = reference();
    // The layout, and so the plan, see the dense tensors, at the pair's bytes while frozen.
    let layout = ModelLayout::inspect(&fp8_dir()).unwrap();
    assert!(!layout.tensors().any(|t| t.name.ends_with("_scale_inv")));
    let q = layout
        .tensors()
        .find(|t| t.name == "model.layers.1.self_attn.q_proj.weight")
        .unwrap();
    assert_eq!(
        (q.dtype, q.shape.clone()),
        (freezetune_core::safetensors::DType::F32, vec![64, 64])
    );
    assert_eq!(
        q.frozen_block_bytes(),
        Some(64 * 64 + 2 * 64 * 4),
        "codes and per-column block scales"
    );
    let dequantized = reference["dequantized"].as_object().unwrap();
    assert_eq!(dequantized.len(), 39);

    // Every tensor trainable: each FP8 weight is an f32 master from its exact dequantized values.
    let (_, every, model) = load(&fp8_dir(), None);
    assert_eq!(every.fp8_count(), 0);
    assert!((loss_of(&model) - reference["loss"].as_f64().unwrap()).abs() < 1e-5);
    for (name, r) in dequantized {
        let w = every.vars[name].as_tensor().to_dtype(DType::F64).unwrap();
        let sum = w.sum_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(
            (sum - r["sum"].as_f64().unwrap()).abs() < 1e-9,
            "{name}: {sum} vs {}",
            r["sum"]
        );
    }
    assert_losses(
        &sgd(&every, &model, 3),
        &reference["losses_every_tensor"],
        "every tensor",
    );

    // Layer 0 alone: layers 1 and 2 stay in their codes, and the gradient crosses them.
    let (_, bottom, model) = load(&fp8_dir(), Some("0"));
    let held = dequantized.keys().filter(|n| !n.starts_with("model.layers.0.")).count();
    assert_eq!(bottom.fp8_count(), held);
    assert_losses(&sgd(&bottom, &model, 3), &reference["losses_layer_0"], "layer 0 alone");

    // Against the dense fixture with the same layer trainable: each held weight takes a byte a value and its
    // scales in place of f32's four bytes.
    let (_, dense, _) = load(&common::fixtures().join("models").join(CASE), Some("0"));
    let saved: u64 = layout
        .tensors()
        .filter(|t| !t.name.starts_with("model.layers.0.") && t.frozen_block_bytes().is_some())
        .map(|t| 4 * t.params - t.frozen_block_bytes().unwrap())
        .sum();
    assert_eq!(dense.frozen_bytes() - bottom.frozen_bytes(), saved);
}

/// The python of the venv `make test` builds (scripts/python-venv.sh), with transformers.
fn python() -> PathBuf {
    let p = std::env::var_os("FREEZETUNE_LF_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/freezetune-python-venv/bin/python"));
    assert!(
        p.exists(),
        "{} is missing: run `bash scripts/python-venv.sh`, or set FREEZETUNE_LF_PYTHON",
        p.display()
    );
    p
}

/// transformers' loss on the model at `dir` (it dequantizes FP8 on a CPU) for the case's batch. Its dequantized
/// weights keep the scales' dtype (bf16 for the MLPs here): the f32 fixture is cast back to f32, exactly.
fn transformers_loss(dir: &Path) -> f64 {
    let all = json(&common::fixtures().join("reference/families.json"));
    let ids = dir.join("ids.json");
    std::fs::write(&ids, all["cases"][CASE]["input_ids"].to_string()).unwrap();
    let script = "import json, sys, torch\n\
                  from transformers import AutoModelForCausalLM\n\
                  m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).float()\n\
                  m.config._attn_implementation = 'eager'\n\
                  ids = torch.tensor(json.load(open(sys.argv[2])))\n\
                  with torch.no_grad():\n    print(m(input_ids=ids, labels=ids).loss.item())\n";
    let out = Command::new(python())
        .args(["-c", script, dir.to_str().unwrap(), ids.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().lines().last().unwrap().parse().unwrap()
}

#[test]
fn a_trained_model_keeps_its_frozen_fp8_weights_and_loads_in_transformers() {
    // Layers 0 and 2 train (their experts with them); layer 1 stays FP8. transformers 5.6 loads experts stored
    // one linear each in FP8 without their scales (make_fp8_fixture.py), so the layer left in FP8 is the dense one.
    let (layout, params, model) = load(&fp8_dir(), Some("0,2"));
    sgd(&params, &model, 1);
    let trained_loss = loss_of(&model);
    let out = tempfile::tempdir().unwrap();
    let dest = export_checkpoint(&layout, &params, &out.path().join("final")).unwrap();

    let source = common::tensors(&fp8_dir().join("model.safetensors"));
    let written = common::tensors(&dest.join("model.safetensors"));
    for (name, (dtype, bytes)) in &source {
        let frozen = name.starts_with("model.layers.1.") || !name.starts_with("model.layers.");
        if frozen {
            assert_eq!(
                written.get(name),
                Some(&(dtype.clone(), bytes.clone())),
                "{name} is copied as stored"
            );
        } else if name.ends_with("_proj.weight") {
            assert_eq!(written[name].0, "F32", "{name} trained is written dense");
            assert!(!written.contains_key(&format!("{name}_scale_inv")), "{name}");
        }
    }
    let config = json(&dest.join("config.json"));
    let q = &config["quantization_config"];
    assert_eq!(q["quant_method"], "fp8");
    let unconverted: Vec<&str> = q["modules_to_not_convert"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for unit in [
        "lm_head",
        "model.layers.0.self_attn.q_proj",
        "model.layers.2.mlp.experts",
    ] {
        assert!(unconverted.contains(&unit), "{unit} in {unconverted:?}");
    }
    assert!(
        !unconverted.iter().any(|u| u.starts_with("model.layers.1.")),
        "{unconverted:?}"
    );
    assert!(!unconverted.iter().any(|u| u.contains(".experts.")), "{unconverted:?}");

    // Read back: the frozen layer in its codes again, the trained ones dense, and the loss training left.
    let (_, again, model) = load(&dest, Some("0,2"));
    assert_eq!(
        again.fp8_count(),
        7,
        "layer 1's four attention and three MLP projections"
    );
    let reread = loss_of(&model);
    assert!((reread - trained_loss).abs() < 1e-6, "{reread} vs {trained_loss}");
    let theirs = transformers_loss(&dest);
    assert!(
        (theirs - reread).abs() / reread < 1e-5,
        "transformers {theirs} vs FreezeTune {reread}"
    );
}

#[test]
fn damaged_or_unreadable_fp8_checkpoints_are_refused_by_name() {
    let src = fp8_dir();
    let tensors = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let w = "model.layers.1.mlp.down_proj.weight";
    let scales = format!("{w}_scale_inv");
    let write = |edit: &dyn Fn(&mut std::collections::HashMap<String, Tensor>, &mut Value)| {
        let dir = tempfile::tempdir().unwrap();
        let mut config = json(&src.join("config.json"));
        let mut kept: std::collections::HashMap<String, Tensor> = tensors.clone().into_iter().collect();
        edit(&mut kept, &mut config);
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        candle_core::safetensors::save(&kept, dir.path().join("model.safetensors")).unwrap();
        dir
    };
    let refused = |dir: &tempfile::TempDir, words: &[&str]| {
        let e = ModelLayout::inspect(dir.path()).unwrap_err().to_string();
        assert!(words.iter().all(|w| e.contains(w)), "{e}");
    };
    let lone_codes = write(&|t, _| {
        t.remove(&scales);
    });
    refused(&lone_codes, &[w, "without its scales"]);
    let lone_scales = write(&|t, _| {
        t.remove(w);
    });
    refused(&lone_scales, &[&scales, "without their F8_E4M3 weight"]);
    let flat = write(&|t, _| {
        let s = t[&scales].flatten_all().unwrap();
        t.insert(scales.clone(), s);
    });
    refused(&flat, &[w, "one per block"]);
    let no_config = write(&|_, c| {
        c.as_object_mut().unwrap().remove("quantization_config");
    });
    refused(&no_config, &["F8_E4M3", "quantization_config"]);
    let static_scales = write(&|_, c| {
        c["quantization_config"]["activation_scheme"] = "static".into();
    });
    refused(&static_scales, &["activation_scheme"]);

    // A damaged code is found where the weights are read: a not-a-number (0x7f) in a frozen matrix.
    let nan = write(&|t, _| {
        let codes = t[w]
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut bytes: Vec<u8> = codes.iter().map(|_| 0x38).collect();
        bytes[5] = 0x7f;
        let shape = t[w].dims().to_vec();
        t.insert(
            w.into(),
            Tensor::from_raw_buffer(&bytes, DType::F8E4M3, &shape, &Device::Cpu).unwrap(),
        );
    });
    let layout = ModelLayout::inspect(nan.path()).unwrap();
    let plan = plan(&layout, &spec(&layout, Some("0")), PlanOptions::default()).unwrap();
    let e = Params::load(nan.path(), &plan, &Device::Cpu, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains(w) && e.contains("not-a-number"), "{e}");
}
