//! What is fuzzed: each target takes the bytes of one user file, feeds them through the code that reads that kind
//! of file, and must return (Ok or a clear error) without panicking, aborting or allocating without bound. Seeds
//! are real files made from the project's fixtures.

use crate::mutate::{self, Rng};
use freezetune_core::config::ModelConfig;
use freezetune_core::layout::{ModelLayout, TensorInfo};
use freezetune_core::run_config::DataFormat;
use freezetune_core::{plan, FreezeSpec, PlanOptions};
use freezetune_gguf::{export_gguf, import_gguf, ExportOptions, ExportType, ImportDType, ImportOptions};
use freezetune_train::data::{self, DataOptions};
use freezetune_train::template::{ChatFormatter, Message};
use freezetune_train::DecoderConfig;
use serde_json::Value;
use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models")
}

/// What a target runs on one input: it must return, whatever the bytes.
pub type Run = Box<dyn Fn(&[u8])>;

/// One fuzz target: its seeds, how to mutate one, and what to run on the result.
pub struct Target {
    pub name: &'static str,
    pub seeds: Vec<Vec<u8>>,
    pub mutate: fn(&mut Rng, &[u8]) -> Vec<u8>,
    pub run: Run,
}

/// Every target, with a scratch folder for the files they write.
pub fn all(scratch: &Path) -> anyhow::Result<Vec<Target>> {
    Ok(vec![
        gguf(scratch)?,
        safetensors()?,
        config()?,
        tokenizer(scratch)?,
        template(scratch)?,
        dataset(scratch)?,
        columnar(
            scratch,
            "parquet",
            &["alpaca.parquet", "sharegpt.parquet", "messages.parquet"],
        )?,
        columnar(
            scratch,
            "arrow",
            &["arrow/alpaca.arrow", "arrow/dict/test/data-00000-of-00001.arrow"],
        )?,
    ])
}

fn json_mutation(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<Value>(input) {
        Ok(v) if !rng.chance(10) => serde_json::to_vec(&mutate::json(rng, &v)).expect("json"),
        _ => mutate::bytes(rng, input, input.len()),
    }
}

/// GGUF import, the whole way: the header check, candle's reader, the model check, the written folder.
fn gguf(scratch: &Path) -> anyhow::Result<Target> {
    let mut seeds = Vec::new();
    for (kind, name) in [(ExportType::F32, "f32"), (ExportType::Q8_0, "q8_0")] {
        let file = scratch.join(format!("seed-{name}.gguf"));
        let options = ExportOptions {
            kind,
            force: true,
            modelfile: false,
            name: None,
        };
        export_gguf(&fixtures().join("llama"), &file, &options, &mut |_| true)?;
        seeds.push(std::fs::read(&file)?);
    }
    let (file, dest) = (scratch.join("input.gguf"), scratch.join("imported"));
    Ok(Target {
        name: "gguf",
        seeds,
        // The header and tensor table are the first few KiB; tensor data is only copied.
        mutate: |rng, input| mutate::bytes(rng, input, 24 << 10),
        run: Box::new(move |bytes| {
            std::fs::write(&file, bytes).expect("scratch");
            let options = ImportOptions {
                dtype: ImportDType::Auto,
                force: true,
            };
            let _ = import_gguf(&file, &dest, &options, &mut |_| true);
        }),
    })
}

/// The safetensors header reader inspection and loading rely on.
fn safetensors() -> anyhow::Result<Target> {
    let seeds = ["llama", "gemma3", "phi3_longrope"]
        .iter()
        .map(|m| std::fs::read(fixtures().join(m).join("model.safetensors")))
        .collect::<Result<_, _>>()?;
    Ok(Target {
        name: "safetensors",
        seeds,
        mutate: |rng, input| {
            let header = 8 + u64::from_le_bytes(input.get(..8).and_then(|b| b.try_into().ok()).unwrap_or([0; 8]));
            mutate::bytes(rng, input, header.min(1 << 20) as usize)
        },
        run: Box::new(|bytes| {
            let _ = freezetune_core::safetensors::parse_bytes(bytes);
        }),
    })
}

/// config.json → the layout inspect and plan show, and the decoder description training uses (with the tensors
/// it implies).
fn config() -> anyhow::Result<Target> {
    let mut seeds = Vec::new();
    for entry in std::fs::read_dir(fixtures())? {
        let p = entry?.path().join("config.json");
        if p.exists() {
            seeds.push(std::fs::read(p)?);
        }
    }
    let llama = ModelLayout::inspect(&fixtures().join("llama"))?;
    let tensors: Vec<TensorInfo> = llama.tensors().cloned().collect();
    Ok(Target {
        name: "config",
        seeds,
        mutate: json_mutation,
        run: Box::new(move |bytes| {
            let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
                return;
            };
            if let Ok(c) = ModelConfig::from_value(v.clone()) {
                if let Ok(layout) = ModelLayout::from_parts(Path::new("/nonexistent"), &c, tensors.clone(), Vec::new())
                {
                    // The plan computes counts and the memory estimate from the config's sizes.
                    let spec = FreezeSpec {
                        top: Some(2),
                        ..Default::default()
                    };
                    let _ = plan(&layout, &spec, PlanOptions::default());
                }
            }
            let model_type = v["model_type"].as_str().unwrap_or("llama").to_string();
            let text_type = v["text_config"]["model_type"].as_str().map(str::to_string);
            for t in [Some(model_type), text_type].into_iter().flatten() {
                if let Ok(c) = DecoderConfig::from_json(&v, &t) {
                    let _ = c.tensor_shapes();
                    for rope in &c.ropes {
                        let _ = rope.inv_freq(c.head_dim, 4096);
                    }
                }
            }
        }),
    })
}

