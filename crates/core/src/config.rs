//! The parts of a Hugging Face `config.json` that inspection and memory estimates need. Field names differ between
//! model families (`num_hidden_layers` / `num_layers` / `n_layer`, ...); VLM configs keep the language model's
//! settings in `text_config`.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// The largest size a config may state (2^32): no model comes near it, and products of such sizes stay in u64.
const MAX_SIZE: u64 = 1 << 32;

/// Sizes of the language model, as far as the config states them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelDims {
    pub hidden_size: Option<u64>,
    pub intermediate_size: Option<u64>,
    pub num_attention_heads: Option<u64>,
    pub num_key_value_heads: Option<u64>,
    pub head_dim: Option<u64>,
    pub vocab_size: Option<u64>,
    pub max_position_embeddings: Option<u64>,
    /// A Gated DeltaNet layer's sizes (Qwen3.5's `linear_*` keys), where the model has such layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_net: Option<DeltaNetDims>,
    /// Multi-head latent attention's sizes (DeepSeek-V3's `kv_lora_rank` and kin), where the model has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latent: Option<LatentDims>,
    /// The sparse MLP's sizes, where the model has experts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experts: Option<ExpertDims>,
    /// A Mamba 2 layer's sizes (Granite 4.0-H's `mamba_*` keys), where `layer_types` names such layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mamba: Option<MambaDims>,
    /// Rope turns only part of each head (`partial_rotary_factor` below 1): the CPU's fused attention block does not
    /// serve such layers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial_rotary: bool,
    /// The MLP's activation is one the CPU's fused MLP block lacks (`hidden_act` / `hidden_activation` other than
    /// SiLU and GELU's tanh approximation).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unfused_mlp_activation: bool,
}

/// A Mamba 2 layer's widths: its inner width (`mamba_expand` × hidden), B's and C's (groups × state each), and
/// its heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MambaDims {
    pub inner: u64,
    pub groups_state: u64,
    pub heads: u64,
}

/// A mixture-of-experts MLP: how many experts, how many each token runs through, and each one's MLP width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpertDims {
    pub count: u64,
    pub top_k: u64,
    pub width: u64,
    /// The shared expert's MLP width, where every token also runs through one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_width: Option<u64>,
    /// config.json asks for the router's load-balancing loss (a top-level `output_router_logits: true`, as
    /// transformers' causal LMs read it, with a non-zero `router_aux_loss_coef`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub router_loss: bool,
}

/// Multi-head latent attention: the query and key/value ranks (`q_lora_rank`, 0 without one; `kv_lora_rank`)
/// and each head's width in the attention kernels (the wider of query/key, `qk_nope_head_dim` +
/// `qk_rope_head_dim`, and value, `v_head_dim`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatentDims {
    pub q_rank: u64,
    pub kv_rank: u64,
    pub head_width: u64,
}

/// The sizes of a Gated DeltaNet (linear attention) layer: key heads and their width, value heads and theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaNetDims {
    pub key_heads: u64,
    pub key_dim: u64,
    pub value_heads: u64,
    pub value_dim: u64,
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub architecture: String,
    pub model_type: Option<String>,
    /// Layer count stated by the config, if any.
    pub num_layers: Option<usize>,
    /// Multi-token-prediction layers stored after the last decoder layer (DeepSeek-V3's and GLM-4.5's
    /// `num_nextn_predict_layers`), which transformers drops on load.
    pub prediction_layers: usize,
    /// The last layers that reuse an earlier layer's keys and values (Gemma 4's `num_kv_shared_layers`): the key
    /// and value projections and norms Google's checkpoints still store for them are left unread by transformers.
    pub kv_shared_layers: usize,
    /// `tie_word_embeddings` when the config states it.
    pub tie_word_embeddings: Option<bool>,
    pub dims: ModelDims,
    /// A composite (vision-language) config: it has `text_config` or `vision_config`.
    pub multimodal: bool,
    /// The FP8 scheme of a checkpoint released in FP8 (fp8.rs), `None` for any other.
    pub fp8: Option<crate::fp8::Scheme>,
    /// The whole config, for consumers that need more.
    pub raw: Value,
}

