//! Differentiable building blocks. candle's fused `rms_norm`, `softmax_last_dim` and `rope` have no backward and
//! would silently cut the gradient, so these are written with primitive ops that do (the linear layer is in
//! linear.rs).
//!
//! Mixed precision, as torch's autocast does it: matmuls run in the activations' dtype (trainable f32 master
//! weights are cast to it on the way in, so their gradients arrive in f32); norms, rope and softmax compute in f32
//! and hand back the activations' dtype.

use crate::fused;
use crate::node::{attach1, attach2};
use candle_core::Result;
#[cfg(test)]
use candle_core::Var;
use candle_core::{DType, Tensor, D};

/// `x / sqrt(mean(x²) + eps) * (weight + offset)`, over the last dimension, computed in f32 (weight included, as
/// gemma does; for f32 activations this equals llama's order) and returned in `x`'s dtype.
pub fn rms_norm_offset(x: &Tensor, weight: &Tensor, offset: f64, eps: f64) -> Result<Tensor> {
    if fused::applies(x) && weight.dtype() == DType::F32 {
        return fused::rms_norm(x, weight, offset as f32, eps as f32);
    }
    let norm = RmsNorm {
        offset,
        eps,
        weight: weight.detach().to_dtype(DType::F32)?,
    };
    let value = norm.forward(&x.detach())?;
    attach2(
        "rms-norm",
        x,
        weight,
        value,
        Box::new(move |x, weight, _, grad| norm.backward(x, weight, grad)),
    )
}

/// The device-generic RMSNorm, as one node: it keeps its input only (candle's composite kept five
/// intermediates, and a full-size gradient for a frozen weight).
struct RmsNorm {
    offset: f64,
    eps: f64,
    /// The weight in f32, without the offset.
    weight: Tensor,
}

impl RmsNorm {
    /// `x` in f32 and `1 / sqrt(mean(x²) + eps)` per row.
    fn stats(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = x.to_dtype(DType::F32)?;
        let inv = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?.recip()?;
        Ok((x, inv))
    }

    fn scale(&self) -> Result<Tensor> {
        if self.offset == 0.0 {
            Ok(self.weight.clone())
        } else {
            self.weight.clone() + self.offset
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (xf, inv) = self.stats(x)?;
        xf.broadcast_mul(&inv)?
            .broadcast_mul(&self.scale()?)?
            .to_dtype(x.dtype())
    }

    /// Gradients of `x` and of the weight, each only if it records a graph.
    fn backward(&self, x: &Tensor, weight: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (xf, inv) = self.stats(&x.detach())?;
        let normed = xf.broadcast_mul(&inv)?;
        let grad = grad.to_dtype(DType::F32)?;
        let dweight = if weight.track_op() {
            let width = normed.dim(D::Minus1)?;
            let rows = normed.elem_count() / width.max(1);
            let dw = (&grad * &normed)?.reshape((rows, width))?.sum(0)?;
            Some(dw.reshape(weight.shape())?.to_dtype(weight.dtype())?)
        } else {
            None
        };
        let dx = if x.track_op() {
            let gn = grad.broadcast_mul(&self.scale()?)?;
            let along = (&gn * &normed)?.mean_keepdim(D::Minus1)?;
            let dx = gn.sub(&normed.broadcast_mul(&along)?)?.broadcast_mul(&inv)?;
            Some(dx.to_dtype(x.dtype())?)
        } else {
            None
        };
        Ok((dx, dweight))
    }
}

/// `x / sqrt(mean(x²) + eps) * weight` (see [`rms_norm_offset`]).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    rms_norm_offset(x, weight, 0.0, eps)
}

/// Softmax over the last dimension; the subtracted maximum is detached (softmax does not depend on it).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// `1 / (1 + exp(-x))` as `(1 + tanh(x / 2)) / 2`: no overflow, and a finite gradient everywhere (the exp form's
/// gradient is inf·0 far below zero).
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    ((x * 0.5)?.tanh()? + 1.0)? * 0.5
}

/// `ln(1 + exp(x))` as `max(x, 0) + ln(1 + exp(-|x|))`, which never overflows.
pub fn softplus(x: &Tensor) -> Result<Tensor> {
    x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

/// `silu(gate) * up`, the SwiGLU MLP's product: fused on the CPU in f32.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if fused::applies(gate) && up.dtype() == DType::F32 && gate.shape() == up.shape() {
        return fused::swiglu(gate, up);
    }
    gate.silu()? * up
}

/// `gelu_tanh(gate) * up` (the fused CPU op for f32 CPU tensors, candle's `gelu` elsewhere).
pub fn geglu_tanh(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if fused::applies(gate) && up.dtype() == DType::F32 && gate.shape() == up.shape() {
        return fused::geglu_tanh(gate, up);
    }
    gate.gelu()? * up
}

/// GELU's tanh approximation (the fused CPU op for an f32 CPU tensor, candle's `gelu` elsewhere).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if fused::applies(x) {
        return fused::gelu_tanh(x);
    }
    x.gelu()
}

/// Rotary embedding on `x` of shape (batch, heads, seq, head_dim) with f32 `cos`/`sin` of shape (seq, head_dim),
/// computed in f32 and returned in `x`'s dtype.
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)?.add(&rotated.broadcast_mul(sin)?)?.to_dtype(dtype)
}

