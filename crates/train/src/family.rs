//! The families FreezeTune trains, one table entry each: which config.json keys the family's decoder reads (every
//! other key that could change the math is refused by name), the defaults transformers gives the ones a config
//! leaves out, and the wiring that is not a key (norm placement, q/k norm, fused projections, which layers slide
//! when `layer_types` is absent). Adding a family is an entry here, the tensor names it uses, and a parity test.

use crate::config::Architecture;
use serde_json::{json, Value};

/// Where a layer's norms sit around attention and the MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormPlacement {
    /// `x + f(norm(x))` (llama).
    Pre,
    /// `x + norm(f(x))` (OLMo 2 and 3: `post_attention_layernorm`, `post_feedforward_layernorm`).
    Post,
    /// `x + post_norm(f(pre_norm(x)))` (Gemma 2 and 3: four norms a layer).
    Sandwich,
}

/// RMSNorm of queries and keys before rotary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    None,
    /// Over each head (qwen3, gemma3): weights of head_dim.
    PerHead,
    /// Over the whole projection, all heads at once (OLMo 2 and 3): weights of heads · head_dim.
    Whole,
}

/// Which layers use sliding-window attention when config.json has no `layer_types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultSliding {
    /// None (the family has no sliding window).
    Never,
    /// Every layer, when `sliding_window` is set (mistral, phi3).
    EveryLayer,
    /// Layers from `max_window_layers` on, when `use_sliding_window` is true (qwen2, qwen3).
    FromMaxWindowLayers,
    /// All but every `n`-th layer (gemma2: 2, gemma3: `sliding_window_pattern`, default 6; olmo3: 4).
    AllButEvery(usize),
    /// SmolLM3: the NoPE layers, when `use_sliding_window` is true.
    NoRopeLayers,
    /// Every layer, when `use_sliding_window` is true (qwen3_moe, whose attention reads `sliding_window` alone).
    EveryLayerWhenUsed,
}

/// Where a layer's MLP weights are, by name after `model.layers.N.`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpLayout {
    /// Gate, up and down projections: `mlp.gate_proj`, `mlp.up_proj`, `mlp.down_proj` ([`HF_MLP`]); LFM2's
    /// `feed_forward.w1`, `w3`, `w2`.
    Separate {
        gate: &'static str,
        up: &'static str,
        down: &'static str,
    },
    /// One projection holding gate then up (rows), and the down projection: Phi-3's `mlp.gate_up_proj` /
    /// `mlp.down_proj`, Granite 4.0's `shared_mlp.input_linear` / `shared_mlp.output_linear`.
    Fused { gate_up: &'static str, down: &'static str },
}

/// A mixture-of-experts MLP as a family lays it out: its tensor names after `model.layers.N.` and the keys that
/// size it and say which layers have it. A token's router logits go through a softmax (f32), its `top_k`
/// experts run (SwiGLU MLPs of their own), and their outputs are summed weighted by those probabilities,
/// renormalised to sum to 1 where the family says; a shared expert, where the family has one, adds its output
/// to every token's, scaled by the sigmoid of its own gate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExpertTable {
    /// The router's linear (experts × hidden): `mlp.gate`.
    pub router: &'static str,
    /// The router has a bias (gpt-oss).
    pub router_bias: bool,
    pub weights: ExpertWeights,
    /// The keys holding the expert count (transformers takes either spelling, as its `attribute_map` says) and
    /// each expert's MLP width.
    pub count_keys: [&'static str; 2],
    /// Another name for `num_experts_per_tok` that released configs carry (gpt-oss's `experts_per_token`): it
    /// must agree where both are given.
    pub top_k_alias: Option<&'static str>,
    pub width_key: &'static str,
    /// How the chosen probabilities are renormalised.
    pub normalize: TopKNorm,
    /// How the router's scores choose and weigh the experts.
    pub routing: Routing,
    /// Which layers have experts (the others keep a dense MLP of the family's intermediate size).
    pub sparse_layers: SparseLayers,
    pub shared: Option<SharedExpertTable>,
    /// The chosen probabilities weigh the experts' outputs in f32, the product then rounded to the activations'
    /// dtype (Mixtral); otherwise they are rounded to that dtype first (Qwen3 MoE, OLMoE, Qwen3.5 MoE).
    pub weigh_in_f32: bool,
    pub activation: ExpertActivation,
    /// transformers adds the router's load-balancing loss when config.json's `output_router_logits` is true;
    /// false where it records no router logits and so cannot (Granite 4.0-H in 5.6), and such a config is refused.
    pub router_loss: bool,
    /// The key holding how many experts a token runs through (`num_experts_per_tok`; Gemma 4's `top_k_experts`).
    pub top_k_key: &'static str,
    /// The experts run beside the layer's dense MLP rather than in its place (Gemma 4), with norms of their own.
    pub beside_dense: Option<BesideDense>,
}

/// Gemma 4's sparse block beside the dense MLP, by name after `model.layers.N.`: the layer's MLP sublayer becomes
/// `post(dense_post(mlp(pre(x))) + experts_post(experts(experts_pre(x))))` with the router reading `x` itself (the
/// layer's residual stream), where `pre`/`post` are the layer's own MLP norms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BesideDense {
    pub dense_post: &'static str,
    pub experts_pre: &'static str,
    pub experts_post: &'static str,
}

/// How a token's router logits choose its experts and weigh their outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// A softmax over every logit (in f32); the `top_k` most probable experts, weighed by their probabilities.
    Softmax,
    /// DeepSeek-V3 and GLM-4.5: the logits are computed in f32 (input and weight cast up) and go through a sigmoid.
    /// The choice adds a fixed per-expert bias, `{router}.{correction_bias}` (a buffer: never trained, and not a
    /// parameter to LLaMA-Factory either), and keeps only the experts of the best `top_groups_key` of the
    /// `groups_key` equal groups, a group scored by the sum of its two best biased scores; the chosen experts'
    /// unbiased scores weigh them, renormalised as the table says (sum + 1e-20) and multiplied by `scale_key`.
    SigmoidGroups {
        correction_bias: &'static str,
        groups_key: &'static str,
        top_groups_key: &'static str,
        scale_key: &'static str,
    },
    /// Gemma 4: the router's input RMS-normalised without a weight, times `input_scale` (hidden) and
    /// hidden^-0.5, then the router's linear and a softmax over every logit (f32); the top-k probabilities
    /// renormalised to sum to 1, each times its expert's `expert_scale` entry. Names after `model.layers.N.`.
    NormedSoftmax {
        input_scale: &'static str,
        expert_scale: &'static str,
    },
}

/// Which layers of a mixture-of-experts family have a sparse MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparseLayers {
    Every,
    /// qwen3_moe's `decoder_sparse_step` (layer i has experts when (i + 1) % step == 0) and `mlp_only_layers`
    /// (layers that keep a dense MLP).
    StepAndDense {
        step: &'static str,
        dense: &'static str,
    },
    /// The layers from this key's value on (DeepSeek-V3's and GLM-4.5's `first_k_dense_replace`: the first k are
    /// dense).
    AfterFirstDense(&'static str),
    /// As this key's list says, `"dense"` or `"sparse"` per layer (GLM-4.7-Flash's `mlp_layer_types`); absent,
    /// the first layer dense and the rest sparse, as transformers fills it in.
    Types(&'static str),
    /// Every layer when this boolean key is true, none otherwise (Gemma 4's `enable_moe_block`).
    EveryWhen(&'static str),
}

/// Where the experts' projections are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertWeights {
    /// A linear per expert and projection: `{experts}.{e}.{gate}.weight` etc. (qwen3_moe, as transformers
    /// writes it).
    Separate {
        experts: &'static str,
        gate: &'static str,
        up: &'static str,
        down: &'static str,
    },
    /// One tensor per projection, experts first and no `.weight` suffix: `gate_up` (experts × 2·width × hidden,
    /// gate rows first) and `down` (experts × hidden × width) (Qwen3.5 MoE).
    Stacked { gate_up: &'static str, down: &'static str },
    /// One tensor per projection, each expert's matrix the transpose of a linear's weight and followed by a bias
    /// `{name}_bias`: `gate_up` (experts × hidden × 2·width, gate and up in alternate columns, gate first) with
    /// `gate_up_bias` (experts × 2·width), `down` (experts × width × hidden) with `down_bias` (experts × hidden)
    /// (gpt-oss).
    Interleaved { gate_up: &'static str, down: &'static str },
}

/// How an expert's gate and up projections make the input of its down projection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ExpertActivation {
    /// `act(gate) · up`, `act` the family's MLP activation.
    Glu,
    /// gpt-oss: `(clamp(up, −limit, limit) + 1) · g · σ(alpha · g)` with `g = min(gate, limit)`; transformers
    /// hard-codes alpha 1.702 and limit 7 and never reads `hidden_act`. `limit_key` (`swiglu_limit`, which
    /// released configs carry and other runtimes read) must agree with `limit` where a config gives it.
    ClampedSwiglu {
        alpha: f64,
        limit: f64,
        limit_key: &'static str,
    },
}

