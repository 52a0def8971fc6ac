//! Synthetic Hugging Face checkpoints: the built-in demo model, test fixtures for every layout family FreezeTune
//! must show (llama, qwen2, qwen3, gemma, phi3, OPT, Mixtral MoE, a Qwen2-VL-style VLM), and header-only giants for
//! benchmarks (the data section is a sparse hole, so a 70B checkpoint costs no disk).

use crate::error::{Error, Result};
use crate::safetensors::DType;
use serde_json::json;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Qwen2,
    Qwen3,
    Gemma,
    Phi3,
    Opt,
    Mixtral,
    Qwen2Vl,
}

/// How tensor data is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Small deterministic pseudo-random values (norm weights are 1), like a freshly initialised model.
    Random { seed: u64 },
    /// No data written: the file is extended to its full size as a sparse hole (header-only benchmarks).
    Sparse,
}

#[derive(Debug, Clone)]
pub struct SynthSpec {
    pub family: Family,
    pub layers: usize,
    pub hidden: u64,
    pub intermediate: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub vocab: u64,
    pub experts: u64,
    pub dtype: DType,
    pub shards: usize,
    pub fill: Fill,
    /// Untied models get an `lm_head.weight`; tied ones share `embed_tokens`.
    pub tied: bool,
}

impl SynthSpec {
    /// A tiny model of `family`: hidden 64, 4 heads, 2 kv heads, vocab 512.
    pub fn tiny(family: Family, layers: usize) -> SynthSpec {
        SynthSpec {
            family,
            layers,
            hidden: 64,
            intermediate: 128,
            heads: 4,
            kv_heads: 2,
            vocab: 512,
            experts: 4,
            dtype: DType::F32,
            shards: 1,
            fill: Fill::Random { seed: 42 },
            tied: matches!(family, Family::Qwen2 | Family::Gemma | Family::Opt),
        }
    }

    /// Llama-3-70B's shapes (80 layers, hidden 8192, GQA 64/8, vocab 128256) in bf16, sparse, in 30 shards.
    pub fn llama_70b_sparse() -> SynthSpec {
        SynthSpec {
            family: Family::Llama,
            layers: 80,
            hidden: 8192,
            intermediate: 28672,
            heads: 64,
            kv_heads: 8,
            vocab: 128256,
            experts: 0,
            dtype: DType::BF16,
            shards: 30,
            fill: Fill::Sparse,
            tied: false,
        }
    }

    fn head_dim(&self) -> u64 {
        self.hidden / self.heads
    }

    /// `(architecture, model_type, layer prefix, non-layer prefix)`.
    fn names(&self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self.family {
            Family::Llama => ("LlamaForCausalLM", "llama", "model.layers", "model"),
            Family::Qwen2 => ("Qwen2ForCausalLM", "qwen2", "model.layers", "model"),
            Family::Qwen3 => ("Qwen3ForCausalLM", "qwen3", "model.layers", "model"),
            Family::Gemma => ("GemmaForCausalLM", "gemma", "model.layers", "model"),
            Family::Phi3 => ("Phi3ForCausalLM", "phi3", "model.layers", "model"),
            Family::Opt => ("OPTForCausalLM", "opt", "model.decoder.layers", "model.decoder"),
            Family::Mixtral => ("MixtralForCausalLM", "mixtral", "model.layers", "model"),
            Family::Qwen2Vl => (
                "Qwen2VLForConditionalGeneration",
                "qwen2_vl",
                "model.language_model.layers",
                "model.language_model",
            ),
        }
    }

