//! Frozen weights held quantized while training (`[model] quantize_frozen`): which tensors, in which block format,
//! and what they then cost. One rule, read by the trainer when it loads the weights and by the memory estimate and
//! fit check, so the estimate counts exactly what the trainer holds.
//!
//! A decoder layer's projection matrices (`….layers.N.….<x>_proj.weight`, two dimensions) are held in the chosen
//! format: they are nearly all of a large model's frozen bytes, and a frozen one is only ever a matmul operand. The
//! embeddings and lm_head (a quarter of a small model with a large vocabulary) are held as q8_0 whatever the
//! choice: they set every token's input and every logit, and llama.cpp's q4_K_M keeps them at 6 bits or more too.
//! Norms and biases stay in the compute dtype. Blocks run along a row, so a row's length must be a multiple of the
//! block: q4_k (256 values a block) falls back to q8_0 (32) for a matrix whose rows are not, and a matrix neither
//! fits stays dense.

use serde::{Deserialize, Serialize};

/// How frozen projection matrices are held while training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub enum QuantizeFrozen {
    /// In the compute dtype, as read from the checkpoint.
    #[default]
    #[serde(rename = "none")]
    None,
    /// 8-bit blocks of 32 with one f16 scale (8.5 bits a weight).
    #[serde(rename = "q8_0")]
    Q8_0,
    /// 4-bit super-blocks of 256 with 6-bit sub-block scales and minima (4.5 bits a weight), as llama.cpp's Q4_K.
    #[serde(rename = "q4_k")]
    Q4K,
}

/// The block format one tensor is held in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantFormat {
    Q8_0,
    Q4K,
}

impl QuantFormat {
    /// Values per block.
    pub fn block_values(self) -> usize {
        match self {
            QuantFormat::Q8_0 => 32,
            QuantFormat::Q4K => 256,
        }
    }

    /// Bytes per block (llama.cpp's `block_q8_0` and `block_q4_K`).
    pub fn block_bytes(self) -> usize {
        match self {
            QuantFormat::Q8_0 => 34,
            QuantFormat::Q4K => 144,
        }
    }

    /// Bytes of `values` values held in this format (`values` a multiple of the block).
    pub fn bytes_for(self, values: u64) -> u64 {
        values.div_ceil(self.block_values() as u64) * self.block_bytes() as u64
    }

    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Q8_0 => "q8_0",
            QuantFormat::Q4K => "q4_k",
        }
    }
}

impl QuantizeFrozen {
    /// Reads the config value (`none`, `q8_0`, `q4_k`); anything else is refused by the caller with this list.
    pub fn parse(s: &str) -> Option<QuantizeFrozen> {
        match s {
            "none" => Some(QuantizeFrozen::None),
            "q8_0" => Some(QuantizeFrozen::Q8_0),
            "q4_k" => Some(QuantizeFrozen::Q4K),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            QuantizeFrozen::None => "none",
            QuantizeFrozen::Q8_0 => "q8_0",
            QuantizeFrozen::Q4K => "q4_k",
        }
    }

    /// The format a frozen tensor `name` of shape `dims` is held in, or `None` when it stays in the compute dtype.
    pub fn format_for(self, name: &str, dims: &[usize]) -> Option<QuantFormat> {
        let preferred = match self {
            QuantizeFrozen::None => return None,
            QuantizeFrozen::Q8_0 => QuantFormat::Q8_0,
            QuantizeFrozen::Q4K => QuantFormat::Q4K,
        };
        let row = match dims.len() {
            2 => dims[1],
            // A layer's experts stacked in one tensor (experts × rows × columns): each expert held in blocks.
            3 if is_stacked_experts(name) => dims[2],
            _ => return None,
        };
        let fits = |f: &QuantFormat| row > 0 && row % f.block_values() == 0;
        if dims.len() == 3 {
            return [preferred, QuantFormat::Q8_0].into_iter().find(fits);
        }
        if is_vocabulary_matrix(name) {
            return Some(QuantFormat::Q8_0).filter(fits);
        }
        if !is_layer_projection(name) {
            return None;
        }
        [preferred, QuantFormat::Q8_0].into_iter().find(fits)
    }

    /// Bytes a frozen tensor takes: quantized where [`QuantizeFrozen::format_for`] says so, else `values` ×
    /// `dense_bytes` (the compute dtype's size).
    pub fn frozen_bytes(self, name: &str, dims: &[usize], values: u64, dense_bytes: u64) -> u64 {
        match self.format_for(name, dims) {
            Some(f) => f.bytes_for(values),
            None => values * dense_bytes,
        }
    }
}

