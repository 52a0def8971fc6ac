//! Tensor and architecture names in llama.cpp's conventions (its `gguf` package's `tensor_mapping.py` and
//! `convert_hf_to_gguf.py`), both ways.

use freezetune_train::Architecture;

/// The `general.architecture` llama.cpp uses for a family (Mistral's decoder is llama.cpp's `llama`).
pub fn gguf_arch(arch: Architecture) -> &'static str {
    match arch {
        Architecture::Llama | Architecture::Mistral => "llama",
        Architecture::Qwen2 => "qwen2",
        Architecture::Qwen3 => "qwen3",
        Architecture::Phi3 => "phi3",
        Architecture::Gemma => "gemma",
        Architecture::Gemma2 => "gemma2",
        Architecture::Gemma3 => "gemma3",
        Architecture::SmolLM3 => "smollm3",
        Architecture::Granite => "granite",
        Architecture::Olmo2 => "olmo2",
        Architecture::Olmo3 => "olmo3",
        Architecture::Ministral3 => "mistral3",
        Architecture::GraniteHybrid => "granitehybrid",
        Architecture::Lfm2 => "lfm2",
        // Not exported (not in EXPORTABLE): the pinned llama.cpp predates it. Named for messages only.
        Architecture::Qwen3_5 => "qwen3_5",
        Architecture::Qwen3Moe => "qwen3moe",
        // Not exported (not in EXPORTABLE): newer than the pinned llama.cpp. Named for messages only.
        Architecture::Qwen3_5Moe => "qwen3_5_moe",
        // Mixtral's decoder is llama.cpp's llama with experts (its converter's LlamaModel).
        Architecture::Mixtral => "llama",
        Architecture::Olmoe => "olmoe",
        Architecture::GptOss => "gpt-oss",
        Architecture::Glm4Moe => "glm4moe",
        // Not exported yet (not in EXPORTABLE): llama.cpp splits latent attention's kv_b_proj. Named for messages.
        Architecture::DeepseekV3 | Architecture::Glm4MoeLite => "deepseek2",
        Architecture::Qwen3Next => "qwen3next",
        Architecture::Exaone4 => "exaone4",
        Architecture::Ernie4_5 => "ernie4_5",
        // Not exported (not in EXPORTABLE): newer than the pinned llama.cpp. Named for messages only.
        Architecture::Gemma4 => "gemma4",
    }
}

/// llama.cpp's exaone4 slides only models of this many layers (EXAONE 4.0 32B), every this-many-th layer full and
/// without rope, over the file's `attention.sliding_window` (this window when it has none); it hard-codes that
/// (`llama-model.cpp`'s `LLM_ARCH_EXAONE4` hparams), and every other model attends in full with rope throughout.
pub const EXAONE4_SLIDING_LAYERS: usize = 64;
pub const EXAONE4_FULL_EVERY: usize = 4;
pub const EXAONE4_DEFAULT_WINDOW: u32 = 4096;

/// The families export writes, as the llama.cpp FreezeTune checks against (llama-cpp-python 0.3.16's, August
/// 2025) runs them. OLMo 3 and Ministral 3 are not in that llama.cpp.
pub const EXPORTABLE: [Architecture; 19] = [
    Architecture::Llama,
    Architecture::Mistral,
    Architecture::Qwen2,
    Architecture::Qwen3,
    Architecture::Phi3,
    Architecture::Gemma,
    Architecture::Gemma2,
    Architecture::Gemma3,
    Architecture::Granite,
    Architecture::Olmo2,
    Architecture::SmolLM3,
    Architecture::Lfm2,
    Architecture::Qwen3Moe,
    Architecture::Mixtral,
    Architecture::Olmoe,
    Architecture::GptOss,
    Architecture::Glm4Moe,
    Architecture::Exaone4,
    Architecture::Ernie4_5,
];

