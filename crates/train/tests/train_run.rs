//! The public training path end to end on the tiny llama: PyTorch parity through `train`, the freeze mask proven on
//! the exported checkpoint, stop + resume equal to an uninterrupted run, accumulation equal to a bigger batch.

use freezetune_core::events::TrainEvent;
use freezetune_core::run_config::RunConfig;
use freezetune_core::ModelLayout;
use freezetune_train::train;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

mod common;
use common::{fixtures, tensor_bytes};

fn reference() -> Value {
    common::llama_reference()
}

fn write_data(dir: &Path) -> PathBuf {
    common::write_reference_data(dir)
}

/// A run of the reference llama in f32, asked for by name: these runs are held to PyTorch's f32 answers, and
/// `auto` computes in bf16 on some CPUs.
fn config(dir: &Path, training: &str) -> RunConfig {
    config_of(dir, "llama", training)
}

/// [`config`] for another reference model.
fn config_of(dir: &Path, model: &str, training: &str) -> RunConfig {
    let data = write_data(dir);
    let text = format!(
        "[model]\npath = {model:?}\ndtype = \"f32\"\n[freeze.llamafactory]\nfreeze_trainable_layers = 2\n[data]\ntrain = {data:?}\nformat = \"tokenized\"\n\
         [training]\n{training}\n[runtime]\ndevice = \"cpu\"\n[output]\ndir = {out:?}\n",
        model = fixtures().join("models").join(model),
        out = dir.join("run"),
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, text).unwrap();
    RunConfig::read(&path).unwrap()
}

fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|v| v["loss"].as_f64())
        .collect()
}

const EXACT: &str = "batch_size = 2\nshuffle = false\nlr_scheduler = \"constant\"\nmax_grad_norm = 0\nmax_steps = 3";

fn quiet(_: TrainEvent) {}

#[test]
fn sgd_and_adamw_through_train_match_pytorch() {
    let r = reference();
    for (name, extra) in [
        ("sgd", "optimizer = \"sgd\"\nlearning_rate = 0.1"),
        (
            "adamw",
            "optimizer = \"adamw\"\nlearning_rate = 1e-3\nweight_decay = 0.01\nno_decay_for_bias_and_norm = false",
        ),
        (
            "adamw_hf_trainer_grouping",
            "optimizer = \"adamw\"\nlearning_rate = 1e-3\nweight_decay = 0.01",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), &format!("{EXACT}\n{extra}"));
        let out = train(&c, false, &quiet, &AtomicBool::new(false)).unwrap();
        let got = losses(&out.run_dir);
        let want: Vec<f64> = r[name]["loss_at_step"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(got.len(), 3);
        for (k, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() / b < 1e-4, "{name} step {}: {a} vs PyTorch {b}", k + 1);
        }
        let m: Value = serde_json::from_str(
            std::fs::read_to_string(out.run_dir.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        for key in [
            "step",
            "loss",
            "lr",
            "grad_norm",
            "tokens",
            "tokens_per_second",
            "elapsed_s",
        ] {
            assert!(m.get(key).is_some(), "metrics line lacks {key}: {m}");
        }
        assert_eq!(m["step"], 1);
        let total = r["grad_l2_total"].as_f64().unwrap();
        assert!(
            (m["grad_norm"].as_f64().unwrap() - total).abs() / total < 1e-3,
            "grad norm {m}"
        );
    }
}

#[test]
fn the_exported_checkpoint_proves_the_freeze_mask() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(
        dir.path(),
        &format!("{EXACT}\noptimizer = \"adamw\"\nlearning_rate = 1e-3"),
    );
    let out = train(&c, false, &quiet, &AtomicBool::new(false)).unwrap();
    let final_dir = out.final_dir.unwrap();
    common::assert_mask(
        &fixtures().join("models/llama/model.safetensors"),
        &final_dir.join("model.safetensors"),
        &out.run_dir,
        "llama",
    );
    for file in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ] {
        assert!(final_dir.join(file).is_file(), "final/ lacks {file}");
    }
    assert_eq!(
        ModelLayout::inspect(&final_dir).unwrap().total_params,
        ModelLayout::inspect(&fixtures().join("models/llama"))
            .unwrap()
            .total_params
    );
    assert!(out.run_dir.join("run.toml").is_file() && out.run_dir.join("checkpoints/step-3/progress.json").is_file());
}

#[test]
fn stop_and_resume_equals_an_uninterrupted_run() {
    stop_and_resume_with("adamw");
}

/// adamw8bit's checkpoint holds its codes and block maxima: resumed, the same losses and weights.
#[test]
fn stop_and_resume_with_8bit_moments_equals_an_uninterrupted_run() {
    stop_and_resume_with("adamw8bit");
}

