//! One layer as its own tensors show it, for the activation term: families whose layers differ from the config's
//! sizes (Gemma 4's full layers have wider heads, its shared layers no keys or values of their own, double-wide
//! MLPs) or from the plain pre-norm layout the CPU's fused blocks serve (q/k norms, sandwich norms, biases).

use crate::layout::{LayerInfo, TensorInfo};

/// What mixes a layer's tokens, told by the module that holds it (the names transformers gives them): it decides
/// what the layer keeps for its backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mixer {
    Attention,
    /// Qwen3.5's Gated DeltaNet (`linear_attn`).
    DeltaRule,
    /// LFM2's gated short convolution (`conv`).
    ShortConv,
    /// Granite 4.0-H's Mamba 2 (`mamba`).
    Mamba,
}

/// Module names of the token mixers other than attention.
const MIXER_MODULES: &[(&str, Mixer)] = &[
    ("linear_attn", Mixer::DeltaRule),
    ("conv", Mixer::ShortConv),
    ("mamba", Mixer::Mamba),
];

/// The norms a plain layer has (its two pre-norms); the term counts each further one's input.
const PLAIN_NORMS: u64 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LayerShape {
    pub mixer: Mixer,
    /// It holds experts (`mlp.experts.N.*`, stacked `experts.*`, `block_sparse_moe.*`).
    pub sparse: bool,
    /// A dense MLP beside the experts (Gemma 4's MoE block).
    pub dense_beside: bool,
    /// Query width (heads × head_dim), key/value width (0: the keys and values are an earlier layer's), MLP width.
    pub q: u64,
    pub kv: u64,
    pub i: u64,
    /// Whether the CPU's one-op blocks serve the attention half (`fused::attention_block`: a pre-norm only, no q/k
    /// norm, no biases, no sinks) and the MLP half (`fused::mlp_block`: a gated MLP without post-norm or biases).
    pub fused_attention: bool,
    pub fused_mlp: bool,
    /// Values per token kept by what a plain layer lacks: the inputs of q/k norms and further norms, and Gemma 4's
    /// per-layer input branch (its gate, activation and product, projection and norm input: 3·w + 2·h).
    pub extra: u64,
}

/// The config's sizes, for a layer whose tensors do not name them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Defaults {
    pub h: u64,
    pub q: u64,
    pub kv: u64,
    pub i: u64,
}

impl LayerShape {
    pub(super) fn of(layer: &LayerInfo, d: Defaults) -> LayerShape {
        let find = |suffix: &str| layer.tensors().find(|t| t.name.ends_with(suffix));
        let rows = |suffix: &str| find(suffix).and_then(|t| t.shape.first().copied());
        let has = |test: &dyn Fn(&TensorInfo) -> bool| layer.tensors().any(test);
        let mixer = MIXER_MODULES
            .iter()
            .find(|(name, _)| layer.modules.iter().any(|m| m.name == *name))
            .map_or(Mixer::Attention, |(_, mixer)| *mixer);
        // Granite 4.0-H's stacked experts are `block_sparse_moe.input_linear` / `output_linear`.
        let sparse = has(&|t| t.name.contains(".experts.") || t.name.contains(".block_sparse_moe."));
        let queries = rows("self_attn.q_proj.weight");
        let kv = match (rows("self_attn.k_proj.weight"), queries) {
            (Some(k), _) => k,
            // Queries alone: Gemma 4's shared layers attend over an earlier layer's kept keys and values.
            (None, Some(_)) => 0,
            (None, None) => d.kv,
        };
        let gate = rows("mlp.gate_proj.weight").or(rows("mlp.gate_up_proj.weight").map(|r| r / 2));
        let i = gate.or(rows("mlp.up_proj.weight")).unwrap_or(d.i);
        let q_norm = find("self_attn.q_norm.weight").map_or(0, |_| queries.unwrap_or(d.q));
        let k_norm = find("self_attn.k_norm.weight").map_or(0, |_| kv);
        let norms = layer.tensors().filter(|t| t.name.ends_with("layernorm.weight")).count() as u64;
        let further_norms = norms.saturating_sub(PLAIN_NORMS) * d.h;
        let branch = rows("per_layer_input_gate.weight").map_or(0, |w| 3 * w + 2 * d.h);
        let sandwich = find("post_feedforward_layernorm.weight").is_some();
        let attention_extras =
            has(&|t| t.name.contains(".self_attn.") && (t.name.ends_with(".bias") || t.name.ends_with(".sinks")));
        let mlp_bias = has(&|t| t.name.contains(".mlp.") && t.name.ends_with(".bias"));
        LayerShape {
            mixer,
            sparse,
            dense_beside: sparse && gate.is_some(),
            q: queries.unwrap_or(d.q),
            kv,
            i,
            fused_attention: q_norm == 0 && k_norm == 0 && !sandwich && !attention_extras,
            fused_mlp: gate.is_some() && !sandwich && !mlp_bias && !sparse,
            extra: q_norm
                .saturating_add(k_norm)
                .saturating_add(further_norms)
                .saturating_add(branch),
        }
    }
}
