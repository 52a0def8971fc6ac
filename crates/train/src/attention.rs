//! Causal self-attention that stores O(seq), not O(seq²), on every device: the device-generic path (CUDA, Metal,
//! and the CPU outside the fused f32 kernels).
//!
//! The forward pass walks blocks of query rows; each block sees only the keys its rows may attend to (causal, and
//! the sliding window's lower edge), so its (rows × keys) scores live only while that block is computed. What the
//! graph keeps is the output and each row's log-sum-exp. The backward pass recomputes each block's probabilities
//! from the log-sum-exp (the flash-attention backward, with key blocks left whole: candle's matmuls want large
//! operands more than a small working set), so the peak is a few blocks of scores, never the whole square.
//!
//! Grouped-query heads read their shared key/value head in place: a block of query rows of the `rep` heads sharing
//! a key/value head is one (rep·rows × d) matrix against that head's keys. The masks (causal, padded keys, the
//! window) are built per block on the device from positions and never enter the graph.
//!
//! Attention sinks (gpt-oss) are one more logit per head in every row's softmax, with no value: they enter the
//! kept log-sum-exp, so a row's probabilities sum to less than 1, and their gradient is −p_sink · Σ_d dO·O per row.

use crate::node::attach3;
use candle_core::{bail, DType, Device, Result, Tensor, D};

/// How attention scores are formed, per layer: the families differ here (a custom scale, a sliding window, a logit
/// softcap as gemma 2 has).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionSpec {
    /// Multiplies q·k (usually 1/√head_dim).
    pub scale: f64,
    /// A query at position p sees keys at positions p − window + 1 ..= p (transformers' sliding window).
    pub window: Option<usize>,
    /// Scores become `cap · tanh(score / cap)` after scaling, before the mask.
    pub softcap: Option<f64>,
}

impl AttentionSpec {
    pub fn plain(head_dim: usize) -> AttentionSpec {
        AttentionSpec {
            scale: 1.0 / (head_dim as f64).sqrt(),
            window: None,
            softcap: None,
        }
    }
}

/// Where the queries sit among the keys, and which keys are padding.
pub struct Positions<'a> {
    /// The position of the first query: 0 in training; the cached length when generating.
    pub q_offset: usize,
    /// Per batch row, how many leading keys are real, as an f32 (batch, 1, 1) tensor on the device; keys at or
    /// past it are hidden. None: every key is real.
    pub lengths: Option<&'a Tensor>,
}

/// About this many bytes of f32 scores per block; the backward pass holds a few such tensors at once.
const BLOCK_BYTES: usize = 32 << 20;
/// A masked score: finite, so a row whose keys are all hidden stays finite.
const HIDDEN: f64 = -1e9;

/// `softmax(q·kᵀ·scale + mask)·v` with `q` (batch, heads, tq, d) and `k`, `v` (batch, kv_heads, tk, d); returns
/// (batch, tq, heads·d) in `q`'s dtype. Scores, softmax and the log-sum-exp are computed in f32; the products in
/// the compute dtype.
///
/// `sinks` (heads), where given, are each head's sink logits: one more entry in every row's softmax, with no value.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    spec: AttentionSpec,
    pos: &Positions,
    sinks: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, heads, _, _) = q.dims4()?;
    let rows = block_rows(b, heads, k.dim(2)?);
    attention_in_blocks(q, k, v, spec, pos, rows, sinks)
}

