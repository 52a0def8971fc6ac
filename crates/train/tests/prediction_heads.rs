//! Checkpoints as released with a multi-token-prediction head transformers drops on load. GLM-4.5: after the last
//! decoder layer, `num_nextn_predict_layers` layers (`model.layers.N.*`, with `eh_proj`, `enorm`, `hnorm`,
//! `shared_head`), and every sparse layer's router holds `e_score_correction_bias`, a buffer. Qwen3-Next (and
//! Qwen3.5): `mtp.*`. None of them is a parameter: the layout never counts or plans them, training never loads the
//! prediction heads, and the exported model holds them byte for byte as they were. The glm4_moe and qwen3_next
//! fixtures (make_family_reference.py) with prediction heads added.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{family_batch, fixtures, tensors};
use freezetune_core::{plan, FreezeSpec, ModelLayout, PlanOptions};
use freezetune_train::export::export_checkpoint;
use freezetune_train::{Decoder, DecoderConfig, Params};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

const PREDICTION: &str = "model.layers.3.";

/// The fixture with a prediction layer 3 (a copy of layer 2's tensors plus the MTP's own) and, where
/// `declared`, config.json saying so.
fn released(dir: &Path, declared: bool) {
    let source = fixtures().join("models/glm4_moe");
    let mut weights = candle_core::safetensors::load(source.join("model.safetensors"), &Device::Cpu).unwrap();
    let layer2: Vec<(String, Tensor)> = weights
        .iter()
        .filter_map(|(n, t)| {
            n.strip_prefix("model.layers.2.")
                .map(|rest| (rest.to_string(), t.clone()))
        })
        .collect();
    for (rest, t) in layer2 {
        weights.insert(format!("{PREDICTION}{rest}"), (t * 0.5).unwrap());
    }
    let filled = |shape: &[usize], v: f32| Tensor::full(v, shape, &Device::Cpu).unwrap();
    let extra: HashMap<&str, Tensor> = HashMap::from([
        ("eh_proj.weight", filled(&[64, 128], 0.01)),
        ("enorm.weight", filled(&[64], 1.5)),
        ("hnorm.weight", filled(&[64], 0.5)),
        ("shared_head.norm.weight", filled(&[64], 2.0)),
    ]);
    for (name, t) in extra {
        weights.insert(format!("{PREDICTION}{name}"), t);
    }
    candle_core::safetensors::save(&weights, dir.join("model.safetensors")).unwrap();
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("config.json")).unwrap()).unwrap();
    if declared {
        config["num_nextn_predict_layers"] = 1.into();
    }
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

fn every_tensor(layout: &ModelLayout) -> FreezeSpec {
    FreezeSpec {
        all_layers: true,
        extra: layout.non_layer_modules.iter().map(|m| m.path.clone()).collect(),
        ..Default::default()
    }
}

#[test]
fn the_prediction_layer_and_the_routers_buffers_are_never_planned_loaded_or_changed() {
    let dir = tempfile::tempdir().unwrap();
    released(dir.path(), true);
    let layout = ModelLayout::inspect(dir.path()).unwrap();
    assert_eq!((layout.num_layers, layout.layers.len()), (3, 3));
    assert!(layout.warnings.is_empty(), "{:?}", layout.warnings);
    let unplanned: Vec<&str> = layout.unplanned.iter().map(|t| t.name.as_str()).collect();
    let buffers = [
        "model.layers.1.mlp.gate.e_score_correction_bias",
        "model.layers.2.mlp.gate.e_score_correction_bias",
    ];
    for name in buffers {
        assert!(unplanned.contains(&name), "{unplanned:?}");
    }
    let prediction = unplanned.iter().filter(|n| n.starts_with(PREDICTION)).count();
    assert_eq!(prediction + buffers.len(), unplanned.len(), "{unplanned:?}");
    assert!(unplanned.contains(&"model.layers.3.eh_proj.weight"));
    trains_and_writes_back(
        dir.path(),
        &layout,
        "glm4_moe",
        "model.layers.3.eh_proj.weight",
        "model.layers.2.mlp.gate.weight",
    );
}

