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
    /// o_proj carries a bias (llama-style `attention_bias`; qwen2's biases are q/k/v only).
    pub o_bias: bool,
    /// gate/up/down carry biases (llama's `mlp_bias`).
    pub mlp_bias: bool,
    /// Per layer, the sliding window its attention uses (a query sees the `window` latest keys, itself included),
    /// or None for full causal attention.
    pub layer_windows: Vec<Option<usize>>,
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
        // transformers 5 moves `partial_rotary_factor` into `rope_parameters`: read both, ignore neither.
        let partial = raw["partial_rotary_factor"]
            .as_f64()
            .or_else(|| rope.and_then(|r| r["partial_rotary_factor"].as_f64()));
        if let Some(f) = partial.filter(|&f| f != 1.0) {
            return Err(format!(
                "partial_rotary_factor {f} (rotary on part of each head) is not supported yet; only 1 is"
            ));
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
        let num_layers = uint("num_hidden_layers")?;
        let layer_windows = layer_windows(raw, arch, num_layers)?;
        let llama_like = matches!(arch, Architecture::Llama | Architecture::Mistral);
        let flag = |k: &str| raw[k].as_bool().unwrap_or(false);
        Ok(DecoderConfig {
            architecture: arch,
            hidden_size,
            intermediate_size: uint("intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads: uint("num_key_value_heads").unwrap_or(num_heads),
            head_dim: uint("head_dim").unwrap_or(hidden_size / num_heads.max(1)),
            vocab_size: uint("vocab_size")?,
            rms_norm_eps: raw["rms_norm_eps"].as_f64().unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: raw["tie_word_embeddings"].as_bool().unwrap_or(gemma),
            qkv_bias: arch == Architecture::Qwen2 || flag("attention_bias"),
            o_bias: llama_like && flag("attention_bias"),
            mlp_bias: llama_like && flag("mlp_bias"),
            layer_windows,
            qk_norm: arch == Architecture::Qwen3,
            activation,
            norm_offset: if gemma { 1.0 } else { 0.0 },
            embed_scale: gemma.then(|| (hidden_size as f64).sqrt()),
        })
    }

    /// The window of layer `i` (None: full attention).
    pub fn window(&self, i: usize) -> Option<usize> {
        self.layer_windows.get(i).copied().flatten()
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

/// Each layer's sliding window, as transformers decides it: `layer_types` when config.json has it
/// (`sliding_attention` / `full_attention`); else mistral and phi3 slide on every layer when `sliding_window` is
/// set, and qwen2 and qwen3 on layers from `max_window_layers` on when `use_sliding_window` is true. A
/// `layer_types` entry of another kind, or a sliding layer without a window, is refused by name: training it as
/// full attention would be other math than the model's.
fn layer_windows(raw: &Value, arch: Architecture, layers: usize) -> std::result::Result<Vec<Option<usize>>, String> {
    let window = match &raw["sliding_window"] {
        Value::Null => None,
        v => Some(
            v.as_u64()
                .filter(|&w| w > 0)
                .ok_or_else(|| format!("`sliding_window` must be a positive integer or null, not {v}"))?
                as usize,
        ),
    };
    let sliding: Vec<bool> = match raw.get("layer_types").filter(|v| !v.is_null()) {
        Some(types) => {
            let types = types.as_array().ok_or("`layer_types` must be a list")?;
            if types.len() != layers {
                return Err(format!(
                    "`layer_types` lists {} layers, but num_hidden_layers is {layers}",
                    types.len()
                ));
            }
            types
                .iter()
                .enumerate()
                .map(|(i, t)| match t.as_str() {
                    Some("full_attention") => Ok(false),
                    Some("sliding_attention") => Ok(true),
                    _ => Err(format!(
                        "layer {i}'s kind {t} in `layer_types` is not supported (full_attention and \
                         sliding_attention are)"
                    )),
                })
                .collect::<std::result::Result<_, _>>()?
        }
        None => match arch {
            Architecture::Mistral | Architecture::Phi3 => vec![window.is_some(); layers],
            Architecture::Qwen2 | Architecture::Qwen3 if raw["use_sliding_window"].as_bool().unwrap_or(false) => {
                let from = raw["max_window_layers"].as_u64().unwrap_or(layers as u64) as usize;
                (0..layers).map(|i| i >= from).collect()
            }
            _ => vec![false; layers],
        },
    };
    sliding
        .iter()
        .enumerate()
        .map(|(i, &s)| match (s, window) {
            (false, _) => Ok(None),
            (true, Some(w)) => Ok(Some(w)),
            (true, None) => Err(format!(
                "layer {i} uses sliding attention but `sliding_window` is not set"
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(extra: serde_json::Value) -> serde_json::Value {
        let mut raw = serde_json::json!({"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128,
            "num_hidden_layers": 3, "vocab_size": 10});
        for (k, v) in extra.as_object().unwrap() {
            raw[k] = v.clone();
        }
        raw
    }

    #[test]
    fn sliding_windows_are_read_per_layer_as_transformers_does() {
        let windows = |extra, arch| DecoderConfig::from_value(&tiny(extra), arch).map(|c| c.layer_windows);
        use serde_json::json;
        assert_eq!(
            windows(json!({"sliding_window": 16}), Architecture::Mistral).unwrap(),
            vec![Some(16); 3]
        );
        assert_eq!(
            windows(json!({"sliding_window": null}), Architecture::Mistral).unwrap(),
            vec![None; 3]
        );
        assert_eq!(
            windows(json!({"sliding_window": 8}), Architecture::Phi3).unwrap(),
            vec![Some(8); 3]
        );
        let qwen = json!({"sliding_window": 8, "use_sliding_window": true, "max_window_layers": 1});
        assert_eq!(
            windows(qwen, Architecture::Qwen2).unwrap(),
            vec![None, Some(8), Some(8)]
        );
        let off = json!({"sliding_window": 8, "use_sliding_window": false, "max_window_layers": 1});
        assert_eq!(windows(off, Architecture::Qwen2).unwrap(), vec![None; 3]);
        let qwen3 = json!({"sliding_window": 8, "use_sliding_window": true, "max_window_layers": 2});
        assert_eq!(windows(qwen3, Architecture::Qwen3).unwrap(), vec![None, None, Some(8)]);
        let typed = json!({"sliding_window": 4,
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]});
        assert_eq!(
            windows(typed, Architecture::Llama).unwrap(),
            vec![Some(4), None, Some(4)]
        );
        let odd = json!({"layer_types": ["full_attention", "linear_attention", "full_attention"]});
        let e = windows(odd, Architecture::Llama).unwrap_err();
        assert!(e.contains("layer 1") && e.contains("linear_attention"), "{e}");
        let e = windows(
            json!({"layer_types": ["sliding_attention", "sliding_attention", "sliding_attention"]}),
            Architecture::Llama,
        )
        .unwrap_err();
        assert!(e.contains("sliding_window"), "{e}");
    }

    #[test]
    fn partial_rotary_is_refused_at_the_top_level_and_inside_rope_parameters() {
        use serde_json::json;
        for extra in [
            json!({"partial_rotary_factor": 0.75}),
            json!({"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}}),
        ] {
            let e = DecoderConfig::from_value(&tiny(extra), Architecture::Phi3).unwrap_err();
            assert!(e.contains("partial_rotary_factor"), "{e}");
        }
        let whole = json!({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 1.0}});
        assert!(DecoderConfig::from_value(&tiny(whole), Architecture::Phi3).is_ok());
    }

    #[test]
    fn llama_biases_cover_o_proj_and_the_mlp() {
        let c = DecoderConfig::from_value(
            &tiny(serde_json::json!({"attention_bias": true, "mlp_bias": true})),
            Architecture::Llama,
        )
        .unwrap();
        assert!(c.qkv_bias && c.o_bias && c.mlp_bias);
        let q = DecoderConfig::from_value(&tiny(serde_json::json!({})), Architecture::Qwen2).unwrap();
        assert!(q.qkv_bias && !q.o_bias && !q.mlp_bias);
    }

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