/// A model folder: the llama fixture's files with `name` replaced by the input.
fn model_folder(scratch: &Path, folder: &str) -> anyhow::Result<PathBuf> {
    let dir = scratch.join(folder);
    std::fs::create_dir_all(&dir)?;
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ] {
        std::fs::copy(fixtures().join("llama").join(f), dir.join(f))?;
    }
    Ok(dir)
}

fn conversation() -> Vec<Message> {
    [
        ("system", "Be brief."),
        ("user", "Hi there, what is 3 plus 4?"),
        ("assistant", "7."),
    ]
    .iter()
    .map(|(role, content)| Message {
        role: role.to_string(),
        content: content.to_string(),
    })
    .collect()
}

/// tokenizer.json as the trainer loads it, then encoding and decoding a sample.
fn tokenizer(scratch: &Path) -> anyhow::Result<Target> {
    let dir = model_folder(scratch, "tokenizer-model")?;
    Ok(Target {
        name: "tokenizer",
        seeds: vec![std::fs::read(fixtures().join("llama/tokenizer.json"))?],
        mutate: json_mutation,
        run: Box::new(move |bytes| {
            std::fs::write(dir.join("tokenizer.json"), bytes).expect("scratch");
            if let Ok(f) = ChatFormatter::load(&dir) {
                if let Ok((ids, _)) = f.encode("Hello world, the cat sat on 12345 mats.") {
                    let _ = f.decode(&ids);
                }
                let _ = f.conversation(&conversation(), false);
            }
        }),
    })
}

/// The chat template, rendered and tokenized as training data.
fn template(scratch: &Path) -> anyhow::Result<Target> {
    let dir = model_folder(scratch, "template-model")?;
    let seeds = vec![
        std::fs::read(fixtures().join("llama/chat_template.jinja"))?,
        b"{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}".to_vec(),
    ];
    Ok(Target {
        name: "template",
        seeds,
        mutate: |rng, input| mutate::template(rng, &String::from_utf8_lossy(input)).into_bytes(),
        run: Box::new(move |bytes| {
            std::fs::write(dir.join("chat_template.jinja"), bytes).expect("scratch");
            if let Ok(f) = ChatFormatter::load(&dir) {
                let _ = f.conversation(&conversation(), false);
            }
        }),
    })
}

/// A training data file in every format the trainer reads.
fn dataset(scratch: &Path) -> anyhow::Result<Target> {
    let dir = model_folder(scratch, "data-model")?;
    let formatter = ChatFormatter::load(&dir)?;
    let file = scratch.join("data.jsonl");
    let seeds = vec![
        b"{\"text\": \"Hello there.\"}\n{\"text\": \"General Kenobi.\"}\n".to_vec(),
        b"{\"input_ids\": [1, 2, 3], \"labels\": [-100, 2, 3]}\n".to_vec(),
        b"{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello\"}]}\n"
            .to_vec(),
        b"{\"instruction\": \"Add\", \"input\": \"3 4\", \"output\": \"7\"}\n".to_vec(),
    ];
    Ok(Target {
        name: "dataset",
        seeds,
        mutate: |rng, input| {
            // JSON lines: mutate one line structurally, or the bytes.
            let text = String::from_utf8_lossy(input);
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            if lines.is_empty() || rng.chance(15) {
                return mutate::bytes(rng, input, input.len());
            }
            let i = rng.below(lines.len());
            if let Ok(v) = serde_json::from_str::<Value>(&lines[i]) {
                lines[i] = serde_json::to_string(&mutate::json(rng, &v)).expect("json");
            }
            (lines.join("\n") + "\n").into_bytes()
        },
        run: Box::new(move |bytes| {
            std::fs::write(&file, bytes).expect("scratch");
            let options = DataOptions {
                format: DataFormat::Auto,
                cutoff_len: 64,
                vocab_size: 512,
                train_on_prompt: false,
                formatter: Some(&formatter),
            };
            let _ = data::load(&file, &options);
        }),
    })
}

/// A Parquet or Arrow data file, read to its last row: the third-party readers (the parquet crate, arrow-rs's IPC
/// reader) behind freezetune-data's guard. Seeds are the pyarrow- and `datasets`-written fixtures.
fn columnar(scratch: &Path, ext: &'static str, seeds: &[&str]) -> anyhow::Result<Target> {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/data");
    let seeds = seeds
        .iter()
        .map(|s| std::fs::read(data.join(s)))
        .collect::<Result<_, _>>()?;
    let file = scratch.join(format!("data.{ext}"));
    Ok(Target {
        name: ext,
        seeds,
        mutate: |rng, input| mutate::bytes(rng, input, input.len()),
        run: Box::new(move |bytes| {
            std::fs::write(&file, bytes).expect("scratch");
            if let Ok(rows) = freezetune_data::open(&file) {
                rows.for_each(drop);
            }
        }),
    })
}