/// The architectures import understands, as llama.cpp names them.
pub const IMPORTABLE: [&str; 16] = [
    "llama", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3", "granite", "olmo2", "smollm3", "lfm2", "qwen3moe",
    "olmoe", "glm4moe", "exaone4", "ernie4_5",
];

/// The family of a GGUF `general.architecture`, or `None` when FreezeTune cannot train it.
pub fn from_gguf_arch(name: &str) -> Option<Architecture> {
    Some(match name {
        "llama" => Architecture::Llama,
        "qwen2" => Architecture::Qwen2,
        "qwen3" => Architecture::Qwen3,
        "phi3" => Architecture::Phi3,
        "gemma" => Architecture::Gemma,
        "gemma2" => Architecture::Gemma2,
        "gemma3" => Architecture::Gemma3,
        "granite" => Architecture::Granite,
        "olmo2" => Architecture::Olmo2,
        "smollm3" => Architecture::SmolLM3,
        "lfm2" => Architecture::Lfm2,
        "qwen3moe" => Architecture::Qwen3Moe,
        "olmoe" => Architecture::Olmoe,
        "glm4moe" => Architecture::Glm4Moe,
        "exaone4" => Architecture::Exaone4,
        "ernie4_5" => Architecture::Ernie4_5,
        _ => return None,
    })
}

/// Hugging Face class and `model_type` for an imported family.
pub fn hf_class(arch: Architecture) -> (&'static str, &'static str) {
    match arch {
        Architecture::Llama => ("LlamaForCausalLM", "llama"),
        Architecture::Mistral => ("MistralForCausalLM", "mistral"),
        Architecture::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
        Architecture::Qwen3 => ("Qwen3ForCausalLM", "qwen3"),
        Architecture::Phi3 => ("Phi3ForCausalLM", "phi3"),
        Architecture::Gemma => ("GemmaForCausalLM", "gemma"),
        Architecture::Gemma2 => ("Gemma2ForCausalLM", "gemma2"),
        Architecture::Gemma3 => ("Gemma3ForCausalLM", "gemma3_text"),
        Architecture::SmolLM3 => ("SmolLM3ForCausalLM", "smollm3"),
        Architecture::Granite => ("GraniteForCausalLM", "granite"),
        Architecture::Olmo2 => ("Olmo2ForCausalLM", "olmo2"),
        Architecture::Olmo3 => ("Olmo3ForCausalLM", "olmo3"),
        Architecture::Ministral3 => ("Ministral3ForCausalLM", "ministral3"),
        Architecture::GraniteHybrid => ("GraniteMoeHybridForCausalLM", "granitemoehybrid"),
        Architecture::Lfm2 => ("Lfm2ForCausalLM", "lfm2"),
        Architecture::Qwen3_5 => ("Qwen3_5ForCausalLM", "qwen3_5_text"),
        Architecture::Qwen3Moe => ("Qwen3MoeForCausalLM", "qwen3_moe"),
        Architecture::Qwen3_5Moe => ("Qwen3_5MoeForCausalLM", "qwen3_5_moe_text"),
        Architecture::Mixtral => ("MixtralForCausalLM", "mixtral"),
        Architecture::Olmoe => ("OlmoeForCausalLM", "olmoe"),
        Architecture::GptOss => ("GptOssForCausalLM", "gpt_oss"),
        Architecture::Glm4Moe => ("Glm4MoeForCausalLM", "glm4_moe"),
        Architecture::DeepseekV3 => ("DeepseekV3ForCausalLM", "deepseek_v3"),
        Architecture::Glm4MoeLite => ("Glm4MoeLiteForCausalLM", "glm4_moe_lite"),
        Architecture::Qwen3Next => ("Qwen3NextForCausalLM", "qwen3_next"),
        Architecture::Exaone4 => ("Exaone4ForCausalLM", "exaone4"),
        Architecture::Ernie4_5 => ("Ernie4_5ForCausalLM", "ernie4_5"),
        Architecture::Gemma4 => ("Gemma4ForCausalLM", "gemma4_text"),
    }
}