/// A shared expert: a SwiGLU MLP every token runs through (`mlp`: separate or fused projections), its output scaled
/// by σ of `gate` (hidden → 1, no bias) where the family has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedExpertTable {
    pub mlp: MlpLayout,
    pub gate: Option<&'static str>,
    pub width: SharedWidth,
}

/// Where a shared expert's MLP width comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedWidth {
    /// Its own key (Qwen3.5 MoE's `shared_expert_intermediate_size`).
    Key(&'static str),
    /// This key's count of routed experts' widths (DeepSeek-V3's and GLM-4.5's `n_shared_experts`, fused into one
    /// MLP).
    ExpertWidths(&'static str),
}

/// Whether a token's top-k probabilities are divided by their sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopKNorm {
    /// As this boolean key says (qwen3_moe's `norm_topk_prob`).
    Key(&'static str),
    /// Always (Qwen3.5 MoE).
    Always,
}

/// The MLP names most families use.
pub const HF_MLP: MlpLayout = MlpLayout::Separate {
    gate: "mlp.gate_proj",
    up: "mlp.up_proj",
    down: "mlp.down_proj",
};

/// How a family names the modules of a layer (after `model.layers.N.`) and the final norm (after `model.`), where
/// it does not use the names most families share ([`HF_NAMES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Names {
    /// The norms before attention (or the layer's other token mixer) and before the MLP, in a pre-norm layer.
    pub pre_attention_norm: &'static str,
    pub pre_mlp_norm: &'static str,
    pub o_proj: &'static str,
    pub q_norm: &'static str,
    pub k_norm: &'static str,
    pub final_norm: &'static str,
}

impl Names {
    /// The tensor names of a layer's norms under `placement`: (attention pre, attention post, MLP pre, MLP post).
    pub fn norms(&self, placement: NormPlacement) -> [Option<&'static str>; 4] {
        const POST_ATTN: &str = "post_attention_layernorm";
        const PRE_FF: &str = "pre_feedforward_layernorm";
        const POST_FF: &str = "post_feedforward_layernorm";
        match placement {
            NormPlacement::Pre => [Some(self.pre_attention_norm), None, Some(self.pre_mlp_norm), None],
            NormPlacement::Post => [None, Some(POST_ATTN), None, Some(POST_FF)],
            NormPlacement::Sandwich => [
                Some(self.pre_attention_norm),
                Some(POST_ATTN),
                Some(PRE_FF),
                Some(POST_FF),
            ],
        }
    }
}

pub const HF_NAMES: Names = Names {
    pre_attention_norm: "input_layernorm",
    pre_mlp_norm: "post_attention_layernorm",
    o_proj: "self_attn.o_proj",
    q_norm: "self_attn.q_norm",
    k_norm: "self_attn.k_norm",
    final_norm: "norm",
};

/// How a family's rope parameters are laid out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeLayout {
    /// One rope for every layer.
    Single,
    /// `rope_parameters` keyed by layer type (`full_attention`, `sliding_attention`); a legacy top-level
    /// `rope_scaling` applies to the full-attention layers only. `local_theta_key` gives the sliding layers' theta
    /// in legacy configs (gemma3's `rope_local_base_freq`); `sliding_theta` its default. Without `legacy`, a dict
    /// not keyed by layer type is refused (Gemma 4's rotary indexes it by layer type and fails on any other).
    PerLayerType {
        legacy: bool,
        local_theta_key: Option<&'static str>,
        sliding_theta: f64,
        full_theta: f64,
    },
}

pub struct Family {
    pub model_type: &'static str,
    pub architecture: Architecture,
    /// Keys the decoder reads beyond [`COMMON_KEYS`].
    pub keys: &'static [&'static str],
    /// transformers' defaults for the keys a config may leave out, as JSON.
    pub defaults: fn() -> Value,
    pub norms: NormPlacement,
    pub qk_norm: QkNorm,
    /// The boolean key that turns `qk_norm` on (GLM-4.5's `use_qk_norm`); None: the family always has it.
    pub qk_norm_key: Option<&'static str>,
    /// Norm weights are stored as `weight - 1` (gemma): the norm multiplies by `1 + weight`.
    pub norm_offset: f64,
    /// Embeddings multiplied by sqrt(hidden_size), rounded to the compute dtype (gemma).
    pub scaled_embeddings: bool,
    /// The MLP activation's key (`hidden_act`, or gemma2/3's `hidden_activation`); None: always SiLU (LFM2,
    /// whose config has no such key and whose transformers code hard-codes it).
    pub activation_key: Option<&'static str>,
    /// Phi-3's fused `qkv_proj`.
    pub fused_qkv: bool,
    pub mlp: MlpLayout,
    /// The key that holds the MLP's width (`intermediate_size`; Granite 4.0's `shared_intermediate_size`).
    pub intermediate_key: &'static str,
    /// q/k/v carry biases whatever the config says (qwen2).
    pub qkv_bias_always: bool,
    /// `attention_bias` gives the output projection a bias too (llama); GLM-4.5's stays without one.
    pub o_bias_with_attention_bias: bool,
    pub sliding: DefaultSliding,
    pub rope: RopeLayout,
    /// transformers' default sizes, for configs that leave them out (Gemma 3's vision-language `text_config` has
    /// no `vocab_size` or head count). The checkpoint's tensor shapes are checked against whatever results.
    pub sizes: Sizes,
    /// The rope dict's `llama_4_scaling_beta` scales queries by position (Ministral 3).
    pub position_query_scale: bool,
    pub names: Names,
    /// The attention output is gated per channel by a second half of `q_proj` (Qwen3.5: `o(attn · σ(gate))`).
    pub attention_output_gate: bool,
    /// The rope dict's multimodal sections (`mrope_section`, `mrope_interleaved`), which text positions make the
    /// plain rope (all three position streams are the token's position), are read and dropped (Qwen3.5).
    pub text_mrope: bool,
    /// Checkpoint tensors transformers drops when loading (Qwen3.5's multi-token-prediction head `mtp.*`): left
    /// unread as it leaves them, and written back unchanged.
    pub dropped_tensors: &'static [&'static str],
    /// The family's mixture-of-experts MLP, for the layers that have one.
    pub experts: Option<ExpertTable>,
    /// Each attention head has a learned logit `self_attn.sinks` that joins its softmax as one more key with no
    /// value (gpt-oss): it takes a share of every row's probability, so the row may attend to nothing.
    pub attention_sinks: bool,
    /// Multi-head latent attention (DeepSeek-V3, GLM-4.7-Flash): queries through a low-rank pair where
    /// `q_lora_rank` is set, keys and values from one compressed projection, rotary on a part of each head shared
    /// by every head's key ([`crate::config::LatentAttention`]).
    pub latent_attention: bool,
    /// Keys released configs carry that transformers never reads, accepted only at the value that describes what
    /// it does compute (JSON text): DeepSeek-V3's `scoring_func` "sigmoid", `topk_method` "noaux_tc".
    pub agreeing_keys: &'static [(&'static str, &'static str)],
    /// How a Gated DeltaNet layer's input projections are stored.
    pub delta_projections: DeltaProjections,
    /// EXAONE 4: when config.json sets `sliding_window`, the full-attention layers take no rope (NoPE).
    pub nope_full_layers_when_sliding: bool,
    /// One key that gives every projection a bias, attention's and the MLP's (ERNIE 4.5's `use_bias`).
    pub all_bias_key: Option<&'static str>,
    /// The rotation turns pairs of adjacent dimensions (GPT-J's, ERNIE 4.5's), not the two halves of a head.
    pub rope_interleaved: bool,
    /// q·k is multiplied by this, whatever the head width (Gemma 4: 1, its q/k norms set the scale); None: the
    /// family's query scale keys, or 1/sqrt(head_dim).
    pub attention_scale: Option<f64>,
    /// Full-attention layers read `global_head_dim`, `attention_k_eq_v` and `num_global_key_value_heads` (Gemma 4:
    /// wider heads, fewer key/value heads, values from the key projection).
    pub global_attention_shape: bool,
    /// Each value head is RMS-normalised without a weight (Gemma 4's `v_norm`).
    pub value_norm: bool,
    /// Each layer's output is multiplied by its `layer_scalar` buffer (Gemma 4).
    pub layer_scalar: bool,
    /// Keys the decoder reads only switched off (null, 0 or false after the defaults), with what they would switch
    /// on: a config that turns one on is refused by name.
    pub off_only_keys: &'static [(&'static str, &'static str)],
    /// The last layer attends in full whatever the pattern or `layer_types` says (Gemma 4's config forces it).
    pub last_layer_full: bool,
}

/// A Gated DeltaNet layer's input projections (after `linear_attn.`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaProjections {
    /// Qwen3.5: `in_proj_qkv` (all queries, all keys, all values), `in_proj_z`, `in_proj_b`, `in_proj_a`.
    Separate,
    /// Qwen3-Next: `in_proj_qkvz` grouped by key head (its query, key, then its value heads' values and gates) and
    /// `in_proj_ba` grouped the same way (its value heads' b, then their a).
    Grouped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub vocab: u64,
    pub hidden: u64,
    pub intermediate: u64,
    pub layers: u64,
    pub heads: u64,
}

