//! Causal self-attention of a training forward pass in one op: per (batch, head), `softmax(q·kᵀ·scale + mask)·v`,
//! written straight into the (batch, seq, heads·head_dim) layout the output projection reads. The composite path
//! runs two batched matmuls (each of 256×64 tiles split across threads, half of gemm's speed at this size), keeps
//! both the scores and the probabilities for the backward pass, copies the heads back together, and records five
//! nodes. Here each (batch, head) is one task on one thread with single-threaded gemm calls, only the
//! probabilities are kept (and only when a graph is being recorded), grouped-query heads read their shared
//! key/value head in place instead of a repeated copy, and the backward pass is one op too. Each head works in
//! blocks of 64 query rows and multiplies only the keys some row of the block can see ([`KeySpan`]): under a
//! causal mask that is about half the square (and less under a sliding window), the part PyTorch's flash
//! attention skips too.

use super::gemm::{matmul, Mat, Shared};
use super::{f32s, masked_softmax_row, with_values};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Query rows per block: the height of one AVX-512 gemm microkernel tile (4 registers of 16 f32).
const ROW_BLOCK: usize = 64;

/// A mask entry at or below this hides its key (the dense masks write -1e9).
const HIDDEN_BELOW: f32 = -1e8;

/// A block of query rows and the keys any of them can see: every key outside `keys` is hidden from every row of
/// the block, so its probability is exactly 0 (`exp(-1e9 - max)` underflows) and its scores need not be made. A
/// causal mask makes the block at rows `r0..r1` see keys `0..r1`, about half the work of the full square; a
/// sliding window, less still.
#[derive(Clone, Copy, Debug, PartialEq)]
struct KeySpan {
    rows: (usize, usize),
    keys: (usize, usize),
    /// Where the block's probabilities (rows × keys, row-major) start in its head's packed probabilities.
    at: usize,
}

impl KeySpan {
    fn height(&self) -> usize {
        self.rows.1 - self.rows.0
    }

    fn width(&self) -> usize {
        self.keys.1 - self.keys.0
    }
}

/// The key spans of each batch item's mask (one list for a mask the batch shares), and the layout of the
/// probabilities the forward pass keeps: per (batch, head), its blocks' rows × keys packed one after another, so
/// the hidden part of the square is neither computed nor stored.
struct Spans {
    lists: Vec<Vec<KeySpan>>,
    /// Per batch item, where its first head's probabilities start.
    starts: Vec<usize>,
}

impl Spans {
    fn new(lists: Vec<Vec<KeySpan>>, batches: usize, heads: usize) -> Spans {
        let mut spans = Spans {
            lists,
            starts: Vec::with_capacity(batches + 1),
        };
        let mut at = 0;
        for b in 0..batches {
            spans.starts.push(at);
            at += heads * spans.area(b);
        }
        spans.starts.push(at);
        spans
    }

    fn of(&self, batch: usize) -> &[KeySpan] {
        &self.lists[if self.lists.len() == 1 { 0 } else { batch }]
    }

    /// Probabilities per head of batch item `batch`.
    fn area(&self, batch: usize) -> usize {
        self.of(batch).last().map_or(0, |s| s.at + s.height() * s.width())
    }

    /// Where the probabilities of (batch, head) start.
    fn head_start(&self, batch: usize, head: usize) -> usize {
        self.starts[batch] + head * self.area(batch)
    }

    /// Probabilities of the whole batch.
    fn total(&self) -> usize {
        *self.starts.last().expect("one start per batch item and the end")
    }

    fn largest_area(&self) -> usize {
        (0..self.starts.len() - 1).map(|b| self.area(b)).max().unwrap_or(0)
    }
}

/// The [`KeySpan`]s of one (seq, seq) mask. A row that sees no key at all spans every key, as the full softmax over
/// its uniformly hidden row does.
fn key_spans(mask: &[f32], t: usize) -> Vec<KeySpan> {
    let visible = |i: usize| -> (usize, usize) {
        let row = &mask[i * t..][..t];
        match row.iter().position(|&m| m > HIDDEN_BELOW) {
            Some(first) => {
                let last = row.iter().rposition(|&m| m > HIDDEN_BELOW).unwrap_or(first);
                (first, last + 1)
            }
            None => (0, t),
        }
    };
    let mut spans: Vec<KeySpan> = (0..t.div_ceil(ROW_BLOCK))
        .into_par_iter()
        .map(|blk| {
            let rows = (blk * ROW_BLOCK, ((blk + 1) * ROW_BLOCK).min(t));
            let keys = (rows.0..rows.1)
                .map(visible)
                .fold((t, 0), |(lo, hi), (a, b)| (lo.min(a), hi.max(b)));
            KeySpan { rows, keys, at: 0 }
        })
        .collect();
    let mut at = 0;
    for span in &mut spans {
        span.at = at;
        at += span.height() * span.width();
    }
    spans
}

