//! The output projection and the cross-entropy as one op, for a dense f32 lm_head (frozen, or trainable: then its
//! gradient is summed block by block too): the logits are made a block of rows at a time and never held whole. The unfused graph keeps four logits-sized buffers a step (the logits,
//! their gradient, and the zero-filled buffer candle's backward adds that gradient into, and the sum), 200 MB each
//! on a 49k vocabulary at 1,024 rows, each one fresh pages the kernel must fault in and clear. Here a block's
//! logits are scaled and softcapped as the family says ([`Logits`]) and turned into that block's loss and, when a
//! gradient is wanted, straight into `softmax − one-hot` (times the softcap's slope) and the input's gradient
//! `dh = g · W` and the weight's share `gᵀ · x` while they are still in cache; the backward pass only scales the
//! kept gradients by the upstream one. The same matmuls as the unfused path, nothing recomputed.

use super::f32s;
use super::linear::{add_transposed_times, times_weight_into};
use crate::fastmath;
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// About 8 MiB of f32 logits per block, small enough to stay in cache between the product and the loss...
const BLOCK_ELEMENTS: usize = 1 << 21;
/// ...but never fewer rows than this: each block's matmuls pack the whole weight again, and on a large vocabulary
/// (49k × 576: 113 MB) blocks of 42 or 256 rows made the head's matmuls slower than the unfused one's (measured by
/// perf samples on an Intel Xeon, 2 threads). A batch of 1,024 rows or fewer is one block: the same matmuls as
/// the unfused head, with one logits-sized buffer instead of four; longer batches stay at 1,024 rows a block.
const MIN_BLOCK_ROWS: usize = 1024;

/// How the head's products become logits: multiplied by `scale` (1 / Granite's `logits_scaling`), then, with a
/// `softcap`, `cap · tanh(logit / cap)` (Gemma 2, 3 and 4's `final_logit_softcapping`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Logits {
    pub scale: f32,
    pub softcap: Option<f32>,
}

/// Mean cross-entropy of the logits `hidden · weightᵀ` make (as `logits` says) against `targets` (one per row of
/// `hidden`, `None` = not counted), over `count` counted rows; `hidden` (…, h) and `weight` (vocab, h) f32 on the
/// CPU. Each gets its gradient where it is part of a graph: a trainable lm_head's (vocab × h) is summed block by
/// block, so the logits are never held whole for it either.
pub fn head_cross_entropy(
    hidden: &Tensor,
    weight: &Tensor,
    targets: Arc<Vec<Option<u32>>>,
    count: usize,
    logits: Logits,
) -> Result<Tensor> {
    head_cross_entropy_blocks(hidden, weight, targets, count, logits, None)
}

/// As [`head_cross_entropy`], with `block_rows` rows a block (tests use small blocks to cross block edges).
pub(crate) fn head_cross_entropy_blocks(
    hidden: &Tensor,
    weight: &Tensor,
    targets: Arc<Vec<Option<u32>>>,
    count: usize,
    logits: Logits,
    block_rows: Option<usize>,
) -> Result<Tensor> {
    let (vocab, h) = weight.dims2()?;
    if hidden.dim(candle_core::D::Minus1)? != h || hidden.elem_count() / h.max(1) != targets.len() {
        bail!(
            "head loss: hidden {:?}, weight {vocab}x{h} and {} targets do not fit",
            hidden.shape(),
            targets.len()
        )
    }
    if let Some(&t) = targets.iter().flatten().find(|&&t| t as usize >= vocab) {
        bail!("head loss: target id {t} is outside the vocabulary of {vocab}")
    }
    let op = HeadCrossEntropy {
        targets,
        count: count.max(1),
        logits,
        block_rows: block_rows.unwrap_or((BLOCK_ELEMENTS / vocab.max(1)).max(MIN_BLOCK_ROWS)),
        want_grad: hidden.track_op() || weight.track_op(),
        want_input_grad: hidden.track_op(),
        want_weight_grad: weight.track_op(),
        grads: Mutex::new(None),
    };
    hidden.contiguous()?.apply_op2(&weight.contiguous()?, op)
}

struct HeadCrossEntropy {
    targets: Arc<Vec<Option<u32>>>,
    count: usize,
    logits: Logits,
    block_rows: usize,
    /// Whether the forward pass also computes the gradients (the input or the weight is part of a graph)...
    want_grad: bool,
    /// ...the input's among them...
    want_input_grad: bool,
    /// ...and the weight's.
    want_weight_grad: bool,
    /// dh, and dW where wanted, for an upstream gradient of 1: made by the forward pass, taken by the backward.
    grads: Mutex<Option<HeadGrads>>,
}