/// A vision-language wrapper whose text tower FreezeTune trains on text: config.json holds the decoder under
/// `text_config`; images are never run, so the vision tower and projector (and the top-level keys that configure
/// them) stay frozen and are written back unchanged.
pub struct Wrapper {
    pub model_type: &'static str,
    /// The text towers' `model_type`s FreezeTune can train inside it; the first when `text_config` names none.
    pub text_types: &'static [&'static str],
    /// Whether the wrapper applies the text tower's `final_logit_softcapping` (Gemma 3's does not).
    pub final_softcap: bool,
}

pub const WRAPPERS: [Wrapper; 5] = [
    // Gemma 3 4B, 12B, 27B.
    Wrapper {
        model_type: "gemma3",
        text_types: &["gemma3_text"],
        final_softcap: false,
    },
    // Qwen3.5 (0.8B, 2B, 4B, 9B, 27B): every released checkpoint is the vision-language class.
    Wrapper {
        model_type: "qwen3_5",
        text_types: &["qwen3_5_text"],
        final_softcap: false,
    },
    // Qwen3.5 MoE: released as the vision-language class too.
    Wrapper {
        model_type: "qwen3_5_moe",
        text_types: &["qwen3_5_moe_text"],
        final_softcap: false,
    },
    // Gemma 4: every released checkpoint is the multimodal class (vision and audio towers beside the text one).
    Wrapper {
        model_type: "gemma4",
        text_types: &["gemma4_text"],
        final_softcap: true,
    },
    // Ministral 3 (3B, 8B, 14B) and Mistral Small 3.1 / 3.2.
    Wrapper {
        model_type: "mistral3",
        text_types: &["mistral", "ministral3"],
        final_softcap: true,
    },
];

/// The wrapper of a `model_type`, if it is one.
pub fn wrapper(model_type: &str) -> Option<&'static Wrapper> {
    WRAPPERS.iter().find(|w| w.model_type == model_type)
}

/// Keys every family reads: the shapes, the norm epsilon, rope, tied embeddings. `attention_dropout` is read to
/// refuse a non-zero value (FreezeTune trains without dropout), `quantization_config` to refuse what it cannot read.
pub const COMMON_KEYS: [&str; 16] = [
    "architectures",
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "tie_word_embeddings",
    "attention_dropout",
    // Read to refuse a quantized checkpoint, except the ones the weight reader dequantizes exactly (MXFP4, FP8).
    "quantization_config",
];

/// Keys that never change a decoder's forward pass: bookkeeping, token ids, generation defaults, the context
/// length (read where a rope type needs it). Keys starting with `_` are private metadata and pass too.
pub const INERT_KEYS: [&str; 58] = [
    "transformers_version",
    "dtype",
    "torch_dtype",
    "initializer_range",
    "use_cache",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "sep_token_id",
    "decoder_start_token_id",
    "max_position_embeddings",
    "id2label",
    "label2id",
    "return_dict",
    "output_hidden_states",
    "output_attentions",
    "use_return_dict",
    "is_encoder_decoder",
    "is_decoder",
    "add_cross_attention",
    "cross_attention_hidden_size",
    "tie_encoder_decoder",
    "problem_type",
    "chunk_size_feed_forward",
    "auto_map",
    "tokenizer_class",
    "finetuning_task",
    "task_specific_params",
    "prefix",
    "torchscript",
    "use_bfloat16",
    "tf_legacy_loss",
    "pruned_heads",
    "cache_implementation",
    // Llama's tensor-parallel split of its matmuls: the same math (transformers 5 ignores it).
    "pretraining_tp",
    "unsloth_version",
    "unsloth_fixed",
    "model_name",
    "attn_implementation",
    // Generation defaults of old configs.
    "max_length",
    "min_length",
    "do_sample",
    "early_stopping",
    "num_beams",
    "num_beam_groups",
    "diversity_penalty",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "repetition_penalty",
    "length_penalty",
    "no_repeat_ngram_size",
    "bad_words_ids",
    "num_return_sequences",
    "output_scores",
    "return_dict_in_generate",
    "forced_eos_token_id",
];

const LLAMA: Family = Family {
    model_type: "llama",
    sizes: Sizes {
        vocab: 32000,
        hidden: 4096,
        intermediate: 11008,
        layers: 32,
        heads: 32,
    },
    architecture: Architecture::Llama,
    keys: &["hidden_act", "attention_bias", "mlp_bias"],
    defaults: || json!({"hidden_act": "silu", "rms_norm_eps": 1e-6, "attention_bias": false, "mlp_bias": false}),
    norms: NormPlacement::Pre,
    qk_norm: QkNorm::None,
    qk_norm_key: None,
    norm_offset: 0.0,
    scaled_embeddings: false,
    activation_key: Some("hidden_act"),
    fused_qkv: false,
    mlp: HF_MLP,
    intermediate_key: "intermediate_size",
    qkv_bias_always: false,
    o_bias_with_attention_bias: true,
    sliding: DefaultSliding::Never,
    rope: RopeLayout::Single,
    position_query_scale: false,
    names: HF_NAMES,
    attention_output_gate: false,
    text_mrope: false,
    dropped_tensors: &[],
    experts: None,
    attention_sinks: false,
    latent_attention: false,
    agreeing_keys: &[],
    delta_projections: DeltaProjections::Separate,
    nope_full_layers_when_sliding: false,
    all_bias_key: None,
    rope_interleaved: false,
    attention_scale: None,
    global_attention_shape: false,
    value_norm: false,
    layer_scalar: false,
    off_only_keys: &[],
    last_layer_full: false,
};

/// The config keys Qwen3.5's Gated DeltaNet and gated attention layers read, then a family's own.
macro_rules! delta_net_keys {
    ($($own:literal),* $(,)?) => {
        &[
            "hidden_act",
            "attention_bias",
            "layer_types",
            "full_attention_interval",
            "linear_conv_kernel_dim",
            "linear_key_head_dim",
            "linear_value_head_dim",
            "linear_num_key_heads",
            "linear_num_value_heads",
            "partial_rotary_factor",
            $($own),*
        ]
    };
}

/// Experts stored one linear each under `mlp.experts.{e}` with `gate_proj`, `up_proj`, `down_proj` (Qwen3 MoE,
/// OLMoE, GLM-4.5, Qwen3-Next).
const HF_EXPERTS: ExpertWeights = ExpertWeights::Separate {
    experts: "mlp.experts",
    gate: "gate_proj",
    up: "up_proj",
    down: "down_proj",
};

/// Qwen3 MoE's sparse MLP (Qwen3-Next's, beside its shared expert).
const QWEN3_MOE_EXPERTS: ExpertTable = ExpertTable {
    router: "mlp.gate",
    router_bias: false,
    weights: HF_EXPERTS,
    count_keys: ["num_experts", "num_local_experts"],
    top_k_alias: None,
    width_key: "moe_intermediate_size",
    normalize: TopKNorm::Key("norm_topk_prob"),
    routing: Routing::Softmax,
    sparse_layers: SparseLayers::StepAndDense {
        step: "decoder_sparse_step",
        dense: "mlp_only_layers",
    },
    shared: None,
    router_loss: true,
    top_k_key: "num_experts_per_tok",
    beside_dense: None,
    weigh_in_f32: false,
    activation: ExpertActivation::Glu,
};

/// Granite 4.0-H's sparse MLP (H-tiny, H-small): stacked experts beside the dense shared MLP every layer has; the
/// router's top-k logits go through a softmax among themselves (the same as renormalising the top-k of a softmax
/// over all), in f32, rounded to the activations' dtype before they weigh the outputs.
const GRANITE_EXPERTS: ExpertTable = ExpertTable {
    router: "block_sparse_moe.router.layer",
    router_bias: false,
    weights: ExpertWeights::Stacked {
        gate_up: "block_sparse_moe.input_linear.weight",
        down: "block_sparse_moe.output_linear.weight",
    },
    // transformers' config has no other name for it.
    count_keys: ["num_local_experts", "num_local_experts"],
    top_k_alias: None,
    width_key: "intermediate_size",
    normalize: TopKNorm::Always,
    routing: Routing::Softmax,
    sparse_layers: SparseLayers::Every,
    shared: Some(SharedExpertTable {
        mlp: MlpLayout::Fused {
            gate_up: "shared_mlp.input_linear",
            down: "shared_mlp.output_linear",
        },
        gate: None,
        width: SharedWidth::Key("shared_intermediate_size"),
    }),
    router_loss: false,
    top_k_key: "num_experts_per_tok",
    beside_dense: None,
    weigh_in_f32: false,
    activation: ExpertActivation::Glu,
};

