use anyhow::Result;
use clap::{Args, Subcommand};
use freezetune_hub::{HubCache, HubSettings};

#[derive(Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    pub command: Option<ModelsCommand>,
    /// Print the list as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum ModelsCommand {
    /// Remove a cached model (every revision and partial download).
    Rm { repo: String },
}

pub fn run(args: &ModelsArgs) -> Result<()> {
    let cache = HubCache::new(HubSettings::from_env().cache_dir);
    match &args.command {
        Some(ModelsCommand::Rm { repo }) => {
            let freed = cache.remove(repo)?;
            eprintln!("removed {repo} ({} freed)", crate::render::bytes(freed));
        }
        None => {
            let models = cache.list();
            if args.json {
                println!("{}", serde_json::to_string_pretty(&models)?);
                return Ok(());
            }
            if models.is_empty() {
                eprintln!("no models in {}", cache.root().display());
            }
            for m in models {
                let revs: Vec<String> = m
                    .refs
                    .iter()
                    .map(|(r, c)| format!("{r}={}", &c[..c.len().min(8)]))
                    .collect();
                println!(
                    "{:<40} {:<12} {:>10}  {:<28} {}",
                    m.repo,
                    revs.join(","),
                    crate::render::bytes(m.size_bytes),
                    m.architecture.unwrap_or_else(|| "?".into()),
                    m.num_layers.map(|n| format!("{n} layers")).unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}