/// [`attention`] with query blocks of `rows` rows (tests use small blocks to cross block edges).
pub fn attention_in_blocks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    spec: AttentionSpec,
    pos: &Positions,
    rows: usize,
    sinks: Option<&Tensor>,
) -> Result<Tensor> {
    let shape = Shape::of(q, k, v, pos, rows)?;
    let lengths = pos.lengths.map(Tensor::detach);
    let sink_logits = sinks.map(|s| shape.sink_rows(s)).transpose()?;
    // Frozen sinks (or none) need no gradient, and the plain three-operand node serves.
    let trained_sinks = sinks.filter(|s| s.track_op());
    let ctx = Blocks {
        shape,
        spec,
        lengths,
        sinks: sink_logits,
        sink_gradient: trained_sinks.is_some(),
    };
    let (out, lse) = ctx.forward(&q.detach(), &k.detach(), &v.detach())?;
    match trained_sinks {
        None if !(q.track_op() || k.track_op() || v.track_op()) => Ok(out),
        None => attach3(
            "blockwise-attention",
            [q, k, v],
            out,
            Box::new(move |[q, k, v], out, grad| ctx.backward([q, k, v], out, grad, &lse).map(|(g, _)| g)),
        ),
        Some(s) => attach_with_sinks(
            "blockwise-attention-sinks",
            [q, k, v, s],
            out,
            Box::new(move |qkv, out, grad| ctx.backward(qkv, out, grad, &lse)),
        ),
    }
}

/// The gradients of q, k and v (each where wanted) and of the sinks, from an attention node's inputs, its output and
/// the output's gradient.
pub(crate) type SinksBackward =
    Box<dyn Fn([&Tensor; 3], &Tensor, &Tensor) -> Result<([Option<Tensor>; 3], Option<Tensor>)> + Send + Sync>;

/// An attention node of four operands (q, k, v, trained sinks) in a graph node's three: keys and values travel as
/// one, concatenated along the head dimension, and `backward` sees them apart again (their concatenation's
/// backward splits their joined gradient).
pub(crate) fn attach_with_sinks(
    name: &'static str,
    [q, k, v, sinks]: [&Tensor; 4],
    out: Tensor,
    backward: SinksBackward,
) -> Result<Tensor> {
    let d = k.dim(3)?;
    attach3(
        name,
        [q, &Tensor::cat(&[k, v], 3)?, sinks],
        out,
        Box::new(move |[q, kv, s], out, grad| {
            let (k, v) = (kv.narrow(3, 0, d)?, kv.narrow(3, d, d)?);
            let ([dq, dk, dv], ds) = backward([q, &k, &v], out, grad)?;
            let dkv = match (kv.track_op(), dk, dv) {
                (true, Some(dk), Some(dv)) => Some(Tensor::cat(&[dk, dv], 3)?),
                _ => None,
            };
            Ok([dq, dkv, ds.map(|d| d.to_dtype(s.dtype())).transpose()?])
        }),
    )
}

/// Query rows per block: about [`BLOCK_BYTES`] of f32 scores, a multiple of 16, at least 16.
fn block_rows(b: usize, heads: usize, keys: usize) -> usize {
    let per_row = (b * heads * keys * 4).max(1);
    ((BLOCK_BYTES / per_row) / 16 * 16).max(16)
}

#[derive(Debug, Clone, Copy)]
struct Shape {
    b: usize,
    heads: usize,
    kv_heads: usize,
    tq: usize,
    d: usize,
    q_offset: usize,
    rows: usize,
    dtype: DType,
}

impl Shape {
    fn of(q: &Tensor, k: &Tensor, v: &Tensor, pos: &Positions, rows: usize) -> Result<Shape> {
        let (b, heads, tq, d) = q.dims4()?;
        let (kb, kv_heads, tk, kd) = k.dims4()?;
        let fits = (kb, kd) == (b, d)
            && v.dims4()? == (b, kv_heads, tk, d)
            && kv_heads > 0
            && heads % kv_heads == 0
            && pos.q_offset + tq == tk
            && rows > 0
            && k.dtype() == q.dtype()
            && v.dtype() == q.dtype();
        if !fits {
            bail!(
                "attention: q {:?} ({:?}), k {:?} ({:?}), v {:?} ({:?}) with the queries at {} do not fit together",
                q.shape(),
                q.dtype(),
                k.shape(),
                k.dtype(),
                v.shape(),
                v.dtype(),
                pos.q_offset
            )
        }
        if let Some(l) = pos.lengths {
            if l.dims() != [b, 1, 1] || l.dtype() != DType::F32 {
                bail!(
                    "attention: row lengths {:?} ({:?}) for a batch of {b}",
                    l.shape(),
                    l.dtype()
                )
            }
        }
        Ok(Shape {
            b,
            heads,
            kv_heads,
            tq,
            d,
            q_offset: pos.q_offset,
            rows,
            dtype: q.dtype(),
        })
    }

