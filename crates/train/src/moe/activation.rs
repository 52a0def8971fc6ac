//! How an expert turns its gate and up projections into its down projection's input, forward and backward, as
//! candle ops outside the graph (the expert nodes' own passes).

use crate::config::Activation;
use crate::family::ExpertActivation;
use crate::ops::sigmoid;
use candle_core::{Result, Tensor};

/// √(2/π) and the cubic's coefficient of GELU's tanh approximation.
const GELU_C: f32 = 0.797_884_6;
const GELU_A: f32 = 0.044_715;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum GateActivation {
    /// silu(gate) · up.
    Silu,
    /// gelu_tanh(gate) · up (Gemma 4), as `gate · σ(2·√(2/π)·(gate + 0.044715·gate³))`: the same function as
    /// `0.5 · gate · (1 + tanh(√(2/π)·(gate + 0.044715·gate³)))`, in the sigmoid form the passes share.
    GeluTanh,
    /// gpt-oss: `(clamp(up, −limit, limit) + 1) · g · σ(alpha · g)`, `g = min(gate, limit)`.
    Clamped { alpha: f64, limit: f64 },
}

impl GateActivation {
    /// The activation the table names, or None where it is the family's dense one (`act(gate) · up`) and that is
    /// neither SiLU nor GELU-tanh.
    pub fn of(table: ExpertActivation, family: Activation) -> Option<GateActivation> {
        match table {
            ExpertActivation::Glu => match family {
                Activation::Silu => Some(GateActivation::Silu),
                Activation::GeluTanh => Some(GateActivation::GeluTanh),
                Activation::Gelu => None,
            },
            ExpertActivation::ClampedSwiglu { alpha, limit, .. } => Some(GateActivation::Clamped { alpha, limit }),
        }
    }

    pub fn forward(self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        match self {
            GateActivation::Silu => gate.silu()? * up,
            GateActivation::GeluTanh => gate.gelu()? * up,
            GateActivation::Clamped { alpha, limit } => {
                let g = gate.minimum(limit)?;
                let glu = (&g * sigmoid(&(&g * alpha)?)?)?;
                (up.clamp(-limit, limit)? + 1.0)? * glu
            }
        }
    }

    /// The gradients of gate and up from the output's `grad`. A clamped value passes no gradient; one at the
    /// limit itself does, as PyTorch's clamp has it.
    pub fn backward(self, gate: &Tensor, up: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
        match self {
            GateActivation::Silu => {
                let s = sigmoid(gate)?;
                // silu'(g) = σ(g) · (1 + g · (1 − σ(g))).
                let silu_grad = (&s * ((gate * (1.0 - &s)?)? + 1.0)?)?;
                let d_gate = ((grad * up)? * silu_grad)?;
                let d_up = (grad * (gate * s)?)?;
                Ok((d_gate, d_up))
            }
            GateActivation::GeluTanh => {
                let (c, a) = (GELU_C as f64, GELU_A as f64);
                let cube = (gate.sqr()? * gate)?;
                let s = sigmoid(&((gate + (cube * a)?)? * (2.0 * c))?)?;
                // d(g·σ(u))/dg = σ + g·σ·(1 − σ)·u', u' = 2c·(1 + 3a·g²).
                let du_dg = ((gate.sqr()? * (3.0 * a))? + 1.0)? * (2.0 * c);
                let gelu_grad = (&s + ((gate * (&s * (1.0 - &s)?)?)? * du_dg)?)?;
                let d_gate = ((grad * up)? * gelu_grad)?;
                let d_up = (grad * (gate * s)?)?;
                Ok((d_gate, d_up))
            }
            GateActivation::Clamped { alpha, limit } => {
                let g = gate.minimum(limit)?;
                let s = sigmoid(&(&g * alpha)?)?;
                let glu = (&g * &s)?;
                let below = |x: &Tensor| x.le(limit)?.to_dtype(x.dtype());
                let inside = (up.ge(-limit)?.to_dtype(up.dtype())? * below(up)?)?;
                let d_up = ((grad * &glu)? * inside)?;
                // d(g·σ(αg))/dg = σ + α·g·σ·(1 − σ).
                let glu_grad = (&s + ((&g * alpha)? * (&s * (1.0 - &s)?)?)?)?;
                let d_gate = (((grad * (up.clamp(-limit, limit)? + 1.0)?)? * glu_grad)? * below(gate)?)?;
                Ok((d_gate, d_up))
            }
        }
    }
}

/// One element of the activation over plain f32 values (the CPU expert passes), given `s`, the sigmoid of
/// [`GateActivation::sigmoid_argument`]: the same formulas as the tensor passes above.
impl GateActivation {
    /// What the sigmoid is taken of: the gate, or α · min(gate, limit).
    pub fn sigmoid_argument(self, gate: f32) -> f32 {
        match self {
            GateActivation::Silu => gate,
            GateActivation::GeluTanh => 2.0 * GELU_C * (gate + GELU_A * gate * gate * gate),
            GateActivation::Clamped { alpha, limit } => gate.min(limit as f32) * alpha as f32,
        }
    }

    pub fn value(self, gate: f32, up: f32, s: f32) -> f32 {
        match self {
            GateActivation::Silu | GateActivation::GeluTanh => gate * s * up,
            GateActivation::Clamped { limit, .. } => {
                let l = limit as f32;
                (up.clamp(-l, l) + 1.0) * (gate.min(l) * s)
            }
        }
    }

