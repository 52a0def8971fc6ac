//! The decoder a config.json describes, computed once: model-wide settings and one plain [`LayerSpec`] per layer
//! (attention window, rope, scale, softcap, norms, biases, MLP), from the family's table entry
//! ([`crate::family`]). Every key of config.json is read or refused by name; the decoder applies the description
//! and never looks at the family again.

use crate::error::{Result, TrainError};
pub use crate::experts::ExpertsSpec;
use crate::experts::{layer_experts, router_loss_weight};
use crate::family::{
    family, supported, wrapper, DefaultSliding, DeltaProjections, ExpertTable, ExpertWeights, Family, MlpLayout, Names,
    NormPlacement, QkNorm, RopeLayout, Routing, Wrapper,
};
use crate::latent::LatentAttention;
use crate::rope::{RopeContext, RopeSpec};
use serde_json::Value;
use std::path::{Path, PathBuf};

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
    /// Gemma plus sandwich norms, softcaps, alternating sliding windows.
    Gemma2,
    /// `gemma3_text`: Gemma 2 plus per-head q/k norms and a rope per layer type.
    Gemma3,
    /// Llama with NoPE layers.
    SmolLM3,
    /// Llama with embedding, attention, residual and logit multipliers.
    Granite,
    /// Post-norm layers, q/k norms over the whole projection.
    Olmo2,
    /// OLMo 2 with sliding windows.
    Olmo3,
    /// Mistral with YaRN and queries scaled by position past the original context.
    Ministral3,
    /// Granite 4.0 and 4.0-H (`granitemoehybrid`): Granite's multipliers, a fused shared MLP, Mamba 2 layers, experts.
    GraniteHybrid,
    /// LFM2 / LFM2.5: gated short-convolution layers and full attention with per-head q/k norms.
    Lfm2,
    /// `qwen3_5_text`: Gated DeltaNet linear-attention layers and gated full attention.
    Qwen3_5,
    /// Qwen3's attention and sparse mixture-of-experts MLPs.
    Qwen3Moe,
    /// `qwen3_5_moe_text`: Qwen3.5's layers with stacked experts and a shared expert.
    Qwen3_5Moe,
    /// Mistral's attention and sparse MLPs.
    Mixtral,
    /// Attention with sinks and biases, sliding and full layers in turn, sparse MLPs with biases.
    GptOss,
    /// Pre-norm layers with whole-projection q/k norms and sparse MLPs.
    Olmoe,
    /// GLM-4.5: biased q/k/v, optional q/k norms, partial rotary; DeepSeek-V3's routing and a shared MLP.
    Glm4Moe,
    /// Multi-head latent attention and GLM-4.5's sparse MLP.
    DeepseekV3,
    /// GLM-4.7-Flash: DeepSeek-V3's layers, dense or sparse as `mlp_layer_types` says.
    Glm4MoeLite,
    /// Qwen3.5's layers with grouped DeltaNet projections and Qwen3 MoE's experts beside a gated shared one.
    Qwen3Next,
    /// Post norms, per-head q/k norms, sliding layers with rope and full layers without.
    Exaone4,
    /// Llama with biases on every projection and a rotation of adjacent pairs.
    Ernie4_5,
    /// `gemma4_text`: sandwich norms (plain weights), per-head q/k norms and an unweighted value norm, no query
    /// scale, full layers with their own head width (values from the key projection when `attention_k_eq_v`), a
    /// scalar per layer.
    Gemma4,
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
    pub fn from_config(architecture: &str, model_type: Option<&str>) -> Result<Architecture> {
        Ok(Self::family_of(architecture, model_type)?.architecture)
    }

    fn family_of(architecture: &str, model_type: Option<&str>) -> Result<&'static Family> {
        let key = model_type
            .map(str::to_string)
            .unwrap_or_else(|| architecture.to_ascii_lowercase());
        family(&key).ok_or_else(|| TrainError::UnsupportedArchitecture {
            found: model_type.unwrap_or(architecture).to_string(),
            supported: supported(),
        })
    }

    /// The `model_type` of this family.
    pub fn model_type(self) -> &'static str {
        crate::family::FAMILIES
            .iter()
            .find(|f| f.architecture == self)
            .map(|f| f.model_type)
            .expect("every architecture has a table entry")
    }
}

/// What mixes a layer's tokens before its MLP.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mixer {
    /// Self-attention (`self_attn.*`), as the rest of the [`LayerSpec`] describes it.
    Attention,
    /// LFM2's gated short convolution (`conv.*`): `in_proj` to B, C and x; `C · conv(B · x)` with a causal
    /// depthwise convolution over the last `kernel` positions; `out_proj`. `bias`: every part carries one.
    ShortConv { kernel: usize, bias: bool },
    /// Qwen3.5's Gated DeltaNet linear attention (`linear_attn.*`): q, k, v through a causal depthwise convolution
    /// and SiLU, the gated delta rule (`delta_rule.rs`), a gated RMSNorm, `out_proj`.
    GatedDeltaNet(DeltaNetShape),
    /// Mamba 2 (`mamba.*`, Granite 4.0-H): `in_proj` to a gate, x‖B‖C and dt; a causal depthwise convolution and
    /// SiLU over x‖B‖C; the state space scan (ssd.rs); a gated RMSNorm; `out_proj` (mamba.rs).
    Mamba2(crate::mamba::MambaShape),
}

/// The sizes of a Gated DeltaNet layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaNetShape {
    /// The convolution's length.
    pub kernel: usize,
    pub key_heads: usize,
    pub value_heads: usize,
    pub key_dim: usize,
    pub value_dim: usize,
}

impl DeltaNetShape {
    /// The convolved q, k and v width.
    pub fn conv_width(&self) -> usize {
        2 * self.key_heads * self.key_dim + self.value_heads * self.value_dim
    }
}

/// One decoder layer, as the decoder applies it.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSpec {
    pub mixer: Mixer,
    /// The attention's head width and key/value head count (Gemma 4's full layers differ from its sliding ones).
    pub head_dim: usize,
    pub kv_heads: usize,
    /// The values are the key projection's output before its norm and rotation; the layer has no `v_proj` (Gemma
    /// 4's full layers with `attention_k_eq_v`).
    pub values_from_keys: bool,
    /// Each value head is RMS-normalised, without a weight (Gemma 4).
    pub value_norm: bool,
    /// The earlier layer whose keys and values this layer attends over; it has no key or value projections of its
    /// own (Gemma 4's last `num_kv_shared_layers` layers).
    pub kv_source: Option<usize>,
    /// The MLP's width (Gemma 4's shared layers double it with `use_double_wide_mlp`).
    pub intermediate_size: usize,
    /// Attention's output multiplied by σ of a gate that `q_proj` makes beside the queries (Qwen3.5).
    pub output_gate: bool,
    /// A query sees the `window` latest keys, itself included; None: full causal attention.
    pub window: Option<usize>,
    /// Index into [`DecoderConfig::ropes`]; None: no positional rotation (SmolLM3's NoPE layers).
    pub rope: Option<usize>,
    /// Multiplies q·k.
    pub scale: f64,
    /// Attention scores become `cap · tanh(scores / cap)` (Gemma 2).
    pub softcap: Option<f64>,
    /// Each head's softmax has one more logit, a learned `self_attn.sinks` entry with no value (gpt-oss).
    pub sinks: bool,
    /// The rotation turns adjacent pairs of each head's dimensions (ERNIE 4.5), not its two halves.
    pub rope_interleaved: bool,
    pub norms: NormPlacement,
    pub qk_norm: QkNorm,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub activation: Activation,
    /// A sparse mixture-of-experts MLP in place of the dense one (named as [`DecoderConfig::experts`] says).
    pub experts: Option<ExpertsSpec>,
}

impl LayerSpec {
    /// "sliding 4096", "full" or "conv", and ", experts 8 of 128" where the MLP is sparse: what the layer picker
    /// and `inspect` show.
    pub fn kind(&self) -> String {
        let mixer = match self.mixer {
            Mixer::ShortConv { kernel, .. } => format!("conv {kernel}"),
            Mixer::GatedDeltaNet(_) => "linear (delta rule)".into(),
            Mixer::Mamba2(_) => "mamba 2".into(),
            Mixer::Attention => match (self.window, self.rope) {
                (Some(w), None) => format!("sliding {w}, no rope"),
                (Some(w), Some(_)) => format!("sliding {w}"),
                (None, None) => "full, no rope".into(),
                (None, Some(_)) => "full".into(),
            },
        };
        match self.experts {
            Some(e) => format!("{mixer}, experts {} of {}", e.top_k, e.count),
            None => mixer,
        }
    }
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
    pub tie_word_embeddings: bool,
    /// Phi-3's fused `qkv_proj`.
    pub fused_qkv: bool,
    /// Where each layer's MLP weights are.
    pub mlp: MlpLayout,
    /// Where a sparse layer's router and experts are (the family's table; layers say whether they have one).
    pub experts: Option<ExpertTable>,
    /// The router's load-balancing loss joins the training loss with this weight (`output_router_logits: true`,
    /// `router_aux_loss_coef`), as transformers adds it; None: the cross-entropy alone.
    pub router_aux_loss: Option<f64>,
    /// The names of a layer's norms, attention output and q/k norms, and of the final norm.
    pub names: Names,
    /// Checkpoint tensor prefixes transformers drops on load (left unread, written back unchanged).
    pub dropped_tensors: &'static [&'static str],
    pub layers: Vec<LayerSpec>,
    /// The ropes the layers use; the first serves full-attention layers.
    pub ropes: Vec<RopeSpec>,
    /// Added to every RMSNorm weight (gemma stores `weight - 1`).
    pub norm_offset: f64,
    /// Embeddings multiplied by this after rounding it to the compute dtype (gemma: sqrt(hidden_size)).
    pub embed_scale: Option<f64>,
    /// Embeddings multiplied by this (Granite's `embedding_multiplier`; 1 elsewhere).
    pub embedding_multiplier: f64,
    /// Each layer's attention and MLP outputs multiplied by this before the residual add (Granite).
    pub residual_multiplier: f64,
    /// Logits divided by this (Granite's `logits_scaling`).
    pub logits_scaling: f64,
    /// Logits become `cap · tanh(logits / cap)` (Gemma 2).
    pub final_softcap: Option<f64>,
    /// Queries multiplied by a factor of their position after rotary (Ministral 3).
    pub position_query_scale: Option<PositionQueryScale>,
    /// The vision-language wrapper whose text tower this is (`gemma3`, `mistral3`), if any.
    pub wrapper: Option<&'static str>,
    /// Every attention layer's latent projections (DeepSeek-V3); None: q/k/v projections.
    pub latent: Option<LatentAttention>,
    /// Each layer's output is multiplied by its `layer_scalar` (a buffer of one value: Gemma 4).
    pub layer_scalar: bool,
    /// Gemma 4's per-layer embeddings (per_layer.rs); None: the layers read the hidden state alone.
    pub per_layer_inputs: Option<crate::shared_kv::PerLayerInputs>,
    /// How the Gated DeltaNet layers' input projections are stored.
    pub delta_projections: DeltaProjections,
}

/// Ministral 3's (Llama 4's) query scale: `1 + beta · ln(1 + floor(position / original_max_position_embeddings))`,
/// 1 inside the original context.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PositionQueryScale {
    pub beta: f64,
    pub original_max_position_embeddings: f64,
}

