//! A decoder layer's whole gated-MLP half as one op: `y = x + m · post(down(act(gate(n)) · up(n)))`, with
//! `n = x / rms(x) · (w + offset)`, act SiLU or GELU-tanh, and `post` Gemma's post-feedforward RMSNorm where the
//! layer has one (else nothing). As separate ops it records six nodes (norm, gate, up, SwiGLU, down, residual
//! add); candle's backward pass then gives each node's inputs a zero-filled activation-sized gradient and adds into
//! it, and the graph keeps the norm's output, both projections and their product. Here the forward pass keeps only
//! the gate and up projections (one rows × 2·intermediate buffer) and each row's 1/rms; the backward pass
//! recomputes the norm and the product from them and writes each gradient once.
//!
//! The trainable weights' gradients reach candle's gradient store as `wiring.rs` lays out (the op's own operands,
//! then a chain of taps).

use super::gelu::GluActivation;
use super::gemm::{matmul_fastest, matmul_on, matmul_scaled, parallelism, written, Mat, Shared};
use super::pre_norm::{
    gradient_through_post, normed, renormed, residual_through_post, rms_norm_backward, PostNormInput,
};
use super::wiring::{block_backward, wire, BlockGrads, Handoff, Wired};
use super::{f32s, rows_per_task, with_values};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

/// The weights of an MLP half, f32 on the CPU, contiguous. Each gets a gradient when it is part of the graph (a
/// `Var`'s tensor).
#[derive(Clone)]
pub struct MlpWeights {
    /// The pre-MLP RMSNorm's weight (hidden).
    pub norm: Tensor,
    pub gate_up: GateUpWeights,
    /// (hidden, intermediate).
    pub down: Tensor,
    /// Added to the norm's weight (1 for the `(1 + w)` norms).
    pub norm_offset: f32,
    pub eps: f32,
    /// The factor on the MLP's output before the residual add (Granite's `residual_multiplier`).
    pub residual_scale: f32,
    pub activation: GluActivation,
    /// The RMSNorm on down's output before the residual add (Gemma's `post_feedforward_layernorm`), with the same
    /// offset and epsilon as the pre-norm.
    pub post_norm: Option<Tensor>,
}

#[derive(Clone)]
pub enum GateUpWeights {
    /// gate and up, each (intermediate, hidden).
    Separate(Tensor, Tensor),
    /// (2 · intermediate, hidden): gate rows, then up rows.
    Fused(Tensor),
}

impl MlpWeights {
    /// Every weight, in a fixed order: norm, gate (or gate_up), up (separate only), down, the post-norm (if any).
    fn all(&self) -> Vec<Tensor> {
        let mut all = vec![self.norm.clone()];
        match &self.gate_up {
            GateUpWeights::Separate(g, u) => all.extend([g.clone(), u.clone()]),
            GateUpWeights::Fused(gu) => all.push(gu.clone()),
        }
        all.push(self.down.clone());
        all.extend(self.post_norm.clone());
        all
    }

    /// Where down is in [`MlpWeights::all`].
    fn down_index(&self) -> usize {
        match self.gate_up {
            GateUpWeights::Separate(..) => 3,
            GateUpWeights::Fused(_) => 2,
        }
    }
}

/// `x + m · down(silu(gate(n)) · up(n))` over x (…, hidden), as one op with its own backward pass.
pub fn mlp_block(x: &Tensor, weights: &MlpWeights) -> Result<Tensor> {
    let x = x.contiguous()?;
    let dims = check_shapes(&x, weights)?;
    let Wired {
        input,
        operands: (a, b),
        handoff,
    } = wire(&x, &weights.all())?;
    let block = Block {
        weights: weights.clone(),
        dims,
        handoff,
        saved: Mutex::new(None),
    };
    input.apply_op3(&a, &b, block)
}

#[derive(Clone, Copy)]
struct Dims {
    rows: usize,
    hidden: usize,
    inter: usize,
}

