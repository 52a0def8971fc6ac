use crate::render::event_line;
use anyhow::Result;
use clap::Args;
use freezetune_core::events::GenerateEvent;
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
    /// `jsonl`: a `loaded` event (device, dtype) and a `reply` event as JSON lines on stdout; errors as
    /// {"error": ...}.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub events: Option<super::train::EventFormat>,
}

pub fn run(args: &GenerateArgs) -> Result<()> {
    let choice = freezetune_train::device::select_device(&args.device)?;
    let jsonl = args.events.is_some();
    if let (Some(note), false) = (&choice.note, jsonl) {
        eprintln!("{note}");
    }
    let generator = Generator::load(&super::model_folder(&args.model_dir)?, &choice.device)?;
    if jsonl {
        event_line(&GenerateEvent::Loaded {
            device: choice.name.clone(),
            dtype: freezetune_train::device::dtype_name(generator.model.dtype()).into(),
            device_note: choice.note.clone(),
        });
    }
    let options = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        seed: args.seed,
        chat: !args.raw,
    };
    let text = generator.generate(&args.prompt, &options)?;
    if jsonl {
        event_line(&GenerateEvent::Reply { text });
    } else {
        println!("{text}");
    }
    Ok(())
}
