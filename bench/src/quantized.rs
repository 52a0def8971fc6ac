//! Quantized frozen layers on a 7B model: peak memory of training a random Llama-2-7B-shaped model's top 2 layers on
//! the CPU (32 layers, hidden 4096, intermediate 11008, vocab 32000; batch 1 x 256; AdamW), with the frozen layers
//! held as q4_k (f32 compute) and, for comparison, unquantized in bf16. Each configuration runs in its own process,
//! so its peak RSS (VmHWM) is its own; each prints its load time, step time and the fit check's estimate beside the
//! measured peak. Then the fit check's estimate for the 7B's top 4 layers on a 24 GB GPU (bf16, seq 2048, batch 4,
//! gradient checkpointing) with and without q4_k frozen layers.
//!
//! The checkpoint (13.5 GB of bf16) is written once to `$FREEZETUNE_BENCH_7B` (default /var/tmp/freezetune-bench-7b)
//! and reused. The unquantized run needs about 20 GB: on a machine with less memory it is reported as not run.
//!
//! Run: `cargo run --release -p freezetune-bench --bin bench-quantized [-- STEPS | --estimate]` (`--estimate`: only
//! the fit check, from the model's shapes).

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use freezetune_core::fit::{fit, need_bytes, DeviceMemory, FitSetup};
use freezetune_core::quant::QuantizeFrozen;
use freezetune_core::run_config::OptimizerKind;
use freezetune_core::synth::{write_checkpoint, Family, Fill, SynthSpec};
use freezetune_core::{plan, FreezeSpec, ModelLayout, PlanOptions};
use freezetune_train::loss::causal_lm_loss;
use freezetune_train::optim::{AdamWConfig, Optimizer};
use freezetune_train::{Batch, Decoder, DecoderConfig, Params};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

mod rss;
use rss::peak_rss_bytes;

const GIB: f64 = (1u64 << 30) as f64;
const SEQ: usize = 256;

fn llama2_7b() -> SynthSpec {
    SynthSpec {
        family: Family::Llama,
        layers: 32,
        hidden: 4096,
        intermediate: 11008,
        heads: 32,
        kv_heads: 32,
        vocab: 32000,
        experts: 0,
        dtype: freezetune_core::safetensors::DType::BF16,
        shards: 3,
        fill: Fill::Random { seed: 7 },
        tied: false,
    }
}

/// One measured configuration: the frozen layers' format and the compute dtype.
struct Config {
    label: &'static str,
    quantize: QuantizeFrozen,
    dtype: DType,
}

fn configs() -> [Config; 2] {
    [
        Config {
            label: "q4_k frozen, f32 compute",
            quantize: QuantizeFrozen::Q4K,
            dtype: DType::F32,
        },
        Config {
            label: "unquantized, bf16 compute",
            quantize: QuantizeFrozen::None,
            dtype: DType::BF16,
        },
    ]
}

fn model_dir() -> PathBuf {
    std::env::var_os("FREEZETUNE_BENCH_7B")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/freezetune-bench-7b"))
}

/// The random 7B checkpoint, written on first use (a `complete` marker says a previous write finished).
fn ensure_model(dir: &Path) -> Result<()> {
    let marker = dir.join("complete");
    if marker.exists() {
        return Ok(());
    }
    println!(
        "writing a random Llama-2-7B-shaped bf16 checkpoint to {} (first run only)...",
        dir.display()
    );
    let t = Instant::now();
    write_checkpoint(dir, &llama2_7b()).context("writing the 7B checkpoint (it needs 13.5 GB of disk)")?;
    std::fs::write(&marker, b"")?;
    println!("  written in {:.0} s", t.elapsed().as_secs_f64());
    Ok(())
}

fn top(n: usize) -> FreezeSpec {
    FreezeSpec {
        top: Some(n),
        ..Default::default()
    }
}

/// Child process: load, train `steps` steps, print one JSON line.
fn run_one(dir: &Path, config: &Config, steps: usize) -> Result<()> {
    let layout = ModelLayout::inspect(dir)?;
    let options = PlanOptions {
        batch_size: 1,
        seq_len: SEQ as u64,
    };
    let p = plan(&layout, &top(2), options)?;
    let t = Instant::now();
    let params = Params::load_quantized(dir, &p.trainable, &Device::Cpu, config.dtype, config.quantize)?;
    let load_s = t.elapsed().as_secs_f64();
    let after_load = peak_rss_bytes();
    let decoder_config = DecoderConfig::read(dir)?;
    let vocab = decoder_config.vocab_size as u64;
    let decoder = Decoder::new(decoder_config, &params, &Device::Cpu)?;
    let vars = params.vars.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    let mut opt = Optimizer::adamw(vars, AdamWConfig::default());
    let mut rng = freezetune_core::synth::Rng(99);
    let ids: Vec<u32> = (0..SEQ).map(|_| (rng.next_u64() % vocab) as u32).collect();
    let labels = vec![ids.iter().map(|&v| v as i64).collect::<Vec<i64>>()];
    let batch = Batch {
        lengths: vec![SEQ],
        input_ids: vec![ids],
    };
    let mut times = Vec::new();
    for _ in 0..steps {
        let t = Instant::now();
        let logits = decoder.forward_logits(&batch)?;
        let (loss, _) = causal_lm_loss(&logits, &labels)?;
        let grads = opt.collect(&loss.backward()?);
        drop((logits, loss));
        opt.step(&grads, 1e-5)?;
        times.push(t.elapsed().as_secs_f64());
    }
    let trainable: BTreeSet<String> = p.trainable.iter().cloned().collect();
    let setup = FitSetup {
        batch_size: 1,
        seq_len: SEQ as u64,
        gradient_accumulation: 1,
        gradient_checkpointing: false,
        half_precision: config.dtype != DType::F32,
        cpu: true,
        quantize_frozen: config.quantize,
        optimizer: Default::default(),
    };
    let line = serde_json::json!({
        "peak_rss": peak_rss_bytes(), "after_load": after_load, "load_s": load_s,
        "step_s": times.iter().cloned().fold(f64::INFINITY, f64::min),
        "frozen_bytes": params.frozen_bytes(), "quantized": params.quantized_count(),
        "estimate": need_bytes(&layout, &trainable, setup),
    });
    println!("{line}");
    Ok(())
}

