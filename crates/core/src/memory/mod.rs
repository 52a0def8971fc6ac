//! Memory estimate of a freeze plan for training. The formula (also in docs/memory.md):
//!
//! ```text
//! frozen weights     = Σ frozen tensors     numel × bytes(dtype as stored)   (a GGUF file's: its blocks' bytes)
//! trainable weights  = Σ trainable tensors  numel × 4      (f32 master copy)
//! gradients          = Σ trainable tensors  numel × 4
//! optimizer (AdamW)  = Σ trainable tensors  numel × 8      (first and second moments, f32)
//! update temporaries = 10 × largest trainable tensor × 4    (the AdamW update's intermediates, one tensor at a time)
//! activations        = 4 bytes × B × S × [ (L − l₀) × (7·h + 3·q + 4·kv + 4·i + H) + h + 3·V ] + attention blocks
//!                      if anything trains
//! total              = weights + gradients + optimizer + max(update temporaries, activations)
//! ```
//! with batch B, sequence S, L layers, l₀ the lowest layer holding a trainable tensor (0 when the embeddings train;
//! L when only the final norm / lm_head train), hidden h, query width q = heads × head_dim, key/value width
//! kv = kv_heads × head_dim, MLP width i, H attention heads and vocabulary V (q, kv and i each layer's own,
//! `layer.rs`). Per layer and token the backward pass keeps the residual input, two norm
//! outputs, q/k/v (before and after rotary, and v's head-major copy), the attention output, o_proj and down_proj
//! outputs (≈7·h + 3·q + 4·kv), the MLP's gate, up, activation and product (4·i), and the blockwise attention's
//! log-sum-exp per head (H). The attention's seq × seq scores exist one block of query rows at a time, never kept:
//! a constant `ATTENTION_BLOCKS` covers them. The final hidden state (h), the logits and their gradient (3·V) are
//! kept once. Nothing below l₀ is kept: no graph is recorded there. The update runs after the step's graph is
//! dropped, so it and the activations are never held together. Calibrated against the device-generic path's peak
//! (`bench-train --generic`, docs/memory.md); the process itself (runtime, tokenizer, mapped files) is not counted.
//!
//! On the CPU in f32 the fused kernels keep less, and that is estimated apart (`cpu_total_bytes`): per layer and
//! token 5·h + 2·q + 4·kv + 2·i + H·(S/2 + 32): the layer's input, the attention norm's output, q/k/v before and
//! after the split into rotated heads, the attention and o_proj outputs and the residual sum; the MLP
//! block's gate and up projections (2·i, its only intermediates); and the causal attention's probabilities, kept
//! for the keys each block of 64 query rows can see (about S/2 + 32 per query and head); a layer those blocks do not
//! serve (`LayerShape`) counts the composite terms. The head keeps 2·h and one block of logits (`head_terms`). No
//! update temporaries (AdamW updates in place).
//!
//! Layers whose token mixer is not attention (told by their module's name, `layer::MIXER_MODULES`) have terms of their
//! own: Qwen3.5's Gated DeltaNet (`linear_attn`) and LFM2's short convolution (`conv`); a layer holding experts
//! (`.experts.` tensors) counts its MLP for the experts each token chose (`Widths::mlp_per_token`); see
//! [`Widths::per_token`] and docs/memory.md.

mod layer;