/// Adafactor's checkpoint holds its row and column means: resumed, the same losses and weights.
#[test]
fn stop_and_resume_with_adafactor_equals_an_uninterrupted_run() {
    stop_and_resume_with("adafactor");
}

fn stop_and_resume_with(optimizer: &str) {
    let training = format!(
        "batch_size = 1\nshuffle = true\nmax_steps = 6\noptimizer = \"{optimizer}\"\nlearning_rate = 5e-3\nwarmup_steps = 2"
    );
    let training = training.as_str();
    let a = tempfile::tempdir().unwrap();
    let full = train(&config(a.path(), training), false, &quiet, &AtomicBool::new(false)).unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = config(b.path(), training);
    let cancel = AtomicBool::new(false);
    let stopper = |e: TrainEvent| {
        if matches!(e, TrainEvent::Step { step: 3, .. }) {
            cancel.store(true, Ordering::Relaxed);
        }
    };
    let stopped = train(&c, false, &stopper, &cancel).unwrap();
    assert_eq!(stopped.steps, 3);
    assert!(stopped.final_dir.is_none());
    let e = train(&c, false, &quiet, &AtomicBool::new(false)).unwrap_err();
    assert!(e.to_string().contains("--resume"), "{e}");
    let resumed = train(&c, true, &quiet, &AtomicBool::new(false)).unwrap();
    assert_eq!(resumed.steps, 6);
    let (x, y) = (losses(&full.run_dir), losses(&resumed.run_dir));
    assert_eq!(x.len(), 6);
    assert_eq!(y.len(), 6);
    for (k, (p, q)) in x.iter().zip(&y).enumerate() {
        assert!((p - q).abs() < 1e-6, "step {}: uninterrupted {p} vs resumed {q}", k + 1);
    }
    let same = tensor_bytes(&full.final_dir.unwrap().join("model.safetensors"))
        == tensor_bytes(&resumed.final_dir.unwrap().join("model.safetensors"));
    assert!(same, "the resumed run ends with the same weights");
}

#[test]
fn gradient_accumulation_equals_the_full_batch() {
    let base = "shuffle = false\nmax_steps = 1\noptimizer = \"sgd\"\nlearning_rate = 0.1\nlr_scheduler = \"constant\"\nmax_grad_norm = 0";
    let a = tempfile::tempdir().unwrap();
    let one = train(
        &config(a.path(), &format!("{base}\nbatch_size = 2")),
        false,
        &quiet,
        &AtomicBool::new(false),
    )
    .unwrap();
    let b = tempfile::tempdir().unwrap();
    let acc = train(
        &config(
            b.path(),
            &format!("{base}\nbatch_size = 1\ngradient_accumulation_steps = 2"),
        ),
        false,
        &quiet,
        &AtomicBool::new(false),
    )
    .unwrap();
    let (l1, l2) = (losses(&one.run_dir)[0], losses(&acc.run_dir)[0]);
    assert!((l1 - l2).abs() < 1e-5, "{l1} vs {l2}");
    let w1 = tensor_bytes(&one.final_dir.unwrap().join("model.safetensors"));
    let w2 = tensor_bytes(&acc.final_dir.unwrap().join("model.safetensors"));
    let name = "model.layers.3.mlp.down_proj.weight";
    let f = |b: &Vec<u8>| {
        b.chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect::<Vec<f32>>()
    };
    let max_diff = f(&w1[name])
        .iter()
        .zip(f(&w2[name]))
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max_diff < 1e-6, "weights differ by {max_diff}");
}

#[test]
fn a_plan_with_nothing_trainable_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), EXACT);
    c.freeze = freezetune_core::FreezeSpec {
        no_layers: true,
        ..Default::default()
    };
    let events = Mutex::new(Vec::new());
    let e = train(
        &c,
        false,
        &|ev| events.lock().unwrap().push(ev),
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert_eq!(e.kind(), "nothing_trainable");
    assert!(events.lock().unwrap().is_empty());
}

#[test]
fn gradient_checkpointing_equals_the_plain_backward_pass() {
    // Top 2 layers plus the (untied) embeddings: gradients must flow down through the frozen layers too.
    let base = "batch_size = 2\nshuffle = false\nmax_steps = 2\noptimizer = \"sgd\"\nlearning_rate = 0.1\nlr_scheduler = \"constant\"\nmax_grad_norm = 0";
    let run = |checkpointing: bool| {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path(), &format!("{base}\ngradient_checkpointing = {checkpointing}"));
        c.freeze = freezetune_core::FreezeSpec {
            top: Some(2),
            extra: vec!["embed_tokens".into()],
            ..Default::default()
        };
        let out = train(&c, false, &quiet, &AtomicBool::new(false)).unwrap();
        (
            losses(&out.run_dir),
            tensor_bytes(&out.final_dir.unwrap().join("model.safetensors")),
            dir,
        )
    };
    let (plain, w1, _a) = run(false);
    let (ckpt, w2, _b) = run(true);
    for (p, q) in plain.iter().zip(&ckpt) {
        assert!((p - q).abs() < 1e-5, "losses {plain:?} vs {ckpt:?}");
    }
    let f = |b: &Vec<u8>| {
        b.chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect::<Vec<f32>>()
    };
    for name in [
        "model.embed_tokens.weight",
        "model.layers.2.self_attn.q_proj.weight",
        "model.layers.3.mlp.up_proj.weight",
    ] {
        let d = f(&w1[name])
            .iter()
            .zip(f(&w2[name]))
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-5, "{name} differs by {d}");
    }
    assert_ne!(
        w1["model.embed_tokens.weight"],
        tensor_bytes(&fixtures().join("models/llama/model.safetensors"))["model.embed_tokens.weight"]
    );
}