/// Whether a frozen tensor is only ever read as a matrix operand (a layer's projection, the embeddings, lm_head),
/// so it can be held in blocks: a GGUF file's quantized tensors stay in the file's blocks where this holds.
pub fn held_as_matrix(name: &str, dims: &[usize]) -> bool {
    dims.len() == 2 && (is_vocabulary_matrix(name) || is_layer_projection(name))
}

/// Whether `name`, frozen, is only ever read a row at a time, never a matrix operand: Gemma 4's per-layer embeddings,
/// and the token embeddings of a model whose lm_head is its own (`untied`). The trainer keeps such a table in the
/// checkpoint's dtype where that is narrower than the compute dtype, and casts the rows it reads: exact, as a wider
/// float holds every narrower one's value (E2B's per-layer table: 9.4 GB in f32, 4.7 GB as stored in bf16).
pub fn is_lookup_table(name: &str, untied: bool) -> bool {
    name.ends_with("embed_tokens_per_layer.weight") || (untied && crate::tie::is_embeddings(name))
}

/// The token embeddings (Gemma 4's per-layer ones too: a row per token, read by lookup) or the output projection.
fn is_vocabulary_matrix(name: &str) -> bool {
    name.ends_with("embed_tokens.weight")
        || name.ends_with("embed_tokens_per_layer.weight")
        || name == "lm_head.weight"
        || name.ends_with(".lm_head.weight")
}

/// A decoder layer's experts stacked in one tensor: `<anything>.layers.<N>.mlp.experts.gate_up_proj` or
/// `.down_proj` (Qwen3.5 MoE, gpt-oss), `….block_sparse_moe.input_linear.weight` or `.output_linear.weight`
/// (Granite 4.0-H).
pub fn is_stacked_experts(name: &str) -> bool {
    let Some(rest) = name.split_once(".layers.").map(|(_, r)| r) else {
        return false;
    };
    let layer_number = rest.split('.').next().is_some_and(|n| n.parse::<usize>().is_ok());
    let stacked = [
        ".experts.gate_up_proj",
        ".experts.down_proj",
        ".block_sparse_moe.input_linear.weight",
        ".block_sparse_moe.output_linear.weight",
    ];
    layer_number && stacked.iter().any(|s| name.ends_with(s))
}