/// Gemma 4 26B A4B: stacked experts (the family's GELU-tanh GLU) beside the dense MLP on every layer when
/// `enable_moe_block`, a router with its own input norm and scales.
const GEMMA4_EXPERTS: ExpertTable = ExpertTable {
    router: "router.proj",
    router_bias: false,
    weights: ExpertWeights::Stacked {
        gate_up: "experts.gate_up_proj",
        down: "experts.down_proj",
    },
    count_keys: ["num_experts", "num_experts"],
    top_k_alias: None,
    width_key: "moe_intermediate_size",
    normalize: TopKNorm::Always,
    routing: Routing::NormedSoftmax {
        input_scale: "router.scale",
        expert_scale: "router.per_expert_scale",
    },
    sparse_layers: SparseLayers::EveryWhen("enable_moe_block"),
    shared: None,
    // Its router never casts the weights back: under autocast they stay f32 (softmax and the f32 per-expert
    // scale), so the experts' outputs are weighed in f32 and then rounded, as Mixtral's are.
    weigh_in_f32: true,
    activation: ExpertActivation::Glu,
    // transformers 5.6's Gemma 4 adds no load-balancing loss.
    router_loss: false,
    top_k_key: "top_k_experts",
    beside_dense: Some(BesideDense {
        dense_post: "post_feedforward_layernorm_1",
        experts_pre: "pre_feedforward_layernorm_2",
        experts_post: "post_feedforward_layernorm_2",
    }),
};

/// Qwen3.5 MoE's and Qwen3-Next's shared expert, scaled by σ of its gate.
const QWEN_SHARED_EXPERT: SharedExpertTable = SharedExpertTable {
    mlp: MlpLayout::Separate {
        gate: "mlp.shared_expert.gate_proj",
        up: "mlp.shared_expert.up_proj",
        down: "mlp.shared_expert.down_proj",
    },
    gate: Some("mlp.shared_expert_gate"),
    width: SharedWidth::Key("shared_expert_intermediate_size"),
};

const QWEN3_5: Family = Family {
    model_type: "qwen3_5_text",
    sizes: Sizes {
        vocab: 248320,
        hidden: 4096,
        intermediate: 12288,
        layers: 32,
        heads: 16,
    },
    architecture: Architecture::Qwen3_5,
    keys: delta_net_keys![
        "attn_output_gate",
        "mamba_ssm_dtype",
        "mtp_num_hidden_layers",
        "mtp_use_dedicated_embeddings"
    ],
    defaults: || {
        json!({"hidden_act": "silu", "rms_norm_eps": 1e-6, "attention_bias": false, "head_dim": 256,
        "num_key_value_heads": 4, "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128,
        "linear_value_head_dim": 128, "linear_num_key_heads": 16, "linear_num_value_heads": 32,
        "partial_rotary_factor": 0.25, "full_attention_interval": 4})
    },
    norm_offset: 1.0,
    qk_norm: QkNorm::PerHead,
    attention_output_gate: true,
    text_mrope: true,
    dropped_tensors: &["mtp."],
    ..LLAMA
};

/// GLM-4.5's sparse MLP: DeepSeek-V3's routing and a shared MLP.
const GLM4_MOE_EXPERTS: ExpertTable = ExpertTable {
    router: "mlp.gate",
    router_bias: false,
    weights: HF_EXPERTS,
    count_keys: ["n_routed_experts", "num_local_experts"],
    top_k_alias: None,
    width_key: "moe_intermediate_size",
    normalize: TopKNorm::Key("norm_topk_prob"),
    routing: Routing::SigmoidGroups {
        correction_bias: "e_score_correction_bias",
        groups_key: "n_group",
        top_groups_key: "topk_group",
        scale_key: "routed_scaling_factor",
    },
    sparse_layers: SparseLayers::AfterFirstDense("first_k_dense_replace"),
    shared: Some(SharedExpertTable {
        mlp: MlpLayout::Separate {
            gate: "mlp.shared_experts.gate_proj",
            up: "mlp.shared_experts.up_proj",
            down: "mlp.shared_experts.down_proj",
        },
        gate: None,
        width: SharedWidth::ExpertWidths("n_shared_experts"),
    }),
    // The sigmoid scores are in the activations' dtype under autocast (moe/routing.rs), and so are the weights.
    router_loss: true,
    top_k_key: "num_experts_per_tok",
    beside_dense: None,
    weigh_in_f32: false,
    activation: ExpertActivation::Glu,
};

// GLM-4.5, 4.6 and 4.7 (355B-A32B; Air, 106B-A12B): llama's layers with biased q/k/v, per-head q/k norms where
// `use_qk_norm` says, partial rotary; a dense MLP on the first `first_k_dense_replace` layers, then experts routed
// DeepSeek-V3's way (sigmoid scores, a correction bias that only picks, groups, a scale) beside a shared MLP of
// `n_shared_experts` experts' width. Released checkpoints carry `num_nextn_predict_layers` multi-token-prediction
// layers after the last one, which transformers drops.
const GLM4_MOE: Family = Family {
    model_type: "glm4_moe",
    sizes: Sizes {
        vocab: 151552,
        hidden: 4096,
        intermediate: 10944,
        layers: 46,
        heads: 96,
    },
    architecture: Architecture::Glm4Moe,
    keys: &[
        "hidden_act",
        "attention_bias",
        "partial_rotary_factor",
        "use_qk_norm",
        "n_routed_experts",
        "num_local_experts",
        "num_experts_per_tok",
        "moe_intermediate_size",
        "n_shared_experts",
        "routed_scaling_factor",
        "n_group",
        "topk_group",
        "first_k_dense_replace",
        "norm_topk_prob",
        "num_nextn_predict_layers",
    ],
    defaults: || {
        json!({"hidden_act": "silu", "rms_norm_eps": 1e-5, "attention_bias": false, "num_key_value_heads": 8,
        "partial_rotary_factor": 0.5, "use_qk_norm": false, "moe_intermediate_size": 1408,
        "num_experts_per_tok": 8, "n_shared_experts": 1, "n_routed_experts": 128, "routed_scaling_factor": 1.0,
        "n_group": 1, "topk_group": 1, "first_k_dense_replace": 1, "norm_topk_prob": true,
        "num_nextn_predict_layers": 0})
    },
    qk_norm: QkNorm::PerHead,
    qk_norm_key: Some("use_qk_norm"),
    o_bias_with_attention_bias: false,
    experts: Some(GLM4_MOE_EXPERTS),
    ..LLAMA
};

/// The config keys DeepSeek-V3's latent attention and GLM-4.5's routing read, then a family's own.
macro_rules! latent_moe_keys {
    ($($own:literal),* $(,)?) => {
        &[
            "hidden_act",
            "attention_bias",
            "q_lora_rank",
            "kv_lora_rank",
            "qk_nope_head_dim",
            "qk_rope_head_dim",
            "v_head_dim",
            "rope_interleave",
            // Derived (nope + rope) and recomputed by transformers whatever the file says.
            "qk_head_dim",
            "n_routed_experts",
            "num_local_experts",
            "num_experts_per_tok",
            "moe_intermediate_size",
            "n_shared_experts",
            "routed_scaling_factor",
            "n_group",
            "topk_group",
            "norm_topk_prob",
            "num_nextn_predict_layers",
            $($own),*
        ]
    };
}

// DeepSeek-V3 (and V3.1, Kimi K2, Moonlight, as bf16 checkpoints): multi-head latent attention and GLM-4.5's
// routing. Released configs carry keys of DeepSeek's own code that transformers never reads: `scoring_func` and
// `topk_method` must name what it computes, `moe_layer_freq` must be 1; `ep_size` (expert parallelism),
// `aux_loss_alpha` and `seq_aux` (a loss transformers' port does not compute) change nothing it runs.
const DEEPSEEK_V3: Family = Family {
    model_type: "deepseek_v3",
    sizes: Sizes {
        vocab: 129280,
        hidden: 7168,
        intermediate: 18432,
        layers: 61,
        heads: 128,
    },
    architecture: Architecture::DeepseekV3,
    keys: latent_moe_keys!["first_k_dense_replace", "ep_size", "aux_loss_alpha", "seq_aux"],
    defaults: || {
        json!({"hidden_act": "silu", "rms_norm_eps": 1e-6, "attention_bias": false, "num_key_value_heads": 128,
        "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
        "v_head_dim": 128, "rope_interleave": true, "moe_intermediate_size": 2048, "num_experts_per_tok": 8,
        "n_shared_experts": 1, "n_routed_experts": 256, "routed_scaling_factor": 2.5, "n_group": 8,
        "topk_group": 4, "first_k_dense_replace": 3, "norm_topk_prob": true, "num_nextn_predict_layers": 0})
    },
    latent_attention: true,
    // The latent projections and o_proj take `attention_bias`; there is no q/k norm.
    o_bias_with_attention_bias: true,
    qk_norm: QkNorm::None,
    qk_norm_key: None,
    agreeing_keys: &[
        ("scoring_func", "\"sigmoid\""),
        ("topk_method", "\"noaux_tc\""),
        ("moe_layer_freq", "1"),
    ],
    ..GLM4_MOE
};