fn check_shapes(x: &Tensor, w: &MlpWeights) -> Result<Dims> {
    let hidden = x.dim(candle_core::D::Minus1)?;
    let (h2, inter) = w.down.dims2()?;
    let gate_up_ok = match &w.gate_up {
        GateUpWeights::Separate(g, u) => g.dims2()? == (inter, hidden) && u.dims2()? == (inter, hidden),
        GateUpWeights::Fused(gu) => gu.dims2()? == (2 * inter, hidden),
    };
    let post_ok = match &w.post_norm {
        Some(p) => p.dims1()? == hidden,
        None => true,
    };
    if w.norm.dims1()? != hidden || h2 != hidden || !gate_up_ok || !post_ok {
        bail!("mlp_block: weights do not fit an input of {:?}", x.shape())
    }
    Ok(Dims {
        rows: x.elem_count() / hidden,
        hidden,
        inter,
    })
}

/// What the forward pass keeps for the backward pass.
struct Saved {
    /// Per row, the gate projection then the up projection (rows × 2·intermediate).
    gate_up: Vec<f32>,
    /// Per row, 1/rms.
    inv_rms: Vec<f32>,
    /// With a post-norm: down's output (rows × hidden) and its rows' 1/rms.
    down_out: Option<PostNormInput>,
}

struct Block {
    weights: MlpWeights,
    dims: Dims,
    handoff: Handoff,
    /// Kept by the forward pass only when a backward pass will run.
    saved: Mutex<Option<Saved>>,
}

impl CustomOp3 for Block {
    fn name(&self) -> &'static str {
        "fused-mlp-block"
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
        let x = f32s(xs, xl, "mlp input")?;
        let all = self.weights.all();
        let (out, saved) = with_values(&all.iter().collect::<Vec<_>>(), |w| Ok(self.forward(x, w)))?;
        if self.handoff.backward_runs() {
            *self.saved.lock().expect("mlp state") = Some(saved);
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
        // Taken, not cloned: the projections are freed as soon as this layer's gradient is computed.
        let Some(saved) = self.saved.lock().expect("mlp state").take() else {
            bail!("mlp_block: backward without the forward pass's projections")
        };
        let all = self.weights.all();
        block_backward(&self.handoff, &all, x, dy, |x, dy, w| self.backward(x, dy, saved, w))
    }
}

impl Block {
    /// `weights` in [`MlpWeights::all`]'s order. Returns the output and what the backward pass needs.
    fn forward(&self, x: &[f32], weights: &[&[f32]]) -> (Vec<f32>, Saved) {
        let Dims { rows, hidden, inter } = self.dims;
        let (inv_rms, normed_x) = normed(x, weights[0], self.weights.norm_offset, self.weights.eps);
        let gate_up = self.gate_up(&normed_x, weights);
        drop(normed_x);
        let product = glu_rows(&gate_up, inter, self.weights.activation);
        let down = weights[self.weights.down_index()];
        let m = self.weights.residual_scale;
        // SAFETY (both products): out / d are rows × hidden, product rows × inter, down (hidden, inter) read
        // transposed; all contiguous.
        let project = |out: *mut f32, accumulate: bool, scale: f32| unsafe {
            matmul_scaled(
                parallelism(rows, hidden, inter),
                rows,
                hidden,
                inter,
                Mat(out, hidden as isize, 1),
                accumulate,
                Mat(product.as_ptr(), inter as isize, 1),
                Mat(down.as_ptr(), 1, inter as isize),
                scale,
            )
        };
        let post = self
            .weights
            .post_norm
            .as_ref()
            .map(|_| weights[self.weights.down_index() + 1]);
        let factors = (self.weights.norm_offset, self.weights.eps, m);
        // SAFETY: `project` writes (or adds into) rows × hidden values, x's length.
        let (out, down_out) = unsafe { residual_through_post(x, post, factors, project) };
        let saved = Saved {
            gate_up,
            inv_rms,
            down_out,
        };
        (out, saved)
    }

    /// The gate and up projections of the normed rows, side by side in each row (rows × 2·intermediate).
    fn gate_up(&self, normed: &[f32], weights: &[&[f32]]) -> Vec<f32> {
        let Dims { rows, hidden, inter } = self.dims;
        let (hi, two) = (hidden as isize, 2 * inter as isize);
        let lhs = Mat(normed.as_ptr(), hi, 1);
        // SAFETY: the projections overwrite every value of the rows × 2·inter buffer; weights as `check_shapes`.
        unsafe {
            written(rows * 2 * inter, |out| match &self.weights.gate_up {
                GateUpWeights::Fused(_) => {
                    let w = Mat(weights[1].as_ptr(), 1, hi);
                    matmul_fastest(
                        parallelism(rows, 2 * inter, hidden),
                        rows,
                        2 * inter,
                        hidden,
                        Mat(out, two, 1),
                        lhs,
                        w,
                    )
                }
                GateUpWeights::Separate(..) => {
                    let par = parallelism(rows, inter, hidden);
                    let (g, u) = (Mat(weights[1].as_ptr(), 1, hi), Mat(weights[2].as_ptr(), 1, hi));
                    matmul_on(par, rows, inter, hidden, Mat(out, two, 1), false, lhs, g);
                    matmul_on(par, rows, inter, hidden, Mat(out.add(inter), two, 1), false, lhs, u);
                }
            })
        }
    }