use crate::layout::{ModelLayout, TensorInfo};
use crate::plan::PlanOptions;
use layer::{Defaults, LayerShape, Mixer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct MemoryEstimate {
    pub batch_size: u64,
    pub seq_len: u64,
    pub frozen_weight_bytes: u64,
    pub trainable_weight_bytes: u64,
    pub gradient_bytes: u64,
    pub optimizer_bytes: u64,
    /// Transient memory of the optimizer update (its intermediates for the largest trainable tensor).
    pub update_bytes: u64,
    /// `None` when config.json lacks the sizes the formula needs.
    pub activation_bytes: Option<u64>,
    /// Lowest layer the backward pass reaches (`num_layers` when only non-layer modules above the stack train).
    pub backward_from_layer: Option<usize>,
    /// The total with the composite ops (GPUs, and the CPU in bf16/f16).
    pub total_bytes: u64,
    /// Activations and total on the CPU in f32, where the fused kernels keep fewer activations and the AdamW
    /// update has no temporaries.
    pub cpu_activation_bytes: Option<u64>,
    pub cpu_total_bytes: u64,
}

const ACT_BYTES: u64 = 4;
/// Tensors the size of a parameter that one AdamW update creates (moment updates, square, root, quotient, ...).
const UPDATE_TEMPORARIES: u64 = 10;
/// The blockwise attention's working set while one block of query rows is computed: about four f32 score-sized
/// tensors of its 32 MiB block (crates/train/src/attention.rs), whatever the sequence length.
const ATTENTION_BLOCKS: u64 = 4 * (32 << 20);

/// The composite AdamW update's transient memory: its temporaries for the largest trainable tensor, in f32.
pub(crate) fn update_bytes(largest_trainable: u64) -> u64 {
    UPDATE_TEMPORARIES * 4 * largest_trainable
}

pub fn estimate_memory(layout: &ModelLayout, trainable: &BTreeSet<String>, options: PlanOptions) -> MemoryEstimate {
    let mut frozen = 0u64;
    let mut trainable_params = 0u64;
    let mut largest = 0u64;
    for t in layout.tensors() {
        if trainable.contains(&t.name) {
            trainable_params += t.params;
            largest = largest.max(t.params);
        } else {
            // A GGUF file's quantized tensor is held in its own blocks (gguf_map.rs).
            frozen += t.frozen_block_bytes().unwrap_or_else(|| t.dtype.bytes_for(t.params));
        }
    }
    let backward_from_layer = lowest_backward_layer(layout, trainable);
    // A trained tensor is an f32 master; a frozen one is dense unless a GGUF file's (or FP8, MXFP4) blocks hold it.
    let dense = |t: &TensorInfo| trainable.contains(&t.name) || t.frozen_block_bytes().is_none();
    let activations = |kernels| {
        let setup = ActivationSetup {
            kernels,
            checkpointing: false,
            bytes: ACT_BYTES,
            dense: &dense,
        };
        backward_from_layer.and_then(|l0| activations_with(layout, l0, options, setup))
    };
    let activation_bytes = activations(Kernels::Composite);
    let cpu_activation_bytes = activations(Kernels::FusedCpu);
    let known = |a: Option<u64>| a.or(if backward_from_layer.is_none() { Some(0) } else { None });
    let (weights, grads, optim) = (trainable_params * 4, trainable_params * 4, trainable_params * 8);
    MemoryEstimate {
        batch_size: options.batch_size,
        seq_len: options.seq_len,
        frozen_weight_bytes: frozen,
        trainable_weight_bytes: weights,
        gradient_bytes: grads,
        optimizer_bytes: optim,
        update_bytes: update_bytes(largest),
        activation_bytes: known(activation_bytes),
        backward_from_layer,
        total_bytes: frozen + weights + grads + optim + update_bytes(largest).max(activation_bytes.unwrap_or(0)),
        cpu_activation_bytes: known(cpu_activation_bytes),
        cpu_total_bytes: frozen + weights + grads + optim + cpu_activation_bytes.unwrap_or(0),
    }
}

/// Which implementation of the layer's ops the activation term describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernels {
    Composite,
    FusedCpu,
}

pub(crate) fn lowest_backward_layer(layout: &ModelLayout, trainable: &BTreeSet<String>) -> Option<usize> {
    if trainable.is_empty() {
        return None;
    }
    let embeddings_train = layout.non_layer_modules.iter().any(|m| {
        m.kind == crate::layout::ModuleKind::Embedding && m.tensors.iter().any(|t| trainable.contains(&t.name))
    });
    if embeddings_train {
        return Some(0);
    }
    let lowest = layout
        .layers
        .iter()
        .find(|l| l.tensors().any(|t| trainable.contains(&t.name)))
        .map(|l| l.id);
    Some(lowest.unwrap_or(layout.num_layers))
}