const GLOBAL: [(&str, &str); 3] = [
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// Per-layer names after `model.layers.N.` ↔ after `blk.N.`. Phi3's fused `gate_up_proj` is llama.cpp's
/// `ffn_up` (it splits the rows itself), so the reverse lookup depends on the family.
const LAYER: [(&str, &str); 18] = [
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("self_attn.o_proj.bias", "attn_output.bias"),
    ("self_attn.qkv_proj.weight", "attn_qkv.weight"),
    ("self_attn.q_norm.weight", "attn_q_norm.weight"),
    ("self_attn.k_norm.weight", "attn_k_norm.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
    ("mlp.gate_up_proj.weight", "ffn_up.weight"),
    ("mlp.gate_up_proj.bias", "ffn_up.bias"),
];

/// LFM2's own names (llama.cpp's `LLM_ARCH_LFM2`): its final norm is `token_embd_norm` (transformers'
/// `embedding_norm`, applied after the last layer), and its convolution layers are `shortconv.*`.
const LFM2_GLOBAL: [(&str, &str); 3] = [
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.embedding_norm.weight", "token_embd_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

const LFM2_LAYER: [(&str, &str); 15] = [
    ("operator_norm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.out_proj.weight", "attn_output.weight"),
    ("self_attn.q_layernorm.weight", "attn_q_norm.weight"),
    ("self_attn.k_layernorm.weight", "attn_k_norm.weight"),
    ("conv.conv.weight", "shortconv.conv.weight"),
    ("conv.in_proj.weight", "shortconv.in_proj.weight"),
    ("conv.out_proj.weight", "shortconv.out_proj.weight"),
    ("ffn_norm.weight", "ffn_norm.weight"),
    ("feed_forward.w1.weight", "ffn_gate.weight"),
    ("feed_forward.w3.weight", "ffn_up.weight"),
    ("feed_forward.w2.weight", "ffn_down.weight"),
    // Never in a file FreezeTune writes (export refuses convolution biases); listed so the names stay one table.
    ("conv.conv.bias", "shortconv.conv.bias"),
];

/// A mixture-of-experts layer's router (Qwen3 MoE, OLMoE; Mixtral's `block_sparse_moe`); its experts are stacked
/// ([`expert_tensor`]).
const MOE_LAYER: [(&str, &str); 2] = [
    ("mlp.gate.weight", "ffn_gate_inp.weight"),
    ("block_sparse_moe.gate.weight", "ffn_gate_inp.weight"),
];

/// gpt-oss's own layer names (llama.cpp's `gpt-oss`): the norm before the experts is `post_attention_norm` (it has
/// no `ffn_norm`), the sinks are `attn_sinks.weight`, the router (with a bias) is `ffn_gate_inp`. Its experts are
/// split out of their interleaved stacks ([`interleaved_expert_parts`]).
const GPT_OSS_LAYER: [(&str, &str); 4] = [
    ("post_attention_layernorm.weight", "post_attention_norm.weight"),
    ("self_attn.sinks", "attn_sinks.weight"),
    ("mlp.router.weight", "ffn_gate_inp.weight"),
    ("mlp.router.bias", "ffn_gate_inp.bias"),
];

/// GLM-4.5's own layer names (llama.cpp's `glm4moe`): the norm before the MLP is `post_attention_norm`, the router's
/// correction bias `exp_probs_b`, the shared MLP `ffn_*_shexp`.
/// The multi-token-prediction layer's own tensors (llama.cpp's `nextn.*`, which a converted GLM-4.5 file carries and
/// export leaves behind) come back under transformers' names on import.
const GLM4_MOE_LAYER: [(&str, &str); 12] = [
    ("post_attention_layernorm.weight", "post_attention_norm.weight"),
    ("mlp.gate.weight", "ffn_gate_inp.weight"),
    ("mlp.gate.e_score_correction_bias", "exp_probs_b.bias"),
    ("mlp.shared_experts.gate_proj.weight", "ffn_gate_shexp.weight"),
    ("mlp.shared_experts.up_proj.weight", "ffn_up_shexp.weight"),
    ("mlp.shared_experts.down_proj.weight", "ffn_down_shexp.weight"),
    ("eh_proj.weight", "nextn.eh_proj.weight"),
    ("embed_tokens.weight", "nextn.embed_tokens.weight"),
    ("enorm.weight", "nextn.enorm.weight"),
    ("hnorm.weight", "nextn.hnorm.weight"),
    ("shared_head.head.weight", "nextn.shared_head_head.weight"),
    ("shared_head.norm.weight", "nextn.shared_head_norm.weight"),
];

/// Which columns of an interleaved stack's expert a GGUF tensor takes (gpt-oss keeps gate and up in alternate
/// columns).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ExpertColumns {
    Even,
    Odd,
    All,
}

/// gpt-oss's stacked experts, `model.layers.L.mlp.experts.{gate_up_proj,down_proj}` and their `_bias`: the GGUF
/// tensors llama.cpp splits each into, with the columns each takes and whether its experts' matrices are transposed
/// (llama.cpp's converter: gate = columns 0, 2, 4…, up = 1, 3, 5…, every matrix output-major).
pub fn interleaved_expert_parts(hf: &str) -> Option<Vec<(String, ExpertColumns, bool)>> {
    let (layer, rest) = layer_after(hf, "model.layers.")?;
    let at = |which: &str, kind: &str| format!("blk.{layer}.ffn_{which}_exps.{kind}");
    use ExpertColumns::*;
    Some(match rest.strip_prefix("mlp.experts.")? {
        "gate_up_proj" => vec![(at("gate", "weight"), Even, true), (at("up", "weight"), Odd, true)],
        "gate_up_proj_bias" => vec![(at("gate", "bias"), Even, false), (at("up", "bias"), Odd, false)],
        "down_proj" => vec![(at("down", "weight"), All, true)],
        "down_proj_bias" => vec![(at("down", "bias"), All, false)],
        _ => return None,
    })
}

/// An expert's projection, `model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight` (Mixtral's
/// `block_sparse_moe.experts.E.{w1,w3,w2}.weight`): its layer, its expert, and the GGUF tensor llama.cpp stacks that
/// projection of every expert into (`blk.L.ffn_{gate,up,down}_exps.weight`, experts × rows × columns).
pub fn expert_tensor(hf: &str) -> Option<(usize, usize, String)> {
    let (layer, rest) = layer_after(hf, "model.layers.")?;
    let experts = rest
        .strip_prefix("mlp.experts.")
        .or_else(|| rest.strip_prefix("block_sparse_moe.experts."))?;
    let (expert, projection) = experts.split_once('.')?;
    let which = match projection {
        "gate_proj.weight" | "w1.weight" => "gate",
        "up_proj.weight" | "w3.weight" => "up",
        "down_proj.weight" | "w2.weight" => "down",
        _ => return None,
    };
    Some((
        layer,
        expert.parse().ok()?,
        format!("blk.{layer}.ffn_{which}_exps.weight"),
    ))
}

/// A stacked expert tensor of llama.cpp, `blk.L.ffn_{gate,up,down}_exps.weight`: its layer and the projection
/// each expert's slice is in the Hugging Face layout (`gate_proj`, `up_proj`, `down_proj`).
pub fn stacked_experts_of(gguf: &str) -> Option<(usize, &'static str)> {
    let (layer, rest) = layer_after(gguf, "blk.")?;
    let projection = match rest {
        "ffn_gate_exps.weight" => "gate_proj",
        "ffn_up_exps.weight" => "up_proj",
        "ffn_down_exps.weight" => "down_proj",
        _ => return None,
    };
    Some((layer, projection))
}

/// Families whose norms sit around their sublayers (post norms: OLMo 2 and 3, EXAONE 4; sandwich norms: Gemma 2 and
/// 3). There
/// llama.cpp names the norm on the attention output `post_attention_norm`, the pre-MLP norm `ffn_norm` and the norm
/// on the MLP output `post_ffw_norm`; in llama's naming `post_attention_layernorm` is the pre-MLP norm.
const NORMS_AROUND: [(&str, &str); 3] = [
    ("post_attention_layernorm.weight", "post_attention_norm.weight"),
    ("pre_feedforward_layernorm.weight", "ffn_norm.weight"),
    ("post_feedforward_layernorm.weight", "post_ffw_norm.weight"),
];

fn norms_around(arch: Architecture) -> bool {
    matches!(
        arch,
        Architecture::Gemma2 | Architecture::Gemma3 | Architecture::Olmo2 | Architecture::Olmo3 | Architecture::Exaone4
    )
}

/// A layer tensor's index and the name after it, in either naming (`model.layers.N.…`, `blk.N.…`).
pub fn split_layer(name: &str) -> Option<(usize, &str)> {
    layer_after(name, "model.layers.").or_else(|| layer_after(name, "blk."))
}

fn layer_after<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let (layer, suffix) = name.strip_prefix(prefix)?.split_once('.')?;
    Some((layer.parse().ok()?, suffix))
}

/// llama.cpp's converter order, in either naming: embeddings, the layers in order, then the rest (final norm,
/// output).
pub fn order_key(name: &str) -> (usize, usize, String) {
    if name.starts_with("model.embed_tokens") || name.starts_with("token_embd") {
        return (0, 0, name.into());
    }
    match split_layer(name) {
        Some((layer, _)) => (1, layer, name.into()),
        None => (2, 0, name.into()),
    }
}

/// The GGUF name of a Hugging Face tensor of a family, or `None` for one llama.cpp has no place for.
pub fn to_gguf(hf: &str, arch: Architecture) -> Option<String> {
    if arch == Architecture::Lfm2 {
        if let Some((_, g)) = LFM2_GLOBAL.iter().find(|(h, _)| *h == hf) {
            return Some(g.to_string());
        }
        let (layer, suffix) = layer_after(hf, "model.layers.")?;
        let (_, g) = LFM2_LAYER.iter().find(|(h, _)| *h == suffix)?;
        return Some(format!("blk.{layer}.{g}"));
    }
    if let Some((_, g)) = GLOBAL.iter().find(|(h, _)| *h == hf) {
        return Some(g.to_string());
    }
    let (layer, suffix) = layer_after(hf, "model.layers.")?;
    let around = norms_around(arch).then_some(NORMS_AROUND.iter()).into_iter().flatten();
    let moe = matches!(
        arch,
        Architecture::Qwen3Moe | Architecture::Mixtral | Architecture::Olmoe
    )
    .then_some(MOE_LAYER.iter())
    .into_iter()
    .flatten();
    let gpt_oss = (arch == Architecture::GptOss)
        .then_some(GPT_OSS_LAYER.iter())
        .into_iter()
        .flatten();
    let glm = (arch == Architecture::Glm4Moe)
        .then_some(GLM4_MOE_LAYER.iter())
        .into_iter()
        .flatten();
    let (_, g) = around
        .chain(moe)
        .chain(gpt_oss)
        .chain(glm)
        .chain(LAYER.iter())
        .find(|(h, _)| *h == suffix)?;
    Some(format!("blk.{layer}.{g}"))
}

/// The Hugging Face name of a GGUF tensor for a family, or `None` for one FreezeTune's decoder has no place for.
pub fn to_hf(gguf: &str, arch: Architecture) -> Option<String> {
    if arch == Architecture::Lfm2 {
        if let Some((h, _)) = LFM2_GLOBAL.iter().find(|(_, g)| *g == gguf) {
            return Some(h.to_string());
        }
        let (layer, suffix) = layer_after(gguf, "blk.")?;
        let (h, _) = LFM2_LAYER.iter().find(|(_, g)| *g == suffix)?;
        return Some(format!("model.layers.{layer}.{h}"));
    }
    if let Some((h, _)) = GLOBAL.iter().find(|(_, g)| *g == gguf) {
        return Some(h.to_string());
    }
    let (layer, suffix) = layer_after(gguf, "blk.")?;
    if arch == Architecture::Glm4Moe {
        if let Some((h, _)) = GLM4_MOE_LAYER.iter().find(|(_, g)| *g == suffix) {
            return Some(format!("model.layers.{layer}.{h}"));
        }
    }
    if let Some(router) = router_of(arch).filter(|_| suffix == "ffn_gate_inp.weight") {
        return Some(format!("model.layers.{layer}.{router}"));
    }
    if norms_around(arch) {
        if let Some((h, _)) = NORMS_AROUND.iter().find(|(_, g)| *g == suffix) {
            return Some(format!("model.layers.{layer}.{h}"));
        }
    }
    let fused_up = arch == Architecture::Phi3 && suffix.starts_with("ffn_up");
    let (h, _) = LAYER
        .iter()
        .find(|(h, g)| *g == suffix && h.starts_with("mlp.gate_up_proj") == fused_up)?;
    Some(format!("model.layers.{layer}.{h}"))
}

/// A mixture-of-experts family's router, after `model.layers.N.`.
fn router_of(arch: Architecture) -> Option<&'static str> {
    match arch {
        Architecture::Qwen3Moe | Architecture::Olmoe => Some("mlp.gate.weight"),
        Architecture::Mixtral => Some("block_sparse_moe.gate.weight"),
        _ => None,
    }
}

