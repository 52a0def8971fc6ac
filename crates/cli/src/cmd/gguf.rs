//! `export-gguf` and `import-gguf`: a model or run as a llama.cpp GGUF file, and a GGUF file as a model folder.

use super::train::EventFormat;
use anyhow::{anyhow, Result};
use clap::Args;
use freezetune_gguf::{
    ExportOptions, ExportReport, ExportType, GgufEvent, ImportDType, ImportOptions, ImportReport, Progress,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

#[derive(Args)]
pub struct ExportGgufArgs {
    /// A model folder, or a run folder (its final/ model is exported).
    pub input: PathBuf,
    /// The GGUF file to write.
    #[arg(short, long, value_name = "FILE.gguf")]
    pub output: PathBuf,
    /// Tensor type: f16 (the default), bf16, q8_0, q4_k_m (llama.cpp's mix: q4_K, with q6_K for output, half the
    /// attn_v and ffn_down) or f32. Norms and biases stay f32. A model trained from a GGUF file is written, without
    /// --type, as that file with only its trained tensors re-encoded in their own types (the frozen ones are its
    /// original blocks).
    #[arg(long = "type", value_parser = parse_type)]
    pub kind: Option<ExportType>,
    /// Also write an Ollama Modelfile beside the file (`ollama create NAME -f Modelfile`).
    #[arg(long)]
    pub modelfile: bool,
    /// general.name in the file (default: the model's or run's folder name).
    #[arg(long)]
    pub name: Option<String>,
    /// Replace the file (and the Modelfile) if they exist.
    #[arg(long)]
    pub force: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// `jsonl`: progress and the report as JSON lines on stdout, `stop` on stdin stops (the app's worker protocol).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub events: Option<EventFormat>,
}

#[derive(Args)]
pub struct ImportGgufArgs {
    /// The GGUF file (llama, mistral, qwen2, qwen3, phi3 or gemma).
    pub file: PathBuf,
    /// The model folder to create.
    #[arg(short, long, value_name = "MODEL_DIR")]
    pub output: PathBuf,
    /// The dtype of the written weights: auto (the file's own precision; f16 for quantized files), f32, f16, bf16.
    #[arg(long, default_value = "auto", value_parser = parse_dtype)]
    pub dtype: ImportDType,
    /// Replace the folder if it exists (the old one is removed only once the new one is complete).
    #[arg(long)]
    pub force: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// `jsonl`: progress and the report as JSON lines on stdout, `stop` on stdin stops (the app's worker protocol).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub events: Option<EventFormat>,
}

fn parse_type(s: &str) -> std::result::Result<ExportType, String> {
    ExportType::parse(s).ok_or_else(|| format!("unknown type {s:?}; one of {}", ExportType::names()))
}

fn parse_dtype(s: &str) -> std::result::Result<ImportDType, String> {
    ImportDType::parse(s).ok_or_else(|| format!("unknown dtype {s:?}; one of auto, f32, f16, bf16"))
}

/// How progress is shown: a bar over tensors for people (hidden with `--json`), or event lines for a parent
/// process. Ctrl-C (or `stop` on stdin with events) stops between tensors; nothing is left behind.
struct Watch {
    bar: ProgressBar,
    events: bool,
    cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Watch {
    fn new(json: bool, events: bool) -> Result<Watch> {
        let cancel =
            super::train::cancel_on_interrupt(events, "stopping after this tensor; the unfinished output is removed")?;
        let bar = if json || events {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(0)
        };
        bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} tensors  {msg}").expect("style"));
        Ok(Watch { bar, events, cancel })
    }

    fn on_progress(&self) -> impl FnMut(&Progress) -> bool + '_ {
        move |p: &Progress| {
            if self.events {
                crate::render::event_line(&GgufEvent::Progress(p.clone()));
            }
            self.bar.set_length(p.total as u64);
            self.bar.set_position(p.done as u64);
            self.bar.set_message(p.tensor.clone());
            !self.cancel.load(Ordering::Relaxed)
        }
    }
}

pub fn export(args: &ExportGgufArgs) -> Result<()> {
    let watch = Watch::new(args.json, args.events.is_some())?;
    let options = ExportOptions {
        kind: args.kind.unwrap_or(ExportType::F16),
        force: args.force,
        modelfile: args.modelfile,
        name: args.name.clone(),
    };
    let patch = args.kind.is_none() && freezetune_gguf::gguf_source(&args.input)?.is_some();
    let report = match patch {
        true => freezetune_gguf::export_patched(&args.input, &args.output, &options, &mut watch.on_progress()),
        false => freezetune_gguf::export_gguf(&args.input, &args.output, &options, &mut watch.on_progress()),
    };
    watch.bar.finish_and_clear();
    let report = report.map_err(|e| anyhow!(e))?;
    if args.events.is_some() {
        crate::render::event_line(&GgufEvent::Exported(report));
    } else if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_export(&report);
    }
    Ok(())
}

fn print_export(r: &ExportReport) {
    println!(
        "wrote {} ({}, {} {}, {} tensors: {})",
        r.path.display(),
        crate::render::bytes(r.bytes),
        r.architecture,
        r.kind,
        r.tensors,
        freezetune_gguf::describe_types(&r.tensor_types)
    );
    println!("from {}", r.source.display());
    if let Some(m) = &r.modelfile {
        println!("wrote {}: ollama create NAME -f {}", m.display(), m.display());
    }
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
}

pub fn import(args: &ImportGgufArgs) -> Result<()> {
    let watch = Watch::new(args.json, args.events.is_some())?;
    let options = ImportOptions {
        dtype: args.dtype,
        force: args.force,
    };
    let report = freezetune_gguf::import_gguf(&args.file, &args.output, &options, &mut watch.on_progress());
    watch.bar.finish_and_clear();
    let report = report.map_err(|e| anyhow!(e))?;
    if args.events.is_some() {
        crate::render::event_line(&GgufEvent::Imported(report));
    } else if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_import(&report);
    }
    Ok(())
}

fn print_import(r: &ImportReport) {
    println!(
        "wrote {} ({} {}, {} tensors from {}; {} tokenizer)",
        r.path.display(),
        r.architecture,
        r.dtype,
        r.tensors,
        freezetune_gguf::describe_types(&r.source_types),
        r.tokenizer
    );
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
}