    /// The input's gradient (when it wants one) and each trainable weight's, in [`MlpWeights::all`]'s order.
    fn backward(&self, x: &[f32], dy: &[f32], saved: Saved, weights: &[&[f32]]) -> BlockGrads {
        let Dims { rows, hidden, inter } = self.dims;
        let (hi, ii, two) = (hidden as isize, inter as isize, 2 * inter as isize);
        let last = self.weights.down_index();
        let mut grads: Vec<Option<Vec<f32>>> = vec![None; weights.len()];
        let Saved {
            mut gate_up,
            inv_rms,
            down_out,
        } = saved;
        // The gradient reaching down's output, and the factor it takes.
        let post = self.weights.post_norm.as_ref().map(|_| weights[last + 1]);
        let factors = (self.weights.norm_offset, self.weights.residual_scale);
        let (dy_down, m, dpost) = gradient_through_post(dy, down_out, post, factors);
        if let Some(dpost) = dpost.filter(|_| self.handoff.trainable[last + 1]) {
            grads[last + 1] = Some(dpost);
        }
        let dy_down: &[f32] = &dy_down;
        // d(product) = m · dy · down (rows × inter).
        // SAFETY (each product below): shapes as `check_shapes` checked, every buffer contiguous and this call's.
        let dproduct = unsafe {
            written(rows * inter, |out| {
                let par = parallelism(rows, inter, hidden);
                let down = Mat(weights[last].as_ptr(), ii, 1);
                matmul_scaled(
                    par,
                    rows,
                    inter,
                    hidden,
                    Mat(out, ii, 1),
                    false,
                    Mat(dy_down.as_ptr(), hi, 1),
                    down,
                    m,
                );
            })
        };
        // The product itself (for down's gradient), and gate_up turned in place into its gradient.
        let activation = self.weights.activation;
        let product = glu_backward_rows(&mut gate_up, &dproduct, inter, activation, self.handoff.trainable[last]);
        drop(dproduct);
        if let Some(product) = product {
            grads[last] = Some(unsafe {
                written(hidden * inter, |out| {
                    let par = parallelism(hidden, inter, rows);
                    let lhs = Mat(dy_down.as_ptr(), 1, hi);
                    matmul_scaled(
                        par,
                        hidden,
                        inter,
                        rows,
                        Mat(out, ii, 1),
                        false,
                        lhs,
                        Mat(product.as_ptr(), ii, 1),
                        m,
                    );
                })
            });
        }
        let projections = 1..last;
        if projections.clone().any(|i| self.handoff.trainable[i]) {
            let normed = renormed(x, &inv_rms, weights[0], self.weights.norm_offset);
            let rhs = Mat(normed.as_ptr(), hi, 1);
            let fused = matches!(self.weights.gate_up, GateUpWeights::Fused(_));
            for i in projections.clone().filter(|&i| self.handoff.trainable[i]) {
                // Fused: all 2·inter columns; separate: gate's columns, then up's.
                let (n, start) = if fused {
                    (2 * inter, 0)
                } else {
                    (inter, (i - 1) * inter)
                };
                grads[i] = Some(unsafe {
                    written(n * hidden, |out| {
                        let lhs = Mat(gate_up.as_ptr().add(start), 1, two);
                        matmul_fastest(parallelism(n, hidden, rows), n, hidden, rows, Mat(out, hi, 1), lhs, rhs);
                    })
                });
            }
        }
        let norm_grad = self.handoff.trainable[0];
        if !self.handoff.input_grad && !norm_grad {
            return (None, grads);
        }
        // d(normed) = d(gate_up) · [gate; up] (rows × hidden).
        let dnormed = unsafe {
            written(rows * hidden, |out| {
                let par = parallelism(rows, hidden, inter);
                for (j, i) in projections.clone().enumerate() {
                    let k = if projections.len() == 1 { 2 * inter } else { inter };
                    let lhs = Mat(gate_up.as_ptr().add(j * inter), two, 1);
                    matmul_on(
                        par,
                        rows,
                        hidden,
                        k,
                        Mat(out, hi, 1),
                        j > 0,
                        lhs,
                        Mat(weights[i].as_ptr(), hi, 1),
                    );
                }
            })
        };
        drop(gate_up);
        let (dx, dnorm) = rms_norm_backward(x, &dnormed, &inv_rms, weights[0], self.weights.norm_offset, Some(dy));
        if norm_grad {
            grads[0] = Some(dnorm);
        }
        (self.handoff.input_grad.then_some(dx), grads)
    }
}

