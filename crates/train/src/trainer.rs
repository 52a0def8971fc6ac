//! The training loop: a run config in, a run folder out (`run.toml`, `freeze_plan.json`, `metrics.jsonl`,
//! `checkpoints/step-N/`, `final/`). Decisions — how many steps, which examples form a batch, which learning rate —
//! are plain functions of the config, so a resumed run repeats exactly what an uninterrupted one would do.

use crate::checkpoint::{self, Progress};
use crate::data::{self, DataOptions, Example};
use crate::error::{candle, io, Result, TrainError};
use crate::model::{Batch, Decoder};
use crate::ops::causal_lm_loss;
use crate::optim::{accumulate, global_norm, AdamWConfig, Optimizer};
use crate::params::Params;
use crate::schedule::{lr_at, shuffle};
use crate::template::ChatFormatter;
use crate::DecoderConfig;
use candle_core::{DType, Device, Tensor};
use freezetune_core::events::{EventSink, TrainEvent};
use freezetune_core::fsutil::{write_atomic, Overwrite};
use freezetune_core::run_config::{OptimizerKind, RunConfig};
use freezetune_core::{plan, ModelLayout, PlanOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub run_dir: PathBuf,
    pub steps: u64,
    /// `None` when the run was stopped before the end.
    pub final_dir: Option<PathBuf>,
    pub last_loss: Option<f64>,
}

/// The device named by `runtime.device`.
pub fn select_device(name: &str) -> Result<Device> {
    let bad = |reason: String| TrainError::Config {
        path: PathBuf::from("runtime.device"),
        reason,
    };
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(if candle_core::utils::cuda_is_available() {
            Device::new_cuda(0).unwrap_or(Device::Cpu)
        } else if candle_core::utils::metal_is_available() {
            Device::new_metal(0).unwrap_or(Device::Cpu)
        } else {
            Device::Cpu
        }),
        "metal" => Device::new_metal(0).map_err(|e| bad(format!("metal: {e} (build with --features metal on macOS)"))),
        cuda => {
            let n = cuda.strip_prefix("cuda:").map(|n| n.parse().unwrap_or(0)).unwrap_or(0);
            Device::new_cuda(n).map_err(|e| {
                bad(format!(
                    "{cuda}: {e} (build with --features cuda on a machine with CUDA)"
                ))
            })
        }
    }
}

fn compute_dtype(name: &str, device: &Device) -> DType {
    match name {
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        "f32" => DType::F32,
        // CPU kernels are fastest and exact in f32; GPUs keep frozen weights in bf16.
        _ if device.is_cpu() => DType::F32,
        _ => DType::BF16,
    }
}