    fn rep(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Each head's sink logit (heads) as f32 (1, kv_heads, rep, 1, 1): one per row of a block's
    /// (batch, kv_heads, rep·rows) scores once broadcast over its rows.
    fn sink_rows(&self, sinks: &Tensor) -> Result<Tensor> {
        if sinks.dims() != [self.heads] {
            bail!("attention: sinks {:?} for {} heads", sinks.shape(), self.heads)
        }
        sinks
            .detach()
            .to_dtype(DType::F32)?
            .reshape((1, self.kv_heads, self.rep(), 1, 1))
    }
}

/// One block: query rows `q0..q0 + qn` (of the queries) against keys `k0..k0 + kn`.
#[derive(Debug, Clone, Copy)]
struct Block {
    q0: usize,
    qn: usize,
    k0: usize,
    kn: usize,
}

struct Blocks {
    shape: Shape,
    spec: AttentionSpec,
    lengths: Option<Tensor>,
    /// Each head's sink logit, f32 (1, kv_heads, rep, 1, 1).
    sinks: Option<Tensor>,
    /// The sinks train: the backward pass gives their gradient.
    sink_gradient: bool,
}

/// A block's f32 scores (batch, kv_heads, rep·rows, keys), masked, and `tanh` of the softcap if there is one.
struct Scores {
    s: Tensor,
    capped: Option<Tensor>,
}

impl Blocks {
    fn blocks(&self) -> Vec<Block> {
        let s = &self.shape;
        (0..s.tq)
            .step_by(s.rows)
            .map(|q0| {
                let qn = s.rows.min(s.tq - q0);
                // Absolute positions of the block's first and last query.
                let (first, last) = (s.q_offset + q0, s.q_offset + q0 + qn - 1);
                let k0 = self.spec.window.map_or(0, |w| (first + 1).saturating_sub(w));
                Block {
                    q0,
                    qn,
                    k0,
                    kn: last + 1 - k0,
                }
            })
            .collect()
    }

    /// Rows `q0..q0 + qn` of `x` (batch, heads, tq, d) as (batch, kv_heads, rep·qn, d).
    fn query_rows(&self, x: &Tensor, blk: Block) -> Result<Tensor> {
        let s = &self.shape;
        x.narrow(2, blk.q0, blk.qn)?
            .contiguous()?
            .reshape((s.b, s.kv_heads, s.rep() * blk.qn, s.d))
    }

    /// Keys (or values) `k0..k0 + kn` of (batch, kv_heads, tk, d), contiguous.
    fn key_rows(&self, x: &Tensor, blk: Block) -> Result<Tensor> {
        x.narrow(2, blk.k0, blk.kn)?.contiguous()
    }

    /// The additive mask of a block, (1 or batch, 1, 1, qn, kn): future keys, keys before the window and padded
    /// keys hidden.
    fn mask(&self, blk: Block, dev: &Device) -> Result<Option<Tensor>> {
        let first = self.shape.q_offset + blk.q0;
        let last = first + blk.qn - 1;
        // A later key than the first query, or a key old enough for the last query's window to drop.
        let needs_causal = blk.k0 + blk.kn - 1 > first;
        let needs_window = self.spec.window.is_some_and(|w| blk.k0 + w <= last);
        if !needs_causal && !needs_window && self.lengths.is_none() {
            return Ok(None);
        }
        let queries = first..first + blk.qn;
        let mask = additive_mask(
            queries,
            blk.k0..blk.k0 + blk.kn,
            self.spec.window,
            self.lengths.as_ref(),
            dev,
        )?;
        // (1 or batch, 1, qn, kn) -> (.., 1, 1, qn, kn): one mask for every head of a kv group.
        Ok(Some(mask.unsqueeze(1)?))
    }

