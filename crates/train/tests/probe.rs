//! The layer probe on the tiny reference llama: a layer made an exact identity has Block Influence 0 and ranks last;
//! per-layer gradient norms are PyTorch's per-tensor norms combined.

use candle_core::{Device, Tensor};
use freezetune_train::data::Example;
use freezetune_train::probe::{probe, ProbeOptions};
use std::collections::HashMap;
use std::path::Path;

mod common;
use common::{fixtures, llama_reference};

fn reference_examples() -> Vec<Example> {
    let r = llama_reference();
    (0..2)
        .map(|i| Example {
            input_ids: r["input_ids"][i]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect(),
            labels: r["labels"][i]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect(),
        })
        .collect()
}

const OPTIONS: ProbeOptions = ProbeOptions {
    batch_size: 2,
    batches: 1,
    window: 2,
    gradients: true,
};

/// The reference llama with layer `id`'s output projections zeroed: the layer adds nothing to the residual stream.
fn with_identity_layer(dir: &Path, id: usize) {
    let src = fixtures().join("models/llama");
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    for m in ["self_attn.o_proj", "mlp.down_proj"] {
        let name = format!("model.layers.{id}.{m}.weight");
        let zero = tensors[&name].zeros_like().unwrap();
        tensors.insert(name, zero);
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
}

#[test]
fn an_identity_layer_has_no_block_influence_and_ranks_last() {
    let dir = tempfile::tempdir().unwrap();
    with_identity_layer(dir.path(), 1);
    let report = probe(dir.path(), &reference_examples(), OPTIONS, &Device::Cpu, &mut |_| true).unwrap();
    assert_eq!(report.layers.len(), 4);
    let bi: Vec<f64> = report.layers.iter().map(|l| l.block_influence).collect();
    assert!(bi[1].abs() < 1e-6, "identity layer's BI {}", bi[1]);
    for (l, b) in bi.iter().enumerate().filter(|(l, _)| *l != 1) {
        assert!(
            *b > bi[1] + 1e-4,
            "layer {l} BI {b} should rank above the identity layer"
        );
    }
    // Windows of two layers: the last starts at layer 2; layer 3's would run past the stack.
    assert!(report.layers[2].angular_distance.is_some() && report.layers[3].angular_distance.is_none());
    assert!(report.tokens > 0 && report.batches == 1);
}

#[test]
fn gradient_norms_are_pytorchs_per_tensor_norms_combined() {
    let report = probe(
        &fixtures().join("models/llama"),
        &reference_examples(),
        OPTIONS,
        &Device::Cpu,
        &mut |_| true,
    )
    .unwrap();
    let reference = llama_reference();
    let per_tensor = reference["grad_l2"].as_object().unwrap();
    for layer in [2usize, 3] {
        let prefix = format!("model.layers.{layer}.");
        let want: f64 = per_tensor
            .iter()
            .filter(|(n, _)| n.starts_with(&prefix))
            .map(|(_, v)| v.as_f64().unwrap().powi(2))
            .sum::<f64>()
            .sqrt();
        let got = report.layers[layer].grad_norm.unwrap();
        assert!(
            (got - want).abs() / want < 1e-3,
            "layer {layer}: {got} vs PyTorch {want}"
        );
        assert!(report.layers[layer].relative_grad.unwrap() > 0.0);
    }
    // Forward-only: no gradients, the same influence.
    let forward = probe(
        &fixtures().join("models/llama"),
        &reference_examples(),
        ProbeOptions {
            gradients: false,
            ..OPTIONS
        },
        &Device::Cpu,
        &mut |_| true,
    )
    .unwrap();
    assert!(forward.layers.iter().all(|l| l.grad_norm.is_none()));
    for (a, b) in forward.layers.iter().zip(&report.layers) {
        assert!((a.block_influence - b.block_influence).abs() < 1e-9);
    }
}

#[test]
fn a_cached_probe_is_reused_and_invalidated_by_new_data_or_settings() {
    use freezetune_core::run_config::RunConfig;
    use freezetune_train::probe::probe_run_cached;
    let dir = tempfile::tempdir().unwrap();
    let data = common::write_reference_data(dir.path());
    let toml = format!(
        "[model]\npath = {:?}\n[freeze]\nall_layers = true\n[data]\ntrain = {data:?}\nformat = \"tokenized\"\n\
         [training]\nbatch_size = 2\n[runtime]\ndevice = \"cpu\"\n[output]\ndir = \"out\"\n",
        fixtures().join("models/llama")
    );
    std::fs::write(dir.path().join("run.toml"), toml).unwrap();
    let config = RunConfig::read(&dir.path().join("run.toml")).unwrap();
    let cache = dir.path().join("cache");
    let (first, cached) = probe_run_cached(&config, OPTIONS, &cache, &mut |_| true).unwrap();
    assert!(!cached);
    let (again, cached) = probe_run_cached(&config, OPTIONS, &cache, &mut |_| true).unwrap();
    assert!(cached, "the same model, data and settings are read back");
    // Read back through JSON: equal to the last bit but one.
    assert_eq!(
        (first.tokens, &first.ranked_by_gradient),
        (again.tokens, &again.ranked_by_gradient)
    );
    for (a, b) in first.layers.iter().zip(&again.layers) {
        assert!((a.block_influence - b.block_influence).abs() < 1e-12);
        assert!((a.relative_grad.unwrap() - b.relative_grad.unwrap()).abs() < 1e-12);
    }
    let other = ProbeOptions { window: 1, ..OPTIONS };
    assert!(
        !probe_run_cached(&config, other, &cache, &mut |_| true).unwrap().1,
        "another window is another key"
    );
    // New data (one example fewer, written later): measured again.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let text = std::fs::read_to_string(&data).unwrap();
    std::fs::write(&data, text.lines().next().unwrap()).unwrap();
    let (changed, cached) = probe_run_cached(&config, OPTIONS, &cache, &mut |_| true).unwrap();
    assert!(!cached, "edited data is measured again");
    assert_ne!(changed.tokens, first.tokens);
}

#[test]
fn the_probe_reports_each_pass_and_stops_when_told() {
    let model = fixtures().join("models/llama");
    let mut seen = Vec::new();
    probe(&model, &reference_examples(), OPTIONS, &Device::Cpu, &mut |p| {
        seen.push((p.done, p.total));
        true
    })
    .unwrap();
    let total = seen[0].1;
    assert_eq!(
        seen,
        (0..=total).map(|d| (d, total)).collect::<Vec<_>>(),
        "one report per pass, then the end"
    );
    let mut calls = 0;
    let stopped = probe(&model, &reference_examples(), OPTIONS, &Device::Cpu, &mut |_| {
        calls += 1;
        false
    });
    assert!(
        matches!(stopped, Err(freezetune_train::TrainError::Stopped(_))),
        "{stopped:?}"
    );
    assert_eq!(calls, 1, "it stops before the first pass");
}
