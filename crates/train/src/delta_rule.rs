//! The gated delta rule of Gated DeltaNet layers (Qwen3.5's linear attention), in chunks, from differentiable
//! candle ops: every backend runs it and candle's backward pass differentiates it, keeping O(seq · chunk) values per
//! head (no seq × seq square).
//!
//! Per head, with a state S (dk × dv) that starts at zero (or at a generation cache's state), each position t does
//! `S ← exp(g_t)·S`, then `S ← S + k_t ⊗ β_t·(v_t − Sᵀk_t)`, and outputs `o_t = Sᵀq_t`. The chunked form does
//! [`CHUNK`] positions at once (the formulation transformers' reference `torch_chunk_gated_delta_rule` uses):
//! within a chunk through the UT transform `T = (I + strictly_lower(βK·Kᵀ ⊙ Γ))⁻¹` (Γ: the decay between two
//! positions), across chunks through the state. T is made from products of the nilpotent strictly lower part
//! (`(I + A)⁻¹ = (I − A)(I + A²)(I + A⁴)…`, exact after log₂(CHUNK) factors) rather than a triangular solve,
//! which candle has not.

use candle_core::{DType, Result, Tensor, D};

/// Positions per chunk.
pub const CHUNK: usize = 64;

/// The rule's inputs: q, k (batch, seq, heads, dk), v (batch, seq, heads, dv), the log decays g and the write
/// strengths beta (batch, seq, heads), all f32, q and k as the layer prepared them (normalised, q scaled).
#[derive(Clone, Copy)]
pub struct RuleInputs<'a> {
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub g: &'a Tensor,
    pub beta: &'a Tensor,
}

/// Inputs up to this long take the rule one position at a time ([`recurrent`]): a generation step's single token
/// would otherwise fill a whole chunk (64 × 64 products per head for one position).
pub const STEPWISE_BELOW: usize = 8;

/// The gated delta rule over its inputs (see [`chunked`]), one position at a time for short inputs and in chunks
/// otherwise: the same values either way.
pub fn gated_delta_rule(x: RuleInputs, state: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
    match x.q.dim(1)? < STEPWISE_BELOW {
        true => recurrent(x, state),
        false => chunked(x, state),
    }
}

/// The rule as its definition states it, one position at a time: `S ← exp(g)·S`, `S ← S + k ⊗ β(v − Sᵀk)`,
/// `o = Sᵀq`. Inputs and outputs as [`chunked`].
pub fn recurrent(x: RuleInputs, state: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
    let RuleInputs { q, k, v, g, beta } = x;
    let (b, t, h, dk) = q.dims4()?;
    let dv = v.dim(3)?;
    let mut s = match state {
        Some(s) => s.to_dtype(DType::F32)?,
        None => Tensor::zeros((b, h, dk, dv), DType::F32, q.device())?,
    };
    // Position i of x (batch, seq, heads, …) as (batch, heads, 1, …) rows.
    let row = |x: &Tensor, i: usize| x.narrow(1, i, 1)?.transpose(1, 2)?.contiguous();
    let mut outs = Vec::with_capacity(t);
    for i in 0..t {
        let (qi, ki, vi) = (row(q, i)?, row(k, i)?, row(v, i)?);
        let (gi, bi) = (row(&g.unsqueeze(3)?, i)?, row(&beta.unsqueeze(3)?, i)?);
        s = s.broadcast_mul(&gi.exp()?)?;
        let delta = (vi - ki.matmul(&s)?)?.broadcast_mul(&bi)?;
        s = (s + ki.transpose(2, 3)?.matmul(&delta)?)?;
        outs.push(qi.matmul(&s)?);
    }
    Ok((Tensor::cat(&outs, 2)?.transpose(1, 2)?.contiguous()?, s))
}