/// Each `width`-wide group of `x`'s last dimension with its even entries first, then its odd ones: an interleaved
/// (GPT-J) rotation of pairs (0, 1), (2, 3), … is the usual rotation of halves after it. The same permutation on
/// queries and keys leaves every score unchanged, so they need not be permuted back.
pub fn evens_then_odds(x: &Tensor, width: usize) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let last = *dims.last().unwrap_or(&0);
    if width == 0 || width % 2 != 0 || last % width != 0 {
        candle_core::bail!("evens_then_odds: groups of {width} do not pair up a last dimension of {last}");
    }
    let mut grouped: Vec<usize> = dims[..dims.len().saturating_sub(1)].to_vec();
    grouped.extend([last / width.max(1), width / 2, 2]);
    let n = grouped.len();
    x.reshape(grouped)?.transpose(n - 2, n - 1)?.reshape(dims)
}

/// A projection (batch, seq, heads, head_dim) split into heads (batch, heads, seq, head_dim), contiguous, and
/// rotated: one fused pass on the CPU in f32; elsewhere one node whose backward is the inverse rotation (it keeps
/// nothing but its input, and gives the cos/sin tables no gradient).
pub fn rope_heads(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if fused::applies(x) {
        return fused::rope_heads(x, cos, sin);
    }
    let value = apply_rope(&x.detach().transpose(1, 2)?.contiguous()?, cos, sin)?;
    let (cos, sin) = (cos.clone(), sin.clone());
    attach1(
        "rope",
        x,
        value,
        Box::new(move |_, _, grad| {
            // The rotation's transpose is the rotation by the opposite angle (both halves share an angle).
            let back = apply_rope(grad, &cos, &sin.neg()?)?;
            Ok(Some(back.transpose(1, 2)?.contiguous()?))
        }),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::Device;

    /// For each named input, the gradient in `got` matches the one in `want` within `tolerance`, or neither has
    /// one and the input is untracked (a frozen input must get none).
    pub(crate) fn assert_same_gradients(
        got: &candle_core::backprop::GradStore,
        want: &candle_core::backprop::GradStore,
        inputs: &[(&str, &Tensor)],
        tolerance: f32,
    ) {
        for &(name, x) in inputs {
            match (got.get(x), want.get(x)) {
                (Some(a), Some(r)) => {
                    let d = max_abs_diff(a, r);
                    assert!(d < tolerance, "{name}: gradients differ by {d}");
                }
                (None, None) => assert!(!x.track_op(), "{name}: no gradient"),
                (a, r) => panic!(
                    "{name}: gradient {} here, {} in the reference",
                    a.is_some(),
                    r.is_some()
                ),
            }
        }
    }

    /// The largest absolute difference of two tensors, compared in f32 (for this crate's unit tests).
    pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let d = max_abs_diff(a, b);
        assert!(d < tol, "max abs diff {d}");
    }

    #[test]
    fn softmax_and_norm_have_gradients_matching_finite_differences() {
        let dev = Device::Cpu;
        let base: Vec<f32> = (0..12).map(|i| ((i * 7 % 5) as f32 - 2.0) * 0.3).collect();
        let w = Tensor::new(&[1.0f32, 0.5, -0.7, 2.0], &dev).unwrap();
        let f = |v: &Tensor| -> Tensor {
            let n = rms_norm(v, &w, 1e-6).unwrap();
            let s = softmax_last_dim(&n).unwrap();
            (s * Tensor::new(&[0.3f32, -1.0, 2.0, 0.1], &dev)
                .unwrap()
                .broadcast_as((3, 4))
                .unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
        };
        let x = Var::from_tensor(&Tensor::from_vec(base.clone(), (3, 4), &dev).unwrap()).unwrap();
        let grads = f(x.as_tensor()).backward().unwrap();
        let analytic: Vec<f32> = grads
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let h = 1e-2f32;
        for i in 0..12 {
            let (mut p, mut m) = (base.clone(), base.clone());
            p[i] += h;
            m[i] -= h;
            let fp = f(&Tensor::from_vec(p, (3, 4), &dev).unwrap())
                .to_scalar::<f32>()
                .unwrap();
            let fm = f(&Tensor::from_vec(m, (3, 4), &dev).unwrap())
                .to_scalar::<f32>()
                .unwrap();
            let numeric = (fp - fm) / (2.0 * h);
            assert!(
                (numeric - analytic[i]).abs() < 2e-3,
                "element {i}: numeric {numeric} vs analytic {}",
                analytic[i]
            );
        }
    }

    #[test]
    fn norm_and_rope_compute_in_f32_and_answer_in_the_input_dtype() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (1, 2, 3, 4), &dev).unwrap();
        let w = Tensor::new(&[1.0f32, 0.5, -0.7, 2.0], &dev).unwrap();
        let cos = Tensor::randn(0f32, 1., (3, 4), &dev).unwrap();
        let sin = Tensor::randn(0f32, 1., (3, 4), &dev).unwrap();
        let xb = x.to_dtype(DType::BF16).unwrap();
        let n = rms_norm(&xb, &w, 1e-6).unwrap();
        assert_eq!(n.dtype(), DType::BF16);
        close(&n.to_dtype(DType::F32).unwrap(), &rms_norm(&x, &w, 1e-6).unwrap(), 3e-2);
        let r = apply_rope(&xb, &cos, &sin).unwrap();
        assert_eq!(r.dtype(), DType::BF16);
        close(
            &r.to_dtype(DType::F32).unwrap(),
            &apply_rope(&x, &cos, &sin).unwrap(),
            5e-2,
        );
    }
}