/// `row = softmax([row * scale + mask, sink])` over the row's keys, in place, with the sink's logit one more entry
/// in the softmax (it has no value); returns the sink's probability.
fn softmax_row_with_sink(row: &mut [f32], mask: &[f32], scale: f32, sink: f32) -> f32 {
    for (o, &m) in row.iter_mut().zip(mask) {
        *o = *o * scale + m;
    }
    let max = crate::fastmath::max(row).max(sink);
    for o in row.iter_mut() {
        *o -= max;
    }
    crate::fastmath::exp_in_place(row);
    let sink = (sink - max).exp();
    let inv = 1.0 / (crate::fastmath::sum(row) + sink);
    row.iter_mut().for_each(|o| *o *= inv);
    sink * inv
}

/// `q` (batch, heads, seq, head_dim), `k`/`v` (batch, kv_heads, seq, head_dim), `mask` (1 or batch, 1, seq, seq)
/// additive f32; returns (batch, seq, heads·head_dim).
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f32) -> Result<Tensor> {
    let dims = fitting_dims(q, k, v, mask)?;
    let mask = mask.contiguous()?;
    let op = Attention {
        kernel: Kernel::new(dims, &mask, scale)?,
        keep_probs: q.track_op() || k.track_op() || v.track_op(),
        probs: Mutex::new(None),
        mask,
    };
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

/// The attention's shape, where q, k, v and the mask fit together.
pub(super) fn fitting_dims(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Dims> {
    let (b, h, t, d) = q.dims4()?;
    let (kb, kv, kt, kd) = k.dims4()?;
    let (mb, one, mq, mk) = mask.dims4()?;
    let fits = (kb, kt, kd) == (b, t, d)
        && v.dims4()? == (b, kv, t, d)
        && kv > 0
        && h % kv == 0
        && one == 1
        && (mq, mk) == (t, t)
        && (mb == 1 || mb == b);
    if !fits {
        bail!(
            "causal_attention: q {:?}, k {:?}, v {:?} and mask {:?} do not fit together",
            q.shape(),
            k.shape(),
            v.shape(),
            mask.shape()
        )
    }
    Ok(Dims { b, h, kv, t, d })
}

/// The key spans of each batch item's mask (one entry for a mask shared by the batch).
fn mask_spans(mask: &Tensor, batches: usize, t: usize) -> Result<Vec<Vec<KeySpan>>> {
    let (storage, layout) = mask.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("causal_attention: the fused kernel runs on the CPU")
    };
    let values = f32s(cpu, layout, "attention mask")?;
    Ok(values.chunks(t * t).take(batches).map(|m| key_spans(m, t)).collect())
}

/// The attention's shape: batch, query heads, key/value heads, sequence, head dimension.
#[derive(Clone, Copy)]
pub(super) struct Dims {
    pub b: usize,
    pub h: usize,
    pub kv: usize,
    pub t: usize,
    pub d: usize,
}

/// The attention's forward and backward passes over plain buffers, for the attention op and the whole attention
/// block (`attn_block.rs`): q (batch, heads, seq, head_dim), k and v (batch, kv_heads, seq, head_dim), the
/// additive mask (1 or batch, seq, seq) whose [`KeySpan`]s it was built from.
#[derive(Clone)]
pub(super) struct Kernel {
    dims: Dims,
    mask_batched: bool,
    scale: f32,
    spans: Arc<Spans>,
    /// Each head's sink logit (gpt-oss), where the layer has them: one more entry in every row's softmax, with no
    /// value.
    sinks: Option<Arc<Vec<f32>>>,
}

impl Kernel {
    /// Checks the mask (1 or batch, 1, seq, seq) against `dims` and reads its key spans.
    pub fn new(dims: Dims, mask: &Tensor, scale: f32) -> Result<Kernel> {
        let (mb, one, mq, mk) = mask.dims4()?;
        if one != 1 || (mq, mk) != (dims.t, dims.t) || (mb != 1 && mb != dims.b) {
            bail!(
                "attention: mask {:?} does not fit {} rows of {}",
                mask.shape(),
                dims.b,
                dims.t
            )
        }
        Ok(Kernel {
            dims,
            mask_batched: mb != 1,
            scale,
            spans: Arc::new(Spans::new(mask_spans(mask, mb, dims.t)?, dims.b, dims.h)),
            sinks: None,
        })
    }

    /// The kernel with each head's sink logit in its rows' softmax.
    pub fn with_sinks(mut self, sinks: Vec<f32>) -> Result<Kernel> {
        if sinks.len() != self.dims.h {
            bail!("attention: {} sink logits for {} heads", sinks.len(), self.dims.h)
        }
        self.sinks = Some(Arc::new(sinks));
        Ok(self)
    }

    /// Rows whose sink probability the forward pass keeps after the blocks' probabilities: every (batch, head,
    /// query) where the layer has sinks.
    fn sink_rows(&self) -> usize {
        let Dims { b, h, t, .. } = self.dims;
        self.sinks.as_ref().map_or(0, |_| b * h * t)
    }

    /// What the forward pass keeps for the backward pass: the blocks' probabilities, then each row's sink
    /// probability.
    fn kept_len(&self) -> usize {
        self.spans.total() + self.sink_rows()
    }

    fn mask_rows<'a>(&self, mask: &'a [f32], batch: usize) -> &'a [f32] {
        let tt = self.dims.t * self.dims.t;
        if self.mask_batched {
            &mask[batch * tt..(batch + 1) * tt]
        } else {
            &mask[..tt]
        }
    }
}