/// Applies `runtime.threads` / `runtime.op_threads`. candle reads these once, at its first CPU op, so this must run
/// before any tensor work in the process (the CLI and the app call `train` on a fresh worker).
pub fn apply_thread_settings(threads: usize, op_threads: usize) {
    if threads > 0 {
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    if op_threads > 0 {
        std::env::set_var("CANDLE_NUM_THREADS", op_threads.to_string());
    }
}

/// Runs (or, with `resume`, continues) the training described by `config`.
pub fn train(
    config: &RunConfig,
    resume: bool,
    sink: &dyn EventSink<TrainEvent>,
    cancel: &AtomicBool,
) -> Result<TrainOutcome> {
    let run_dir = config.output.dir.clone();
    let metrics_path = run_dir.join("metrics.jsonl");
    if !resume && metrics_path.exists() {
        return Err(TrainError::Config {
            path: run_dir.clone(),
            reason: "this run folder already holds a run; use --resume to continue it, or choose another output.dir"
                .into(),
        });
    }
    apply_thread_settings(config.runtime.threads, config.runtime.op_threads);
    let t = &config.training;
    if config.model.path.as_os_str().is_empty() {
        return Err(TrainError::Config {
            path: PathBuf::from("[model]"),
            reason: format!(
                "model.repo {:?} has not been resolved to a folder; `freezetune train` downloads it first",
                config.model.repo.as_deref().unwrap_or_default()
            ),
        });
    }
    let layout = ModelLayout::inspect(&config.model.path)?;
    let decoder_config = DecoderConfig::read(&config.model.path)?;
    let plan = plan(
        &layout,
        &config.freeze,
        PlanOptions {
            batch_size: t.batch_size as u64,
            seq_len: config.data.cutoff_len as u64,
        },
    )?;
    plan.require_trainable()?;
    let device = select_device(&config.runtime.device)?;
    let dtype = compute_dtype(&config.model.dtype, &device);

    let formatter = if config.model.path.join("tokenizer.json").is_file() {
        Some(ChatFormatter::load(&config.model.path)?)
    } else {
        None
    };
    let options = DataOptions {
        format: config.data.format,
        cutoff_len: config.data.cutoff_len,
        vocab_size: decoder_config.vocab_size,
        train_on_prompt: config.data.train_on_prompt,
        formatter: formatter.as_ref(),
    };
    let train_set = data::load(&config.data.train, &options)?;
    let (truncated, skipped) = (train_set.truncated, train_set.skipped_no_targets);
    tracing::info!(
        examples = train_set.examples.len(),
        truncated = train_set.truncated,
        skipped = train_set.skipped_no_targets,
        "training data"
    );
    let (train_examples, eval_examples) = match &config.data.eval {
        Some(path) => (train_set.examples, data::load(path, &options)?.examples),
        None => data::split_eval(train_set.examples, config.data.eval_split, t.seed),
    };

    std::fs::create_dir_all(&run_dir).map_err(io(&run_dir))?;
    write_atomic(&run_dir.join("run.toml"), config.to_toml().as_bytes(), Overwrite::Allow)?;
    write_atomic(
        &run_dir.join("freeze_plan.json"),
        serde_json::to_string_pretty(&plan).expect("json").as_bytes(),
        Overwrite::Allow,
    )?;

    let params = Params::load(&config.model.path, &plan, &device, dtype)?;
    let model = Decoder::new(decoder_config, &params, &device)?;
    let vars: Vec<_> = params.vars.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    let mut optimizer = match t.optimizer {
        OptimizerKind::Sgd => Optimizer::sgd(vars),
        OptimizerKind::Adamw => Optimizer::adamw(
            vars,
            AdamWConfig {
                beta1: t.adam_beta1,
                beta2: t.adam_beta2,
                eps: t.adam_epsilon,
                weight_decay: t.weight_decay,
                no_decay_for_bias_and_norm: t.no_decay_for_bias_and_norm,
            },
        ),
    };

    let micro_per_epoch = train_examples.len().div_ceil(t.batch_size);
    let steps_per_epoch = micro_per_epoch.div_ceil(t.gradient_accumulation_steps) as u64;
    let total_steps = if t.max_steps > 0 {
        t.max_steps
    } else {
        (t.epochs * steps_per_epoch as f64).ceil() as u64
    };
    let mut progress = Progress {
        step: 0,
        epoch: 0,
        cursor: 0,
        tokens: 0,
        elapsed_s: 0.0,
        optimizer_step: 0,
    };
    if resume {
        if let Some(dir) = checkpoint::latest(&run_dir) {
            progress = checkpoint::restore(&dir, &params, &mut optimizer, &device)?;
            truncate_metrics(&metrics_path, progress.step)?;
            tracing::info!(step = progress.step, checkpoint = %dir.display(), "resuming");
        } else {
            // Stopped before its first checkpoint: start over, without the old run's metric lines.
            truncate_metrics(&metrics_path, 0)?;
        }
    }
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(io(&metrics_path))?;
    sink.emit(TrainEvent::Started {
        run_dir: run_dir.clone(),
        total_steps,
        trainable_params: plan.trainable_params,
        examples: train_examples.len(),
        eval_examples: eval_examples.len(),
        truncated,
        skipped,
    });

    let order_of = |epoch: u64| -> Vec<usize> {
        let mut order: Vec<usize> = (0..train_examples.len()).collect();
        if t.shuffle {
            shuffle(&mut order, t.seed.wrapping_add(epoch));
        }
        order
    };
    let mut order = order_of(progress.epoch);
    // Time already spent before a resume, plus this session's (an `Instant` cannot go back past boot).
    let (started, elapsed_before) = (Instant::now(), progress.elapsed_s);
    let mut last_loss = None;
    while progress.step < total_steps {
        if cancel.load(Ordering::Relaxed) {
            let path = checkpoint::save(&run_dir, &params, &optimizer, &progress)?;
            sink.emit(TrainEvent::Stopped {
                step: progress.step,
                checkpoint: Some(path),
            });
            return Ok(TrainOutcome {
                run_dir,
                steps: progress.step,
                final_dir: None,
                last_loss,
            });
        }
        let mut micro = Vec::with_capacity(t.gradient_accumulation_steps);
        for _ in 0..t.gradient_accumulation_steps {
            if progress.cursor == micro_per_epoch {
                progress.epoch += 1;
                progress.cursor = 0;
                order = order_of(progress.epoch);
            }
            let start = progress.cursor * t.batch_size;
            let idx = &order[start..(start + t.batch_size).min(order.len())];
            micro.push(idx.iter().map(|&i| &train_examples[i]).collect::<Vec<_>>());
            progress.cursor += 1;
        }
        let step_tokens: usize = micro.iter().flatten().map(|e| e.learned_tokens()).sum();
        let mut grads: Vec<Option<Tensor>> = vec![None; optimizer.params().len()];
        let mut loss_sum = 0f64;
        let mut input_tokens = 0u64;
        for examples in &micro {
            let (batch, labels) = collate(examples);
            input_tokens += batch.lengths.iter().sum::<usize>() as u64;
            // Every token of the optimizer step weighs the same, however the step is split into micro-batches.
            let loss_of = |logits: &Tensor| -> candle_core::Result<Tensor> {
                let (mean, n) = causal_lm_loss(logits, &labels)?;
                mean * (n as f64 / step_tokens as f64)
            };
            if t.gradient_checkpointing {
                loss_sum += model.checkpointed_backward(&batch, &loss_of, &mut |store| {
                    accumulate(&mut grads, optimizer.collect(store)).map_err(candle("accumulating gradients"))
                })?;
            } else {
                let scaled = loss_of(&model.forward(&batch)?).map_err(candle("loss"))?;
                loss_sum += scaled.to_scalar::<f32>().map_err(candle("loss"))? as f64;
                let store = scaled.backward().map_err(candle("backward pass"))?;
                accumulate(&mut grads, optimizer.collect(&store)).map_err(candle("accumulating gradients"))?;
            }
        }
        let grad_norm = global_norm(&grads).map_err(candle("gradient norm"))?;
        if t.max_grad_norm > 0.0 && grad_norm > t.max_grad_norm {
            let scale = t.max_grad_norm / (grad_norm + 1e-6);
            for g in grads.iter_mut().flatten() {
                *g = (&*g * scale).map_err(candle("clipping"))?;
            }
        }
        let lr = lr_at(
            t.lr_scheduler,
            t.learning_rate,
            t.warmup_steps,
            total_steps,
            progress.step,
        );
        optimizer.step(&grads, lr).map_err(candle("optimizer step"))?;
        progress.step += 1;
        progress.tokens += input_tokens;
        progress.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
        progress.optimizer_step = optimizer.state().1;
        last_loss = Some(loss_sum);
        let event = TrainEvent::Step {
            step: progress.step,
            epoch: progress.epoch as f64 + progress.cursor as f64 / micro_per_epoch as f64,
            loss: loss_sum,
            lr,
            grad_norm,
            tokens: progress.tokens,
            tokens_per_second: progress.tokens as f64 / progress.elapsed_s.max(1e-9),
            elapsed_s: progress.elapsed_s,
        };
        log_metric(&mut metrics, &metrics_path, &event)?;
        sink.emit(event);
        let at_end = progress.step == total_steps;
        if !eval_examples.is_empty() && ((t.eval_steps > 0 && progress.step % t.eval_steps == 0) || at_end) {
            let event = TrainEvent::Eval {
                step: progress.step,
                eval_loss: evaluate(&model, &eval_examples, t.batch_size)?,
            };
            log_metric(&mut metrics, &metrics_path, &event)?;
            sink.emit(event);
        }
        if (t.save_steps > 0 && progress.step % t.save_steps == 0) || at_end {
            let path = checkpoint::save(&run_dir, &params, &optimizer, &progress)?;
            sink.emit(TrainEvent::Checkpoint {
                step: progress.step,
                path,
            });
        }
    }
    let final_dir = crate::export::export_checkpoint(&layout, &params, &run_dir.join("final"))?;
    sink.emit(TrainEvent::Finished {
        step: progress.step,
        final_dir: final_dir.clone(),
    });
    Ok(TrainOutcome {
        run_dir,
        steps: progress.step,
        final_dir: Some(final_dir),
        last_loss,
    })
}

fn collate(examples: &[&Example]) -> (Batch, Vec<Vec<i64>>) {
    let t = examples.iter().map(|e| e.input_ids.len()).max().unwrap_or(0);
    let labels = examples
        .iter()
        .map(|e| {
            e.labels
                .iter()
                .copied()
                .chain(std::iter::repeat_n(-100, t - e.labels.len()))
                .collect()
        })
        .collect();
    let batch = Batch {
        input_ids: examples.iter().map(|e| e.input_ids.clone()).collect(),
        lengths: examples.iter().map(|e| e.input_ids.len()).collect(),
    };
    (batch, labels)
}

/// Token-weighted mean loss over the evaluation examples.
fn evaluate(model: &Decoder, examples: &[Example], batch_size: usize) -> Result<f64> {
    let (mut total, mut count) = (0f64, 0usize);
    for chunk in examples.chunks(batch_size) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let (batch, labels) = collate(&refs);
        let logits = model.forward(&batch)?.detach();
        let (mean, n) = causal_lm_loss(&logits, &labels).map_err(candle("eval loss"))?;
        total += mean.to_scalar::<f32>().map_err(candle("eval loss"))? as f64 * n as f64;
        count += n;
    }
    Ok(total / count.max(1) as f64)
}

fn log_metric(file: &mut std::fs::File, path: &Path, event: &TrainEvent) -> Result<()> {
    let mut value = serde_json::to_value(event).expect("json");
    if let Some(obj) = value.as_object_mut() {
        obj.remove("event");
    }
    writeln!(file, "{value}").and_then(|_| file.flush()).map_err(io(path))
}

/// On resume, drops metric lines written after the checkpoint, so the file reads like one uninterrupted run.
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(path, kept.as_bytes(), Overwrite::Allow)
        .map(|_| ())
        .map_err(TrainError::from)
}
