//! A decoder layer's whole attention half as one op: `y = x + m · o(attention(rope(q(n)), rope(k(n)), v(n)))`,
//! with `n = x / rms(x) · (w + offset)`, and the same RMSNorm on q and k before the rope where the layer has one
//! (per head or over the whole projection) and on o's output before the residual add (Gemma's post-norm). As
//! separate ops it records ten nodes (norm, q, k, v, three head splits, the attention, o, the residual add); candle's backward pass then gives each node's inputs a zero-filled
//! activation-sized gradient and adds into it, and the graph keeps the norm's output and the projections too.
//! Here the forward pass keeps the rotated heads, the attention's probabilities, its output where o trains, and
//! each row's 1/rms; the backward pass makes the normed rows again where a projection trains, and writes each
//! gradient once. Trainable weights reach candle's gradient store as `wiring.rs` lays out.

use super::attention::{Dims as HeadDims, Kernel};
use super::gemm::{matmul_fastest, matmul_on, matmul_scaled, parallelism, written, Mat};
use super::pre_norm::{
    gradient_through_post, normed, renormed, residual_through_post, rms_norm_backward, PostNormInput,
};
use super::rope::{from_heads, tables_of, to_heads, Columns, Tables};
use super::wiring::{block_backward, wire, BlockGrads, Handoff, Wired};
use super::{f32s, with_values};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

/// The weights of an attention half, f32 on the CPU, contiguous. Each gets a gradient when it is part of the
/// graph (a `Var`'s tensor).
#[derive(Clone)]
pub struct AttnWeights {
    /// The pre-attention RMSNorm's weight (hidden).
    pub norm: Tensor,
    pub qkv: QkvWeights,
    /// (hidden, heads · head_dim).
    pub o: Tensor,
    /// Added to the norm's weight (1 for the `(1 + w)` norms).
    pub norm_offset: f32,
    pub eps: f32,
    /// The factor on the attention's output before the residual add (Granite's `residual_multiplier`).
    pub residual_scale: f32,
    /// The RMSNorms on the queries and on the keys before the rope, with the pre-norm's offset and epsilon: per
    /// head (a weight of head_dim: Qwen3's, LFM2's) or over the whole projection (a weight of its width:
    /// OLMoE's).
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
    /// The RMSNorm on o's output before the residual add (Gemma's `post_attention_layernorm`), with the same
    /// offset and epsilon as the pre-norm.
    pub post_norm: Option<Tensor>,
}

#[derive(Clone)]
pub enum QkvWeights {
    /// q (heads · head_dim, hidden), k and v (kv_heads · head_dim, hidden).
    Separate(Tensor, Tensor, Tensor),
    /// ((heads + 2 · kv_heads) · head_dim, hidden): q rows, then k's, then v's.
    Fused(Tensor),
}

/// The heads and how they attend.
#[derive(Clone, Copy, Debug)]
pub struct AttnHeads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// The factor on q·kᵀ.
    pub scale: f32,
}

impl AttnWeights {
    /// Every weight, in a fixed order: norm, q, k, v (or qkv), the q and k norms (where the layer has them), o,
    /// the post-norm (where it has one).
    fn all(&self) -> Vec<Tensor> {
        let mut all = vec![self.norm.clone()];
        match &self.qkv {
            QkvWeights::Separate(q, k, v) => all.extend([q.clone(), k.clone(), v.clone()]),
            QkvWeights::Fused(qkv) => all.push(qkv.clone()),
        }
        all.extend(self.q_norm.iter().chain(&self.k_norm).cloned());
        all.push(self.o.clone());
        all.extend(self.post_norm.clone());
        all
    }

    /// Where in [`AttnWeights::all`] the weights past the pre-norm and the projections start.
    fn after_projections(&self) -> usize {
        match self.qkv {
            QkvWeights::Separate(..) => 4,
            QkvWeights::Fused(_) => 2,
        }
    }

    /// Where o is in [`AttnWeights::all`] (the post-norm, where there is one, follows it).
    fn o_index(&self) -> usize {
        self.after_projections() + self.q_norm.is_some() as usize + self.k_norm.is_some() as usize
    }