impl PositionQueryScale {
    /// The factor of the query at `position`, in f32 as transformers computes it.
    pub fn factor(&self, position: usize) -> f32 {
        let blocks = (position as f32 / self.original_max_position_embeddings as f32).floor();
        1.0 + self.beta as f32 * (1.0 + blocks).ln()
    }
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
        let mut c = Self::from_config_json(&raw).map_err(|e| match e {
            TrainError::Config { reason, .. } => TrainError::Config { path, reason },
            e => e,
        })?;
        // transformers keeps a stored lm_head that differs from the embeddings, whatever the flag says. Weights
        // that cannot be read here are refused by name where they are loaded.
        if c.tie_word_embeddings && matches!(freezetune_core::tie::stored_head_differs(model_dir), Ok(Some(true))) {
            c.tie_word_embeddings = false;
        }
        Ok(c)
    }

    /// The decoder a whole config.json describes (a wrapper's text tower included), as `read` finds it in a
    /// folder; for a config fetched alone (a Hub repo before download). Errors name `config.json`.
    pub fn from_config_json(raw: &Value) -> Result<DecoderConfig> {
        let path = PathBuf::from("config.json");
        if let Some(w) = raw["model_type"].as_str().and_then(wrapper) {
            return Self::from_wrapper(raw, w).map_err(|reason| TrainError::Config { path, reason });
        }
        let fam = Architecture::family_of(
            raw["architectures"].get(0).and_then(Value::as_str).unwrap_or_default(),
            raw["model_type"].as_str(),
        )?;
        Self::from_value(raw, fam).map_err(|reason| TrainError::Config { path, reason })
    }

    /// The text tower of a vision-language wrapper, read from `text_config` as its own family. The top-level keys
    /// configure the vision tower and projector, which text training never runs; only `tie_word_embeddings` is
    /// the wrapper's to decide (transformers ties at the top level).
    fn from_wrapper(raw: &Value, w: &Wrapper) -> std::result::Result<DecoderConfig, String> {
        let text = raw
            .get("text_config")
            .filter(|t| t.is_object())
            .ok_or_else(|| format!("a {} config.json needs a `text_config` object", w.model_type))?;
        let text_type = text["model_type"].as_str().unwrap_or(w.text_types[0]);
        let fam = family(text_type)
            .filter(|_| w.text_types.contains(&text_type))
            .ok_or_else(|| {
                format!(
                    "the text tower of this {} model is {text_type:?}; FreezeTune trains {} inside it",
                    w.model_type,
                    w.text_types.join(", ")
                )
            })?;
        let mut text = text.clone();
        // The wrapper decides (its flag, else its class's default); the text tower's flag is never read.
        match freezetune_core::config::wrapper_ties(raw) {
            Some(tie) => text["tie_word_embeddings"] = Value::Bool(tie),
            None => drop(text.as_object_mut().and_then(|t| t.remove("tie_word_embeddings"))),
        }
        let mut c = Self::from_value(&text, fam)?;
        c.wrapper = Some(w.model_type);
        // transformers' vision-language classes add the router's loss only when a caller passes
        // `output_router_logits` to forward, never from `text_config` (Qwen3.5 MoE's); a trainer passes nothing.
        c.router_aux_loss = None;
        if !w.final_softcap {
            c.final_softcap = None;
        }
        Ok(c)
    }

    /// The description of the decoder `raw` (a config.json) gives, for the family `model_type`.
    pub fn from_json(raw: &Value, model_type: &str) -> std::result::Result<DecoderConfig, String> {
        let fam = family(model_type).ok_or_else(|| format!("model_type {model_type:?} is not supported"))?;
        Self::from_value(raw, fam)
    }

    fn from_value(raw: &Value, fam: &Family) -> std::result::Result<DecoderConfig, String> {
        refuse_quantized_checkpoint(raw, fam)?;
        if let Some((k, v)) = fam.not_understood(raw) {
            return Err(format!(
                "config.json key `{k}` = {v} is not understood by FreezeTune's {} decoder: it may change the \
                 math, and training without it would compute other logits than the model's. Remove it if you know \
                 it changes nothing, or ask for the family to support it",
                fam.model_type
            ));
        }
        if let Some(e) = fam.disagreeing_key(raw) {
            return Err(e);
        }
        let given = raw;
        let mut raw = fam.with_defaults(raw);
        refuse_switched_on(given, &raw, fam)?;
        let latent = match fam.latent_attention {
            true => Some(LatentAttention::read(&mut raw)?),
            false => None,
        };
        let raw = &raw;
        refuse_training_only_settings(raw, fam)?;
        let uint = |k: &str| {
            let v = raw.get(k).ok_or_else(|| format!("`{k}` is missing"))?;
            let n = v
                .as_u64()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("`{k}` is {v}; it must be a positive integer"))?;
            let limit = SIZE_LIMITS
                .iter()
                .find(|(name, _)| *name == k)
                .map_or(u64::MAX, |(_, l)| *l);
            if n > limit {
                return Err(format!(
                    "`{k}` is {n}, past FreezeTune's limit of {limit} (no open model comes near it): refusing \
                     before allocating for it"
                ));
            }
            Ok(n as usize)
        };
        let float = |k: &str| match raw.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| format!("`{k}` must be a number, not {v}")),
        };
        let flag = |k: &str| raw[k].as_bool().unwrap_or(false);
        let hidden_size = uint("hidden_size")?;
        let num_heads = uint("num_attention_heads")?;
        let num_layers = uint("num_hidden_layers")?;
        let head_dim = match raw.get("head_dim").filter(|v| !v.is_null()) {
            Some(_) => uint("head_dim")?,
            None => hidden_size / num_heads.max(1),
        };
        let num_kv_heads = match raw.get("num_key_value_heads").filter(|v| !v.is_null()) {
            Some(_) => uint("num_key_value_heads")?,
            None => num_heads,
        };
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(format!(
                "num_attention_heads {num_heads} must be a positive multiple of num_key_value_heads {num_kv_heads}"
            ));
        }
        let (rope_raw, position_query_scale) = split_query_scale(&without_text_mrope(raw, fam)?, fam)?;
        let (ropes, full_rope, sliding_rope) = read_ropes(&rope_raw, fam)?;
        refuse_unread_partial_rotary(&ropes, fam, head_dim)?;
        let uses_rope = rope_layers(raw, fam, num_layers)?;
        let types = layer_types(raw, fam, num_layers)?;
        let windows = layer_windows(raw, fam, num_layers, &uses_rope, types.as_deref())?;
        // EXAONE 4 rotates only its sliding layers when it has a window.
        let uses_rope = match fam.nope_full_layers_when_sliding && !raw["sliding_window"].is_null() {
            true => windows.iter().map(Option::is_some).collect(),
            false => uses_rope,
        };
        let scale = match (float("query_pre_attn_scalar")?, float("attention_multiplier")?) {
            _ if fam.attention_scale.is_some() => fam.attention_scale.unwrap_or_default(),
            (Some(q), _) if fam.understands("query_pre_attn_scalar") => 1.0 / q.sqrt(),
            (_, Some(m)) if fam.understands("attention_multiplier") => m,
            _ => match latent {
                Some(l) => latent_scale(raw, l.qk_dim())?,
                None => 1.0 / (head_dim as f64).sqrt(),
            },
        };
        let every_bias = fam.all_bias_key.is_some_and(flag);
        let attention_bias = flag("attention_bias") || every_bias;
        let activation = activation(raw, fam)?;
        let softcap = float("attn_logit_softcapping")?;
        let mixers = layer_mixers(raw, fam, num_layers, types.as_deref(), hidden_size)?;
        let experts = layer_experts(raw, fam, num_layers)?;
        let shapes = head_shapes(raw, fam, head_dim, num_heads, num_kv_heads, &windows)?;
        let intermediate_size = match fam.understands("block_auto_adjust_ff_dim") {
            true => lfm2_ff_dim(raw)?,
            false => uint(fam.intermediate_key)?,
        };
        let (kv_sources, doubled) = match fam.understands("num_kv_shared_layers") {
            true => crate::shared_kv::kv_sources(raw, &windows)?,
            false => (vec![None; num_layers], vec![false; num_layers]),
        };
        let per_layer_inputs = match fam.understands("hidden_size_per_layer_input") {
            true => crate::shared_kv::per_layer_inputs(raw)?,
            false => None,
        };
        let layers = (0..num_layers)
            .map(|i| LayerSpec {
                mixer: mixers[i],
                kv_source: kv_sources[i],
                intermediate_size: if doubled[i] {
                    2 * intermediate_size
                } else {
                    intermediate_size
                },
                head_dim: shapes[i].head_dim,
                kv_heads: shapes[i].kv_heads,
                values_from_keys: shapes[i].values_from_keys,
                value_norm: fam.value_norm,
                output_gate: fam.attention_output_gate && mixers[i] == Mixer::Attention,
                window: windows[i],
                rope: uses_rope[i].then_some(if windows[i].is_some() { sliding_rope } else { full_rope }),
                scale,
                softcap,
                sinks: fam.attention_sinks && mixers[i] == Mixer::Attention,
                rope_interleaved: fam.rope_interleaved,
                norms: fam.norms,
                qk_norm: match fam.qk_norm_key {
                    Some(key) if !flag(key) => QkNorm::None,
                    _ => fam.qk_norm,
                },
                qkv_bias: fam.qkv_bias_always || attention_bias,
                o_bias: attention_bias && fam.o_bias_with_attention_bias,
                mlp_bias: flag("mlp_bias") || every_bias,
                activation,
                experts: experts[i],
            })
            .collect::<Vec<_>>();
        refuse_narrow_rope_tables(&layers, &ropes, head_dim)?;
        Ok(DecoderConfig {
            architecture: fam.architecture,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: uint("vocab_size")?,
            rms_norm_eps: match fam.understands("norm_eps") {
                true => float("norm_eps")?,
                false => float("rms_norm_eps")?,
            }
            .unwrap_or(1e-6),
            // LFM2's original configs name it `tie_embedding`, which transformers takes over the other.
            tie_word_embeddings: raw["tie_embedding"]
                .as_bool()
                .or(raw["tie_word_embeddings"].as_bool())
                .unwrap_or(false),
            fused_qkv: fam.fused_qkv,
            mlp: fam.mlp,
            experts: fam.experts,
            router_aux_loss: router_loss_weight(raw, fam)?,
            names: fam.names,
            dropped_tensors: fam.dropped_tensors,
            layers,
            ropes,
            norm_offset: fam.norm_offset,
            embed_scale: fam.scaled_embeddings.then(|| (hidden_size as f64).sqrt()),
            embedding_multiplier: float("embedding_multiplier")?.unwrap_or(1.0),
            residual_multiplier: float("residual_multiplier")?.unwrap_or(1.0),
            logits_scaling: float("logits_scaling")?.unwrap_or(1.0),
            final_softcap: float("final_logit_softcapping")?,
            position_query_scale,
            wrapper: None,
            latent,
            delta_projections: fam.delta_projections,
            layer_scalar: fam.layer_scalar,
            per_layer_inputs,
        })
    }

    /// The window of layer `i` (None: full attention).
    pub fn window(&self, i: usize) -> Option<usize> {
        self.layers.get(i).and_then(|l| l.window)
    }

    /// The rope of the full-attention layers.
    pub fn global_rope(&self) -> &RopeSpec {
        &self.ropes[0]
    }

    /// The head width of the layers rope `r` turns (Gemma 4's full layers are wider than its sliding ones).
    pub fn rope_head_dim(&self, r: usize) -> usize {
        self.layers
            .iter()
            .find(|l| l.rope == Some(r))
            .map_or(self.head_dim, |l| l.head_dim)
    }
}