/// How a run holds its activations and weights, for the activation term.
#[derive(Clone, Copy)]
pub(crate) struct ActivationSetup<'a> {
    pub kernels: Kernels,
    /// Only each layer's input kept through the forward pass and one layer's activations at a time recomputed in
    /// the backward pass (`Decoder::checkpointed_backward`).
    pub checkpointing: bool,
    /// Bytes per activation: 4 in f32, 2 in bf16/f16.
    pub bytes: u64,
    /// Whether a weight is held dense in the compute dtype: the CPU's fused blocks and head take only those (not a
    /// GGUF file's blocks, FP8 or MXFP4, nor what `quantize_frozen` holds in blocks).
    pub dense: &'a dyn Fn(&TensorInfo) -> bool,
}

/// The activation term of a run set up as `setup` says, the backward pass reaching layer `l0`.
pub(crate) fn activations_with(layout: &ModelLayout, l0: usize, o: PlanOptions, setup: ActivationSetup) -> Option<u64> {
    let ActivationSetup {
        kernels,
        checkpointing,
        bytes,
        dense,
    } = setup;
    let d = &layout.dims;
    let (h, i, heads, v) = (
        d.hidden_size?,
        d.intermediate_size?,
        d.num_attention_heads?,
        d.vocab_size?,
    );
    let head_dim = d.head_dim.unwrap_or(h / heads.max(1));
    let kv = d.num_key_value_heads.unwrap_or(heads).saturating_mul(head_dim);
    let widths = Widths {
        h,
        i,
        q: heads.saturating_mul(head_dim),
        kv,
        partial_rotary: d.partial_rotary,
        unfused_mlp_activation: d.unfused_mlp_activation,
        heads,
        seq: o.seq_len,
        experts: d.experts,
        latent: d.latent,
        mamba: d.mamba,
        f32_values: (4 / bytes.max(1)).max(1),
    };
    let mut per_layer: Vec<u64> = layout
        .layers
        .iter()
        .filter(|layer| layer.id >= l0)
        .map(|layer| widths.per_token(&widths.shape_of(layer, dense), d.delta_net, kernels))
        .collect::<Option<_>>()?;
    // Layers the config counts but the checkpoint does not show are taken as attention layers.
    let counted = layout.num_layers.saturating_sub(l0);
    if per_layer.len() < counted {
        let attention = widths.per_token(&widths.plain_attention_layer(), None, kernels)?;
        per_layer.resize(counted, attention);
    }
    let layers = per_layer.len() as u64;
    let kept_layers = match checkpointing && layers > 0 {
        true => (layers * h).saturating_add(per_layer.iter().max().copied().unwrap_or(0)),
        false => per_layer.iter().fold(0u64, |a, b| a.saturating_add(*b)),
    };
    let tokens = o.batch_size.saturating_mul(o.seq_len);
    let fused_head = kernels == Kernels::FusedCpu && head_weight(layout).is_none_or(dense);
    let (head, head_block) = head_terms(h, v, tokens, fused_head);
    let per_token = kept_layers
        .saturating_add(head)
        .saturating_add(per_layer_inputs(layout, l0));
    let blocks = match kernels {
        Kernels::Composite => ATTENTION_BLOCKS,
        Kernels::FusedCpu => head_block,
    };
    // One layer's recomputation at a time, in f32 whatever the run's dtype (the delta rule computes in f32).
    let recomputed = layout
        .layers
        .iter()
        .filter(|layer| layer.id >= l0)
        .map(|layer| widths.recomputed_per_token(widths.shape_of(layer, dense).mixer, d.delta_net, kernels))
        .max()
        .unwrap_or(0);
    Some(
        (bytes * tokens)
            .saturating_mul(per_token)
            .saturating_add(blocks)
            .saturating_add((ACT_BYTES * tokens).saturating_mul(recomputed)),
    )
}