    /// Where the q norm and the k norm are in [`AttnWeights::all`].
    fn head_norm_indices(&self) -> (Option<usize>, Option<usize>) {
        let after = self.after_projections();
        let q = self.q_norm.as_ref().map(|_| after);
        let k = self.k_norm.as_ref().map(|_| after + q.is_some() as usize);
        (q, k)
    }
}

/// `x + m · o(attention(…))` over x (batch, seq, hidden), as one op with its own backward pass. `rotation` holds
/// the f32 cos/sin tables (seq, head_dim) of a whole-head rope (None: a NoPE layer); `mask` is the additive
/// (1 or batch, 1, seq, seq) mask, causal and with any window and padding in it.
pub fn attention_block(
    x: &Tensor,
    weights: &AttnWeights,
    heads: AttnHeads,
    rotation: Option<(&Tensor, &Tensor)>,
    mask: &Tensor,
) -> Result<Tensor> {
    let x = x.contiguous()?;
    let dims = check_shapes(&x, weights, heads)?;
    let head_dims = HeadDims {
        b: dims.batch,
        h: heads.heads,
        kv: heads.kv_heads,
        t: dims.seq,
        d: heads.head_dim,
    };
    let mask = mask.contiguous()?;
    let Wired {
        input,
        operands: (a, b),
        handoff,
    } = wire(&x, &weights.all())?;
    let block = Block {
        weights: weights.clone(),
        dims,
        kernel: Kernel::new(head_dims, &mask, heads.scale)?,
        tables: rotation
            .map(|(cos, sin)| tables_of(cos, sin, dims.seq, heads.head_dim))
            .transpose()?,
        mask,
        handoff,
        saved: Mutex::new(None),
    };
    input.apply_op3(&a, &b, block)
}

#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    seq: usize,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Dims {
    fn rows(&self) -> usize {
        self.batch * self.seq
    }

    /// The width of q's projection (and of the attention's output).
    fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }

    fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// The width of q, k and v side by side in one row.
    fn qkv_width(&self) -> usize {
        self.q_width() + 2 * self.kv_width()
    }
}

fn check_shapes(x: &Tensor, w: &AttnWeights, heads: AttnHeads) -> Result<Dims> {
    let (batch, seq, hidden) = x.dims3()?;
    let AttnHeads {
        heads: nh,
        kv_heads: kv,
        head_dim: d,
        ..
    } = heads;
    let (qw, kw) = (nh * d, kv * d);
    let qkv_ok = match &w.qkv {
        QkvWeights::Separate(q, k, v) => {
            q.dims2()? == (qw, hidden) && k.dims2()? == (kw, hidden) && v.dims2()? == (kw, hidden)
        }
        QkvWeights::Fused(qkv) => qkv.dims2()? == (qw + 2 * kw, hidden),
    };
    let heads_ok = kv > 0 && nh % kv == 0 && d > 0;
    // A head norm's weight: one head's width (per head) or the whole projection's.
    let head_norm_ok = |norm: &Option<Tensor>, width: usize| -> Result<bool> {
        Ok(match norm {
            Some(n) => [d, width].contains(&n.dims1()?),
            None => true,
        })
    };
    let post_ok = match &w.post_norm {
        Some(n) => n.dims1()? == hidden,
        None => true,
    };
    let norms_ok = head_norm_ok(&w.q_norm, qw)? && head_norm_ok(&w.k_norm, kw)? && post_ok;
    if w.norm.dims1()? != hidden || w.o.dims2()? != (hidden, qw) || !qkv_ok || !heads_ok || !norms_ok {
        bail!(
            "attention_block: weights do not fit an input of {:?} with {heads:?}",
            x.shape()
        )
    }
    Ok(Dims {
        batch,
        seq,
        hidden,
        heads: nh,
        kv_heads: kv,
        head_dim: d,
    })
}