/// A layer wider than the config's `head_dim` (Gemma 4's `global_head_dim`) under a rope other than the
/// proportional one: transformers builds every other rope's tables for `head_dim` and fails on the wider heads.
fn refuse_narrow_rope_tables(
    layers: &[LayerSpec],
    ropes: &[RopeSpec],
    head_dim: usize,
) -> std::result::Result<(), String> {
    let narrow = |l: &&LayerSpec| {
        l.rope.is_some_and(|r| {
            l.head_dim != head_dim && !matches!(ropes[r].scaling, crate::rope::RopeScaling::Proportional { .. })
        })
    };
    match layers.iter().find(narrow) {
        Some(l) => Err(format!(
            "the full-attention layers' heads are {} wide (`global_head_dim`), but their rope is not \
             \"proportional\": transformers builds its tables for `head_dim` {head_dim} and cannot apply them. \
             Set `rope_parameters.full_attention.rope_type` to \"proportional\", or `global_head_dim` to `head_dim`",
            l.head_dim
        )),
        None => Ok(()),
    }
}

/// One layer's attention heads, as [`head_shapes`] reads them.
#[derive(Debug, Clone, Copy)]
struct HeadShape {
    head_dim: usize,
    kv_heads: usize,
    values_from_keys: bool,
}

/// Each layer's head width and key/value heads. Every layer has the config's, but in a family with
/// [`Family::global_attention_shape`] (Gemma 4): there the full-attention layers take `global_head_dim`, and with
/// `attention_k_eq_v` also `num_global_key_value_heads` and their values from the key projection, as transformers
/// builds them.
fn head_shapes(
    raw: &Value,
    fam: &Family,
    head_dim: usize,
    heads: usize,
    kv_heads: usize,
    windows: &[Option<usize>],
) -> std::result::Result<Vec<HeadShape>, String> {
    let local = HeadShape {
        head_dim,
        kv_heads,
        values_from_keys: false,
    };
    if !fam.global_attention_shape {
        return Ok(vec![local; windows.len()]);
    }
    // transformers fails on a zero or absent width or head count here (its rope divides by the width, its
    // attention by the head count), so FreezeTune asks for them rather than guessing.
    let positive = |k: &str, why: &str| match raw[k].as_u64() {
        Some(n) if n > 0 && n <= 1 << 16 => Ok(n as usize),
        _ => Err(format!(
            "`{k}` is {}: {why}, so it must be a positive integer (at most 65536)",
            raw[k]
        )),
    };
    let shared = match &raw["attention_k_eq_v"] {
        Value::Null => false,
        v => v
            .as_bool()
            .ok_or_else(|| format!("`attention_k_eq_v` must be true or false, not {v}"))?,
    };
    let global = HeadShape {
        head_dim: positive("global_head_dim", "the full-attention layers' heads are this wide")?,
        kv_heads: match shared {
            true => positive(
                "num_global_key_value_heads",
                "with `attention_k_eq_v` the full-attention layers have this many key/value heads",
            )?,
            false => kv_heads,
        },
        values_from_keys: shared,
    };
    if heads % global.kv_heads != 0 {
        return Err(format!(
            "num_attention_heads {heads} must be a multiple of num_global_key_value_heads {}",
            global.kv_heads
        ));
    }
    Ok(windows
        .iter()
        .map(|w| if w.is_some() { local } else { global })
        .collect())
}

/// A rope dict's `partial_rotary_factor` in a family whose decoder rotates whole heads (its default rope ignores
/// the factor; a scaled one builds narrower tables its rotation cannot apply): refused by name. ERNIE 4.5 rotates
/// adjacent pairs, so a head must also have an even width there.
fn refuse_unread_partial_rotary(ropes: &[RopeSpec], fam: &Family, head_dim: usize) -> std::result::Result<(), String> {
    // Gemma 4's proportional rope reads its factor itself.
    let partial = |r: &&RopeSpec| {
        r.partial_rotary_factor != 1.0 && !matches!(r.scaling, crate::rope::RopeScaling::Proportional { .. })
    };
    if let Some(r) = ropes.iter().find(partial) {
        if !fam.understands("partial_rotary_factor") {
            return Err(format!(
                "the rope's `partial_rotary_factor` is {}, but transformers' {} rotates whole heads (or fails \
                 on a scaled rope with it). Remove it",
                r.partial_rotary_factor, fam.model_type
            ));
        }
    }
    if fam.rope_interleaved && head_dim % 2 != 0 {
        return Err(format!(
            "`head_dim` is {head_dim}: a rotation of adjacent pairs needs an even width"
        ));
    }
    Ok(())
}

/// Latent attention's score scale as transformers sets it: 1/sqrt(query width), times YaRN's
/// `mscale(factor, mscale_all_dim)` squared where the rope is scaled and `mscale_all_dim` is set.
fn latent_scale(raw: &Value, qk_dim: usize) -> std::result::Result<f64, String> {
    let base = 1.0 / (qk_dim as f64).sqrt();
    // The dict the ropes are read from (`read_ropes`'s order).
    let rope = ["rope_scaling", "rope_parameters"]
        .iter()
        .map(|k| &raw[*k])
        .find(|v| v.is_object());
    let Some(rope) = rope else {
        return Ok(base);
    };
    let kind = rope["rope_type"]
        .as_str()
        .or(rope["type"].as_str())
        .unwrap_or("default");
    let all_dim = rope["mscale_all_dim"].as_f64().unwrap_or(0.0);
    if kind == "default" || all_dim == 0.0 {
        return Ok(base);
    }
    let factor = rope["factor"]
        .as_f64()
        .ok_or_else(|| format!("the rope's `factor` is {}; it must be a number", rope["factor"]))?;
    let m = crate::rope::yarn_mscale(factor, all_dim);
    Ok(base * m * m)
}

/// Sizes past these are refused before anything is sized by them: the largest open models have ~128 layers, a
/// hidden size of 16k and a 256k vocabulary.
const SIZE_LIMITS: [(&str, u64); 8] = [
    ("num_hidden_layers", 10_000),
    ("hidden_size", 1 << 20),
    ("intermediate_size", 1 << 22),
    ("shared_intermediate_size", 1 << 22),
    ("num_attention_heads", 1 << 16),
    ("num_key_value_heads", 1 << 16),
    ("head_dim", 1 << 14),
    ("vocab_size", 1 << 24),
];

impl DecoderConfig {
    /// Every tensor the decoder reads, by its causal-LM name (`model.*`, `lm_head.weight`), with the shape
    /// config.json implies: a checkpoint that disagrees is refused by name before training (a vocabulary smaller
    /// than the embedding matrix, a projection of the wrong width).
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, v) = (self.hidden_size, self.vocab_size);
        let names = self.names;
        let mut out = vec![
            ("model.embed_tokens.weight".to_string(), vec![v, h]),
            (format!("model.{}.weight", names.final_norm), vec![h]),
        ];
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".into(), vec![v, h]));
        }
        if let Some(ple) = self.per_layer_inputs {
            let all = self.num_layers * ple.width;
            out.push(("model.embed_tokens_per_layer.weight".into(), vec![ple.vocab, all]));
            out.push(("model.per_layer_model_projection.weight".into(), vec![all, h]));
            out.push(("model.per_layer_projection_norm.weight".into(), vec![ple.width]));
        }
        for (n, l) in self.layers.iter().enumerate() {
            let i = l.intermediate_size;
            let p = format!("model.layers.{n}");
            let mut add = |name: String, shape: Vec<usize>| out.push((format!("{p}.{name}"), shape));
            if self.layer_scalar {
                add("layer_scalar".into(), vec![1]);
            }
            if let Some(ple) = self.per_layer_inputs {
                add("per_layer_input_gate.weight".into(), vec![ple.width, h]);
                add("per_layer_projection.weight".into(), vec![h, ple.width]);
                add("post_per_layer_input_norm.weight".into(), vec![h]);
            }
            for norm in names.norms(l.norms).into_iter().flatten() {
                add(format!("{norm}.weight"), vec![h]);
            }
            let sparse = l.experts.zip(self.experts);
            if let Some((e, t)) = sparse {
                expert_shapes(e, t, h).into_iter().for_each(|(n, shape)| add(n, shape));
            }
            let mut linear = |name: &str, rows: usize, cols: usize, bias: bool| {
                add(format!("{name}.weight"), vec![rows, cols]);
                if bias {
                    add(format!("{name}.bias"), vec![rows]);
                }
            };
            match self.mlp {
                _ if sparse.is_some_and(|(_, t)| t.beside_dense.is_none()) => {}
                MlpLayout::Separate { gate, up, down } => {
                    linear(gate, i, h, l.mlp_bias);
                    linear(up, i, h, l.mlp_bias);
                    linear(down, h, i, l.mlp_bias);
                }
                MlpLayout::Fused { gate_up, down } => {
                    linear(gate_up, 2 * i, h, l.mlp_bias);
                    linear(down, h, i, l.mlp_bias);
                }
            }
            match l.mixer {
                Mixer::ShortConv { kernel, bias } => {
                    linear("conv.in_proj", 3 * h, h, bias);
                    linear("conv.out_proj", h, h, bias);
                    add("conv.conv.weight".into(), vec![h, 1, kernel]);
                    if bias {
                        add("conv.conv.bias".into(), vec![h]);
                    }
                    continue;
                }
                Mixer::Mamba2(m) => {
                    m.tensor_shapes(h)
                        .into_iter()
                        .for_each(|(name, shape)| add(name, shape));
                    continue;
                }
                Mixer::GatedDeltaNet(d) => {
                    let (keys, values) = (d.key_heads * d.key_dim, d.value_heads * d.value_dim);
                    match self.delta_projections {
                        DeltaProjections::Separate => {
                            linear("linear_attn.in_proj_qkv", 2 * keys + values, h, false);
                            linear("linear_attn.in_proj_z", values, h, false);
                            linear("linear_attn.in_proj_b", d.value_heads, h, false);
                            linear("linear_attn.in_proj_a", d.value_heads, h, false);
                        }
                        DeltaProjections::Grouped => {
                            linear("linear_attn.in_proj_qkvz", 2 * keys + 2 * values, h, false);
                            linear("linear_attn.in_proj_ba", 2 * d.value_heads, h, false);
                        }
                    }
                    linear("linear_attn.out_proj", h, values, false);
                    add("linear_attn.conv1d.weight".into(), vec![d.conv_width(), 1, d.kernel]);
                    add("linear_attn.dt_bias".into(), vec![d.value_heads]);
                    add("linear_attn.A_log".into(), vec![d.value_heads]);
                    add("linear_attn.norm.weight".into(), vec![d.value_dim]);
                    continue;
                }
                Mixer::Attention => {}
            }
            if let Some(latent) = self.latent {
                let shapes = latent.tensor_shapes(h, self.num_heads, l.qkv_bias);
                shapes.into_iter().for_each(|(name, shape)| add(name, shape));
                continue;
            }
            let hd = l.head_dim;
            let (q, kv) = (self.num_heads * hd, l.kv_heads * hd);
            if self.fused_qkv {
                linear("self_attn.qkv_proj", q + 2 * kv, h, l.qkv_bias);
            } else {
                let gated = if l.output_gate { 2 } else { 1 };
                linear("self_attn.q_proj", gated * q, h, l.qkv_bias);
                if l.kv_source.is_none() {
                    linear("self_attn.k_proj", kv, h, l.qkv_bias);
                }
                if !l.values_from_keys && l.kv_source.is_none() {
                    linear("self_attn.v_proj", kv, h, l.qkv_bias);
                }
            }
            linear(names.o_proj, h, q, l.o_bias);
            if l.sinks {
                add("self_attn.sinks".into(), vec![self.num_heads]);
            }
            let (qn, kn) = match l.qk_norm {
                QkNorm::None => continue,
                QkNorm::PerHead => (hd, hd),
                QkNorm::Whole => (q, kv),
            };
            add(format!("{}.weight", names.q_norm), vec![qn]);
            if l.kv_source.is_none() {
                add(format!("{}.weight", names.k_norm), vec![kn]);
            }
        }
        out
    }
}

