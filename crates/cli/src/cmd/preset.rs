use crate::args::FreezeArgs;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use freezetune_core::preset::{ModelRef, Preset, PresetStore};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum PresetCommand {
    /// Save the freeze choice (and model) under NAME.
    Save(Box<SaveArgs>),
    /// List saved presets (unreadable files are listed with their error).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Print a preset as TOML (or JSON).
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a preset.
    Delete { name: String },
    /// Rename a preset.
    Rename { from: String, to: String },
    /// Write a preset to a TOML file.
    Export {
        name: String,
        file: PathBuf,
        #[arg(long)]
        force: bool,
    },
    /// Save a preset from a TOML file.
    Import {
        file: PathBuf,
        /// Save under this name instead of the file's own.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        force: bool,
    },
}

impl PresetCommand {
    pub fn json(&self) -> bool {
        matches!(
            self,
            PresetCommand::List { json: true } | PresetCommand::Show { json: true, .. }
        )
    }
}

#[derive(Args)]
pub struct SaveArgs {
    pub name: String,
    #[command(flatten)]
    pub freeze: FreezeArgs,
    /// Local checkpoint folder the preset uses.
    #[arg(long, value_name = "DIR", conflicts_with = "repo")]
    pub model: Option<PathBuf>,
    /// Hugging Face repo id the preset uses.
    #[arg(long, value_name = "ID")]
    pub repo: Option<String>,
    #[arg(long, requires = "repo")]
    pub revision: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// Save a whole run (model, freeze, data, training, runtime, output) from this run config instead of flags;
    /// `freezetune train --preset NAME` can then run it on its own.
    #[arg(long, value_name = "RUN.toml", conflicts_with_all = ["model", "repo"])]
    pub config: Option<PathBuf>,
    /// Replace an existing preset of the same name.
    #[arg(long)]
    pub force: bool,
}

pub fn run(command: PresetCommand) -> Result<()> {
    let store = PresetStore::open_default()?;
    match command {
        PresetCommand::Save(a) => save(&store, *a),
        PresetCommand::List { json } => list(&store, json),
        PresetCommand::Show { name, json } => {
            let p = store.load(&name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                print!("{}", p.to_toml());
            }
            Ok(())
        }
        PresetCommand::Delete { name } => {
            let path = store.delete(&name)?;
            eprintln!("deleted {}", path.display());
            Ok(())
        }
        PresetCommand::Rename { from, to } => {
            let path = store.rename(&from, &to)?;
            eprintln!("renamed {from:?} to {to:?} ({})", path.display());
            Ok(())
        }
        PresetCommand::Export { name, file, force } => {
            store.export(&name, &file, force)?;
            eprintln!("wrote {}", file.display());
            Ok(())
        }
        PresetCommand::Import { file, name, force } => {
            let p = store.import(&file, name.as_deref(), force)?;
            eprintln!("imported preset {:?}", p.name);
            Ok(())
        }
    }
}

fn save(store: &PresetStore, a: SaveArgs) -> Result<()> {
    if let Some(config) = &a.config {
        if !a.freeze.is_empty() {
            bail!("--config already holds the freeze choice; drop the selection flags or --config");
        }
        let run = freezetune_core::run_config::RunConfig::read(config)?;
        let mut preset = Preset::from_run(&a.name, &run);
        preset.description = a.description;
        let path = store.save(&preset, a.force)?;
        eprintln!(
            "saved the run {} as preset {:?} ({})",
            config.display(),
            a.name,
            path.display()
        );
        return Ok(());
    }
    let (spec, _) = a.freeze.to_spec()?;
    spec.check_mode()?;
    if spec.llamafactory.is_none() {
        spec.selection()?;
    }
    let model = match (&a.model, &a.repo) {
        (Some(path), _) => {
            let abs = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            if let Err(e) = freezetune_core::ModelLayout::inspect(&abs)
                .and_then(|layout| freezetune_core::plan(&layout, &spec, Default::default()))
            {
                bail!("the preset would not work on {}: {e}", abs.display());
            }
            Some(ModelRef {
                path: Some(abs),
                repo: None,
                revision: None,
                dtype: None,
                quantize_frozen: None,
            })
        }
        (None, Some(repo)) => Some(ModelRef {
            path: None,
            repo: Some(repo.clone()),
            revision: a.revision.clone(),
            dtype: None,
            quantize_frozen: None,
        }),
        (None, None) => None,
    };
    let mut preset = Preset::new(&a.name, model, spec);
    preset.description = a.description;
    let path = store.save(&preset, a.force)?;
    eprintln!("saved preset {:?} to {}", a.name, path.display());
    Ok(())
}

fn list(store: &PresetStore, json: bool) -> Result<()> {
    let entries = store.list()?;
    if json {
        let items: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| match &e.preset {
                Ok(p) => serde_json::json!({"name": e.name, "path": e.path, "preset": p}),
                Err(err) => serde_json::json!({"name": e.name, "path": e.path, "error": err.to_json()}),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(());
    }
    if entries.is_empty() {
        eprintln!("no presets in {}", store.dir().display());
    }
    for e in entries {
        match &e.preset {
            Ok(p) => {
                let model = p.model.as_ref().map(|m| match (&m.path, &m.repo) {
                    (Some(path), _) => path.display().to_string(),
                    (None, Some(repo)) => repo.clone(),
                    _ => String::new(),
                });
                println!("{:<24} {}", e.name, model.unwrap_or_default());
            }
            Err(err) => println!("{:<24} UNREADABLE: {err}", e.name),
        }
    }
    Ok(())
}

/// The folder of a preset's model: its local path, or its Hub repo's snapshot in the standard cache (if downloaded).
pub fn model_dir(model: &ModelRef) -> Option<PathBuf> {
    match (&model.path, &model.repo) {
        (Some(path), _) => Some(path.clone()),
        (None, Some(repo)) => freezetune_hub::HubCache::new(freezetune_hub::HubSettings::from_env().cache_dir)
            .resolve(repo, model.revision.as_deref().unwrap_or("main")),
        (None, None) => None,
    }
}
