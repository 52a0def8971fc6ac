use crate::render;
use anyhow::Result;
use clap::Args;
use freezetune_core::ModelLayout;
use std::path::PathBuf;

#[derive(Args)]
pub struct InspectArgs {
    /// A Hugging Face checkpoint folder (config.json + safetensors).
    pub model_dir: PathBuf,
    /// Print the layout as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &InspectArgs) -> Result<()> {
    let layout = ModelLayout::inspect(&args.model_dir)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&layout)?);
    } else {
        print!("{}", render::layout_table(&layout));
    }
    Ok(())
}