/// The head's values per token, and the bytes it holds once. The logits and their gradient are kept with the final
/// hidden state (h + 3·V), except where the CPU's fused head and loss serves (`fused/head_loss.rs`: a dense f32
/// lm_head): it keeps the hidden state and its gradient (2·h) and makes the logits one block of rows at a time (at
/// least 1,024 rows, or 8 MiB).
fn head_terms(h: u64, v: u64, tokens: u64, fused: bool) -> (u64, u64) {
    const BLOCK_ROWS: u64 = 1024;
    const BLOCK_VALUES: u64 = 1 << 21;
    match fused {
        false => (h.saturating_add(v.saturating_mul(3)), 0),
        true => {
            let rows = BLOCK_ROWS.max(BLOCK_VALUES / v.max(1)).min(tokens);
            (h.saturating_mul(2), (ACT_BYTES * rows).saturating_mul(v))
        }
    }
}

/// The output head's weight: `lm_head`'s, or the embeddings' where they are tied.
fn head_weight(layout: &ModelLayout) -> Option<&TensorInfo> {
    let tensors = || layout.non_layer_modules.iter().flat_map(|m| &m.tensors);
    tensors()
        .find(|t| crate::tie::is_lm_head(&t.name))
        .or_else(|| tensors().find(|t| crate::tie::is_embeddings(&t.name)))
}

/// Gemma 4's per-layer inputs (`embed_tokens_per_layer`, L·w wide): made once below the layers and read by each
/// layer's branch; when the embeddings train (l₀ = 0) their rows, projection and norm are kept too (3·L·w).
fn per_layer_inputs(layout: &ModelLayout, l0: usize) -> u64 {
    if l0 >= layout.num_layers {
        return 0;
    }
    let width = layout
        .non_layer_modules
        .iter()
        .flat_map(|m| &m.tensors)
        .find(|t| t.name.ends_with("embed_tokens_per_layer.weight"))
        .and_then(|t| t.shape.get(1).copied())
        .unwrap_or(0);
    if l0 == 0 {
        width.saturating_mul(3)
    } else {
        width
    }
}

/// The sizes the per-layer terms are made of, as config.json gives them (each layer's own are its `LayerShape`).
struct Widths {
    h: u64,
    i: u64,
    /// The query width, heads × head_dim.
    q: u64,
    kv: u64,
    heads: u64,
    partial_rotary: bool,
    unfused_mlp_activation: bool,
    seq: u64,
    experts: Option<crate::config::ExpertDims>,
    latent: Option<crate::config::LatentDims>,
    mamba: Option<crate::config::MambaDims>,
    /// Values of the compute dtype an f32 intermediate takes: 1 in f32, 2 in half precision.
    f32_values: u64,
}

/// Positions per chunk of the delta rule (crates/train/src/delta_rule.rs).
const DELTA_CHUNK: u64 = 64;

/// The longest chunk of Mamba 2's scan (crates/train/src/mamba.rs's `MAX_CHUNK`).
const MAMBA_CHUNK: u64 = 64;

impl Widths {
    fn shape_of(&self, layer: &crate::layout::LayerInfo, dense: &dyn Fn(&TensorInfo) -> bool) -> LayerShape {
        let defaults = Defaults {
            h: self.h,
            q: self.q,
            kv: self.kv,
            i: self.i,
            partial_rotary: self.partial_rotary,
            unfused_mlp_activation: self.unfused_mlp_activation,
        };
        LayerShape::of(layer, defaults, dense)
    }

    /// A plain pre-norm attention layer of the config's sizes (for layers the checkpoint does not show).
    fn plain_attention_layer(&self) -> LayerShape {
        LayerShape {
            mixer: Mixer::Attention,
            sparse: false,
            dense_beside: false,
            q: self.q,
            kv: self.kv,
            i: self.i,
            fused_attention: true,
            fused_mlp: true,
            extra: 0,
        }
    }