/// `act(gate) · up` per row of `[gate | up]` (rows × 2·inter) into rows × inter.
fn glu_rows(gate_up: &[f32], inter: usize, activation: GluActivation) -> Vec<f32> {
    let mut out = vec![0f32; gate_up.len() / 2];
    out.par_chunks_mut(inter)
        .zip(gate_up.par_chunks(2 * inter))
        .for_each(|(o, gu)| {
            let (g, u) = gu.split_at(inter);
            activation.gates(g, o);
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o *= g * u;
            }
        });
    out
}

/// Turns `[gate | up]` rows, in place, into their gradients from `d(product)` (`GluActivation::grads`). Returns
/// the product `act(g)·u` too when `want_product`.
fn glu_backward_rows(
    gate_up: &mut [f32],
    dproduct: &[f32],
    inter: usize,
    activation: GluActivation,
    want_product: bool,
) -> Option<Vec<f32>> {
    let mut product = vec![0f32; if want_product { dproduct.len() } else { 0 }];
    let product_at = Shared(product.as_mut_ptr());
    let rows = rows_per_task(dproduct.len() / inter);
    gate_up
        .par_chunks_mut(rows * 2 * inter)
        .zip(dproduct.par_chunks(rows * inter))
        .enumerate()
        .for_each(|(task, (gu, dp))| {
            let mut s = vec![0f32; inter];
            for (r, (gu, dp)) in gu.chunks_mut(2 * inter).zip(dp.chunks(inter)).enumerate() {
                let (g, u) = gu.split_at_mut(inter);
                activation.gates(g, &mut s);
                if want_product {
                    // SAFETY: row `task · rows + r` of the product is this task's alone, inside the buffer.
                    let prod =
                        unsafe { std::slice::from_raw_parts_mut(product_at.at((task * rows + r) * inter), inter) };
                    for j in 0..inter {
                        prod[j] = g[j] * s[j] * u[j];
                    }
                }
                for j in 0..inter {
                    (g[j], u[j]) = activation.grads(g[j], u[j], s[j], dp[j]);
                }
            }
        });
    want_product.then_some(product)
}

#[cfg(test)]
mod tests {
    use super::super::tests::randn;
    use super::*;
    use crate::ops::tests::max_abs_diff;
    use candle_core::{Var, D};

