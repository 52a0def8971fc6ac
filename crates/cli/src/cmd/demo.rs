use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct DemoArgs {
    /// Folder to write the demo into: model/ (a tiny llama with tokenizer and chat template), data.jsonl, run.toml.
    pub dir: PathBuf,
    /// Write even if the folder already holds the demo.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: &DemoArgs) -> Result<()> {
    let demo = freezetune_core::demo::write_demo(&args.dir, args.force)?;
    eprintln!(
        "demo data: {}\ndemo run config: {}",
        demo.data.display(),
        demo.run_config.display()
    );
    println!("{}", demo.model.display());
    Ok(())
}