impl Kernel {
    /// The attention output (batch, seq, heads·head_dim) and, when `keep`, the probabilities for the backward
    /// pass (packed as [`Spans`] lays them out, then each row's sink probability where there are sinks; empty
    /// otherwise).
    pub fn forward(&self, q: &[f32], k: &[f32], v: &[f32], mask: &[f32], keep: bool) -> (Vec<f32>, Vec<f32>) {
        let Dims { b, h, kv, t, d } = self.dims;
        assert!(q.len() == b * h * t * d && k.len() == b * kv * t * d && v.len() == k.len());
        let rep = h / kv;
        let spans = &self.spans;
        let n_probs = if keep { self.kept_len() } else { 0 };
        let sink_at = spans.total();
        // Neither buffer is zero-filled: every value is written below (see `fill`) before it is read.
        let (mut out, mut probs) = (
            Vec::<f32>::with_capacity(b * t * h * d),
            Vec::<f32>::with_capacity(n_probs),
        );
        let (out_ptr, probs_ptr) = (Shared(out.as_mut_ptr()), Shared(probs.as_mut_ptr()));
        let scale = self.scale;
        (0..b * h).into_par_iter().for_each_init(
            || vec![0f32; if keep { 0 } else { spans.largest_area() }],
            |scratch, bh| {
                let (bi, hi) = (bh / h, bh % h);
                let p = if keep {
                    // SAFETY: the probabilities of head `bh` lie inside the buffer.
                    unsafe { probs_ptr.at(spans.head_start(bi, hi)) }
                } else {
                    scratch.as_mut_ptr()
                };
                let qh = &q[bh * t * d..][..t * d];
                let kvh = (bi * kv + hi / rep) * t * d;
                let (kh, vh) = (&k[kvh..][..t * d], &v[kvh..][..t * d]);
                let (dd, row) = (d as isize, (h * d) as isize);
                let m = self.mask_rows(mask, bi);
                for span in spans.of(bi) {
                    let ((r0, r1), c0) = (span.rows, span.keys.0);
                    let (nr, nc) = (span.height(), span.width());
                    // SAFETY: shapes and strides as checked above, every block inside them; the head's
                    // probabilities and the output columns of head `hi` in batch `bi` are this task's alone. The
                    // scores' product writes the block before it is made a slice.
                    unsafe {
                        let pb = p.add(span.at);
                        let kt = Mat(kh.as_ptr().add(c0 * d), 1, dd);
                        let qb = Mat(qh.as_ptr().add(r0 * d), dd, 1);
                        matmul(nr, nc, d, Mat(pb, nc as isize, 1), false, qb, kt);
                        let block = std::slice::from_raw_parts_mut(pb, nr * nc);
                        for (i, r) in (r0..r1).zip(block.chunks_mut(nc)) {
                            let mask_row = &m[i * t + c0..][..nc];
                            match &self.sinks {
                                None => masked_softmax_row(r, mask_row, scale),
                                Some(sinks) => {
                                    let p_sink = softmax_row_with_sink(r, mask_row, scale, sinks[hi]);
                                    if keep {
                                        *probs_ptr.at(sink_at + bh * t + i) = p_sink;
                                    }
                                }
                            }
                        }
                        let dst = Mat(out_ptr.at((bi * t * h + hi) * d + r0 * h * d), row, 1);
                        let vb = Mat(vh.as_ptr().add(c0 * d), dd, 1);
                        matmul(nr, d, nc, dst, false, Mat(pb, nc as isize, 1), vb);
                    }
                }
            },
        );
        // SAFETY (`fill`): the row blocks of each (batch, head) cover every row, so its output columns are written
        // in full; the blocks' probabilities are packed back to back and fill the head's area; each row writes its
        // sink probability.
        unsafe {
            out.set_len(b * t * h * d);
            probs.set_len(n_probs);
        }
        (out, probs)
    }