/// The families, by `model_type`.
pub static FAMILIES: [Family; 28] = [
    LLAMA,
    Family {
        model_type: "mistral",
        sizes: Sizes {
            vocab: 32000,
            hidden: 4096,
            intermediate: 14336,
            layers: 32,
            heads: 32,
        },
        architecture: Architecture::Mistral,
        keys: &["hidden_act", "sliding_window"],
        defaults: || {
            json!({"hidden_act": "silu", "rms_norm_eps": 1e-6, "num_key_value_heads": 8,
            "sliding_window": 4096})
        },
        sliding: DefaultSliding::EveryLayer,
        ..LLAMA
    },
    Family {
        model_type: "ministral3",
        sizes: Sizes {
            vocab: 131072,
            hidden: 4096,
            intermediate: 14336,
            layers: 34,
            heads: 32,
        },
        architecture: Architecture::Ministral3,
        keys: &["hidden_act", "sliding_window"],
        defaults: || {
            json!({"hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_parameters": {"rope_type": "yarn",
            "rope_theta": 1_000_000.0, "factor": 16.0, "original_max_position_embeddings": 16384, "beta_fast": 32.0,
            "beta_slow": 1.0, "mscale_all_dim": 1.0, "mscale": 1.0, "llama_4_scaling_beta": 0.1}})
        },
        sliding: DefaultSliding::EveryLayer,
        position_query_scale: true,
        ..LLAMA
    },
    Family {
        model_type: "qwen2",
        sizes: Sizes {
            vocab: 151936,
            hidden: 4096,
            intermediate: 22016,
            layers: 32,
            heads: 32,
        },
        architecture: Architecture::Qwen2,
        keys: &[
            "hidden_act",
            "use_sliding_window",
            "sliding_window",
            "max_window_layers",
            "layer_types",
        ],
        defaults: || {
            json!({"hidden_act": "silu", "rms_norm_eps": 1e-6, "use_sliding_window": false,
            "sliding_window": 4096, "max_window_layers": 28})
        },
        qkv_bias_always: true,
        sliding: DefaultSliding::FromMaxWindowLayers,
        ..LLAMA
    },
    Family {
        model_type: "qwen3",
        sizes: Sizes {
            vocab: 151936,
            hidden: 4096,
            intermediate: 22016,
            layers: 32,
            heads: 32,
        },
        architecture: Architecture::Qwen3,
        keys: &[
            "hidden_act",
            "attention_bias",
            "use_sliding_window",
            "sliding_window",
            "max_window_layers",
            "layer_types",
        ],
        defaults: || {
            json!({"hidden_act": "silu", "rms_norm_eps": 1e-6, "head_dim": 128, "attention_bias": false,
            "use_sliding_window": false, "sliding_window": 4096, "max_window_layers": 28})
        },
        qk_norm: QkNorm::PerHead,
        sliding: DefaultSliding::FromMaxWindowLayers,
        ..LLAMA
    },
    // Mixtral 8x7B and 8x22B: Mistral's attention and a sparse MLP on every layer (`block_sparse_moe`, experts'
    // `w1`/`w3`/`w2`), the top 2 of 8 always renormalised. `router_jitter_noise` (training-only noise on the router's
    // input) is refused unless 0.
    Family {
        model_type: "mixtral",
        sizes: Sizes {
            vocab: 32000,
            hidden: 4096,
            intermediate: 14336,
            layers: 32,
            heads: 32,
        },
        architecture: Architecture::Mixtral,
        keys: &[
            "hidden_act",
            "sliding_window",
            "num_local_experts",
            "num_experts",
            "num_experts_per_tok",
            "output_router_logits",
            "router_aux_loss_coef",
            "router_jitter_noise",
        ],
        defaults: || {
            json!({"hidden_act": "silu", "rms_norm_eps": 1e-5, "num_key_value_heads": 8, "num_experts_per_tok": 2,
            "output_router_logits": false, "router_aux_loss_coef": 0.001, "router_jitter_noise": 0.0})
        },
        sliding: DefaultSliding::EveryLayer,
        experts: Some(ExpertTable {
            router: "block_sparse_moe.gate",
            router_bias: false,
            weights: ExpertWeights::Separate {
                experts: "block_sparse_moe.experts",
                gate: "w1",
                up: "w3",
                down: "w2",
            },
            count_keys: ["num_local_experts", "num_experts"],
            top_k_alias: None,
            width_key: "intermediate_size",
            normalize: TopKNorm::Always,
            routing: Routing::Softmax,
            sparse_layers: SparseLayers::Every,
            shared: None,
            router_loss: true,
            top_k_key: "num_experts_per_tok",
            beside_dense: None,
            weigh_in_f32: true,
            activation: ExpertActivation::Glu,
        }),
        ..LLAMA
    },
    // OLMoE (1B-7B): pre-norm layers with OLMo's q/k norms over the whole projection and a sparse MLP on every
    // layer (`norm_topk_prob`, false in the released models). `clip_qkv` is refused unless null.
    Family {
        model_type: "olmoe",
        sizes: Sizes {
            vocab: 50304,
            hidden: 2048,
            intermediate: 2048,
            layers: 16,
            heads: 16,
        },
        architecture: Architecture::Olmoe,
        keys: &[
            "hidden_act",
            "attention_bias",
            "num_experts",
            "num_local_experts",
            "num_experts_per_tok",
            "norm_topk_prob",
            "output_router_logits",
            "router_aux_loss_coef",
        ],
        defaults: || {
            json!({"hidden_act": "silu", "rms_norm_eps": 1e-5, "attention_bias": false, "num_experts_per_tok": 8,
            "norm_topk_prob": false, "output_router_logits": false, "router_aux_loss_coef": 0.01})
        },
        qk_norm: QkNorm::Whole,
        experts: Some(ExpertTable {
            router: "mlp.gate",
            router_bias: false,
            weights: HF_EXPERTS,
            count_keys: ["num_experts", "num_local_experts"],
            top_k_alias: None,
            width_key: "intermediate_size",
            normalize: TopKNorm::Key("norm_topk_prob"),
            routing: Routing::Softmax,
            sparse_layers: SparseLayers::Every,
            shared: None,
            router_loss: true,
            top_k_key: "num_experts_per_tok",
            beside_dense: None,
            weigh_in_f32: false,
            activation: ExpertActivation::Glu,
        }),
        ..LLAMA
    },
    // Qwen3 MoE (Qwen3-30B-A3B, Qwen3-235B-A22B, Qwen3-Coder-30B-A3B): Qwen3's attention, a sparse MLP of
    // `num_experts` on the layers `decoder_sparse_step` and `mlp_only_layers` pick (a dense one of
    // `intermediate_size` elsewhere). `max_window_layers` is in released configs, but transformers' qwen3_moe never
    // reads it: its window, when `use_sliding_window` is on, is on every layer. `router_aux_loss_coef` weighs a
    // load-balancing loss only `output_router_logits: true` adds (moe/router_loss.rs).
    Family {
        model_type: "qwen3_moe",
        sizes: Sizes {
            vocab: 151936,
            hidden: 2048,
            intermediate: 6144,
            layers: 24,
            heads: 32,
        },
        architecture: Architecture::Qwen3Moe,
        keys: &[
            "hidden_act",
            "attention_bias",
            "use_sliding_window",
            "sliding_window",
            "max_window_layers",
            "num_experts",
            "num_local_experts",
            "num_experts_per_tok",
            "moe_intermediate_size",
            "norm_topk_prob",
            "decoder_sparse_step",
            "mlp_only_layers",
            "output_router_logits",
            "router_aux_loss_coef",
        ],
        defaults: || {
            json!({"hidden_act": "silu", "rms_norm_eps": 1e-6, "num_key_value_heads": 4, "attention_bias": false,
            "use_sliding_window": false, "sliding_window": 4096, "num_experts_per_tok": 8,
            "moe_intermediate_size": 768, "norm_topk_prob": false, "decoder_sparse_step": 1, "mlp_only_layers": [],
            "output_router_logits": false, "router_aux_loss_coef": 0.001})
        },
        qk_norm: QkNorm::PerHead,
        sliding: DefaultSliding::EveryLayerWhenUsed,
        experts: Some(QWEN3_MOE_EXPERTS),
        ..LLAMA
    },
    // gpt-oss (20B, 120B): attention with a learned sink per head and biases on every projection, sliding
    // (`sliding_window`, 128) and full layers in turn, YaRN; a sparse MLP on every layer whose router has a bias
    // and whose top-k logits go through a softmax (the same weights as the softmax's top k renormalised), experts
    // stacked transposed with gate and up interleaved and biases, and the clamped SwiGLU. The released configs
    // carry keys transformers never reads: `hidden_act`; `initial_context_length` (the rope's original context);
    // `experts_per_token` and `swiglu_limit`, which must then agree with what it does use. The released
    // checkpoints hold the experts in MXFP4, which the weight reader unpacks to the bf16 values transformers does.
    Family {
        model_type: "gpt_oss",
        sizes: Sizes {
            vocab: 201088,
            hidden: 2880,
            intermediate: 2880,
            layers: 36,
            heads: 64,
        },
        architecture: Architecture::GptOss,
        keys: &[
            "hidden_act",
            "attention_bias",
            "sliding_window",
            "layer_types",
            "num_local_experts",
            "num_experts",
            "num_experts_per_tok",
            "output_router_logits",
            "router_aux_loss_coef",
            "experts_per_token",
            "swiglu_limit",
            "initial_context_length",
        ],
        defaults: || {
            json!({"hidden_act": "silu", "rms_norm_eps": 1e-5, "attention_bias": true, "head_dim": 64,
            "num_key_value_heads": 8, "sliding_window": 128, "num_local_experts": 128, "num_experts_per_tok": 4,
            "output_router_logits": false, "router_aux_loss_coef": 0.001, "rope_parameters": {"rope_type": "yarn",
            "rope_theta": 150000.0, "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": false,
            "original_max_position_embeddings": 4096}})
        },
        activation_key: None,
        sliding: DefaultSliding::AllButEvery(2),
        experts: Some(ExpertTable {
            router: "mlp.router",
            router_bias: true,
            weights: ExpertWeights::Interleaved {
                gate_up: "mlp.experts.gate_up_proj",
                down: "mlp.experts.down_proj",
            },
            count_keys: ["num_local_experts", "num_experts"],
            top_k_alias: Some("experts_per_token"),
            width_key: "intermediate_size",
            normalize: TopKNorm::Always,
            routing: Routing::Softmax,
            sparse_layers: SparseLayers::Every,
            shared: None,
            router_loss: true,
            top_k_key: "num_experts_per_tok",
            beside_dense: None,
            weigh_in_f32: false,
            activation: ExpertActivation::ClampedSwiglu {
                alpha: 1.702,
                limit: 7.0,
                limit_key: "swiglu_limit",
            },
        }),
        attention_sinks: true,
        ..LLAMA
    },
    // `full_attn_mod`, `interpolate_factor`: Phi-4-mini's config carries them; transformers never reads them.
    Family {
        model_type: "phi3",
        sizes: Sizes {
            vocab: 32064,
            hidden: 3072,
            intermediate: 8192,
            layers: 32,
            heads: 32,
        },
        architecture: Architecture::Phi3,
        keys: &[
            "hidden_act",
            "resid_pdrop",
            "embd_pdrop",
            "original_max_position_embeddings",
            "sliding_window",
            "partial_rotary_factor",
            "full_attn_mod",
            "interpolate_factor",
        ],
        defaults: || json!({"hidden_act": "silu", "rms_norm_eps": 1e-5, "resid_pdrop": 0.0, "embd_pdrop": 0.0}),
        fused_qkv: true,
        mlp: MlpLayout::Fused {
            gate_up: "mlp.gate_up_proj",
            down: "mlp.down_proj",
        },
        sliding: DefaultSliding::EveryLayer,
        ..LLAMA
    },
    Family {
        model_type: "gemma",
        sizes: Sizes {
            vocab: 256000,
            hidden: 3072,
            intermediate: 24576,
            layers: 28,
            heads: 16,
        },
        architecture: Architecture::Gemma,
        keys: &[
            "hidden_act",
            "hidden_activation",
            "attention_bias",
            "use_bidirectional_attention",
        ],
        defaults: || {
            json!({"hidden_act": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "head_dim": 256,
            "tie_word_embeddings": true, "attention_bias": false})
        },
        norm_offset: 1.0,
        scaled_embeddings: true,
        ..LLAMA
    },
    Family {
        model_type: "gemma2",
        sizes: Sizes {
            vocab: 256000,
            hidden: 2304,
            intermediate: 9216,
            layers: 26,
            heads: 8,
        },
        architecture: Architecture::Gemma2,
        // `sliding_window_size`: early Gemma 2 configs repeat the window under this name (checked equal).
        keys: &[
            "hidden_activation",
            "hidden_act",
            "attention_bias",
            "query_pre_attn_scalar",
            "sliding_window",
            "sliding_window_size",
            "layer_types",
            "final_logit_softcapping",
            "attn_logit_softcapping",
            "use_bidirectional_attention",
        ],
        defaults: || {
            json!({"hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "head_dim": 256,
            "num_key_value_heads": 4, "tie_word_embeddings": true, "attention_bias": false,
            "query_pre_attn_scalar": 256, "sliding_window": 4096, "final_logit_softcapping": 30.0,
            "attn_logit_softcapping": 50.0})
        },
        norms: NormPlacement::Sandwich,
        norm_offset: 1.0,
        scaled_embeddings: true,
        activation_key: Some("hidden_activation"),
        sliding: DefaultSliding::AllButEvery(2),
        ..LLAMA
    },
    Family {
        model_type: "gemma3_text",
        sizes: Sizes {
            vocab: 262208,
            hidden: 2304,
            intermediate: 9216,
            layers: 26,
            heads: 8,
        },
        architecture: Architecture::Gemma3,
        keys: &[
            "hidden_activation",
            "hidden_act",
            "attention_bias",
            "query_pre_attn_scalar",
            "sliding_window",
            "layer_types",
            "sliding_window_pattern",
            "final_logit_softcapping",
            "attn_logit_softcapping",
            "rope_local_base_freq",
            "use_bidirectional_attention",
        ],
        defaults: || {
            json!({"hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "head_dim": 256,
            "num_key_value_heads": 4, "tie_word_embeddings": true, "attention_bias": false,
            "query_pre_attn_scalar": 256, "sliding_window": 4096, "sliding_window_pattern": 6})
        },
        norms: NormPlacement::Sandwich,
        qk_norm: QkNorm::PerHead,
        norm_offset: 1.0,
        scaled_embeddings: true,
        activation_key: Some("hidden_activation"),
        sliding: DefaultSliding::AllButEvery(6),
        rope: RopeLayout::PerLayerType {
            legacy: true,
            local_theta_key: Some("rope_local_base_freq"),
            sliding_theta: 10_000.0,
            full_theta: 1_000_000.0,
        },
        ..LLAMA
    },
    Family {
        model_type: "gemma4_text",
        sizes: Sizes {
            vocab: 262144,
            hidden: 2304,
            intermediate: 9216,
            layers: 30,
            heads: 8,
        },
        architecture: Architecture::Gemma4,
        // `use_double_wide_mlp` widens only the layers sharing another's keys and values (shared_kv.rs), and
        // `vocab_size_per_layer_input` sizes only the per-layer embeddings (per_layer.rs).
        keys: &[
            "hidden_activation",
            "attention_bias",
            "sliding_window",
            "layer_types",
            "final_logit_softcapping",
            "use_bidirectional_attention",
            "global_head_dim",
            "num_global_key_value_heads",
            "attention_k_eq_v",
            "use_double_wide_mlp",
            "vocab_size_per_layer_input",
            "hidden_size_per_layer_input",
            "num_kv_shared_layers",
            "enable_moe_block",
            "num_experts",
            "top_k_experts",
            "moe_intermediate_size",
        ],
        defaults: || {
            json!({"hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "head_dim": 256,
            "num_key_value_heads": 4, "tie_word_embeddings": true, "attention_bias": false, "sliding_window": 512,
            "global_head_dim": 512, "hidden_size_per_layer_input": 256, "vocab_size_per_layer_input": 262_144,
            "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                    "rope_theta": 1_000_000.0}}})
        },
        norms: NormPlacement::Sandwich,
        qk_norm: QkNorm::PerHead,
        scaled_embeddings: true,
        activation_key: Some("hidden_activation"),
        sliding: DefaultSliding::AllButEvery(6),
        rope: RopeLayout::PerLayerType {
            legacy: false,
            local_theta_key: None,
            sliding_theta: 10_000.0,
            full_theta: 1_000_000.0,
        },
        attention_scale: Some(1.0),
        global_attention_shape: true,
        value_norm: true,
        layer_scalar: true,
        last_layer_full: true,
        experts: Some(GEMMA4_EXPERTS),
        off_only_keys: &[
            // Gemma 4's config reads neither: its ropes are `rope_parameters` by layer type.
            ("rope_scaling", "a legacy rope dict transformers' Gemma 4 never reads"),
            ("rope_theta", "a top-level rope base transformers' Gemma 4 never reads"),
        ],
        ..LLAMA
    },
    Family {
        model_type: "smollm3",
        sizes: Sizes {
            vocab: 128256,
            hidden: 2048,
            intermediate: 11008,
            layers: 36,
            heads: 16,
        },
        architecture: Architecture::SmolLM3,
        // `max_window_layers`: SmolLM3's released config carries it; transformers 5's SmolLM3 never reads it
        // (its windows follow the NoPE layers).
        keys: &[
            "hidden_act",
            "attention_bias",
            "mlp_bias",
            "use_sliding_window",
            "sliding_window",
            "no_rope_layers",
            "no_rope_layer_interval",
            "layer_types",
            "max_window_layers",
        ],
        defaults: || {
            json!({"hidden_act": "silu", "rms_norm_eps": 1e-6, "num_key_value_heads": 4,
            "tie_word_embeddings": true, "attention_bias": false, "mlp_bias": false, "use_sliding_window": false,
            "no_rope_layer_interval": 4, "rope_theta": 2_000_000.0})
        },
        sliding: DefaultSliding::NoRopeLayers,
        ..LLAMA
    },
    Family {
        model_type: "granite",
        sizes: Sizes {
            vocab: 32000,
            hidden: 4096,
            intermediate: 11008,
            layers: 32,
            heads: 32,
        },
        architecture: Architecture::Granite,
        keys: &[
            "hidden_act",
            "attention_bias",
            "mlp_bias",
            "embedding_multiplier",
            "logits_scaling",
            "residual_multiplier",
            "attention_multiplier",
        ],
        defaults: || {
            json!({"hidden_act": "silu", "rms_norm_eps": 1e-6, "attention_bias": false, "mlp_bias": false,
            "embedding_multiplier": 1.0, "logits_scaling": 1.0, "residual_multiplier": 1.0,
            "attention_multiplier": 1.0})
        },
        ..LLAMA
    },
    // Granite 4.0 (granite-4.0-micro, -350m, -1b) and 4.0-H (-h-micro, -h-350m, -h-1b, -h-tiny, -h-small):
    // attention layers, and Mamba 2 layers where `layer_types` says `mamba` (mamba.rs; the `mamba_*` keys size
    // them, `time_step_min`/`max` only initialise dt_bias); where `num_local_experts` is not 0, every layer's MLP
    // is its experts (`intermediate_size` wide) beside the shared MLP.
    Family {
        model_type: "granitemoehybrid",
        sizes: Sizes {
            vocab: 32000,
            hidden: 4096,
            intermediate: 11008,
            layers: 32,
            heads: 32,
        },
        architecture: Architecture::GraniteHybrid,
        keys: &[
            "hidden_act",
            "attention_bias",
            "embedding_multiplier",
            "logits_scaling",
            "residual_multiplier",
            "attention_multiplier",
            "layer_types",
            "layers_block_type",
            "position_embedding_type",
            "shared_intermediate_size",
            "num_local_experts",
            "num_experts_per_tok",
            "output_router_logits",
            "router_aux_loss_coef",
            "mamba_n_heads",
            "mamba_n_groups",
            "mamba_d_state",
            "mamba_d_head",
            "mamba_d_conv",
            "mamba_expand",
            "mamba_chunk_size",
            "mamba_conv_bias",
            "mamba_proj_bias",
            "time_step_limit",
            "time_step_min",
            "time_step_max",
        ],
        defaults: || {
            json!({"hidden_act": "silu", "rms_norm_eps": 1e-6, "attention_bias": false,
            "embedding_multiplier": 1.0, "logits_scaling": 1.0, "residual_multiplier": 1.0,
            "attention_multiplier": 1.0, "shared_intermediate_size": 1024, "num_local_experts": 8,
            "num_experts_per_tok": 2,
            "position_embedding_type": null})
        },
        mlp: MlpLayout::Fused {
            gate_up: "shared_mlp.input_linear",
            down: "shared_mlp.output_linear",
        },
        intermediate_key: "shared_intermediate_size",
        experts: Some(GRANITE_EXPERTS),
        ..LLAMA
    },
    Family {
        model_type: "olmo2",
        sizes: Sizes {
            vocab: 50304,
            hidden: 4096,
            intermediate: 11008,
            layers: 32,
            heads: 32,
        },
        architecture: Architecture::Olmo2,
        keys: &["hidden_act", "attention_bias"],
        defaults: || json!({"hidden_act": "silu", "rms_norm_eps": 1e-5, "attention_bias": false}),
        norms: NormPlacement::Post,
        qk_norm: QkNorm::Whole,
        ..LLAMA
    },
    Family {
        model_type: "olmo3",
        sizes: Sizes {
            vocab: 50304,
            hidden: 4096,
            intermediate: 11008,
            layers: 32,
            heads: 32,
        },
        architecture: Architecture::Olmo3,
        keys: &["hidden_act", "attention_bias", "sliding_window", "layer_types"],
        defaults: || {
            json!({"hidden_act": "silu", "rms_norm_eps": 1e-5, "attention_bias": false,
            "sliding_window": 4096, "rope_theta": 500_000.0})
        },
        norms: NormPlacement::Post,
        qk_norm: QkNorm::Whole,
        sliding: DefaultSliding::AllButEvery(4),
        rope: RopeLayout::PerLayerType {
            legacy: true,
            local_theta_key: None,
            sliding_theta: 500_000.0,
            full_theta: 500_000.0,
        },
        ..LLAMA
    },
    // LFM2 and LFM2.5: gated short-convolution layers (`conv` in `layer_types`) mixed with full attention. Its
    // configs carry the original training code's keys, which transformers never reads (init scales, duplicated
    // sizes, flags for what it always does): read here as inert.
    Family {
        model_type: "lfm2",
        sizes: Sizes {
            vocab: 65536,
            hidden: 2560,
            intermediate: 12288,
            layers: 32,
            heads: 32,
        },
        architecture: Architecture::Lfm2,
        keys: &[
            "norm_eps",
            "conv_bias",
            "conv_L_cache",
            "block_multiple_of",
            "block_ffn_dim_multiplier",
            "block_auto_adjust_ff_dim",
            "block_ff_dim",
            "full_attn_idxs",
            "layer_types",
            "tie_embedding",
            "block_dim",
            "block_norm_eps",
            "block_mlp_init_scale",
            "block_out_init_scale",
            "block_use_xavier_init",
            "block_use_swiglu",
            "conv_dim",
            "conv_dim_out",
            "conv_use_xavier_init",
            "num_heads",
            "use_pos_enc",
        ],
        defaults: || {
            json!({"norm_eps": 1e-5, "num_key_value_heads": 8, "rope_theta": 1_000_000.0, "conv_bias": false,
            "conv_L_cache": 3, "block_multiple_of": 256, "block_ffn_dim_multiplier": 1.0,
            "block_auto_adjust_ff_dim": true, "tie_word_embeddings": true})
        },
        qk_norm: QkNorm::PerHead,
        mlp: MlpLayout::Separate {
            gate: "feed_forward.w1",
            up: "feed_forward.w3",
            down: "feed_forward.w2",
        },
        activation_key: None,
        names: Names {
            pre_attention_norm: "operator_norm",
            pre_mlp_norm: "ffn_norm",
            o_proj: "self_attn.out_proj",
            q_norm: "self_attn.q_layernorm",
            k_norm: "self_attn.k_layernorm",
            // Named for the embeddings, applied after the last layer.
            final_norm: "embedding_norm",
        },
        ..LLAMA
    },
    // Qwen3.5's text tower: Gated DeltaNet linear-attention layers (`linear_attention` in `layer_types`, by
    // default all but every `full_attention_interval`-th) around gated full attention with per-head q/k norms,
    // every RMSNorm zero-centred (`1 + w`) but the DeltaNet's gated output norm, partial rotary.
    // `attn_output_gate` and `mamba_ssm_dtype` are read by other implementations, never by transformers' (which
    // always gates); `mtp_*` describe the multi-token-prediction head it drops.
    QWEN3_5,
    // Qwen3.5 MoE (35B-A3B, 122B-A10B, 397B-A17B): Qwen3.5's layers with a sparse MLP on every one, its
    // experts stacked in two tensors as transformers 5 stores them, and a sigmoid-gated shared expert.
    // transformers always renormalises the chosen experts here and never reads `norm_topk_prob`, which some
    // configs carry.
    Family {
        model_type: "qwen3_5_moe_text",
        architecture: Architecture::Qwen3_5Moe,
        keys: delta_net_keys![
            "attn_output_gate",
            "mamba_ssm_dtype",
            "mtp_num_hidden_layers",
            "mtp_use_dedicated_embeddings",
            "num_experts",
            "num_local_experts",
            "num_experts_per_tok",
            "moe_intermediate_size",
            "shared_expert_intermediate_size",
            "output_router_logits",
            "router_aux_loss_coef",
            "norm_topk_prob"
        ],
        defaults: || {
            json!({"hidden_act": "silu", "rms_norm_eps": 1e-6, "attention_bias": false, "head_dim": 256,
            "num_key_value_heads": 4, "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128,
            "linear_value_head_dim": 128, "linear_num_key_heads": 16, "linear_num_value_heads": 32,
            "partial_rotary_factor": 0.25, "full_attention_interval": 4, "num_experts_per_tok": 8,
            "moe_intermediate_size": 512, "shared_expert_intermediate_size": 512, "output_router_logits": false,
            "router_aux_loss_coef": 0.001})
        },
        experts: Some(ExpertTable {
            router: "mlp.gate",
            router_bias: false,
            weights: ExpertWeights::Stacked {
                gate_up: "mlp.experts.gate_up_proj",
                down: "mlp.experts.down_proj",
            },
            count_keys: ["num_experts", "num_local_experts"],
            top_k_alias: None,
            width_key: "moe_intermediate_size",
            normalize: TopKNorm::Always,
            routing: Routing::Softmax,
            sparse_layers: SparseLayers::Every,
            shared: Some(QWEN_SHARED_EXPERT),
            router_loss: true,
            top_k_key: "num_experts_per_tok",
            beside_dense: None,
            weigh_in_f32: false,
            activation: ExpertActivation::Glu,
        }),
        ..QWEN3_5
    },
    GLM4_MOE,
    // Qwen3-Next (80B-A3B): Qwen3.5's layers (Gated DeltaNet around gated full attention, `1 + w` norms, partial
    // rotary on plain text positions) with the DeltaNet's projections fused in two, grouped by key head; a sparse
    // MLP of experts stored one linear each, renormalised as `norm_topk_prob` says, on the layers
    // `decoder_sparse_step` and `mlp_only_layers` pick, beside a sigmoid-gated shared expert.
    Family {
        model_type: "qwen3_next",
        sizes: Sizes {
            vocab: 151936,
            hidden: 2048,
            intermediate: 5632,
            layers: 48,
            heads: 16,
        },
        architecture: Architecture::Qwen3Next,
        keys: delta_net_keys![
            "num_experts",
            "num_experts_per_tok",
            "moe_intermediate_size",
            "shared_expert_intermediate_size",
            "norm_topk_prob",
            "decoder_sparse_step",
            "mlp_only_layers",
            "output_router_logits",
            "router_aux_loss_coef"
        ],
        defaults: || {
            json!({"hidden_act": "silu", "rms_norm_eps": 1e-6, "attention_bias": false, "head_dim": 256,
            "num_key_value_heads": 2, "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128,
            "linear_value_head_dim": 128, "linear_num_key_heads": 16, "linear_num_value_heads": 32,
            "partial_rotary_factor": 0.25, "full_attention_interval": 4, "num_experts_per_tok": 10,
            "num_experts": 512, "moe_intermediate_size": 512, "shared_expert_intermediate_size": 512,
            "norm_topk_prob": true, "decoder_sparse_step": 1, "mlp_only_layers": [], "output_router_logits": false,
            "router_aux_loss_coef": 0.001})
        },
        text_mrope: false,
        delta_projections: DeltaProjections::Grouped,
        experts: Some(ExpertTable {
            // Qwen3NextConfig has no `attribute_map`: `num_experts` is its only name.
            count_keys: ["num_experts", "num_experts"],
            shared: Some(QWEN_SHARED_EXPERT),
            ..QWEN3_MOE_EXPERTS
        }),
        ..QWEN3_5
    },
    DEEPSEEK_V3,
    // ERNIE 4.5 (0.3B, dense): llama's layers with `use_bias` putting biases on every projection, and the rotation
    // over adjacent pairs of each head's dimensions (in f32, as FreezeTune always rotates).
    Family {
        model_type: "ernie4_5",
        sizes: Sizes {
            vocab: 103424,
            hidden: 1024,
            intermediate: 3072,
            layers: 18,
            heads: 16,
        },
        architecture: Architecture::Ernie4_5,
        keys: &["hidden_act", "use_bias"],
        defaults: || {
            json!({"hidden_act": "silu", "rms_norm_eps": 1e-5, "use_bias": false, "num_key_value_heads": 2,
            "head_dim": 128, "tie_word_embeddings": true, "rope_theta": 500000.0})
        },
        all_bias_key: Some("use_bias"),
        rope_interleaved: true,
        ..LLAMA
    },
    // EXAONE 4.0 (1.2B, 32B): OLMo 2's post norms with per-head q/k norms; sliding (`sliding_window`) and full layers
    // as `layer_types` says (absent: all but every `sliding_window_pattern`-th slide, 4), the full layers without
    // rope when the model has a window.
    Family {
        model_type: "exaone4",
        sizes: Sizes {
            vocab: 102400,
            hidden: 4096,
            intermediate: 16384,
            layers: 32,
            heads: 32,
        },
        architecture: Architecture::Exaone4,
        keys: &["hidden_act", "sliding_window", "sliding_window_pattern", "layer_types"],
        defaults: || {
            json!({"hidden_act": "silu", "rms_norm_eps": 1e-5, "sliding_window": 4096, "sliding_window_pattern": 4,
            "num_key_value_heads": 32})
        },
        norms: NormPlacement::Post,
        qk_norm: QkNorm::PerHead,
        sliding: DefaultSliding::AllButEvery(4),
        nope_full_layers_when_sliding: true,
        ..LLAMA
    },
    // GLM-4.7-Flash (30B-A3B): DeepSeek-V3's latent attention and routing, its dense and sparse layers listed in
    // `mlp_layer_types`.
    Family {
        model_type: "glm4_moe_lite",
        sizes: Sizes {
            vocab: 154880,
            hidden: 2048,
            intermediate: 10240,
            layers: 47,
            heads: 20,
        },
        architecture: Architecture::Glm4MoeLite,
        keys: latent_moe_keys!["mlp_layer_types"],
        defaults: || {
            json!({"hidden_act": "silu", "rms_norm_eps": 1e-5, "attention_bias": false, "num_key_value_heads": 20,
            "q_lora_rank": 768, "kv_lora_rank": 512, "qk_nope_head_dim": 192, "qk_rope_head_dim": 64,
            "v_head_dim": 256, "rope_interleave": true, "moe_intermediate_size": 1536, "num_experts_per_tok": 4,
            "n_shared_experts": 1, "n_routed_experts": 64, "routed_scaling_factor": 1.8, "n_group": 1,
            "topk_group": 1, "norm_topk_prob": true, "num_nextn_predict_layers": 0})
        },
        // DeepSeek's own keys are not in GLM's configs.
        agreeing_keys: &[],
        experts: Some(ExpertTable {
            sparse_layers: SparseLayers::Types("mlp_layer_types"),
            ..GLM4_MOE_EXPERTS
        }),
        ..DEEPSEEK_V3
    },
];

/// The family of a `model_type`.
pub fn family(model_type: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| f.model_type == model_type)
}

/// The `model_type`s FreezeTune trains.
pub fn supported() -> Vec<&'static str> {
    FAMILIES.iter().map(|f| f.model_type).collect()
}