    /// The MLP activation transformers' class for the family expects.
    fn activation(&self) -> &'static str {
        match self.family {
            Family::Gemma => "gelu_pytorch_tanh",
            _ => "silu",
        }
    }

    pub fn config_json(&self) -> serde_json::Value {
        let (arch, model_type, _, _) = self.names();
        let text = json!({
            "hidden_size": self.hidden, "intermediate_size": self.intermediate, "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads, "head_dim": self.head_dim(),
            "vocab_size": self.vocab, "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
            "tie_word_embeddings": self.tied, "hidden_act": self.activation(), "bos_token_id": 0, "eos_token_id": 2,
            "torch_dtype": if self.dtype == DType::BF16 { "bfloat16" } else { "float32" },
        });
        let mut config = json!({ "architectures": [arch], "model_type": model_type });
        let obj = config.as_object_mut().expect("object");
        if self.family == Family::Qwen2Vl {
            obj.insert("text_config".into(), text);
            obj.insert(
                "vision_config".into(),
                json!({"depth": self.layers + 1, "embed_dim": 32}),
            );
        } else {
            for (k, v) in text.as_object().expect("object") {
                obj.insert(k.clone(), v.clone());
            }
            if self.family == Family::Mixtral {
                obj.insert("num_local_experts".into(), self.experts.into());
                obj.insert("num_experts_per_tok".into(), 2.into());
            }
        }
        config
    }

    /// Every tensor `(name, shape)` of the checkpoint.
    pub fn tensors(&self) -> Vec<(String, Vec<u64>)> {
        let (_, _, lp, top) = self.names();
        let (h, i, hd) = (self.hidden, self.intermediate, self.head_dim());
        let (q, kv) = (self.heads * hd, self.kv_heads * hd);
        let mut out: Vec<(String, Vec<u64>)> = Vec::new();
        let mut add = |name: String, shape: Vec<u64>| out.push((name, shape));
        for l in 0..self.layers {
            let p = format!("{lp}.{l}");
            if self.family == Family::Opt {
                for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                    add(format!("{p}.self_attn.{proj}.weight"), vec![h, h]);
                    add(format!("{p}.self_attn.{proj}.bias"), vec![h]);
                }
                for norm in ["self_attn_layer_norm", "final_layer_norm"] {
                    add(format!("{p}.{norm}.weight"), vec![h]);
                    add(format!("{p}.{norm}.bias"), vec![h]);
                }
                add(format!("{p}.fc1.weight"), vec![i, h]);
                add(format!("{p}.fc1.bias"), vec![i]);
                add(format!("{p}.fc2.weight"), vec![h, i]);
                add(format!("{p}.fc2.bias"), vec![h]);
                continue;
            }
            add(format!("{p}.input_layernorm.weight"), vec![h]);
            add(format!("{p}.post_attention_layernorm.weight"), vec![h]);
            if self.family == Family::Phi3 {
                add(format!("{p}.self_attn.qkv_proj.weight"), vec![q + 2 * kv, h]);
            } else {
                add(format!("{p}.self_attn.q_proj.weight"), vec![q, h]);
                add(format!("{p}.self_attn.k_proj.weight"), vec![kv, h]);
                add(format!("{p}.self_attn.v_proj.weight"), vec![kv, h]);
            }
            add(format!("{p}.self_attn.o_proj.weight"), vec![h, q]);
            if matches!(self.family, Family::Qwen2 | Family::Qwen2Vl) {
                add(format!("{p}.self_attn.q_proj.bias"), vec![q]);
                add(format!("{p}.self_attn.k_proj.bias"), vec![kv]);
                add(format!("{p}.self_attn.v_proj.bias"), vec![kv]);
            }
            if self.family == Family::Qwen3 {
                add(format!("{p}.self_attn.q_norm.weight"), vec![hd]);
                add(format!("{p}.self_attn.k_norm.weight"), vec![hd]);
            }
            match self.family {
                Family::Phi3 => {
                    add(format!("{p}.mlp.gate_up_proj.weight"), vec![2 * i, h]);
                    add(format!("{p}.mlp.down_proj.weight"), vec![h, i]);
                }
                Family::Mixtral => {
                    add(format!("{p}.block_sparse_moe.gate.weight"), vec![self.experts, h]);
                    for e in 0..self.experts {
                        add(format!("{p}.block_sparse_moe.experts.{e}.w1.weight"), vec![i, h]);
                        add(format!("{p}.block_sparse_moe.experts.{e}.w2.weight"), vec![h, i]);
                        add(format!("{p}.block_sparse_moe.experts.{e}.w3.weight"), vec![i, h]);
                    }
                }
                _ => {
                    add(format!("{p}.mlp.gate_proj.weight"), vec![i, h]);
                    add(format!("{p}.mlp.up_proj.weight"), vec![i, h]);
                    add(format!("{p}.mlp.down_proj.weight"), vec![h, i]);
                }
            }
        }
        add(format!("{top}.embed_tokens.weight"), vec![self.vocab, h]);
        if self.family == Family::Opt {
            add(format!("{top}.embed_positions.weight"), vec![258, h]);
            add(format!("{top}.final_layer_norm.weight"), vec![h]);
            add(format!("{top}.final_layer_norm.bias"), vec![h]);
        } else {
            add(format!("{top}.norm.weight"), vec![h]);
        }
        if self.family == Family::Qwen2Vl {
            for b in 0..=self.layers {
                add(format!("model.visual.blocks.{b}.attn.qkv.weight"), vec![96, 32]);
                add(format!("model.visual.blocks.{b}.norm1.weight"), vec![32]);
            }
            add("model.visual.merger.mlp.0.weight".into(), vec![h, 32]);
        }
        if !self.tied {
            add("lm_head.weight".into(), vec![self.vocab, h]);
        }
        out
    }
}