/// A projection matrix of a decoder layer: `<anything>.layers.<N>.<module>.<x>_proj[_with_mqa].weight`, an MLP's `w1`,
/// `w2`, `w3` (LFM2's `feed_forward.w1.weight`, Mixtral's `….experts.<E>.w1.weight`), or Granite 4.0's shared MLP
/// (`shared_mlp.input_linear.weight`, `.output_linear.weight`).
fn is_layer_projection(name: &str) -> bool {
    let Some(rest) = name.split_once(".layers.").map(|(_, r)| r) else {
        return false;
    };
    let layer_number = rest.split('.').next().is_some_and(|n| n.parse::<usize>().is_ok());
    let mlp_w = [
        ".w1.weight",
        ".w2.weight",
        ".w3.weight",
        ".shared_mlp.input_linear.weight",
        ".shared_mlp.output_linear.weight",
    ]
    .iter()
    .any(|w| name.ends_with(w));
    // DeepSeek-V3's compressed key/value projection is `kv_a_proj_with_mqa`. Gemma 4's router is `router.proj`:
    // it chooses experts, so it stays exact as every other family's router does.
    let projection = name.ends_with("_proj.weight") || name.ends_with("_proj_with_mqa.weight");
    let router = name.ends_with(".router.proj.weight");
    layer_number && (projection || mlp_w) && !router
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_layer_projections_are_quantized_and_rows_must_hold_whole_blocks() {
        let q4 = QuantizeFrozen::Q4K;
        let down = "model.layers.3.mlp.down_proj.weight";
        assert_eq!(q4.format_for(down, &[4096, 11008]), Some(QuantFormat::Q4K));
        // Qwen2.5-0.5B's hidden size 896 is 28 blocks of 32 but not whole blocks of 256.
        assert_eq!(q4.format_for(down, &[4864, 896]), Some(QuantFormat::Q8_0));
        assert_eq!(q4.format_for(down, &[64, 100]), None);
        assert_eq!(
            QuantizeFrozen::Q8_0.format_for(down, &[4096, 11008]),
            Some(QuantFormat::Q8_0)
        );
        assert_eq!(QuantizeFrozen::None.format_for(down, &[4096, 4096]), None);
        // The vocabulary matrices at 8 bits whatever the choice.
        for name in [
            "model.embed_tokens.weight",
            "lm_head.weight",
            "language_model.lm_head.weight",
        ] {
            assert_eq!(q4.format_for(name, &[32000, 4096]), Some(QuantFormat::Q8_0), "{name}");
            assert_eq!(q4.format_for(name, &[32000, 100]), None, "{name}");
            assert_eq!(QuantizeFrozen::None.format_for(name, &[32000, 4096]), None, "{name}");
        }
        for name in [
            "model.layers.0.input_layernorm.weight",
            "model.layers.0.self_attn.q_proj.bias",
            "model.layers.x.self_attn.q_proj.weight",
        ] {
            assert_eq!(q4.format_for(name, &[256, 256]), None, "{name}");
        }
        // Granite 4.0-H: stacked experts (experts × rows × columns, whole blocks of 256 a row) and the shared MLP.
        let granite = "model.layers.2.block_sparse_moe.input_linear.weight";
        assert_eq!(q4.format_for(granite, &[64, 3072, 1536]), Some(QuantFormat::Q4K));
        let shared = "model.layers.2.shared_mlp.output_linear.weight";
        assert_eq!(q4.format_for(shared, &[1536, 512]), Some(QuantFormat::Q4K));
        // Gemma 4: its experts are quantized, its router (which picks them) is not.
        let gemma4 = "model.language_model.layers.1.experts.gate_up_proj";
        assert_eq!(q4.format_for(gemma4, &[128, 1408, 2816]), Some(QuantFormat::Q4K));
        let router = "model.language_model.layers.1.router.proj.weight";
        assert_eq!(q4.format_for(router, &[128, 2816]), None);
        let wrapped = "language_model.model.layers.0.self_attn.qkv_proj.weight";
        assert_eq!(q4.format_for(wrapped, &[768, 256]), Some(QuantFormat::Q4K));
        // Stacked experts, each expert's rows in blocks; any other 3-D tensor stays dense.
        let experts = "model.language_model.layers.2.mlp.experts.gate_up_proj";
        assert_eq!(q4.format_for(experts, &[256, 1024, 2048]), Some(QuantFormat::Q4K));
        assert_eq!(q4.format_for(experts, &[4, 64, 64]), Some(QuantFormat::Q8_0));
        let down = "model.layers.2.mlp.experts.down_proj";
        assert_eq!(q4.format_for(down, &[4, 64, 100]), None);
        assert_eq!(q4.format_for("model.layers.0.conv.conv.weight", &[64, 1, 256]), None);
        assert_eq!(
            q4.frozen_bytes(experts, &[4, 64, 64], 4 * 64 * 64, 2),
            4 * 64 * 64 / 32 * 34
        );
        // Mixtral's experts and LFM2's MLP (`w1`, `w2`, `w3`) are projections too.
        let mixtral = "model.layers.0.block_sparse_moe.experts.3.w2.weight";
        assert_eq!(q4.format_for(mixtral, &[256, 512]), Some(QuantFormat::Q4K));
        let lfm2 = "model.layers.0.feed_forward.w1.weight";
        assert_eq!(q4.format_for(lfm2, &[256, 512]), Some(QuantFormat::Q4K));
        assert_eq!(
            q4.format_for("model.w1.weight", &[256, 512]),
            None,
            "outside the layers"
        );
    }

    #[test]
    fn sizes_are_llama_cpp_block_sizes() {
        // 4.5 and 8.5 bits a weight.
        assert_eq!(QuantFormat::Q4K.bytes_for(4096 * 4096) * 8, 4096 * 4096 * 9 / 2);
        assert_eq!(QuantFormat::Q8_0.bytes_for(4096 * 4096) * 8, 4096 * 4096 * 17 / 2);
        let q = QuantizeFrozen::Q4K;
        assert_eq!(q.frozen_bytes("model.norm.weight", &[4096], 4096, 2), 8192);
        assert_eq!(
            q.frozen_bytes("lm_head.weight", &[32000, 4096], 32000 * 4096, 2),
            32000 * 4096 / 32 * 34
        );
        for s in ["none", "q8_0", "q4_k"] {
            assert_eq!(QuantizeFrozen::parse(s).map(|q| q.name()), Some(s));
        }
        assert_eq!(QuantizeFrozen::parse("q4_0"), None);
    }
}