impl Family {
    /// Whether this family's decoder reads `key`.
    pub fn understands(&self, key: &str) -> bool {
        COMMON_KEYS.contains(&key)
            || self.keys.contains(&key)
            || self.agreeing_keys.iter().any(|(k, _)| *k == key)
            || self.off_only_keys.iter().any(|(k, _)| *k == key)
    }

    /// The first of [`Family::agreeing_keys`] that `config` sets to another value, as an error naming it.
    pub fn disagreeing_key(&self, config: &Value) -> Option<String> {
        self.agreeing_keys.iter().find_map(|(key, want)| {
            let want: Value = serde_json::from_str(want).expect("agreeing_keys hold JSON");
            match &config[*key] {
                Value::Null => None,
                v if *v == want => None,
                v => Some(format!(
                    "config.json key `{key}` is {v}, but transformers' {} never reads it and computes what {want} \
                     means: training would compute other math than this config asks for. Set it to {want} or \
                     remove it",
                    self.model_type
                )),
            }
        })
    }

    /// The first key of `config` that this family does not read and that is not inert, with its value. A key
    /// set to `false` or `null` switches nothing on (Phi-3.5's `attention_bias: false`, OLMo 2's `clip_qkv: null`)
    /// and passes; any other value of an unread key could change the math.
    pub fn not_understood<'a>(&self, config: &'a Value) -> Option<(&'a String, &'a Value)> {
        let map = config.as_object()?;
        map.iter().find(|(k, v)| {
            let off = v.is_null() || v.as_bool() == Some(false);
            !off && !k.starts_with('_') && !self.understands(k) && !INERT_KEYS.contains(&k.as_str())
        })
    }

    /// `config` with this family's defaults filled in where a key is absent.
    pub fn with_defaults(&self, config: &Value) -> Value {
        let mut merged = (self.defaults)();
        let z = self.sizes;
        for (k, v) in [
            ("vocab_size", z.vocab),
            ("hidden_size", z.hidden),
            ("intermediate_size", z.intermediate),
            ("num_hidden_layers", z.layers),
            ("num_attention_heads", z.heads),
        ] {
            merged[k] = v.into();
        }
        // A config that names the expert count by its other name (transformers' `attribute_map`) gets no default
        // under the first one to disagree with.
        if let Some([first, other]) = self.experts.map(|t| t.count_keys) {
            if config[first].is_null() && !config[other].is_null() {
                merged.as_object_mut().map(|m| m.remove(first));
            }
        }
        if let (Some(m), Some(c)) = (merged.as_object_mut(), config.as_object()) {
            for (k, v) in c {
                m.insert(k.clone(), v.clone());
            }
        }
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_is_a_key_the_family_reads() {
        for f in &FAMILIES {
            for k in (f.defaults)().as_object().unwrap().keys() {
                assert!(f.understands(k), "{}: default for unread key {k}", f.model_type);
            }
            assert!(f.activation_key.is_none_or(|k| f.understands(k)), "{}", f.model_type);
        }
    }

    #[test]
    fn an_unknown_key_is_found_and_inert_ones_pass() {
        let llama = family("llama").unwrap();
        let c = json!({"hidden_size": 8, "torch_dtype": "float32", "_name_or_path": "x", "bos_token_id": 1});
        assert_eq!(llama.not_understood(&c), None);
        let c = json!({"hidden_size": 8, "attn_logit_softcapping": 50.0});
        assert_eq!(llama.not_understood(&c).unwrap().0, "attn_logit_softcapping");
        let off = json!({"clip_qkv": null, "use_mrope": false});
        assert_eq!(llama.not_understood(&off), None, "keys that switch nothing on pass");
        assert_eq!(llama.not_understood(&json!({"clip_qkv": 8.0})).unwrap().0, "clip_qkv");
        assert!(family("gemma2").unwrap().not_understood(&c).is_none());
    }
}
