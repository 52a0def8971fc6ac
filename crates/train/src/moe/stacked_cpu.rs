//! The stacked experts' two passes on the CPU in f32, over plain buffers: the experts in parallel (rayon), each
//! product one FreezeTune matmul (`fused::rows_times_weight`), the activation (SiLU or GELU-tanh, both a gate times
//! a sigmoid) and its derivative one pass over the rows.
//! The composite ops of `stacked.rs` make each expert's gate, up, activation and product tensors of their own,
//! each elementwise op a pass and an allocation; on a Qwen3.5-MoE-shaped layer that was a third of the node's time.
//! Same math, same order of the experts; what `stacked.rs` runs where `fused::applies`.

use super::activation::GateActivation;
use crate::fastmath::sigmoid_into;
use crate::fused::{rows_times_weight, transposed_times, with_values};
use crate::mxfp4::PackedExperts;
use crate::params::StackedWeight;
use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;
use std::borrow::Cow;

/// Whether these passes serve: f32 activations on the CPU (the fused kernels on), weights dense in f32 or held in
/// blocks (unpacked one expert at a time).
pub(super) fn applies(x: &Tensor, weights: [&StackedWeight; 2]) -> bool {
    let f32_weights = weights.iter().all(|w| match w {
        StackedWeight::Dense(t) => t.dtype() == DType::F32,
        StackedWeight::Quantized(_) | StackedWeight::Mxfp4(_) => true,
    });
    crate::fused::applies(x) && f32_weights
}

/// One stacked weight's experts: the dense values, or each expert's blocks.
pub(super) enum Experts<'a> {
    Dense(&'a [f32]),
    Quantized(&'a [candle_core::quantized::QTensor]),
    Mxfp4(&'a PackedExperts),
}

impl Experts<'_> {
    /// Expert `e`'s matrix of `len` values.
    pub(super) fn matrix(&self, e: usize, len: usize) -> Result<Cow<'_, [f32]>> {
        let dense = match self {
            Experts::Dense(values) => return Ok(Cow::Borrowed(&values[e * len..(e + 1) * len])),
            Experts::Quantized(blocks) => crate::quant::dequantize(&blocks[e], DType::F32)?,
            Experts::Mxfp4(packed) => packed.matrix(e, DType::F32)?,
        };
        Ok(Cow::Owned(dense.flatten_all()?.to_vec1::<f32>()?))
    }
}

/// `f` on a stacked weight's experts as plain values: the dense tensor's, or its blocks.
pub(super) fn with_experts<R>(w: &StackedWeight, f: impl FnOnce(&Experts) -> Result<R>) -> Result<R> {
    match w {
        StackedWeight::Dense(t) => with_values(&[&t.contiguous()?], |v| f(&Experts::Dense(v[0]))),
        StackedWeight::Quantized(blocks) => f(&Experts::Quantized(blocks)),
        StackedWeight::Mxfp4(packed) => f(&Experts::Mxfp4(packed)),
    }
}

/// The sizes the passes share.
#[derive(Clone, Copy)]
pub(super) struct Dims {
    pub hidden: usize,
    pub width: usize,
}

/// One expert's forward pass over its rows: its input rows, its gate/up matrix, the projection (rows × 2·width,
/// gate then up) and the sigmoid of the activation's argument (σ(gate) for SiLU).
struct Pass<'a> {
    input: Vec<f32>,
    gate_up: Cow<'a, [f32]>,
    projected: Vec<f32>,
    sigmoid: Vec<f32>,
}

impl<'a> Pass<'a> {
    fn new(
        x: &[f32],
        gate_up: &'a Experts,
        e: usize,
        rows: &[u32],
        (d, act): (Dims, GateActivation),
    ) -> Result<Pass<'a>> {
        let (n, h, w) = (rows.len(), d.hidden, d.width);
        let mut input = Vec::with_capacity(n * h);
        for &r in rows {
            input.extend_from_slice(&x[r as usize * h..(r as usize + 1) * h]);
        }
        let gate_up = gate_up.matrix(e, 2 * w * h)?;
        let projected = rows_times_weight(&input, &gate_up, n, 2 * w, h, true)?;
        let mut sigmoid = vec![0f32; n * w];
        let mut argument = vec![0f32; w];
        for (row, s) in projected.chunks(2 * w).zip(sigmoid.chunks_mut(w)) {
            match act {
                GateActivation::Silu => sigmoid_into(&row[..w], s),
                act => {
                    argument
                        .iter_mut()
                        .zip(&row[..w])
                        .for_each(|(a, &g)| *a = act.sigmoid_argument(g));
                    sigmoid_into(&argument, s);
                }
            }
        }
        Ok(Pass {
            input,
            gate_up,
            projected,
            sigmoid,
        })
    }

    /// act(gate) · up, per row.
    fn product(&self, (d, act): (Dims, GateActivation)) -> Vec<f32> {
        let w = d.width;
        let n = self.sigmoid.len() / w;
        let mut product = vec![0f32; n * w];
        for r in 0..n {
            let (g, u) = self.projected[r * 2 * w..(r + 1) * 2 * w].split_at(w);
            for j in 0..w {
                product[r * w + j] = act.value(g[j], u[j], self.sigmoid[r * w + j]);
            }
        }
        product
    }
}

