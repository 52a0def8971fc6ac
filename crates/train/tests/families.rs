//! Config keys that change the math, against PyTorch + transformers (tests/fixtures/reference/families.json, written
//! by tests/fixtures/scripts/make_family_reference.py): sliding windows (mistral and phi3 on every layer, qwen2 from
//! `max_window_layers` through `layer_types`) at 48 tokens with a window of 16, and llama's `attention_bias` and
//! `mlp_bias`. Every tensor trains; the loss and the global gradient norm must match. Run once with the fused CPU
//! kernels and once with `FREEZETUNE_FUSED=0` (the device-generic path GPUs run), as `make test` does.

use candle_core::{DType, Device};
use freezetune_core::{plan, FreezeSpec, ModelLayout, PlanOptions};
use freezetune_train::loss::causal_lm_loss;
use freezetune_train::{Batch, Decoder, DecoderConfig, Params};
use serde_json::Value;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

/// The loss and the global gradient norm with every tensor trainable, in f32.
fn loss_and_grad_norm(case: &str, ids: &[Vec<u32>]) -> (f64, f64) {
    let dir = fixtures().join("models").join(case);
    let layout = ModelLayout::inspect(&dir).unwrap();
    let spec = FreezeSpec {
        all_layers: true,
        extra: vec!["embed_tokens".into(), "norm".into(), "lm_head".into()],
        ..Default::default()
    };
    let plan = plan(&layout, &spec, PlanOptions::default()).unwrap();
    assert_eq!(
        plan.trainable_params, layout.total_params,
        "{case}: every tensor trains"
    );
    let params = Params::load(&dir, &plan, &Device::Cpu, DType::F32).unwrap();
    let model = Decoder::new(DecoderConfig::read(&dir).unwrap(), &params, &Device::Cpu).unwrap();
    let batch = Batch {
        lengths: ids.iter().map(Vec::len).collect(),
        input_ids: ids.to_vec(),
    };
    let labels: Vec<Vec<i64>> = ids.iter().map(|r| r.iter().map(|&v| v as i64).collect()).collect();
    let (loss, _) = causal_lm_loss(&model.forward(&batch).unwrap(), &labels).unwrap();
    let grads = loss.backward().unwrap();
    let mut sq = 0f64;
    for (name, var) in &params.vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{case}: no gradient for {name}"));
        sq += g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    }
    (loss.to_scalar::<f32>().unwrap() as f64, sq.sqrt())
}

fn check(case: &str) {
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference/families.json")).unwrap()).unwrap();
    let r = &reference["cases"][case];
    let ids: Vec<Vec<u32>> = r["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    let (loss, norm) = loss_and_grad_norm(case, &ids);
    let (want_loss, want_norm) = (r["loss"].as_f64().unwrap(), r["grad_l2_total"].as_f64().unwrap());
    assert!(
        rel(loss, want_loss) < 1e-5,
        "{case}: loss {loss} vs PyTorch {want_loss}"
    );
    assert!(
        rel(norm, want_norm) < 1e-4,
        "{case}: gradient norm {norm} vs PyTorch {want_norm}"
    );
}

#[test]
fn mistral_slides_its_window_on_every_layer() {
    check("mistral_window");
}

#[test]
fn qwen2_slides_from_max_window_layers_on() {
    check("qwen2_window");
}

#[test]
fn phi3_slides_its_window_on_every_layer() {
    check("phi3_window");
}

#[test]
fn llama_biases_on_o_proj_and_the_mlp_are_applied() {
    check("llama_bias");
}

#[test]
fn a_tensor_the_decoder_would_leave_out_is_refused_by_name() {
    // llama_bias's biases, with config.json no longer saying the model has them.
    let src = fixtures().join("models/llama_bias");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config["attention_bias"] = Value::Bool(false);
    config["mlp_bias"] = Value::Bool(false);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let layout = ModelLayout::inspect(dir.path()).unwrap();
    let top = FreezeSpec {
        top: Some(1),
        ..Default::default()
    };
    let plan = plan(&layout, &top, PlanOptions::default()).unwrap();
    let params = Params::load(dir.path(), &plan, &Device::Cpu, DType::F32).unwrap();
    let err = Decoder::new(DecoderConfig::read(dir.path()).unwrap(), &params, &Device::Cpu)
        .err()
        .expect("an unread bias is refused")
        .to_string();
    assert!(
        err.contains("model.layers.0.mlp.down_proj.bias") && err.contains("does not use it") && err.contains("more"),
        "{err}"
    );
}