    /// `[dq, dk, dv]` packed in one buffer, then, where there are sinks, each (batch, head)'s sink gradient, from
    /// the output's gradient `dy` (batch, seq, heads·head_dim) and what the forward pass kept. One task per
    /// (batch, kv head), so the heads sharing a key/value head add into its gradients without contention.
    pub fn backward(&self, q: &[f32], k: &[f32], v: &[f32], dy: &[f32], probs: &[f32]) -> Vec<f32> {
        let Dims { b, h, kv, t, d } = self.dims;
        assert!(q.len() == b * h * t * d && k.len() == b * kv * t * d && v.len() == k.len() && dy.len() == q.len());
        assert_eq!(probs.len(), self.kept_len(), "the forward pass kept the probabilities");
        let rep = h / kv;
        let (nq, nk) = (b * h * t * d, b * kv * t * d);
        let sink_probs = self.sinks.as_ref().map(|_| &probs[self.spans.total()..]);
        let sink_grads = self.sinks.as_ref().map_or(0, |_| b * h);
        let mut out = vec![0f32; nq + 2 * nk + sink_grads];
        let base = Shared(out.as_mut_ptr());
        let spans = &self.spans;
        (0..b * kv).into_par_iter().for_each_init(
            || vec![0f32; ROW_BLOCK * t],
            |ds_buf, bk| {
                let bi = bk / kv;
                let (dd, row) = (d as isize, (h * d) as isize);
                let kh = &k[bk * t * d..][..t * d];
                let vh = &v[bk * t * d..][..t * d];
                // SAFETY: this task alone writes dk and dv of kv head `bk` and dq of the heads it serves.
                unsafe {
                    let dk = Mat(base.at(nq + bk * t * d), dd, 1);
                    let dv = Mat(base.at(nq + nk + bk * t * d), dd, 1);
                    for r in 0..rep {
                        let hi = (bk % kv) * rep + r;
                        let bh = bi * h + hi;
                        let p = probs[spans.head_start(bi, hi)..][..spans.area(bi)].as_ptr();
                        let qh = q[bh * t * d..][..t * d].as_ptr();
                        let dout = dy.as_ptr().add((bi * t * h + hi) * d);
                        let mut d_sink = 0f32;
                        for span in spans.of(bi) {
                            let (r0, c0) = (span.rows.0, span.keys.0);
                            let (nr, nc) = (span.height(), span.width());
                            let pb = p.add(span.at);
                            let doutb = Mat(dout.add(r0 * h * d), row, 1);
                            let (dkb, dvb) = (Mat(dk.0.add(c0 * d), dd, 1), Mat(dv.0.add(c0 * d), dd, 1));
                            // dv += pᵀ · dout
                            matmul(nc, d, nr, dvb, true, Mat(pb, 1, nc as isize), doutb);
                            // dp = dout · vᵀ, then ds = scale · p ∘ (dp − Σ dp∘p)
                            let dp = Mat(ds_buf.as_mut_ptr(), nc as isize, 1);
                            matmul(nr, nc, d, dp, false, doutb, Mat(vh.as_ptr().add(c0 * d), 1, dd));
                            for (i, dsr) in ds_buf[..nr * nc].chunks_mut(nc).enumerate() {
                                let pr = std::slice::from_raw_parts(pb.add(i * nc), nc);
                                let dot = crate::fastmath::dot(dsr, pr);
                                for (g, &y) in dsr.iter_mut().zip(pr) {
                                    *g = self.scale * y * (*g - dot);
                                }
                                // The sink has no value, so its dp is 0: its logit's gradient is −p_sink · Σ dp∘p.
                                if let Some(sink_probs) = sink_probs {
                                    d_sink -= sink_probs[bh * t + r0 + i] * dot;
                                }
                            }
                            // dq = ds · k, dk += dsᵀ · q
                            let dsm = Mat(ds_buf.as_ptr(), nc as isize, 1);
                            let dq = Mat(base.at(bh * t * d + r0 * d), dd, 1);
                            matmul(nr, d, nc, dq, false, dsm, Mat(kh.as_ptr().add(c0 * d), dd, 1));
                            let dst = Mat(ds_buf.as_ptr(), 1, nc as isize);
                            matmul(nc, d, nr, dkb, true, dst, Mat(qh.add(r0 * d), dd, 1));
                        }
                        if sink_probs.is_some() {
                            *base.at(nq + 2 * nk + bh) = d_sink;
                        }
                    }
                }
            },
        );
        out
    }
}