    /// The gradients of gate and up from the output's `grad`.
    pub fn grads(self, gate: f32, up: f32, s: f32, grad: f32) -> (f32, f32) {
        match self {
            GateActivation::Silu => (grad * up * s * (1.0 + gate * (1.0 - s)), grad * gate * s),
            GateActivation::GeluTanh => {
                let du_dg = 2.0 * GELU_C * (1.0 + 3.0 * GELU_A * gate * gate);
                (grad * up * (s + gate * s * (1.0 - s) * du_dg), grad * gate * s)
            }
            GateActivation::Clamped { alpha, limit } => {
                let (a, l) = (alpha as f32, limit as f32);
                let g = gate.min(l);
                let inside = (-l..=l).contains(&up);
                let d_up = if inside { grad * g * s } else { 0.0 };
                let d_gate = match gate <= l {
                    true => grad * (up.clamp(-l, l) + 1.0) * (s + g * a * (s * (1.0 - s))),
                    false => 0.0,
                };
                (d_gate, d_up)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// SiLU, GELU-tanh, and the clamped SwiGLU with a limit values of std 2 cross.
    const BOTH: [GateActivation; 3] = [
        GateActivation::Silu,
        GateActivation::GeluTanh,
        GateActivation::Clamped {
            alpha: 1.702,
            limit: 1.5,
        },
    ];

    /// The hand-written backward against candle's autograd of the forward, on values that cross both limits.
    #[test]
    fn backward_matches_autograd_on_either_side_of_the_limits() {
        let dev = Device::Cpu;
        for act in BOTH {
            let gate = Var::from_tensor(&(Tensor::randn(0f32, 2.0, (7, 5), &dev).unwrap())).unwrap();
            let up = Var::from_tensor(&(Tensor::randn(0f32, 2.0, (7, 5), &dev).unwrap())).unwrap();
            let grad = Tensor::randn(0f32, 1.0, (7, 5), &dev).unwrap();
            let y = act.forward(gate.as_tensor(), up.as_tensor()).unwrap();
            let auto = (&y * &grad).unwrap().sum_all().unwrap().backward().unwrap();
            let (dg, du) = act.backward(gate.as_tensor(), up.as_tensor(), &grad).unwrap();
            for (got, var) in [(dg, &gate), (du, &up)] {
                let want = auto.get(var.as_tensor()).unwrap();
                let d = crate::ops::tests::max_abs_diff(&got, want);
                assert!(d < 1e-5, "{act:?}: gradient differs by {d}");
            }
            if let GateActivation::Clamped { limit, .. } = act {
                let clamped = gate
                    .as_tensor()
                    .gt(limit)
                    .unwrap()
                    .to_dtype(candle_core::DType::F32)
                    .unwrap();
                let n = clamped.sum_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(n > 0.0, "no gate crosses the limit: the test would not see the clamp");
            }
        }
    }

    /// The plain-value passes give what the tensor passes give, value and gradients, across both limits.
    #[test]
    fn plain_values_match_the_tensor_passes() {
        let dev = Device::Cpu;
        for act in BOTH {
            let gate = Tensor::randn(0f32, 2.0, 64, &dev).unwrap();
            let up = Tensor::randn(0f32, 2.0, 64, &dev).unwrap();
            let grad = Tensor::randn(0f32, 1.0, 64, &dev).unwrap();
            let want_y = act.forward(&gate, &up).unwrap().to_vec1::<f32>().unwrap();
            let (dg, du) = act.backward(&gate, &up, &grad).unwrap();
            let (dg, du) = (dg.to_vec1::<f32>().unwrap(), du.to_vec1::<f32>().unwrap());
            let [g, u, d] = [&gate, &up, &grad].map(|t| t.to_vec1::<f32>().unwrap());
            for i in 0..64 {
                let s = 1.0 / (1.0 + (-act.sigmoid_argument(g[i])).exp());
                let (got_dg, got_du) = act.grads(g[i], u[i], s, d[i]);
                let y = act.value(g[i], u[i], s);
                // Relative to the value's size: products of two std-2 draws reach 10 and more, where 1e-5 is a few
                // f32 roundings (candle's tanh form against the sigmoid form here).
                for (got, want) in [(y, want_y[i]), (got_dg, dg[i]), (got_du, du[i])] {
                    assert!(
                        (got - want).abs() < 1e-5 * (1.0 + want.abs()),
                        "{act:?} at {i}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_clamped_activation_is_gpt_oss_formula() {
        let dev = Device::Cpu;
        let gate = Tensor::new(&[-1.0f32, 0.5, 9.0], &dev).unwrap();
        let up = Tensor::new(&[8.0f32, -0.25, -9.0], &dev).unwrap();
        let act = GateActivation::Clamped {
            alpha: 1.702,
            limit: 7.0,
        };
        let got = act.forward(&gate, &up).unwrap().to_vec1::<f32>().unwrap();
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let want = [
            -(7.0 + 1.0) * sig(-1.702),
            (-0.25 + 1.0) * 0.5 * sig(0.5 * 1.702),
            (-7.0 + 1.0) * 7.0 * sig(7.0 * 1.702),
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
    }
}
