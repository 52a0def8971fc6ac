//! Family fixtures as FP8 builds release them (tests/fixtures/models/*_fp8, written with their answers by
//! tests/fixtures/scripts/make_fp8_fixture.py): every decoder projection in float8_e4m3fn with one scale per block.
//! Qwen3 MoE in blocks of 32 (f32 scales for attention, bf16 for the MLPs), DeepSeek-V3 in blocks of 16 (its latent
//! projections ending in partial blocks). FreezeTune reads each pair as the dense tensor transformers'
//! Fp8Dequantize (and DeepSeek's weight_dequant, for partial blocks) makes of it, trains it to PyTorch's losses with
//! every tensor trainable and with the bottom layer alone (the backward pass crossing the frozen layers, held in
//! their FP8 codes), and writes a model that keeps the frozen units in FP8, byte for byte, and the trained ones
//! dense, listed in `modules_to_not_convert`. transformers itself loads that model to the loss FreezeTune computes
//! on it.

use candle_core::{DType, Device, Tensor};
use freezetune_core::{plan, FreezeSpec, ModelLayout, PlanOptions};
use freezetune_train::export::export_checkpoint;
use freezetune_train::{Decoder, DecoderConfig, Params};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

fn fixture(case: &str) -> PathBuf {
    common::fixtures().join("models").join(case)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The case's answers (tests/fixtures/reference/fp8.json).
fn reference(case: &str) -> Value {
    json(&common::fixtures().join("reference/fp8.json"))["cases"][case].clone()
}

/// The family case whose input ids a case's answers are for.
fn family(case: &str) -> String {
    reference(case)["family"].as_str().unwrap().to_string()
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

fn loss_of(model: &Decoder, family: &str) -> f64 {
    let (batch, labels, _) = common::family_batch(family);
    let (loss, _) = model.loss(&batch, &labels).unwrap();
    loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// The losses of `steps` plain SGD steps (lr 0.1) on the trainable tensors.
fn sgd(params: &Params, model: &Decoder, family: &str, steps: usize) -> Vec<f64> {
    let (batch, labels, _) = common::family_batch(family);
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

/// The case's FP8 weights read as their dequantized values and trained to PyTorch's losses: with every tensor
/// trainable (f32 masters from the exact values) and with layer 0 alone (the layers above held in their codes).
fn check(case: &str, block: u64) {
    let (reference, family) = (reference(case), family(case));
    // The layout, and so the plan, see the dense tensors, at what the trainer holds while they are frozen.
    let layout = ModelLayout::inspect(&fixture(case)).unwrap();
    assert!(!layout.tensors().any(|t| t.name.ends_with("_scale_inv")));
    let dequantized = reference["dequantized"].as_object().unwrap();
    for name in dequantized.keys() {
        let t = layout.tensors().find(|t| &t.name == name).unwrap();
        let (rows, cols) = (t.shape[0], t.shape[1]);
        assert_eq!(
            t.dtype,
            freezetune_core::safetensors::DType::F32,
            "{name}: the config's dtype"
        );
        let held = rows * cols + rows.div_ceil(block) * cols * 4;
        assert_eq!(
            t.frozen_block_bytes(),
            Some(held),
            "{name}: codes and per-column block scales"
        );
    }

    // Every tensor trainable: each FP8 weight is an f32 master from its exact dequantized values.
    let (_, every, model) = load(&fixture(case), None);
    assert_eq!(every.fp8_count(), 0);
    let first = loss_of(&model, &family);
    assert!(
        (first - reference["loss"].as_f64().unwrap()).abs() < 1e-5,
        "{case}: {first}"
    );
    for (name, r) in dequantized {
        let w = every.vars[name].as_tensor().to_dtype(DType::F64).unwrap();
        let sum = w.sum_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(
            (sum - r["sum"].as_f64().unwrap()).abs() < 1e-9,
            "{name}: {sum} vs {}",
            r["sum"]
        );
    }
    let every_losses = sgd(&every, &model, &family, 3);
    assert_losses(&every_losses, &reference["losses_every_tensor"], "every tensor");

    // Layer 0 alone: the layers above stay in their codes, and the gradient crosses them.
    let (_, bottom, model) = load(&fixture(case), Some("0"));
    let held = dequantized.keys().filter(|n| !n.starts_with("model.layers.0.")).count();
    assert_eq!(bottom.fp8_count(), held);
    let bottom_losses = sgd(&bottom, &model, &family, 3);
    assert_losses(&bottom_losses, &reference["losses_layer_0"], "layer 0 alone");

    // Against the dense fixture with the same layer trainable: each held weight takes a byte a value and its
    // scales in place of f32's four bytes.
    let (_, dense, _) = load(&fixture(&family), Some("0"));
    let saved: u64 = layout
        .tensors()
        .filter(|t| !t.name.starts_with("model.layers.0.") && t.frozen_block_bytes().is_some())
        .map(|t| 4 * t.params - t.frozen_block_bytes().unwrap())
        .sum();
    assert_eq!(dense.frozen_bytes() - bottom.frozen_bytes(), saved);
}

#[test]
fn qwen3_moe_fp8_reads_and_trains_as_transformers_dequantizes_it() {
    check("qwen3_moe_fp8", 32);
}

/// DeepSeek-V3 as released: the latent projections end in partial blocks (24 rows in blocks of 16, as V3's 576
/// rows in blocks of 128), read as DeepSeek's own weight_dequant takes them.
#[test]
fn deepseek_v3_fp8_with_partial_blocks_reads_and_trains_as_deepseek_dequantizes_it() {
    let layout = ModelLayout::inspect(&fixture("deepseek_v3_fp8")).unwrap();
    let kv = "model.layers.1.self_attn.kv_a_proj_with_mqa.weight";
    assert_eq!(layout.tensors().find(|t| t.name == kv).unwrap().shape, [24, 64]);
    check("deepseek_v3_fp8", 16);
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
    std::fs::write(&ids, all["cases"]["qwen3_moe"]["input_ids"].to_string()).unwrap();
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

/// The modules transformers would run as FP8 (FP8Linear, FP8Experts) on a GPU that runs FP8, for the model at
/// `dir`: built on the meta device and converted as its FP8 quantizer converts a pre-quantized model, with the
/// config's `modules_to_not_convert`.
fn transformers_fp8_modules(dir: &Path) -> Vec<String> {
    let script = "import json, sys, torch\n\
                  from transformers import AutoConfig, AutoModelForCausalLM, FineGrainedFP8Config\n\
                  from transformers.integrations.finegrained_fp8 import replace_with_fp8_linear\n\
                  cfg = AutoConfig.from_pretrained(sys.argv[1])\n\
                  q = dict(cfg.quantization_config)\n\
                  del cfg.quantization_config\n\
                  qc = FineGrainedFP8Config(activation_scheme=q['activation_scheme'], \
                  weight_block_size=tuple(q['weight_block_size']), \
                  modules_to_not_convert=q['modules_to_not_convert'])\n\
                  with torch.device('meta'):\n    m = AutoModelForCausalLM.from_config(cfg)\n\
                  replace_with_fp8_linear(m, modules_to_not_convert=qc.modules_to_not_convert, \
                  quantization_config=qc, pre_quantized=True)\n\
                  print(json.dumps(sorted(n for n, x in m.named_modules() if type(x).__name__.startswith('FP8'))))\n";
    let out = Command::new(python())
        .args(["-c", script, dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim().lines().last().unwrap()).unwrap()
}

#[test]
fn a_trained_model_keeps_its_frozen_fp8_weights_and_loads_in_transformers() {
    // Layers 0 and 2 train (their experts with them); layer 1 stays FP8. transformers 5.6 loads experts stored
    // one linear each in FP8 without their scales (make_fp8_fixture.py), so the layer left in FP8 is the dense one.
    let (layout, params, model) = load(&fixture("qwen3_moe_fp8"), Some("0,2"));
    sgd(&params, &model, "qwen3_moe", 1);
    let trained_loss = loss_of(&model, "qwen3_moe");
    let out = tempfile::tempdir().unwrap();
    let dest = export_checkpoint(&layout, &params, &out.path().join("final")).unwrap();

    let source = common::tensors(&fixture("qwen3_moe_fp8").join("model.safetensors"));
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
    let reread = loss_of(&model, "qwen3_moe");
    assert!((reread - trained_loss).abs() < 1e-6, "{reread} vs {trained_loss}");
    let theirs = transformers_loss(&dest);
    assert!(
        (theirs - reread).abs() / reread < 1e-5,
        "transformers {theirs} vs FreezeTune {reread}"
    );
    // On a GPU that runs FP8, transformers would convert exactly the units the written file holds in FP8.
    let stored = written_f8_units(&dest);
    let converted: std::collections::BTreeSet<String> = transformers_fp8_modules(&dest).into_iter().collect();
    assert_eq!(
        converted, stored,
        "modules transformers converts vs the units written in FP8"
    );
    assert_eq!(stored.len(), 7, "{stored:?}");
}

/// The units (fp8.rs's `conversion_unit`) of the F8_E4M3 tensors of the model written at `dir`.
fn written_f8_units(dir: &Path) -> std::collections::BTreeSet<String> {
    common::tensors(&dir.join("model.safetensors"))
        .into_iter()
        .filter(|(_, (dtype, _))| dtype == "F8_E4M3")
        .map(|(name, _)| freezetune_core::fp8::conversion_unit(&name, "qwen3_moe"))
        .collect()
}

#[test]
fn damaged_or_unreadable_fp8_checkpoints_are_refused_by_name() {
    let src = fixture("qwen3_moe_fp8");
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