/// The Hugging Face name of expert `e`'s `projection` (`gate_proj`, `up_proj`, `down_proj`) in layer `layer` of a
/// family whose experts are one linear each, or None for a family without such experts.
pub fn expert_name(arch: Architecture, layer: usize, e: usize, projection: &str) -> Option<String> {
    match arch {
        Architecture::Qwen3Moe | Architecture::Olmoe | Architecture::Glm4Moe => {
            Some(format!("model.layers.{layer}.mlp.experts.{e}.{projection}.weight"))
        }
        Architecture::Mixtral => {
            let w = match projection {
                "gate_proj" => "w1",
                "up_proj" => "w3",
                _ => "w2",
            };
            Some(format!("model.layers.{layer}.block_sparse_moe.experts.{e}.{w}.weight"))
        }
        _ => None,
    }
}

// llama's q/k row permutation, shared with the trainer's reading of GGUF files through a map.
pub use freezetune_core::gguf_map::{rope_permutation, rope_unpermutation};

/// Gemma stores its norms as `weight - 1` (its forward pass adds the 1); llama.cpp stores the weight itself. Every
/// norm, q/k norms included, as the converter adds 1 to every `*norm.weight`.
pub fn offset_norm(hf: &str, arch: Architecture) -> bool {
    matches!(arch, Architecture::Gemma | Architecture::Gemma2 | Architecture::Gemma3) && hf.ends_with("norm.weight")
}

