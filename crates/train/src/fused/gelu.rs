//! Gated linear units (SwiGLU, and GELU-tanh gating an up projection: Gemma's MLPs) and GELU's tanh approximation
//! alone (Gemma 4's per-layer branch) on the CPU, each one op with its own backward pass. As candle's `gelu` it was a scalar `tanhf` per value forward and,
//! backward, `powf` cubes and squares, another `tanhf` and about ten activation-sized temporaries: 18% of a Gemma 4
//! step in libm alone (`perf`, a 77M Gemma-4-E shape). Here it is `x · σ(2·√(2/π)·(x + 0.044715·x³))`, the same
//! function in the vectorised sigmoid SwiGLU uses, and its derivative in one pass.

use super::{elements_per_task, f32s, split_pair, swiglu_grads};
use crate::fastmath::{exp_in_place, sigmoid_into};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// √(2/π) and the cubic's coefficient of GELU's tanh approximation.
const GELU_C: f32 = 0.797_884_6;
const GELU_A: f32 = 0.044_715;

/// `σ(2·√(2/π)·(x + 0.044715·x³))` of each `x`, into `s` (the sigmoid's vectorised exp, in place).
fn gelu_gates(x: &[f32], s: &mut [f32]) {
    for (o, &v) in s.iter_mut().zip(x) {
        *o = -2.0 * GELU_C * (v + GELU_A * v * v * v);
    }
    exp_in_place(s);
    for o in s.iter_mut() {
        *o = 1.0 / (1.0 + *o);
    }
}

/// d(x·s)/dx with s = σ(u(x)): s + x·s·(1 − s)·u'(x), u'(x) = 2·√(2/π)·(1 + 3·0.044715·x²).
#[inline]
fn gelu_slope(x: f32, s: f32) -> f32 {
    s + x * s * (1.0 - s) * 2.0 * GELU_C * (1.0 + 3.0 * GELU_A * x * x)
}

/// What turns the gate projection into the up projection's factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GluActivation {
    /// `silu(g) = g · σ(g)`.
    Silu,
    /// GELU's tanh approximation, `g · σ(2·√(2/π)·(g + 0.044715·g³))`.
    GeluTanh,
}

impl GluActivation {
    /// The sigmoid factor `s` of `act(g) = g · s` for each gate value.
    pub(super) fn gates(self, g: &[f32], s: &mut [f32]) {
        match self {
            GluActivation::Silu => sigmoid_into(g, s),
            GluActivation::GeluTanh => gelu_gates(g, s),
        }
    }

    /// The gradients of gate and up of `act(g) · u` from the product's gradient `dp`, given `s`.
    #[inline]
    pub(super) fn grads(self, g: f32, u: f32, s: f32, dp: f32) -> (f32, f32) {
        match self {
            GluActivation::Silu => swiglu_grads(g, u, s, dp),
            GluActivation::GeluTanh => (dp * u * gelu_slope(g, s), dp * g * s),
        }
    }
}

/// `act(gate) · up`, elementwise, f32 on the CPU.
pub fn glu(gate: &Tensor, up: &Tensor, activation: GluActivation) -> Result<Tensor> {
    if gate.shape() != up.shape() {
        bail!(
            "{activation:?} GLU: gate {:?} and up {:?} differ",
            gate.shape(),
            up.shape()
        )
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, Glu(activation))
}

/// `gelu_tanh(gate) · up`, elementwise, f32 on the CPU.
pub fn geglu_tanh(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    glu(gate, up, GluActivation::GeluTanh)
}

/// `gelu_tanh(x)`, elementwise, f32 on the CPU.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu)
}

struct Glu(GluActivation);

