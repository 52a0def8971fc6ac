//! The gated delta rule of a training forward pass in one op, with a backward pass of its own (see
//! `crate::delta_rule` for the rule and its chunked form, which this computes in the same order). The composite
//! path records some forty candle nodes per layer over (heads, chunks, 64, 64) tensors, keeps each of them for the
//! backward pass, and builds the UT transform's inverse from twelve batched 64 × 64 × 64 products. Here each
//! (batch, head) is one task on one thread: per chunk, its 64 × 64 blocks are made in plain buffers, the inverse by
//! forward substitution (a sixth of one product), and only the state at each chunk's start is kept (dk × dv per
//! chunk, O(seq) per head). The backward pass walks the chunks in reverse, recomputing each chunk's blocks from its
//! inputs and the kept state.
//!
//! Padded positions past the last whole chunk are zeros (no decay, no write), exactly as the composite path pads.

use super::f32s;
use super::gemm::{f32_matmul, Mat, Parallelism};
use crate::delta_rule::CHUNK;
use crate::fastmath::dot;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// The rule's shape: batch, positions, heads, key and value widths.
#[derive(Clone, Copy, Debug)]
struct Dims {
    b: usize,
    t: usize,
    h: usize,
    dk: usize,
    dv: usize,
}

impl Dims {
    /// Values per (position, head) of the packed input: q, k, v, g, β.
    fn width(&self) -> usize {
        2 * self.dk + self.dv + 2
    }

    fn chunks(&self) -> usize {
        self.t.div_ceil(CHUNK)
    }
}

/// The gated delta rule from a zero state over q, k (batch, seq, heads, dk), v (batch, seq, heads, dv), the log
/// decays g and the write strengths beta (batch, seq, heads), all f32 on the CPU; returns the outputs (batch, seq,
/// heads, dv). The same values as `crate::delta_rule::chunked` from no state, in one op.
pub fn gated_delta_rule(q: &Tensor, k: &Tensor, v: &Tensor, g: &Tensor, beta: &Tensor) -> Result<Tensor> {
    let (b, t, h, dk) = q.dims4()?;
    let dv = v.dim(3)?;
    let fits = k.dims4()? == (b, t, h, dk)
        && v.dims4()? == (b, t, h, dv)
        && g.dims3()? == (b, t, h)
        && beta.dims3()? == (b, t, h);
    if !fits {
        bail!(
            "gated_delta_rule: q {:?}, k {:?}, v {:?}, g {:?} and beta {:?} do not fit together",
            q.shape(),
            k.shape(),
            v.shape(),
            g.shape(),
            beta.shape()
        )
    }
    let x = crate::delta_rule::pack(crate::delta_rule::RuleInputs { q, k, v, g, beta })?;
    gated_delta_rule_packed(&x, dk)
}

/// [`gated_delta_rule`] over its inputs already packed (batch, seq, heads, 2·dk + dv + 2), as
/// `crate::delta_rule::pack` or `delta_net_inputs` lay them out.
pub fn gated_delta_rule_packed(x: &Tensor, dk: usize) -> Result<Tensor> {
    let (b, t, h, width) = x.dims4()?;
    let Some(dv) = width.checked_sub(2 * dk + 2).filter(|dv| *dv > 0) else {
        bail!(
            "gated_delta_rule: packed inputs {:?} hold no values for keys {dk} wide",
            x.shape()
        )
    };
    let x = x.contiguous()?;
    let op = DeltaRule {
        dims: Dims { b, t, h, dk, dv },
        keep_states: x.track_op(),
        states: Mutex::new(None),
    };
    x.apply_op1(op)
}

struct DeltaRule {
    dims: Dims,
    /// Whether the backward pass will run: only then are the chunk states kept.
    keep_states: bool,
    /// Per (batch, head), the state at the start of each chunk, from the forward pass.
    states: Mutex<Option<Arc<Vec<Vec<f32>>>>>,
}