/// The rows of `t` in `order` (row `i` of the result is row `order[i]` of `t`).
pub fn reorder_rows(t: &candle_core::Tensor, order: Vec<usize>) -> candle_core::Result<candle_core::Tensor> {
    let idx: Vec<u32> = order.into_iter().map(|r| r as u32).collect();
    t.index_select(&candle_core::Tensor::new(idx.as_slice(), t.device())?, 0)
}

/// Whether a tensor is llama's q or k projection (weight or bias) and how many heads it holds.
pub fn rope_heads(hf: &str, arch: Architecture, heads: usize, kv_heads: usize) -> Option<usize> {
    // The families llama.cpp runs with its NORM rope whose checkpoints rotate halves (the converter's LlamaModel
    // and its subclasses): their q/k rows are permuted to adjacent pairs. The others either run NEOX, the Hugging
    // Face layout, or (ERNIE 4.5) rotate adjacent pairs in the checkpoint already, as NORM does.
    if !matches!(
        arch,
        Architecture::Llama
            | Architecture::Mistral
            | Architecture::Mixtral
            | Architecture::Granite
            | Architecture::SmolLM3
    ) {
        return None;
    }
    if hf.ends_with("self_attn.q_proj.weight") || hf.ends_with("self_attn.q_proj.bias") {
        Some(heads)
    } else if hf.ends_with("self_attn.k_proj.weight") || hf.ends_with("self_attn.k_proj.bias") {
        Some(kv_heads)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_per_family() {
        for arch in [Architecture::Llama, Architecture::Qwen3, Architecture::Phi3] {
            for (h, _) in GLOBAL {
                assert_eq!(to_hf(&to_gguf(h, arch).unwrap(), arch).as_deref(), Some(h));
            }
        }
        let up = "model.layers.3.mlp.up_proj.weight";
        assert_eq!(to_gguf(up, Architecture::Llama).as_deref(), Some("blk.3.ffn_up.weight"));
        let post = "model.layers.1.post_attention_layernorm.weight";
        assert_eq!(
            to_gguf(post, Architecture::Llama).as_deref(),
            Some("blk.1.ffn_norm.weight")
        );
        for arch in [Architecture::Gemma2, Architecture::Olmo2] {
            assert_eq!(to_gguf(post, arch).as_deref(), Some("blk.1.post_attention_norm.weight"));
            let pre = "model.layers.1.pre_feedforward_layernorm.weight";
            assert_eq!(to_hf(&to_gguf(pre, arch).unwrap(), arch).as_deref(), Some(pre));
        }
        assert_eq!(to_hf("blk.3.ffn_up.weight", Architecture::Llama).as_deref(), Some(up));
        assert_eq!(
            to_hf("blk.3.ffn_up.weight", Architecture::Phi3).as_deref(),
            Some("model.layers.3.mlp.gate_up_proj.weight")
        );
        assert_eq!(
            to_gguf("model.layers.0.self_attn.rotary_emb.inv_freq", Architecture::Llama),
            None
        );
        assert_eq!(
            to_hf("blk.0.attn_q.weight", Architecture::Qwen2).as_deref(),
            Some("model.layers.0.self_attn.q_proj.weight")
        );
        let lfm2 = |hf: &str| to_gguf(hf, Architecture::Lfm2);
        assert_eq!(
            lfm2("model.embedding_norm.weight").as_deref(),
            Some("token_embd_norm.weight")
        );
        assert_eq!(
            lfm2("model.layers.2.conv.in_proj.weight").as_deref(),
            Some("blk.2.shortconv.in_proj.weight")
        );
        assert_eq!(
            lfm2("model.layers.1.feed_forward.w3.weight").as_deref(),
            Some("blk.1.ffn_up.weight")
        );
        assert_eq!(lfm2("model.norm.weight"), None, "LFM2 has no model.norm");
        for hf in [
            "model.embedding_norm.weight",
            "model.layers.0.conv.conv.weight",
            "model.layers.4.self_attn.out_proj.weight",
        ] {
            assert_eq!(to_hf(&lfm2(hf).unwrap(), Architecture::Lfm2).as_deref(), Some(hf));
        }
    }

    #[test]
    fn rope_permutation_matches_the_converter() {
        // convert_hf_to_gguf.py: w.reshape(n_head, 2, d/2, ...).swapaxes(1, 2).reshape(w.shape) with d = 4:
        // head rows [0 1 2 3] -> [0 2 1 3].
        assert_eq!(rope_permutation(8, 2), vec![0, 2, 1, 3, 4, 6, 5, 7]);
        let p = rope_permutation(48, 3);
        let inv = rope_unpermutation(48, 3);
        for r in 0..48 {
            assert_eq!(inv[p[r]], r);
        }
    }
}