    /// Scaled, capped and masked f32 scores of query rows `qb` against keys `kw`.
    fn scores(&self, qb: &Tensor, kw: &Tensor, blk: Block) -> Result<Scores> {
        let s = &self.shape;
        let mut scores = (qb.matmul(&kw.t()?)?.to_dtype(DType::F32)? * self.spec.scale)?;
        let mut capped = None;
        if let Some(cap) = self.spec.softcap {
            let t = (scores / cap)?.tanh()?;
            scores = (&t * cap)?;
            capped = Some(t);
        }
        if let Some(mask) = self.mask(blk, qb.device())? {
            scores = scores
                .reshape((s.b, s.kv_heads, s.rep(), blk.qn, blk.kn))?
                .broadcast_add(&mask)?
                .reshape((s.b, s.kv_heads, s.rep() * blk.qn, blk.kn))?;
        }
        Ok(Scores { s: scores, capped })
    }

    /// The sink logit of each row of a block (1, kv_heads, rep·qn, 1), where the layer has sinks.
    fn block_sinks(&self, blk: Block) -> Result<Option<Tensor>> {
        let s = &self.shape;
        self.sinks
            .as_ref()
            .map(|t| {
                t.broadcast_as((1, s.kv_heads, s.rep(), blk.qn, 1))?
                    .reshape((1, s.kv_heads, s.rep() * blk.qn, 1))
            })
            .transpose()
    }

    /// The output (batch, tq, heads·d) and, per block, the rows' log-sum-exp (batch, kv_heads, rep·rows, 1), the
    /// sink's logit included where there is one.
    fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let s = self.shape;
        let mut outs = Vec::new();
        let mut lses = Vec::new();
        for blk in self.blocks() {
            let qb = self.query_rows(q, blk)?;
            let sc = self.scores(&qb, &self.key_rows(k, blk)?, blk)?.s;
            let mut max = sc.max_keepdim(D::Minus1)?;
            let sink = self.block_sinks(blk)?;
            if let Some(sink) = &sink {
                max = max.broadcast_maximum(sink)?;
            }
            let mut total = sc.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?;
            if let Some(sink) = &sink {
                total = (total + sink.broadcast_sub(&max)?.exp()?)?;
            }
            let lse = (total.log()? + max)?;
            let probs = sc.broadcast_sub(&lse)?.exp()?.to_dtype(s.dtype)?;
            let out = probs.matmul(&self.key_rows(v, blk)?)?;
            outs.push(out.reshape((s.b, s.heads, blk.qn, s.d))?);
            lses.push(lse);
        }
        let out = Tensor::cat(&outs, 2)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((s.b, s.tq, s.heads * s.d))?;
        Ok((out, lses))
    }