    /// Activations one layer keeps per token (in values), by its token mixer; None where config.json lacks the
    /// mixer's sizes.
    fn per_token(
        &self,
        shape: &LayerShape,
        delta: Option<crate::config::DeltaNetDims>,
        kernels: Kernels,
    ) -> Option<u64> {
        let Widths { h, heads, seq, .. } = *self;
        let (q, kv) = (shape.q, shape.kv);
        let fused = kernels == Kernels::FusedCpu;
        let probs = if fused { heads * (seq / 2 + 32) } else { heads };
        Some(
            match shape.mixer {
                // Latent attention (latent.rs): the ranks' projections and norms (3 each); q, k and v at the
                // kernels' width, each built by a cat or a pad, and the output (8 of them); o_proj's input and
                // output. The fused attention block never serves it; the fused kernel keeps its probabilities.
                Mixer::Attention if self.latent.is_some() => {
                    let l = self.latent?;
                    let sat = |a: u64, b: u64| a.saturating_mul(b);
                    (4 * h)
                        .saturating_add(sat(8 * heads, l.head_width))
                        .saturating_add(sat(3, l.q_rank.saturating_add(l.kv_rank)))
                        .saturating_add(probs)
                }
                Mixer::Attention => {
                    let (hs, qs) = match fused && shape.fused_attention {
                        true => (5, 2),
                        false => (7, 3),
                    };
                    let sat = |a: u64, b: u64| a.saturating_mul(b);
                    sat(hs, h)
                        .saturating_add(sat(qs, q))
                        .saturating_add(sat(4, kv))
                        .saturating_add(probs)
                }
                Mixer::DeltaRule => {
                    // The projection into the convolution and the rule's packed inputs; then from the rule's output
                    // on, z and its SiLU, the gated norm's input and output. The convolution, SiLU, q/k norms and
                    // repeats between them are made inside one op (CPU f32, `fused/delta_net_inputs.rs`) or one
                    // recomputed node (`delta_net.rs`) that keeps nothing else. Calibrated on a Qwen3.5-shaped model
                    // (docs/memory.md). Each size is below 2^32 (config.rs), so only their products need saturating.
                    let d = delta?;
                    let sat = |a: u64, b: u64| a.saturating_mul(b);
                    let (keys, values, conv) = delta_widths(d);
                    let kept = conv.saturating_add(sat(2, keys)).saturating_add(sat(2, values));
                    let rule = match fused {
                        // The fused rule keeps the state at each chunk's start.
                        true => sat(keys, d.value_dim) / DELTA_CHUNK + 3 * h,
                        // The composite path keeps no state: its backward pass recomputes the layer's rule
                        // (`recomputed_per_token`).
                        false => 6 * h,
                    };
                    kept.saturating_add(rule)
                }
                // in_proj's B, C and x, B·x padded, the convolution and C·y, out_proj.
                Mixer::ShortConv if fused => 12 * h,
                Mixer::ShortConv => 14 * h,
                Mixer::Mamba => {
                    // in_proj's output (z, x‖B‖C, dt); the convolution's padded input, output, bias sum and SiLU
                    // (4 of x‖B‖C); then, in f32 whatever the compute dtype: x‖B‖C, dt's softplus (6 a head) and,
                    // from the scan's output on, which one recomputed node makes keeping only its inputs (ssd.rs),
                    // the skip and its sum, z and its SiLU, the gated norm's product, square, quotient and weighted
                    // output (10 of the inner width); and out_proj's input.
                    let m = self.mamba?;
                    let sat = |a: u64, b: u64| a.saturating_mul(b);
                    let conv = m.inner.saturating_add(sat(2, m.groups_state));
                    let projection = m.inner.saturating_add(conv).saturating_add(m.heads);
                    let in_f32 = conv.saturating_add(sat(6, m.heads)).saturating_add(sat(10, m.inner));
                    projection
                        .saturating_add(sat(4, conv))
                        .saturating_add(sat(self.f32_values, in_f32))
                        .saturating_add(m.inner)
                }
            }
            .saturating_add(shape.extra)
            .saturating_add(self.mlp_per_token(shape, kernels)),
        )
    }

