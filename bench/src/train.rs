//! Training step time and peak memory per freeze configuration, on two random llama shapes: a 31M one (8 layers,
//! hidden 512, 8 heads, intermediate 1376, vocab 8000; batch 4 x seq 256) and a SmolLM2-135M-shaped one (30 layers,
//! hidden 576, 9 heads / 3 kv heads, intermediate 1536, vocab 49152, tied; batch 2 x 512); f32, AdamW. Each
//! configuration runs in its own process so its peak RSS is its own. Also compares the plan's memory estimate with
//! the measured peak, and sweeps the two CPU thread pools on one configuration.
//!
//! The same configurations then run in PyTorch + transformers, with its default attention (sdpa) and with eager
//! attention (installed into the bench's own virtual environment from PyPI on first use:
//! `$FREEZETUNE_BENCH_VENV`, default /var/tmp/freezetune-bench-venv), printed side by side as FreezeTune / PyTorch
//! step-time ratios (below 1 means FreezeTune is faster). A step time is the fastest step of a run (other tenants of
//! a shared machine only add time), and FreezeTune runs each configuration again right beside its PyTorch runs, so
//! a ratio compares runs minutes apart, not a table's length apart. The first line names the CPU and its SIMD
//! level: compare ratios from one run, never times across machines. "top 2 / full" is set against the ratio of
//! their matmul work (`flops.rs`), the floor no implementation goes below.
//!
//! A third shape is a hybrid: a Qwen3.5-0.8B-shaped model (batch 1 x 2048) that transformers itself makes, full
//! training and its full-attention layers alone; PyTorch's table names the Gated DeltaNet path transformers took.
//!
//! On a CPU with AVX512-BF16 the llama shapes also run in bf16 (the layers' matmuls on bf16-rounded operands,
//! what a bf16 run computes there), against PyTorch under CPU autocast in bf16, with each first step's loss.
//!
//! Run: `cargo run --release -p freezetune-bench --bin bench-train [-- STEPS] [--generic | --hybrid | --bf16]`

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use freezetune_core::synth::{write_checkpoint, Family, Fill, SynthSpec};
use freezetune_core::{plan, FreezeSpec, ModelLayout, PlanOptions};
use freezetune_train::config::Mixer;
use freezetune_train::optim::{AdamWConfig, Optimizer};
use freezetune_train::{Batch, Decoder, DecoderConfig, Params};
use std::path::Path;
use std::time::Instant;

mod flops;
mod peak;
mod rss;
use rss::peak_rss_bytes;
#[path = "venv.rs"]
mod venv;

/// Where a bench model comes from.
enum Source {
    /// FreezeTune's synthetic checkpoint writer.
    Synth(SynthSpec),
    /// transformers itself, from this config.json (`pytorch/make_model.py`): families the synthetic writer does not
    /// lay out (Qwen3.5's Gated DeltaNet layers).
    Transformers(serde_json::Value),
}

/// One model shape of the benchmark and the configurations measured on it.
struct BenchShape {
    label: &'static str,
    dir_name: &'static str,
    source: Source,
    batch: usize,
    seq: usize,
    configs: Vec<&'static str>,
    /// Configurations measured again with gradient checkpointing (FreezeTune only).
    checkpointed: Vec<&'static str>,
    /// Whether to sweep the two CPU thread pools on "top 2".
    thread_sweep: bool,
    steps: usize,
    /// Run FreezeTune's device-generic path (`FREEZETUNE_FUSED=0`: the graph CUDA and Metal run) and set its peak
    /// against the fit check's GPU estimate; otherwise the fused CPU path against the CPU estimate.
    generic: bool,
    /// transformers' attention implementations to compare with.
    pytorch_attentions: &'static [&'static str],
}