/// The input's gradient (empty where not wanted) and the weight's, where wanted.
type HeadGrads = (Vec<f32>, Option<Vec<f32>>);

impl HeadCrossEntropy {
    /// One row's loss; with `grad`, the row becomes the loss's gradient with respect to the row's products in
    /// place: `(softmax − one-hot) / count`, times the softcap's derivative `1 − tanh²` where there is one, times
    /// the scale (zeros for a row that is not counted).
    fn row(&self, z: &mut [f32], target: Option<u32>, grad: bool, slope: &mut Vec<f32>) -> f64 {
        let Some(t) = target else {
            if grad {
                z.fill(0.0);
            }
            return 0.0;
        };
        let Logits { scale, softcap } = self.logits;
        if scale != 1.0 {
            z.iter_mut().for_each(|v| *v *= scale);
        }
        // The softcap's derivative at each logit, kept for the gradient (the softmax overwrites the logits) in
        // `slope`, a buffer each thread reuses row after row.
        slope.clear();
        if let Some(cap) = softcap {
            z.iter_mut().for_each(|v| *v /= cap);
            fastmath::tanh_in_place(z);
            z.iter_mut().for_each(|v| *v *= cap);
            if grad {
                slope.extend(z.iter().map(|v| 1.0 - (v / cap) * (v / cap)));
            }
        }
        let target_logit = z[t as usize];
        let max = fastmath::max(z);
        z.iter_mut().for_each(|v| *v -= max);
        fastmath::exp_in_place(z);
        let sum = fastmath::sum(z);
        if grad {
            // d(loss)/d(raw logit) = (softmax − one-hot) / count, times the scale the logits were multiplied by.
            let k = scale / self.count as f32;
            let inv = k / sum;
            z.iter_mut().for_each(|g| *g *= inv);
            z[t as usize] -= k;
            z.iter_mut().zip(slope.iter()).for_each(|(g, s)| *g *= s);
        }
        (max + sum.ln() - target_logit) as f64
    }
}

impl CustomOp2 for HeadCrossEntropy {
    fn name(&self) -> &'static str {
        "fused-head-cross-entropy"
    }

    fn cpu_fwd(&self, hs: &CpuStorage, hl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (hidden, w) = (f32s(hs, hl, "head loss hidden")?, f32s(ws, wl, "head loss weight")?);
        let (vocab, h) = wl.shape().dims2()?;
        let rows = self.targets.len();
        let block = self.block_rows.min(rows).max(1);
        let mut logits = vec![0f32; block * vocab];
        let mut dh = vec![0f32; if self.want_input_grad { rows * h } else { 0 }];
        let mut dw = self.want_weight_grad.then(|| vec![0f32; vocab * h]);
        let mut total = 0f64;
        for start in (0..rows).step_by(block) {
            let r = block.min(rows - start);
            let z = &mut logits[..r * vocab];
            let x = &hidden[start * h..(start + r) * h];
            times_weight_into(z, x, w, r, vocab, h, true);
            let targets = &self.targets[start..start + r];
            total += z
                .par_chunks_mut(vocab)
                .zip(targets.par_iter())
                .map_init(Vec::new, |slope, (row, &t)| self.row(row, t, self.want_grad, slope))
                .sum::<f64>();
            if self.want_input_grad {
                // dh = g · W, W stored (vocab, h) read as it is.
                times_weight_into(&mut dh[start * h..(start + r) * h], z, w, r, h, vocab, false);
            }
            if let Some(dw) = dw.as_mut() {
                // dW += gᵀ · x over this block's rows, in place.
                add_transposed_times(dw, z, x, r, vocab, h)?;
            }
        }
        if self.want_grad {
            *self.grads.lock().expect("head loss gradient") = Some((dh, dw));
        }
        Ok((
            CpuStorage::F32(vec![(total / self.count as f64) as f32]),
            Shape::from(()),
        ))
    }

    fn bwd(
        &self,
        hidden: &Tensor,
        weight: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let Some((dh, dw)) = self.grads.lock().expect("head loss gradient").take() else {
            bail!("head loss: a second backward pass, or one over an input that was not part of a graph")
        };
        let upstream = grad.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        // Scaled in place, so no second copy of a vocabulary-sized gradient is made.
        let scaled = |mut values: Vec<f32>, like: &Tensor| -> Result<Tensor> {
            if upstream != 1.0 {
                values.iter_mut().for_each(|v| *v *= upstream);
            }
            Tensor::from_vec(values, like.shape(), like.device())
        };
        let dh = match hidden.track_op() {
            true => Some(scaled(dh, hidden)?),
            false => None,
        };
        Ok((dh, dw.map(|dw| scaled(dw, weight)).transpose()?))
    }
}
