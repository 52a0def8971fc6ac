//! Setting a run up: the config checked, the plan computed, the device and dtype chosen, the data loaded, the run
//! folder written, the model and optimizer built, and (on resume) the newest checkpoint restored.

use super::metrics::truncate_metrics;
use super::scaler::LossScaler;
use super::Run;
use crate::checkpoint::{self, Progress};
use crate::data::{self, DataOptions, Example};
use crate::device::{apply_thread_settings, checkpoint_dtype, compute, select_device, Compute, DeviceChoice};
use crate::error::{io, Result, TrainError};
use crate::model::Decoder;
use crate::optim::{AdamWConfig, Optimizer};
use crate::params::Params;
use crate::template::ChatFormatter;
use crate::DecoderConfig;
use candle_core::DType;
use freezetune_core::fsutil::{write_atomic, Overwrite};
use freezetune_core::run_config::{OptimizerKind, ResolvedSection, RunConfig, TrainingSection};
use freezetune_core::schedule::{self, ScheduleKind, Timeline, TimelineContext};
use freezetune_core::{plan, FreezePlan, ModelLayout, PlanOptions};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The examples a run trains and evaluates on.
pub(crate) struct RunData {
    pub train: Vec<Example>,
    pub eval: Vec<Example>,
    pub truncated: usize,
    pub skipped: usize,
}

impl Run {
    pub(super) fn prepare(config: &RunConfig, resume: bool) -> Result<Run> {
        let run_dir = config.output.dir.clone();
        let metrics_path = run_dir.join("metrics.jsonl");
        if !resume && metrics_path.exists() {
            return Err(TrainError::Config {
                path: run_dir.clone(),
                reason:
                    "this run folder already holds a run; use --resume to continue it, or choose another output.dir"
                        .into(),
            });
        }
        apply_thread_settings(config.runtime.threads, config.runtime.op_threads);
        check_model_resolved(config)?;
        let layout = ModelLayout::inspect(&config.model.path)?;
        let decoder_config = DecoderConfig::read(&config.model.path)?;
        let t = &config.training;
        let plan = plan(
            &layout,
            &config.freeze,
            PlanOptions {
                batch_size: t.batch_size as u64,
                seq_len: config.data.cutoff_len as u64,
            },
        )?;
        plan.require_trainable()?;
        let mut device = select_device(&config.runtime.device)?;
        let compute = compute(&config.model.dtype, &device.device, checkpoint_dtype(&layout));
        if let Some(note) = compute.note() {
            device.note = Some(match device.note.take() {
                Some(before) => format!("{before}; {note}"),
                None => note.to_string(),
            });
        }
        let dtype = compute.dtype;
        let data = load_data(config, &decoder_config)?;

        let micro_per_epoch = data.train.len().div_ceil(t.batch_size);
        let total_steps = total_steps(t, micro_per_epoch);
        let timeline = build_timeline(&layout, &plan, config, total_steps, micro_per_epoch)?;
        write_run_files(config, &plan, &timeline, &device, compute)?;

        let resume_from = if resume { checkpoint::latest(&run_dir) } else { None };
        let start_step = match &resume_from {
            Some(dir) => checkpoint::read_progress(dir)?.step,
            None => 0,
        };
        let phase = timeline.phase_at(start_step);
        let mut params = Params::load_quantized(
            &config.model.path,
            &timeline.phases[phase].trainable,
            &device.device,
            dtype,
            config.model.quantize_frozen,
        )?;
        let mut optimizer = build_optimizer(t, &params);
        let progress = starting_progress(
            resume_from.as_deref(),
            resume,
            &trained_before(&timeline, start_step),
            (&mut params, &mut optimizer),
            &device.device,
            dtype,
            &metrics_path,
        )?;
        // Built after the restore, which may replace constants (tensors a schedule trained and froze).
        let model = Decoder::new(decoder_config.clone(), &params, &device.device)?;
        optimizer.set_lr_scale(super::phase::lr_scales(&timeline.phases[phase], optimizer.params()));
        // Resumed inside a phase: it is already entered. At its first step (a fresh run, or a resume right at a
        // boundary) the loop enters it, which announces it and applies the optimizer policy.
        let entered = (timeline.phases[phase].start_step < start_step).then_some(phase);
        let metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .map_err(io(&metrics_path))?;
        let order = super::step::epoch_order(t, data.train.len(), progress.epoch);
        Ok(Run {
            config: config.clone(),
            run_dir,
            metrics,
            metrics_path,
            layout,
            trainable_params: plan.trainable_params,
            params,
            model,
            optimizer,
            decoder_config,
            timeline,
            phase: entered,
            data,
            micro_per_epoch,
            total_steps,
            elapsed_before: progress.elapsed_s,
            progress,
            order,
            started: Instant::now(),
            device,
            compute,
            last_loss: None,
        })
    }
}

/// Where a run starts: fresh, or the newest checkpoint's progress (its tensors and optimizer state restored into
/// `state`, which must hold every name in `required`; metric lines after it dropped). A run stopped before its
/// first checkpoint starts over.
fn starting_progress(
    checkpoint: Option<&Path>,
    resume: bool,
    required: &[String],
    state: (&mut Params, &mut Optimizer),
    device: &candle_core::Device,
    dtype: DType,
    metrics_path: &Path,
) -> Result<Progress> {
    let fresh = Progress {
        scaler: (dtype == DType::F16).then(LossScaler::default),
        ..Progress::default()
    };
    let Some(dir) = checkpoint else {
        if resume {
            truncate_metrics(metrics_path, 0)?;
        }
        return Ok(fresh);
    };
    let (params, optimizer) = state;
    let mut progress = checkpoint::restore(dir, params, optimizer, device, required)?;
    if dtype == DType::F16 && progress.scaler.is_none() {
        progress.scaler = Some(LossScaler::default());
    }
    truncate_metrics(metrics_path, progress.step)?;
    tracing::info!(step = progress.step, checkpoint = %dir.display(), "resuming");
    Ok(progress)
}