/// Every parameter planned; transformers' loss with the prediction head neither loaded nor run; after every
/// parameter moved (`trained` among them), the unplanned tensors written back byte for byte.
fn trains_and_writes_back(dir: &Path, layout: &ModelLayout, case: &str, head: &str, trained: &str) {
    let unplanned: Vec<&str> = layout.unplanned.iter().map(|t| t.name.as_str()).collect();
    // The parameters transformers builds: everything else.
    let stored: u64 = tensors(&dir.join("model.safetensors"))
        .keys()
        .filter(|n| !unplanned.contains(&n.as_str()))
        .map(|n| layout.tensors().find(|t| &t.name == n).unwrap().params)
        .sum();
    assert_eq!(layout.total_params, stored);

    let plan = plan(layout, &every_tensor(layout), PlanOptions::default()).unwrap();
    assert_eq!(plan.trainable_params, layout.total_params);
    assert!(plan.trainable.iter().all(|n| !unplanned.contains(&n.as_str())));

    let params = Params::load(dir, &plan, &Device::Cpu, DType::F32).unwrap();
    assert!(!params.contains(head));
    let model = Decoder::new(DecoderConfig::read(dir).unwrap(), &params, &Device::Cpu).unwrap();
    let (batch, labels, want) = family_batch(case);
    let (loss, _) = model.loss(&batch, &labels).unwrap();
    let got = loss.to_scalar::<f32>().unwrap() as f64;
    assert!(
        (got - want).abs() < 1e-5 * want,
        "{case}: loss {got} vs transformers' {want}"
    );

    params
        .vars
        .values()
        .for_each(|v| v.set(&(v.as_tensor() * 1.5).unwrap()).unwrap());
    let out = tempfile::tempdir().unwrap();
    let dest = export_checkpoint(layout, &params, &out.path().join("final")).unwrap();
    let before = tensors(&dir.join("model.safetensors"));
    let after = tensors(&dest.join("model.safetensors"));
    assert_eq!(before.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>());
    for name in &unplanned {
        assert_eq!(before[*name], after[*name], "{case}: {name}");
    }
    assert_ne!(before[trained], after[trained]);
}

#[test]
fn qwen3_next_s_prediction_head_is_never_planned_loaded_or_changed() {
    let dir = tempfile::tempdir().unwrap();
    let source = fixtures().join("models/qwen3_next");
    let mut weights = candle_core::safetensors::load(source.join("model.safetensors"), &Device::Cpu).unwrap();
    let filled = |shape: &[usize], v: f32| Tensor::full(v, shape, &Device::Cpu).unwrap();
    for (name, t) in [
        ("mtp.fc.weight", filled(&[64, 128], 0.01)),
        ("mtp.norm.weight", filled(&[64], 1.5)),
        ("mtp.layers.0.input_layernorm.weight", filled(&[64], 0.5)),
    ] {
        weights.insert(name.to_string(), t);
    }
    candle_core::safetensors::save(&weights, dir.path().join("model.safetensors")).unwrap();
    std::fs::copy(source.join("config.json"), dir.path().join("config.json")).unwrap();
    let layout = ModelLayout::inspect(dir.path()).unwrap();
    let mut unplanned: Vec<&str> = layout.unplanned.iter().map(|t| t.name.as_str()).collect();
    unplanned.sort();
    let head = [
        "mtp.fc.weight",
        "mtp.layers.0.input_layernorm.weight",
        "mtp.norm.weight",
    ];
    assert_eq!(unplanned, head);
    assert!(layout.non_layer_modules.iter().all(|m| !m.path.starts_with("mtp")));
    let trained = "model.layers.3.mlp.gate.weight";
    trains_and_writes_back(dir.path(), &layout, "qwen3_next", "mtp.fc.weight", trained);
}

#[test]
fn an_undeclared_layer_after_the_last_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    released(dir.path(), false);
    let layout = ModelLayout::inspect(dir.path()).unwrap();
    assert!(
        layout
            .warnings
            .iter()
            .any(|w| w.contains("3 layers") && w.contains("4")),
        "{:?}",
        layout.warnings
    );
    let plan = plan(&layout, &every_tensor(&layout), PlanOptions::default()).unwrap();
    let params = Params::load(dir.path(), &plan, &Device::Cpu, DType::F32).unwrap();
    let e = Decoder::new(DecoderConfig::read(dir.path()).unwrap(), &params, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("model.layers.3.") && e.contains("does not use it"), "{e}");
}
