//! Mixed precision on the CPU, through `train`: bf16 and f16 compute (f32 master weights) on every family —
//! llama, qwen2 (tied), a bf16 copy of llama, gemma in bf16, phi3 in f16 — stay within 2e-2 of the f32 loss
//! trajectory, keep frozen tensors byte-identical in their own dtype, change the trainable ones and export every
//! tensor in the checkpoint's dtype. f16 runs report their loss scale.

use candle_core::{DType, Device, Tensor};
use freezetune_core::events::TrainEvent;
use freezetune_core::run_config::RunConfig;
use freezetune_core::synth::{write_checkpoint, Family, SynthSpec};
use freezetune_train::train;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

mod common;
use common::fixtures;

/// A copy of the checkpoint in `src` with every tensor stored as `dtype`.
fn converted(src: &Path, dest: &Path, dtype: DType) {
    std::fs::create_dir_all(dest).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && path.extension().is_none_or(|e| e != "safetensors") {
            std::fs::copy(&path, dest.join(path.file_name().unwrap())).unwrap();
        }
    }
    let tensors = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let tensors: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(n, t)| (n, t.to_dtype(dtype).unwrap()))
        .collect();
    candle_core::safetensors::save(&tensors, dest.join("model.safetensors")).unwrap();
}

/// A tiny synthetic checkpoint of `family`, stored as `dtype`.
fn synth_in(family: Family, dtype: DType) -> tempfile::TempDir {
    let src = tempfile::tempdir().unwrap();
    write_checkpoint(src.path(), &SynthSpec::tiny(family, 3)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    converted(src.path(), dir.path(), dtype);
    dir
}

/// Eight deterministic tokenized examples with every token learned.
fn write_data(dir: &Path) -> PathBuf {
    let path = dir.join("data.jsonl");
    let lines: Vec<String> = (0..8u64)
        .map(|i| {
            let ids: Vec<u64> = (0..12u64).map(|j| (i * 37 + j * 11 + 3) % 500 + 1).collect();
            serde_json::json!({"input_ids": ids, "labels": ids}).to_string()
        })
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

fn config(model: &Path, dir: &Path, dtype: &str) -> RunConfig {
    let data = write_data(dir);
    let text = format!(
        "[model]\npath = {model:?}\ndtype = \"{dtype}\"\n[freeze.llamafactory]\nfreeze_trainable_layers = 2\n\
         [data]\ntrain = {data:?}\nformat = \"tokenized\"\n\
         [training]\nbatch_size = 4\nshuffle = false\nmax_steps = 5\noptimizer = \"adamw\"\nlearning_rate = 5e-3\n\
         lr_scheduler = \"constant\"\n[runtime]\ndevice = \"cpu\"\n[output]\ndir = {out:?}\n",
        out = dir.join("run"),
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, text).unwrap();
    RunConfig::read(&path).unwrap()
}

fn metrics(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .collect()
}

struct Run {
    losses: Vec<f64>,
    steps: Vec<Value>,
    run_dir: PathBuf,
    final_dir: PathBuf,
}

fn run(model: &Path, dtype: &str) -> (tempfile::TempDir, Run) {
    let dir = tempfile::tempdir().unwrap();
    let started = std::sync::Mutex::new(None);
    let sink = |e: TrainEvent| {
        if let TrainEvent::Started { device, dtype, .. } = e {
            *started.lock().unwrap() = Some((device, dtype));
        }
    };
    let out = train(&config(model, dir.path(), dtype), false, &sink, &AtomicBool::new(false))
        .unwrap_or_else(|e| panic!("{} in {dtype}: {e}", model.display()));
    let (device, used) = started.lock().unwrap().clone().expect("a start event");
    assert_eq!(device, "cpu");
    let want = match dtype {
        "auto" if auto_bf16() => "bf16",
        "auto" => "f32",
        _ => dtype,
    };
    assert_eq!(used, want, "the start event names the compute dtype");
    assert_eq!((out.device.as_str(), out.dtype.as_str()), ("cpu", want));
    let steps = metrics(&out.run_dir);
    let run = Run {
        losses: steps.iter().map(|v| v["loss"].as_f64().unwrap()).collect(),
        steps,
        run_dir: out.run_dir,
        final_dir: out.final_dir.expect("finished"),
    };
    (dir, run)
}

fn check_export(model: &Path, run: &Run, what: &str) {
    common::assert_mask(
        &model.join("model.safetensors"),
        &run.final_dir.join("model.safetensors"),
        &run.run_dir,
        what,
    );
}

fn check_family(name: &str, model: &Path) {
    let (_d32, f32_run) = run(model, "f32");
    check_export(model, &f32_run, &format!("{name} f32"));
    assert!(
        f32_run.losses.last() < f32_run.losses.first(),
        "{name}: the loss falls {:?}",
        f32_run.losses
    );
    for dtype in ["bf16", "f16"] {
        let (_d, r) = run(model, dtype);
        assert_eq!(r.losses.len(), 5);
        assert_ne!(
            r.losses, f32_run.losses,
            "{name}: a {dtype} run computes in {dtype}, not in f32"
        );
        for (k, (a, b)) in r.losses.iter().zip(&f32_run.losses).enumerate() {
            assert!(
                (a - b).abs() / b < 2e-2,
                "{name} {dtype} step {}: loss {a} vs f32 {b}",
                k + 1
            );
        }
        check_export(model, &r, &format!("{name} {dtype}"));
        let toml = std::fs::read_to_string(r.run_dir.join("run.toml")).unwrap();
        assert!(
            toml.contains("[resolved]") && toml.contains(&format!("dtype = \"{dtype}\"")),
            "run.toml records what the run used:\n{toml}"
        );
        // bf16 where bf16 matmuls are twice f32's rate (AMD's AVX512-BF16, Intel's AMX, the fused kernels on): f32
        // tensors, bf16 matmuls, and the note says so and names the kernel; elsewhere (FREEZETUNE_FUSED=0 too) the
        // tensors themselves are bf16.
        let bf16_matmuls = dtype == "bf16" && auto_bf16();
        let kernel = if freezetune_train::fused::amx_available() {
            "AMX"
        } else {
            "AVX512-BF16"
        };
        assert_eq!(
            toml.contains(&format!("matmuls round their operands to bf16 ({kernel})")),
            bf16_matmuls,
            "{name} {dtype}: the device note says how bf16 computes on this CPU:\n{toml}"
        );
        let scale = r.steps[0].get("loss_scale");
        if dtype == "f16" {
            assert_eq!(
                scale.and_then(Value::as_f64),
                Some(65536.0),
                "f16 steps report their loss scale"
            );
        } else {
            assert!(scale.is_none(), "only f16 runs scale the loss");
        }
    }
}

#[test]
fn llama_trains_in_bf16_and_f16() {
    check_family("llama", &fixtures().join("models/llama"));
}

#[test]
fn qwen2_with_tied_embeddings_trains_in_bf16_and_f16() {
    check_family("qwen2", &fixtures().join("models/qwen2"));
}

#[test]
fn a_bf16_checkpoint_trains_and_exports_in_bf16() {
    let dir = tempfile::tempdir().unwrap();
    converted(&fixtures().join("models/llama"), dir.path(), DType::BF16);
    check_family("llama-bf16", dir.path());
}

#[test]
fn gemma_in_bf16_trains() {
    check_family("gemma-bf16", synth_in(Family::Gemma, DType::BF16).path());
}

/// The hybrids in bf16 as a run computes them here: Qwen3.5's DeltaNet layers (on this CPU's bf16 matmuls, the
/// projections around the fused delta rule; elsewhere bf16 tensors on the composite ops) and LFM2's convolutions,
/// within 2e-2 of f32's losses and not equal to them, frozen tensors byte-identical in the export.
#[test]
fn hybrids_train_in_bf16() {
    for case in ["qwen3_5", "lfm2"] {
        let model = fixtures().join("models").join(case);
        let (_d32, exact) = run(&model, "f32");
        let (_d16, r) = run(&model, "bf16");
        assert_ne!(r.losses, exact.losses, "{case}: a bf16 run computes in bf16");
        for (k, (a, b)) in r.losses.iter().zip(&exact.losses).enumerate() {
            assert!(
                (a - b).abs() / b < 2e-2,
                "{case} bf16 step {}: loss {a} vs f32 {b}",
                k + 1
            );
        }
        check_export(&model, &r, &format!("{case} bf16"));
    }
}

#[test]
fn phi3_in_f16_trains() {
    check_family("phi3-f16", synth_in(Family::Phi3, DType::F16).path());
}

/// Whether `auto` computes in bf16 on this CPU: bf16 matmuls twice f32's rate (AMD with AVX512-BF16, Intel with
/// AMX), with the
/// fused kernels on.
fn auto_bf16() -> bool {
    freezetune_train::fused::enabled() && freezetune_train::fused::bf16_matmul_faster()
}

#[test]
fn auto_on_the_cpu_computes_in_f32_or_fast_bf16_and_says_so() {
    let model = fixtures().join("models/llama");
    let (_d, r) = run(&model, "auto");
    let toml = std::fs::read_to_string(r.run_dir.join("run.toml")).unwrap();
    let want = if auto_bf16() { "bf16" } else { "f32" };
    assert!(
        toml.contains("device = \"cpu\"") && toml.contains(&format!("dtype = \"{want}\"")),
        "{toml}"
    );
    // bf16 matmuls where auto picks them: the same losses as asking for bf16, and within 2e-2 of f32's.
    let (_d2, asked) = run(&model, want);
    assert_eq!(r.losses, asked.losses, "auto computes exactly as {want} does");
    let (_d3, exact) = run(&model, "f32");
    for (a, b) in r.losses.iter().zip(&exact.losses) {
        assert!((a - b).abs() / b < 2e-2, "auto: loss {a} vs f32 {b}");
    }
    if auto_bf16() {
        assert_ne!(r.losses, exact.losses, "auto's bf16 matmuls ran (and f32 stayed f32)");
    }
}

#[test]
fn gradient_checkpointing_in_bf16_equals_the_plain_backward_pass() {
    let model = fixtures().join("models/llama");
    let (_a, plain) = run(&model, "bf16");
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&model, dir.path(), "bf16");
    c.training.gradient_checkpointing = true;
    let out = train(&c, false, &|_| {}, &AtomicBool::new(false)).unwrap();
    let ckpt: Vec<f64> = metrics(&out.run_dir)
        .iter()
        .map(|v| v["loss"].as_f64().unwrap())
        .collect();
    for (a, b) in ckpt.iter().zip(&plain.losses) {
        assert!((a - b).abs() / b < 1e-3, "checkpointed {a} vs plain {b}");
    }
}