fn check_model_resolved(config: &RunConfig) -> Result<()> {
    if config.model.path.as_os_str().is_empty() {
        return Err(TrainError::Config {
            path: PathBuf::from("[model]"),
            reason: format!(
                "model.repo {:?} has not been resolved to a folder; `freezetune train` downloads it first",
                config.model.repo.as_deref().unwrap_or_default()
            ),
        });
    }
    Ok(())
}

pub(crate) fn load_data(config: &RunConfig, decoder_config: &DecoderConfig) -> Result<RunData> {
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
    let set = data::load_run(config, &options)?;
    tracing::info!(
        examples = set.examples.len(),
        truncated = set.truncated,
        skipped = set.skipped_no_targets,
        broken_turns = set.skipped_broken_turns,
        "training data"
    );
    let (truncated, skipped) = (set.truncated, set.skipped_no_targets + set.skipped_broken_turns);
    let (train, eval) = match (&config.data.eval, config.data.eval_datasets.is_empty()) {
        (Some(path), _) => (set.examples, data::load(path, &options)?.examples),
        (None, false) => (set.examples, data::load_eval_datasets(config, &options)?.examples),
        (None, true) => data::split_eval(set.examples, config.data.eval_split, config.training.seed),
    };
    Ok(RunData {
        train,
        eval,
        truncated,
        skipped,
    })
}

/// The run's layer schedule made concrete (a static one when the config has none).
fn build_timeline(
    layout: &ModelLayout,
    plan: &FreezePlan,
    config: &RunConfig,
    total_steps: u64,
    micro_per_epoch: usize,
) -> Result<Timeline> {
    let t = &config.training;
    let context = TimelineContext {
        total_steps,
        steps_per_epoch: micro_per_epoch.div_ceil(t.gradient_accumulation_steps) as u64,
        seed: t.seed,
        options: PlanOptions {
            batch_size: t.batch_size as u64,
            seq_len: config.data.cutoff_len as u64,
        },
    };
    let spec = config.freeze.schedule.clone().unwrap_or_default();
    let timeline = schedule::timeline(layout, plan, &spec, context)?;
    for note in &timeline.notes {
        tracing::warn!("layer schedule: {note}");
    }
    Ok(timeline)
}

/// What trained in the phases begun before `step`: what a checkpoint at `step` must hold.
fn trained_before(timeline: &Timeline, step: u64) -> Vec<String> {
    let names: BTreeSet<&String> = timeline
        .phases
        .iter()
        .filter(|p| p.start_step < step)
        .flat_map(|p| &p.trainable)
        .collect();
    names.into_iter().cloned().collect()
}

/// `run.toml` (with what the run resolved: device, dtype), `freeze_plan.json`, and for a layer schedule
/// `schedule.json` (its timeline).
fn write_run_files(
    config: &RunConfig,
    plan: &FreezePlan,
    timeline: &Timeline,
    device: &DeviceChoice,
    compute: Compute,
) -> Result<()> {
    let run_dir: &Path = &config.output.dir;
    std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
    let mut written = config.clone();
    written.resolved = Some(ResolvedSection {
        device: device.name.clone(),
        dtype: compute.name().into(),
        device_note: device.note.clone(),
    });
    write_atomic(
        &run_dir.join("run.toml"),
        written.to_toml().as_bytes(),
        Overwrite::Allow,
    )?;
    write_atomic(
        &run_dir.join("freeze_plan.json"),
        serde_json::to_string_pretty(plan).expect("json").as_bytes(),
        Overwrite::Allow,
    )?;
    if timeline.kind != ScheduleKind::Static {
        write_atomic(
            &run_dir.join("schedule.json"),
            serde_json::to_string_pretty(timeline).expect("json").as_bytes(),
            Overwrite::Allow,
        )?;
    }
    Ok(())
}

fn build_optimizer(t: &TrainingSection, params: &Params) -> Optimizer {
    let vars: Vec<_> = params.vars.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    let adamw = AdamWConfig {
        beta1: t.adam_beta1,
        beta2: t.adam_beta2,
        eps: t.adam_epsilon,
        weight_decay: t.weight_decay,
        no_decay_for_bias_and_norm: t.no_decay_for_bias_and_norm,
    };
    match t.optimizer {
        OptimizerKind::Sgd => Optimizer::sgd(vars),
        OptimizerKind::Adamw => Optimizer::adamw(vars, adamw),
        OptimizerKind::Adamw8bit => Optimizer::adamw8bit(vars, adamw),
        OptimizerKind::Adafactor => Optimizer::adafactor(vars, t.weight_decay, t.no_decay_for_bias_and_norm),
    }
}

fn total_steps(t: &TrainingSection, micro_per_epoch: usize) -> u64 {
    let steps_per_epoch = micro_per_epoch.div_ceil(t.gradient_accumulation_steps) as u64;
    if t.max_steps > 0 {
        t.max_steps
    } else {
        (t.epochs * steps_per_epoch as f64).ceil() as u64
    }
}
