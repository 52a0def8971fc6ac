//! Does a training setup fit on a device? The memory it needs set against what the device has, and, when it does
//! not fit, the cheapest changes that would make it fit, each with its new estimate: first the ones that train the
//! same thing (gradient checkpointing, half precision on a GPU, a smaller batch with more accumulation), then the
//! ones that change it (a shorter cutoff, fewer layers). A decision computed once here; the CLI and the app draw it.
//!
//! The need counts what `memory.rs` counts, with the weights as the trainer holds them: frozen tensors in the
//! compute dtype (a bf16 checkpoint trained in f32 holds its frozen weights in f32), trainable ones as f32 masters
//! with f32 gradients and AdamW moments. Half precision halves the activations and the frozen weights; gradient
//! checkpointing keeps each layer's input and one layer's activations at a time. With a layer schedule the whole
//! selection is counted (an upper bound of its largest phase).

use crate::ids::format_layer_ids;
use crate::layout::{ModelLayout, TensorInfo};
use crate::memory::{activations_with, lowest_backward_layer, update_bytes, ActivationSetup, Kernels};
use crate::plan::PlanOptions;
use crate::quant::QuantizeFrozen;
use crate::run_config::OptimizerKind;
use crate::safetensors::DType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// How a run trains, as far as memory goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct FitSetup {
    pub batch_size: u64,
    pub seq_len: u64,
    pub gradient_accumulation: u64,
    pub gradient_checkpointing: bool,
    /// bf16/f16 compute (a GPU); f32 otherwise.
    pub half_precision: bool,
    /// The CPU (fused f32 kernels, in-place AdamW) rather than a GPU.
    pub cpu: bool,
    /// Frozen projection matrices held quantized (`[model] quantize_frozen`, quant.rs).
    #[serde(default)]
    pub quantize_frozen: QuantizeFrozen,
    /// The optimizer: its state per trainable value (AdamW 8 bytes, AdamW8bit about 2, Adafactor a matrix's rows and
    /// columns, SGD none).
    #[serde(default)]
    pub optimizer: OptimizerKind,
}

