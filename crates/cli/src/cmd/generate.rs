use anyhow::Result;
use clap::Args;
use freezetune_train::generate::{GenerateOptions, Generator};
use std::path::PathBuf;

#[derive(Args)]
pub struct GenerateArgs {
    /// A checkpoint folder (a base model, or a run's final/ folder).
    pub model_dir: PathBuf,
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Feed the prompt as plain text instead of a chat turn.
    #[arg(long)]
    pub raw: bool,
    /// runtime device: auto, cpu, cuda, cuda:N, metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(args: &GenerateArgs) -> Result<()> {
    let choice = freezetune_train::device::select_device(&args.device)?;
    if let Some(note) = &choice.note {
        eprintln!("{note}");
    }
    let generator = Generator::load(&args.model_dir, &choice.device)?;
    let options = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        seed: args.seed,
        chat: !args.raw,
    };
    println!("{}", generator.generate(&args.prompt, &options)?);
    Ok(())
}