/// The `model_type`s whose checkpoints hold a multi-token-prediction head `mtp.*` that transformers drops
/// (`_keys_to_ignore_on_load_unexpected = [r"^mtp.*"]`).
const MTP_HEAD_TYPES: [&str; 5] = [
    "qwen3_5",
    "qwen3_5_text",
    "qwen3_5_moe",
    "qwen3_5_moe_text",
    "qwen3_next",
];

/// Whether the MLP's activation is one the CPU's fused MLP block lacks: SiLU and GELU's tanh approximation it has
/// (Gemma 1's plain `gelu` is the tanh one, as transformers' Gemma reads it; later Gemmas' is erf's).
fn unfused_mlp_activation(text: &serde_json::Map<String, Value>) -> bool {
    let gemma = text.get("model_type").and_then(Value::as_str) == Some("gemma");
    let act = ["hidden_act", "hidden_activation"]
        .iter()
        .find_map(|k| text.get(*k).and_then(Value::as_str));
    act.is_some_and(|act| match act {
        "silu" | "swish" | "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => false,
        "gelu" => !gemma,
        _ => true,
    })
}

/// Whether rope turns only part of each head: a `partial_rotary_factor` below 1 at the top level, in the rope
/// parameters, or in any per-layer-type rope parameters.
fn partial_rotary(text: &serde_json::Map<String, Value>) -> bool {
    let below_one = |v: &Value| {
        v.get("partial_rotary_factor")
            .and_then(Value::as_f64)
            .is_some_and(|f| f < 1.0)
    };
    let top = text
        .get("partial_rotary_factor")
        .and_then(Value::as_f64)
        .is_some_and(|f| f < 1.0);
    let ropes = text.get("rope_parameters").or_else(|| text.get("rope_scaling"));
    let nested = ropes.is_some_and(|r| below_one(r) || r.as_object().is_some_and(|o| o.values().any(below_one)));
    top || nested
}

/// transformers' `tie_word_embeddings` default for the vision-language classes FreezeTune reads. These classes
/// tie by their own top-level flag and never read `text_config`'s, which transformers 5 writes with the text
/// class's default whatever the model does (a Gemma 4 saved untied says `true` there, a tied Qwen3.5 `false`).
const WRAPPER_TIE_DEFAULTS: [(&str, bool); 17] = [
    ("gemma3", true),
    ("gemma3n", true),
    ("gemma4", true),
    ("mistral3", true),
    ("paligemma", true),
    ("qwen3_5", false),
    ("qwen3_5_moe", false),
    ("qwen2_vl", false),
    ("qwen2_5_vl", false),
    ("qwen3_vl", false),
    ("qwen3_vl_moe", false),
    ("glm4v", false),
    ("glm4v_moe", false),
    ("llama4", false),
    ("llava_next", false),
    ("idefics3", false),
    ("smolvlm", false),
];

/// LLaVA's config ties when its own flag or its text tower's says so (older LLaVA configs saved it in the text
/// tower, and `LlavaConfig` copies a true one up).
const EITHER_FLAG_TIES: [&str; 1] = ["llava"];

/// Whether a vision-language config.json (one with `text_config`) ties its lm_head to the embeddings, as
/// transformers decides it: the top-level flag, else the class's default (LLaVA: either flag). For a wrapper
/// FreezeTune does not know, the top-level flag, else the text tower's, and `None` leaves it to the checkpoint.
pub fn wrapper_ties(raw: &Value) -> Option<bool> {
    let top = raw.get("tie_word_embeddings").and_then(Value::as_bool);
    let text = raw
        .get("text_config")
        .and_then(|t| t.get("tie_word_embeddings"))
        .and_then(Value::as_bool);
    let model_type = raw.get("model_type").and_then(Value::as_str);
    if model_type.is_some_and(|t| EITHER_FLAG_TIES.contains(&t)) {
        return Some(top == Some(true) || text == Some(true));
    }
    match WRAPPER_TIE_DEFAULTS.iter().find(|(t, _)| Some(*t) == model_type) {
        Some(&(_, default)) => Some(top.unwrap_or(default)),
        None => top.or(text),
    }
}