/// What the forward pass keeps for the backward pass.
struct Saved {
    /// Per row, 1/rms.
    inv_rms: Vec<f32>,
    /// The rotated query heads (batch, heads, seq, head_dim), key heads and value heads (batch, kv_heads, …).
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// The attention's probabilities, as its kernel packs them.
    probs: Vec<f32>,
    /// The attention's output (rows × heads·head_dim) where o trains; empty otherwise.
    attn: Vec<f32>,
    /// The queries' and the keys' projections before their norms, where the layer has them.
    q_norm: Option<HeadNorm>,
    k_norm: Option<HeadNorm>,
    /// o's output and each row's 1/rms, where a post-norm follows o.
    o_out: Option<PostNormInput>,
}

/// A q or k norm's input (rows × the projection's width) and the 1/rms of each normed stretch of it.
struct HeadNorm {
    input: Vec<f32>,
    inv_rms: Vec<f32>,
}

struct Block {
    weights: AttnWeights,
    dims: Dims,
    kernel: Kernel,
    mask: Tensor,
    tables: Option<Tables>,
    handoff: Handoff,
    /// Kept by the forward pass only when a backward pass will run.
    saved: Mutex<Option<Saved>>,
}

/// One projection's place: its weight (index into [`AttnWeights::all`]), its first column in a row of q, k and v
/// side by side, and its width.
#[derive(Clone, Copy)]
struct Projection {
    weight: usize,
    column: usize,
    width: usize,
}

impl CustomOp3 for Block {
    fn name(&self) -> &'static str {
        "fused-attention-block"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32s(xs, xl, "attention input")?;
        let all = self.weights.all();
        let mut tensors: Vec<&Tensor> = all.iter().collect();
        tensors.push(&self.mask);
        let (out, saved) = with_values(&tensors, |v| {
            let (weights, mask) = v.split_at(all.len());
            Ok(self.forward(x, weights, mask[0]))
        })?;
        if self.handoff.backward_runs() {
            *self.saved.lock().expect("attention state") = Some(saved);
        }
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Taken, not cloned: the heads and probabilities are freed as soon as this layer's gradient is computed.
        let Some(saved) = self.saved.lock().expect("attention state").take() else {
            bail!("attention_block: backward without the forward pass's heads")
        };
        let all = self.weights.all();
        block_backward(&self.handoff, &all, x, dy, |x, dy, w| self.backward(x, dy, saved, w))
    }
}

impl Block {
    fn projections(&self) -> Vec<Projection> {
        let d = self.dims;
        let (qw, kw) = (d.q_width(), d.kv_width());
        let p = |weight, column, width| Projection { weight, column, width };
        match self.weights.qkv {
            QkvWeights::Separate(..) => vec![p(1, 0, qw), p(2, qw, kw), p(3, qw + kw, kw)],
            QkvWeights::Fused(_) => vec![p(1, 0, d.qkv_width())],
        }
    }

    /// The shape of `heads` heads for the rope's head split.
    fn heads(&self, heads: usize) -> (usize, usize, usize, usize) {
        (self.dims.batch, self.dims.seq, heads, self.dims.head_dim)
    }