fn spawn(dir: &Path, index: usize, steps: usize) -> Result<Option<serde_json::Value>> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["--one", &index.to_string(), &steps.to_string()])
        .arg(dir)
        .output()?;
    if !out.status.success() {
        use std::os::unix::process::ExitStatusExt;
        if out.status.signal() == Some(9) {
            return Ok(None); // the kernel's out-of-memory killer
        }
        anyhow::bail!("{}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(Some(serde_json::from_str(text.lines().last().unwrap_or_default())?))
}

/// The fit check for the 7B's top 4 layers on a 24 GB GPU in bf16 (seq 2048, batch 4, checkpointing).
/// Only the checkpoint's header is read: it is written sparse (the estimate needs shapes, not weights).
fn gpu_estimate() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("freezetune-bench-7b-header-{}", std::process::id()));
    write_checkpoint(
        &dir,
        &SynthSpec {
            fill: Fill::Sparse,
            shards: 1,
            ..llama2_7b()
        },
    )?;
    let layout = ModelLayout::inspect(&dir);
    std::fs::remove_dir_all(&dir)?;
    let layout = layout?;
    let p = plan(&layout, &top(4), PlanOptions::default())?;
    let trainable: BTreeSet<String> = p.trainable.iter().cloned().collect();
    let device = DeviceMemory {
        name: "24 GB".into(),
        available_bytes: 24_000_000_000,
    };
    println!("\nFit check, top 4 layers on a 24 GB GPU, bf16, seq 2048, batch 4, gradient checkpointing:");
    let combos = [
        (QuantizeFrozen::None, OptimizerKind::Adamw),
        (QuantizeFrozen::Q4K, OptimizerKind::Adamw),
        (QuantizeFrozen::None, OptimizerKind::Adamw8bit),
        (QuantizeFrozen::Q4K, OptimizerKind::Adamw8bit),
    ];
    for (q, optimizer) in combos {
        let setup = FitSetup {
            batch_size: 4,
            seq_len: 2048,
            gradient_accumulation: 1,
            gradient_checkpointing: true,
            half_precision: true,
            cpu: false,
            quantize_frozen: q,
            optimizer,
        };
        let v = fit(&layout, &trainable, setup, &device);
        println!(
            "  frozen layers {:<5} {:<10} need {:>6.2} GiB: {}",
            q.name(),
            format!("{optimizer:?}").to_lowercase(),
            v.need_bytes as f64 / GIB,
            if v.fits { "fits" } else { "does not fit" }
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--one") {
        let index: usize = args[2].parse()?;
        let steps: usize = args[3].parse()?;
        return run_one(Path::new(&args[4]), &configs()[index], steps);
    }
    if args.get(1).map(String::as_str) == Some("--estimate") {
        return gpu_estimate();
    }
    let steps: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(2);
    let dir = model_dir();
    ensure_model(&dir)?;
    println!(
        "CPU: {}, {} threads; {:.1} GiB available. Random Llama-2-7B shape, top 2 layers, batch 1 x {SEQ}, AdamW, \
         fastest of {steps} steps",
        freezetune_train::device::cpu_name(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        freezetune_train::inventory::host_memory().1.unwrap_or(0) as f64 / GIB
    );
    println!(
        "{:<28} {:>10} {:>14} {:>9} {:>9} {:>14} {:>12}",
        "config", "peak GiB", "estimate GiB", "load s", "step s", "frozen GiB", "quantized"
    );
    for (i, c) in configs().iter().enumerate() {
        match spawn(&dir, i, steps)? {
            Some(r) => {
                let gib = |k: &str| r[k].as_f64().unwrap_or(0.0) / GIB;
                println!(
                    "{:<28} {:>10.2} {:>14.2} {:>9.0} {:>9.1} {:>14.2} {:>12}",
                    c.label,
                    gib("peak_rss"),
                    gib("estimate"),
                    r["load_s"].as_f64().unwrap_or(0.0),
                    r["step_s"].as_f64().unwrap_or(0.0),
                    gib("frozen_bytes"),
                    r["quantized"]
                );
            }
            None => println!("{:<28} killed for lack of memory (the kernel's OOM killer)", c.label),
        }
    }
    gpu_estimate()
}
