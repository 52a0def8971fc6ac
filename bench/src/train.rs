//! Training step time and peak memory per freeze configuration on a random model (8 layers, hidden 512, 8 heads,
//! intermediate 1376, vocab 8000; batch 4 x seq 256, f32, AdamW). Each configuration runs in its own process so
//! its peak RSS is its own. Also compares the plan's memory estimate with the measured peak, and sweeps the two
//! CPU thread pools on one configuration.
//!
//! The same five configurations then run in PyTorch + transformers (installed into the bench's own virtual
//! environment from PyPI on first use: `$FREEZETUNE_BENCH_VENV`, default /var/tmp/freezetune-bench-venv) and the
//! two are printed side by side.
//!
//! Run: `cargo run --release -p freezetune-bench --bin bench-train [-- STEPS]`

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use freezetune_core::synth::{write_checkpoint, Family, Fill, SynthSpec};
use freezetune_core::{plan, FreezeSpec, ModelLayout, PlanOptions};
use freezetune_train::loss::causal_lm_loss;
use freezetune_train::optim::{AdamWConfig, Optimizer};
use freezetune_train::{Batch, Decoder, DecoderConfig, Params};
use std::path::Path;
use std::time::Instant;

const BATCH: usize = 4;
const DEFAULT_SEQ: usize = 256;

/// Sequence length: 256, or `FREEZETUNE_BENCH_SEQ` (to separate the terms of the memory estimate).
fn seq() -> usize {
    std::env::var("FREEZETUNE_BENCH_SEQ")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEQ)
}

fn configs() -> Vec<(&'static str, FreezeSpec)> {
    let extra = vec!["embed_tokens".to_string(), "norm".to_string(), "lm_head".to_string()];
    vec![
        (
            "full",
            FreezeSpec {
                all_layers: true,
                extra,
                ..Default::default()
            },
        ),
        (
            "all layers",
            FreezeSpec {
                all_layers: true,
                ..Default::default()
            },
        ),
        (
            "top 2",
            FreezeSpec {
                top: Some(2),
                ..Default::default()
            },
        ),
        (
            "bottom 2",
            FreezeSpec {
                bottom: Some(2),
                ..Default::default()
            },
        ),
        (
            "layer 3",
            FreezeSpec {
                layers: Some("3".into()),
                ..Default::default()
            },
        ),
    ]
}

/// Configurations measured again with gradient checkpointing (FreezeTune only).
fn checkpointed() -> Vec<&'static str> {
    vec!["full", "bottom 2"]
}

fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Child process: run one configuration and print one JSON line.
fn run_one(model: &Path, name: &str, steps: usize) -> Result<()> {
    let (base, ckpt) = match name.strip_suffix(" +ckpt") {
        Some(b) => (b, true),
        None => (name, false),
    };
    let spec = configs()
        .into_iter()
        .find(|(n, _)| *n == base)
        .context("unknown config")?
        .1;
    let layout = ModelLayout::inspect(model)?;
    let p = plan(
        &layout,
        &spec,
        PlanOptions {
            batch_size: BATCH as u64,
            seq_len: seq() as u64,
        },
    )?;
    let params = Params::load(model, &p, &Device::Cpu, DType::F32)?;
    let decoder = Decoder::new(DecoderConfig::read(model)?, &params, &Device::Cpu)?;
    let vars = params.vars.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    let mut opt = Optimizer::adamw(
        vars,
        AdamWConfig {
            weight_decay: 0.01,
            ..Default::default()
        },
    );
    let mut rng = freezetune_core::synth::Rng(12345);
    let ids: Vec<Vec<u32>> = (0..BATCH)
        .map(|_| (0..seq()).map(|_| (rng.next_u64() % 8000) as u32).collect())
        .collect();
    let labels: Vec<Vec<i64>> = ids.iter().map(|r| r.iter().map(|&v| v as i64).collect()).collect();
    let batch = Batch {
        lengths: vec![seq(); BATCH],
        input_ids: ids,
    };
    let mut times = Vec::new();
    for step in 0..steps + 1 {
        let t = Instant::now();
        let grads = if ckpt {
            let mut sum: Vec<Option<candle_core::Tensor>> = vec![None; opt.params().len()];
            let loss_of = |l: &candle_core::Tensor| causal_lm_loss(l, &labels).map(|(m, _)| m);
            decoder.checkpointed_backward(&batch, &loss_of, &mut |store| {
                freezetune_train::optim::accumulate(&mut sum, opt.collect(store)).map_err(|e| {
                    freezetune_train::TrainError::Candle {
                        context: "accumulating gradients".into(),
                        source: e,
                    }
                })
            })?;
            sum
        } else {
            let logits = decoder.forward(&batch)?;
            let (loss, _) = causal_lm_loss(&logits, &labels)?;
            opt.collect(&loss.backward()?)
        };
        opt.step(&grads, 1e-4)?;
        if step > 0 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    let line = serde_json::json!({
        "name": name, "median_ms": times[times.len() / 2], "peak_rss": peak_rss_bytes(),
        "estimate": p.memory.total_bytes, "trainable": p.trainable_params,
    });
    println!("{line}");
    Ok(())
}

fn spawn(model: &Path, name: &str, steps: usize, threads: Option<(usize, usize)>) -> Result<serde_json::Value> {
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["--one", name, &steps.to_string()]).arg(model);
    if let Some((rayon, candle)) = threads {
        cmd.env("RAYON_NUM_THREADS", rayon.to_string())
            .env("CANDLE_NUM_THREADS", candle.to_string());
    }
    let out = cmd.output()?;
    anyhow::ensure!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(out.stdout.trim_ascii())?)
}

