//! The "try it" box in a worker: `freezetune generate DIR --events jsonl` on the device `auto` picks, so a
//! fine-tuned model answers on the same GPU it trained on, and a crash ends the worker, not the app.

use super::process::{self, StopSignal};
use super::Workers;
use crate::error::IpcResult;
use freezetune_core::events::GenerateEvent;
use std::path::Path;
use std::process::Command;

pub fn generate(workers: &Workers, model_dir: &Path, prompt: &str, max_new_tokens: usize) -> IpcResult<String> {
    let (worker, _) = workers.for_device("auto")?;
    let mut cmd = Command::new(&worker);
    cmd.arg("generate")
        .arg(model_dir)
        // `--prompt=` keeps a prompt that starts with '-' from reading as a flag.
        .arg(format!("--prompt={prompt}"))
        .arg(format!("--max-new-tokens={max_new_tokens}"))
        .args(["--device", "auto", "--events", "jsonl"]);
    let mut reply = None;
    let end = process::run::<GenerateEvent>(cmd, &StopSignal::default(), |event| {
        if let GenerateEvent::Reply { text } = event {
            reply = Some(text);
        }
    })?;
    match reply {
        Some(text) if end.status.success() => Ok(text),
        _ => Err(end.failure("generation worker")),
    }
}
