use anyhow::{bail, Result};
use clap::Args;
use freezetune_core::events::TrainEvent;
use freezetune_core::preset::PresetStore;
use freezetune_core::quant::QuantizeFrozen;
use freezetune_core::run_config::RunConfig;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Args)]
pub struct TrainArgs {
    /// The run config (TOML; keys in docs/run-config.md).
    #[arg(long, value_name = "RUN.toml", required_unless_present = "preset")]
    pub config: Option<PathBuf>,
    /// A saved preset: with --config it replaces the config's [freeze] choice; alone it must hold a whole run
    /// (`preset save NAME --config RUN.toml`).
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    /// Continue the run in output.dir from its newest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Machine-readable progress: `jsonl` writes one JSON event per line on stdout (started, step, eval,
    /// checkpoint, stopped, finished; errors as {"error": ...}); a `stop` line on stdin stops the run with a
    /// checkpoint, as Ctrl-C does, and so does the end of stdin when it is a pipe (the parent process is gone).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub events: Option<EventFormat>,
    /// Hold frozen projection matrices quantized while training (replaces the config's model.quantize_frozen):
    /// `q8_0` (about 1/4 of f32) or `q4_k` (about 1/7); `none` keeps them in the compute dtype.
    #[arg(long, value_name = "FORMAT", value_parser = parse_quantize_frozen)]
    pub quantize_frozen: Option<QuantizeFrozen>,
}