/// A sparse layer's router, experts and shared expert, by name after `model.layers.N.`, with their shapes.
fn expert_shapes(e: ExpertsSpec, t: ExpertTable, h: usize) -> Vec<(String, Vec<usize>)> {
    let matrix = |name: String, rows: usize, cols: usize| (format!("{name}.weight"), vec![rows, cols]);
    let mut out = vec![matrix(t.router.into(), e.count, h)];
    if t.router_bias {
        out.push((format!("{}.bias", t.router), vec![e.count]));
    }
    if let Routing::SigmoidGroups { correction_bias, .. } = t.routing {
        out.push((format!("{}.{correction_bias}", t.router), vec![e.count]));
    }
    if let Routing::NormedSoftmax {
        input_scale,
        expert_scale,
    } = t.routing
    {
        out.push((input_scale.into(), vec![h]));
        out.push((expert_scale.into(), vec![e.count]));
    }
    if let Some(b) = t.beside_dense {
        for norm in [b.dense_post, b.experts_pre, b.experts_post] {
            out.push((format!("{norm}.weight"), vec![h]));
        }
    }
    match t.weights {
        ExpertWeights::Separate {
            experts,
            gate,
            up,
            down,
        } => {
            for x in 0..e.count {
                out.push(matrix(format!("{experts}.{x}.{gate}"), e.width, h));
                out.push(matrix(format!("{experts}.{x}.{up}"), e.width, h));
                out.push(matrix(format!("{experts}.{x}.{down}"), h, e.width));
            }
        }
        ExpertWeights::Stacked { gate_up, down } => {
            out.push((gate_up.into(), vec![e.count, 2 * e.width, h]));
            out.push((down.into(), vec![e.count, h, e.width]));
        }
        ExpertWeights::Interleaved { gate_up, down } => {
            out.push((gate_up.into(), vec![e.count, h, 2 * e.width]));
            out.push((format!("{gate_up}_bias"), vec![e.count, 2 * e.width]));
            out.push((down.into(), vec![e.count, e.width, h]));
            out.push((format!("{down}_bias"), vec![e.count, h]));
        }
    }
    if let (Some(shared), Some(width)) = (t.shared, e.shared_width) {
        match shared.mlp {
            MlpLayout::Separate { gate, up, down } => {
                out.push(matrix(gate.into(), width, h));
                out.push(matrix(up.into(), width, h));
                out.push(matrix(down.into(), h, width));
            }
            MlpLayout::Fused { gate_up, down } => {
                out.push(matrix(gate_up.into(), 2 * width, h));
                out.push(matrix(down.into(), h, width));
            }
        }
        if let Some(gate) = shared.gate {
            out.push(matrix(gate.into(), 1, h));
        }
    }
    out
}

/// Ministral 3 keeps its query scale's `llama_4_scaling_beta` in the rope dict: taken out here (the rest of the
/// dict is the rope's), for families that apply it; elsewhere it stays and the rope reader refuses it by name.
fn split_query_scale(raw: &Value, fam: &Family) -> std::result::Result<(Value, Option<PositionQueryScale>), String> {
    let mut raw = raw.clone();
    if !fam.position_query_scale {
        return Ok((raw, None));
    }
    let key = ["rope_scaling", "rope_parameters"]
        .into_iter()
        .find(|k| raw[*k].is_object())
        .ok_or("`rope_parameters` is missing")?;
    let dict = raw[key].as_object_mut().expect("checked");
    let beta = match dict.remove("llama_4_scaling_beta") {
        None | Some(Value::Null) => return Ok((raw, None)),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| format!("`llama_4_scaling_beta` must be a number, not {v}"))?,
    };
    let orig = dict
        .get("original_max_position_embeddings")
        .and_then(Value::as_f64)
        .ok_or("`llama_4_scaling_beta` needs the rope's `original_max_position_embeddings`")?;
    let scale = PositionQueryScale {
        beta,
        original_max_position_embeddings: orig,
    };
    Ok((raw, (beta != 0.0).then_some(scale)))
}

/// Qwen3.5's rope dict without its multimodal sections: for text, the three position streams are all the token's
/// position, and the interleaved sections then rotate exactly as the plain rope does. They are checked to be
/// lists of integers, then dropped; other families keep them (and the rope reader refuses them by name).
fn without_text_mrope(raw: &Value, fam: &Family) -> std::result::Result<Value, String> {
    let mut raw = raw.clone();
    if !fam.text_mrope {
        return Ok(raw);
    }
    for key in ["rope_scaling", "rope_parameters"] {
        let Some(dict) = raw.get_mut(key).and_then(Value::as_object_mut) else {
            continue;
        };
        if let Some(sections) = dict.remove("mrope_section") {
            let ok = sections.as_array().is_some_and(|l| l.iter().all(Value::is_u64));
            if !ok && !sections.is_null() {
                return Err(format!(
                    "`{key}.mrope_section` must be a list of integers, not {sections}"
                ));
            }
        }
        if let Some(v) = dict.remove("mrope_interleaved") {
            if !v.is_boolean() && !v.is_null() {
                return Err(format!("`{key}.mrope_interleaved` must be true or false, not {v}"));
            }
        }
    }
    Ok(raw)
}

/// A checkpoint whose weights transformers would dequantize or run through a quantized kernel
/// (`quantization_config`: GPTQ, AWQ, bitsandbytes, compressed-tensors) is refused by its method: FreezeTune reads full-precision
/// tensors (and quantizes frozen ones itself, `quantize_frozen`). The exceptions are gpt-oss's MXFP4 experts and
/// block-scaled FP8 weights (DeepSeek-V3, Qwen3's FP8 builds), which the weight reader unpacks exactly as
/// transformers does (core's mxfp4.rs, fp8.rs).
fn refuse_quantized_checkpoint(raw: &Value, fam: &Family) -> std::result::Result<(), String> {
    let q = &raw["quantization_config"];
    if q.is_null() {
        return Ok(());
    }
    let method = q["quant_method"].as_str().unwrap_or("unnamed");
    let unpacks = matches!(
        fam.experts.map(|t| t.weights),
        Some(crate::family::ExpertWeights::Interleaved { .. })
    );
    if method == "mxfp4" && unpacks {
        return Ok(());
    }
    if method == "fp8" {
        // Block-scaled e4m3 weights, read exactly as transformers dequantizes them (core's fp8.rs), any family.
        return freezetune_core::fp8::Scheme::from_config(raw).map(|_| ());
    }
    Err(format!(
        "this checkpoint is quantized (`quantization_config.quant_method` = {method:?}), and FreezeTune trains \
         full-precision weights. Train the full-precision checkpoint it was made from; FreezeTune can then hold \
         the frozen layers quantized itself (`quantize_frozen`)"
    ))
}

/// FreezeTune trains without dropout and with causal attention: a config asking for either otherwise is refused.
fn refuse_training_only_settings(raw: &Value, fam: &Family) -> std::result::Result<(), String> {
    let experts = raw["num_local_experts"].as_u64().filter(|&n| n > 0);
    if let Some(n) = experts.filter(|_| fam.experts.is_none()) {
        return Err(format!(
            "`num_local_experts` is {n}: this family's decoder has no mixture-of-experts layers"
        ));
    }
    for k in ["attention_dropout", "resid_pdrop", "embd_pdrop"] {
        if let Some(p) = raw[k].as_f64().filter(|&p| p != 0.0) {
            return Err(format!(
                "`{k}` is {p}: FreezeTune trains without dropout, which would be other math than this config's. \
                 Set it to 0.0 to train without dropout"
            ));
        }
    }
    // Gemma 4's "vision" makes image tokens attend both ways; text, all FreezeTune trains on, stays causal.
    let bidirectional = &raw["use_bidirectional_attention"];
    if bidirectional.as_bool() == Some(true) || bidirectional.as_str() == Some("all") {
        return Err(format!(
            "`use_bidirectional_attention` is {bidirectional}: FreezeTune trains causal decoders only"
        ));
    }
    Ok(())
}

/// A key of [`Family::off_only_keys`] that switches its feature on, in `merged` (config.json with the family's
/// defaults), refused by name. An absent key takes transformers' default, which may switch the feature on: Gemma
/// 4's per-layer embeddings are on unless config.json says 0.
fn refuse_switched_on(given: &Value, merged: &Value, fam: &Family) -> std::result::Result<(), String> {
    for (key, feature) in fam.off_only_keys {
        let v = &merged[*key];
        if v.is_null() || v.as_bool() == Some(false) || v.as_u64() == Some(0) {
            continue;
        }
        let said = match given.get(*key) {
            Some(_) => format!("is {v}"),
            None => format!("is absent, and transformers' default is {v}"),
        };
        return Err(format!(
            "config.json key `{key}` {said}: {feature}, which FreezeTune's {} decoder does not compute. Refusing \
             rather than training other math than the model's (set it to 0, false or null only if the model \
             truly has no such part)",
            fam.model_type
        ));
    }
    Ok(())
}

/// The MLP activation, as transformers 5 picks it: the family's key (`hidden_act`, or `hidden_activation` for
/// Gemma 2 and 3). Configs often carry both keys; when they name different functions the config is refused rather
/// than guessed.
fn activation(raw: &Value, fam: &Family) -> std::result::Result<Activation, String> {
    let parse = |name: &str| match name {
        "silu" | "swish" => Ok(Activation::Silu),
        "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Ok(Activation::GeluTanh),
        // transformers reads Gemma 1's legacy `gelu` as the tanh approximation its checkpoints were trained with.
        "gelu" if fam.architecture == Architecture::Gemma => Ok(Activation::GeluTanh),
        "gelu" => Ok(Activation::Gelu),
        other => Err(format!(
            "activation {other:?} is not supported yet (silu, gelu, gelu_pytorch_tanh are)"
        )),
    };
    let Some(own_key) = fam.activation_key else {
        return Ok(Activation::Silu);
    };
    let named = |k: &'static str| raw[k].as_str().map(move |n| (k, n));
    let mut found = [named(own_key), named("hidden_activation"), named("hidden_act")]
        .into_iter()
        .flatten();
    let Some((key, name)) = found.next() else {
        return Ok(Activation::Silu);
    };
    let chosen = parse(name)?;
    for (other_key, other) in found {
        if other_key != key && parse(other).ok() != Some(chosen) {
            return Err(format!(
                "`{key}` {name:?} and `{other_key}` {other:?} name different activations; the model uses `{key}`. \
                 Make them agree"
            ));
        }
    }
    Ok(chosen)
}