    /// What a layer's MLP keeps per token. Dense: gate, up, the activation and the product (4·i), or the fused
    /// block's gate and up (2·i) where it serves. Sparse (moe.rs), for each of the token's top_k experts: its input row, the
    /// expert's output, the output weighted, and the weighted outputs gathered (4·h), with the expert's gate, up,
    /// activation and product (4·width; fused: gate and up, and the product the down projection takes); and the
    /// router's logits and softmax (4·experts); a shared expert's intermediates, output, scaled output and the sum
    /// (4·width + 3·h, fused 3·width + 3·h); a dense MLP beside the experts (Gemma 4) its own 4·i.
    fn mlp_per_token(&self, shape: &LayerShape, kernels: Kernels) -> u64 {
        let fused = kernels == Kernels::FusedCpu;
        let dense = match fused && shape.fused_mlp {
            true => shape.i.saturating_mul(2),
            false => shape.i.saturating_mul(4),
        };
        match self.experts.filter(|_| shape.sparse) {
            None => dense,
            Some(e) => {
                let intermediates = |w: u64| if fused { 3 * w } else { 4 * w };
                // A shared expert: its intermediates, its output, that output scaled, and the sum.
                let shared = e.shared_width.map_or(0, |w| intermediates(w) + 3 * self.h);
                e.top_k
                    .saturating_mul(intermediates(e.width) + 4 * self.h)
                    .saturating_add(4 * e.count)
                    .saturating_add(shared)
                    .saturating_add(if shape.dense_beside { dense } else { 0 })
            }
        }
    }

    /// Values per token that exist only while one layer's backward pass recomputes part of its forward pass:
    /// on the composite path, a DeltaNet layer's convolution, SiLU, q/k norms and repeats (6·conv + 10·keys +
    /// 10·values) and the chunked rule's chunk × chunk blocks with their gradients (about 96 per position of a
    /// chunk and value head); calibrated as the kept terms are (docs/memory.md).
    fn recomputed_per_token(&self, mixer: Mixer, delta: Option<crate::config::DeltaNetDims>, kernels: Kernels) -> u64 {
        match (mixer, delta, kernels) {
            (Mixer::DeltaRule, Some(d), Kernels::Composite) => {
                let (keys, values, conv) = delta_widths(d);
                let sat = |a: u64, b: u64| a.saturating_mul(b);
                sat(96 * DELTA_CHUNK, d.value_heads)
                    .saturating_add(sat(6, conv))
                    .saturating_add(sat(10, keys))
                    .saturating_add(sat(10, values))
            }
            // The scan's chunk × chunk blocks and their gradients while one layer's recomputation runs (ssd.rs),
            // about 16 per position of a chunk and head.
            (Mixer::Mamba, _, _) => self.mamba.map_or(0, |m| (16 * MAMBA_CHUNK).saturating_mul(m.heads)),
            _ => 0,
        }
    }
}