    /// `weights` in [`AttnWeights::all`]'s order. Returns the output and what the backward pass needs.
    fn forward(&self, x: &[f32], weights: &[&[f32]], mask: &[f32]) -> (Vec<f32>, Saved) {
        let d = self.dims;
        let (rows, hidden, width) = (d.rows(), d.hidden, d.qkv_width());
        let (inv_rms, normed_x) = normed(x, weights[0], self.weights.norm_offset, self.weights.eps);
        // SAFETY (each product below): shapes as `check_shapes` checked, every buffer contiguous and this call's;
        // the projections together overwrite every column of the rows × width buffer.
        let mut qkv = unsafe {
            written(rows * width, |out| {
                for p in self.projections() {
                    let w = Mat(weights[p.weight].as_ptr(), 1, hidden as isize);
                    let dst = Mat(out.add(p.column), width as isize, 1);
                    let lhs = Mat(normed_x.as_ptr(), hidden as isize, 1);
                    matmul_fastest(parallelism(rows, p.width, hidden), rows, p.width, hidden, dst, lhs, w);
                }
            })
        };
        drop(normed_x);
        let (qn, kn) = self.weights.head_norm_indices();
        let q_norm = qn.map(|i| self.norm_columns(&mut qkv, 0, d.q_width(), weights[i]));
        let k_norm = kn.map(|i| self.norm_columns(&mut qkv, d.q_width(), d.kv_width(), weights[i]));
        let columns = |offset| Columns { stride: width, offset };
        let tables = self.tables.as_ref();
        let q = to_heads(&qkv, columns(0), self.heads(d.heads), tables);
        let k = to_heads(&qkv, columns(d.q_width()), self.heads(d.kv_heads), tables);
        let v = to_heads(&qkv, columns(d.q_width() + d.kv_width()), self.heads(d.kv_heads), None);
        drop(qkv);
        let (attn, probs) = self.kernel.forward(&q, &k, &v, mask, self.handoff.backward_runs());
        let qw = d.q_width();
        let o_index = self.weights.o_index();
        let o = weights[o_index];
        let m = self.weights.residual_scale;
        // SAFETY: out / o's output rows × hidden, attn rows × heads·head_dim, o (hidden, heads·head_dim) read
        // transposed; all contiguous.
        let project = |out: *mut f32, accumulate: bool, scale: f32| unsafe {
            matmul_scaled(
                parallelism(rows, hidden, qw),
                rows,
                hidden,
                qw,
                Mat(out, hidden as isize, 1),
                accumulate,
                Mat(attn.as_ptr(), qw as isize, 1),
                Mat(o.as_ptr(), 1, qw as isize),
                scale,
            )
        };
        let post = self.weights.post_norm.as_ref().map(|_| weights[o_index + 1]);
        let factors = (self.weights.norm_offset, self.weights.eps, m);
        // SAFETY: `project` writes (or adds into) rows × hidden values, x's length.
        let (out, o_out) = unsafe { residual_through_post(x, post, factors, project) };
        let o_out = o_out.filter(|_| self.handoff.backward_runs());
        let o_trains = self.handoff.trainable[o_index];
        let attn = if o_trains { attn } else { Vec::new() };
        let saved = Saved {
            inv_rms,
            q,
            k,
            v,
            probs,
            attn,
            q_norm,
            k_norm,
            o_out,
        };
        (out, saved)
    }

    /// Normalises `width` columns from `column` of the rows × (q, k, v) buffer in place, in stretches of the norm
    /// weight's length; returns their values before and each stretch's 1/rms, for the backward pass.
    fn norm_columns(&self, qkv: &mut [f32], column: usize, width: usize, w: &[f32]) -> HeadNorm {
        let stride = self.dims.qkv_width();
        let input = take_columns(qkv, stride, column, width);
        let (inv_rms, normed) = normed(&input, w, self.weights.norm_offset, self.weights.eps);
        put_columns(&normed, qkv, stride, column, width);
        HeadNorm { input, inv_rms }
    }

    /// The way back through [`Block::norm_columns`]: turns the normed columns' gradient in `dqkv` into their
    /// input's, and returns the norm weight's.
    fn norm_columns_backward(
        &self,
        dqkv: &mut [f32],
        (column, width): (usize, usize),
        saved: HeadNorm,
        w: &[f32],
    ) -> Vec<f32> {
        let stride = self.dims.qkv_width();
        let dnormed = take_columns(dqkv, stride, column, width);
        let (dinput, dw) = rms_norm_backward(
            &saved.input,
            &dnormed,
            &saved.inv_rms,
            w,
            self.weights.norm_offset,
            None,
        );
        put_columns(&dinput, dqkv, stride, column, width);
        dw
    }