/// The ropes of the model and the indices of the full-attention and sliding layers' ones.
fn read_ropes(raw: &Value, fam: &Family) -> std::result::Result<(Vec<RopeSpec>, usize, usize), String> {
    let theta = raw["rope_theta"].as_f64();
    // Phi-3 keeps the original context at the top level, and transformers lets it (default 4096) override the
    // rope dict's.
    let phi3_context = fam.understands("original_max_position_embeddings");
    let ctx = |theta: f64| RopeContext {
        theta,
        partial_rotary_factor: raw["partial_rotary_factor"].as_f64(),
        max_position_embeddings: raw["max_position_embeddings"].as_f64(),
        original_max_position_embeddings: match phi3_context {
            true => Some(raw["original_max_position_embeddings"].as_f64().unwrap_or(4096.0)),
            false => raw["original_max_position_embeddings"].as_f64(),
        },
        original_overrides: phi3_context,
    };
    let dict = |k: &str| raw.get(k).and_then(Value::as_object);
    // transformers takes `rope_scaling` (older configs) over `rope_parameters` when both are there.
    let (flat, flat_name) = match (dict("rope_scaling"), dict("rope_parameters")) {
        (Some(s), _) => (Some(s), "rope_scaling"),
        (None, p) => (p, "rope_parameters"),
    };
    // Phi-3's legacy rope type names (`su`, `yarn`) are its LongRoPE, as transformers reads them.
    let renamed = flat.filter(|_| phi3_context).and_then(|d| {
        let kind = d.get("rope_type").or_else(|| d.get("type")).and_then(Value::as_str)?;
        matches!(kind, "su" | "yarn").then(|| {
            let mut d = d.clone();
            d.remove("type");
            d.insert("rope_type".into(), "longrope".into());
            d
        })
    });
    let flat = renamed.as_ref().or(flat);
    match fam.rope {
        RopeLayout::Single => {
            let rope = RopeSpec::read(flat, &ctx(theta.unwrap_or(10_000.0)), flat_name)?;
            Ok((vec![rope], 0, 0))
        }
        RopeLayout::PerLayerType {
            legacy,
            local_theta_key,
            sliding_theta,
            full_theta,
        } => {
            let nested = |t: &str| flat.and_then(|p| p.get(t)).and_then(Value::as_object);
            let per_type =
                flat.is_some_and(|p| p.contains_key("full_attention") || p.contains_key("sliding_attention"));
            if flat.is_some() && !per_type && !legacy {
                return Err(format!(
                    "`{flat_name}` is not keyed by layer type: transformers' {} reads one dict per layer type \
                     (`full_attention`, `sliding_attention`) and fails on this one. Nest it under those keys",
                    fam.model_type
                ));
            }
            let (full, sliding) = if per_type {
                (
                    // A nested dict without its own theta takes the top-level `rope_theta` (full layers) or
                    // `rope_local_base_freq` (sliding ones), as transformers fills them in.
                    RopeSpec::read(
                        nested("full_attention"),
                        &ctx(theta.unwrap_or(full_theta)),
                        "rope_parameters.full_attention",
                    )?,
                    RopeSpec::read(
                        nested("sliding_attention"),
                        &ctx(local_theta_key.and_then(|k| raw[k].as_f64()).unwrap_or(sliding_theta)),
                        "rope_parameters.sliding_attention",
                    )?,
                )
            } else {
                // Legacy layout: the scaling and `rope_theta` belong to the full-attention layers.
                let local = local_theta_key.and_then(|k| raw[k].as_f64()).unwrap_or(sliding_theta);
                (
                    RopeSpec::read(flat, &ctx(theta.unwrap_or(full_theta)), flat_name)?,
                    RopeSpec::read(None, &ctx(local), "rope_local_base_freq")?,
                )
            };
            Ok((vec![full, sliding], 0, 1))
        }
    }
}

/// Which layers rotate: all, but for SmolLM3's `no_rope_layers` (1: rope, 0: NoPE; by default every
/// `no_rope_layer_interval`-th layer is NoPE).
fn rope_layers(raw: &Value, fam: &Family, layers: usize) -> std::result::Result<Vec<bool>, String> {
    if fam.understands("position_embedding_type") {
        return match &raw["position_embedding_type"] {
            // Granite 4.0-H says "nope"; transformers rotates only for "rope".
            Value::Null => Ok(vec![false; layers]),
            Value::String(s) if s == "nope" => Ok(vec![false; layers]),
            Value::String(s) if s == "rope" => Ok(vec![true; layers]),
            other => Err(format!(
                "`position_embedding_type` {other} is not supported (\"rope\", and \"nope\" or null for no \
                 positions, are)"
            )),
        };
    }
    if !fam.understands("no_rope_layers") {
        return Ok(vec![true; layers]);
    }
    match raw.get("no_rope_layers").filter(|v| !v.is_null()) {
        Some(list) => {
            let list = list.as_array().ok_or("`no_rope_layers` must be a list of 0 and 1")?;
            if list.len() != layers {
                return Err(format!(
                    "`no_rope_layers` lists {} layers, but num_hidden_layers is {layers}",
                    list.len()
                ));
            }
            list.iter()
                .map(|v| match v.as_u64() {
                    Some(1) => Ok(true),
                    Some(0) => Ok(false),
                    _ => Err(format!(
                        "`no_rope_layers` holds {v}; only 0 (NoPE) and 1 (rope) mean something"
                    )),
                })
                .collect()
        }
        None => {
            let every = raw["no_rope_layer_interval"].as_u64().unwrap_or(4).max(1) as usize;
            Ok((0..layers).map(|i| (i + 1) % every != 0).collect())
        }
    }
}

/// Each layer's sliding window, as transformers decides it: `layer_types` when config.json has it, else the
/// family's default pattern. qwen2, qwen3 and SmolLM3 slide only with `use_sliding_window`. A `layer_types` entry of
/// another kind, or a sliding layer without a window, is refused by name: training it as full attention would be
/// other math than the model's.
fn layer_windows(
    raw: &Value,
    fam: &Family,
    layers: usize,
    uses_rope: &[bool],
    types: Option<&[LayerType]>,
) -> std::result::Result<Vec<Option<usize>>, String> {
    let window = match &raw["sliding_window"] {
        Value::Null => None,
        v => Some(
            v.as_u64()
                .filter(|&w| w > 0)
                .ok_or_else(|| format!("`sliding_window` must be a positive integer or null, not {v}"))?
                as usize,
        ),
    };
    if let Some(size) = raw.get("sliding_window_size").filter(|v| !v.is_null()) {
        if size.as_u64().map(|s| s as usize) != window {
            return Err(format!(
                "`sliding_window_size` {size} differs from `sliding_window` {}: which window the model uses is \
                 unclear. Make them equal",
                raw["sliding_window"]
            ));
        }
    }
    let gated = matches!(
        fam.sliding,
        DefaultSliding::FromMaxWindowLayers | DefaultSliding::NoRopeLayers | DefaultSliding::EveryLayerWhenUsed
    );
    let enabled = !gated || raw["use_sliding_window"].as_bool().unwrap_or(false);
    // qwen2 and qwen3 drop the window without `use_sliding_window`: a layer `layer_types` makes sliding then has
    // none (transformers fails on it) and is refused below. SmolLM3 slides its typed layers regardless.
    let window = match fam.sliding {
        DefaultSliding::FromMaxWindowLayers | DefaultSliding::EveryLayerWhenUsed if !enabled => None,
        _ => window,
    };
    let sliding: Vec<bool> = match types {
        Some(types) => types.iter().map(|t| *t == LayerType::Sliding).collect(),
        // transformers makes every layer of a Granite 4.0 config without layer types a Mamba layer.
        None if fam.understands("layers_block_type") => {
            return Err(
                "`layer_types` is missing, which makes every layer a Mamba layer; FreezeTune trains \
                        Granite 4.0's attention layers only"
                    .into(),
            )
        }
        None => match fam.sliding {
            DefaultSliding::Never => vec![false; layers],
            DefaultSliding::EveryLayer | DefaultSliding::EveryLayerWhenUsed => vec![window.is_some(); layers],
            DefaultSliding::FromMaxWindowLayers => {
                let from = raw["max_window_layers"].as_u64().unwrap_or(layers as u64) as usize;
                (0..layers).map(|i| enabled && window.is_some() && i >= from).collect()
            }
            DefaultSliding::AllButEvery(n) => {
                let n = match &raw["sliding_window_pattern"] {
                    Value::Null => n,
                    // A pattern transformers would not read as a number (EXAONE's "LLLG") is refused here, where
                    // only it would decide the layers.
                    v => v.as_u64().filter(|&p| p > 0).ok_or_else(|| {
                        format!("`sliding_window_pattern` is {v}; without `layer_types` it must be a positive integer")
                    })? as usize,
                };
                (0..layers).map(|i| (i + 1) % n != 0).collect()
            }
            DefaultSliding::NoRopeLayers => (0..layers)
                .map(|i| enabled && window.is_some() && !uses_rope[i])
                .collect(),
        },
    };
    let mut sliding = sliding;
    // Gemma 4's config makes its last layer full attention whatever `layer_types` says (with a warning).
    if let (true, Some(last)) = (fam.last_layer_full, sliding.last_mut()) {
        *last = false;
    }
    sliding
        .iter()
        .enumerate()
        .map(|(i, &s)| match (s, window) {
            (false, _) => Ok(None),
            (true, Some(w)) => Ok(Some(w)),
            (true, None) => Err(format!(
                "layer {i} uses sliding attention but the config gives it no window (`sliding_window` is not \
                 set, or `use_sliding_window` is false)"
            )),
        })
        .collect()
}

/// LFM2's MLP width as transformers derives it: `block_ff_dim` (or `intermediate_size`) and, with
/// `block_auto_adjust_ff_dim`, two thirds of it times `block_ffn_dim_multiplier`, rounded up to a multiple of
/// `block_multiple_of`.
fn lfm2_ff_dim(raw: &Value) -> std::result::Result<usize, String> {
    const LIMIT: u64 = 1 << 22;
    let key = ["block_ff_dim", "intermediate_size"]
        .into_iter()
        .find(|k| raw[*k].is_u64())
        .ok_or("`intermediate_size` (or `block_ff_dim`) is missing")?;
    let given = raw[key].as_u64().expect("checked");
    if given == 0 || given > LIMIT {
        return Err(format!(
            "`{key}` is {given}; it must be a positive integer up to {LIMIT}"
        ));
    }
    let mut dim = given;
    if raw["block_auto_adjust_ff_dim"].as_bool().unwrap_or(true) {
        dim = 2 * dim / 3;
        if let Some(m) = raw.get("block_ffn_dim_multiplier").filter(|v| !v.is_null()) {
            let m = m
                .as_f64()
                .filter(|m| m.is_finite() && *m > 0.0 && *m <= 64.0)
                .ok_or_else(|| format!("`block_ffn_dim_multiplier` must be a number in (0, 64], not {m}"))?;
            let multiple = raw["block_multiple_of"]
                .as_u64()
                .filter(|m| (1..=LIMIT).contains(m))
                .ok_or_else(|| {
                    format!(
                        "`block_multiple_of` must be an integer from 1 to {LIMIT}, not {}",
                        raw["block_multiple_of"]
                    )
                })?;
            // Truncated as Python's int() does, then rounded up to the multiple.
            dim = ((m * dim as f64) as u64).div_ceil(multiple) * multiple;
        }
    }
    match dim {
        1..=LIMIT => Ok(dim as usize),
        _ => Err(format!(
            "the MLP width comes to {dim} from `{key}` {given}: it must be from 1 to {LIMIT}"
        )),
    }
}

