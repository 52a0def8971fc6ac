//! The decoder settings training needs, read from config.json, and the closed set of trainable architectures.

use crate::error::{Result, TrainError};
use serde_json::Value;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    /// Fused `qkv_proj` and `gate_up_proj`.
    Phi3,
    /// `(1 + weight)` norms, embeddings scaled by sqrt(hidden), GeLU.
    Gemma,
}

/// The MLP's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GeLU with the tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
    /// Exact GeLU (`gelu`).
    Gelu,
}

impl Architecture {
    pub const SUPPORTED: [&'static str; 6] = ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma"];

    pub fn from_config(architecture: &str, model_type: Option<&str>) -> Result<Architecture> {
        let key = model_type
            .map(str::to_string)
            .unwrap_or_else(|| architecture.to_ascii_lowercase());
        match key.as_str() {
            "llama" => Ok(Architecture::Llama),
            "mistral" => Ok(Architecture::Mistral),
            "qwen2" => Ok(Architecture::Qwen2),
            "qwen3" => Ok(Architecture::Qwen3),
            "phi3" => Ok(Architecture::Phi3),
            "gemma" => Ok(Architecture::Gemma),
            _ => Err(TrainError::UnsupportedArchitecture {
                found: model_type.unwrap_or(architecture).to_string(),
                supported: Self::SUPPORTED.to_vec(),
            }),
        }
    }
}

/// Llama 3's rope scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3Scaling>,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry biases (qwen2 always; llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Per-head RMSNorm on q and k before rotary (qwen3).
    pub qk_norm: bool,
    pub activation: Activation,
    /// Added to every RMSNorm weight (gemma stores `weight - 1`).
    pub norm_offset: f64,
    /// Embeddings multiplied by this (gemma: sqrt(hidden_size)).
    pub embed_scale: Option<f64>,
}

impl DecoderConfig {
    pub fn read(model_dir: &Path) -> Result<DecoderConfig> {
        let path = model_dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| TrainError::Io {
            path: path.clone(),
            source: e,
        })?;
        let raw: Value = serde_json::from_str(&text).map_err(|e| TrainError::Config {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let arch = Architecture::from_config(
            raw["architectures"].get(0).and_then(Value::as_str).unwrap_or_default(),
            raw["model_type"].as_str(),
        )?;
        Self::from_value(&raw, arch).map_err(|reason| TrainError::Config { path, reason })
    }

    fn from_value(raw: &Value, arch: Architecture) -> std::result::Result<DecoderConfig, String> {
        let uint = |k: &str| {
            raw.get(k)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| format!("missing or bad `{k}`"))
        };
        let hidden_size = uint("hidden_size")?;
        let num_heads = uint("num_attention_heads")?;
        let rope = raw
            .get("rope_parameters")
            .or_else(|| raw.get("rope_scaling"))
            .filter(|v| v.is_object());
        let rope_theta = raw
            .get("rope_theta")
            .and_then(Value::as_f64)
            .or_else(|| rope.and_then(|r| r["rope_theta"].as_f64()))
            .unwrap_or(10000.0);
        let rope_type = rope
            .and_then(|r| r["rope_type"].as_str().or(r["type"].as_str()))
            .unwrap_or("default");
        let rope_scaling = match rope_type {
            "default" => None,
            "llama3" => {
                let r = rope.expect("rope_type came from it");
                let f = |k: &str| r[k].as_f64().ok_or_else(|| format!("rope scaling lacks `{k}`"));
                Some(Llama3Scaling {
                    factor: f("factor")?,
                    low_freq_factor: f("low_freq_factor")?,
                    high_freq_factor: f("high_freq_factor")?,
                    original_max_position_embeddings: f("original_max_position_embeddings")?,
                })
            }
            other => {
                return Err(format!(
                    "rope type {other:?} is not supported yet (default and llama3 are)"
                ))
            }
        };
        if raw["partial_rotary_factor"].as_f64().is_some_and(|f| f != 1.0) {
            return Err("partial_rotary_factor other than 1 is not supported yet".into());
        }
        let act_name = if arch == Architecture::Gemma {
            raw["hidden_activation"].as_str().unwrap_or("gelu_pytorch_tanh")
        } else {
            raw["hidden_act"].as_str().unwrap_or("silu")
        };
        let activation = match act_name {
            "silu" | "swish" => Activation::Silu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::Gelu,
            other => {
                return Err(format!(
                    "activation {other:?} is not supported yet (silu, gelu, gelu_pytorch_tanh are)"
                ))
            }
        };
        let gemma = arch == Architecture::Gemma;
        Ok(DecoderConfig {
            architecture: arch,
            hidden_size,
            intermediate_size: uint("intermediate_size")?,
            num_layers: uint("num_hidden_layers")?,
            num_heads,
            num_kv_heads: uint("num_key_value_heads").unwrap_or(num_heads),
            head_dim: uint("head_dim").unwrap_or(hidden_size / num_heads.max(1)),
            vocab_size: uint("vocab_size")?,
            rms_norm_eps: raw["rms_norm_eps"].as_f64().unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: raw["tie_word_embeddings"].as_bool().unwrap_or(gemma),
            qkv_bias: arch == Architecture::Qwen2 || raw["attention_bias"].as_bool().unwrap_or(false),
            qk_norm: arch == Architecture::Qwen3,
            activation,
            norm_offset: if gemma { 1.0 } else { 0.0 },
            embed_scale: gemma.then(|| (hidden_size as f64).sqrt()),
        })
    }

    /// Rotary inverse frequencies, with Llama 3 scaling applied when configured.
    pub fn inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        (0..d / 2)
            .map(|i| {
                let f = 1.0 / self.rope_theta.powf(2.0 * i as f64 / d as f64);
                let f = match &self.rope_scaling {
                    None => f,
                    Some(s) => {
                        let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
                        let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / s.factor
                        } else {
                            let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
                                / (s.high_freq_factor - s.low_freq_factor);
                            (1.0 - smooth) * f / s.factor + smooth * f
                        }
                    }
                };
                f as f32
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_architectures_list_the_supported_ones() {
        let e = Architecture::from_config("Gemma2ForCausalLM", Some("gemma2")).unwrap_err();
        assert!(
            e.to_string().contains("gemma2") && e.to_string().contains("llama, mistral, qwen2, qwen3, phi3, gemma"),
            "{e}"
        );
    }

    #[test]
    fn reads_transformers_5_rope_parameters_and_llama3_scaling() {
        let mut raw = serde_json::json!({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
            "intermediate_size": 128, "num_hidden_layers": 2, "vocab_size": 10,
            "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}});
        let c = DecoderConfig::from_value(&raw, Architecture::Llama).unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.head_dim, 16);
        raw["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        raw.as_object_mut().unwrap().remove("rope_parameters");
        let c = DecoderConfig::from_value(&raw, Architecture::Llama).unwrap();
        let scaled = c.inv_freq();
        assert_eq!(scaled[0], 1.0, "high frequencies are kept");
        let unscaled = 1.0 / 10000f64.powf(14.0 / 16.0);
        assert!(
            (scaled[7] as f64 - unscaled / 8.0).abs() < 1e-9,
            "low frequencies are divided by the factor"
        );
    }
}