impl CustomOp1 for DeltaRule {
    fn name(&self) -> &'static str {
        "fused-gated-delta-rule"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s, l, "delta rule inputs")?;
        let d = self.dims;
        let heads: Vec<(Vec<f32>, Vec<f32>)> = (0..d.b * d.h)
            .into_par_iter()
            .map(|head| head_forward(d, x, head, self.keep_states))
            .collect();
        let mut out = vec![0f32; d.b * d.t * d.h * d.dv];
        let mut states = Vec::with_capacity(heads.len());
        for (head, (rows, kept)) in heads.into_iter().enumerate() {
            for (p, row) in rows.chunks_exact(d.dv).enumerate() {
                let at = row_index(d, head, p) * d.dv;
                out[at..at + d.dv].copy_from_slice(row);
            }
            states.push(kept);
        }
        if self.keep_states {
            *self.states.lock().expect("delta rule states") = Some(Arc::new(states));
        }
        Ok((CpuStorage::F32(out), Shape::from((d.b, d.t, d.h, d.dv))))
    }

    fn bwd(&self, x: &Tensor, _: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        // Taken, not cloned: the states are freed as soon as this layer's gradient is computed.
        let Some(states) = self.states.lock().expect("delta rule states").take() else {
            bail!("gated_delta_rule: backward without the forward pass's chunk states")
        };
        let grad = DeltaRuleGrad {
            dims: self.dims,
            states,
        };
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &grad)?))
    }
}

/// The gradient of the packed input of [`DeltaRule`], laid out as that input.
struct DeltaRuleGrad {
    dims: Dims,
    states: Arc<Vec<Vec<f32>>>,
}

impl CustomOp2 for DeltaRuleGrad {
    fn name(&self) -> &'static str {
        "fused-gated-delta-rule-grad"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ds: &CpuStorage, dl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, dy) = (
            f32s(xs, xl, "delta rule inputs")?,
            f32s(ds, dl, "delta rule output gradient")?,
        );
        let d = self.dims;
        let heads: Vec<Vec<f32>> = (0..d.b * d.h)
            .into_par_iter()
            .map(|head| head_backward(d, x, dy, &self.states[head], head))
            .collect();
        let w = d.width();
        let mut dx = vec![0f32; d.b * d.t * d.h * w];
        for (head, rows) in heads.into_iter().enumerate() {
            for (p, row) in rows.chunks_exact(w).enumerate() {
                let at = row_index(d, head, p) * w;
                dx[at..at + w].copy_from_slice(row);
            }
        }
        Ok((CpuStorage::F32(dx), Shape::from((d.b, d.t, d.h, w))))
    }
}

/// The row of (batch, seq, heads, …) that head `head` (batch · heads + head) reads at position `p`.
fn row_index(d: Dims, head: usize, p: usize) -> usize {
    ((head / d.h) * d.t + p) * d.h + head % d.h
}

/// One chunk's inputs in plain row-major buffers, zero past its last position.
struct ChunkInputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
    beta: Vec<f32>,
    /// Real positions in the chunk (the last chunk may be partial).
    len: usize,
}

impl ChunkInputs {
    fn load(d: Dims, x: &[f32], head: usize, chunk: usize) -> ChunkInputs {
        let (c, w) = (CHUNK, d.width());
        let start = chunk * c;
        let len = c.min(d.t - start);
        let mut inputs = ChunkInputs {
            q: vec![0.0; c * d.dk],
            k: vec![0.0; c * d.dk],
            v: vec![0.0; c * d.dv],
            g: vec![0.0; c],
            beta: vec![0.0; c],
            len,
        };
        for i in 0..len {
            let row = &x[row_index(d, head, start + i) * w..][..w];
            inputs.q[i * d.dk..][..d.dk].copy_from_slice(&row[..d.dk]);
            inputs.k[i * d.dk..][..d.dk].copy_from_slice(&row[d.dk..2 * d.dk]);
            inputs.v[i * d.dv..][..d.dv].copy_from_slice(&row[2 * d.dk..2 * d.dk + d.dv]);
            inputs.g[i] = row[w - 2];
            inputs.beta[i] = row[w - 1];
        }
        inputs
    }
}

/// What a chunk's positions compute among themselves, whatever the state they start from.
struct Within {
    /// exp of the cumulative log decay P, and E = exp(last − cum): how much of each position's write survives.
    p: Vec<f32>,
    e: Vec<f32>,
    /// exp(last): the decay of the incoming state over the whole chunk.
    lambda: f32,
    /// D[i][j] = exp(cum_i − cum_j) for j ≤ i, else 0.
    decay: Vec<f32>,
    /// K·Kᵀ and Q·Kᵀ.
    kk: Vec<f32>,
    qk: Vec<f32>,
    /// The UT transform T = (I + A)⁻¹, A = strictly_lower(diag(β)·K·Kᵀ ⊙ D).
    ut: Vec<f32>,
    /// β ⊙ V and β ⊙ P ⊙ K, what T mixes.
    v_beta: Vec<f32>,
    k_beta_decayed: Vec<f32>,
    /// U = T·(β ⊙ V) and W = T·(β ⊙ P ⊙ K).
    u: Vec<f32>,
    w: Vec<f32>,
    /// M = Q·Kᵀ ⊙ D: the outputs' attention within the chunk.
    m: Vec<f32>,
    /// P ⊙ Q and E ⊙ K.
    q_decayed: Vec<f32>,
    k_surviving: Vec<f32>,
}

