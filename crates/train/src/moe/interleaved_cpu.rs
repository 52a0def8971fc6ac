//! gpt-oss's interleaved experts' two nodes (`interleaved.rs`) on the CPU in f32, over plain buffers: the experts
//! in parallel (rayon), each product one FreezeTune matmul, the bias, the activation and its derivative one pass
//! over the rows. As candle ops each expert made a dozen tensors of its own (a gather, a matmul, a bias add, the
//! interleaved gate and up sliced apart, each elementwise step of the clamped SwiGLU, a stack to interleave the
//! gradients back), each a pass and an allocation. Same math, same order of the experts; what `interleaved.rs`
//! runs where `stacked_cpu::applies`.

use super::activation::GateActivation;
use super::stacked_cpu::{tasks, Dims, Experts};
use crate::fastmath::sigmoid_into;
use crate::fused::{rows_times_weight, transposed_times};
use candle_core::Result;
use rayon::prelude::*;
use std::borrow::Cow;

/// Which gradients a node's backward pass computes: its first operand's (the rows), the stacked matrix's, the
/// stacked bias's.
pub(super) struct Wanted {
    pub rows: bool,
    pub matrix: bool,
    pub bias: bool,
}

/// A node's gradients, where wanted: its first operand's, the matrix's (experts × …), the bias's (experts × …).
pub(super) struct Grads {
    pub rows: Option<Vec<f32>>,
    pub matrix: Option<Vec<f32>>,
    pub bias: Option<Vec<f32>>,
}

impl Grads {
    fn zeros(wanted: &Wanted, rows: usize, matrix: usize, bias: usize) -> Grads {
        Grads {
            rows: wanted.rows.then(|| vec![0f32; rows]),
            matrix: wanted.matrix.then(|| vec![0f32; matrix]),
            bias: wanted.bias.then(|| vec![0f32; bias]),
        }
    }
}

/// The up node: each expert's `x · gate_up + bias` (rows × 2·width, gate and up in alternate columns), activated.
pub(super) struct Up<'a> {
    pub gate_up: &'a Experts<'a>,
    /// experts × 2·width.
    pub bias: &'a [f32],
    pub act: GateActivation,
    pub dims: Dims,
}

/// One expert's projection over its rows: its input rows, its matrix (hidden × 2·width), the projection with its
/// bias, and the sigmoid of each gate's argument (rows × width).
struct UpPass<'a> {
    input: Vec<f32>,
    matrix: Cow<'a, [f32]>,
    projected: Vec<f32>,
    sigmoid: Vec<f32>,
}

impl<'a> Up<'a> {
    fn pass(&self, x: &[f32], e: usize, rows: &[u32]) -> Result<UpPass<'a>> {
        let (n, h, w) = (rows.len(), self.dims.hidden, self.dims.width);
        let mut input = Vec::with_capacity(n * h);
        for &r in rows {
            input.extend_from_slice(&x[r as usize * h..(r as usize + 1) * h]);
        }
        let matrix = self.gate_up.matrix(e, h * 2 * w)?;
        let mut projected = rows_times_weight(&input, &matrix, n, 2 * w, h, false)?;
        let bias = &self.bias[e * 2 * w..(e + 1) * 2 * w];
        let mut arguments = vec![0f32; n * w];
        for (row, args) in projected.chunks_mut(2 * w).zip(arguments.chunks_mut(w)) {
            row.iter_mut().zip(bias).for_each(|(p, b)| *p += b);
            for (a, pair) in args.iter_mut().zip(row.chunks(2)) {
                *a = self.act.sigmoid_argument(pair[0]);
            }
        }
        let mut sigmoid = vec![0f32; n * w];
        sigmoid_into(&arguments, &mut sigmoid);
        Ok(UpPass {
            input,
            matrix,
            projected,
            sigmoid,
        })
    }

    /// Each expert's activated products for its rows of `x` (tokens × hidden), experts in order: (Σ rows) × width.
    pub fn forward(&self, x: &[f32], groups: &[Vec<u32>]) -> Result<Vec<f32>> {
        let parts = tasks(groups)
            .into_par_iter()
            .map(|(e, rows, _)| {
                let pass = self.pass(x, e, rows)?;
                let pairs = pass.projected.chunks(2);
                Ok(pairs
                    .zip(&pass.sigmoid)
                    .map(|(gu, &s)| self.act.value(gu[0], gu[1], s))
                    .collect::<Vec<f32>>())
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(parts.concat())
    }

    /// The gradients of x (tokens × hidden), gate_up and its bias from the products' gradient `grad`
    /// ((Σ rows) × width), each expert's projection recomputed.
    pub fn backward(&self, x: &[f32], grad: &[f32], groups: &[Vec<u32>], wanted: &Wanted) -> Result<Grads> {
        let (h, w) = (self.dims.hidden, self.dims.width);
        let per_expert = tasks(groups)
            .into_par_iter()
            .map(|(e, rows, start)| {
                let n = rows.len();
                let pass = self.pass(x, e, rows)?;
                let dp = &grad[start * w..(start + n) * w];
                let mut d_projected = vec![0f32; n * 2 * w];
                let pairs = pass.projected.chunks(2).zip(d_projected.chunks_mut(2));
                for (((gu, d), &s), &g) in pairs.zip(&pass.sigmoid).zip(dp) {
                    (d[0], d[1]) = self.act.grads(gu[0], gu[1], s, g);
                }
                let d_matrix = match wanted.matrix {
                    true => Some(transposed_times(&pass.input, &d_projected, n, h, 2 * w)?),
                    false => None,
                };
                let d_input = match wanted.rows {
                    true => Some(rows_times_weight(&d_projected, &pass.matrix, n, h, 2 * w, true)?),
                    false => None,
                };
                let d_bias = wanted.bias.then(|| column_sums(&d_projected, 2 * w));
                Ok((e, rows, [d_input, d_matrix, d_bias]))
            })
            .collect::<Result<Vec<_>>>()?;
        let experts = groups.len();
        let mut grads = Grads::zeros(wanted, x.len(), experts * h * 2 * w, experts * 2 * w);
        for (e, rows, [d_input, d_matrix, d_bias]) in per_expert {
            if let (Some(dx), Some(d)) = (grads.rows.as_mut(), d_input) {
                // In the experts' order, as the candle-op pass adds them.
                for (i, &r) in rows.iter().enumerate() {
                    let to = &mut dx[r as usize * h..(r as usize + 1) * h];
                    to.iter_mut().zip(&d[i * h..(i + 1) * h]).for_each(|(a, b)| *a += b);
                }
            }
            place(grads.matrix.as_mut(), d_matrix, e);
            place(grads.bias.as_mut(), d_bias, e);
        }
        Ok(grads)
    }
}

/// The down node: each expert's `products · down + bias` (rows × hidden).
pub(super) struct Down<'a> {
    pub down: &'a Experts<'a>,
    /// experts × hidden.
    pub bias: &'a [f32],
    pub dims: Dims,
}

