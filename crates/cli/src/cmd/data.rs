use anyhow::Result;
use clap::{Args, Subcommand};
use freezetune_core::run_config::RunConfig;
use freezetune_train::data::preview_run;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Show the first examples of a run's training data rendered, tokenized and masked as training will see them;
    /// learned tokens are wrapped in [[ ]].
    Preview(PreviewArgs),
}

#[derive(Args)]
pub struct PreviewArgs {
    /// The run config.
    pub config: PathBuf,
    /// How many examples.
    #[arg(short, default_value_t = 3)]
    pub n: usize,
    #[arg(long)]
    pub json: bool,
}

impl DataCommand {
    pub fn json(&self) -> bool {
        matches!(self, DataCommand::Preview(PreviewArgs { json: true, .. }))
    }
}

pub fn run(command: &DataCommand) -> Result<()> {
    let DataCommand::Preview(args) = command;
    let mut config = RunConfig::read(&args.config)?;
    super::train::resolve_model(&mut config)?;
    let (format, items) = preview_run(&config, args.n)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"format": format, "examples": items}))?
        );
        return Ok(());
    }
    let source = match config.data.datasets.is_empty() {
        true => config.data.train.display().to_string(),
        false => {
            let labels: Vec<String> = config.data.datasets.iter().map(|d| d.label()).collect();
            format!("{} mixed by {:?}", labels.join(" + "), config.data.mix)
        }
    };
    println!("{source} as {format:?} (cutoff {} tokens)", config.data.cutoff_len);
    for item in items {
        println!(
            "\n--- line {}: {} tokens, {} learned{}",
            item.line,
            item.tokens,
            item.learned_tokens,
            if item.truncated { " (truncated)" } else { "" }
        );
        println!("{}", item.marked);
    }
    Ok(())
}
