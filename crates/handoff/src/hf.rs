//! Settings both engines hand to Hugging Face's Trainer under the same names: the batch per GPU, the scheduler
//! and the optimizer; and the run settings neither engine has.

use crate::yaml::Yaml;
use crate::{BundleOptions, Engine};
use freezetune_core::quant::QuantizeFrozen;
use freezetune_core::run_config::{LrScheduler, ModelSection, OptimizerKind, RunConfig, TrainingSection};

/// FreezeTune's batch is the whole step's; the engines' is per GPU.
pub(crate) fn per_device_batch(t: &TrainingSection, o: &BundleOptions, notes: &mut Vec<String>) -> usize {
    if t.batch_size % o.gpus == 0 {
        return t.batch_size / o.gpus;
    }
    notes.push(format!(
        "batch_size {} does not divide by {} GPUs: each GPU takes {}, so a step sees {}x the rows",
        t.batch_size, o.gpus, t.batch_size, o.gpus
    ));
    t.batch_size
}

/// The Trainer's scheduler name (`SchedulerType`).
pub(crate) fn scheduler(t: &TrainingSection) -> &'static str {
    match t.lr_scheduler {
        LrScheduler::Constant if t.warmup_steps > 0 => "constant_with_warmup",
        LrScheduler::Constant => "constant",
        LrScheduler::Linear => "linear",
        LrScheduler::Cosine => "cosine",
    }
}

/// The Trainer's optimizer name (`OptimizerNames`).
pub(crate) fn optimizer(t: &TrainingSection, notes: &mut Vec<String>) -> &'static str {
    if t.optimizer == OptimizerKind::Adamw8bit {
        notes.push("adamw8bit is bitsandbytes' AdamW8bit there: pip install bitsandbytes".into());
    }
    match t.optimizer {
        OptimizerKind::Adamw => "adamw_torch",
        OptimizerKind::Adamw8bit => "adamw_bnb_8bit",
        OptimizerKind::Adafactor => "adafactor",
        OptimizerKind::Sgd => "sgd",
    }
}

/// Run settings with no equivalent in either engine.
pub(crate) fn unmapped_everywhere(engine: Engine, c: &RunConfig, unmapped: &mut Vec<String>) {
    if c.model.quantize_frozen != QuantizeFrozen::None {
        unmapped.push(format!(
            "[model] quantize_frozen = {:?}: {} keeps frozen weights in the compute dtype (its quantization is for \
             LoRA/QLoRA only); the run needs the memory of unquantized weights",
            c.model.quantize_frozen,
            engine.title()
        ));
    }
    if !c.training.no_decay_for_bias_and_norm {
        unmapped.push(
            "[training] no_decay_for_bias_and_norm = false: Hugging Face's Trainer always exempts biases and norms \
             from weight decay"
                .into(),
        );
    }
    let rt = &c.runtime;
    if rt.device != "auto" || rt.threads != 0 || rt.op_threads != 0 {
        unmapped.push(format!(
            "[runtime] device = {:?}, threads = {}, op_threads = {}: the cluster's launcher chooses devices and \
             threads",
            rt.device, rt.threads, rt.op_threads
        ));
    }
}

/// The model section: a Hub model by repo id and pinned revision, under the engine's `keys` (model, revision); a
/// local folder by its path, with a note that the cluster needs a copy of it.
pub(crate) fn model_keys(y: &mut Yaml, m: &ModelSection, keys: (&str, &str), notes: &mut Vec<String>) {
    let (model, revision) = keys;
    y.section("model");
    match &m.repo {
        Some(repo) => {
            y.str(model, repo);
            if let Some(rev) = pinned_revision(m) {
                y.str(revision, &rev);
            }
        }
        None => {
            y.str(model, &m.path.display().to_string());
            notes.push(format!(
                "{model} is this machine's folder {}: copy it to the cluster or set a Hub repo id there",
                m.path.display()
            ));
        }
    }
}

/// The Hub commit a Hub model is pinned to: the one FreezeTune planned on (its Hub-cache snapshot folder is named
/// by it), so the cluster does not train whatever `main` has become; else the revision the run names.
fn pinned_revision(m: &ModelSection) -> Option<String> {
    let snapshot = m
        .path
        .parent()
        .filter(|p| p.file_name().is_some_and(|n| n == "snapshots"))
        .and(m.path.file_name())
        .map(|n| n.to_string_lossy().into_owned());
    snapshot.or_else(|| m.revision.clone())
}

/// accelerate's name for the run's compute dtype: `bf16` for `auto` (what auto picks on a GPU with bf16).
pub(crate) fn accelerate_precision(dtype: &str) -> &'static str {
    match dtype {
        "f32" => "no",
        "f16" => "fp16",
        _ => "bf16",
    }
}

/// The engine's names for the settings [`optimization`] writes.
pub(crate) struct Names {
    pub batch: &'static str,
    pub epochs: &'static str,
    pub scheduler: &'static str,
    pub optimizer: &'static str,
}

/// Batch, length, schedule and optimizer: the same Trainer settings in both engines, under `names`. Returns the
/// batch per GPU.
pub(crate) fn optimization(
    y: &mut Yaml,
    t: &TrainingSection,
    o: &BundleOptions,
    names: &Names,
    notes: &mut Vec<String>,
) -> usize {
    let per_device = per_device_batch(t, o, notes);
    y.num(names.batch, per_device);
    y.num("gradient_accumulation_steps", t.gradient_accumulation_steps);
    y.float("learning_rate", t.learning_rate);
    match t.max_steps {
        0 => y.float(names.epochs, t.epochs),
        n => y.num("max_steps", n),
    }
    y.str(names.scheduler, scheduler(t));
    y.num("warmup_steps", t.warmup_steps);
    y.float("weight_decay", t.weight_decay);
    y.str(names.optimizer, optimizer(t, notes));
    y.float("adam_beta1", t.adam_beta1);
    y.float("adam_beta2", t.adam_beta2);
    y.float("adam_epsilon", t.adam_epsilon);
    y.float("max_grad_norm", t.max_grad_norm);
    y.num("seed", t.seed);
    per_device
}
