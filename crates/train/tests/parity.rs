//! Parity with PyTorch + transformers on the tiny llama (tests/fixtures/reference/parity.json): the loss, every
//! trainable parameter's gradient norm, and 3-step SGD / AdamW trajectories with LLaMA-Factory's
//! `freeze_trainable_layers=2`.

use candle_core::{DType, Device};
use freezetune_core::spec::LlamaFactoryArgs;
use freezetune_core::{plan, FreezeSpec, ModelLayout, PlanOptions};
use freezetune_train::loss::causal_lm_loss;
use freezetune_train::optim::{AdamWConfig, Optimizer};
use freezetune_train::{Batch, Decoder, DecoderConfig, Params};
use serde_json::Value;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

struct Setup {
    model: Decoder,
    params: Params,
    batch: Batch,
    labels: Vec<Vec<i64>>,
    reference: Value,
}

fn setup() -> Setup {
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference/parity.json")).unwrap()).unwrap();
    let reference = reference["models"]["llama"].clone();
    let dir = fixtures().join("models/llama");
    let layout = ModelLayout::inspect(&dir).unwrap();
    let spec = FreezeSpec {
        llamafactory: Some(LlamaFactoryArgs {
            freeze_trainable_layers: Some(2),
            ..Default::default()
        }),
        ..Default::default()
    };
    let plan = plan(&layout, &spec, PlanOptions::default()).unwrap();
    let want: Vec<&str> = reference["trainable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(plan.trainable, want);
    let params = Params::load(&dir, &plan, &Device::Cpu, DType::F32).unwrap();
    let model = Decoder::new(DecoderConfig::read(&dir).unwrap(), &params, &Device::Cpu).unwrap();
    let rows = |k: &str| -> Vec<Vec<i64>> {
        reference[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect())
            .collect()
    };
    let ids = rows("input_ids");
    let batch = Batch {
        lengths: ids.iter().map(Vec::len).collect(),
        input_ids: ids.iter().map(|r| r.iter().map(|&v| v as u32).collect()).collect(),
    };
    Setup {
        model,
        params,
        batch,
        labels: rows("labels"),
        reference,
    }
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

fn loss_of(s: &Setup) -> (candle_core::Tensor, f64) {
    let logits = s.model.forward(&s.batch).unwrap();
    let (loss, n) = causal_lm_loss(&logits, &s.labels).unwrap();
    assert_eq!(n, 42);
    let v = loss.to_scalar::<f32>().unwrap() as f64;
    (loss, v)
}

#[test]
fn loss_and_gradient_norms_match_pytorch() {
    let s = setup();
    let logits = s.model.forward(&s.batch).unwrap();
    let first8: Vec<f32> = logits
        .get(0)
        .unwrap()
        .get(0)
        .unwrap()
        .narrow(0, 0, 8)
        .unwrap()
        .to_vec1()
        .unwrap();
    for (a, b) in first8.iter().zip(s.reference["logits_0_0_first8"].as_array().unwrap()) {
        assert!((*a as f64 - b.as_f64().unwrap()).abs() < 1e-5, "logits {first8:?}");
    }
    let (loss, value) = loss_of(&s);
    let want = s.reference["loss"].as_f64().unwrap();
    assert!(rel(value, want) < 1e-4, "loss {value} vs PyTorch {want}");
    let grads = loss.backward().unwrap();
    for (name, want) in s.reference["grad_l2"].as_object().unwrap() {
        let var = &s.params.vars[name];
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt() as f64;
        let want = want.as_f64().unwrap();
        assert!(rel(norm, want) < 1e-3, "{name}: grad norm {norm} vs PyTorch {want}");
    }
}

fn trajectory(mut optimizer: Optimizer, lr: f64, s: &Setup) -> (Vec<f64>, f64) {
    let mut losses = Vec::new();
    for _ in 0..3 {
        let (loss, v) = loss_of(s);
        losses.push(v);
        let grads = optimizer.collect(&loss.backward().unwrap());
        optimizer.step(&grads, lr).unwrap();
    }
    (losses, loss_of(s).1)
}

fn check(name: &str, got: (Vec<f64>, f64), want: &Value) {
    let steps: Vec<f64> = want["loss_at_step"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    for (k, (a, b)) in got.0.iter().zip(&steps).enumerate() {
        assert!(rel(*a, *b) < 1e-4, "{name} step {k}: loss {a} vs PyTorch {b}");
    }
    let last = want["loss_after_last_step"].as_f64().unwrap();
    assert!(
        rel(got.1, last) < 1e-4,
        "{name} after 3 steps: {} vs PyTorch {last}",
        got.1
    );
}

fn vars(s: &Setup) -> Vec<(String, candle_core::Var)> {
    s.params.vars.iter().map(|(n, v)| (n.clone(), v.clone())).collect()
}

#[test]
fn sgd_trajectory_matches_pytorch() {
    let s = setup();
    check(
        "sgd",
        trajectory(Optimizer::sgd(vars(&s)), 0.1, &s),
        &s.reference["sgd"],
    );
}

#[test]
fn adamw_trajectories_match_pytorch() {
    let s = setup();
    let all = AdamWConfig {
        weight_decay: 0.01,
        no_decay_for_bias_and_norm: false,
        ..Default::default()
    };
    check(
        "adamw",
        trajectory(Optimizer::adamw(vars(&s), all), 1e-3, &s),
        &s.reference["adamw"],
    );
    let s = setup();
    let grouped = AdamWConfig {
        weight_decay: 0.01,
        no_decay_for_bias_and_norm: true,
        ..Default::default()
    };
    check(
        "adamw grouped",
        trajectory(Optimizer::adamw(vars(&s), grouped), 1e-3, &s),
        &s.reference["adamw_hf_trainer_grouping"],
    );
}

/// Finite differences on the whole model: nudging single weights of trainable tensors changes the loss by what
/// the analytic gradient predicts (central differences in f64 arithmetic over f32 forward passes).
#[test]
fn finite_differences_agree_with_the_gradients_of_the_whole_model() {
    let s = setup();
    let (loss, _) = loss_of(&s);
    let grads = loss.backward().unwrap();
    let h = 1e-2f32;
    let mut checked = 0;
    for name in [
        "model.layers.3.mlp.down_proj.weight",
        "model.layers.2.self_attn.v_proj.weight",
        "model.layers.3.post_attention_layernorm.weight",
    ] {
        let var = &s.params.vars[name];
        let g: Vec<f32> = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let shape = var.as_tensor().shape().clone();
        // The entries with the largest gradients, where the difference quotient is well above f32 noise.
        let mut order: Vec<usize> = (0..g.len()).collect();
        order.sort_by(|a, b| g[*b].abs().total_cmp(&g[*a].abs()));
        for &i in order.iter().take(3) {
            let at = |delta: f32| {
                let mut w = base.clone();
                w[i] += delta;
                var.set(&candle_core::Tensor::from_vec(w, shape.clone(), &Device::Cpu).unwrap())
                    .unwrap();
                loss_of(&s).1
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h as f64);
            var.set(&candle_core::Tensor::from_vec(base.clone(), shape.clone(), &Device::Cpu).unwrap())
                .unwrap();
            let analytic = g[i] as f64;
            assert!(
                (numeric - analytic).abs() <= 0.02 * analytic.abs() + 1e-4,
                "{name}[{i}]: finite difference {numeric} vs gradient {analytic}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 9);
}