struct Attention {
    kernel: Kernel,
    mask: Tensor,
    /// Whether the backward pass will run: only then are the probabilities kept.
    keep_probs: bool,
    /// The probabilities from the forward pass, for the backward pass, packed as [`Spans`] lays them out.
    probs: Mutex<Option<Arc<Vec<f32>>>>,
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-causal-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (f32s(qs, ql, "q")?, f32s(ks, kl, "k")?, f32s(vs, vl, "v")?);
        let (out, probs) = with_values(&[&self.mask], |mask| {
            Ok(self.kernel.forward(q, k, v, mask[0], self.keep_probs))
        })?;
        if self.keep_probs {
            *self.probs.lock().expect("attention probabilities") = Some(Arc::new(probs));
        }
        let Dims { b, t, h, d, .. } = self.kernel.dims;
        Ok((CpuStorage::F32(out), Shape::from((b, t, h * d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Taken, not cloned: the probabilities are freed as soon as this layer's gradient is computed.
        let Some(probs) = self.probs.lock().expect("attention probabilities").take() else {
            bail!("causal_attention: backward without the forward pass's probabilities")
        };
        let grad = AttentionGrad {
            kernel: self.kernel.clone(),
            probs,
            q: q.clone(),
        };
        let packed = k.apply_op3_no_bwd(v, &dy.contiguous()?, &grad)?;
        let (nq, nk) = (q.elem_count(), k.elem_count());
        let part = |at: usize, like: &Tensor| -> Result<Option<Tensor>> {
            Ok(Some(packed.narrow(0, at, like.elem_count())?.reshape(like.shape())?))
        };
        Ok((part(0, q)?, part(nq, k)?, part(nq + nk, v)?))
    }
}

/// `[dq, dk, dv]` of [`Attention`], packed in one buffer ([`Kernel::backward`]).
struct AttentionGrad {
    kernel: Kernel,
    probs: Arc<Vec<f32>>,
    q: Tensor,
}

impl CustomOp3 for AttentionGrad {
    fn name(&self) -> &'static str {
        "fused-causal-attention-grad"
    }

    fn cpu_fwd(
        &self,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (k, v, dy) = (f32s(ks, kl, "k")?, f32s(vs, vl, "v")?, f32s(ds, dl, "grad")?);
        let out = with_values(&[&self.q], |q| Ok(self.kernel.backward(q[0], k, v, dy, &self.probs)))?;
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_close, model_mask, randn, value_and_grads};
    use super::*;
    use candle_core::Device;

    fn causal_mask(b: usize, t: usize, lengths: Option<&[usize]>) -> Tensor {
        let v: Vec<f32> = (0..b * t * t)
            .map(|i| {
                let (bi, q, k) = (i / (t * t), (i / t) % t, i % t);
                let padded = lengths.is_some_and(|l| k >= l[bi]);
                if k > q || padded {
                    -1e9
                } else {
                    0.0
                }
            })
            .collect();
        Tensor::from_vec(v, (b, 1, t, t), &Device::Cpu).unwrap()
    }

    fn composite(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f32) -> Result<Tensor> {
        let (b, h, t, d) = q.dims4()?;
        let rep = h / k.dim(1)?;
        let expand = |x: &Tensor| -> Result<Tensor> {
            let (b, kv, t, d) = x.dims4()?;
            x.unsqueeze(2)?
                .broadcast_as((b, kv, rep, t, d))?
                .reshape((b, kv * rep, t, d))
        };
        let scores = q.matmul(&expand(k)?.t()?)?;
        let probs = crate::ops::softmax_last_dim(&(scores * scale as f64)?.broadcast_add(mask)?)?;
        probs.matmul(&expand(v)?)?.transpose(1, 2)?.reshape((b, t, h * d))
    }

    #[test]
    fn attention_matches_the_composite_ops_with_shared_grouped_and_padded_masks() {
        for (h, kv, lengths) in [(4, 4, None), (6, 2, None), (4, 1, Some(vec![7usize, 4]))] {
            let (b, t, d) = (2, 7, 8);
            let mask = match &lengths {
                None => causal_mask(1, t, None),
                Some(l) => causal_mask(b, t, Some(l)),
            };
            let (q, k, v) = (
                randn(&[b, h, t, d], 40),
                randn(&[b, kv, t, d], 41),
                randn(&[b, kv, t, d], 42),
            );
            let probe = randn(&[b, t, h * d], 43);
            let inputs = [q, k, v];
            let fused = value_and_grads(&inputs, &probe, |x| causal_attention(&x[0], &x[1], &x[2], &mask, 0.35));
            let reference = value_and_grads(&inputs, &probe, |x| composite(&x[0], &x[1], &x[2], &mask, 0.35));
            assert_close(&fused, &reference, 1e-4);
        }
    }

    #[test]
    fn blocks_see_only_the_keys_their_rows_can_see() {
        let spans = |window| {
            key_spans(
                &model_mask(150, window, &[150])
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap(),
                150,
            )
        };
        let pairs = |s: Vec<KeySpan>| s.into_iter().map(|s| (s.rows, s.keys)).collect::<Vec<_>>();
        let packed = key_spans(
            &model_mask(150, None, &[150]).flatten_all().unwrap().to_vec1().unwrap(),
            150,
        );
        let starts: Vec<usize> = packed.iter().map(|s| s.at).collect();
        assert_eq!(
            starts,
            [0, 64 * 64, 64 * 64 + 64 * 128],
            "blocks packed one after another"
        );
        assert_eq!(
            pairs(spans(None)),
            [((0, 64), (0, 64)), ((64, 128), (0, 128)), ((128, 150), (0, 150))]
        );
        // Row i of a 40-key window sees keys i-39..=i.
        assert_eq!(
            pairs(spans(Some(40))),
            [((0, 64), (0, 64)), ((64, 128), (25, 128)), ((128, 150), (89, 150))]
        );
        // A row that sees nothing spans every key, as the full softmax over its hidden row does.
        let hidden = vec![-1e9f32; 9];
        assert_eq!(pairs(key_spans(&hidden, 3)), [((0, 3), (0, 3))]);
    }

    #[test]
    fn attention_over_several_row_blocks_matches_with_windows_and_padding() {
        // Longer than two row blocks, so the skipped key ranges differ per block; padding and a window make the
        // spans of the two batch items differ.
        let (b, h, kv, t, d) = (2, 4, 2, 150, 8);
        for (window, lengths) in [(None, vec![150, 150]), (Some(40), vec![150, 97]), (None, vec![70, 150])] {
            let mask = model_mask(t, window, &lengths);
            let inputs = [
                randn(&[b, h, t, d], 50),
                randn(&[b, kv, t, d], 51),
                randn(&[b, kv, t, d], 52),
            ];
            let probe = randn(&[b, t, h * d], 53);
            let fused = value_and_grads(&inputs, &probe, |x| causal_attention(&x[0], &x[1], &x[2], &mask, 0.35));
            let reference = value_and_grads(&inputs, &probe, |x| composite(&x[0], &x[1], &x[2], &mask, 0.35));
            assert_close(&fused, &reference, 1e-4);
        }
    }

    #[test]
    fn attention_without_a_graph_keeps_no_probabilities_and_agrees() {
        let mask = causal_mask(1, 5, None);
        let (q, k, v) = (
            randn(&[1, 2, 5, 4], 44),
            randn(&[1, 2, 5, 4], 45),
            randn(&[1, 2, 5, 4], 46),
        );
        let fused = causal_attention(&q, &k, &v, &mask, 0.5).unwrap();
        let reference = composite(&q, &k, &v, &mask, 0.5).unwrap();
        assert!(crate::ops::tests::max_abs_diff(&fused, &reference) < 1e-5);
    }

    #[test]
    fn attention_rejects_shapes_that_do_not_fit() {
        let mask = causal_mask(1, 5, None);
        let q = randn(&[1, 3, 5, 4], 47);
        let kv = randn(&[1, 2, 5, 4], 48);
        let err = causal_attention(&q, &kv, &kv, &mask, 0.5).unwrap_err();
        assert!(err.to_string().contains("do not fit"), "{err}");
    }
}