/// The gated delta rule in chunks, from `state` (batch, heads, dk, dv) or zero. Returns the outputs (batch, seq,
/// heads, dv) and the final state.
pub fn chunked(x: RuleInputs, state: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
    let RuleInputs { q, k, v, g, beta } = x;
    let (b, t, h, dk) = q.dims4()?;
    let dv = v.dim(3)?;
    let c = CHUNK;
    let pad = (c - t % c) % c;
    let n = (t + pad) / c;
    // (batch, heads, seq) first, padded to whole chunks with zeros: a padded position decays nothing (g = 0) and
    // writes nothing (β = 0, k = 0), so the final state is the real positions'.
    let prepare = |x: &Tensor| -> Result<Tensor> {
        let x = x.transpose(1, 2)?.contiguous()?;
        match pad {
            0 => Ok(x),
            _ => x.pad_with_zeros(2, 0, pad),
        }
    };
    let (q, k, v, g, beta) = (prepare(q)?, prepare(k)?, prepare(v)?, prepare(g)?, prepare(beta)?);
    let beta = beta.unsqueeze(3)?;
    let (v_beta, k_beta) = (v.broadcast_mul(&beta)?, k.broadcast_mul(&beta)?);
    // (batch · heads, chunks, chunk, dim): candle's matmul takes at most two batch dimensions.
    let bh = b * h;
    let chunks = |x: &Tensor, d: usize| x.reshape((bh, n, c, d));
    let (q, k) = (chunks(&q, dk)?, chunks(&k, dk)?);
    let (k_beta, v_beta) = (chunks(&k_beta, dk)?, chunks(&v_beta, dv)?);
    // Within each chunk: the cumulative log decay, and the decay between positions j ≤ i (zero above).
    let cum = g.reshape((bh, n, c))?.cumsum(2)?;
    let dev = q.device();
    let lower = Tensor::tril2(c, DType::F32, dev)?;
    let strict = (&lower - Tensor::eye(c, DType::F32, dev)?)?;
    let between = cum.unsqueeze(3)?.broadcast_sub(&cum.unsqueeze(2)?)?;
    let decay = between.broadcast_mul(&lower)?.exp()?.broadcast_mul(&lower)?;
    let kt = k.transpose(2, 3)?.contiguous()?;
    let a = (k_beta.matmul(&kt)? * &decay)?.broadcast_mul(&strict)?;
    let ut = unit_lower_inverse(&a)?;
    let cum_exp = cum.exp()?.unsqueeze(3)?;
    let new_values = ut.matmul(&v_beta)?;
    let k_cumdecay = ut.matmul(&k_beta.broadcast_mul(&cum_exp)?)?;
    let intra = (q.matmul(&kt)? * &decay)?;
    let q_decayed = q.broadcast_mul(&cum_exp)?;
    let last = cum.narrow(2, c - 1, 1)?;
    let k_decayed = k.broadcast_mul(&last.broadcast_sub(&cum)?.exp()?.unsqueeze(3)?)?;
    let chunk_decay = last.exp()?.unsqueeze(3)?;
    let mut s = match state {
        Some(s) => s.to_dtype(DType::F32)?.reshape((bh, dk, dv))?,
        None => Tensor::zeros((bh, dk, dv), DType::F32, dev)?,
    };
    let at = |x: &Tensor, i: usize| x.narrow(1, i, 1)?.squeeze(1)?.contiguous();
    let mut outs = Vec::with_capacity(n);
    for i in 0..n {
        let v_new = (at(&new_values, i)? - at(&k_cumdecay, i)?.matmul(&s)?)?;
        outs.push((at(&q_decayed, i)?.matmul(&s)? + at(&intra, i)?.matmul(&v_new)?)?);
        let written = at(&k_decayed, i)?.transpose(1, 2)?.contiguous()?.matmul(&v_new)?;
        s = (s.broadcast_mul(&at(&chunk_decay, i)?)? + written)?;
    }
    let out = Tensor::cat(&outs, 1)?.reshape((b, h, n * c, dv))?.narrow(2, 0, t)?;
    Ok((out.transpose(1, 2)?.contiguous()?, s.reshape((b, h, dk, dv))?))
}

/// q, k, v, g and β side by side in one tensor (batch, seq, heads, 2·dk + dv + 2), so one graph node can carry
/// all five gradients (candle's custom ops take at most three inputs).
pub fn pack(x: RuleInputs) -> Result<Tensor> {
    Tensor::cat(&[x.q, x.k, x.v, &x.g.unsqueeze(3)?, &x.beta.unsqueeze(3)?], 3)
}

/// `(I + A)⁻¹` for strictly lower triangular A (…, c, c): with N = −A nilpotent, `Σ Nᵏ = (I + N)(I + N²)(I + N⁴)…`
/// until the power reaches c.
fn unit_lower_inverse(a: &Tensor) -> Result<Tensor> {
    let c = a.dim(D::Minus1)?;
    let n = a.neg()?;
    let mut inverse = n.broadcast_add(&Tensor::eye(c, DType::F32, a.device())?)?;
    let (mut power, mut reached) = (n, 2);
    while reached < c {
        power = power.matmul(&power)?;
        inverse = (&inverse + inverse.matmul(&power)?)?;
        reached *= 2;
    }
    Ok(inverse)
}

