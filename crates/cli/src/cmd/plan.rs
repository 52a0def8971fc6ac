use crate::args::{FreezeArgs, SizeArgs};
use crate::render;
use anyhow::{bail, Context, Result};
use clap::Args;
use freezetune_core::preset::PresetStore;
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
    let layout = ModelLayout::inspect(&dir).with_context(|| format!("inspecting {}", dir.display()))?;
    Ok((layout, spec, notes))
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
    if args.json {
        let mut value = serde_json::to_value(&plan)?;
        if let (Some(t), Some(obj)) = (&timeline, value.as_object_mut()) {
            obj.insert("timeline".into(), serde_json::to_value(t)?);
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
    }
    Ok(())
}