/// Each layer's token mixer: attention, or LFM2's short convolution where `layer_types` says `conv` (or, without
/// `layer_types`, where the layer is not in `full_attn_idxs`; all layers are attention when neither is given).
fn layer_mixers(
    raw: &Value,
    fam: &Family,
    layers: usize,
    types: Option<&[LayerType]>,
    hidden: usize,
) -> std::result::Result<Vec<Mixer>, String> {
    if let Some(types) = types.filter(|t| t.contains(&LayerType::Mamba)) {
        let mamba = Mixer::Mamba2(crate::mamba::MambaShape::from_config(raw, hidden)?);
        return Ok(types.iter().map(|t| t.mixer(mamba)).collect());
    }
    if fam.understands("linear_conv_kernel_dim") {
        return delta_net_mixers(raw, layers, types);
    }
    if !fam.understands("conv_L_cache") {
        return Ok(vec![Mixer::Attention; layers]);
    }
    let kernel = match raw["conv_L_cache"].as_u64() {
        Some(k @ 1..=64) => k as usize,
        _ => {
            return Err(format!(
                "`conv_L_cache` must be an integer from 1 to 64, not {}",
                raw["conv_L_cache"]
            ))
        }
    };
    let conv = Mixer::ShortConv {
        kernel,
        bias: raw["conv_bias"].as_bool().unwrap_or(false),
    };
    if let Some(types) = types {
        return Ok(types.iter().map(|t| t.mixer(conv)).collect());
    }
    match raw.get("full_attn_idxs").filter(|v| !v.is_null()) {
        None => Ok(vec![Mixer::Attention; layers]),
        Some(list) => {
            let idxs: Vec<u64> = list
                .as_array()
                .and_then(|l| l.iter().map(Value::as_u64).collect())
                .ok_or("`full_attn_idxs` must be a list of layer numbers")?;
            if let Some(bad) = idxs.iter().find(|&&i| i as usize >= layers) {
                return Err(format!("`full_attn_idxs` names layer {bad}, but there are {layers}"));
            }
            Ok((0..layers as u64)
                .map(|i| if idxs.contains(&i) { Mixer::Attention } else { conv })
                .collect())
        }
    }
}

/// Qwen3.5's layers: Gated DeltaNet where `layer_types` says `linear_attention` (by default all but every
/// `full_attention_interval`-th layer), with the sizes the `linear_*` keys give.
fn delta_net_mixers(
    raw: &Value,
    layers: usize,
    types: Option<&[LayerType]>,
) -> std::result::Result<Vec<Mixer>, String> {
    let size = |k: &str, limit: u64| -> std::result::Result<usize, String> {
        raw[k]
            .as_u64()
            .filter(|&n| (1..=limit).contains(&n))
            .map(|n| n as usize)
            .ok_or_else(|| format!("`{k}` must be an integer from 1 to {limit}, not {}", raw[k]))
    };
    let shape = DeltaNetShape {
        kernel: size("linear_conv_kernel_dim", 64)?,
        key_heads: size("linear_num_key_heads", 1 << 12)?,
        value_heads: size("linear_num_value_heads", 1 << 12)?,
        key_dim: size("linear_key_head_dim", 1 << 12)?,
        value_dim: size("linear_value_head_dim", 1 << 12)?,
    };
    if shape.value_heads % shape.key_heads != 0 {
        return Err(format!(
            "linear_num_value_heads {} must be a multiple of linear_num_key_heads {}",
            shape.value_heads, shape.key_heads
        ));
    }
    let linear = Mixer::GatedDeltaNet(shape);
    match types {
        Some(types) => Ok(types.iter().map(|t| t.mixer(linear)).collect()),
        None => {
            let every = size("full_attention_interval", layers.max(1) as u64)?;
            Ok((0..layers)
                .map(|i| if (i + 1) % every == 0 { Mixer::Attention } else { linear })
                .collect())
        }
    }
}

/// A layer's kind as `layer_types` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LayerType {
    Full,
    Sliding,
    /// LFM2's short convolution (`conv`).
    Conv,
    /// Qwen3.5's Gated DeltaNet (`linear_attention`).
    Linear,
    /// Granite 4.0-H's Mamba 2 (`mamba`).
    Mamba,
}

impl LayerType {
    /// The layer's token mixer: attention, or `other` for the convolution and linear-attention kinds (only the
    /// families that have the kind get past [`layer_types`] with it).
    fn mixer(self, other: Mixer) -> Mixer {
        match self {
            LayerType::Full | LayerType::Sliding => Mixer::Attention,
            LayerType::Conv | LayerType::Linear | LayerType::Mamba => other,
        }
    }
}