    /// The same MLP half from candle's plain ops.
    fn composite(x: &Tensor, w: &MlpWeights) -> Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let n = x
            .broadcast_div(&(ms + w.eps as f64)?.sqrt()?)?
            .broadcast_mul(&(&w.norm + w.norm_offset as f64)?)?;
        let (gate, up) = match &w.gate_up {
            GateUpWeights::Separate(g, u) => (g.clone(), u.clone()),
            GateUpWeights::Fused(gu) => {
                let i = gu.dim(0)? / 2;
                (gu.narrow(0, 0, i)?, gu.narrow(0, i, i)?)
            }
        };
        let proj = |w: &Tensor| n.broadcast_matmul(&w.t()?);
        let act = match w.activation {
            GluActivation::Silu => proj(&gate)?.silu()?,
            GluActivation::GeluTanh => proj(&gate)?.gelu()?,
        };
        let product = (act * proj(&up)?)?;
        let d = product.broadcast_matmul(&w.down.t()?)?;
        let d = match &w.post_norm {
            Some(p) => {
                let ms = d.sqr()?.mean_keepdim(D::Minus1)?;
                d.broadcast_div(&(ms + w.eps as f64)?.sqrt()?)?
                    .broadcast_mul(&(p + w.norm_offset as f64)?)?
            }
            None => d,
        };
        x + (d * w.residual_scale as f64)?
    }

    /// The block's kind: its activation, and whether it has a post-norm.
    type Kind = (GluActivation, bool);

    /// Value, then the gradient of each input in `train` (x, norm, gate, up, down, post-norm), of `f` against
    /// `probe`; asserts that no gradient exists for the others.
    /// (candle's own add also differentiates a constant operand, so `strict` only for the fused op.)
    fn run(
        fused_gate_up: bool,
        train: [bool; 6],
        (activation, post): Kind,
        strict: bool,
        f: impl Fn(&Tensor, &MlpWeights) -> Result<Tensor>,
    ) -> Vec<Tensor> {
        let (h, i) = (24, 40);
        let raw = [
            randn(&[2, 5, h], 1),
            (randn(&[h], 2) * 0.3).unwrap(),
            (randn(&[i, h], 3) * 0.2).unwrap(),
            (randn(&[i, h], 4) * 0.2).unwrap(),
            (randn(&[h, i], 5) * 0.2).unwrap(),
            (randn(&[h], 7) * 0.3).unwrap(),
        ];
        let mut inputs: Vec<Tensor> = raw.to_vec();
        if fused_gate_up {
            inputs[2] = Tensor::cat(&[&raw[2], &raw[3]], 0).unwrap();
        }
        let vars: Vec<Option<Var>> = (0..6)
            .map(|k| {
                let absent = (fused_gate_up && k == 3) || (!post && k == 5);
                (train[k] && !absent).then(|| Var::from_tensor(&inputs[k]).unwrap())
            })
            .collect();
        let t = |k: usize| vars[k].as_ref().map_or(inputs[k].clone(), |v| v.as_tensor().clone());
        let weights = MlpWeights {
            norm: t(1),
            gate_up: if fused_gate_up {
                GateUpWeights::Fused(t(2))
            } else {
                GateUpWeights::Separate(t(2), t(3))
            },
            down: t(4),
            norm_offset: 1.0,
            eps: 1e-6,
            residual_scale: 0.5,
            activation,
            post_norm: post.then(|| t(5)),
        };
        let y = f(&t(0), &weights).unwrap();
        let probe = randn(y.dims(), 6);
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
        // Input only (a frozen layer above a trained one), one or two weights (no tap), three or four (a tap), and
        // a lowest trained layer whose input wants no gradient.
        // The post-norm (last) trains alone, with others, or not at all.
        let sets = [
            [true, false, false, false, false, false],
            [true, false, false, false, true, false],
            [false, false, true, true, false, false],
            [true, true, true, false, true, false],
            [true, true, true, true, true, true],
            [false, true, true, true, true, true],
            [false, false, false, false, false, true],
            [true, false, false, false, true, true],
        ];
        let kinds = [
            (GluActivation::Silu, false),
            (GluActivation::GeluTanh, false),
            (GluActivation::GeluTanh, true),
            (GluActivation::Silu, true),
        ];
        for kind in kinds {
            for fused_gate_up in [false, true] {
                for train in sets {
                    let fused = run(fused_gate_up, train, kind, true, mlp_block);
                    let reference = run(fused_gate_up, train, kind, false, composite);
                    assert_eq!(fused.len(), reference.len());
                    for (k, (a, b)) in fused.iter().zip(&reference).enumerate() {
                        let d = max_abs_diff(a, b);
                        assert!(
                            d < 1e-4,
                            "{kind:?} {train:?} fused gate_up {fused_gate_up}: output {k} differs by {d}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn weights_that_do_not_fit_are_refused() {
        let x = randn(&[3, 8], 1);
        let w = MlpWeights {
            norm: randn(&[8], 2),
            gate_up: GateUpWeights::Separate(randn(&[6, 8], 3), randn(&[6, 7], 4)),
            down: randn(&[8, 6], 5),
            norm_offset: 0.0,
            eps: 1e-6,
            residual_scale: 1.0,
            activation: GluActivation::Silu,
            post_norm: None,
        };
        let err = mlp_block(&x, &w).unwrap_err();
        assert!(err.to_string().contains("do not fit"), "{err}");
    }
}