/// A DeltaNet layer's widths per token: q and k repeated per value head (keys), v (values), and q, k and v as the
/// convolution sees them (conv).
fn delta_widths(d: crate::config::DeltaNetDims) -> (u64, u64, u64) {
    let sat = |a: u64, b: u64| a.saturating_mul(b);
    let keys = sat(d.value_heads, d.key_dim);
    let values = sat(d.value_heads, d.value_dim);
    (keys, values, sat(2 * d.key_heads, d.key_dim).saturating_add(values))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every weight dense, no checkpointing.
    fn setup(kernels: Kernels, bytes: u64) -> ActivationSetup<'static> {
        ActivationSetup {
            kernels,
            checkpointing: false,
            bytes,
            dense: &|_| true,
        }
    }

    #[test]
    fn a_shared_expert_adds_its_own_term() {
        let experts = crate::config::ExpertDims {
            count: 8,
            top_k: 2,
            width: 16,
            shared_width: Some(32),
            router_loss: false,
        };
        let w = Widths {
            h: 64,
            i: 96,
            q: 64,
            kv: 32,
            heads: 4,
            partial_rotary: false,
            unfused_mlp_activation: false,
            seq: 128,
            experts: Some(experts),
            latent: None,
            mamba: None,
            f32_values: 1,
        };
        // Latent attention (composite): 4·64 + 8·4·24 + 3·(16 + 8) + 4, whatever `kv` says.
        let latent = Widths {
            latent: Some(crate::config::LatentDims {
                q_rank: 16,
                kv_rank: 8,
                head_width: 24,
            }),
            experts: None,
            ..w
        };
        let attention = latent.plain_attention_layer();
        let mlp = latent.mlp_per_token(&attention, Kernels::Composite);
        assert_eq!(
            latent.per_token(&attention, None, Kernels::Composite),
            Some(256 + 768 + 72 + 4 + mlp)
        );
        // 2·(4·16 + 4·64) + 4·8 routed, 4·32 + 3·64 shared; fused 2·(3·16 + 4·64) + 32 and 3·32 + 3·64.
        let sparse = LayerShape {
            sparse: true,
            ..w.plain_attention_layer()
        };
        assert_eq!(
            w.mlp_per_token(&sparse, Kernels::Composite),
            2 * (64 + 256) + 32 + 128 + 192
        );
        assert_eq!(
            w.mlp_per_token(&sparse, Kernels::FusedCpu),
            2 * (48 + 256) + 32 + 96 + 192
        );
        assert_eq!(w.mlp_per_token(&w.plain_attention_layer(), Kernels::Composite), 4 * 96);
        // Gemma 4's dense MLP beside the experts adds its own, unfused.
        let beside = LayerShape {
            dense_beside: true,
            fused_mlp: false,
            ..sparse
        };
        assert_eq!(
            w.mlp_per_token(&beside, Kernels::FusedCpu),
            2 * (48 + 256) + 32 + 96 + 192 + 4 * 96
        );
    }

    #[test]
    fn the_fused_head_is_counted_only_for_a_dense_head() {
        // The llama fixture: hidden 64, vocabulary 512, an untied lm_head; 128 tokens.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/llama");
        let layout = ModelLayout::inspect(&dir).unwrap();
        let o = PlanOptions {
            batch_size: 1,
            seq_len: 128,
        };
        let top = layout.num_layers;
        let dense = activations_with(&layout, top, o, setup(Kernels::FusedCpu, 4)).unwrap();
        // The fused head: 2·64 a token and one block of 128 rows of logits.
        assert_eq!(dense, 4 * 128 * 128 + 4 * 128 * 512);
        // An lm_head held in blocks (quantize_frozen, a GGUF file) makes the logits and their gradient whole.
        let quantized = ActivationSetup {
            dense: &|t: &TensorInfo| t.name != "lm_head.weight",
            ..setup(Kernels::FusedCpu, 4)
        };
        let blocks = activations_with(&layout, top, o, quantized).unwrap();
        assert_eq!(blocks, 4 * 128 * (64 + 3 * 512));
    }

    #[test]
    fn a_sparse_layer_counts_its_chosen_experts() {
        // Qwen3 MoE's fixture: hidden 64, 4 heads, key/value width 32, vocabulary 512; layers 0 and 2 route each
        // token to 2 of 4 experts of width 32, layer 1 keeps a dense MLP of 96.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/qwen3_moe");
        let layout = ModelLayout::inspect(&dir).unwrap();
        let o = PlanOptions {
            batch_size: 1,
            seq_len: 128,
        };
        // Composite: attention 7·64 + 3·64 + 4·32 + 4 = 772 a layer, and its q/k norms' inputs 64 + 32; the dense
        // MLP 4·96; a sparse one 2·(4·32 + 4·64) + 4·4 = 784. The head: 64 + 3·512.
        let composite = activations_with(&layout, 0, o, setup(Kernels::Composite, 4)).unwrap();
        let layers = 2 * (868 + 784) + (868 + 384);
        assert_eq!(composite, 4 * 128 * (layers + 64 + 1536) + ATTENTION_BLOCKS);
        // CPU f32: the fused attention block, q/k norms and all: 5·64 + 2·64 + 4·32, the norms' inputs 96 and the
        // kernel's probabilities 4·(64 + 32); the dense MLP 2·96; a sparse one 2·(3·32 + 4·64) + 16. The fused
        // head keeps 2·64 a token and one block of 128 rows of logits.
        let fused = activations_with(&layout, 0, o, setup(Kernels::FusedCpu, 4)).unwrap();
        let layers = 2 * (1056 + 720) + (1056 + 192);
        assert_eq!(fused, 4 * 128 * (layers + 128) + 4 * 128 * 512);
    }

    #[test]
    fn a_hybrid_counts_each_layer_by_its_token_mixer() {
        // Qwen3.5's fixture: three Gated DeltaNet layers, then one attention layer; hidden 64, MLP 96, 4 heads,
        // key/value width 32, vocabulary 512; delta rule 2 key heads of 16, 4 value heads of 8.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/qwen3_5");
        let layout = ModelLayout::inspect(&dir).unwrap();
        let o = PlanOptions {
            batch_size: 1,
            seq_len: 128,
        };
        // Per token, fused: a DeltaNet layer 96 + 2·64 + 2·32 (kept) + 64·8/64 (states) + 3·64 + 2·96 = 680; the
        // attention layer (q_proj 128 wide with its output gate; q/k norms, so not the fused block) 7·64 + 3·128
        // + 4·32 + 4·(64 + 32) + 128 + 32 (the norms' inputs) + 2·96 = 1696; the head 2·64, and 128 rows of
        // logits once.
        let fused = activations_with(&layout, 0, o, setup(Kernels::FusedCpu, 4));
        let head_block = 4 * 128 * 512;
        assert_eq!(fused, Some(4 * 128 * (3 * 680 + 1696 + 128) + head_block));
        // From layer 3 on, only the attention layer.
        let top = activations_with(&layout, 3, o, setup(Kernels::FusedCpu, 4));
        assert_eq!(top, Some(4 * 128 * (1696 + 128) + head_block));
        // Composite: no states kept, but one layer recomputed at a time, in f32: its convolution, norms and
        // repeats (6·96 + 10·64 + 10·32) and the rule's blocks (96·64 per value head).
        let composite = activations_with(&layout, 0, o, setup(Kernels::Composite, 4)).unwrap();
        let delta = 96 + 2 * 64 + 2 * 32 + 6 * 64 + 4 * 96;
        let attention = 7 * 64 + 3 * 128 + 4 * 32 + 4 + 160 + 4 * 96;
        let recomputed = 4 * 128 * (6 * 96 + 10 * 64 + 10 * 32 + 96 * 64 * 4);
        assert_eq!(
            composite,
            4 * 128 * (3 * delta + attention + 64 + 1536) + ATTENTION_BLOCKS + recomputed
        );
        // In bf16 the kept values halve; the recomputed rule stays f32.
        let half = activations_with(&layout, 0, o, setup(Kernels::Composite, 2)).unwrap();
        assert_eq!(
            half,
            2 * 128 * (3 * delta + attention + 64 + 1536) + ATTENTION_BLOCKS + recomputed
        );
        // Above the DeltaNet layers nothing is recomputed.
        let top = activations_with(&layout, 3, o, setup(Kernels::Composite, 4)).unwrap();
        assert_eq!(top, 4 * 128 * (attention + 64 + 1536) + ATTENTION_BLOCKS);
    }
}