impl Within {
    fn new(d: Dims, x: &ChunkInputs) -> Within {
        let c = CHUNK;
        let mut cum = x.g.clone();
        for i in 1..c {
            cum[i] += cum[i - 1];
        }
        let last = cum[c - 1];
        let p: Vec<f32> = cum.iter().map(|v| v.exp()).collect();
        let e: Vec<f32> = cum.iter().map(|v| (last - v).exp()).collect();
        let mut decay = vec![0f32; c * c];
        for i in 0..c {
            for j in 0..=i {
                decay[i * c + j] = (cum[i] - cum[j]).exp();
            }
        }
        let mut kk = vec![0f32; c * c];
        mm(&mut kk, (c, c, d.dk), (&x.k, false), (&x.k, true), false, 1.0);
        let mut qk = vec![0f32; c * c];
        mm(&mut qk, (c, c, d.dk), (&x.q, false), (&x.k, true), false, 1.0);
        let ut = unit_lower_inverse(c, |i, j| x.beta[i] * kk[i * c + j] * decay[i * c + j]);
        let v_beta = scale_rows(&x.v, d.dv, |i| x.beta[i]);
        let k_beta_decayed = scale_rows(&x.k, d.dk, |i| x.beta[i] * p[i]);
        let mut u = vec![0f32; c * d.dv];
        mm(&mut u, (c, d.dv, c), (&ut, false), (&v_beta, false), false, 1.0);
        let mut w = vec![0f32; c * d.dk];
        mm(&mut w, (c, d.dk, c), (&ut, false), (&k_beta_decayed, false), false, 1.0);
        let m: Vec<f32> = qk.iter().zip(&decay).map(|(a, b)| a * b).collect();
        Within {
            q_decayed: scale_rows(&x.q, d.dk, |i| p[i]),
            k_surviving: scale_rows(&x.k, d.dk, |i| e[i]),
            lambda: last.exp(),
            p,
            e,
            decay,
            kk,
            qk,
            ut,
            v_beta,
            k_beta_decayed,
            u,
            w,
            m,
        }
    }

    /// The values the chunk writes, corrected for what the state already holds: `U − W·S`.
    fn new_values(&self, d: Dims, s: &[f32]) -> Vec<f32> {
        let mut vn = self.u.clone();
        mm(&mut vn, (CHUNK, d.dv, d.dk), (&self.w, false), (s, false), true, -1.0);
        vn
    }
}

/// One head's forward pass: its outputs (seq × dv) and, if `keep`, the state at each chunk's start.
fn head_forward(d: Dims, x: &[f32], head: usize, keep: bool) -> (Vec<f32>, Vec<f32>) {
    let (c, state_len) = (CHUNK, d.dk * d.dv);
    let mut out = vec![0f32; d.t * d.dv];
    let mut kept = Vec::with_capacity(if keep { d.chunks() * state_len } else { 0 });
    let mut s = vec![0f32; state_len];
    for chunk in 0..d.chunks() {
        if keep {
            kept.extend_from_slice(&s);
        }
        let inputs = ChunkInputs::load(d, x, head, chunk);
        let within = Within::new(d, &inputs);
        let vn = within.new_values(d, &s);
        // o = (P ⊙ Q)·S + M·vn
        let mut o = vec![0f32; c * d.dv];
        mm(
            &mut o,
            (c, d.dv, d.dk),
            (&within.q_decayed, false),
            (&s, false),
            false,
            1.0,
        );
        mm(&mut o, (c, d.dv, c), (&within.m, false), (&vn, false), true, 1.0);
        out[chunk * c * d.dv..][..inputs.len * d.dv].copy_from_slice(&o[..inputs.len * d.dv]);
        // S ← exp(last)·S + (E ⊙ K)ᵀ·vn
        let mut next = vec![0f32; state_len];
        mm(
            &mut next,
            (d.dk, d.dv, c),
            (&within.k_surviving, true),
            (&vn, false),
            false,
            1.0,
        );
        for (n, s) in next.iter_mut().zip(&s) {
            *n += within.lambda * s;
        }
        s = next;
    }
    (out, kept)
}