    /// The input's gradient (when it wants one) and each trainable weight's, in [`AttnWeights::all`]'s order.
    fn backward(&self, x: &[f32], dy: &[f32], saved: Saved, weights: &[&[f32]]) -> BlockGrads {
        let d = self.dims;
        let (rows, hidden, qw, width) = (d.rows(), d.hidden, d.q_width(), d.qkv_width());
        let (hi, qi) = (hidden as isize, qw as isize);
        let last = self.weights.o_index();
        let trainable = &self.handoff.trainable;
        let mut grads: Vec<Option<Vec<f32>>> = vec![None; weights.len()];
        let Saved {
            inv_rms,
            q,
            k,
            v,
            probs,
            attn,
            q_norm,
            k_norm,
            o_out,
        } = saved;
        // The gradient reaching o's output, and the factor it takes.
        let post = self.weights.post_norm.as_ref().map(|_| weights[last + 1]);
        let factors = (self.weights.norm_offset, self.weights.residual_scale);
        let (dy_o, m, dpost) = gradient_through_post(dy, o_out, post, factors);
        if let Some(dpost) = dpost.filter(|_| trainable[last + 1]) {
            grads[last + 1] = Some(dpost);
        }
        let dy_o: &[f32] = &dy_o;
        // SAFETY (each product below): shapes as `check_shapes` checked, every buffer contiguous and this call's.
        if trainable[last] {
            // d(o) = m · dyᵀ · attn (hidden × heads·head_dim).
            grads[last] = Some(unsafe {
                written(hidden * qw, |out| {
                    let par = parallelism(hidden, qw, rows);
                    let (lhs, rhs) = (Mat(dy_o.as_ptr(), 1, hi), Mat(attn.as_ptr(), qi, 1));
                    matmul_scaled(par, hidden, qw, rows, Mat(out, qi, 1), false, lhs, rhs, m);
                })
            });
        }
        drop(attn);
        // d(attn) = m · dy · o (rows × heads·head_dim).
        let dattn = unsafe {
            written(rows * qw, |out| {
                let par = parallelism(rows, qw, hidden);
                let (lhs, rhs) = (Mat(dy_o.as_ptr(), hi, 1), Mat(weights[last].as_ptr(), qi, 1));
                matmul_scaled(par, rows, qw, hidden, Mat(out, qi, 1), false, lhs, rhs, m);
            })
        };
        let dheads = self.kernel.backward(&q, &k, &v, &dattn, &probs);
        drop((dattn, probs, q, k, v));
        let mut dqkv = self.rows_of(&dheads);
        drop(dheads);
        let (qn, kn) = self.weights.head_norm_indices();
        let (q_columns, k_columns) = ((0, d.q_width()), (d.q_width(), d.kv_width()));
        for (index, saved, columns) in [(qn, q_norm, q_columns), (kn, k_norm, k_columns)] {
            if let (Some(i), Some(saved)) = (index, saved) {
                let dw = self.norm_columns_backward(&mut dqkv, columns, saved, weights[i]);
                grads[i] = trainable[i].then_some(dw);
            }
        }
        let projections = self.projections();
        if projections.iter().any(|p| trainable[p.weight]) {
            let normed = renormed(x, &inv_rms, weights[0], self.weights.norm_offset);
            for p in projections.iter().filter(|p| trainable[p.weight]) {
                // d(W) = d(projection)ᵀ · normed (width × hidden).
                grads[p.weight] = Some(unsafe {
                    written(p.width * hidden, |out| {
                        let lhs = Mat(dqkv.as_ptr().add(p.column), 1, width as isize);
                        let rhs = Mat(normed.as_ptr(), hi, 1);
                        let par = parallelism(p.width, hidden, rows);
                        matmul_fastest(par, p.width, hidden, rows, Mat(out, hi, 1), lhs, rhs);
                    })
                });
            }
        }
        if !self.handoff.input_grad && !trainable[0] {
            return (None, grads);
        }
        // d(normed) = Σ d(projection) · W (rows × hidden).
        let dnormed = unsafe {
            written(rows * hidden, |out| {
                for (j, p) in projections.iter().enumerate() {
                    let lhs = Mat(dqkv.as_ptr().add(p.column), width as isize, 1);
                    let rhs = Mat(weights[p.weight].as_ptr(), hi, 1);
                    let par = parallelism(rows, hidden, p.width);
                    matmul_on(par, rows, hidden, p.width, Mat(out, hi, 1), j > 0, lhs, rhs);
                }
            })
        };
        drop(dqkv);
        let (dx, dnorm) = rms_norm_backward(x, &dnormed, &inv_rms, weights[0], self.weights.norm_offset, Some(dy));
        if trainable[0] {
            grads[0] = Some(dnorm);
        }
        (self.handoff.input_grad.then_some(dx), grads)
    }