fn shapes(steps: usize) -> Vec<BenchShape> {
    let llama = |layers, hidden, intermediate, heads, kv_heads, vocab, tied| SynthSpec {
        family: Family::Llama,
        layers,
        hidden,
        intermediate,
        heads,
        kv_heads,
        vocab,
        experts: 0,
        dtype: freezetune_core::safetensors::DType::F32,
        shards: 1,
        fill: Fill::Random { seed: 3 },
        tied,
    };
    vec![
        BenchShape {
            label: "random llama 31M: 8 layers, hidden 512, 8 heads, intermediate 1376, vocab 8000",
            dir_name: "freezetune-bench-train-model",
            source: Source::Synth(llama(8, 512, 1376, 8, 8, 8000, false)),
            batch: 4,
            // FREEZETUNE_BENCH_SEQ separates the terms of the memory estimate (docs/memory.md).
            seq: std::env::var("FREEZETUNE_BENCH_SEQ")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(256),
            configs: vec!["full", "all layers", "top 2", "bottom 2", "layer 3"],
            checkpointed: vec!["full", "bottom 2"],
            thread_sweep: true,
            steps,
            generic: false,
            pytorch_attentions: &["sdpa", "eager"],
        },
        BenchShape {
            label:
                "SmolLM2-135M-shaped llama: 30 layers, hidden 576, 9 heads / 3 kv, intermediate 1536, vocab 49152, tied",
            dir_name: "freezetune-bench-train-135m",
            source: Source::Synth(llama(30, 576, 1536, 9, 3, 49152, true)),
            batch: 2,
            seq: 512,
            configs: vec!["full", "top 2"],
            checkpointed: vec![],
            thread_sweep: false,
            steps: steps.div_ceil(2).max(2),
            generic: false,
            pytorch_attentions: &["sdpa", "eager"],
        },
        // The GPU path's memory, measured on the CPU (docs/memory.md): long rows, where attention's S² once ruled.
        BenchShape {
            label: "random llama 31M, device-generic path (what CUDA and Metal run)",
            dir_name: "freezetune-bench-train-model",
            source: Source::Synth(llama(8, 512, 1376, 8, 8, 8000, false)),
            batch: 2,
            seq: 1024,
            configs: vec!["full", "top 2"],
            checkpointed: vec![],
            thread_sweep: false,
            steps: 2,
            generic: true,
            pytorch_attentions: &["sdpa"],
        },
        BenchShape {
            label: "SmolLM2-135M-shaped llama, device-generic path (what CUDA and Metal run)",
            dir_name: "freezetune-bench-train-135m",
            source: Source::Synth(llama(30, 576, 1536, 9, 3, 49152, true)),
            batch: 2,
            seq: 2048,
            configs: vec!["full", "top 2"],
            checkpointed: vec![],
            thread_sweep: false,
            steps: 1,
            generic: true,
            pytorch_attentions: &["sdpa"],
        },
        // A hybrid: three Gated DeltaNet layers to one gated full-attention layer.
        BenchShape {
            label: "Qwen3.5-0.8B-shaped (made by transformers): 24 layers (18 Gated DeltaNet, 6 gated attention), \
                    hidden 1024, 8 heads / 2 kv of 256, delta rule 16 heads of 128, intermediate 3584, vocab 248320, tied",
            dir_name: "freezetune-bench-train-qwen3_5-0.8b",
            source: Source::Transformers(qwen3_5_08b_config()),
            batch: 1,
            seq: 2048,
            configs: vec!["full", "full attention layers"],
            checkpointed: vec![],
            thread_sweep: false,
            steps: 2,
            generic: false,
            pytorch_attentions: &["sdpa"],
        },
    ]
}

/// Qwen3.5-0.8B's text model as its config.json describes it (Qwen/Qwen3.5-0.8B, `text_config`), as a text-only
/// `qwen3_5_text` model.
fn qwen3_5_08b_config() -> serde_json::Value {
    let layer_types: Vec<&str> = (0..24)
        .map(|i| {
            if i % 4 == 3 {
                "full_attention"
            } else {
                "linear_attention"
            }
        })
        .collect();
    serde_json::json!({
        "architectures": ["Qwen3_5ForCausalLM"], "model_type": "qwen3_5_text",
        "hidden_size": 1024, "intermediate_size": 3584, "num_hidden_layers": 24, "layer_types": layer_types,
        "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 256,
        "linear_conv_kernel_dim": 4, "linear_num_key_heads": 16, "linear_key_head_dim": 128,
        "linear_num_value_heads": 16, "linear_value_head_dim": 128,
        "vocab_size": 248320, "tie_word_embeddings": true, "rms_norm_eps": 1e-6, "hidden_act": "silu",
        "max_position_embeddings": 262144, "attention_bias": false, "initializer_range": 0.02, "dtype": "float32",
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
                            "mrope_section": [11, 11, 10], "mrope_interleaved": true},
    })
}

