use anyhow::{bail, Result};
use clap::Args;
use freezetune_core::synth::{write_checkpoint, Family, SynthSpec};
use std::path::PathBuf;

#[derive(Args)]
pub struct DemoArgs {
    /// Folder to write the demo checkpoint into (created).
    pub dir: PathBuf,
    /// Write even if the folder already holds a config.json.
    #[arg(long)]
    pub force: bool,
}

/// The demo model: an 8-layer tiny llama, deterministic random weights, so the whole flow works offline.
pub fn demo_spec() -> SynthSpec {
    SynthSpec::tiny(Family::Llama, 8)
}

pub fn run(args: &DemoArgs) -> Result<()> {
    if args.dir.join("config.json").exists() && !args.force {
        bail!(
            "{} already holds a model; use --force to overwrite it",
            args.dir.display()
        );
    }
    write_checkpoint(&args.dir, &demo_spec())?;
    println!("{}", args.dir.display());
    Ok(())
}
