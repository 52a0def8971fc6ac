//! `freezetune export-run`: a run as a folder LLaMA-Factory or Axolotl trains as it is on a bigger machine (handoff
//! crate).

use anyhow::Result;
use clap::{Args, ValueEnum};
use freezetune_core::run_config::RunConfig;
use freezetune_handoff::{BundleOptions, Distributed};
use std::path::PathBuf;

#[derive(Clone, Copy, ValueEnum)]
pub enum Engine {
    Llamafactory,
    Axolotl,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Zero {
    Zero2,
    Zero3,
}

#[derive(Args)]
pub struct ExportRunArgs {
    /// The run config.
    pub config: PathBuf,
    /// The engine the bundle is for.
    #[arg(long, value_enum)]
    pub to: Engine,
    /// The bundle folder to create (it must not exist).
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
    /// GPUs per node.
    #[arg(long, default_value_t = 1)]
    pub gpus: usize,
    /// Shard with DeepSpeed ZeRO stage 2 or 3.
    #[arg(long, value_enum, conflicts_with = "fsdp")]
    pub deepspeed: Option<Zero>,
    /// Shard with PyTorch FSDP (through accelerate).
    #[arg(long)]
    pub fsdp: bool,
    /// Print what was written as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &ExportRunArgs) -> Result<()> {
    let mut config = RunConfig::read(&args.config)?;
    super::train::resolve_model(&mut config)?;
    let layout = freezetune_core::ModelLayout::inspect(&config.model.path)?;
    let distributed = match (args.deepspeed, args.fsdp) {
        (Some(Zero::Zero2), _) => Distributed::Zero2,
        (Some(Zero::Zero3), _) => Distributed::Zero3,
        (None, true) => Distributed::Fsdp,
        (None, false) => Distributed::None,
    };
    let options = BundleOptions {
        gpus: args.gpus,
        distributed,
    };
    let engine = match args.to {
        Engine::Llamafactory => freezetune_handoff::Engine::Llamafactory,
        Engine::Axolotl => freezetune_handoff::Engine::Axolotl,
    };
    let bundle = freezetune_handoff::write_bundle(engine, &config, &layout, &args.output, &options)?;
    if args.json {
        let value = serde_json::json!({
            "dir": bundle.dir,
            "files": bundle.files,
            "train_rows": bundle.train_rows,
            "unmapped": bundle.unmapped,
            "notes": bundle.notes,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("wrote {} ({} training rows)", bundle.dir.display(), bundle.train_rows);
    for f in &bundle.files {
        println!("  {f}");
    }
    if !bundle.unmapped.is_empty() {
        println!("not carried over (also in its README.md):");
        for u in &bundle.unmapped {
            println!("  - {u}");
        }
    }
    println!("start it with {}/launch.sh", bundle.dir.display());
    Ok(())
}