/// `x / sqrt(Σ x² + 1e-6)` over the last dimension, as the FLA kernels (and transformers) normalise q and k.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    x.broadcast_div(&(x.sqr()?.sum_keepdim(D::Minus1)? + 1e-6)?.sqrt()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::max_abs_diff;
    use candle_core::{Device, Var};

    fn inputs(t: usize) -> Vec<Tensor> {
        let dev = Device::Cpu;
        let r = |shape: &[usize], seed: u64| crate::fused::tests::randn(shape, seed);
        let (b, h, dk, dv) = (2, 3, 4, 5);
        vec![
            l2_normalize(&r(&[b, t, h, dk], 1)).unwrap(),
            l2_normalize(&r(&[b, t, h, dk], 2)).unwrap(),
            r(&[b, t, h, dv], 3),
            // Log decays in (-1, 0) and write strengths in (0, 1), as the layer makes them.
            (r(&[b, t, h], 4).abs().unwrap().neg().unwrap() * 0.3).unwrap(),
            candle_nn_sigmoid(&r(&[b, t, h], 5)),
            (r(&[b, h, dk, dv], 6) * 0.5).unwrap(),
        ]
        .into_iter()
        .map(|x| x.to_device(&dev).unwrap())
        .collect()
    }

    fn candle_nn_sigmoid(x: &Tensor) -> Tensor {
        (x.neg().unwrap().exp().unwrap() + 1.0).unwrap().recip().unwrap()
    }

    #[test]
    fn chunks_compute_what_the_rule_does_one_position_at_a_time() {
        // `recurrent` is the rule as defined (and what generation steps run); `chunked` must agree with it.
        // Three chunks, the last one partial; from a given state; values and gradients.
        let x = inputs(150);
        let vars: Vec<Var> = x.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let v: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
        let all = RuleInputs {
            q: v[0],
            k: v[1],
            v: v[2],
            g: v[3],
            beta: v[4],
        };
        let (out, state) = chunked(all, Some(v[5])).unwrap();
        let (reference, reference_state) = recurrent(all, Some(v[5])).unwrap();
        let ds = max_abs_diff(&state, &reference_state);
        assert!(ds < 1e-4, "final states differ by {ds}");
        let diff = max_abs_diff(&out, &reference);
        assert!(diff < 1e-4, "outputs differ by {diff}");
        let probe = crate::fused::tests::randn(out.dims(), 9);
        let loss = |o: &Tensor| (o * &probe).unwrap().sum_all().unwrap();
        let (ga, gb) = (loss(&out).backward().unwrap(), loss(&reference).backward().unwrap());
        for (i, var) in vars.iter().enumerate() {
            let (a, b) = (ga.get(var.as_tensor()).unwrap(), gb.get(var.as_tensor()).unwrap());
            let d = max_abs_diff(a, b);
            assert!(d < 1e-3, "input {i}: gradients differ by {d}");
        }
        // The final state carries on: the second half from the first half's state equals the whole.
        let part = |start: usize, len: usize| -> Vec<Tensor> {
            x[..5].iter().map(|t| t.narrow(1, start, len).unwrap()).collect()
        };
        fn rule_of(p: &[Tensor]) -> RuleInputs<'_> {
            RuleInputs {
                q: &p[0],
                k: &p[1],
                v: &p[2],
                g: &p[3],
                beta: &p[4],
            }
        }
        let (first, rest) = (part(0, 70), part(70, 80));
        let (half, s1) = chunked(rule_of(&first), Some(&x[5])).unwrap();
        let (second, s2) = chunked(rule_of(&rest), Some(&s1)).unwrap();
        let joined = Tensor::cat(&[&half, &second], 1).unwrap();
        let (whole, s) = chunked(rule_of(&x[..5]), Some(&x[5])).unwrap();
        let d = max_abs_diff(&joined, &whole);
        let ds = max_abs_diff(&s2, &s);
        assert!(d < 1e-4 && ds < 1e-4, "split runs differ by {d}, states by {ds}");
    }
}
