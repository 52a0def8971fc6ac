use crate::args::FreezeArgs;
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use freezetune_core::export::{to_axolotl_yaml, to_llamafactory_yaml};
use freezetune_core::fsutil::{write_atomic, Overwrite};
use std::path::PathBuf;

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Llamafactory,
    Axolotl,
}

#[derive(Args)]
pub struct ExportArgs {
    /// The checkpoint folder (optional with --preset when the preset names a local model).
    pub model_dir: Option<PathBuf>,
    #[arg(long, value_enum)]
    pub format: Format,
    #[command(flatten)]
    pub freeze: FreezeArgs,
    /// Use the freeze choice (and model) of a saved preset.
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    /// Write to this file instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Replace --output if it exists.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: &ExportArgs) -> Result<()> {
    let (layout, spec, _) = super::plan::resolve(args.model_dir.as_ref(), &args.freeze, args.preset.as_deref())?;
    let plan = freezetune_core::plan(&layout, &spec, Default::default())?;
    let text = match args.format {
        Format::Llamafactory => to_llamafactory_yaml(&layout, &spec, &plan)?,
        Format::Axolotl => to_axolotl_yaml(&layout, &spec, &plan)?,
    };
    match &args.output {
        None => print!("{text}"),
        Some(path) => {
            let mode = if args.force {
                Overwrite::Allow
            } else {
                Overwrite::Refuse
            };
            if !write_atomic(path, text.as_bytes(), mode)? {
                bail!("{} already exists; use --force to replace it", path.display());
            }
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}