/// Gradients of one chunk's inputs, each laid out as [`ChunkInputs`] holds them.
struct ChunkGrads {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
    beta: Vec<f32>,
}

/// One head's backward pass: the gradient of its packed input rows (seq × width), from the output gradient `dy` of
/// the whole op and the chunk states kept by the forward pass.
fn head_backward(d: Dims, x: &[f32], dy: &[f32], states: &[f32], head: usize) -> Vec<f32> {
    let (c, w, state_len) = (CHUNK, d.width(), d.dk * d.dv);
    let mut dx = vec![0f32; d.t * w];
    // The gradient reaching the state after the chunk being worked on (none past the last: nothing reads it).
    let mut ds = vec![0f32; state_len];
    for chunk in (0..d.chunks()).rev() {
        let inputs = ChunkInputs::load(d, x, head, chunk);
        let s = &states[chunk * state_len..][..state_len];
        let mut dout = vec![0f32; c * d.dv];
        for i in 0..inputs.len {
            let at = row_index(d, head, chunk * c + i) * d.dv;
            dout[i * d.dv..][..d.dv].copy_from_slice(&dy[at..at + d.dv]);
        }
        let (grads, ds_before) = chunk_backward(d, &inputs, s, &dout, &ds);
        for i in 0..inputs.len {
            let row = &mut dx[(chunk * c + i) * w..][..w];
            row[..d.dk].copy_from_slice(&grads.q[i * d.dk..][..d.dk]);
            row[d.dk..2 * d.dk].copy_from_slice(&grads.k[i * d.dk..][..d.dk]);
            row[2 * d.dk..2 * d.dk + d.dv].copy_from_slice(&grads.v[i * d.dv..][..d.dv]);
            row[w - 2] = grads.g[i];
            row[w - 1] = grads.beta[i];
        }
        ds = ds_before;
    }
    dx
}