/// The experts with rows, and where each one's rows start in the output.
pub(super) fn tasks(groups: &[Vec<u32>]) -> Vec<(usize, &[u32], usize)> {
    let mut start = 0;
    let mut out = Vec::new();
    for (e, rows) in groups.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
        out.push((e, rows.as_slice(), start));
        start += rows.len();
    }
    out
}

/// Each expert's GLU output for its rows of `x` (tokens × hidden), experts in order: (Σ rows) × hidden.
pub(super) fn forward(
    x: &[f32],
    (gate_up, down): (&Experts, &Experts),
    groups: &[Vec<u32>],
    (d, act): (Dims, GateActivation),
) -> Result<Vec<f32>> {
    let outputs = tasks(groups)
        .into_par_iter()
        .map(|(e, rows, _)| {
            let pass = Pass::new(x, gate_up, e, rows, (d, act))?;
            let product = pass.product((d, act));
            let down = down.matrix(e, d.hidden * d.width)?;
            rows_times_weight(&product, &down, rows.len(), d.hidden, d.width, true)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(outputs.concat())
}

/// What the backward pass computes, each only where asked.
pub(super) struct Wanted {
    pub input: bool,
    pub gate_up: bool,
    pub down: bool,
}

/// The gradients: the input's (tokens × hidden) and each stacked weight's (experts × …), where wanted.
pub(super) struct Grads {
    pub input: Option<Vec<f32>>,
    pub gate_up: Option<Vec<f32>>,
    pub down: Option<Vec<f32>>,
}

/// The node's backward pass from its output's gradient `grad` ((Σ rows) × hidden): each expert's forward pass
/// recomputed, then dy·W_down, SiLU's derivative, and the products for the input and the weights.
pub(super) fn backward(
    x: &[f32],
    grad: &[f32],
    (gate_up, down): (&Experts, &Experts),
    groups: &[Vec<u32>],
    (d, act): (Dims, GateActivation),
    wanted: &Wanted,
) -> Result<Grads> {
    let (h, w, experts) = (d.hidden, d.width, groups.len());
    let per_expert = tasks(groups)
        .into_par_iter()
        .map(|(e, rows, start)| {
            let n = rows.len();
            let pass = Pass::new(x, gate_up, e, rows, (d, act))?;
            let product = pass.product((d, act));
            let dy = &grad[start * h..(start + n) * h];
            let down_e = down.matrix(e, h * w)?;
            let d_product = rows_times_weight(dy, &down_e, n, w, h, false)?;
            let d_down = match wanted.down {
                true => Some(transposed_times(dy, &product, n, h, w)?),
                false => None,
            };
            let mut d_projected = vec![0f32; n * 2 * w];
            for r in 0..n {
                let (g, u) = pass.projected[r * 2 * w..(r + 1) * 2 * w].split_at(w);
                let (dg, du) = d_projected[r * 2 * w..(r + 1) * 2 * w].split_at_mut(w);
                for j in 0..w {
                    let (s, dp) = (pass.sigmoid[r * w + j], d_product[r * w + j]);
                    (dg[j], du[j]) = act.grads(g[j], u[j], s, dp);
                }
            }
            let d_gate_up = match wanted.gate_up {
                true => Some(transposed_times(&d_projected, &pass.input, n, 2 * w, h)?),
                false => None,
            };
            let d_input = match wanted.input {
                true => Some(rows_times_weight(&d_projected, &pass.gate_up, n, h, 2 * w, false)?),
                false => None,
            };
            Ok((e, rows, d_input, d_gate_up, d_down))
        })
        .collect::<Result<Vec<_>>>()?;
    let tokens = x.len() / h;
    let mut grads = Grads {
        input: wanted.input.then(|| vec![0f32; tokens * h]),
        gate_up: wanted.gate_up.then(|| vec![0f32; experts * 2 * w * h]),
        down: wanted.down.then(|| vec![0f32; experts * h * w]),
    };
    // In the experts' order, as the composite pass adds them.
    for (e, rows, d_input, d_gate_up, d_down) in per_expert {
        if let (Some(dx), Some(d)) = (grads.input.as_mut(), d_input) {
            for (i, &r) in rows.iter().enumerate() {
                let to = &mut dx[r as usize * h..(r as usize + 1) * h];
                to.iter_mut().zip(&d[i * h..(i + 1) * h]).for_each(|(a, b)| *a += b);
            }
        }
        if let (Some(all), Some(d)) = (grads.gate_up.as_mut(), d_gate_up) {
            all[e * 2 * w * h..(e + 1) * 2 * w * h].copy_from_slice(&d);
        }
        if let (Some(all), Some(d)) = (grads.down.as_mut(), d_down) {
            all[e * h * w..(e + 1) * h * w].copy_from_slice(&d);
        }
    }
    Ok(grads)
}