/// A model whose config.json asks for the router's load-balancing loss trains under gradient checkpointing to the
/// same losses as without it (the trainer once refused the pair).
#[test]
fn the_routers_load_balancing_loss_trains_under_gradient_checkpointing() {
    let base = "batch_size = 2\nshuffle = false\nmax_steps = 3\noptimizer = \"sgd\"\nlearning_rate = 0.1\nlr_scheduler = \"constant\"\nmax_grad_norm = 0";
    let run = |checkpointing: bool| {
        let dir = tempfile::tempdir().unwrap();
        let c = config_of(
            dir.path(),
            "qwen3_moe_aux",
            &format!("{base}\ngradient_checkpointing = {checkpointing}"),
        );
        let out = train(&c, false, &quiet, &AtomicBool::new(false)).unwrap();
        losses(&out.run_dir)
    };
    let (plain, ckpt) = (run(false), run(true));
    assert_eq!(plain.len(), 3);
    for (p, q) in plain.iter().zip(&ckpt) {
        assert!((p - q).abs() < 1e-5, "losses {plain:?} vs {ckpt:?}");
    }
}

#[test]
fn phi3_and_gemma_train_with_the_mask_kept() {
    use freezetune_core::synth::{write_checkpoint, Family, SynthSpec};
    for family in [Family::Phi3, Family::Gemma] {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        write_checkpoint(&model, &SynthSpec::tiny(family, 3)).unwrap();
        let rows: Vec<String> = (0..4)
            .map(|r| {
                serde_json::json!({"input_ids": (0..24).map(|i| (i * 7 + r * 13) % 500).collect::<Vec<_>>()})
                    .to_string()
            })
            .collect();
        std::fs::write(dir.path().join("d.jsonl"), rows.join("\n")).unwrap();
        let text = format!(
            "[model]\npath = {model:?}\n[freeze]\ntop = 1\nmodules = [\"self_attn\", \"mlp\"]\n[data]\ntrain = \"d.jsonl\"\n\
             [training]\nbatch_size = 4\nmax_steps = 8\nlearning_rate = 1e-2\nshuffle = false\n[output]\ndir = \"run\"\n"
        );
        std::fs::write(dir.path().join("run.toml"), text).unwrap();
        let c = RunConfig::read(&dir.path().join("run.toml")).unwrap();
        let out = train(&c, false, &quiet, &AtomicBool::new(false)).unwrap();
        let l = losses(&out.run_dir);
        assert!(l[7] < l[0], "{family:?}: loss {l:?}");
        let before = tensor_bytes(&model.join("model.safetensors"));
        let after = tensor_bytes(&out.final_dir.unwrap().join("model.safetensors"));
        for (name, bytes) in &before {
            let trains = name.starts_with("model.layers.2.self_attn") || name.starts_with("model.layers.2.mlp");
            assert_eq!(bytes != &after[name], trains, "{family:?}: {name}");
        }
    }
}

/// A checkpoint records its optimizer: resuming it with another one is refused by name, not misread.
#[test]
fn resuming_with_another_optimizer_is_refused() {
    let training = |optimizer: &str| {
        format!("batch_size = 1\nmax_steps = 4\nsave_steps = 1\noptimizer = \"{optimizer}\"\nlearning_rate = 5e-3")
    };
    let dir = tempfile::tempdir().unwrap();
    let cancel = AtomicBool::new(false);
    let stopper = |e: TrainEvent| {
        if matches!(e, TrainEvent::Step { step: 2, .. }) {
            cancel.store(true, Ordering::Relaxed);
        }
    };
    train(&config(dir.path(), &training("adamw8bit")), false, &stopper, &cancel).unwrap();
    let e = train(
        &config(dir.path(), &training("adamw")),
        true,
        &quiet,
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("adamw8bit") && e.to_string().contains("training.optimizer"),
        "{e}"
    );
    let resumed = train(
        &config(dir.path(), &training("adamw8bit")),
        true,
        &quiet,
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(resumed.steps, 4);
}