    /// The heads' gradients `[dq, dk, dv]` (the attention kernel's packing) rotated back and laid side by side in
    /// rows × (q, k, v) width, as the projections wrote them.
    fn rows_of(&self, dheads: &[f32]) -> Vec<f32> {
        let d = self.dims;
        let (nq, nk) = (d.rows() * d.q_width(), d.rows() * d.kv_width());
        let mut dqkv = vec![0f32; d.rows() * d.qkv_width()];
        let columns = |offset| Columns {
            stride: d.qkv_width(),
            offset,
        };
        let tables = self.tables.as_ref();
        let (dq, dkv) = dheads.split_at(nq);
        let (dk, dv) = dkv.split_at(nk);
        from_heads(dq, self.heads(d.heads), tables, &mut dqkv, columns(0));
        from_heads(dk, self.heads(d.kv_heads), tables, &mut dqkv, columns(d.q_width()));
        let v_column = d.q_width() + d.kv_width();
        from_heads(dv, self.heads(d.kv_heads), None, &mut dqkv, columns(v_column));
        dqkv
    }
}

/// Columns `column..column + width` of a buffer of rows `stride` long, as a rows × width buffer of their own.
fn take_columns(rows: &[f32], stride: usize, column: usize, width: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows.len() / stride * width];
    out.par_chunks_mut(width)
        .zip(rows.par_chunks(stride))
        .for_each(|(o, r)| o.copy_from_slice(&r[column..column + width]));
    out
}

/// The way back from [`take_columns`]: writes a rows × width buffer into those columns.
fn put_columns(values: &[f32], rows: &mut [f32], stride: usize, column: usize, width: usize) {
    rows.par_chunks_mut(stride)
        .zip(values.par_chunks(width))
        .for_each(|(r, v)| r[column..column + width].copy_from_slice(v));
}

#[cfg(test)]
mod tests {
    use super::super::tests::randn;
    use super::*;
    use crate::ops::tests::max_abs_diff;
    use candle_core::{Device, Var, D};

    const HEADS: AttnHeads = AttnHeads {
        heads: 4,
        kv_heads: 2,
        head_dim: 8,
        scale: 0.3,
    };

    /// The same attention half from candle's plain ops and the fused attention (itself tested against plain ops).
    fn composite(x: &Tensor, w: &AttnWeights, rotation: Option<(&Tensor, &Tensor)>, mask: &Tensor) -> Result<Tensor> {
        let AttnHeads {
            heads: nh,
            kv_heads: kv,
            head_dim: hd,
            scale,
        } = HEADS;
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let n = x
            .broadcast_div(&(ms + w.eps as f64)?.sqrt()?)?
            .broadcast_mul(&(&w.norm + w.norm_offset as f64)?)?;
        let (q, k, v) = match &w.qkv {
            QkvWeights::Separate(q, k, v) => (q.clone(), k.clone(), v.clone()),
            QkvWeights::Fused(qkv) => (
                qkv.narrow(0, 0, nh * hd)?,
                qkv.narrow(0, nh * hd, kv * hd)?,
                qkv.narrow(0, (nh + kv) * hd, kv * hd)?,
            ),
        };
        let (b, t, _) = x.dims3()?;
        let (eps, offset) = (w.eps as f64, w.norm_offset as f64);
        let w_norms = (w.q_norm.clone(), w.k_norm.clone());
        let rms_norm = |y: &Tensor, g: &Tensor| -> Result<Tensor> {
            let ms = y.sqr()?.mean_keepdim(D::Minus1)?;
            y.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(&(g + offset)?)
        };
        let heads = |w: &Tensor, h: usize, rotate: bool| -> Result<Tensor> {
            let y = n.broadcast_matmul(&w.t()?)?;
            let norm = match (rotate, h == nh) {
                (false, _) => None,
                (true, true) => w_norms.0.as_ref(),
                (true, false) => w_norms.1.as_ref(),
            };
            let y = match norm {
                Some(g) if g.dims1()? == hd => rms_norm(&y.reshape((b, t, h, hd))?, g)?,
                Some(g) => rms_norm(&y, g)?,
                None => y,
            };
            let y = y.reshape((b, t, h, hd))?.transpose(1, 2)?.contiguous()?;
            match (rotate, rotation) {
                (true, Some((cos, sin))) => crate::ops::apply_rope(&y, cos, sin),
                _ => Ok(y),
            }
        };
        let attn = super::super::causal_attention(
            &heads(&q, nh, true)?,
            &heads(&k, kv, true)?,
            &heads(&v, kv, false)?,
            mask,
            scale,
        )?;
        let y = attn.broadcast_matmul(&w.o.t()?)?;
        let y = match &w.post_norm {
            Some(g) => rms_norm(&y, g)?,
            None => y,
        };
        x + (y * w.residual_scale as f64)?
    }

