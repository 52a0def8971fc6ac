//! Layer schedules end to end on the tiny llama (4 layers): a BAdam-style cycle with reset equals the same phases
//! trained one after another as static runs; `keep` carries a layer's AdamW moments (and its step count) through
//! the phases it sits out; a seeded sample run is reproducible; resume inside a phase equals the uninterrupted run;
//! `final/` keeps every never-trained tensor byte for byte and changes every tensor that ever trained.

use candle_core::{Device, Tensor};
use freezetune_core::run_config::RunConfig;
use freezetune_train::train;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

mod common;
use common::{fixtures, tensor_bytes};

/// Two tokenized examples; with batch_size 2 every step sees both, so step k of any run sees the same data.
fn write_data(dir: &Path) -> PathBuf {
    common::write_reference_data(dir)
}

const TRAINING: &str = "batch_size = 2\nshuffle = false\nlr_scheduler = \"constant\"\nmax_grad_norm = 0\n\
                        optimizer = \"adamw\"\nlearning_rate = 5e-3\nweight_decay = 0.01\nsave_steps = 1";

/// A run config on `model` with `freeze` (TOML of the [freeze] table and its schedule) for `steps` steps.
fn config(dir: &Path, model: &Path, freeze: &str, steps: u64) -> RunConfig {
    let data = write_data(dir);
    let text = format!(
        "[model]\npath = {model:?}\n[freeze]\n{freeze}\n[data]\ntrain = {data:?}\nformat = \"tokenized\"\n\
         [training]\n{TRAINING}\nmax_steps = {steps}\n[runtime]\ndevice = \"cpu\"\n[output]\ndir = {out:?}\n",
        out = dir.join("run"),
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, text).unwrap();
    RunConfig::read(&path).unwrap()
}

fn llama() -> PathBuf {
    fixtures().join("models/llama")
}