/// One chunk's backward pass from its start state `s`, the gradient of its outputs `dout` and of the state after
/// it `ds`: the gradients of its inputs, and of the state before it.
fn chunk_backward(d: Dims, x: &ChunkInputs, s: &[f32], dout: &[f32], ds: &[f32]) -> (ChunkGrads, Vec<f32>) {
    let (c, dk, dv) = (CHUNK, d.dk, d.dv);
    let f = Within::new(d, x);
    let vn = f.new_values(d, s);
    // Through the outputs o = (P ⊙ Q)·S + M·vn and the next state S' = λ·S + (E ⊙ K)ᵀ·vn.
    let mut dvn = vec![0f32; c * dv];
    mm(&mut dvn, (c, dv, c), (&f.m, true), (dout, false), false, 1.0);
    mm(&mut dvn, (c, dv, dk), (&f.k_surviving, false), (ds, false), true, 1.0);
    let mut ds_before: Vec<f32> = ds.iter().map(|v| f.lambda * v).collect();
    mm(
        &mut ds_before,
        (dk, dv, c),
        (&f.q_decayed, true),
        (dout, false),
        true,
        1.0,
    );
    mm(&mut ds_before, (dk, dv, c), (&f.w, true), (&dvn, false), true, -1.0);
    let mut dq_decayed = vec![0f32; c * dk];
    mm(&mut dq_decayed, (c, dk, dv), (dout, false), (s, true), false, 1.0);
    let mut dm = vec![0f32; c * c];
    mm(&mut dm, (c, c, dv), (dout, false), (&vn, true), false, 1.0);
    let mut dk_surviving = vec![0f32; c * dk];
    mm(&mut dk_surviving, (c, dk, dv), (&vn, false), (ds, true), false, 1.0);
    let mut dlast = f.lambda * dot(s, ds);
    // Through vn = U − W·S, U = T·(β ⊙ V), W = T·(β ⊙ P ⊙ K).
    let mut dw = vec![0f32; c * dk];
    mm(&mut dw, (c, dk, dv), (&dvn, false), (s, true), false, -1.0);
    let mut dut = vec![0f32; c * c];
    mm(&mut dut, (c, c, dv), (&dvn, false), (&f.v_beta, true), false, 1.0);
    mm(&mut dut, (c, c, dk), (&dw, false), (&f.k_beta_decayed, true), true, 1.0);
    let mut dv_beta = vec![0f32; c * dv];
    mm(&mut dv_beta, (c, dv, c), (&f.ut, true), (&dvn, false), false, 1.0);
    let mut dk_beta_decayed = vec![0f32; c * dk];
    mm(
        &mut dk_beta_decayed,
        (c, dk, c),
        (&f.ut, true),
        (&dw, false),
        false,
        1.0,
    );
    // Through T = (I + A)⁻¹: dA = −Tᵀ·dT·Tᵀ, on A's strictly lower part.
    let mut dt_t = vec![0f32; c * c];
    mm(&mut dt_t, (c, c, c), (&dut, false), (&f.ut, true), false, 1.0);
    let mut da = vec![0f32; c * c];
    mm(&mut da, (c, c, c), (&f.ut, true), (&dt_t, false), false, -1.0);
    // A = β_i·KK ⊙ D and M = QK ⊙ D: gradients of KK, QK, β and D.
    let (mut dkk, mut dqk, mut ddecay) = (vec![0f32; c * c], vec![0f32; c * c], vec![0f32; c * c]);
    let mut dbeta = vec![0f32; c];
    for (i, dbeta) in dbeta.iter_mut().enumerate() {
        for j in 0..=i {
            let at = i * c + j;
            let dec = f.decay[at];
            dqk[at] = dm[at] * dec;
            ddecay[at] = dm[at] * f.qk[at];
            if j < i {
                dkk[at] = da[at] * dec * x.beta[i];
                *dbeta += da[at] * dec * f.kk[at];
                ddecay[at] += da[at] * x.beta[i] * f.kk[at];
            }
        }
    }
    let mut dq = vec![0f32; c * dk];
    let mut dkey = vec![0f32; c * dk];
    mm(&mut dq, (c, dk, c), (&dqk, false), (&x.k, false), false, 1.0);
    mm(&mut dkey, (c, dk, c), (&dqk, true), (&x.q, false), false, 1.0);
    mm(&mut dkey, (c, dk, c), (&dkk, false), (&x.k, false), true, 1.0);
    mm(&mut dkey, (c, dk, c), (&dkk, true), (&x.k, false), true, 1.0);
    // The elementwise factors P, E, β and the decays, down to the cumulative log decay.
    let mut dcum = vec![0f32; c];
    let mut dvalue = vec![0f32; c * dv];
    for i in 0..c {
        let (p, e, beta) = (f.p[i], f.e[i], x.beta[i]);
        let row = |w: usize| i * w..(i + 1) * w;
        let (qi, ki, vi) = (&x.q[row(dk)], &x.k[row(dk)], &x.v[row(dv)]);
        let (dqd, dks) = (&dq_decayed[row(dk)], &dk_surviving[row(dk)]);
        let (dkb, dvb) = (&dk_beta_decayed[row(dk)], &dv_beta[row(dv)]);
        for a in 0..dk {
            dq[i * dk + a] += p * dqd[a];
            dkey[i * dk + a] += e * dks[a] + beta * p * dkb[a];
        }
        for a in 0..dv {
            dvalue[i * dv + a] = beta * dvb[a];
        }
        let surviving = e * dot(dks, ki);
        let written = p * dot(dkb, ki);
        dcum[i] += p * dot(dqd, qi) - surviving + beta * written;
        dlast += surviving;
        dbeta[i] += dot(dvb, vi) + written;
    }
    for i in 0..c {
        for j in 0..=i {
            let z = ddecay[i * c + j] * f.decay[i * c + j];
            dcum[i] += z;
            dcum[j] -= z;
        }
    }
    dcum[c - 1] += dlast;
    // cum is the running sum of g: each g reaches every cum from its own position on.
    let mut dg = dcum;
    for i in (0..c - 1).rev() {
        dg[i] += dg[i + 1];
    }
    let grads = ChunkGrads {
        q: dq,
        k: dkey,
        v: dvalue,
        g: dg,
        beta: dbeta,
    };
    (grads, ds_before)
}