/// Each layer's kind where config.json lists them (`layer_types`, or Granite 4.0's older `layers_block_type`),
/// read once for the windows and the token mixers; None where it does not. A kind the family has no decoder for
/// is refused by name.
fn layer_types(raw: &Value, fam: &Family, layers: usize) -> std::result::Result<Option<Vec<LayerType>>, String> {
    let Some(types) = ["layer_types", "layers_block_type"]
        .iter()
        .find_map(|k| raw.get(*k).filter(|v| !v.is_null()))
    else {
        return Ok(None);
    };
    let conv_allowed = fam.understands("conv_L_cache");
    let linear_allowed = fam.understands("linear_conv_kernel_dim");
    let mamba_allowed = fam.understands("mamba_n_heads");
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
            Some("full_attention") | Some("attention") => Ok(LayerType::Full),
            Some("sliding_attention") => Ok(LayerType::Sliding),
            Some("conv") if conv_allowed => Ok(LayerType::Conv),
            Some("linear_attention") if linear_allowed => Ok(LayerType::Linear),
            Some("mamba") if mamba_allowed => Ok(LayerType::Mamba),
            Some(kind @ ("mamba" | "linear_attention")) => Err(format!(
                "layer {i} is a {kind} layer, which this family ({}) has no decoder for",
                fam.model_type
            )),
            _ => Err(format!(
                "layer {i}'s kind {t} in `layer_types` is not supported (full_attention and sliding_attention are)"
            )),
        })
        .collect::<std::result::Result<Vec<_>, String>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tiny(extra: Value) -> Value {
        let mut raw = json!({"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128,
            "num_hidden_layers": 3, "vocab_size": 10, "head_dim": 16, "num_key_value_heads": 4});
        for (k, v) in extra.as_object().unwrap() {
            raw[k] = v.clone();
        }
        raw
    }

    fn gemma4(extra: Value) -> std::result::Result<DecoderConfig, String> {
        let base = json!({"hidden_size_per_layer_input": 0, "global_head_dim": 32, "sliding_window": 8,
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]});
        let mut raw = tiny(base);
        for (k, v) in extra.as_object().unwrap() {
            raw[k] = v.clone();
        }
        DecoderConfig::from_json(&raw, "gemma4_text")
    }

    #[test]
    fn gemma4_full_layers_take_their_own_heads_and_the_last_layer_attends_in_full() {
        let c = gemma4(json!({"attention_k_eq_v": true, "num_global_key_value_heads": 1})).unwrap();
        let shape = |l: &LayerSpec| (l.window, l.head_dim, l.kv_heads, l.values_from_keys);
        let got: Vec<_> = c.layers.iter().map(shape).collect();
        // Layer 2 is listed sliding; transformers' config makes the last layer full.
        assert_eq!(got, [(Some(8), 16, 4, false), (None, 32, 1, true), (None, 32, 1, true)]);
        assert!(c.layers.iter().all(|l| l.value_norm && l.scale == 1.0));
        assert_eq!(c.rope_head_dim(0), 32);
        assert_eq!(c.rope_head_dim(1), 16);
        let c = gemma4(json!({})).unwrap();
        assert_eq!(
            (c.layers[1].head_dim, c.layers[1].kv_heads, c.layers[1].values_from_keys),
            (32, 4, false)
        );
        let v_proj = |c: &DecoderConfig| {
            c.tensor_shapes()
                .iter()
                .filter(|(n, _)| n.ends_with("v_proj.weight"))
                .count()
        };
        assert_eq!(v_proj(&c), 3);
        let shared = json!({"attention_k_eq_v": true, "num_global_key_value_heads": 2});
        assert_eq!(v_proj(&gemma4(shared).unwrap()), 1);
    }

    #[test]
    fn gemma4_configs_transformers_cannot_build_are_refused_by_name() {
        // transformers divides by these: absent or zero, it fails.
        for (extra, key) in [
            (json!({"attention_k_eq_v": true}), "num_global_key_value_heads"),
            (json!({"global_head_dim": null}), "global_head_dim"),
            (json!({"global_head_dim": 0}), "global_head_dim"),
            (json!({"attention_k_eq_v": "yes"}), "attention_k_eq_v"),
        ] {
            let e = gemma4(extra).unwrap_err();
            assert!(e.contains(key), "{e}");
        }
        // Its rotary indexes `rope_parameters` by layer type, and never reads the legacy keys.
        let flat = json!({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}});
        assert!(gemma4(flat).unwrap_err().contains("not keyed by layer type"));
        for key in ["rope_scaling", "rope_theta"] {
            let value = if key == "rope_theta" {
                json!(1e4)
            } else {
                json!({"rope_type": "linear", "factor": 2.0})
            };
            let e = gemma4(json!({key: value})).unwrap_err();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn gemma4_switches_take_transformers_defaults() {
        let mut absent = tiny(json!({"global_head_dim": 32}));
        absent.as_object_mut().unwrap().remove("hidden_size_per_layer_input");
        // transformers' defaults turn the per-layer embeddings on: 256 values a layer from 262144 rows.
        let c = DecoderConfig::from_json(&absent, "gemma4_text").unwrap();
        let ple = c.per_layer_inputs.unwrap();
        assert_eq!((ple.width, ple.vocab), (256, 262_144));
        let shapes = c.tensor_shapes();
        let table = shapes.iter().find(|(n, _)| n == "model.embed_tokens_per_layer.weight");
        assert_eq!(table.unwrap().1, vec![262_144, 3 * 256]);
        let shared = gemma4(json!({"num_kv_shared_layers": 1, "use_double_wide_mlp": true})).unwrap();
        let sources: Vec<_> = shared
            .layers
            .iter()
            .map(|l| (l.kv_source, l.intermediate_size))
            .collect();
        // Layer 2 is made full, so it reads the last full layer before it.
        assert_eq!(sources, [(None, 128), (None, 128), (Some(1), 256)]);
        let names: Vec<_> = shared.tensor_shapes().into_iter().map(|(n, _)| n).collect();
        assert!(
            !names.iter().any(|n| n.starts_with("model.layers.2.self_attn.k_")),
            "{names:?}"
        );
        // The MoE block sizes its experts only when switched on: then its keys must be there.
        let off = gemma4(json!({"enable_moe_block": false, "num_experts": null})).unwrap();
        assert!(off.layers.iter().all(|l| l.experts.is_none()));
        let e = gemma4(json!({"enable_moe_block": true})).unwrap_err();
        assert!(e.contains("num_experts"), "{e}");
        let on = json!({"enable_moe_block": true, "num_experts": 8, "top_k_experts": 2, "moe_intermediate_size": 4});
        let c = gemma4(on).unwrap();
        assert!(c
            .layers
            .iter()
            .all(|l| l.experts.is_some_and(|e| e.count == 8 && e.top_k == 2)));
        let shapes = c.tensor_shapes();
        for name in [
            "router.per_expert_scale",
            "pre_feedforward_layernorm_2.weight",
            "mlp.down_proj.weight",
        ] {
            assert!(shapes.iter().any(|(n, _)| n.ends_with(name)), "{name}");
        }
        let e = gemma4(json!({"use_bidirectional_attention": "all"})).unwrap_err();
        assert!(e.contains("use_bidirectional_attention"), "{e}");
        assert!(gemma4(json!({"use_bidirectional_attention": "vision"})).is_ok());
        // A full rope other than the proportional one cannot turn the wider heads.
        let rope = json!({"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e4},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}});
        let e = gemma4(rope).unwrap_err();
        assert!(e.contains("global_head_dim"), "{e}");
    }

    fn windows(extra: Value, model_type: &str) -> std::result::Result<Vec<Option<usize>>, String> {
        DecoderConfig::from_json(&tiny(extra), model_type).map(|c| c.layers.iter().map(|l| l.window).collect())
    }

    #[test]
    fn a_partial_rotary_factor_a_family_never_reads_is_refused_by_name() {
        let rope =
            json!({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}});
        let e = DecoderConfig::from_json(&tiny(rope.clone()), "ernie4_5").unwrap_err();
        assert!(e.contains("partial_rotary_factor") && e.contains("0.5"), "{e}");
        assert!(DecoderConfig::from_json(&tiny(rope), "phi3").is_ok());
        let odd = json!({"head_dim": 15, "hidden_size": 60});
        let e = DecoderConfig::from_json(&tiny(odd), "ernie4_5").unwrap_err();
        assert!(e.contains("head_dim") && e.contains("even"), "{e}");
    }

    #[test]
    fn exaone4_rotates_only_its_sliding_layers_when_it_has_a_window() {
        let rope = |extra: Value| -> Vec<bool> {
            let c = DecoderConfig::from_json(&tiny(extra), "exaone4").unwrap();
            c.layers.iter().map(|l| l.rope.is_some()).collect()
        };
        let pattern = json!({"sliding_window": 8, "sliding_window_pattern": 3});
        assert_eq!(rope(pattern), [true, true, false]);
        let all_full =
            json!({"sliding_window": null, "layer_types": ["full_attention", "full_attention", "full_attention"]});
        assert_eq!(rope(all_full), [true, true, true]);
        let e = windows(
            json!({"sliding_window": 8, "sliding_window_pattern": "LLLG"}),
            "exaone4",
        )
        .unwrap_err();
        assert!(e.contains("sliding_window_pattern") && e.contains("LLLG"), "{e}");
        let typed = json!({"sliding_window": 8, "sliding_window_pattern": "LLLG",
            "layer_types": ["sliding_attention", "sliding_attention", "full_attention"]});
        assert_eq!(windows(typed, "exaone4").unwrap(), [Some(8), Some(8), None]);
    }

    #[test]
    fn sliding_windows_are_read_per_layer_as_transformers_does() {
        assert_eq!(
            windows(json!({"sliding_window": 16}), "mistral").unwrap(),
            vec![Some(16); 3]
        );
        assert_eq!(
            windows(json!({"sliding_window": null}), "mistral").unwrap(),
            vec![None; 3]
        );
        assert_eq!(
            windows(json!({}), "mistral").unwrap(),
            vec![Some(4096); 3],
            "mistral's default window"
        );
        assert_eq!(windows(json!({"sliding_window": 8}), "phi3").unwrap(), vec![Some(8); 3]);
        let qwen = json!({"sliding_window": 8, "use_sliding_window": true, "max_window_layers": 1});
        assert_eq!(windows(qwen, "qwen2").unwrap(), vec![None, Some(8), Some(8)]);
        let off = json!({"sliding_window": 8, "use_sliding_window": false, "max_window_layers": 1});
        assert_eq!(windows(off, "qwen2").unwrap(), vec![None; 3]);
        let qwen3 = json!({"sliding_window": 8, "use_sliding_window": true, "max_window_layers": 2});
        assert_eq!(windows(qwen3, "qwen3").unwrap(), vec![None, None, Some(8)]);
        let typed = json!({"sliding_window": 4,
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]});
        assert_eq!(windows(typed, "gemma2").unwrap(), vec![Some(4), None, Some(4)]);
        assert_eq!(
            windows(json!({"sliding_window": 4}), "gemma2").unwrap(),
            vec![Some(4), None, Some(4)],
            "gemma2 alternates, sliding first"
        );
        assert_eq!(
            windows(json!({"sliding_window": 4, "sliding_window_pattern": 2}), "gemma3_text").unwrap(),
            vec![Some(4), None, Some(4)]
        );
        let odd = json!({"layer_types": ["full_attention", "linear_attention", "full_attention"]});
        let e = windows(odd, "olmo3").unwrap_err();
        assert!(e.contains("layer 1") && e.contains("linear_attention"), "{e}");
        let e = windows(
            json!({"sliding_window": null, "layer_types": ["sliding_attention", "full_attention", "full_attention"]}),
            "olmo3",
        )
        .unwrap_err();
        assert!(e.contains("sliding_window"), "{e}");
    }

    #[test]
    fn a_key_the_family_does_not_read_is_refused_with_its_value() {
        let e = DecoderConfig::from_json(&tiny(json!({"attn_logit_softcapping": 50.0})), "llama").unwrap_err();
        assert!(e.contains("attn_logit_softcapping") && e.contains("50"), "{e}");
        let e = DecoderConfig::from_json(&tiny(json!({"sliding_window": 16})), "llama").unwrap_err();
        assert!(e.contains("sliding_window"), "{e}");
        let e = DecoderConfig::from_json(&tiny(json!({"attention_dropout": 0.1})), "llama").unwrap_err();
        assert!(e.contains("attention_dropout"), "{e}");
        let fine = json!({"torch_dtype": "bfloat16", "_name_or_path": "x", "bos_token_id": 1, "use_cache": true});
        assert!(DecoderConfig::from_json(&tiny(fine), "llama").is_ok());
    }

    #[test]
    fn partial_rotary_is_read_at_the_top_level_and_inside_rope_parameters() {
        for extra in [
            json!({"partial_rotary_factor": 0.75}),
            json!({"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.75}}),
        ] {
            let c = DecoderConfig::from_json(&tiny(extra), "phi3").unwrap();
            assert_eq!(c.global_rope().rotary_dim(c.head_dim), 12);
        }
    }

    #[test]
    fn biases_follow_each_family() {
        let c = DecoderConfig::from_json(&tiny(json!({"attention_bias": true, "mlp_bias": true})), "llama").unwrap();
        let l = &c.layers[0];
        assert!(l.qkv_bias && l.o_bias && l.mlp_bias);
        let q = DecoderConfig::from_json(&tiny(json!({})), "qwen2").unwrap();
        let l = &q.layers[0];
        assert!(l.qkv_bias && !l.o_bias && !l.mlp_bias);
    }

    #[test]
    fn unsupported_architectures_list_the_supported_ones() {
        let e = Architecture::from_config("FalconForCausalLM", Some("falcon")).unwrap_err();
        assert!(
            e.to_string().contains("falcon") && e.to_string().contains("gemma2"),
            "{e}"
        );
    }

    #[test]
    fn gemma3_reads_a_rope_per_layer_type_in_both_layouts() {
        let legacy = json!({"rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "sliding_window": 4,
            "sliding_window_pattern": 3, "rope_scaling": {"rope_type": "linear", "factor": 8.0}});
        let c = DecoderConfig::from_json(&tiny(legacy), "gemma3_text").unwrap();
        assert_eq!(c.ropes[0].theta, 1e6);
        assert_eq!(c.ropes[1].theta, 1e4);
        assert_eq!(c.ropes[0].scaling, crate::rope::RopeScaling::Linear { factor: 8.0 });
        assert_eq!(c.ropes[1].scaling, crate::rope::RopeScaling::Default);
        assert_eq!(
            c.layers.iter().map(|l| l.rope).collect::<Vec<_>>(),
            vec![Some(1), Some(1), Some(0)]
        );
        let nested = json!({"sliding_window": 4, "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": 5.0e5},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1.0e4}}});
        let c = DecoderConfig::from_json(&tiny(nested), "gemma3_text").unwrap();
        assert_eq!((c.ropes[0].theta, c.ropes[1].theta), (5e5, 1e4));
    }

    #[test]
    fn smollm3_has_nope_layers_and_granite_its_multipliers() {
        let c = DecoderConfig::from_json(&tiny(json!({"no_rope_layers": [1, 0, 1]})), "smollm3").unwrap();
        assert_eq!(
            c.layers.iter().map(|l| l.rope.is_some()).collect::<Vec<_>>(),
            vec![true, false, true]
        );
        let c = DecoderConfig::from_json(&tiny(json!({"no_rope_layer_interval": 2})), "smollm3").unwrap();
        assert_eq!(
            c.layers.iter().map(|l| l.rope.is_some()).collect::<Vec<_>>(),
            vec![true, false, true]
        );
        let g = json!({"attention_multiplier": 0.5, "embedding_multiplier": 12.0, "residual_multiplier": 0.2,
            "logits_scaling": 8.0});
        let c = DecoderConfig::from_json(&tiny(g), "granite").unwrap();
        assert_eq!(c.layers[0].scale, 0.5);
        assert_eq!(
            (c.embedding_multiplier, c.residual_multiplier, c.logits_scaling),
            (12.0, 0.2, 8.0)
        );
    }

    #[test]
    fn granite4_trains_attention_and_mamba_layers_and_experts() {
        let dense = json!({"layer_types": ["attention", "attention", "attention"], "num_local_experts": 0,
            "shared_intermediate_size": 32, "position_embedding_type": "rope"});
        let c = DecoderConfig::from_json(&tiny(dense.clone()), "granitemoehybrid").unwrap();
        assert_eq!(c.intermediate_size, 32);
        assert!(c.layers.iter().all(|l| l.rope.is_some() && l.window.is_none()));
        let mut hybrid = dense.clone();
        hybrid["layer_types"] = json!(["attention", "mamba", "attention"]);
        hybrid["mamba_n_heads"] = 4.into();
        let c = DecoderConfig::from_json(&tiny(hybrid.clone()), "granitemoehybrid").unwrap();
        let Mixer::Mamba2(m) = c.layers[1].mixer else {
            panic!("layer 1 is {:?}", c.layers[1].mixer)
        };
        assert_eq!(
            (m.heads, m.head_dim, m.state, m.chunk),
            (4, 32, 256, crate::mamba::MAX_CHUNK)
        );
        assert_eq!(c.layers[1].kind(), "mamba 2");
        assert!(c
            .tensor_shapes()
            .iter()
            .any(|(n, s)| n == "model.layers.1.mamba.conv1d.weight" && s[0] == 640));
        hybrid["mamba_n_heads"] = 5.into();
        let e = DecoderConfig::from_json(&tiny(hybrid), "granitemoehybrid").unwrap_err();
        assert!(e.contains("mamba_n_heads"), "{e}");
        let lfm2_mamba = json!({"layer_types": ["conv", "mamba", "conv"], "conv_L_cache": 3});
        let e = DecoderConfig::from_json(&tiny(lfm2_mamba), "lfm2").unwrap_err();
        assert!(e.contains("layer 1") && e.contains("mamba"), "{e}");
        let mut moe = dense.clone();
        moe["num_local_experts"] = 8.into();
        moe["num_experts_per_tok"] = 2.into();
        let c = DecoderConfig::from_json(&tiny(moe.clone()), "granitemoehybrid").unwrap();
        let e = c.layers[0].experts.unwrap();
        assert_eq!((e.count, e.top_k, e.width, e.shared_width), (8, 2, 128, Some(32)));
        assert!(c.layers.iter().all(|l| l.experts.is_some()));
        // transformers 5.6 records no router logits for this family: no load-balancing loss to add.
        moe["output_router_logits"] = true.into();
        moe["router_aux_loss_coef"] = 0.01.into();
        let e = DecoderConfig::from_json(&tiny(moe), "granitemoehybrid").unwrap_err();
        assert!(e.contains("output_router_logits"), "{e}");
        let mut untyped = dense;
        untyped.as_object_mut().unwrap().remove("layer_types");
        let e = DecoderConfig::from_json(&tiny(untyped), "granitemoehybrid").unwrap_err();
        assert!(e.contains("layer_types"), "{e}");
    }

    #[test]
    fn configs_read_as_transformers_reads_them() {
        // Gemma 3 4B's published text_config: sizes it leaves out come from transformers' defaults, and the
        // wrapper applies no final softcap.
        let gemma = json!({"model_type": "gemma3", "text_config": {"hidden_size": 2560, "intermediate_size": 10240,
            "model_type": "gemma3_text", "num_hidden_layers": 34, "final_logit_softcapping": 30.0,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024}});
        let c = DecoderConfig::from_wrapper(&gemma, wrapper("gemma3").unwrap()).unwrap();
        assert_eq!(
            (c.vocab_size, c.num_heads, c.num_kv_heads, c.head_dim),
            (262_208, 8, 4, 256)
        );
        assert_eq!(c.final_softcap, None);
        assert_eq!(c.ropes[0].scaling, crate::rope::RopeScaling::Linear { factor: 8.0 });
        // A mistral3 text tower that names no type is transformers' default, mistral.
        let small = json!({"model_type": "mistral3", "text_config": {"hidden_size": 64, "num_attention_heads": 4,
            "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 10, "head_dim": 16, "num_key_value_heads": 2}});
        let c = DecoderConfig::from_wrapper(&small, wrapper("mistral3").unwrap()).unwrap();
        assert_eq!(c.architecture, Architecture::Mistral);
        // rope_scaling wins over rope_parameters (ministral3's defaults carry a rope_parameters).
        let legacy = json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096,
            "llama_4_scaling_beta": 0.1}});
        let c = DecoderConfig::from_json(&tiny(legacy), "ministral3").unwrap();
        assert!(matches!(c.ropes[0].scaling, crate::rope::RopeScaling::Yarn { factor, .. } if factor == 4.0));
        // Phi-3's legacy `su` is LongRoPE, and its top-level original context (default 4096) wins.
        let su = json!({"rope_scaling": {"type": "su", "short_factor": vec![1.0; 8], "long_factor": vec![2.0; 8],
            "original_max_position_embeddings": 8192}, "max_position_embeddings": 131072});
        let c = DecoderConfig::from_json(&tiny(su), "phi3").unwrap();
        assert!(c.global_rope().uses_long_factors(4097) && !c.global_rope().uses_long_factors(4096));
        // Typed sliding layers: SmolLM3 slides them without use_sliding_window; qwen2 has no window then.
        let typed = json!({"use_sliding_window": false, "sliding_window": 8,
            "layer_types": ["full_attention", "sliding_attention", "full_attention"]});
        let c = DecoderConfig::from_json(&tiny(typed.clone()), "smollm3").unwrap();
        assert_eq!(c.window(1), Some(8));
        let e = DecoderConfig::from_json(&tiny(typed), "qwen2").unwrap_err();
        assert!(e.contains("layer 1") && e.contains("use_sliding_window"), "{e}");
    }

    #[test]
    fn gemma2_defaults_its_softcaps_and_query_scale() {
        let c = DecoderConfig::from_json(&tiny(json!({})), "gemma2").unwrap();
        assert_eq!(c.layers[0].softcap, Some(50.0));
        assert_eq!(c.final_softcap, Some(30.0));
        assert_eq!(c.layers[0].scale, 1.0 / 16.0);
        assert_eq!(c.layers[0].norms, NormPlacement::Sandwich);
    }

    #[test]
    fn lfm2_reads_its_layer_kinds_mlp_width_and_original_key_names() {
        // LFM2-1.2B's own config.json spells the MLP width `block_ff_dim` and lists the attention layers.
        let original = json!({"block_ff_dim": 12288, "block_ffn_dim_multiplier": 1.0, "block_multiple_of": 256,
            "full_attn_idxs": [1], "norm_eps": 1e-5, "conv_L_cache": 3, "conv_bias": false, "block_dim": 64,
            "conv_dim": 64, "use_pos_enc": true, "tie_embedding": true, "num_key_value_heads": 2});
        let c = DecoderConfig::from_json(&tiny(original), "lfm2").unwrap();
        let kinds: Vec<String> = c.layers.iter().map(LayerSpec::kind).collect();
        assert_eq!(kinds, ["conv 3", "full", "conv 3"]);
        assert_eq!(c.intermediate_size, 8192, "two thirds of 12288, a multiple of 256");
        assert_eq!((c.rms_norm_eps, c.tie_word_embeddings), (1e-5, true));
        assert_eq!(c.names.final_norm, "embedding_norm");
        let shapes = c.tensor_shapes();
        let has = |n: &str| shapes.iter().any(|(name, _)| name == n);
        assert!(has("model.layers.0.conv.conv.weight") && has("model.layers.1.self_attn.out_proj.weight"));
        assert!(has("model.layers.1.self_attn.q_layernorm.weight") && has("model.layers.2.feed_forward.w3.weight"));
        assert!(!has("model.layers.0.self_attn.q_proj.weight") && !has("model.layers.0.conv.in_proj.bias"));
        // 100 → 66 → ×1.5 = 99 → the next multiple of 32.
        let small = json!({"intermediate_size": 100, "block_ffn_dim_multiplier": 1.5, "block_multiple_of": 32,
            "layer_types": ["conv", "full_attention", "conv"], "num_key_value_heads": 2});
        assert_eq!(
            DecoderConfig::from_json(&tiny(small), "lfm2")
                .unwrap()
                .intermediate_size,
            128
        );
        let e = DecoderConfig::from_json(&tiny(json!({"full_attn_idxs": [3], "num_key_value_heads": 2})), "lfm2")
            .unwrap_err();
        assert!(e.contains("full_attn_idxs") && e.contains("layer 3"), "{e}");
        // Only LFM2 has convolution layers.
        let e = DecoderConfig::from_json(
            &tiny(json!({"layer_types": ["conv", "full_attention", "conv"]})),
            "qwen3",
        )
        .unwrap_err();
        assert!(e.contains("layer 0") && e.contains("conv"), "{e}");
    }

    /// gpt-oss-20b's config.json as released (transformers 4.55), its tensors aside.
    fn gpt_oss_20b() -> Value {
        let types: Vec<&str> = (0..24)
            .map(|i| {
                if i % 2 == 0 {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
            })
            .collect();
        json!({"architectures": ["GptOssForCausalLM"], "attention_bias": true, "attention_dropout": 0.0,
        "eos_token_id": 200002, "experts_per_token": 4, "head_dim": 64, "hidden_act": "silu", "hidden_size": 2880,
        "initial_context_length": 4096, "initializer_range": 0.02, "intermediate_size": 2880, "layer_types": types,
        "max_position_embeddings": 131072, "model_type": "gpt_oss", "num_attention_heads": 64,
        "num_experts_per_tok": 4, "num_hidden_layers": 24, "num_key_value_heads": 8, "num_local_experts": 32,
        "output_router_logits": false, "pad_token_id": 199999, "quantization_config": {"modules_to_not_convert":
        ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"],
        "quant_method": "mxfp4"}, "rms_norm_eps": 1e-05, "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0,
        "factor": 32.0, "original_max_position_embeddings": 4096, "rope_type": "yarn", "truncate": false},
        "rope_theta": 150000, "router_aux_loss_coef": 0.9, "sliding_window": 128, "swiglu_limit": 7.0,
        "tie_word_embeddings": false, "transformers_version": "4.55.0.dev0", "use_cache": true,
        "vocab_size": 201088})
    }

    #[test]
    fn gpt_oss_as_released_reads_with_its_mxfp4_experts_and_other_quantizations_are_refused() {
        let mxfp4 = gpt_oss_20b();
        let c = DecoderConfig::from_json(&mxfp4, "gpt_oss").unwrap();
        let mut gptq = mxfp4.clone();
        gptq["quantization_config"] = json!({"quant_method": "gptq", "bits": 4});
        let e = DecoderConfig::from_json(&gptq, "gpt_oss").unwrap_err();
        assert!(e.contains("\"gptq\"") && e.contains("full-precision"), "{e}");
        let mut llama_mxfp4 = tiny(json!({}));
        llama_mxfp4["quantization_config"] = json!({"quant_method": "mxfp4"});
        let e = DecoderConfig::from_json(&llama_mxfp4, "llama").unwrap_err();
        assert!(e.contains("\"mxfp4\""), "{e}");
        let mut bf16 = mxfp4.clone();
        bf16.as_object_mut().unwrap().remove("quantization_config");
        assert_eq!(DecoderConfig::from_json(&bf16, "gpt_oss").unwrap(), c);
        assert_eq!(c.layers.len(), 24);
        let (l0, l1) = (&c.layers[0], &c.layers[1]);
        assert_eq!((l0.window, l1.window), (Some(128), None));
        assert!(l0.sinks && l0.qkv_bias && l0.o_bias && !l0.mlp_bias);
        let e = l0.experts.unwrap();
        assert_eq!((e.count, e.top_k, e.width, e.normalize), (32, 4, 2880, true));
        assert_eq!(l0.kind(), "sliding 128, experts 4 of 32");
        let names: Vec<String> = c.tensor_shapes().into_iter().map(|(n, _)| n).collect();
        for name in [
            "model.layers.0.self_attn.sinks",
            "model.layers.0.mlp.router.bias",
            "model.layers.0.mlp.experts.gate_up_proj_bias",
            "model.layers.23.mlp.experts.down_proj_bias",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} is not among {names:?}");
        }
        let mut other = bf16.clone();
        other["swiglu_limit"] = json!(5.0);
        let e = DecoderConfig::from_json(&other, "gpt_oss").unwrap_err();
        assert!(e.contains("swiglu_limit") && e.contains('7'), "{e}");
        let mut other = bf16;
        other["experts_per_token"] = json!(2);
        let e = DecoderConfig::from_json(&other, "gpt_oss").unwrap_err();
        assert!(e.contains("experts_per_token") && e.contains("never reads"), "{e}");
    }

    /// transformers' vision-language classes add the router's loss only when forward is asked to, never from
    /// `text_config`; the text tower's own class reads it from its config.
    #[test]
    fn only_a_causal_lm_adds_the_routers_loss_its_config_asks_for() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/qwen3_5_moe_vlm");
        let mut raw: Value =
            serde_json::from_str(&std::fs::read_to_string(fixture.join("config.json")).unwrap()).unwrap();
        raw["text_config"]["output_router_logits"] = json!(true);
        let wrapper = crate::family::wrapper("qwen3_5_moe").unwrap();
        assert_eq!(
            DecoderConfig::from_wrapper(&raw, wrapper).unwrap().router_aux_loss,
            None
        );
        let text = DecoderConfig::from_json(&raw["text_config"], "qwen3_5_moe_text").unwrap();
        assert_eq!(text.router_aux_loss, Some(0.001));
    }

    /// transformers ties a wrapper's head by the wrapper's flag (else its class's default) and keeps a stored head
    /// that differs from the embeddings untied; the text tower's flag is what transformers 5 happens to write.
    #[test]
    fn a_wrapper_ties_as_transformers_does() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/ministral3");
        let mut raw: Value =
            serde_json::from_str(&std::fs::read_to_string(fixture.join("config.json")).unwrap()).unwrap();
        let mistral3 = crate::family::wrapper("mistral3").unwrap();
        raw["tie_word_embeddings"] = json!(false);
        raw["text_config"]["tie_word_embeddings"] = json!(true);
        assert!(!DecoderConfig::from_wrapper(&raw, mistral3).unwrap().tie_word_embeddings);
        // Mistral's published configs state no top-level flag: the class ties, but the stored head differs.
        raw.as_object_mut().unwrap().remove("tie_word_embeddings");
        raw["text_config"]["tie_word_embeddings"] = json!(false);
        assert!(DecoderConfig::from_wrapper(&raw, mistral3).unwrap().tie_word_embeddings);
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(fixture.join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
        std::fs::write(dir.path().join("config.json"), raw.to_string()).unwrap();
        assert!(!DecoderConfig::read(dir.path()).unwrap().tie_word_embeddings);
    }
}