impl ModelConfig {
    /// Whether `name` belongs to a multi-token-prediction head transformers drops on load: DeepSeek-V3's and
    /// GLM-4.5's layers after the last (`model.layers.N.…` with N from the config's layer count on, within
    /// `num_nextn_predict_layers`), or Qwen3.5's and Qwen3-Next's `mtp.…`.
    pub fn is_prediction_layer(&self, name: &str) -> bool {
        let mtp_head = self.model_type.as_deref().is_some_and(|t| MTP_HEAD_TYPES.contains(&t));
        if mtp_head && name.starts_with("mtp.") {
            return true;
        }
        let (Some(layers), 1..) = (self.num_layers, self.prediction_layers) else {
            return false;
        };
        let index = name
            .strip_prefix("model.layers.")
            .and_then(|rest| rest.split('.').next());
        index
            .and_then(|i| i.parse::<usize>().ok())
            .is_some_and(|i| (layers..layers + self.prediction_layers).contains(&i))
    }

    /// Whether `name` is a key or value projection or norm of a layer that reuses an earlier layer's keys and
    /// values (Gemma 4's last `num_kv_shared_layers`), under the text decoder's layers (not a vision tower's).
    pub fn is_unused_shared_kv(&self, name: &str) -> bool {
        // transformers shares only when some layer comes before the shared ones (`layer_idx >= first > 0`).
        let Some(layers) = self
            .num_layers
            .filter(|&l| self.kv_shared_layers > 0 && self.kv_shared_layers < l)
        else {
            return false;
        };
        const TEXT_LAYERS: [&str; 3] = [
            "model.layers.",
            "model.language_model.layers.",
            "language_model.model.layers.",
        ];
        const UNUSED: [&str; 4] = [
            "self_attn.k_proj.",
            "self_attn.v_proj.",
            "self_attn.k_norm.",
            "self_attn.v_norm.",
        ];
        let Some(rest) = TEXT_LAYERS.iter().find_map(|p| name.strip_prefix(p)) else {
            return false;
        };
        let Some((index, part)) = rest.split_once('.') else {
            return false;
        };
        let shared = index
            .parse::<usize>()
            .is_ok_and(|i| i < layers && i >= layers.saturating_sub(self.kv_shared_layers));
        shared && UNUSED.iter().any(|u| part.starts_with(u))
    }

    /// Whether transformers leaves `name` unread when it loads the checkpoint: a multi-token-prediction layer, or
    /// a shared layer's unused key/value tensors. Such tensors are never counted, planned, loaded or trained, and
    /// are written back unchanged.
    pub fn dropped_on_load(&self, name: &str) -> bool {
        self.is_prediction_layer(name) || self.is_unused_shared_kv(name)
    }

