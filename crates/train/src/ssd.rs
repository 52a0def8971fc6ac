//! Mamba 2's state space scan (SSD) from candle ops, what every device runs. Per head h, with a = A_h · dt_t:
//!
//!   state_t = exp(a_t) · state_{t−1} + dt_t · x_t ⊗ B_t,   y_t = state_t · C_t
//!
//! (x of the head's width, B and C of the state's, each group's shared by its heads). Training takes it in chunks
//! as transformers' `torch_forward` does: within a chunk, y = ((C Bᵀ) ⊙ L) (dt · x) with L = exp of the segment
//! sums of a (masked to the past); each chunk's state from its positions' decays to its end; the states carried
//! across chunks by the same segment sums over the chunks' totals; each position reading the state it enters
//! with. Generation (and passes shorter than a few positions) takes it one position at a time.
//!
//! Through candle's graph the chunked form keeps several chunk × chunk blocks per position and head until the
//! loss is dropped; [`recomputed`] keeps only its inputs: its value comes from a pass on detached inputs, and its
//! backward pass recomputes the scan and differentiates that (as delta_net.rs does for the delta rule).

use crate::mamba::MambaShape;
use candle_core::{DType, Device, Result, Tensor, D};

/// Passes shorter than this take the scan one position at a time.
pub const STEPWISE_BELOW: usize = 4;

/// x (batch, seq, heads, head dim), B and C (batch, seq, heads, state), each group's repeated for its heads, from
/// the convolved x‖B‖C (batch, seq, conv width) in f32.
fn split(xbc: &Tensor, s: MambaShape) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, t, _) = xbc.dims3()?;
    let (inner, gn) = (s.intermediate(), s.groups * s.state);
    let x = xbc.narrow(2, 0, inner)?.reshape((b, t, s.heads, s.head_dim))?;
    let per_head = |m: Tensor| -> Result<Tensor> {
        let rep = s.heads / s.groups;
        m.reshape((b, t, s.groups, 1, s.state))?
            .broadcast_as((b, t, s.groups, rep, s.state))?
            .reshape((b, t, s.heads, s.state))
    };
    let bm = per_head(xbc.narrow(2, inner, gn)?)?;
    let cm = per_head(xbc.narrow(2, inner + gn, gn)?)?;
    Ok((x, bm, cm))
}

/// The scan's output y (batch, seq, heads, head dim), D's skip aside, and the state after the last position
/// (batch, heads, head dim, state), from the convolved x‖B‖C (batch, seq, conv width), dt (batch, seq, heads) and
/// A (heads), all f32, starting from `start` (zeros where None).
pub fn scan(xbc: &Tensor, dt: &Tensor, a: &Tensor, s: MambaShape, start: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
    let (x, bm, cm) = split(xbc, s)?;
    let t = x.dim(1)?;
    match t < STEPWISE_BELOW || start.is_some() && t == 1 {
        true => stepwise(&x, &bm, &cm, dt, a, start),
        // A pass shorter than a chunk is one chunk of its own length: the same sums, without padding to the
        // configured size (transformers' 256 would make a 40-token prompt 256 × 256 blocks).
        false => chunked(&x, &bm, &cm, dt, a, s.chunk.min(t), start),
    }
}

/// One position at a time.
fn stepwise(
    x: &Tensor,
    bm: &Tensor,
    cm: &Tensor,
    dt: &Tensor,
    a: &Tensor,
    start: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let (b, t, h, p) = x.dims4()?;
    let n = bm.dim(3)?;
    let mut state = match start {
        Some(s) => s.clone(),
        None => Tensor::zeros((b, h, p, n), DType::F32, x.device())?,
    };
    let mut ys = Vec::with_capacity(t);
    for i in 0..t {
        let dt_i = dt.narrow(1, i, 1)?.squeeze(1)?; // (b, h)
        let decay = dt_i.broadcast_mul(a)?.exp()?.reshape((b, h, 1, 1))?;
        let x_i = x.narrow(1, i, 1)?.squeeze(1)?.broadcast_mul(&dt_i.unsqueeze(2)?)?; // (b, h, p)
        let b_i = bm.narrow(1, i, 1)?.squeeze(1)?; // (b, h, n)
        let write = x_i.unsqueeze(3)?.broadcast_mul(&b_i.unsqueeze(2)?)?;
        state = (state.broadcast_mul(&decay)? + write)?;
        let c_i = cm.narrow(1, i, 1)?.squeeze(1)?.unsqueeze(3)?.contiguous()?; // (b, h, n, 1)
        ys.push(state.matmul(&c_i)?.squeeze(3)?); // (b, h, p)
    }
    Ok((Tensor::stack(&ys, 1)?, state))
}