/// Writes a [`Source::Transformers`] model into `dir` with transformers (through a `.partial` folder).
fn make_with_transformers(python: &Path, config: &serde_json::Value, dir: &Path) -> Result<()> {
    let config_file = std::env::temp_dir().join(format!("{}.config.json", std::process::id()));
    std::fs::write(&config_file, serde_json::to_vec_pretty(config)?)?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("pytorch/make_model.py");
    let status = std::process::Command::new(python)
        .arg(script)
        .arg(&config_file)
        .arg(dir)
        .status();
    let _ = std::fs::remove_file(&config_file);
    anyhow::ensure!(
        status?.success(),
        "transformers could not write the model into {}",
        dir.display()
    );
    Ok(())
}

/// The configurations by name; "full" also trains every module outside the layers (`plan_of` names them).
fn configs() -> Vec<(&'static str, FreezeSpec)> {
    vec![
        (
            "full",
            FreezeSpec {
                all_layers: true,
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

/// Every tensor of the layers whose token mixer is full attention (a hybrid's attention layers), nothing else.
fn full_attention_layers(config: &DecoderConfig) -> FreezeSpec {
    let ids: Vec<String> = config
        .layers
        .iter()
        .enumerate()
        .filter(|(_, l)| l.mixer == Mixer::Attention && l.window.is_none())
        .map(|(i, _)| i.to_string())
        .collect();
    FreezeSpec {
        layers: Some(ids.join(",")),
        ..Default::default()
    }
}

/// The named configuration's plan on `model` for batch × seq, with the model's layout and description.
fn plan_of(
    model: &Path,
    name: &str,
    batch: usize,
    seq: usize,
) -> Result<(ModelLayout, freezetune_core::FreezePlan, DecoderConfig)> {
    let config = DecoderConfig::read(model)?;
    let mut spec = match name {
        "full attention layers" => full_attention_layers(&config),
        _ => {
            configs()
                .into_iter()
                .find(|(n, _)| *n == name)
                .context("unknown config")?
                .1
        }
    };
    let layout = ModelLayout::inspect(model)?;
    if name == "full" {
        // Every tensor, as PyTorch's "full" trains every parameter: whatever the family calls its final norm
        // (LFM2's is `embedding_norm`).
        spec.extra = layout.non_layer_modules.iter().map(|m| m.name.clone()).collect();
    }
    if layout.tie_word_embeddings {
        // A tied lm_head is embed_tokens: training that trains the head.
        spec.extra.retain(|m| m != "lm_head");
    }
    let options = PlanOptions {
        batch_size: batch as u64,
        seq_len: seq as u64,
    };
    let p = plan(&layout, &spec, options)?;
    Ok((layout, p, config))
}

/// Why the named configuration cannot run here, if the plan's CPU estimate exceeds the memory this machine has
/// available: a run the kernel would kill minutes in is skipped with its numbers instead.
fn too_big(shape: &BenchShape, model: &Path, name: &str) -> Result<Option<String>> {
    if shape.generic {
        return Ok(None);
    }
    let base = name.strip_suffix(" +ckpt").unwrap_or(name);
    let (_, p, _) = plan_of(model, base, shape.batch, shape.seq)?;
    // Unknown: run it and see.
    let available = freezetune_train::inventory::host_memory().1.unwrap_or(u64::MAX);
    let need = p.memory.cpu_total_bytes;
    Ok((need > available).then(|| {
        format!(
            "needs about {:.1} GiB by the plan's estimate, {:.1} GiB available: skipped",
            need as f64 / (1u64 << 30) as f64,
            available as f64 / (1u64 << 30) as f64
        )
    }))
}

/// What one child process measures.
struct Job<'a> {
    model: &'a Path,
    name: &'a str,
    steps: usize,
    batch: usize,
    seq: usize,
}

/// Child process: run one configuration and print one JSON line.
fn run_one(job: Job) -> Result<()> {
    let Job {
        model,
        name,
        steps,
        batch: batch_size,
        seq,
    } = job;
    let (base, ckpt) = match name.strip_suffix(" +ckpt") {
        Some(b) => (b, true),
        None => (name, false),
    };
    let (layout, p, config) = plan_of(model, base, batch_size, seq)?;
    let params = Params::load(model, &p, &Device::Cpu, DType::F32)?;
    let vocab = config.vocab_size as u64;
    let flops = flops::step_flops(&layout, &p, &config, batch_size, seq);
    let decoder = Decoder::new(config, &params, &Device::Cpu)?;
    let vars = params.vars.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    let mut opt = Optimizer::adamw(
        vars,
        AdamWConfig {
            weight_decay: 0.01,
            ..Default::default()
        },
    );
    let mut rng = freezetune_core::synth::Rng(12345);
    let ids: Vec<Vec<u32>> = (0..batch_size)
        .map(|_| (0..seq).map(|_| (rng.next_u64() % vocab) as u32).collect())
        .collect();
    let labels: Vec<Vec<i64>> = ids.iter().map(|r| r.iter().map(|&v| v as i64).collect()).collect();
    let batch = Batch {
        lengths: vec![seq; batch_size],
        input_ids: ids,
    };
    // FREEZETUNE_BENCH_BF16: the layers' matmuls in bf16, as a bf16 run on this CPU computes (spawn's `bf16`).
    let bf16 = std::env::var_os("FREEZETUNE_BENCH_BF16").is_some();
    let (times, first_loss) = freezetune_train::fused::with_bf16_matmuls(bf16, || {
        timed_steps(steps, ckpt, &decoder, &mut opt, &batch, &labels)
    })?;
    // The device-generic path is what a GPU runs: the fit check's GPU estimate (f32) is its prediction.
    let estimate = if freezetune_train::fused::enabled() {
        p.memory.cpu_total_bytes
    } else {
        let trainable: std::collections::BTreeSet<String> = p.trainable.iter().cloned().collect();
        let setup = freezetune_core::fit::FitSetup {
            batch_size: batch_size as u64,
            seq_len: seq as u64,
            gradient_accumulation: 1,
            gradient_checkpointing: ckpt,
            half_precision: false,
            cpu: false,
            quantize_frozen: Default::default(),
            optimizer: Default::default(),
        };
        freezetune_core::fit::need_bytes(&layout, &trainable, setup)
    };
    let line = serde_json::json!({
        "name": name, "median_ms": times[times.len() / 2], "min_ms": times[0], "peak_rss": peak_rss_bytes(), "flops": flops,
        "estimate": estimate, "trainable": p.trainable_params, "first_loss": first_loss,
    });
    println!("{line}");
    Ok(())
}

/// `steps + 1` optimizer steps on one batch: the sorted times of all but the first (ms), and the first loss (not
/// read back with gradient checkpointing, which returns none).
fn timed_steps(
    steps: usize,
    ckpt: bool,
    decoder: &Decoder,
    opt: &mut Optimizer,
    batch: &Batch,
    labels: &[Vec<i64>],
) -> Result<(Vec<f64>, Option<f32>)> {
    let mut times = Vec::new();
    let mut first_loss = None;
    for step in 0..steps + 1 {
        let t = Instant::now();
        let grads = if ckpt {
            let mut sum: Vec<Option<candle_core::Tensor>> = vec![None; opt.params().len()];
            // The mean: the sum over counted tokens, each weighed 1 / count.
            let count = labels.iter().map(|r| r.len().saturating_sub(1)).sum::<usize>();
            decoder.checkpointed_backward(batch, labels, 1.0 / count.max(1) as f64, &mut |store| {
                freezetune_train::optim::accumulate(&mut sum, opt.collect(store)).map_err(|e| {
                    freezetune_train::TrainError::Candle {
                        context: "accumulating gradients".into(),
                        source: e,
                    }
                })
            })?;
            sum
        } else {
            let (loss, _) = decoder.loss(batch, labels)?;
            if step == 0 {
                first_loss = Some(loss.to_scalar::<f32>()?);
            }
            opt.collect(&loss.backward()?)
        };
        opt.step(&grads, 1e-4)?;
        if step > 0 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok((times, first_loss))
}

fn spawn(shape: &BenchShape, model: &Path, name: &str, threads: Option<(usize, usize)>) -> Result<serde_json::Value> {
    spawn_in(shape, model, name, threads, &[])
}

/// As [`spawn`], with `env` set: `FREEZETUNE_BENCH_BF16` runs the layers' matmuls in bf16 (AMX or AVX512-BF16), as a
/// bf16 run computes on this CPU; `FREEZETUNE_F32_MATMUL` picks the f32 kernel.
fn spawn_in(
    shape: &BenchShape,
    model: &Path,
    name: &str,
    threads: Option<(usize, usize)>,
    env: &[(&str, &str)],
) -> Result<serde_json::Value> {
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.envs(env.iter().copied());
    cmd.args(["--one", name, &shape.steps.to_string()])
        .arg(model)
        .args([shape.batch.to_string(), shape.seq.to_string()]);
    if shape.generic {
        cmd.env("FREEZETUNE_FUSED", "0");
    }
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
    venv::python_with("torch, transformers", &["torch", "transformers"])
}

/// One configuration in PyTorch: f32, or with `precision` "bf16" under CPU autocast in bf16.
fn pytorch_one(
    python: &Path,
    shape: &BenchShape,
    model: &Path,
    name: &str,
    attention: &str,
    precision: &str,
) -> Result<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("pytorch/train_step.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(model)
        .arg(name)
        .args([shape.steps.to_string(), shape.batch.to_string(), shape.seq.to_string()])
        .args([attention, precision])
        .output()?;
    // A process the kernel's OOM killer ends gets SIGKILL and leaves no message of its own: say so, rather than
    // print whatever it logged before.
    use std::os::unix::process::ExitStatusExt;
    anyhow::ensure!(
        out.status.signal() != Some(9),
        "PyTorch {name} ({attention}): killed (SIGKILL), most likely out of memory (this machine has {:.1} GiB)",
        freezetune_train::inventory::host_memory().0.unwrap_or(0) as f64 / (1u64 << 30) as f64
    );
    anyhow::ensure!(
        out.status.success(),
        "PyTorch {name} ({attention}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    Ok(serde_json::from_str(&line)?)
}

/// The CPU's model name and the widest SIMD level this build dispatches to on it.
fn cpu_line() -> String {
    let name = freezetune_train::device::cpu_name();
    format!(
        "CPU: {name}, SIMD {}, {} threads",
        freezetune_train::device::cpu_simd_level(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    )
}

/// A run's step time: its fastest step. On a shared machine other tenants only ever add time, so the fastest of a
/// few steps is the steadiest measure of the code itself (medians moved ±15% between identical runs).
fn ms(r: &serde_json::Value) -> f64 {
    r["min_ms"].as_f64().unwrap_or(0.0)
}

fn mib(r: &serde_json::Value) -> f64 {
    r["peak_rss"].as_f64().unwrap_or(0.0) / 1048576.0
}

/// FreezeTune's own table: step time and memory per configuration, against full training and the estimate.
fn freezetune_table(shape: &BenchShape, dir: &Path, peak_gflops: f64) -> Result<Vec<serde_json::Value>> {
    println!(
        "{:<12} {:>12} {:>10} {:>12} {:>10} {:>14} {:>9} {:>8} {:>7}",
        "config", "trainable", "step ms", "vs full", "peak MiB", "estimate MiB", "est/peak", "GFLOP/s", "of peak"
    );
    let mut full: Option<(f64, f64)> = None;
    let mut results = Vec::new();
    for name in &shape.configs {
        if let Some(why) = too_big(shape, dir, name)? {
            println!("{name:<12} {why}");
            continue;
        }
        let r = spawn(shape, dir, name, None)?;
        let (t, rss) = (ms(&r), r["peak_rss"].as_f64().unwrap_or(0.0));
        let est = r["estimate"].as_f64().unwrap_or(0.0);
        // Against the first configuration measured ("full" where it fits).
        let (fm, fr) = *full.get_or_insert((t, rss));
        let gflops = r["flops"].as_f64().unwrap_or(0.0) / (t * 1e6).max(1e-9);
        println!(
            "{:<12} {:>12} {:>10.0} {:>5.2}x {:>4.2}x {:>10.0} {:>14.0} {:>9.2} {:>8.1} {:>6.0}%",
            name,
            r["trainable"],
            t,
            t / fm,
            rss / fr,
            mib(&r),
            est / 1048576.0,
            est / rss.max(1.0),
            gflops,
            100.0 * gflops / peak_gflops.max(1e-9)
        );
        results.push(r);
    }
    for name in &shape.checkpointed {
        let r = spawn(shape, dir, &format!("{name} +ckpt"), None)?;
        let Some((fm, fr)) = full else { continue };
        let rss = r["peak_rss"].as_f64().unwrap_or(0.0);
        println!(
            "{:<12} {:>12} {:>10.0} {:>5.2}x {:>4.2}x {:>10.0} {:>14} {:>9}",
            format!("{name} +ckpt"),
            r["trainable"],
            ms(&r),
            ms(&r) / fm,
            rss / fr,
            mib(&r),
            "-",
            "-"
        );
    }
    println!(
        "(\"vs full\": step time ratio, then peak memory ratio; GFLOP/s: the step's matmul work (flops.rs) over its \
         time, against the measured f32 peak)"
    );
    if let (Some(f), Some(t)) = (
        results.iter().find(|r| r["name"] == "full"),
        results.iter().find(|r| r["name"] == "top 2"),
    ) {
        let work = t["flops"].as_f64().unwrap_or(0.0) / f["flops"].as_f64().unwrap_or(1.0);
        println!(
            "top 2 / full step time: {:.2} (goal: at most 0.40); their matmul work: {work:.2} ({:.1} / {:.1} GFLOP, a \
             floor for any implementation: the frozen layers' forward pass and lm_head stay)",
            ms(t) / ms(f),
            t["flops"].as_f64().unwrap_or(0.0) / 1e9,
            f["flops"].as_f64().unwrap_or(0.0) / 1e9,
        );
    }
    Ok(results)
}

/// The same configurations in PyTorch (the shape's attention implementations), as FreezeTune / PyTorch ratios.
fn pytorch_table(python: &Path, shape: &BenchShape, dir: &Path, ours: &[serde_json::Value]) -> Result<()> {
    println!(
        "\nside by side with PyTorch + transformers (same files, same trainable sets; FT/PT < 1: FreezeTune faster;\n FT ms: the faster of the first run and one run again between the PyTorch ones; MiB: peak RSS):"
    );
    let attn = shape.pytorch_attentions;
    let mut paths = std::collections::BTreeSet::new();
    let mut head = format!("{:<12} {:>8}", "config", "FT ms");
    for a in attn {
        head += &format!(" {:>9} {:>8}", format!("{a} ms"), format!("FT/{a}"));
    }
    head += &format!(" {:>8}", "FT MiB");
    for a in attn {
        head += &format!(" {:>9} {:>9}", format!("{a} MiB"), "FT/PT mem");
    }
    println!("{head}");
    for r in ours {
        let name = r["name"].as_str().unwrap_or_default();
        let theirs = match attn
            .iter()
            .map(|a| pytorch_one(python, shape, dir, name, a, "f32"))
            .collect::<Result<Vec<_>>>()
        {
            Ok(theirs) => theirs,
            // One configuration PyTorch cannot run (out of memory, most often) must not end the whole bench.
            Err(e) => {
                println!("{name:<12} PyTorch failed: {e:#}");
                continue;
            }
        };
        paths.extend(
            theirs
                .iter()
                .filter_map(|t| t["path"].as_str())
                .filter(|p| !p.is_empty())
                .map(String::from),
        );
        let again = spawn(shape, dir, name, None)?;
        let ft = ms(r).min(ms(&again));
        let ft_mib = mib(r).min(mib(&again));
        let mut line = format!("{:<12} {:>8.0}", name, ft);
        for t in &theirs {
            line += &format!(" {:>9.0} {:>7.2}x", ms(t), ft / ms(t).max(1e-9));
        }
        line += &format!(" {:>8.0}", ft_mib);
        for t in &theirs {
            line += &format!(" {:>9.0} {:>8.2}x", mib(t), ft_mib / mib(t).max(1e-9));
        }
        println!("{line}");
    }
    for path in paths {
        println!("(PyTorch's Gated DeltaNet path: {path})");
    }
    Ok(())
}

/// bf16 compute where this CPU has AVX512-BF16: FreezeTune's bf16 run (the layers' matmuls on bf16-rounded
/// operands, f32 sums; weights and activations f32) against its f32 run and against PyTorch under
/// `torch.autocast("cpu", dtype=torch.bfloat16)` with sdpa, and the first step's loss of each.
fn bf16_table(python: Option<&Path>, shape: &BenchShape, dir: &Path, ours: &[serde_json::Value]) -> Result<()> {
    if !freezetune_train::fused::bf16_matmul_available() {
        println!("\nbf16: this CPU has no AVX512-BF16, so a bf16 run holds its tensors in bf16 instead: not measured");
        return Ok(());
    }
    if !freezetune_train::fused::bf16_matmul_faster() {
        println!("\n(on this CPU bf16 and auto runs do not use these matmuls: measured to see whether they should)");
    }
    let kernel = if freezetune_train::fused::amx_available() {
        "AMX"
    } else {
        "AVX512-BF16"
    };
    println!(
        "\nbf16 compute (FreezeTune: bf16 matmuls on {kernel}, f32 sums and tensors; PyTorch: CPU autocast bf16, \
         sdpa; FT loss: step 1's on the same batch, f32 / bf16):"
    );
    println!(
        "{:<12} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>9} {:>17}",
        "config", "FT f32", "FT bf16", "bf16/f32", "PT bf16", "FT/PT", "FT MiB", "PT MiB", "FT/PT mem", "FT loss"
    );
    for r in ours {
        let name = r["name"].as_str().unwrap_or_default();
        let b = spawn_in(shape, dir, name, None, &[("FREEZETUNE_BENCH_BF16", "1")])?;
        let theirs = python.map(|p| pytorch_one(p, shape, dir, name, "sdpa", "bf16"));
        let (pt_ms, pt_mib) = match &theirs {
            Some(Ok(t)) => (format!("{:.0}", ms(t)), format!("{:.0}", mib(t))),
            Some(Err(e)) => {
                println!("{name:<12} PyTorch failed: {e:#}");
                ("-".into(), "-".into())
            }
            None => ("-".into(), "-".into()),
        };
        let ratio = |num: f64, den: Option<f64>| den.map_or("-".into(), |d| format!("{:.2}x", num / d.max(1e-9)));
        let pt = match &theirs {
            Some(Ok(t)) => Some(t),
            _ => None,
        };
        let loss = |v: &serde_json::Value| v["first_loss"].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:<12} {:>9.0} {:>9.0} {:>8.2}x {:>9} {:>8} {:>8.0} {:>8} {:>9} {:>17}",
            name,
            ms(r),
            ms(&b),
            ms(&b) / ms(r).max(1e-9),
            pt_ms,
            ratio(ms(&b), pt.map(ms)),
            mib(&b),
            pt_mib,
            ratio(mib(&b), pt.map(mib)),
            format!("{:.4} / {:.4}", loss(r), loss(&b)),
        );
    }
    Ok(())
}

/// The f32 step on each f32 kernel where this CPU has AVX-512: the `gemm` crate's (the default) and
/// FreezeTune's own (`FREEZETUNE_F32_MATMUL=packed`), alternating, fastest of two runs each.
fn f32_kernel_table(shape: &BenchShape, dir: &Path) -> Result<()> {
    if !freezetune_train::fused::f32_kernel_available() {
        return Ok(());
    }
    println!(
        "
f32 kernels (ms, fastest of two alternating runs each; packed: FREEZETUNE_F32_MATMUL=packed):"
    );
    println!("{:<12} {:>9} {:>9} {:>12}", "config", "gemm", "packed", "packed/gemm");
    for name in ["full", "top 2"] {
        let mut best = [f64::INFINITY; 2];
        for _ in 0..2 {
            for (slot, kernel) in ["gemm", "packed"].into_iter().enumerate() {
                let r = spawn_in(shape, dir, name, None, &[("FREEZETUNE_F32_MATMUL", kernel)])?;
                best[slot] = best[slot].min(ms(&r));
            }
        }
        println!(
            "{name:<12} {:>9.0} {:>9.0} {:>11.2}x",
            best[0],
            best[1],
            best[1] / best[0]
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    freezetune_train::device::cpu_runtime_defaults();
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--one") {
        return run_one(Job {
            name: &args[2],
            steps: args[3].parse()?,
            model: Path::new(&args[4]),
            batch: args[5].parse()?,
            seq: args[6].parse()?,
        });
    }
    let steps: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    // --generic: only the device-generic (GPU path) memory shapes; --hybrid: only the hybrid (Qwen3.5) shape;
    // --bf16: the llama shapes' f32 and bf16 tables only (no f32 PyTorch table, checkpointing or thread sweep).
    let only_generic = args.iter().any(|a| a == "--generic");
    let only_hybrid = args.iter().any(|a| a == "--hybrid");
    let only_bf16 = args.iter().any(|a| a == "--bf16");
    println!("{}", cpu_line());
    println!("matmul: {}", freezetune_train::device::cpu_matmul_backend());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let peak_gflops = peak::f32_gflops(threads);
    println!("f32 peak, measured (FMA on {threads} threads): {peak_gflops:.0} GFLOP/s");
    let python = pytorch_python();
    let hybrid = |s: &BenchShape| matches!(s.source, Source::Transformers(_));
    let wanted = |s: &BenchShape| {
        (s.generic || !only_generic) && (hybrid(s) || !only_hybrid) && (!only_bf16 || !(s.generic || hybrid(s)))
    };
    for shape in shapes(steps).into_iter().filter(wanted) {
        let dir = std::env::temp_dir().join(shape.dir_name);
        if !dir.join("config.json").exists() {
            match (&shape.source, &python) {
                (Source::Synth(spec), _) => drop(write_checkpoint(&dir, spec)?),
                (Source::Transformers(config), Ok(python)) => make_with_transformers(python, config, &dir)?,
                (Source::Transformers(_), Err(e)) => {
                    println!("\n{}: skipped, transformers makes this model: {e:#}", shape.label);
                    continue;
                }
            }
        }
        println!(
            "\n{}; batch {} x seq {}, f32, AdamW; fastest of {} steps{}",
            shape.label,
            shape.batch,
            shape.seq,
            shape.steps,
            if shape.generic {
                " (FREEZETUNE_FUSED=0; estimate: the fit check's for a GPU in f32)"
            } else {
                ""
            }
        );
        let mut shape = shape;
        if only_bf16 {
            shape.checkpointed.clear();
            shape.thread_sweep = false;
        }
        let ours = freezetune_table(&shape, &dir, peak_gflops)?;
        match &python {
            Err(e) => println!("\nPyTorch comparison skipped: {e:#}"),
            Ok(python) if !only_bf16 => pytorch_table(python, &shape, &dir, &ours)?,
            Ok(_) => {}
        }
        if !shape.generic && !hybrid(&shape) {
            bf16_table(python.as_deref().ok(), &shape, &dir, &ours)?;
            if !only_bf16 {
                f32_kernel_table(&shape, &dir)?;
            }
        }
        if shape.thread_sweep {
            println!("\nthread pools on \"top 2\" (RAYON_NUM_THREADS / CANDLE_NUM_THREADS):");
            for threads in [(2, 2), (2, 1), (1, 2), (1, 1)] {
                let r = spawn(&shape, &dir, "top 2", Some(threads))?;
                println!("  rayon {} / candle {}: {:.0} ms", threads.0, threads.1, ms(&r));
            }
        }
    }
    Ok(())
}
