//! One layer as its own tensors show it, for the activation term: families whose layers differ from the config's
//! sizes (Gemma 4's full layers have wider heads, its shared layers no keys or values of their own, double-wide
//! MLPs) or from the plain pre-norm layout the CPU's fused blocks serve (sandwich norms, biases; q/k norms, which
//! the attention block takes, keep their inputs).

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
    /// Whether the CPU's one-op blocks serve the attention half (`Decoder::fused_attention`: a pre-norm, its own
    /// keys, both q and k norms or neither, whole-head rope, dense weights without biases, no sinks; the block takes
    /// Gemma's post-norm too, but this estimate counts sandwich layers composite) and the MLP half (`fused_mlp_weights`: a
    /// gated SiLU or GELU-tanh MLP with a pre-norm (Gemma's post-norm too), dense weights, no biases or experts). Softcaps, output gates, interleaved rope and
    /// per-position query factors also keep the attention block away; config.json alone shows those, so the
    /// estimate counts such layers (Qwen3-Next, ERNIE 4.5, Llama 4-style scaling) as fused: low there.
    pub fused_attention: bool,
    pub fused_mlp: bool,
    /// Values per token kept by what a plain layer lacks: the inputs of q/k norms and further norms, and Gemma 4's
    /// per-layer input branch (its gate, activation and product, projection and norm input: 3·w + 2·h).
    pub extra: u64,
}

/// The config's sizes, for a layer whose tensors do not name them, and what the config says of every layer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Defaults {
    pub h: u64,
    pub q: u64,
    pub kv: u64,
    pub i: u64,
    /// Rope turns part of each head: the fused attention block takes whole-head rope only.
    pub partial_rotary: bool,
    /// The MLP's activation is one the fused MLP block lacks (it has SiLU and GELU-tanh).
    pub unfused_mlp_activation: bool,
}

/// Names, by suffix, of the tensors the terms read, under the spellings of the families that differ.
const QUERY: &[&str] = &["self_attn.q_proj.weight"];
const KEY: &[&str] = &["self_attn.k_proj.weight"];
const Q_NORM: &[&str] = &["self_attn.q_norm.weight", "self_attn.q_layernorm.weight"];
const K_NORM: &[&str] = &["self_attn.k_norm.weight", "self_attn.k_layernorm.weight"];
/// A gated MLP's gate (LFM2's `feed_forward.w1`), whose rows are the MLP's width.
const GATE: &[&str] = &["mlp.gate_proj.weight", "feed_forward.w1.weight"];
/// Gate and up in one matrix (Phi-3's `gate_up_proj`, Granite 4.0's `shared_mlp.input_linear`): twice the width.
const GATE_UP: &[&str] = &["mlp.gate_up_proj.weight", "shared_mlp.input_linear.weight"];
const UP: &[&str] = &["mlp.up_proj.weight"];
/// Where an MLP's matrices live (a bias there keeps the fused block away).
const MLP_PARTS: &[&str] = &[".mlp.", ".feed_forward.", ".shared_mlp."];