/// Sums of `a` (…, q) over each segment: [l, s] = a_{s+1} + … + a_l for s ≤ l, as transformers' `segment_sum`
/// computes them (a masked running sum, not a difference of two), and the mask of those entries.
fn segment_sums(a: &Tensor) -> Result<(Tensor, Tensor)> {
    let q = a.dim(D::Minus1)?;
    let dev = a.device();
    let strict = lower(q, 1, dev)?;
    let mut dims = a.dims().to_vec();
    dims.push(q);
    let spread = a.unsqueeze(D::Minus1)?.broadcast_as(dims.as_slice())?; // [i, j] = a_i
    let sums = spread.broadcast_mul(&strict)?.cumsum(a.rank() - 1)?;
    Ok((sums, lower(q, 0, dev)?))
}

/// exp of [`segment_sums`], zero above the diagonal.
fn decays(a: &Tensor) -> Result<Tensor> {
    let (sums, mask) = segment_sums(a)?;
    sums.exp()?.broadcast_mul(&mask)
}

/// An n × n f32 mask of the entries `below` or more under the diagonal.
fn lower(n: usize, below: usize, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..n * n)
        .map(|k| if k / n >= k % n + below { 1.0 } else { 0.0 })
        .collect();
    Tensor::from_vec(values, (n, n), device)
}

/// Chunks of `q` positions: transformers' chunked SSD.
fn chunked(
    x: &Tensor,
    bm: &Tensor,
    cm: &Tensor,
    dt: &Tensor,
    a: &Tensor,
    q: usize,
    start: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let (b, t, h, p) = x.dims4()?;
    let n = bm.dim(3)?;
    let (nc, bh) = (t.div_ceil(q), b * h);
    let pad = nc * q - t;
    // Padding at the end: dt = 0 there, so it neither decays nor writes the state.
    let padded = |m: &Tensor| m.pad_with_zeros(1, 0, pad);
    let xdt = padded(&x.broadcast_mul(&dt.unsqueeze(3)?)?)?;
    let adt = padded(&dt.broadcast_mul(a)?)?;
    // (batch · heads, chunk, position[, width]): candle's matmul takes two batch dimensions at most.
    let chunks = |m: Tensor, w: usize| -> Result<Tensor> {
        m.reshape((b, nc, q, h, w))?
            .permute((0, 3, 1, 2, 4))?
            .reshape((bh, nc, q, w))?
            .contiguous()
    };
    let (xdt, bm, cm) = (chunks(xdt, p)?, chunks(padded(bm)?, n)?, chunks(padded(cm)?, n)?);
    let adt = adt
        .reshape((b, nc, q, h))?
        .permute((0, 3, 1, 2))?
        .reshape((bh, nc, q))?
        .contiguous()?;
    let cum = adt.cumsum(2)?;

    // Within each chunk: ((C Bᵀ) ⊙ L) (dt · x).
    let scores = cm.matmul(&bm.t()?.contiguous()?)?;
    let y_diag = (scores * decays(&adt)?)?.matmul(&xdt)?;

    // Each chunk's own state at its end, then the states each chunk starts from.
    let last = cum.narrow(2, q - 1, 1)?;
    let to_end = last.broadcast_sub(&cum)?.exp()?;
    let weighted = bm.broadcast_mul(&to_end.unsqueeze(3)?)?;
    let own = xdt.t()?.contiguous()?.matmul(&weighted)?; // (bh, nc, p, n)
    let first = match start {
        Some(s) => s.reshape((bh, 1, p, n))?,
        None => Tensor::zeros((bh, 1, p, n), DType::F32, x.device())?,
    };
    let states = Tensor::cat(&[&first, &own], 1)?.reshape((bh, nc + 1, p * n))?;
    let totals = last.squeeze(2)?.pad_with_zeros(1, 1, 0)?.contiguous()?; // (bh, nc + 1)
    let carried = decays(&totals)?.matmul(&states)?.reshape((bh, nc + 1, p, n))?;
    let entering = carried.narrow(1, 0, nc)?;
    let end = carried.narrow(1, nc, 1)?.reshape((b, h, p, n))?;

    // Each position reads the state its chunk starts from, decayed to it.
    let read = cm.matmul(&entering.t()?.contiguous()?)?; // (bh, nc, q, p)
    let y_off = read.broadcast_mul(&cum.exp()?.unsqueeze(3)?)?;
    let y = (y_diag + y_off)?
        .reshape((b, h, nc * q, p))?
        .permute((0, 2, 1, 3))?
        .narrow(1, 0, t)?
        .contiguous()?;
    Ok((y, end))
}