    /// The q and k norms a test layer has.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum HeadNorms {
        None,
        PerHead,
        Whole,
    }

    /// Value, then the gradient of each input in `train` (x, norm, q, k, v, o, q norm, k norm, post-norm), of `f`
    /// against a probe; asserts (where `strict`) that no gradient exists for the others.
    fn run(
        (fused_qkv, norms, post): (bool, HeadNorms, bool),
        train: [bool; 9],
        rope: bool,
        strict: bool,
        f: impl Fn(&Tensor, &AttnWeights, Option<(&Tensor, &Tensor)>, &Tensor) -> Result<Tensor>,
    ) -> Vec<Tensor> {
        let (b, t, h) = (2, 70, 24);
        let (qw, kw) = (HEADS.heads * HEADS.head_dim, HEADS.kv_heads * HEADS.head_dim);
        let (qn, kn) = match norms {
            HeadNorms::Whole => (qw, kw),
            _ => (HEADS.head_dim, HEADS.head_dim),
        };
        // The norms' weights around their offset of 1, not at it: a weight left at its init proves nothing.
        let raw = [
            randn(&[b, t, h], 1),
            (randn(&[h], 2) * 0.3).unwrap(),
            (randn(&[qw, h], 3) * 0.3).unwrap(),
            (randn(&[kw, h], 4) * 0.3).unwrap(),
            (randn(&[kw, h], 5) * 0.3).unwrap(),
            (randn(&[h, qw], 6) * 0.2).unwrap(),
            (randn(&[qn], 9) * 0.3).unwrap(),
            (randn(&[kn], 10) * 0.3).unwrap(),
            (randn(&[h], 11) * 0.3).unwrap(),
        ];
        let mut inputs: Vec<Tensor> = raw.to_vec();
        if fused_qkv {
            inputs[2] = Tensor::cat(&[&raw[2], &raw[3], &raw[4]], 0).unwrap();
        }
        let absent = |k: usize| {
            (fused_qkv && (k == 3 || k == 4)) || (norms == HeadNorms::None && (k == 6 || k == 7)) || (!post && k == 8)
        };
        let vars: Vec<Option<Var>> = (0..9)
            .map(|k| (train[k] && !absent(k)).then(|| Var::from_tensor(&inputs[k]).unwrap()))
            .collect();
        let t_ = |k: usize| vars[k].as_ref().map_or(inputs[k].clone(), |v| v.as_tensor().clone());
        let weights = AttnWeights {
            norm: t_(1),
            qkv: if fused_qkv {
                QkvWeights::Fused(t_(2))
            } else {
                QkvWeights::Separate(t_(2), t_(3), t_(4))
            },
            o: t_(5),
            norm_offset: 1.0,
            eps: 1e-6,
            residual_scale: 0.5,
            q_norm: (norms != HeadNorms::None).then(|| t_(6)),
            k_norm: (norms != HeadNorms::None).then(|| t_(7)),
            post_norm: post.then(|| t_(8)),
        };
        let angles = randn(&[t, HEADS.head_dim / 2], 7);
        let angles = Tensor::cat(&[&angles, &angles], 1).unwrap();
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        // A window of 40 and a padded second row: blocks of 64 rows see different key spans.
        let lens = Tensor::from_vec(vec![70f32, 51.0], (2, 1, 1), &Device::Cpu).unwrap();
        let mask = crate::attention::additive_mask(0..t, 0..t, Some(40), Some(&lens), &Device::Cpu).unwrap();
        let rotation = rope.then_some((&cos, &sin));
        let y = f(&t_(0), &weights, rotation, &mask).unwrap();
        let probe = randn(y.dims(), 8);
        let grads = (y.clone() * probe).unwrap().sum_all().unwrap().backward().unwrap();
        let mut out = vec![y];
        for (k, var) in vars.iter().enumerate() {
            match var {
                Some(v) => out.push(grads.get(v.as_tensor()).expect("a gradient").clone()),
                None if strict => assert!(grads.get(&inputs[k]).is_none(), "input {k} is not trained"),
                None => {}
            }
        }
        out
    }

    #[test]
    fn the_block_matches_plain_ops_for_every_set_of_trained_weights() {
        // Input only (a frozen layer above a trained one); one or two weights (no tap); three to five (one or two
        // taps); a lowest trained layer whose input wants no gradient.
        // With q and k norms: the norms alone, with the projections below them, and everything. With a post-norm:
        // it alone, with o, and everything.
        let sets = [
            [true, false, false, false, false, false, false, false, false],
            [true, false, false, false, false, true, false, false, false],
            [false, false, true, false, true, false, false, false, false],
            [true, true, true, false, false, true, false, false, false],
            [true, true, true, true, true, true, false, false, false],
            [false, true, true, true, true, true, false, false, false],
            [false, false, false, true, false, false, false, false, false],
            [false, false, false, false, false, false, true, true, false],
            [true, false, true, true, false, false, true, false, false],
            [false, false, false, false, false, false, false, false, true],
            [true, false, false, false, false, true, false, false, true],
            [true, true, true, true, true, true, true, true, true],
        ];
        let layers = [HeadNorms::None, HeadNorms::PerHead, HeadNorms::Whole]
            .into_iter()
            .flat_map(|norms| [false, true].map(|post| (norms, post)));
        for (norms, post) in layers {
            for fused_qkv in [false, true] {
                for rope in [true, false] {
                    for train in sets {
                        let layer = (fused_qkv, norms, post);
                        let fused = run(layer, train, rope, true, |x, w, r, m| {
                            attention_block(x, w, HEADS, r, m)
                        });
                        let reference = run(layer, train, rope, false, composite);
                        assert_eq!(fused.len(), reference.len());
                        for (k, (a, b)) in fused.iter().zip(&reference).enumerate() {
                            let d = max_abs_diff(a, b);
                            assert!(
                                d < 1e-4,
                                "{train:?} {norms:?} post {post} fused qkv {fused_qkv} rope {rope}: output {k} differs by {d}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn weights_that_do_not_fit_are_refused() {
        let x = randn(&[1, 3, 8], 1);
        let w = AttnWeights {
            norm: randn(&[8], 2),
            qkv: QkvWeights::Fused(randn(&[4 * 8, 8], 3)),
            o: randn(&[8, 4 * 8], 4),
            norm_offset: 0.0,
            eps: 1e-6,
            residual_scale: 1.0,
            q_norm: None,
            k_norm: None,
            post_norm: None,
        };
        let mask = Tensor::zeros((1, 1, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let err = attention_block(&x, &w, HEADS, None, &mask).unwrap_err();
        assert!(err.to_string().contains("do not fit"), "{err}");
        // A q norm neither one head wide nor the projection's width.
        let w = AttnWeights {
            qkv: QkvWeights::Fused(randn(&[(4 + 2 * 2) * 8, 8], 3)),
            q_norm: Some(randn(&[5], 5)),
            ..w
        };
        let err = attention_block(&x, &w, HEADS, None, &mask).unwrap_err();
        assert!(err.to_string().contains("do not fit"), "{err}");
    }
}