    /// Gradients of q, k and v (each only if it records a graph), block by block from the kept log-sum-exp, and
    /// the sinks' (heads, f32) where the layer has them.
    fn backward(
        &self,
        args: [&Tensor; 3],
        out: &Tensor,
        grad: &Tensor,
        lses: &[Tensor],
    ) -> Result<([Option<Tensor>; 3], Option<Tensor>)> {
        let s = self.shape;
        let [need_q, need_k, need_v] = args.map(Tensor::track_op);
        let [q, k, v] = args.map(Tensor::detach);
        let heads_first =
            |x: &Tensor| -> Result<Tensor> { x.reshape((s.b, s.tq, s.heads, s.d))?.transpose(1, 2)?.contiguous() };
        let (go, o) = (heads_first(&grad.detach())?, heads_first(&out.detach())?);
        let dev = q.device();
        let key_shape = (s.b, s.kv_heads, k.dim(2)?, s.d);
        let dk = Tensor::zeros(key_shape, DType::F32, dev)?;
        let dv = Tensor::zeros(key_shape, DType::F32, dev)?;
        let mut dq = Vec::new();
        let mut d_sinks = match self.sink_gradient {
            true => Some(Tensor::zeros((s.kv_heads, s.rep()), DType::F32, dev)?),
            false => None,
        };
        for (blk, lse) in self.blocks().into_iter().zip(lses) {
            let qb = self.query_rows(&q, blk)?;
            let gob = self.query_rows(&go, blk)?;
            let kw = self.key_rows(&k, blk)?;
            let sc = self.scores(&qb, &kw, blk)?;
            let probs = sc.s.broadcast_sub(lse)?.exp()?;
            if need_v {
                add_rows(&dv, &probs.to_dtype(s.dtype)?.t()?.matmul(&gob)?, blk.k0)?;
            }
            if !(need_q || need_k || d_sinks.is_some()) {
                continue;
            }
            // Σ_d dO·O: the softmax's correction term, per row.
            let gof = gob.to_dtype(DType::F32)?;
            let delta = (gof * self.query_rows(&o, blk)?.to_dtype(DType::F32)?)?.sum_keepdim(D::Minus1)?;
            if let (Some(acc), Some(sink)) = (&mut d_sinks, self.block_sinks(blk)?) {
                // The sink's probability times (0 − delta): it has no value, so its dP is 0.
                let p_sink = sink.broadcast_sub(lse)?.exp()?;
                let per_row = (p_sink * &delta)?.reshape((s.b, s.kv_heads, s.rep(), blk.qn))?;
                *acc = (&*acc - per_row.sum(3)?.sum(0)?)?;
            }
            if !(need_q || need_k) {
                continue;
            }
            let vw = self.key_rows(&v, blk)?;
            let dprobs = gob.matmul(&vw.t()?)?.to_dtype(DType::F32)?;
            let mut ds = (probs * dprobs.broadcast_sub(&delta)?)?;
            if let Some(t) = sc.capped {
                ds = (ds * (1.0 - t.sqr()?)?)?;
            }
            let ds = (ds * self.spec.scale)?.to_dtype(s.dtype)?;
            if need_q {
                dq.push(ds.matmul(&kw)?.reshape((s.b, s.heads, blk.qn, s.d))?);
            }
            if need_k {
                add_rows(&dk, &ds.t()?.matmul(&qb)?, blk.k0)?;
            }
        }
        let dq = if need_q { Some(Tensor::cat(&dq, 2)?) } else { None };
        let dk = if need_k { Some(dk.to_dtype(s.dtype)?) } else { None };
        let dv = if need_v { Some(dv.to_dtype(s.dtype)?) } else { None };
        let d_sinks = d_sinks.map(|d| d.reshape(s.heads)).transpose()?;
        Ok(([dq, dk, dv], d_sinks))
    }
}

/// The additive f32 mask (1 or batch, 1, queries, keys) of query positions `queries` against key positions `keys`:
/// 0 where a query sees a key, [`HIDDEN`] where the key is in its future, `window` or more positions back, or at
/// or past its row's length (`lengths`, f32 (batch, 1, 1)). Built on the device from positions (f32 is exact below
/// 2^24, and every backend compares it). The fused CPU kernel's dense mask is the one block of all positions.
pub fn additive_mask(
    queries: std::ops::Range<usize>,
    keys: std::ops::Range<usize>,
    window: Option<usize>,
    lengths: Option<&Tensor>,
    dev: &Device,
) -> Result<Tensor> {
    let (qn, kn) = (queries.len(), keys.len());
    let qpos = Tensor::arange(queries.start as f32, queries.end as f32, dev)?.reshape((qn, 1))?;
    let kpos = Tensor::arange(keys.start as f32, keys.end as f32, dev)?.reshape((1, kn))?;
    let mut hidden = kpos.broadcast_gt(&qpos)?.to_dtype(DType::F32)?;
    if let Some(w) = window {
        // Hidden when key + window <= query.
        let old = (&kpos + w as f64)?.broadcast_le(&qpos)?.to_dtype(DType::F32)?;
        hidden = hidden.maximum(&old)?;
    }
    let mut hidden = hidden.reshape((1, 1, qn, kn))?;
    if let Some(lengths) = lengths {
        let padded = kpos.unsqueeze(0)?.broadcast_ge(lengths)?.to_dtype(DType::F32)?;
        hidden = hidden.broadcast_maximum(&padded.unsqueeze(1)?)?;
    }
    hidden * HIDDEN
}