/// [`scan`] from a zero state for a training pass, as one node that keeps its inputs alone (see the module's
/// text).
pub fn recomputed(xbc: &Tensor, dt: &Tensor, a: &Tensor, s: MambaShape) -> Result<Tensor> {
    let forward = move |xbc: &Tensor, dt: &Tensor, a: &Tensor| scan(xbc, dt, a, s, None).map(|(y, _)| y);
    crate::node::recomputed3("mamba-scan", [xbc, dt, a], forward)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::tests::randn;
    use crate::ops::tests::{assert_same_gradients, max_abs_diff};
    use candle_core::Var;

    fn shape(chunk: usize) -> MambaShape {
        MambaShape {
            heads: 4,
            head_dim: 3,
            groups: 2,
            state: 5,
            kernel: 4,
            chunk,
            conv_bias: true,
            proj_bias: false,
            dt_limit: (0.0, f64::INFINITY),
        }
    }

    /// Inputs as the layer makes them: dt in (0, 1), A negative.
    fn inputs(b: usize, t: usize, s: MambaShape) -> (Tensor, Tensor, Tensor) {
        let xbc = randn(&[b, t, s.conv_width()], 1);
        let dt = (randn(&[b, t, s.heads], 2).abs().unwrap() * 0.5).unwrap();
        let a = (randn(&[s.heads], 3).abs().unwrap() + 0.2).unwrap().neg().unwrap();
        (xbc, dt, a)
    }

    #[test]
    fn chunks_give_the_stepwise_scan_across_chunk_boundaries_and_from_a_start() {
        // 23 positions in chunks of 5 (the last partial), and in one chunk wider than the pass.
        let s = shape(5);
        let (xbc, dt, a) = inputs(2, 23, s);
        let (x, bm, cm) = split(&xbc, s).unwrap();
        let (want, want_end) = stepwise(&x, &bm, &cm, &dt, &a, None).unwrap();
        for q in [5, 64] {
            let (y, end) = chunked(&x, &bm, &cm, &dt, &a, q, None).unwrap();
            assert!(
                max_abs_diff(&y, &want) < 1e-5,
                "chunks of {q}: {}",
                max_abs_diff(&y, &want)
            );
            assert!(max_abs_diff(&end, &want_end) < 1e-5);
        }
        // Split in two at position 9: the second half from the first half's state.
        let half = |m: &Tensor, from: usize, len: usize| m.narrow(1, from, len).unwrap();
        let (_, mid) = scan(&half(&xbc, 0, 9), &half(&dt, 0, 9), &a, s, None).unwrap();
        let (y2, end2) = scan(&half(&xbc, 9, 14), &half(&dt, 9, 14), &a, s, Some(&mid)).unwrap();
        assert!(max_abs_diff(&y2, &half(&want, 9, 14)) < 1e-5);
        assert!(max_abs_diff(&end2, &want_end) < 1e-5);
    }

    #[test]
    fn the_recomputed_scan_gives_the_composite_values_and_gradients() {
        let s = shape(8);
        let (xbc, dt, a) = inputs(2, 30, s);
        let (xbc, dt, a) = (
            Var::from_tensor(&xbc).unwrap(),
            Var::from_tensor(&dt).unwrap(),
            Var::from_tensor(&a).unwrap(),
        );
        // Products of the leaves, so the gradients must pass the node on their way down.
        let scaled = (xbc.as_tensor() * 1.5).unwrap();
        let out = recomputed(&scaled, dt.as_tensor(), a.as_tensor(), s).unwrap();
        let (reference, _) = scan(&scaled, dt.as_tensor(), a.as_tensor(), s, None).unwrap();
        assert!(max_abs_diff(&out, &reference) < 1e-6);
        let probe = randn(out.dims(), 9);
        let loss = |o: &Tensor| (o * &probe).unwrap().sum_all().unwrap();
        let (ga, gr) = (loss(&out).backward().unwrap(), loss(&reference).backward().unwrap());
        let inputs = [("xbc", xbc.as_tensor()), ("dt", dt.as_tensor()), ("A", a.as_tensor())];
        assert_same_gradients(&ga, &gr, &inputs, 1e-5);
    }
}
