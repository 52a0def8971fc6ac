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
    /// List a Hub dataset repo's configs (subsets) and splits, as a run's `config` and `split` name them, without
    /// downloading its data.
    Configs(ConfigsArgs),
}

#[derive(Args)]
pub struct ConfigsArgs {
    /// The dataset repo: owner/name[@revision].
    pub repo: String,
    /// Hub or mirror URL (default: HF_ENDPOINT, else https://huggingface.co).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    #[arg(long)]
    pub json: bool,
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
        match self {
            DataCommand::Preview(a) => a.json,
            DataCommand::Configs(a) => a.json,
        }
    }
}

pub fn run(command: &DataCommand) -> Result<()> {
    match command {
        DataCommand::Preview(args) => preview(args),
        DataCommand::Configs(args) => configs(args),
    }
}

fn configs(args: &ConfigsArgs) -> Result<()> {
    let mut settings = freezetune_hub::HubSettings::from_env();
    if let Some(e) = &args.endpoint {
        settings = settings.with_endpoint(e);
    }
    let downloader = freezetune_hub::Downloader::new(settings)?;
    let mut req = freezetune_hub::DownloadRequest::parse(&args.repo)?;
    req.kind = freezetune_hub::RepoKind::Dataset;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (listing, readme) = runtime.block_on(downloader.dataset_card(&req))?;
    let names = listing.names();
    let configs = freezetune_data::list_configs(&names, readme.as_deref())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&configs)?);
        return Ok(());
    }
    println!("{} at {}", args.repo, listing.commit);
    for c in configs {
        let default = if c.default { " (default)" } else { "" };
        println!("  {}{default}: {}", c.name, c.splits.join(", "));
    }
    Ok(())
}

fn preview(args: &PreviewArgs) -> Result<()> {
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