/// The device's memory the run may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct DeviceMemory {
    /// As the user knows it: "this machine", "cuda:0".
    pub name: String,
    /// Free memory (or, where free is unknown, total).
    pub available_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct FitVerdict {
    pub device: String,
    pub need_bytes: u64,
    pub available_bytes: u64,
    pub fits: bool,
    /// When it does not fit: changes, cheapest first, each with what the run would then need.
    pub changes: Vec<FitChange>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct FitChange {
    pub change: Change,
    /// The change in words: "turn on gradient checkpointing".
    pub text: String,
    pub need_bytes: u64,
    pub fits: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    GradientCheckpointing,
    HalfPrecision,
    Batch {
        batch_size: u64,
        gradient_accumulation: u64,
    },
    Cutoff {
        seq_len: u64,
    },
    Layers {
        layers: String,
    },
    /// Hold the frozen layers' matrices quantized.
    QuantizeFrozen {
        format: QuantizeFrozen,
    },
    /// AdamW's moments in 8 bits (`optimizer = "adamw8bit"`).
    Optimizer8bit,
    /// Every change above that keeps the training the same, at once.
    Combined,
}

/// Bytes a run with `trainable` and `setup` needs.
pub fn need_bytes(layout: &ModelLayout, trainable: &BTreeSet<String>, setup: FitSetup) -> u64 {
    let compute_bytes = if setup.half_precision { 2 } else { 4 };
    let (mut frozen, mut trained, mut largest, mut largest_quantized) = (0u64, 0u64, 0u64, 0u64);
    let (mut largest_mxfp4, mut largest_fp8) = (0u64, 0u64);
    let mut optimizer_state = 0u64;
    for t in layout.tensors() {
        if trainable.contains(&t.name) {
            trained += t.params;
            largest = largest.max(t.params);
            // AdamW8bit keeps its moments on the host (optim8.rs): on a GPU they take none of its memory.
            if setup.cpu || setup.optimizer != OptimizerKind::Adamw8bit {
                optimizer_state += setup.optimizer.state_bytes(&t.shape);
            }
            continue;
        }
        // Stacked experts are dequantized one expert at a time.
        let unit = match t.shape.as_slice() {
            [experts, _, _] => t.params / (*experts).max(1),
            _ => t.params,
        };
        // A GGUF file's quantized tensor (or MXFP4 experts) stays in its own blocks while frozen (gguf_map.rs,
        // mxfp4.rs).
        if let Some(bytes) = t.frozen_block_bytes() {
            frozen += bytes;
            match t.gguf.as_ref().map(|b| b.ggml_type.as_str()) {
                Some("mxfp4") => largest_mxfp4 = largest_mxfp4.max(unit),
                Some("fp8_e4m3") => largest_fp8 = largest_fp8.max(unit),
                _ => largest_quantized = largest_quantized.max(unit),
            }
            continue;
        }
        let dims: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        // A lookup table stays in its checkpoint dtype on the CPU where that is narrower (train's params.rs).
        let half_table = matches!(t.dtype, DType::BF16 | DType::F16)
            && setup.cpu
            && crate::quant::is_lookup_table(&t.name, !layout.tie_word_embeddings);
        let dense_bytes = if half_table {
            compute_bytes.min(2)
        } else {
            compute_bytes
        };
        frozen += setup
            .quantize_frozen
            .frozen_bytes(&t.name, &dims, t.params, dense_bytes);
        if setup.quantize_frozen.format_for(&t.name, &dims).is_some() {
            largest_quantized = largest_quantized.max(unit);
        }
    }
    // A quantized matrix is dequantized (to f32, then the compute dtype) for the length of one matmul; an MXFP4
    // expert through table lookups (u32 indices, the f32 value pairs, the scaled values, then the compute dtype:
    // train's mxfp4.rs); an FP8 matrix likewise (the f32 values, the scales spread over them, their product:
    // train's fp8.rs).
    let half_copy = if compute_bytes == 4 { 0 } else { compute_bytes };
    let dequantized = (largest_quantized * (4 + half_copy))
        .max(largest_mxfp4 * (10 + half_copy))
        .max(largest_fp8 * (12 + half_copy));
    let kernels = if setup.cpu && !setup.half_precision {
        Kernels::FusedCpu
    } else {
        Kernels::Composite
    };
    let options = PlanOptions {
        batch_size: setup.batch_size,
        seq_len: setup.seq_len,
    };
    // A trained tensor is an f32 master; a frozen one is dense unless held in blocks (a GGUF file's, FP8, MXFP4,
    // or `quantize_frozen`'s), which keeps the CPU's fused blocks and head away.
    let dense = |t: &TensorInfo| {
        trainable.contains(&t.name)
            || (t.frozen_block_bytes().is_none() && setup.quantize_frozen.format_for(&t.name, &t.dims()).is_none())
    };
    let activation_setup = ActivationSetup {
        kernels,
        checkpointing: setup.gradient_checkpointing,
        bytes: compute_bytes,
        dense: &dense,
    };
    let activations = lowest_backward_layer(layout, trainable)
        .and_then(|l0| activations_with(layout, l0, options, activation_setup))
        .unwrap_or(0);
    // The composite AdamW update's temporaries (memory.rs); the fused CPU update and AdamW8bit's host-side one
    // have none on the device.
    let update = if kernels == Kernels::Composite && setup.optimizer != OptimizerKind::Adamw8bit {
        update_bytes(largest)
    } else {
        0
    };
    // The update runs after the step's graph (and its activations) is dropped: whichever is larger is the peak.
    // f32 master and gradient of every trainable value, and the optimizer's state.
    frozen + dequantized + trained * 8 + optimizer_state + update.max(activations)
}

/// The verdict for `trainable` under `setup` on `device`.
pub fn fit(layout: &ModelLayout, trainable: &BTreeSet<String>, setup: FitSetup, device: &DeviceMemory) -> FitVerdict {
    let need = need_bytes(layout, trainable, setup);
    let available = device.available_bytes;
    let changes = if need <= available {
        Vec::new()
    } else {
        changes(layout, trainable, setup, available)
    };
    FitVerdict {
        device: device.name.clone(),
        need_bytes: need,
        available_bytes: available,
        fits: need <= available,
        changes,
    }
}

fn changes(layout: &ModelLayout, trainable: &BTreeSet<String>, setup: FitSetup, available: u64) -> Vec<FitChange> {
    let mut out: Vec<FitChange> = Vec::new();
    let make = |change: Change, text: String, need: u64| FitChange {
        change,
        text,
        need_bytes: need,
        fits: need <= available,
    };
    let need_with = |s: FitSetup| need_bytes(layout, trainable, s);
    let mut same_training = setup;
    if !setup.gradient_checkpointing {
        let s = FitSetup {
            gradient_checkpointing: true,
            ..setup
        };
        out.push(make(
            Change::GradientCheckpointing,
            "turn on gradient checkpointing (same result, about a third slower)".into(),
            need_with(s),
        ));
        same_training.gradient_checkpointing = true;
    }
    if !setup.half_precision && !setup.cpu {
        let s = FitSetup {
            half_precision: true,
            ..setup
        };
        out.push(make(
            Change::HalfPrecision,
            "compute in bf16 (f32 master weights stay)".into(),
            need_with(s),
        ));
        same_training.half_precision = true;
    }
    if let Some(s) = smaller_batch_that_fits(setup, available, &need_with) {
        out.push(make(
            Change::Batch {
                batch_size: s.batch_size,
                gradient_accumulation: s.gradient_accumulation,
            },
            format!(
                "batch {} with {} accumulation steps (the same {} examples per update)",
                s.batch_size,
                s.gradient_accumulation,
                setup.batch_size * setup.gradient_accumulation.max(1)
            ),
            need_with(s),
        ));
    }
    if out.len() > 1 && out.iter().all(|c| !c.fits) {
        // Together: checkpointing and half precision first, then the largest batch that fits with them (batch 1
        // when none does, to say how far off it still is).
        let per_update = setup.batch_size * setup.gradient_accumulation.max(1);
        same_training = smaller_batch_that_fits(same_training, available, &need_with).unwrap_or(FitSetup {
            batch_size: 1,
            gradient_accumulation: per_update,
            ..same_training
        });
        let mut parts = Vec::new();
        if same_training.gradient_checkpointing != setup.gradient_checkpointing {
            parts.push("gradient checkpointing".to_string());
        }
        if same_training.half_precision != setup.half_precision {
            parts.push("bf16".to_string());
        }
        if same_training.batch_size != setup.batch_size {
            parts.push(format!(
                "batch {} with {} accumulation steps",
                same_training.batch_size, same_training.gradient_accumulation
            ));
        }
        out.push(make(
            Change::Combined,
            format!("{} together", parts.join(" + ")),
            need_with(same_training),
        ));
    }
    if let Some((format, need)) = quantized_frozen_that_fits(setup, available, &need_with) {
        out.push(make(
            Change::QuantizeFrozen { format },
            format!(
                "hold the frozen layers' matrices as {} (quantize_frozen; their matmuls use the quantized weights, \
                 trainable tensors stay f32)",
                format.name()
            ),
            need,
        ));
    }
    if setup.optimizer == OptimizerKind::Adamw {
        let need = need_with(FitSetup {
            optimizer: OptimizerKind::Adamw8bit,
            ..setup
        });
        if need < need_with(setup) {
            out.push(make(
                Change::Optimizer8bit,
                "keep AdamW's moments in 8 bits (adamw8bit, as bitsandbytes; about a quarter of the state)".into(),
                need,
            ));
        }
    }
    if let Some(seq) = longest_cutoff_that_fits(setup, available, &need_with) {
        out.push(make(
            Change::Cutoff { seq_len: seq },
            format!("cut examples to {seq} tokens (longer ones lose their end)"),
            need_with(FitSetup { seq_len: seq, ..setup }),
        ));
    }
    if let Some((layers, need)) = fewer_layers(layout, trainable, setup, available) {
        out.push(make(
            Change::Layers { layers: layers.clone() },
            format!("train only layers {layers} (the top of the selection: the backward pass stops sooner)"),
            need,
        ));
    }
    out
}

/// The largest smaller batch that fits with the same examples per update (batch × accumulation): the divisors of
/// that product below the batch, largest first; `None` when none fits.
fn smaller_batch_that_fits(setup: FitSetup, available: u64, need: &dyn Fn(FitSetup) -> u64) -> Option<FitSetup> {
    let per_update = setup.batch_size * setup.gradient_accumulation.max(1);
    (1..setup.batch_size)
        .rev()
        .filter(|b| per_update % b == 0)
        .map(|b| FitSetup {
            batch_size: b,
            gradient_accumulation: per_update / b,
            ..setup
        })
        .find(|s| need(*s) <= available)
}

/// The lightest quantization of the frozen layers that fits (q8_0, then q4_k), or q4_k with its need when neither
/// does; `None` when the setup already holds them as q4_k or quantizing saves nothing (no frozen projections).
fn quantized_frozen_that_fits(
    setup: FitSetup,
    available: u64,
    need: &dyn Fn(FitSetup) -> u64,
) -> Option<(QuantizeFrozen, u64)> {
    let current = need(setup);
    let lighter: &[QuantizeFrozen] = match setup.quantize_frozen {
        QuantizeFrozen::None => &[QuantizeFrozen::Q8_0, QuantizeFrozen::Q4K],
        QuantizeFrozen::Q8_0 => &[QuantizeFrozen::Q4K],
        QuantizeFrozen::Q4K => &[],
    };
    let needs: Vec<(QuantizeFrozen, u64)> = lighter
        .iter()
        .map(|&q| {
            (
                q,
                need(FitSetup {
                    quantize_frozen: q,
                    ..setup
                }),
            )
        })
        .filter(|&(_, n)| n < current)
        .collect();
    needs.iter().find(|(_, n)| *n <= available).or(needs.last()).copied()
}

/// The longest cutoff (halving, not below 64 tokens) that fits.
fn longest_cutoff_that_fits(setup: FitSetup, available: u64, need: &dyn Fn(FitSetup) -> u64) -> Option<u64> {
    let mut seq = setup.seq_len;
    while seq > 64 {
        seq = (seq / 2).max(64);
        if need(FitSetup { seq_len: seq, ..setup }) <= available {
            return Some(seq);
        }
    }
    None
}

/// Drops the lowest trained layers one at a time until the rest fits; the non-layer tensors stay as chosen.
fn fewer_layers(
    layout: &ModelLayout,
    trainable: &BTreeSet<String>,
    setup: FitSetup,
    available: u64,
) -> Option<(String, u64)> {
    let trained: Vec<_> = layout
        .layers
        .iter()
        .filter(|l| l.tensors().any(|t| trainable.contains(&t.name)))
        .collect();
    let mut set = trainable.clone();
    for (i, layer) in trained.iter().enumerate().take(trained.len().saturating_sub(1)) {
        for t in layer.tensors() {
            set.remove(&t.name);
        }
        let need = need_bytes(layout, &set, setup);
        if need <= available {
            let kept: Vec<usize> = trained[i + 1..].iter().map(|l| l.id).collect();
            return Some((format_layer_ids(&kept), need));
        }
    }
    None
}

#[cfg(test)]
mod tests;
