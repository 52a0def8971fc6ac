//! `freezetune`: the command-line front end. This file only parses arguments and dispatches to one file per
//! subcommand; every decision lives in the library crates.

mod args;
mod cmd;
mod render;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "freezetune",
    version,
    about = "Fine-tune open LLMs while choosing exactly which layers train"
)]
struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a checkpoint's layers, modules, tensors and parameter counts (reads headers only).
    Inspect(cmd::inspect::InspectArgs),
    /// Compute the freeze plan: exactly which tensors train, per-layer states and a memory estimate.
    Plan(cmd::plan::PlanArgs),
    /// Write the plan as a LLaMA-Factory or Axolotl config fragment, to run it on a bigger machine.
    ExportConfig(cmd::export_config::ExportArgs),
    /// Write a run as a folder LLaMA-Factory trains as it is on a bigger machine (config, data, launch script).
    ExportRun(cmd::export_run::ExportRunArgs),
    /// Write a model or a run's final model as a GGUF file for llama.cpp, Ollama and LM Studio.
    ExportGguf(cmd::gguf::ExportGgufArgs),
    /// Turn a GGUF file into a Hugging Face model folder FreezeTune trains.
    ImportGguf(cmd::gguf::ImportGgufArgs),
    /// Save, list, show, rename, delete, import and export run presets.
    #[command(subcommand)]
    Preset(cmd::preset::PresetCommand),
    /// Fine-tune a model with the freeze plan applied (config in TOML; Ctrl-C stops and saves a checkpoint).
    Train(cmd::train::TrainArgs),
    /// Generate a reply from a model (base or fine-tuned), to compare them.
    Generate(cmd::generate::GenerateArgs),
    /// Measure which layers matter on a run's own data: Block Influence, angular distance, gradient norms.
    Probe(cmd::probe::ProbeArgs),
    /// Inspect training data as the trainer will see it.
    #[command(subcommand)]
    Data(cmd::data::DataCommand),
    /// Download a model from the Hugging Face Hub (or a mirror) into the standard cache; prints its folder.
    Download(cmd::download::DownloadArgs),
    /// List cached Hub models, or remove one (`models rm REPO`).
    Models(cmd::models::ModelsArgs),
    /// Search the Hub for models (saying which train here and fit this machine) or datasets.
    Search(cmd::search::SearchArgs),
    /// Manage the Hugging Face token in the OS keyring (set, clear, status).
    #[command(subcommand)]
    Token(cmd::token::TokenCommand),
    /// Write the built-in demo checkpoint (a tiny llama) into a folder.
    DemoModel(cmd::demo::DemoArgs),
    /// List the devices this build can train on (CPU, CUDA GPUs, Apple GPU) with their memory.
    Devices(cmd::devices::DevicesArgs),
}

fn main() {
    freezetune_train::device::cpu_runtime_defaults();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let (result, json) = match cli.command {
        Command::Inspect(a) => (cmd::inspect::run(&a), a.json),
        Command::Plan(a) => (cmd::plan::run(&a), a.json),
        Command::ExportConfig(a) => (cmd::export_config::run(&a), false),
        Command::ExportRun(a) => (cmd::export_run::run(&a), a.json),
        Command::ExportGguf(a) => (cmd::gguf::export(&a), a.json || a.events.is_some()),
        Command::ImportGguf(a) => (cmd::gguf::import(&a), a.json || a.events.is_some()),
        Command::Preset(c) => {
            let json = c.json();
            (cmd::preset::run(c), json)
        }
        Command::DemoModel(a) => (cmd::demo::run(&a), false),
        Command::Devices(a) => (cmd::devices::run(&a), a.json),
        Command::Download(a) => (cmd::download::run(&a), a.json),
        Command::Train(a) => (cmd::train::run(&a), a.events.is_some()),
        Command::Generate(a) => (cmd::generate::run(&a), a.events.is_some()),
        Command::Probe(a) => (cmd::probe::run(&a), a.json || a.events.is_some()),
        Command::Data(c) => {
            let json = c.json();
            (cmd::data::run(&c), json)
        }
        Command::Models(a) => (cmd::models::run(&a), a.json),
        Command::Search(a) => (cmd::search::run(&a), a.json),
        Command::Token(c) => (cmd::token::run(&c), false),
    };
    if let Err(err) = result {
        render::print_error(&err, json);
        std::process::exit(1);
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