impl LayerShape {
    /// The layer's shape; `dense` says which weights are held dense (the fused blocks take only those).
    pub(super) fn of(layer: &LayerInfo, d: Defaults, dense: &dyn Fn(&TensorInfo) -> bool) -> LayerShape {
        let find = |suffixes: &[&str]| layer.tensors().find(|t| suffixes.iter().any(|s| t.name.ends_with(s)));
        let rows = |suffixes: &[&str]| find(suffixes).and_then(|t| t.shape.first().copied());
        let has = |test: &dyn Fn(&TensorInfo) -> bool| layer.tensors().any(test);
        let mixer = MIXER_MODULES
            .iter()
            .find(|(name, _)| layer.modules.iter().any(|m| m.name == *name))
            .map_or(Mixer::Attention, |(_, mixer)| *mixer);
        // Granite 4.0-H's stacked experts are `block_sparse_moe.input_linear` / `output_linear`.
        let sparse = has(&|t| t.name.contains(".experts.") || t.name.contains(".block_sparse_moe."));
        let queries = rows(QUERY);
        let kv = match (rows(KEY), queries) {
            (Some(k), _) => k,
            // Queries alone: Gemma 4's shared layers attend over an earlier layer's kept keys and values.
            (None, Some(_)) => 0,
            (None, None) => d.kv,
        };
        let gate = rows(GATE).or(rows(GATE_UP).map(|r| r / 2));
        let i = gate.or(rows(UP)).unwrap_or(d.i);
        let q_norm = find(Q_NORM).map_or(0, |_| queries.unwrap_or(d.q));
        let k_norm = find(K_NORM).map_or(0, |_| kv);
        // Norms past the two pre-norms: Gemma's post norms, Gemma 4's expert norms (`…layernorm_1`, `…_2`).
        let layer_norm = |t: &TensorInfo| t.name.contains("layernorm") && !t.name.contains(".self_attn.");
        let norms = layer.tensors().filter(|t| layer_norm(t)).count() as u64;
        let further_norms = norms.saturating_sub(PLAIN_NORMS).saturating_mul(d.h);
        let branch = rows(&["per_layer_input_gate.weight"])
            .map_or(0, |w| w.saturating_mul(3).saturating_add(d.h.saturating_mul(2)));
        let sandwich = has(&|t| t.name.contains("post_feedforward_layernorm"));
        // OLMo 2 norms after the MLP only: the fused block starts from a pre-norm.
        let mlp_pre_norm = !sandwich || has(&|t| t.name.contains("pre_feedforward_layernorm"));
        let attention_fits = !has(&|t| {
            t.name.contains(".self_attn.") && (t.name.ends_with(".bias") || t.name.ends_with(".sinks") || !dense(t))
        });
        let mlp_fits =
            !has(&|t| MLP_PARTS.iter().any(|p| t.name.contains(p)) && (t.name.ends_with(".bias") || !dense(t)));
        LayerShape {
            mixer,
            sparse,
            dense_beside: sparse && gate.is_some(),
            q: queries.unwrap_or(d.q),
            kv,
            i,
            fused_attention: kv > 0
                && (q_norm == 0) == (k_norm == 0)
                && !sandwich
                && !d.partial_rotary
                && attention_fits,
            fused_mlp: gate.is_some() && mlp_pre_norm && !sparse && !d.unfused_mlp_activation && mlp_fits,
            extra: q_norm
                .saturating_add(k_norm)
                .saturating_add(further_norms)
                .saturating_add(branch),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelLayout;

    fn shapes(fixture: &str, dense: &dyn Fn(&TensorInfo) -> bool) -> Vec<LayerShape> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/models")
            .join(fixture);
        let layout = ModelLayout::inspect(&dir).unwrap();
        let d = Defaults {
            h: 64,
            q: 64,
            kv: 32,
            i: 96,
            partial_rotary: false,
            unfused_mlp_activation: false,
        };
        layout.layers.iter().map(|l| LayerShape::of(l, d, dense)).collect()
    }

    #[test]
    fn gemma4_layers_are_read_from_their_own_tensors() {
        let layers = shapes("gemma4_e", &|_| true);
        // Layer 0, sliding: q/k norms (64 + 32), two post norms (2·64), the per-layer branch of width 8 (3·8 + 2·64).
        let first = layers[0];
        assert_eq!(
            (first.q, first.kv, first.i, first.extra),
            (64, 32, 96, 64 + 32 + 128 + 152)
        );
        assert!(
            !first.fused_attention,
            "q/k norms and sandwich norms keep the fused attention block away"
        );
        assert!(first.fused_mlp, "the fused MLP block takes Gemma's GELU and post-norm");
        // Layer 5, full and shared: wider queries, no keys or values of its own, a double-wide MLP.
        let last = layers[5];
        assert_eq!((last.q, last.kv, last.i, last.extra), (128, 0, 192, 128 + 128 + 152));
    }

    #[test]
    fn lfm2_names_its_norms_and_mlp_its_own_way() {
        let layers = shapes("lfm2", &|_| true);
        let conv = layers[0];
        assert_eq!((conv.mixer, conv.i, conv.extra), (Mixer::ShortConv, 128, 0));
        assert!(
            conv.fused_mlp,
            "feed_forward.w1/w3/w2 is a SwiGLU the fused block serves"
        );
        let attention = layers[1];
        assert_eq!(attention.mixer, Mixer::Attention);
        assert!(
            attention.fused_attention,
            "q_layernorm / k_layernorm are q/k norms, which the fused attention block takes"
        );
        // The block keeps the q and k norms' inputs.
        assert_eq!(attention.extra, 64 + 32);
        // A frozen matrix held in blocks (GGUF, quantize_frozen) keeps the fused blocks away.
        let quantized = shapes("lfm2", &|t| !t.name.ends_with("w1.weight"));
        assert!(!quantized[0].fused_mlp);
    }
}