/// `acc[:, :, start..start + n] += part` for an f32 accumulator (batch, kv_heads, keys, d).
fn add_rows(acc: &Tensor, part: &Tensor, start: usize) -> Result<()> {
    let n = part.dim(2)?;
    let sum = (acc.narrow(2, start, n)? + part.to_dtype(DType::F32)?)?.contiguous()?;
    acc.slice_set(&sum, 2, start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::softmax_last_dim;
    use candle_core::Var;

    /// The square-matrix attention the blockwise one replaces: repeated kv heads, a dense mask, one softmax.
    fn reference(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        spec: AttentionSpec,
        offset: usize,
        lens: &[usize],
        sinks: Option<&Tensor>,
    ) -> Tensor {
        let (b, nh, tq, d) = q.dims4().unwrap();
        let (_, nkv, tk, _) = k.dims4().unwrap();
        let rep = nh / nkv;
        let repeat = |x: &Tensor| {
            x.unsqueeze(2)
                .unwrap()
                .broadcast_as((b, nkv, rep, tk, d))
                .unwrap()
                .reshape((b, nh, tk, d))
                .unwrap()
        };
        let mut mask = vec![0f32; b * tq * tk];
        for (bi, &len) in lens.iter().enumerate() {
            for i in 0..tq {
                for j in 0..tk {
                    let p = offset + i;
                    let hidden = j > p || j >= len || spec.window.is_some_and(|w| j + w <= p);
                    if hidden {
                        mask[(bi * tq + i) * tk + j] = -1e9;
                    }
                }
            }
        }
        let mask = Tensor::from_vec(mask, (b, 1, tq, tk), q.device()).unwrap();
        let mut s = (q.matmul(&repeat(k).t().unwrap()).unwrap().to_dtype(DType::F32).unwrap() * spec.scale).unwrap();
        if let Some(cap) = spec.softcap {
            s = ((s / cap).unwrap().tanh().unwrap() * cap).unwrap();
        }
        let mut s = s.broadcast_add(&mask).unwrap();
        if let Some(sinks) = sinks {
            // transformers' gpt-oss: the sink as one more column of the scores, dropped after the softmax.
            let column = sinks.to_dtype(DType::F32).unwrap().reshape((1, nh, 1, 1)).unwrap();
            let column = column.broadcast_as((b, nh, tq, 1)).unwrap();
            s = Tensor::cat(&[&s, &column], 3).unwrap();
        }
        let p = softmax_last_dim(&s).unwrap().narrow(3, 0, tk).unwrap();
        p.to_dtype(q.dtype())
            .unwrap()
            .matmul(&repeat(v).contiguous().unwrap())
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, tq, nh * d))
            .unwrap()
    }

    struct Case {
        heads: usize,
        kv: usize,
        tq: usize,
        offset: usize,
        lens: Vec<usize>,
        spec: AttentionSpec,
        rows: usize,
        dtype: DType,
        sinks: bool,
    }

    fn case(heads: usize, kv: usize, t: usize, lens: &[usize]) -> Case {
        Case {
            heads,
            kv,
            tq: t,
            offset: 0,
            lens: lens.to_vec(),
            spec: AttentionSpec::plain(8),
            rows: 5,
            dtype: DType::F32,
            sinks: false,
        }
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        crate::ops::tests::max_abs_diff(a, b)
    }

    /// Value and the gradients of q, k and v against the reference, under a loss that weighs every output.
    fn check(c: &Case, tol: f32) {
        let dev = Device::Cpu;
        let b = c.lens.len();
        let tk = c.offset + c.tq;
        let make = |h: usize, t: usize| {
            Var::from_tensor(
                &Tensor::randn(0f32, 1., (b, h, t, 8), &dev)
                    .unwrap()
                    .to_dtype(c.dtype)
                    .unwrap(),
            )
            .unwrap()
        };
        let (q, k, v) = (make(c.heads, c.tq), make(c.kv, tk), make(c.kv, tk));
        // Padded queries' outputs feed nothing a loss reads (a padded query may see no key at all): weigh real ones.
        let real: Vec<f32> = (0..b * c.tq)
            .map(|r| {
                if c.offset + r % c.tq < c.lens[r / c.tq] {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        let real = Tensor::from_vec(real, (b, c.tq, 1), &dev).unwrap();
        let weights = Tensor::randn(0f32, 1., (b, c.tq, c.heads * 8), &dev)
            .unwrap()
            .broadcast_mul(&real)
            .unwrap();
        let lens_t = Tensor::from_vec(c.lens.iter().map(|&l| l as f32).collect(), (b, 1, 1), &dev).unwrap();
        let padded = c.lens.iter().any(|&l| l < tk);
        let pos = Positions {
            q_offset: c.offset,
            lengths: padded.then_some(&lens_t),
        };
        // Sinks around the scores' size, so they take a real share of each row.
        let sinks = c
            .sinks
            .then(|| Var::from_tensor(&(Tensor::randn(0f32, 1., c.heads, &dev).unwrap() + 1.0).unwrap()).unwrap());
        let sink_t = sinks.as_ref().map(|s| s.as_tensor());
        let (qt, kt, vt) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
        let out = attention_in_blocks(qt, kt, vt, c.spec, &pos, c.rows, sink_t).unwrap();
        let want = reference(qt, kt, vt, c.spec, c.offset, &c.lens, sink_t);
        assert_eq!(out.dtype(), c.dtype);
        let on_real = |y: &Tensor| y.to_dtype(DType::F32).unwrap().broadcast_mul(&real).unwrap();
        let d = max_diff(&on_real(&out), &on_real(&want));
        assert!(d < tol, "value differs by {d}");
        let loss = |y: &Tensor| (y.to_dtype(DType::F32).unwrap() * &weights).unwrap().sum_all().unwrap();
        let got = loss(&out).backward().unwrap();
        let exp = loss(&want).backward().unwrap();
        for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
            let (g, e) = (got.get(x.as_tensor()).unwrap(), exp.get(x.as_tensor()).unwrap());
            assert_eq!(g.dtype(), c.dtype, "{name} gradient dtype");
            let d = max_diff(g, e);
            assert!(d < tol * 10.0, "{name} gradient differs by {d}");
        }
        if let Some(s) = &sinks {
            let (g, e) = (got.get(s.as_tensor()).unwrap(), exp.get(s.as_tensor()).unwrap());
            let d = max_diff(g, e);
            assert!(d < tol * 10.0, "sink gradient differs by {d}");
            let scale = e.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(scale > 1e-2, "the sinks barely matter here ({scale})");
        }
    }

    #[test]
    fn blocks_match_the_square_attention_in_value_and_gradient() {
        check(&case(4, 4, 13, &[13, 13]), 1e-5);
    }

    #[test]
    fn grouped_query_heads_read_their_shared_head() {
        check(&case(6, 2, 11, &[11]), 1e-5);
        check(&case(4, 1, 9, &[9, 9]), 1e-5);
    }

    #[test]
    fn padded_keys_are_hidden() {
        check(&case(4, 2, 12, &[12, 7, 3]), 1e-5);
    }

    #[test]
    fn a_sliding_window_hides_old_keys_across_blocks() {
        let mut c = case(4, 2, 17, &[17, 10]);
        c.spec.window = Some(4);
        check(&c, 1e-5);
        c.spec.window = Some(1);
        check(&c, 1e-5);
    }

    #[test]
    fn a_softcap_and_a_custom_scale_are_applied_and_differentiated() {
        let mut c = case(4, 2, 10, &[10]);
        c.spec.scale = 0.9;
        c.spec.softcap = Some(1.5);
        check(&c, 1e-5);
    }

    #[test]
    fn sinks_take_their_share_of_each_row_and_get_their_gradient() {
        let mut c = case(4, 2, 13, &[13, 9]);
        c.sinks = true;
        check(&c, 1e-5);
        c.spec.window = Some(3);
        check(&c, 1e-5);
        let mut cached = case(6, 2, 2, &[9]);
        (cached.offset, cached.sinks) = (7, true);
        check(&cached, 1e-5);
        let mut half = case(4, 2, 12, &[12]);
        (half.dtype, half.sinks) = (DType::BF16, true);
        check(&half, 3e-2);
    }

    #[test]
    fn queries_after_cached_keys_see_them_all() {
        let mut c = case(4, 2, 3, &[10]);
        c.offset = 7;
        check(&c, 1e-5);
        c.tq = 1;
        c.offset = 9;
        check(&c, 1e-5);
    }

    #[test]
    fn half_precision_computes_the_softmax_in_f32() {
        let mut c = case(4, 2, 12, &[12, 8]);
        c.dtype = DType::BF16;
        check(&c, 3e-2);
    }

    #[test]
    fn frozen_sinks_shape_the_output_but_get_no_gradient() {
        let dev = Device::Cpu;
        let q = Var::from_tensor(&Tensor::randn(0f32, 1., (1, 4, 6, 8), &dev).unwrap()).unwrap();
        let k = Tensor::randn(0f32, 1., (1, 2, 6, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1., (1, 2, 6, 8), &dev).unwrap();
        let sinks = Tensor::new(&[0.5f32, 1.0, 1.5, 2.0], &dev).unwrap();
        let pos = Positions {
            q_offset: 0,
            lengths: None,
        };
        let spec = AttentionSpec::plain(8);
        let out = attention_in_blocks(q.as_tensor(), &k, &v, spec, &pos, 4, Some(&sinks)).unwrap();
        let want = reference(q.as_tensor(), &k, &v, spec, 0, &[6], Some(&sinks));
        assert!(max_diff(&out, &want) < 1e-5);
        let grads = out.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(q.as_tensor()).is_some());
        assert_eq!(grads.get_ids().count(), 1, "only q's gradient is stored");
    }

    #[test]
    fn a_frozen_key_and_value_get_no_gradient() {
        let dev = Device::Cpu;
        let q = Var::from_tensor(&Tensor::randn(0f32, 1., (1, 2, 6, 8), &dev).unwrap()).unwrap();
        let k = Tensor::randn(0f32, 1., (1, 2, 6, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1., (1, 2, 6, 8), &dev).unwrap();
        let pos = Positions {
            q_offset: 0,
            lengths: None,
        };
        let out = attention_in_blocks(q.as_tensor(), &k, &v, AttentionSpec::plain(8), &pos, 4, None).unwrap();
        let grads = out.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(q.as_tensor()).is_some());
        assert!(grads.get(&k).is_none() && grads.get(&v).is_none());
        assert_eq!(grads.get_ids().count(), 1, "only q's gradient is stored");
    }

    #[test]
    fn mismatched_shapes_are_refused_by_name() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((1, 3, 4, 8), DType::F32, &dev).unwrap();
        let k = Tensor::zeros((1, 2, 4, 8), DType::F32, &dev).unwrap();
        let pos = Positions {
            q_offset: 0,
            lengths: None,
        };
        let err = attention(&q, &k, &k, AttentionSpec::plain(8), &pos, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("do not fit"), "{err}");
    }

    #[test]
    fn blocks_hold_about_their_budget_of_scores() {
        assert_eq!(block_rows(2, 8, 1024), 512);
        assert_eq!(block_rows(64, 64, 1 << 16), 16);
        assert_eq!(block_rows(2, 9, 2048) % 16, 0);
    }
}