pub(crate) fn parse_quantize_frozen(s: &str) -> std::result::Result<QuantizeFrozen, String> {
    QuantizeFrozen::parse(s).ok_or_else(|| format!("{s:?} is not a quantize-frozen format; use none, q8_0 or q4_k"))
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventFormat {
    Jsonl,
}

pub fn run(args: &TrainArgs) -> Result<()> {
    let config = load_config(args)?;
    let cancel = cancel_on_interrupt(args.events.is_some(), CHECKPOINT_AND_STOP)?;
    match args.events {
        Some(EventFormat::Jsonl) => run_jsonl(&config, args.resume, &cancel),
        None => run_human(&config, args.resume, &cancel),
    }
}

/// The run config: `--config` (with `--preset`'s freeze choice), or a whole-run preset; a Hub model downloaded.
fn load_config(args: &TrainArgs) -> Result<RunConfig> {
    let preset = args
        .preset
        .as_deref()
        .map(|name| PresetStore::open_default()?.load(name))
        .transpose()?;
    let mut config = match (&args.config, preset) {
        (Some(path), preset) => {
            let mut config = RunConfig::read(path)?;
            if let Some(p) = preset {
                config.freeze = p.freeze;
            }
            config
        }
        (None, Some(p)) => {
            let model = p.model.as_ref().and_then(super::preset::model_dir);
            let Some(model) = model else {
                bail!(
                    "preset {:?} names no local model (download its Hub model first, or pass --config)",
                    p.name
                )
            };
            p.to_run(model)?
        }
        (None, None) => bail!("pass --config RUN.toml or --preset NAME"),
    };
    if let Some(q) = args.quantize_frozen {
        config.model.quantize_frozen = q;
    }
    resolve_model(&mut config)?;
    Ok(config)
}

/// What a training run (and the probe, which shares its stop wiring) says on Ctrl-C.
pub(crate) const CHECKPOINT_AND_STOP: &str = "stopping after this step and saving a checkpoint";

/// The flag a run polls between steps. Ctrl-C (SIGINT) sets it — the run checkpoints and stops — and a second
/// Ctrl-C exits at once. With `--events`, a `stop` line on stdin sets it too (how a parent process stops a
/// worker without signals). `stopping` is what the first Ctrl-C prints (what the command does when it stops).
pub(crate) fn cancel_on_interrupt(events: bool, stopping: &'static str) -> Result<Arc<AtomicBool>> {
    let cancel = Arc::new(AtomicBool::new(false));
    let c = cancel.clone();
    let mut first_interrupt = true;
    ctrlc_handler(move || {
        if first_interrupt {
            eprintln!("\n{stopping} (Ctrl-C again to abort)");
            c.store(true, Ordering::Relaxed);
            first_interrupt = false;
        } else {
            std::process::exit(130);
        }
    })?;
    if events {
        let c = cancel.clone();
        let from_parent = stdin_is_pipe();
        std::thread::spawn(move || {
            for line in std::io::stdin().lines() {
                match line {
                    Ok(l) if l.trim() == "stop" => c.store(true, Ordering::Relaxed),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            // A parent that talks to us through a pipe and closes it is gone (the app quit or crashed): save a
            // checkpoint and stop rather than train on unwatched. Stdin from a file or /dev/null just ends.
            if from_parent {
                c.store(true, Ordering::Relaxed);
            }
        });
    }
    Ok(cancel)
}

/// `--events jsonl`: every `TrainEvent` as one JSON line on stdout (the types the app uses); nothing else goes to
/// stdout, so a parent process reads the stream as it is. A stopped run exits 0 after its `stopped` event.
fn run_jsonl(config: &RunConfig, resume: bool, cancel: &AtomicBool) -> Result<()> {
    let sink = |event: TrainEvent| crate::render::event_line(&event);
    freezetune_train::train(config, resume, &sink, cancel)?;
    Ok(())
}

/// A progress bar and lines on stderr; the final checkpoint's folder on stdout.
fn run_human(config: &RunConfig, resume: bool, cancel: &AtomicBool) -> Result<()> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix}[{bar:30}] step {pos}/{len} {msg} ETA {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    let b = bar.clone();
    // Without a terminal the bar is hidden: its lines go to stderr directly, and steps are logged now and then.
    let say = move |b: &ProgressBar, msg: String| {
        if b.is_hidden() {
            eprintln!("{msg}")
        } else {
            b.println(msg)
        }
    };
    let sink = move |event: TrainEvent| match event {
        TrainEvent::Started {
            total_steps,
            trainable_params,
            examples,
            eval_examples,
            run_dir,
            truncated,
            skipped,
            device,
            dtype,
            device_note,
            frozen_weight_bytes,
            quantized_tensors,
            quantize_frozen,
        } => {
            b.set_length(total_steps);
            if let Some(note) = device_note {
                say(&b, note);
            }
            if let Some(format) = quantize_frozen {
                say(
                    &b,
                    format!(
                        "frozen weights: {:.2} GiB, {quantized_tensors} matrices held as {format}",
                        frozen_weight_bytes as f64 / (1u64 << 30) as f64
                    ),
                );
            }
            say(
                &b,
                format!(
                    "training {trainable_params} parameters on {examples} examples ({eval_examples} for eval) on \
                     {device} ({dtype} compute, f32 master weights) -> {}",
                    run_dir.display()
                ),
            );
            if truncated + skipped > 0 {
                say(
                    &b,
                    format!(
                    "data: {truncated} example(s) truncated to cutoff_len, {skipped} dropped (nothing left to learn, or turns \
                     that do not alternate user / assistant)"
                ),
                );
            }
        }
        TrainEvent::Step {
            step,
            loss,
            tokens_per_second,
            lr,
            skipped,
            ..
        } => {
            b.set_position(step);
            let mut msg = format!("loss {loss:.4} lr {lr:.2e} {tokens_per_second:.0} tok/s");
            if skipped {
                msg.push_str(" (f16 overflow: update skipped, loss scale halved)");
            }
            let every = (b.length().unwrap_or(0) / 10).max(1);
            if b.is_hidden() && (step % every == 0 || step == 1) {
                eprintln!("step {step}/{}: {msg}", b.length().unwrap_or(0));
            }
            b.set_message(msg);
        }
        TrainEvent::Eval { step, eval_loss } => say(&b, format!("step {step}: eval loss {eval_loss:.4}")),
        TrainEvent::Phase {
            phase,
            phases,
            end_step,
            layers,
            trainable_params,
            ..
        } => {
            let ids = freezetune_core::ids::format_layer_ids(&layers);
            b.set_prefix(format!("phase {}/{phases} ", phase + 1));
            say(
                &b,
                format!(
                    "phase {}/{phases}: layers {ids} train ({} parameters) until step {end_step}",
                    phase + 1,
                    crate::render::count(trainable_params)
                ),
            );
        }
        TrainEvent::Checkpoint { path, .. } => say(&b, format!("checkpoint {}", path.display())),
        TrainEvent::Stopped { step, checkpoint } => say(
            &b,
            format!(
                "stopped at step {step}; resume with --resume (checkpoint {})",
                checkpoint.map(|p| p.display().to_string()).unwrap_or_default()
            ),
        ),
        TrainEvent::Finished { .. } => {}
    };
    let outcome = freezetune_train::train(config, resume, &sink, cancel);
    bar.finish_and_clear();
    let outcome = outcome?;
    match outcome.final_dir {
        Some(dir) => {
            eprintln!(
                "done: {} steps on {} ({}), last loss {:.4}",
                outcome.steps,
                outcome.device,
                outcome.dtype,
                outcome.last_loss.unwrap_or(f64::NAN)
            );
            println!("{}", dir.display());
        }
        None => bail!("stopped at step {}; run again with --resume to continue", outcome.steps),
    }
    Ok(())
}

fn stdin_is_pipe() -> bool {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        use std::os::unix::fs::FileTypeExt;
        let fd = std::io::stdin().as_fd().try_clone_to_owned();
        fd.ok()
            .and_then(|fd| std::fs::File::from(fd).metadata().ok())
            .is_some_and(|m| m.file_type().is_fifo())
    }
    #[cfg(not(unix))]
    false
}

/// Ctrl-C through tokio's signal handling on a small background runtime.
fn ctrlc_handler(mut f: impl FnMut() + Send + 'static) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::spawn(move || {
        rt.block_on(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                f();
            }
        })
    });
    Ok(())
}

/// A `[model] repo` becomes its snapshot folder (downloaded now if it is not cached); a GGUF file its mapped
/// folder (mod.rs); each Hub dataset its snapshot folder.
pub fn resolve_model(config: &mut RunConfig) -> Result<()> {
    if config.model.path.as_os_str().is_empty() {
        if let Some(repo) = config.model.repo.clone() {
            config.model.path = super::download::fetch(&repo, config.model.revision.as_deref())?;
        }
    }
    config.model.path = super::model_folder(&config.model.path)?;
    for d in config.data.datasets.iter_mut().chain(&mut config.data.eval_datasets) {
        if let (Some(repo), None) = (&d.hub, &d.path) {
            // A Hub dataset's split is `train` when the run names none (freezetune-data's spec.rs).
            let split = d.split.as_deref().unwrap_or("train");
            d.path = Some(super::download::fetch_dataset(
                repo,
                (d.config.as_deref(), split),
                &d.files,
            )?);
        }
    }
    Ok(())
}