    pub fn read(path: &Path) -> Result<ModelConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let raw: Value = serde_json::from_str(&text).map_err(|e| Error::BadConfig {
            path: path.to_path_buf(),
            reason: format!("not valid JSON: {e}"),
        })?;
        Self::from_value(raw).map_err(|reason| Error::BadConfig {
            path: path.to_path_buf(),
            reason,
        })
    }

    pub fn from_value(raw: Value) -> std::result::Result<ModelConfig, String> {
        let top = raw.as_object().ok_or("the top level is not a JSON object")?;
        let text = top.get("text_config").and_then(Value::as_object).unwrap_or(top);
        let architecture = top
            .get("architectures")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .or_else(|| top.get("model_type").and_then(Value::as_str))
            .ok_or("neither `architectures` nor `model_type` is set")?
            .to_string();
        // A size the config states must be a positive integer: 0, a negative or a fractional one is refused by
        // name rather than read as absent (a model of 0 heads plans, a negative width inspects, otherwise).
        let uint = |keys: &[&str]| -> std::result::Result<Option<u64>, String> {
            let found = keys.iter().find_map(|k| {
                text.get(*k)
                    .or_else(|| top.get(*k))
                    .filter(|v| !v.is_null())
                    .map(|v| (*k, v))
            });
            match found {
                None => Ok(None),
                Some((k, v)) => match v.as_u64().filter(|&n| n > 0) {
                    // Sizes are multiplied together for counts and memory: past 2^32 they could only overflow.
                    Some(n) if n > MAX_SIZE => Err(format!(
                        "`{k}` is {n}, past the largest size FreezeTune reads ({MAX_SIZE})"
                    )),
                    Some(n) => Ok(Some(n)),
                    None => Err(format!("`{k}` is {v}; it must be a positive integer")),
                },
            }
        };
        let num_layers = uint(&["num_hidden_layers", "num_layers", "n_layer"])?.map(|n| n as usize);
        let prediction_layers = match text.get("num_nextn_predict_layers") {
            None | Some(Value::Null) => 0,
            Some(v) => v
                .as_u64()
                .filter(|&n| n <= 64)
                .ok_or_else(|| format!("`num_nextn_predict_layers` is {v}; it must be an integer from 0 to 64"))?
                as usize,
        };
        let kv_shared_layers = match text.get("num_kv_shared_layers") {
            None | Some(Value::Null) => 0,
            Some(v) => v
                .as_u64()
                .filter(|&n| num_layers.is_none_or(|l| n as usize <= l))
                .ok_or_else(|| {
                    format!("`num_kv_shared_layers` is {v}; it must be an integer from 0 to the layer count")
                })? as usize,
        };
        let tie_word_embeddings = match top.contains_key("text_config") {
            true => wrapper_ties(&raw),
            // LFM2's original configs name it `tie_embedding`, which transformers takes over the other.
            false => top
                .get("tie_embedding")
                .and_then(Value::as_bool)
                .or_else(|| top.get("tie_word_embeddings").and_then(Value::as_bool)),
        };
        let hidden_size = uint(&["hidden_size", "n_embd", "d_model"])?;
        let num_attention_heads = uint(&["num_attention_heads", "n_head", "num_heads"])?;
        let num_key_value_heads = uint(&["num_key_value_heads", "num_kv_heads", "multi_query_group_num"])?;
        if let (Some(h), Some(kv)) = (num_attention_heads, num_key_value_heads) {
            if h % kv != 0 {
                return Err(format!(
                    "num_attention_heads {h} is not a multiple of num_key_value_heads {kv}: each key/value head \
                     must serve a whole group of query heads"
                ));
            }
        }
        let intermediate_size = uint(&["intermediate_size", "ffn_dim", "n_inner"])?.or(hidden_size.map(|h| 4 * h));
        // An expert count of 0 (Granite 4.0's dense models) means no experts.
        let count = ["num_experts", "num_local_experts", "n_routed_experts"]
            .iter()
            .find_map(|k| text.get(*k).and_then(Value::as_u64))
            .filter(|&n| n > 0);
        // Gemma 4 names the top-k `top_k_experts`, and has experts only with `enable_moe_block`.
        let gemma4_off = text.get("enable_moe_block").is_some_and(|v| v.as_bool() != Some(true));
        let count = count.filter(|_| !gemma4_off);
        let experts = match (count, uint(&["num_experts_per_tok", "top_k_experts"])?) {
            (Some(count), Some(top_k)) => {
                let width = uint(&["moe_intermediate_size"])?
                    .or(intermediate_size)
                    .ok_or("`moe_intermediate_size` is missing")?;
                // DeepSeek-V3 and GLM-4.5 fuse `n_shared_experts` experts' widths into one shared MLP; Granite
                // 4.0-H's shared MLP is `shared_intermediate_size` wide.
                let shared_experts = uint(&["n_shared_experts"])?.map(|n| n.saturating_mul(width));
                Some(ExpertDims {
                    count: count.min(MAX_SIZE),
                    top_k,
                    width,
                    shared_width: uint(&["shared_expert_intermediate_size", "shared_intermediate_size"])?
                        .or(shared_experts),
                    router_loss: top.get("output_router_logits") == Some(&Value::Bool(true))
                        && top.get("router_aux_loss_coef").and_then(Value::as_f64) != Some(0.0),
                })
            }
            _ => None,
        };
        let has_mamba = ["layer_types", "layers_block_type"].iter().any(|k| {
            text.get(*k)
                .and_then(Value::as_array)
                .is_some_and(|types| types.iter().any(|t| t == "mamba"))
        });
        let mamba = match (has_mamba, hidden_size) {
            (true, Some(h)) => Some(MambaDims {
                inner: uint(&["mamba_expand"])?.unwrap_or(2).saturating_mul(h),
                groups_state: uint(&["mamba_n_groups"])?
                    .unwrap_or(1)
                    .saturating_mul(uint(&["mamba_d_state"])?.unwrap_or(256)),
                heads: uint(&["mamba_n_heads"])?.unwrap_or(128),
            }),
            _ => None,
        };
        let dims = ModelDims {
            mamba,
            hidden_size,
            intermediate_size,
            num_attention_heads,
            num_key_value_heads: num_key_value_heads.or(num_attention_heads),
            head_dim: uint(&["head_dim"])?.or(match (hidden_size, num_attention_heads) {
                (Some(h), Some(n)) => Some(h / n),
                _ => None,
            }),
            vocab_size: uint(&["vocab_size"])?,
            max_position_embeddings: uint(&["max_position_embeddings", "n_positions", "seq_length"])?,
            delta_net: match (
                uint(&["linear_num_key_heads"])?,
                uint(&["linear_key_head_dim"])?,
                uint(&["linear_num_value_heads"])?,
                uint(&["linear_value_head_dim"])?,
            ) {
                (Some(key_heads), Some(key_dim), Some(value_heads), Some(value_dim)) => Some(DeltaNetDims {
                    key_heads,
                    key_dim,
                    value_heads,
                    value_dim,
                }),
                _ => None,
            },
            experts,
            latent: match (
                uint(&["kv_lora_rank"])?,
                uint(&["qk_nope_head_dim"])?,
                uint(&["qk_rope_head_dim"])?,
            ) {
                (Some(kv_rank), Some(nope), Some(rope)) => Some(LatentDims {
                    q_rank: uint(&["q_lora_rank"])?.unwrap_or(0),
                    kv_rank,
                    head_width: (nope + rope).max(uint(&["v_head_dim"])?.unwrap_or(0)),
                }),
                _ => None,
            },
            partial_rotary: partial_rotary(text),
            unfused_mlp_activation: unfused_mlp_activation(text),
        };
        let model_type = top.get("model_type").and_then(Value::as_str).map(str::to_string);
        let multimodal = top.contains_key("text_config") || top.contains_key("vision_config");
        let fp8 = crate::fp8::Scheme::from_config(&raw)?;
        Ok(ModelConfig {
            architecture,
            model_type,
            num_layers,
            prediction_layers,
            kv_shared_layers,
            tie_word_embeddings,
            dims,
            multimodal,
            fp8,
            raw,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vlm_configs_use_text_config() {
        let c = ModelConfig::from_value(serde_json::json!({
            "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl",
            "text_config": {"num_hidden_layers": 28, "hidden_size": 1536, "num_attention_heads": 12, "tie_word_embeddings": true},
            "vision_config": {"depth": 32}
        }))
        .unwrap();
        assert_eq!(c.architecture, "Qwen2VLForConditionalGeneration");
        assert_eq!(c.num_layers, Some(28));
        assert_eq!(c.dims.head_dim, Some(128));
        // transformers ties a wrapper by its own top-level flag, Qwen2-VL's class default being false.
        assert_eq!(c.tie_word_embeddings, Some(false));
    }

    #[test]
    fn a_wrapper_ties_by_its_top_level_flag_or_its_class_default_never_by_text_config() {
        let tie = |raw: serde_json::Value| ModelConfig::from_value(raw).unwrap().tie_word_embeddings;
        let text = |t: bool| serde_json::json!({"num_hidden_layers": 2, "tie_word_embeddings": t});
        // What transformers 5 saves: Gemma4Config(tie_word_embeddings=False) writes `true` in text_config.
        let gemma4 =
            serde_json::json!({"model_type": "gemma4", "tie_word_embeddings": false, "text_config": text(true)});
        assert_eq!(tie(gemma4), Some(false));
        // A tied Qwen3.5 writes `false` in text_config.
        let qwen =
            serde_json::json!({"model_type": "qwen3_5", "tie_word_embeddings": true, "text_config": text(false)});
        assert_eq!(tie(qwen), Some(true));
        // No top-level flag: the class's default.
        assert_eq!(
            tie(serde_json::json!({"model_type": "gemma4", "text_config": text(false)})),
            Some(true)
        );
        assert_eq!(
            tie(serde_json::json!({"model_type": "qwen3_5", "text_config": text(true)})),
            Some(false)
        );
        // LLaVA ties by either flag.
        let llava = serde_json::json!({"model_type": "llava", "tie_word_embeddings": false, "text_config": text(true)});
        assert_eq!(tie(llava), Some(true));
        // A wrapper FreezeTune does not know: its own flag, else its text tower's, else the checkpoint's.
        assert_eq!(
            tie(serde_json::json!({"model_type": "vlm_x", "text_config": text(true)})),
            Some(true)
        );
        let bare = serde_json::json!({"model_type": "vlm_x", "text_config": {"num_hidden_layers": 2}});
        assert_eq!(tie(bare), None);
        // A text-only config states its own.
        assert_eq!(
            tie(serde_json::json!({"model_type": "gemma4_text", "tie_word_embeddings": false})),
            Some(false)
        );
    }

    #[test]
    fn prediction_layers_are_the_ones_after_the_last_layer() {
        let c = ModelConfig::from_value(serde_json::json!({"model_type": "glm4_moe", "num_hidden_layers": 46,
            "num_nextn_predict_layers": 1}))
        .unwrap();
        assert!(c.is_prediction_layer("model.layers.46.eh_proj.weight"));
        assert!(!c.is_prediction_layer("model.layers.45.mlp.gate.weight"));
        assert!(!c.is_prediction_layer("model.layers.47.eh_proj.weight"));
        assert!(!c.is_prediction_layer("model.visual.layers.46.attn.weight"));
        let none = ModelConfig::from_value(serde_json::json!({"model_type": "glm4_moe", "num_hidden_layers": 46}));
        assert!(!none.unwrap().is_prediction_layer("model.layers.46.eh_proj.weight"));
        let next = ModelConfig::from_value(serde_json::json!({"model_type": "qwen3_next", "num_hidden_layers": 4}));
        assert!(next.unwrap().is_prediction_layer("mtp.fc.weight"));
        let llama = ModelConfig::from_value(serde_json::json!({"model_type": "llama", "num_hidden_layers": 4}));
        assert!(!llama.unwrap().is_prediction_layer("mtp.fc.weight"));
        let e = ModelConfig::from_value(serde_json::json!({"model_type": "x", "num_nextn_predict_layers": -1}));
        assert!(e.unwrap_err().contains("num_nextn_predict_layers"));
    }

    #[test]
    fn shared_layers_key_and_value_tensors_are_dropped_on_load() {
        let c = ModelConfig::from_value(serde_json::json!({"model_type": "gemma4", "text_config": {
            "model_type": "gemma4_text", "num_hidden_layers": 6, "num_kv_shared_layers": 2}}))
        .unwrap();
        for name in [
            "model.language_model.layers.4.self_attn.k_proj.weight",
            "model.language_model.layers.5.self_attn.v_norm.weight",
            "model.layers.5.self_attn.k_norm.weight",
        ] {
            assert!(c.dropped_on_load(name), "{name}");
        }
        for name in [
            "model.language_model.layers.3.self_attn.k_proj.weight",
            "model.language_model.layers.4.self_attn.q_proj.weight",
            "model.language_model.layers.6.self_attn.k_proj.weight",
            "model.vision_tower.encoder.layers.5.self_attn.k_proj.linear.weight",
        ] {
            assert!(!c.dropped_on_load(name), "{name}");
        }
        let e = ModelConfig::from_value(serde_json::json!({"num_hidden_layers": 2, "num_kv_shared_layers": 3,
            "model_type": "gemma4_text"}));
        assert!(e.unwrap_err().contains("num_kv_shared_layers"));
    }

    #[test]
    fn gpt2_style_names() {
        let c = ModelConfig::from_value(
            serde_json::json!({"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12}),
        )
        .unwrap();
        assert_eq!(c.architecture, "gpt2");
        assert_eq!(c.num_layers, Some(12));
        assert_eq!(c.dims.intermediate_size, Some(3072));
    }

    #[test]
    fn no_architecture_is_an_error() {
        assert!(ModelConfig::from_value(serde_json::json!({"hidden_size": 3}))
            .unwrap_err()
            .contains("architectures"));
    }
}