/// `(I + A)⁻¹` for the strictly lower triangular A (c × c) whose entry (i, j), j < i, is `a(i, j)`: unit lower
/// triangular, row by row by forward substitution, `T_i = e_i − Σ_{j<i} A_ij·T_j`.
fn unit_lower_inverse(c: usize, a: impl Fn(usize, usize) -> f32) -> Vec<f32> {
    let mut t = vec![0f32; c * c];
    for i in 0..c {
        t[i * c + i] = 1.0;
        for j in 0..i {
            let aij = a(i, j);
            if aij == 0.0 {
                continue;
            }
            let (done, row) = t.split_at_mut(i * c);
            // Row j of T is zero past column j.
            for (dst, src) in row[..=j].iter_mut().zip(&done[j * c..=j * c + j]) {
                *dst -= aij * src;
            }
        }
    }
    t
}

/// Each row i of the row-major `x` (rows of `width`) times `factor(i)`.
fn scale_rows(x: &[f32], width: usize, factor: impl Fn(usize) -> f32) -> Vec<f32> {
    x.chunks_exact(width)
        .enumerate()
        .flat_map(|(i, row)| {
            let f = factor(i);
            row.iter().map(move |v| v * f)
        })
        .collect()
}

/// `dst (m × n) = [dst +] scale · a · b` on row-major buffers, where `a` is m × k (stored k × m if its flag says
/// transposed) and `b` is k × n (stored n × k if transposed). On the calling thread: each head is a task already.
fn mm(
    dst: &mut [f32],
    (m, n, k): (usize, usize, usize),
    (a, a_t): (&[f32], bool),
    (b, b_t): (&[f32], bool),
    accumulate: bool,
    scale: f32,
) {
    assert!(
        dst.len() >= m * n && a.len() >= m * k && b.len() >= k * n,
        "mm: buffers too small"
    );
    let lhs = match a_t {
        false => Mat(a.as_ptr(), k as isize, 1),
        true => Mat(a.as_ptr(), 1, m as isize),
    };
    let rhs = match b_t {
        false => Mat(b.as_ptr(), n as isize, 1),
        true => Mat(b.as_ptr(), 1, k as isize),
    };
    let out = Mat(dst.as_mut_ptr(), n as isize, 1);
    // SAFETY: the assert above bounds every matrix inside its buffer, and `dst` is borrowed mutably.
    unsafe { f32_matmul(Parallelism::None, m, n, k, out, accumulate, lhs, rhs, scale) }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_close, randn, value_and_grads};
    use super::*;
    use crate::delta_rule::{chunked, l2_normalize, RuleInputs};

    /// q, k (normalised), v, g in (−0.6, 0), β in (0, 1), as the layer makes them.
    fn inputs(b: usize, t: usize, h: usize, dk: usize, dv: usize) -> Vec<Tensor> {
        vec![
            l2_normalize(&randn(&[b, t, h, dk], 1)).unwrap(),
            l2_normalize(&randn(&[b, t, h, dk], 2)).unwrap(),
            randn(&[b, t, h, dv], 3),
            (randn(&[b, t, h], 4).abs().unwrap().neg().unwrap() * 0.3).unwrap(),
            ((randn(&[b, t, h], 5).neg().unwrap().exp().unwrap() + 1.0)
                .unwrap()
                .recip()
                .unwrap()),
        ]
    }

    #[test]
    fn matches_the_composite_chunked_rule_in_value_and_gradient() {
        // Three chunks, the last partial; and one short partial chunk; keys wider than values and the reverse.
        for (b, t, h, dk, dv) in [(2, 150, 3, 16, 8), (1, 20, 2, 4, 12)] {
            let x = inputs(b, t, h, dk, dv);
            let probe = randn(&[b, t, h, dv], 9);
            let fused = value_and_grads(&x, &probe, |v| gated_delta_rule(&v[0], &v[1], &v[2], &v[3], &v[4]));
            let composite = value_and_grads(&x, &probe, |v| {
                let all = RuleInputs {
                    q: &v[0],
                    k: &v[1],
                    v: &v[2],
                    g: &v[3],
                    beta: &v[4],
                };
                Ok(chunked(all, None)?.0)
            });
            assert_close(&fused, &composite, 2e-4);
        }
    }

    #[test]
    fn the_inverse_is_exact() {
        let c = 8;
        let a = |i: usize, j: usize| ((i * 7 + j * 3) % 5) as f32 * 0.1 - 0.2;
        let t = unit_lower_inverse(c, a);
        for i in 0..c {
            for j in 0..c {
                // (I + A)·T = I
                let mut v = t[i * c + j];
                for l in 0..i {
                    v += a(i, l) * t[l * c + j];
                }
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-6, "({i}, {j}): {v}");
            }
        }
    }
}