impl CustomOp2 for Glu {
    fn name(&self) -> &'static str {
        "fused-glu"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, us: &CpuStorage, ul: &Layout) -> Result<(CpuStorage, Shape)> {
        let (g, u) = (f32s(gs, gl, "gate")?, f32s(us, ul, "up")?);
        let chunk = elements_per_task(g.len());
        let mut out = vec![0f32; g.len()];
        out.par_chunks_mut(chunk)
            .zip(g.par_chunks(chunk).zip(u.par_chunks(chunk)))
            .for_each(|(o, (g, u))| {
                self.0.gates(g, o);
                for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                    *o *= g * u;
                }
            });
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }

    fn bwd(&self, g: &Tensor, u: &Tensor, _: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        split_pair(g.apply_op3_no_bwd(u, &dy.contiguous()?, &GluGrad(self.0))?, g, u)
    }
}

/// `[dgate, dup]` (`GluActivation::grads`).
struct GluGrad(GluActivation);

impl CustomOp3 for GluGrad {
    fn name(&self) -> &'static str {
        "fused-glu-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, u, dy) = (f32s(gs, gl, "gate")?, f32s(us, ul, "up")?, f32s(ds, dl, "grad")?);
        let n = g.len();
        let chunk = elements_per_task(n);
        let mut out = vec![0f32; 2 * n];
        let (dg, du) = out.split_at_mut(n);
        dg.par_chunks_mut(chunk)
            .zip(du.par_chunks_mut(chunk))
            .zip(g.par_chunks(chunk).zip(u.par_chunks(chunk)).zip(dy.par_chunks(chunk)))
            .for_each(|((dg, du), ((g, u), dy))| {
                self.0.gates(g, du);
                for j in 0..g.len() {
                    (dg[j], du[j]) = self.0.grads(g[j], u[j], du[j], dy[j]);
                }
            });
        Ok((CpuStorage::F32(out), Shape::from(2 * n)))
    }
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "fused-gelu-tanh"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(xs, xl, "gelu input")?;
        let chunk = elements_per_task(x.len());
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(o, x)| {
            gelu_gates(x, o);
            o.iter_mut().zip(x).for_each(|(o, &x)| *o *= x);
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &GeluGrad)?))
    }
}

/// dx = dy·gelu'(x).
struct GeluGrad;

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "fused-gelu-tanh-grad"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ds: &CpuStorage, dl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, dy) = (f32s(xs, xl, "gelu input")?, f32s(ds, dl, "grad")?);
        let chunk = elements_per_task(x.len());
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk).zip(dy.par_chunks(chunk)))
            .for_each(|(o, (x, dy))| {
                gelu_gates(x, o);
                for j in 0..x.len() {
                    o[j] = dy[j] * gelu_slope(x[j], o[j]);
                }
            });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::max_abs_diff as max_diff;
    use candle_core::{Device, Var};

    /// Both ops give candle's `gelu` (the tanh form) and its gradients, over values of std 3 (the tails included).
    #[test]
    fn the_ops_match_candles_gelu_forward_and_backward() {
        let dev = Device::Cpu;
        let gate = Var::from_tensor(&Tensor::randn(0f32, 3., (3, 517), &dev).unwrap()).unwrap();
        let up = Var::from_tensor(&Tensor::randn(0f32, 1., (3, 517), &dev).unwrap()).unwrap();
        let weights = Tensor::randn(0f32, 1., (3, 517), &dev).unwrap();
        let want = (gate.as_tensor().gelu().unwrap() * up.as_tensor()).unwrap();
        let got = geglu_tanh(gate.as_tensor(), up.as_tensor()).unwrap();
        assert!(max_diff(&want, &got) < 2e-6, "geglu value");
        let gw = (want * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let gg = (got * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, v) in [("gate", &gate), ("up", &up)] {
            let d = max_diff(gw.get(v.as_tensor()).unwrap(), gg.get(v.as_tensor()).unwrap());
            assert!(d < 2e-5, "geglu d{name}: {d}");
        }
        let want = gate.as_tensor().gelu().unwrap();
        let got = gelu_tanh(gate.as_tensor()).unwrap();
        assert!(max_diff(&want, &got) < 2e-6, "gelu value");
        let gw = (want * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let gg = (got * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let d = max_diff(gw.get(gate.as_tensor()).unwrap(), gg.get(gate.as_tensor()).unwrap());
        assert!(d < 2e-5, "gelu dx: {d}");
    }
}
