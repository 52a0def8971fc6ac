//! `freezetune probe --config RUN.toml` (or `freezetune probe MODEL --data FILE`): which layers matter on the data (Block Influence, angular
//! distance of layer windows, per-layer gradient norms); see `freezetune_train::probe`.

use anyhow::Result;
use clap::Args;
use freezetune_core::run_config::{
    DataFormat, DataSection, ModelSection, OutputSection, RunConfig, RuntimeSection, TrainingSection,
};
use freezetune_core::FreezeSpec;
use freezetune_train::probe::{
    cached_report, probe_run, probe_run_cached, suggest, ProbeOptions, ProbeProgress, SuggestBy,
};
use std::path::PathBuf;

#[derive(Args)]
pub struct ProbeArgs {
    /// A model folder, with --data (instead of --config).
    #[arg(required_unless_present = "config", conflicts_with = "config")]
    pub model_dir: Option<PathBuf>,
    /// The run config: its model, training data (rendered as training renders it), batch size and device.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// With MODEL_DIR: the data file (JSON array or JSONL, as for training).
    #[arg(long, requires = "model_dir")]
    pub data: Option<PathBuf>,
    /// With MODEL_DIR: the data format (auto, tokenized, alpaca, sharegpt, messages, text).
    #[arg(long, default_value = "auto")]
    pub format: String,
    /// With MODEL_DIR: tokens per example, examples per batch and the device.
    #[arg(long, default_value_t = 1024)]
    pub cutoff_len: usize,
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// How many batches of the data to measure on.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub batches: usize,
    /// Layers per angular-distance window.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub window: usize,
    /// Forward-only signals (no backward pass): for models too big to differentiate here.
    #[arg(long)]
    pub forward_only: bool,
    /// Keep results in this folder: the same model, data and settings are read back instead of measured again.
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Only read the result from --cache: an error when these settings were not measured before.
    #[arg(long, requires = "cache")]
    pub cached_only: bool,
    /// Also suggest this many layers to train (printed as ids `plan --layers` takes).
    #[arg(long, value_name = "K")]
    pub suggest: Option<usize>,
    /// What the suggestion ranks by: gradient (norm relative to the weights) or influence (Block Influence).
    #[arg(long, value_name = "SIGNAL", default_value = "gradient", value_parser = parse_by)]
    pub by: SuggestBy,
    #[arg(long)]
    pub json: bool,
    /// `jsonl`: progress lines ({"event": "probe_progress", "done", "total"}), then the report (as with --json) on
    /// one stdout line, errors as {"error": ...}: what a parent process (the app's worker) reads; a `stop` line on
    /// stdin stops the probe.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub events: Option<super::train::EventFormat>,
}

fn parse_by(s: &str) -> std::result::Result<SuggestBy, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("{s:?}: rank by gradient or influence"))
}

/// The run config the probe reads: the given one, or one made of MODEL_DIR and the data flags.
fn config_of(args: &ProbeArgs) -> Result<RunConfig> {
    if let Some(path) = &args.config {
        let mut config = RunConfig::read(path)?;
        super::train::resolve_model(&mut config)?;
        return Ok(config);
    }
    let (Some(model), Some(data)) = (&args.model_dir, &args.data) else {
        anyhow::bail!("give a run config (--config RUN.toml), or a model folder and its data (MODEL_DIR --data FILE)");
    };
    let cwd = std::env::current_dir()?;
    let format: DataFormat = serde_json::from_value(serde_json::Value::String(args.format.clone())).map_err(|_| {
        anyhow::anyhow!(
            "--format {:?}: choose auto, tokenized, alpaca, sharegpt, messages or text",
            args.format
        )
    })?;
    let config = RunConfig {
        model: ModelSection {
            path: super::model_folder(&cwd.join(model))?,
            repo: None,
            revision: None,
            dtype: "auto".into(),
            quantize_frozen: Default::default(),
        },
        freeze: FreezeSpec {
            all_layers: true,
            ..Default::default()
        },
        data: DataSection {
            train: cwd.join(data),
            format,
            datasets: Vec::new(),
            mix: Default::default(),
            eval: None,
            eval_datasets: Vec::new(),
            eval_split: 0.0,
            cutoff_len: args.cutoff_len,
            train_on_prompt: false,
        },
        training: TrainingSection {
            batch_size: args.batch_size.max(1),
            ..Default::default()
        },
        runtime: RuntimeSection {
            device: args.device.clone(),
            ..Default::default()
        },
        output: OutputSection { dir: cwd.join("probe") },
        resolved: None,
    };
    config.check().map_err(anyhow::Error::msg)?;
    Ok(config)
}

pub fn run(args: &ProbeArgs) -> Result<()> {
    let config = config_of(args)?;
    let options = ProbeOptions {
        batch_size: config.training.batch_size,
        batches: args.batches,
        window: args.window.max(1),
        gradients: !args.forward_only,
    };
    let events = args.events.is_some();
    let cancel = super::train::cancel_on_interrupt(events, super::train::CHECKPOINT_AND_STOP)?;
    let mut watch = |p: ProbeProgress| {
        if events {
            crate::render::event_line(
                &serde_json::json!({"event": "probe_progress", "done": p.done, "total": p.total}),
            );
        } else {
            eprint!("\rmeasuring: pass {} of {}", p.done.min(p.total), p.total);
            if p.done >= p.total {
                eprintln!();
            }
        }
        !cancel.load(std::sync::atomic::Ordering::Relaxed)
    };
    let (report, cached) = match &args.cache {
        Some(dir) if args.cached_only => match cached_report(&config, options, dir)? {
            Some(report) => (report, true),
            None => anyhow::bail!(
                "these layers were not measured on this data with these settings yet (run without --cached-only)"
            ),
        },
        Some(dir) => probe_run_cached(&config, options, dir, &mut watch)?,
        None => (probe_run(&config, options, &mut watch)?, false),
    };
    if cached {
        eprintln!("(measured before on the same model, data and settings: read from the cache)");
    }
    let suggestion = match args.suggest {
        Some(k) => Some(freezetune_core::ids::format_layer_ids(
            &suggest(&report, k, args.by).map_err(anyhow::Error::msg)?,
        )),
        None => None,
    };
    if args.json || args.events.is_some() {
        let mut value = serde_json::to_value(&report)?;
        if let Some(obj) = value.as_object_mut() {
            obj.insert("cached".into(), cached.into());
            if let Some(ids) = &suggestion {
                obj.insert("suggestion".into(), serde_json::json!({ "layers": ids, "by": args.by }));
            }
        }
        if args.events.is_some() {
            crate::render::event_line(&value);
        } else {
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        return Ok(());
    }
    println!(
        "{} batch(es), {} tokens; angular distance over windows of {} layer(s)",
        report.batches, report.tokens, report.window
    );
    println!(
        "{:>5} {:>16} {:>17} {:>12} {:>13}",
        "layer", "block influence", "angular distance", "grad norm", "grad/weight"
    );
    let opt = |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$e}"));
    for l in report.layers.iter().rev() {
        println!(
            "{:>5} {:>16.6} {:>17} {:>12} {:>13}",
            l.layer,
            l.block_influence,
            l.angular_distance.map_or("-".to_string(), |v| format!("{v:.6}")),
            opt(l.grad_norm, 3),
            opt(l.relative_grad, 3)
        );
    }
    if let Some(ids) = suggestion {
        println!("suggested layers (by {:?}): {ids}", args.by);
    }
    Ok(())
}
