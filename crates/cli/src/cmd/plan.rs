use crate::args::{FreezeArgs, SizeArgs};
use crate::render;
use anyhow::{bail, Context, Result};
use clap::Args;
use freezetune_core::fit::{fit, DeviceMemory, FitSetup};
use freezetune_core::preset::PresetStore;
use freezetune_core::run_config::OptimizerKind;
use freezetune_core::schedule::TimelineContext;
use freezetune_core::{FreezeSpec, ModelLayout};
use std::path::PathBuf;

#[derive(Args)]
pub struct PlanArgs {
    /// The checkpoint folder (optional with --preset when the preset names a local model).
    pub model_dir: Option<PathBuf>,
    #[command(flatten)]
    pub freeze: FreezeArgs,
    /// Use the freeze choice (and model) of a saved preset.
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    #[command(flatten)]
    pub size: SizeArgs,
    /// Print the plan as JSON (with a layer schedule, its timeline under "timeline").
    #[arg(long)]
    pub json: bool,
    /// With a layer schedule: the run length the timeline is drawn for (a run's own data decides it).
    #[arg(long, default_value_t = 1000, value_name = "N", help_heading = "Layer schedule")]
    pub steps: u64,
    /// With a layer schedule counted in epochs: optimizer steps per epoch.
    #[arg(long, default_value_t = 100, value_name = "N", help_heading = "Layer schedule")]
    pub steps_per_epoch: u64,
    /// With a random layer schedule: the run's seed (used when the schedule names none).
    #[arg(long, default_value_t = 42, value_name = "N", help_heading = "Layer schedule")]
    pub seed: u64,
    #[command(flatten)]
    pub fit: FitArgs,
}

/// Resolves the model folder and the freeze spec from the positional path, the flags and an optional preset.
pub fn resolve(
    model_dir: Option<&PathBuf>,
    freeze: &FreezeArgs,
    preset: Option<&str>,
) -> Result<(ModelLayout, FreezeSpec, Vec<String>)> {
    let (spec, notes, preset_model) = match preset {
        Some(name) => {
            if !freeze.is_empty() {
                bail!("--preset {name} already holds a freeze choice; drop the selection flags or the --preset");
            }
            let p = PresetStore::open_default()?.load(name)?;
            let model = p.model.as_ref().and_then(super::preset::model_dir);
            (p.freeze, Vec::new(), model)
        }
        None => {
            let (spec, notes) = freeze.to_spec()?;
            (spec, notes, None)
        }
    };
    let dir = match (model_dir, preset_model) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) => d,
        (None, None) => bail!("no model folder given; pass MODEL_DIR (a preset's Hub model must be downloaded first)"),
    };
    let dir = super::model_folder(&dir)?;
    let layout = ModelLayout::inspect(&dir).with_context(|| format!("inspecting {}", dir.display()))?;
    Ok((layout, spec, notes))
}

/// "Does it fit?": the need against a device's memory, with the cheapest changes when it does not fit.
#[derive(clap::Args, Debug, Clone)]
pub struct FitArgs {
    /// Check the run fits on this device (cpu, cuda:N, metal: its free memory from `freezetune devices`).
    #[arg(long, value_name = "DEVICE", help_heading = "Does it fit?")]
    pub fit: Option<String>,
    /// ... or in this many GiB of a GPU (half precision unless --f32).
    #[arg(long, value_name = "GIB", conflicts_with = "fit", help_heading = "Does it fit?")]
    pub fit_memory: Option<f64>,
    /// Compute in bf16/f16 (f32 master weights; on an AMD CPU with AVX512-BF16 or an Intel one with AMX, bf16 keeps
    /// f32 tensors and counts as f32); the default is f32 on the CPU, half precision on a GPU (as `dtype = "auto"` trains).
    #[arg(long, conflicts_with = "f32", help_heading = "Does it fit?")]
    pub half: bool,
    /// Compute in f32 on a GPU too.
    #[arg(long, help_heading = "Does it fit?")]
    pub f32: bool,
    #[arg(long, help_heading = "Does it fit?")]
    pub gradient_checkpointing: bool,
    #[arg(long, default_value_t = 1, value_name = "N", help_heading = "Does it fit?")]
    pub gradient_accumulation: u64,
    /// Frozen layers' matrices held quantized while training: none, q8_0 or q4_k (as `train --quantize-frozen`).
    #[arg(long, value_name = "FORMAT", value_parser = super::train::parse_quantize_frozen, help_heading = "Does it fit?")]
    pub quantize_frozen: Option<freezetune_core::quant::QuantizeFrozen>,
    /// The optimizer whose state to count: adamw (the default), adamw8bit, adafactor or sgd.
    #[arg(long, value_name = "NAME", value_parser = parse_optimizer, help_heading = "Does it fit?")]
    pub optimizer: Option<OptimizerKind>,
}

