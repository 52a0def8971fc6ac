//! The built-in demo: a tiny llama checkpoint with a real tokenizer and chat template, a small instruction dataset and
//! a run config, written to a folder so the whole flow (inspect, plan, train, generate) works offline.

use crate::error::{Error, Result};
use crate::synth::{write_checkpoint, Family, SynthSpec};
use std::path::{Path, PathBuf};

const TOKENIZER: &str = include_str!("../../../assets/demo/tokenizer.json");
const TOKENIZER_CONFIG: &str = include_str!("../../../assets/demo/tokenizer_config.json");
const CHAT_TEMPLATE: &str = include_str!("../../../assets/demo/chat_template.jinja");

/// Where the demo's pieces are.
#[derive(Debug, Clone)]
pub struct Demo {
    pub model: PathBuf,
    pub data: PathBuf,
    pub run_config: PathBuf,
}

/// The demo checkpoint: an 8-layer tiny llama (hidden 64, vocab 512) with deterministic random weights.
pub fn demo_spec() -> SynthSpec {
    SynthSpec::tiny(Family::Llama, 8)
}

/// Writes the demo into `dir` (`model/`, `data.jsonl`, `run.toml`); refuses to overwrite unless `force`.
pub fn write_demo(dir: &Path, force: bool) -> Result<Demo> {
    let demo = Demo {
        model: dir.join("model"),
        data: dir.join("data.jsonl"),
        run_config: dir.join("run.toml"),
    };
    if demo.model.join("config.json").exists() && !force {
        return Err(Error::BadSelection {
            message: format!(
                "{} already holds the demo; use --force to write it again",
                dir.display()
            ),
        });
    }
    let write = |path: &Path, text: &str| std::fs::write(path, text).map_err(|e| Error::io(path, e));
    write_checkpoint(&demo.model, &demo_spec())?;
    write(&demo.model.join("tokenizer.json"), TOKENIZER)?;
    write(&demo.model.join("tokenizer_config.json"), TOKENIZER_CONFIG)?;
    write(&demo.model.join("chat_template.jinja"), CHAT_TEMPLATE)?;
    write(
        &demo.model.join("generation_config.json"),
        r#"{"bos_token_id": 0, "eos_token_id": 2}"#,
    )?;
    write(&demo.data, &demo_dataset())?;
    write(
        &demo.run_config,
        "[model]\npath = \"model\"\n\n[freeze]\nlayers = \"4-7\"\nextra = [\"norm\"]\n\n[data]\ntrain = \"data.jsonl\"\nformat = \"alpaca\"\n\
         eval_split = 0.1\ncutoff_len = 64\n\n[training]\nlearning_rate = 1e-2\nbatch_size = 8\nmax_steps = 300\n\
         eval_steps = 100\n\n[output]\ndir = \"runs/demo\"\n",
    )?;
    Ok(demo)
}

/// Sixty small arithmetic instructions in the alpaca format, the same every time.
fn demo_dataset() -> String {
    (0..60)
        .map(|i| {
            let (a, b) = (i % 10, (i * 7 + 3) % 10);
            serde_json::json!({"instruction": format!("What is {a} plus {b}?"), "output": format!("{a} plus {b} is {}.", a + b)})
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_complete_demo_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let demo = write_demo(dir.path(), false).unwrap();
        let layout = crate::ModelLayout::inspect(&demo.model).unwrap();
        assert_eq!(layout.num_layers, 8);
        assert!(demo.model.join("tokenizer.json").is_file() && demo.model.join("chat_template.jinja").is_file());
        assert_eq!(std::fs::read_to_string(&demo.data).unwrap().lines().count(), 60);
        let config = crate::run_config::RunConfig::read(&demo.run_config).unwrap();
        assert_eq!(config.model.path, demo.model);
        assert!(write_demo(dir.path(), false)
            .unwrap_err()
            .to_string()
            .contains("--force"));
        write_demo(dir.path(), true).unwrap();
    }
}