/// The bench's Python with torch and transformers, installing them into its own virtual environment if needed.
fn pytorch_python() -> Result<std::path::PathBuf> {
    let venv = std::env::var_os("FREEZETUNE_BENCH_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("/var/tmp/freezetune-bench-venv"));
    let python = venv.join("bin/python");
    let ready = |p: &Path| {
        std::process::Command::new(p)
            .args(["-c", "import torch, transformers"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !ready(&python) {
        println!(
            "\ninstalling torch and transformers into {} (first run only)...",
            venv.display()
        );
        let ok = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()?
            .success()
            && std::process::Command::new(&python)
                .args(["-m", "pip", "install", "-q", "torch", "transformers"])
                .status()?
                .success();
        anyhow::ensure!(
            ok && ready(&python),
            "could not install torch and transformers into {}",
            venv.display()
        );
    }
    Ok(python)
}

fn pytorch_one(python: &Path, model: &Path, name: &str, steps: usize) -> Result<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("pytorch/train_step.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(model)
        .arg(name)
        .arg(steps.to_string())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "PyTorch {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    Ok(serde_json::from_str(&line)?)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--one") {
        return run_one(Path::new(&args[4]), &args[2], args[3].parse()?);
    }
    let steps: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let dir = std::env::temp_dir().join("freezetune-bench-train-model");
    if !dir.join("config.json").exists() {
        let spec = SynthSpec {
            family: Family::Llama,
            layers: 8,
            hidden: 512,
            intermediate: 1376,
            heads: 8,
            kv_heads: 8,
            vocab: 8000,
            experts: 0,
            dtype: freezetune_core::safetensors::DType::F32,
            shards: 1,
            fill: Fill::Random { seed: 3 },
            tied: false,
        };
        write_checkpoint(&dir, &spec)?;
    }
    println!("random llama: 8 layers, hidden 512, 8 heads, intermediate 1376, vocab 8000; batch {BATCH} x seq {}, f32, AdamW; median of {steps} steps", seq());
    println!(
        "{:<12} {:>12} {:>10} {:>12} {:>10} {:>14} {:>9}",
        "config", "trainable", "step ms", "vs full", "peak MiB", "estimate MiB", "est/peak"
    );
    let mut full: Option<(f64, f64)> = None;
    let mut results = Vec::new();
    for (name, _) in configs() {
        let r = spawn(&dir, name, steps, None)?;
        results.push(r.clone());
        let ms = r["median_ms"].as_f64().unwrap_or(0.0);
        let rss = r["peak_rss"].as_f64().unwrap_or(0.0);
        let est = r["estimate"].as_f64().unwrap_or(0.0);
        let (fm, fr) = *full.get_or_insert((ms, rss));
        println!(
            "{:<12} {:>12} {:>10.0} {:>5.2}x {:>4.2}x {:>10.0} {:>14.0} {:>9.2}",
            name,
            r["trainable"],
            ms,
            ms / fm,
            rss / fr,
            rss / 1048576.0,
            est / 1048576.0,
            est / rss.max(1.0)
        );
    }
    for name in checkpointed() {
        let r = spawn(&dir, &format!("{name} +ckpt"), steps, None)?;
        let (fm, fr) = full.expect("full ran first");
        let (ms, rss) = (
            r["median_ms"].as_f64().unwrap_or(0.0),
            r["peak_rss"].as_f64().unwrap_or(0.0),
        );
        println!(
            "{:<12} {:>12} {:>10.0} {:>5.2}x {:>4.2}x {:>10.0} {:>14} {:>9}",
            format!("{name} +ckpt"),
            r["trainable"],
            ms,
            ms / fm,
            rss / fr,
            rss / 1048576.0,
            "-",
            "-"
        );
    }
    let ours: Vec<serde_json::Value> = results;
    println!("\n(\"vs full\": step time ratio, then peak memory ratio)");
    match pytorch_python() {
        Err(e) => println!("\nPyTorch comparison skipped: {e:#}"),
        Ok(python) => {
            println!("\nside by side with PyTorch + transformers (eager attention, same files, same trainable sets):");
            println!(
                "{:<12} {:>14} {:>12} {:>12} {:>14} {:>12}",
                "config", "FreezeTune ms", "PyTorch ms", "PT/FT speed", "FreezeTune MiB", "PyTorch MiB"
            );
            for r in &ours {
                let name = r["name"].as_str().unwrap_or_default();
                let pt = pytorch_one(&python, &dir, name, steps)?;
                let (f, p) = (
                    r["median_ms"].as_f64().unwrap_or(0.0),
                    pt["median_ms"].as_f64().unwrap_or(0.0),
                );
                println!(
                    "{:<12} {:>14.0} {:>12.0} {:>11.2}x {:>14.0} {:>12.0}",
                    name,
                    f,
                    p,
                    p / f.max(1e-9),
                    r["peak_rss"].as_f64().unwrap_or(0.0) / 1048576.0,
                    pt["peak_rss"].as_f64().unwrap_or(0.0) / 1048576.0
                );
            }
            println!("(PT/FT speed > 1 means FreezeTune is faster)");
        }
    }
    println!("\nthread pools on \"top 2\" (RAYON_NUM_THREADS / CANDLE_NUM_THREADS):");
    for threads in [(2, 2), (2, 1), (1, 2), (1, 1)] {
        let r = spawn(&dir, "top 2", steps, Some(threads))?;
        println!(
            "  rayon {} / candle {}: {:.0} ms",
            threads.0,
            threads.1,
            r["median_ms"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}
