//! gpt-oss as OpenAI releases it, its experts in MXFP4 (tests/fixtures/models/gpt_oss_mxfp4, written with its
//! answers by tests/fixtures/scripts/make_mxfp4_fixture.py from transformers' own loader): FreezeTune reads each
//! packed pair as the dense tensor transformers unpacks, computes transformers' loss on it, trains it, and writes
//! a model that holds the experts dense and says nothing of MXFP4 any more.

use candle_core::{DType, Device, Tensor};
use freezetune_core::{plan, FreezeSpec, ModelLayout, PlanOptions};
use freezetune_train::export::export_checkpoint;
use freezetune_train::loss::causal_lm_loss;
use freezetune_train::{Batch, Decoder, DecoderConfig, Params};
use serde_json::Value;
use std::path::{Path, PathBuf};

mod common;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The gpt_oss case's input ids (families.json), as a batch and its labels.
fn batch() -> (Batch, Vec<Vec<i64>>) {
    let (batch, labels, _) = common::family_batch("gpt_oss");
    (batch, labels)
}

/// The model at `dir` with `spec`'s tensors trainable, and its loss on the batch.
fn load(dir: &Path, spec: &FreezeSpec) -> (ModelLayout, Params, f64) {
    let layout = ModelLayout::inspect(dir).unwrap();
    let plan = plan(&layout, spec, PlanOptions::default()).unwrap();
    let params = Params::load(dir, &plan, &Device::Cpu, DType::F32).unwrap();
    let model = Decoder::new(DecoderConfig::read(dir).unwrap(), &params, &Device::Cpu).unwrap();
    let (batch, labels) = batch();
    let (loss, _) = causal_lm_loss(&model.forward_logits(&batch).unwrap(), &labels).unwrap();
    let loss = loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    (layout, params, loss)
}

#[test]
fn packed_experts_read_as_transformers_unpacks_them_and_export_dense() {
    let dir = fixtures().join("models/gpt_oss_mxfp4");
    let reference = json(&fixtures().join("reference/mxfp4.json"));
    let top = FreezeSpec {
        layers: Some("1".into()),
        ..Default::default()
    };
    let (layout, params, loss) = load(&dir, &top);
    let want = reference["loss"].as_f64().unwrap();
    assert!((loss - want).abs() / want < 1e-5, "loss {loss} vs transformers' {want}");
    // The frozen layer's experts stay in their blocks, and compute what the unpacked tensors do.
    assert_eq!(params.packed_count(), 2);
    let all = FreezeSpec {
        all_layers: true,
        ..Default::default()
    };
    let (_, dense, dense_loss) = load(&dir, &all);
    assert_eq!(dense.packed_count(), 0);
    assert!(
        (dense_loss - loss).abs() < 1e-6,
        "held packed {loss}, unpacked {dense_loss}"
    );
    // Against the same layer frozen dense (the f32 fixture the packed one was made from): the frozen experts take
    // their packed bytes (17 per 32 values) in place of f32's 128; everything else is the same.
    let (_, unpacked_fixture, _) = load(&fixtures().join("models/gpt_oss"), &top);
    let (packed_bytes, dense_bytes) = (params.frozen_bytes(), unpacked_fixture.frozen_bytes());
    let experts_dense = 4 * 64 * 192 * 4 + 4 * 96 * 64 * 4;
    let experts_packed = 4 * 192 * 2 * 17 + 4 * 64 * 3 * 17;
    assert_eq!(dense_bytes - packed_bytes, (experts_dense - experts_packed) as u64);
    let held = layout
        .tensors()
        .find(|t| t.name == "model.layers.0.mlp.experts.gate_up_proj")
        .unwrap();
    assert_eq!(
        held.frozen_block_bytes(),
        Some(4 * 192 * 2 * 17),
        "4 experts × 192 rows × 2 groups of 16 + 1 bytes"
    );
    // The layout, and so the plan, see the dense tensors only.
    let names: Vec<&str> = layout.tensors().map(|t| t.name.as_str()).collect();
    assert!(
        !names.iter().any(|n| n.ends_with("_blocks") || n.ends_with("_scales")),
        "{names:?}"
    );
    let unpacked = reference["dequantized"].as_object().unwrap();
    assert_eq!(unpacked.len(), 4);
    for (name, r) in unpacked {
        let info = layout.tensors().find(|t| &t.name == name).unwrap();
        let shape: Vec<u64> = r["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(info.shape, shape, "{name}");
    }

    // Trained top layer (its experts included), frozen bottom one: the written model holds every expert dense,
    // the frozen ones exactly as transformers unpacked them.
    params.vars.values().for_each(|v| {
        v.set(&(v.as_tensor() * 1.5).unwrap()).unwrap();
    });
    let out = tempfile::tempdir().unwrap();
    let dest = export_checkpoint(&layout, &params, &out.path().join("final")).unwrap();
    let config = json(&dest.join("config.json"));
    assert!(config.get("quantization_config").is_none(), "{config}");
    let written = candle_core::safetensors::load(dest.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(!written.keys().any(|n| n.ends_with("_blocks") || n.ends_with("_scales")));
    let frozen = "model.layers.0.mlp.experts.gate_up_proj";
    let w: &Tensor = &written[frozen];
    assert_eq!(w.dtype(), DType::BF16);
    let w = w.to_dtype(DType::F64).unwrap();
    let sum = w.sum_all().unwrap().to_scalar::<f64>().unwrap();
    let sum_sq = w.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
    assert_eq!(sum, unpacked[frozen]["sum"].as_f64().unwrap());
    assert_eq!(sum_sq, unpacked[frozen]["sum_sq"].as_f64().unwrap());
    let trained = "model.layers.1.mlp.experts.down_proj";
    let t = written[trained].to_dtype(DType::F64).unwrap();
    let t_sum = t.sum_all().unwrap().to_scalar::<f64>().unwrap();
    let want_sum = unpacked[trained]["sum"].as_f64().unwrap() * 1.5;
    assert!(
        (t_sum - want_sum).abs() < 1e-3 * want_sum.abs().max(1.0),
        "{t_sum} vs {want_sum}"
    );
    // The written folder reads back as an ordinary dense gpt-oss.
    let (_, _, _) = load(&dest, &top);
}

#[test]
fn a_lone_or_misshapen_packed_tensor_is_refused_by_name() {
    let src = fixtures().join("models/gpt_oss_mxfp4");
    let tensors = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let write = |drop: &str, reshape: Option<&str>| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
        let mut kept: std::collections::HashMap<String, Tensor> = tensors.clone().into_iter().collect();
        kept.remove(drop);
        if let Some(name) = reshape {
            let t = &kept[name];
            let n = t.elem_count();
            kept.insert(name.into(), t.reshape(n).unwrap());
        }
        candle_core::safetensors::save(&kept, dir.path().join("model.safetensors")).unwrap();
        dir
    };
    let lone = write("model.layers.0.mlp.experts.down_proj_scales", None);
    let e = ModelLayout::inspect(lone.path()).unwrap_err().to_string();
    assert!(
        e.contains("model.layers.0.mlp.experts.down_proj_blocks") && e.contains("without"),
        "{e}"
    );
    let flat = write("", Some("model.layers.1.mlp.experts.gate_up_proj_scales"));
    let e = ModelLayout::inspect(flat.path()).unwrap_err().to_string();
    assert!(
        e.contains("model.layers.1.mlp.experts.gate_up_proj") && e.contains("do not pair"),
        "{e}"
    );
}