impl Down<'_> {
    /// Each expert's output for its rows of `products` ((Σ rows) × width): (Σ rows) × hidden.
    pub fn forward(&self, products: &[f32], groups: &[Vec<u32>]) -> Result<Vec<f32>> {
        let (h, w) = (self.dims.hidden, self.dims.width);
        let parts = tasks(groups)
            .into_par_iter()
            .map(|(e, rows, start)| {
                let n = rows.len();
                let matrix = self.down.matrix(e, w * h)?;
                let p = &products[start * w..(start + n) * w];
                let mut out = rows_times_weight(p, &matrix, n, h, w, false)?;
                let bias = &self.bias[e * h..(e + 1) * h];
                for row in out.chunks_mut(h) {
                    row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
                }
                Ok(out)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(parts.concat())
    }

    /// The gradients of the products, down and its bias from the outputs' gradient `grad` ((Σ rows) × hidden).
    pub fn backward(&self, products: &[f32], grad: &[f32], groups: &[Vec<u32>], wanted: &Wanted) -> Result<Grads> {
        let (h, w) = (self.dims.hidden, self.dims.width);
        let per_expert = tasks(groups)
            .into_par_iter()
            .map(|(e, rows, start)| {
                let n = rows.len();
                let (p, dy) = (&products[start * w..(start + n) * w], &grad[start * h..(start + n) * h]);
                let d_products = match wanted.rows {
                    true => Some(rows_times_weight(dy, &self.down.matrix(e, w * h)?, n, w, h, true)?),
                    false => None,
                };
                let d_matrix = match wanted.matrix {
                    true => Some(transposed_times(p, dy, n, w, h)?),
                    false => None,
                };
                let d_bias = wanted.bias.then(|| column_sums(dy, h));
                Ok((e, [d_products, d_matrix, d_bias]))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut grads = Grads::zeros(wanted, 0, groups.len() * w * h, groups.len() * h);
        let mut d_products = Vec::new();
        for (e, [dp, d_matrix, d_bias]) in per_expert {
            d_products.extend(dp.unwrap_or_default());
            place(grads.matrix.as_mut(), d_matrix, e);
            place(grads.bias.as_mut(), d_bias, e);
        }
        grads.rows = wanted.rows.then_some(d_products);
        Ok(grads)
    }
}

/// Each column's sum over the rows of `values` (rows × width).
fn column_sums(values: &[f32], width: usize) -> Vec<f32> {
    let mut sums = vec![0f32; width];
    for row in values.chunks(width) {
        sums.iter_mut().zip(row).for_each(|(s, v)| *s += v);
    }
    sums
}

/// Expert `e`'s gradient into its place in the stacked one (experts with no rows keep their zeros).
fn place(all: Option<&mut Vec<f32>>, part: Option<Vec<f32>>, e: usize) {
    if let (Some(all), Some(part)) = (all, part) {
        let len = part.len();
        all[e * len..(e + 1) * len].copy_from_slice(&part);
    }
}