/// Writes config.json and the weights (sharded with an index when `spec.shards > 1`) into `dir`.
pub fn write_checkpoint(dir: &Path, spec: &SynthSpec) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let config = serde_json::to_string_pretty(&spec.config_json()).expect("json");
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, config).map_err(|e| Error::io(&config_path, e))?;
    let tensors = spec.tensors();
    let shards = spec.shards.max(1);
    let total: u64 = tensors
        .iter()
        .map(|(_, s)| spec.dtype.bytes_for(s.iter().product()))
        .sum();
    let mut groups: Vec<Vec<(String, Vec<u64>)>> = vec![Vec::new(); shards];
    let mut acc = 0u64;
    for t in tensors {
        let k = ((acc as u128 * shards as u128) / total.max(1) as u128).min(shards as u128 - 1) as usize;
        acc += spec.dtype.bytes_for(t.1.iter().product());
        groups[k].push(t);
    }
    let mut files = Vec::new();
    let mut weight_map = serde_json::Map::new();
    let mut rng = Rng(match spec.fill {
        Fill::Random { seed } => seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        Fill::Sparse => 1,
    });
    for (k, group) in groups.iter().enumerate() {
        let name = if shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{shards:05}.safetensors", k + 1)
        };
        for (t, _) in group {
            weight_map.insert(t.clone(), name.clone().into());
        }
        let path = dir.join(&name);
        write_safetensors(&path, group, spec.dtype, spec.fill, &mut rng)?;
        files.push(path);
    }
    if shards > 1 {
        let index = json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        let path = dir.join("model.safetensors.index.json");
        std::fs::write(&path, serde_json::to_string_pretty(&index).expect("json")).map_err(|e| Error::io(&path, e))?;
    }
    Ok(files)
}

/// Writes one safetensors file; with `Fill::Sparse` only the header is written and the file is extended.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Vec<u64>)],
    dtype: DType,
    fill: Fill,
    rng: &mut Rng,
) -> Result<()> {
    let io = |e| Error::io(path, e);
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    for (name, shape) in tensors {
        let bytes = dtype.bytes_for(shape.iter().product());
        header.insert(
            name.clone(),
            json!({"dtype": dtype.name(), "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut text = serde_json::to_string(&header).expect("json");
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    file.write_all(&(text.len() as u64).to_le_bytes()).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    match fill {
        Fill::Sparse => {
            let mut file = file.into_inner().map_err(|e| io(e.into_error()))?;
            let end = file.stream_position().map_err(io)? + offset;
            file.set_len(end).map_err(io)?;
        }
        Fill::Random { .. } => {
            for (name, shape) in tensors {
                let n: u64 = shape.iter().product();
                let is_norm = name.contains("norm") && name.ends_with("weight");
                for _ in 0..n {
                    let v = if is_norm {
                        1.0
                    } else if name.ends_with("bias") {
                        0.0
                    } else {
                        rng.normal() * 0.02
                    };
                    write_value(&mut file, dtype, v).map_err(io)?;
                }
            }
            file.flush().map_err(io)?;
        }
    }
    Ok(())
}

fn write_value(w: &mut impl Write, dtype: DType, v: f32) -> std::io::Result<()> {
    match dtype {
        DType::F32 => w.write_all(&v.to_le_bytes()),
        DType::BF16 => w.write_all(&((v.to_bits() >> 16) as u16).to_le_bytes()),
        DType::F64 => w.write_all(&(v as f64).to_le_bytes()),
        other => Err(std::io::Error::other(format!(
            "synthetic weights in {other} are not supported; use F32 or BF16"
        ))),
    }
}

/// A small deterministic generator (xorshift64*), so fixtures are identical on every machine.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Approximately standard normal (sum of uniforms).
    pub fn normal(&mut self) -> f32 {
        let s: f64 = (0..4)
            .map(|_| (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
            .sum();
        ((s - 2.0) * (3.0f64).sqrt()) as f32
    }
}