fn parse_optimizer(s: &str) -> std::result::Result<OptimizerKind, String> {
    match s {
        "adamw" => Ok(OptimizerKind::Adamw),
        "adamw8bit" => Ok(OptimizerKind::Adamw8bit),
        "adafactor" => Ok(OptimizerKind::Adafactor),
        "sgd" => Ok(OptimizerKind::Sgd),
        _ => Err(format!(
            "{s:?} is not an optimizer; use adamw, adamw8bit, adafactor or sgd"
        )),
    }
}

impl FitArgs {
    /// The device's memory to check against, if a check was asked for.
    fn device(&self) -> Result<Option<(DeviceMemory, bool)>> {
        if let Some(gib) = self.fit_memory {
            let bytes = (gib * 1024f64.powi(3)) as u64;
            return Ok(Some((
                DeviceMemory {
                    name: format!("{gib} GiB"),
                    available_bytes: bytes,
                },
                false,
            )));
        }
        let Some(id) = &self.fit else { return Ok(None) };
        device_memory(id).map(Some)
    }
}

/// The memory of device `id` (as `freezetune devices` names it) and whether it is the CPU.
pub(crate) fn device_memory(id: &str) -> Result<(DeviceMemory, bool)> {
    let inventory = freezetune_train::inventory::inventory();
    let Some(d) = inventory.devices.iter().find(|d| d.id == id) else {
        let have: Vec<&str> = inventory.devices.iter().map(|d| d.id.as_str()).collect();
        anyhow::bail!(
            "--fit {id}: no such device here (this machine has {}); see `freezetune devices`",
            have.join(", ")
        );
    };
    let Some(available) = d.free_memory.or(d.total_memory) else {
        anyhow::bail!("--fit {id}: its memory is unknown; give it with --fit-memory GIB");
    };
    let name = if d.backend == "cpu" {
        "this machine".to_string()
    } else {
        d.id.clone()
    };
    Ok((
        DeviceMemory {
            name,
            available_bytes: available,
        },
        d.backend == "cpu",
    ))
}

pub fn run(args: &PlanArgs) -> Result<()> {
    let (layout, spec, notes) = resolve(args.model_dir.as_ref(), &args.freeze, args.preset.as_deref())?;
    let plan = freezetune_core::plan(&layout, &spec, args.size.options())?;
    let timeline = match &spec.schedule {
        Some(schedule) if !schedule.is_static() => {
            let context = TimelineContext {
                total_steps: args.steps,
                steps_per_epoch: args.steps_per_epoch,
                seed: args.seed,
                options: args.size.options(),
            };
            Some(freezetune_core::schedule::timeline(&layout, &plan, schedule, context)?)
        }
        _ => None,
    };
    let verdict = match args.fit.device()? {
        Some((device, cpu)) => {
            let setup = FitSetup {
                batch_size: args.size.batch_size,
                seq_len: args.size.seq_len,
                gradient_accumulation: args.fit.gradient_accumulation.max(1),
                gradient_checkpointing: args.fit.gradient_checkpointing,
                // bf16 on an AMD CPU with AVX512-BF16 or an Intel one with AMX keeps f32 tensors: its memory is f32's.
                half_precision: (args.fit.half && !(cpu && freezetune_train::device::cpu_half_keeps_f32()))
                    || (!cpu && !args.fit.f32),
                cpu,
                quantize_frozen: args.fit.quantize_frozen.unwrap_or_default(),
                optimizer: args.fit.optimizer.unwrap_or_default(),
            };
            let trainable = plan.trainable.iter().cloned().collect();
            Some(fit(&layout, &trainable, setup, &device))
        }
        None => None,
    };
    if args.json {
        let mut value = serde_json::to_value(&plan)?;
        if let (Some(t), Some(obj)) = (&timeline, value.as_object_mut()) {
            obj.insert("timeline".into(), serde_json::to_value(t)?);
        }
        if let (Some(v), Some(obj)) = (&verdict, value.as_object_mut()) {
            obj.insert("fit".into(), serde_json::to_value(v)?);
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        for n in notes {
            eprintln!("note: {n}");
        }
        print!("{}", render::plan_table(&layout, &plan));
        if let Some(t) = &timeline {
            print!("{}", render::timeline_table(t));
        }
        if let Some(v) = &verdict {
            print!("{}", render::fit_verdict(v));
        }
    }
    Ok(())
}