fn metrics(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn losses(run: &Path) -> Vec<f64> {
    metrics(run).iter().filter_map(|v| v["loss"].as_f64()).collect()
}

/// (step, layers) of each phase line of metrics.jsonl.
fn phases(run: &Path) -> Vec<(u64, Vec<u64>)> {
    metrics(run)
        .iter()
        .filter(|v| v.get("phase").is_some())
        .map(|v| {
            let layers = v["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_u64().unwrap())
                .collect();
            (v["step"].as_u64().unwrap(), layers)
        })
        .collect()
}

fn run(c: &RunConfig) -> freezetune_train::TrainOutcome {
    train(c, false, &|_| {}, &AtomicBool::new(false)).unwrap()
}

fn optimizer_state(run: &Path, step: u64) -> BTreeMap<String, Tensor> {
    let path = run.join(format!("checkpoints/step-{step}/optimizer.safetensors"));
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect()
}

fn step_count(state: &BTreeMap<String, Tensor>, name: &str) -> Option<i64> {
    state.get(&format!("t.{name}")).map(|t| t.to_scalar::<i64>().unwrap())
}

const LAYER0: &str = "model.layers.0.mlp.down_proj.weight";
const LAYER2: &str = "model.layers.2.mlp.down_proj.weight";

#[test]
fn a_reset_cycle_equals_its_phases_run_one_after_another() {
    let cycle = "all_layers = true\n[freeze.schedule]\nkind = \"cycle\"\ngroup = 2\ninterval = 2";
    let dir = tempfile::tempdir().unwrap();
    let scheduled = run(&config(dir.path(), &llama(), cycle, 4));
    assert_eq!(phases(&scheduled.run_dir), vec![(0, vec![0, 1]), (2, vec![2, 3])]);
    assert!(scheduled.run_dir.join("schedule.json").is_file());

    let a = tempfile::tempdir().unwrap();
    let first = run(&config(a.path(), &llama(), "layers = \"0-1\"", 2));
    let b = tempfile::tempdir().unwrap();
    let second = run(&config(
        b.path(),
        &first.final_dir.clone().unwrap(),
        "layers = \"2-3\"",
        2,
    ));
    let mut sequential = losses(&first.run_dir);
    sequential.extend(losses(&second.run_dir));
    let together = losses(&scheduled.run_dir);
    assert_eq!(together.len(), 4);
    for (k, (x, y)) in together.iter().zip(&sequential).enumerate() {
        assert!((x - y).abs() < 1e-6, "step {}: cycle {x} vs static runs {y}", k + 1);
    }
    assert_eq!(
        tensor_bytes(&scheduled.final_dir.unwrap().join("model.safetensors")),
        tensor_bytes(&second.final_dir.unwrap().join("model.safetensors")),
        "the same weights at the end"
    );
}

#[test]
fn keep_carries_moments_through_the_phases_a_layer_sits_out() {
    let cycle = |policy: &str| {
        format!("all_layers = true\n[freeze.schedule]\nkind = \"cycle\"\ngroup = 2\ninterval = 1\noptimizer_state = \"{policy}\"")
    };
    let dir = tempfile::tempdir().unwrap();
    let kept = run(&config(dir.path(), &llama(), &cycle("keep"), 3));
    // Step 2 trains layers 2-3: layer 0's moments are kept aside, with the one step they took.
    let at2 = optimizer_state(&kept.run_dir, 2);
    assert_eq!(step_count(&at2, LAYER0), Some(1));
    assert_eq!(step_count(&at2, LAYER2), Some(1));
    // Step 3 trains layers 0-1 again: their moments and step count resume (two steps now).
    let at3 = optimizer_state(&kept.run_dir, 3);
    assert_eq!(step_count(&at3, LAYER0), Some(2));
    let m1 = &at2[&format!("m.{LAYER0}")];
    let m2 = &at3[&format!("m.{LAYER0}")];
    let diff = (m1 - m2)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff > 0.0, "the kept moments were updated at step 3");

    let other = tempfile::tempdir().unwrap();
    let reset = run(&config(other.path(), &llama(), &cycle("reset"), 3));
    assert_eq!(
        step_count(&optimizer_state(&reset.run_dir, 2), LAYER0),
        None,
        "reset drops layer 0's state"
    );
    assert_eq!(
        step_count(&optimizer_state(&reset.run_dir, 3), LAYER0),
        Some(1),
        "and starts it afresh"
    );
    let (k, r) = (losses(&kept.run_dir), losses(&reset.run_dir));
    assert!(
        (k[0] - r[0]).abs() < 1e-9 && (k[1] - r[1]).abs() < 1e-9,
        "identical until a layer returns"
    );
}

#[test]
fn a_seeded_sample_run_is_reproducible_and_draws_without_replacement() {
    let sample = "all_layers = true\nextra = [\"embed_tokens\", \"lm_head\"]\n[freeze.schedule]\nkind = \"sample\"\n\
                  gamma = 2\ninterval = 1\nseed = 5";
    let go = || {
        let dir = tempfile::tempdir().unwrap();
        let out = run(&config(dir.path(), &llama(), sample, 5));
        let schedule = std::fs::read_to_string(out.run_dir.join("schedule.json")).unwrap();
        (losses(&out.run_dir), phases(&out.run_dir), schedule, dir)
    };
    let (l1, p1, s1, _d1) = go();
    let (l2, p2, s2, _d2) = go();
    assert_eq!((l1, &p1, s1), (l2, &p2, s2));
    for (_, layers) in &p1 {
        assert_eq!(layers.len(), 2);
        assert_ne!(layers[0], layers[1], "no layer twice in one phase");
    }
}

#[test]
fn progressive_unfreezing_adds_a_layer_each_interval() {
    let progressive = "all_layers = true\n[freeze.schedule]\nkind = \"progressive\"\ninterval = 1\nunit = \"steps\"";
    let dir = tempfile::tempdir().unwrap();
    let out = run(&config(dir.path(), &llama(), progressive, 5));
    assert_eq!(
        phases(&out.run_dir),
        vec![(0, vec![3]), (1, vec![2, 3]), (2, vec![1, 2, 3]), (3, vec![0, 1, 2, 3])]
    );
    assert_eq!(losses(&out.run_dir).len(), 5);
}

#[test]
fn resume_inside_a_phase_and_at_a_boundary_equals_the_uninterrupted_run() {
    let cycle =
        "all_layers = true\n[freeze.schedule]\nkind = \"cycle\"\ngroup = 2\ninterval = 2\noptimizer_state = \"keep\"";
    let full_dir = tempfile::tempdir().unwrap();
    let full = run(&config(full_dir.path(), &llama(), cycle, 6));
    for stop_at in [3u64, 4] {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), &llama(), cycle, 6);
        let cancel = AtomicBool::new(false);
        let stopper = |e: freezetune_core::events::TrainEvent| {
            if matches!(e, freezetune_core::events::TrainEvent::Step { step, .. } if step == stop_at) {
                cancel.store(true, Ordering::Relaxed);
            }
        };
        assert_eq!(train(&c, false, &stopper, &cancel).unwrap().steps, stop_at);
        let resumed = train(&c, true, &|_| {}, &AtomicBool::new(false)).unwrap();
        let (x, y) = (losses(&full.run_dir), losses(&resumed.run_dir));
        assert_eq!(y.len(), 6, "stopped at {stop_at}");
        for (k, (p, q)) in x.iter().zip(&y).enumerate() {
            assert!((p - q).abs() < 1e-6, "stopped at {stop_at}, step {}: {p} vs {q}", k + 1);
        }
        assert_eq!(
            phases(&full.run_dir),
            phases(&resumed.run_dir),
            "stopped at {stop_at}: phase lines"
        );
        assert_eq!(
            tensor_bytes(&full.final_dir.clone().unwrap().join("model.safetensors")),
            tensor_bytes(&resumed.final_dir.unwrap().join("model.safetensors")),
            "stopped at {stop_at}: the same final weights"
        );
    }
}

#[test]
fn final_keeps_never_trained_tensors_and_changes_every_trained_one() {
    // A cycle over layers 1-2 only: layer 1 trains first, then layer 2, then neither is trainable at the end.
    let cycle = "layers = \"1-2\"\n[freeze.schedule]\nkind = \"cycle\"\ninterval = 1";
    let dir = tempfile::tempdir().unwrap();
    let out = run(&config(dir.path(), &llama(), cycle, 2));
    let before = tensor_bytes(&llama().join("model.safetensors"));
    let after = tensor_bytes(&out.final_dir.unwrap().join("model.safetensors"));
    assert_eq!(before.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>());
    for (name, bytes) in &before {
        let trained = name.starts_with("model.layers.1.") || name.starts_with("model.layers.2.");
        if trained {
            assert_ne!(bytes, &after[name], "{name} trained in a phase and must change");
        } else {
            assert_eq!(bytes, &after[name], "{name} never trained and must be byte-identical");
        }
    }
}
