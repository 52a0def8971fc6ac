//! Differentiable building blocks. candle's fused `rms_norm`, `softmax_last_dim` and `rope` have no backward and
//! would silently cut the gradient, so these are written with primitive ops that do. The frozen linear is a custom
//! op whose backward returns only the input's gradient: a plain matmul would also compute (and keep) a gradient for
//! the frozen weight, doubling the backward cost of every frozen layer above the lowest trainable one.
//!
//! Mixed precision, as torch's autocast does it: matmuls run in the activations' dtype (trainable f32 master
//! weights are cast to it on the way in, so their gradients arrive in f32); norms, rope and softmax compute in f32
//! and hand back the activations' dtype.

use crate::fused;
use crate::node::{attach1, attach2};
use candle_core::backend::BackendStorage;
use candle_core::Result;
#[cfg(test)]
use candle_core::Var;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, D};

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

/// `silu(gate) * up`, the SwiGLU MLP's product: fused on the CPU in f32.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if fused::applies(gate) && up.dtype() == DType::F32 && gate.shape() == up.shape() {
        return fused::swiglu(gate, up);
    }
    gate.silu()? * up
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

/// A linear layer as the freeze plan wants it. A trainable weight is a `Var`'s f32 tensor, cast to the input's
/// dtype for a plain matmul (on the CPU in f32, the one-node [`fused::linear`]); a frozen one is a constant in the compute dtype and, where a graph is being recorded,
/// the input-gradient-only [`FrozenMatmul`]. The bias (if any) is trainable or not on its own.
pub struct Linear {
    pub weight: Tensor,
    pub frozen: bool,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = if !self.frozen && fused::applies(x) && self.weight.dtype() == DType::F32 {
            fused::linear(x, &self.weight)?
        } else if !self.frozen {
            // Rows flattened to one 2-D matmul: a batched one would broadcast the weight, and its backward would
            // compute one weight gradient per batch item and then sum them.
            let (rows, features) = (x.elem_count() / x.dim(D::Minus1)?, x.dim(D::Minus1)?);
            let mut out_shape = x.dims().to_vec();
            *out_shape.last_mut().expect("rank >= 1") = self.weight.dim(0)?;
            x.reshape((rows, features))?
                .matmul(&self.weight.to_dtype(x.dtype())?.t()?)?
                .reshape(out_shape)?
        } else if x.track_op() {
            // FrozenMatmul checks the operands' dtypes itself, on every backend.
            x.contiguous()?.apply_op1(FrozenMatmul {
                weight: self.weight.clone(),
            })?
        } else if fused::applies(x) && self.weight.dtype() == DType::F32 {
            // No graph to record below the lowest trainable layer: a plain matmul is cheapest.
            fused::matmul_no_grad(x, &self.weight, true)?
        } else {
            check_dtypes(x.dtype(), self.weight.dtype())?;
            x.broadcast_matmul(&self.weight.t()?)?
        };
        match &self.bias {
            Some(b) if b.track_op() => y.broadcast_add(&b.to_dtype(y.dtype())?),
            // A frozen bias as an operand of the add would get a full-size gradient kept for the whole pass.
            Some(b) => {
                let value = y.detach().broadcast_add(&b.to_dtype(y.dtype())?)?;
                attach1("frozen-bias", &y, value, Box::new(|_, _, grad| Ok(Some(grad.clone()))))
            }
            None => Ok(y),
        }
    }
}

/// Frozen weights are loaded in the compute dtype; a mismatch is a bug upstream. It is refused here because
/// backends read the operands as the first one's dtype (Metal's matmul silently, giving garbage).
fn check_dtypes(x: DType, weight: DType) -> Result<()> {
    if x != weight {
        candle_core::bail!("frozen linear: activations are {x:?} but the frozen weight is {weight:?}");
    }
    Ok(())
}

/// `x @ weightᵀ` with a backward pass that produces the gradient of `x` only.
struct FrozenMatmul {
    weight: Tensor,
}

/// A matmul as candle's storage backends take it: (batch, m, n, k), both operand layouts and the output shape.
struct MatmulProblem {
    bmnk: (usize, usize, usize, usize),
    lhs: Layout,
    rhs: Layout,
    out: Shape,
}

impl FrozenMatmul {
    /// `x` viewed as (m, k) times the weight (n, k) read transposed.
    fn problem(&self, x: &Layout) -> Result<MatmulProblem> {
        let dims = x.dims();
        let k = *dims.last().expect("rank >= 1");
        let m = dims.iter().rev().skip(1).product::<usize>();
        let (n, wk) = self.weight.dims2()?;
        if wk != k {
            candle_core::bail!("frozen linear: input width {k} but weight is {n}x{wk}");
        }
        let w = self.weight.layout();
        let wt = Layout::new(
            Shape::from((k, n)),
            vec![w.stride()[1], w.stride()[0]],
            w.start_offset(),
        );
        let lhs = Layout::contiguous_with_offset((m, k), x.start_offset());
        let mut out: Vec<usize> = dims[..dims.len() - 1].to_vec();
        out.push(n);
        Ok(MatmulProblem {
            bmnk: (1, m, n, k),
            lhs,
            rhs: wt,
            out: Shape::from(out),
        })
    }
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let p = self.problem(layout)?;
        check_dtypes(storage.dtype(), self.weight.dtype())?;
        let (w, wl) = self.weight.storage_and_layout();
        let candle_core::Storage::Cpu(w) = &*w else {
            candle_core::bail!("frozen weight is not on the CPU")
        };
        // f32 with both operands contiguous: one matmul on the faster backend for the shape (fused::gemm).
        if let (CpuStorage::F32(xs), CpuStorage::F32(ws), Some((xa, xb)), Some((wa, wb)), true) = (
            storage,
            w,
            layout.contiguous_offsets(),
            wl.contiguous_offsets(),
            fused::enabled(),
        ) {
            let (_, m, n, k) = p.bmnk;
            let out = fused::rows_times_weight_t(&xs[xa..xb], &ws[wa..wb], m, n, k)?;
            return Ok((CpuStorage::F32(out), p.out));
        }
        Ok((storage.matmul(w, p.bmnk, &p.lhs, &p.rhs)?, p.out))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let p = self.problem(layout)?;
        check_dtypes(storage.dtype(), self.weight.dtype())?;
        let (w, _) = self.weight.storage_and_layout();
        let candle_core::Storage::Cuda(w) = &*w else {
            candle_core::bail!("frozen weight is not on the GPU")
        };
        Ok((storage.matmul(w, p.bmnk, &p.lhs, &p.rhs)?, p.out))
    }

    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        storage: &candle_core::MetalStorage,
        layout: &Layout,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        let p = self.problem(layout)?;
        check_dtypes(storage.dtype(), self.weight.dtype())?;
        let (w, _) = self.weight.storage_and_layout();
        let candle_core::Storage::Metal(w) = &*w else {
            candle_core::bail!("frozen weight is not on the GPU")
        };
        Ok((storage.matmul(w, p.bmnk, &p.lhs, &p.rhs)?, p.out))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        check_dtypes(grad_res.dtype(), self.weight.dtype())?;
        if fused::applies(grad_res) {
            return Ok(Some(fused::matmul_no_grad(grad_res, &self.weight, false)?));
        }
        Ok(Some(grad_res.broadcast_matmul(&self.weight)?))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::Device;

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
    fn frozen_linear_matches_matmul_and_only_differentiates_the_input() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, 5), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1., (4, 5), &dev).unwrap();
        let frozen = Linear {
            weight: w.clone(),
            frozen: true,
            bias: None,
        };
        let y = frozen.forward(x.as_tensor()).unwrap();
        let wt = w.t().unwrap();
        let reference = x.as_tensor().broadcast_matmul(&wt).unwrap();
        close(&y, &reference, 1e-5);
        let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = reference.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        close(g.get(x.as_tensor()).unwrap(), g_ref.get(x.as_tensor()).unwrap(), 1e-4);
        assert!(
            g_ref.get(&wt).is_some(),
            "a plain matmul computes a gradient for the weight"
        );
        let weight_shaped = g
            .get_ids()
            .filter_map(|id| g.get_id(*id))
            .filter(|t| t.dims().len() == 2)
            .count();
        assert_eq!(
            weight_shaped, 0,
            "the frozen linear computes no gradient for its weight"
        );
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
    fn frozen_linear_refuses_a_weight_of_another_dtype_and_casts_trainable_ones() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 5), &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let w = Tensor::randn(0f32, 1., (4, 5), &dev).unwrap();
        let frozen = Linear {
            weight: w.clone(),
            frozen: true,
            bias: None,
        };
        let err = frozen.forward(&x).unwrap_err().to_string();
        assert!(err.contains("BF16") && err.contains("F32"), "{err}");
        let master = Var::from_tensor(&w).unwrap();
        let trainable = Linear {
            weight: master.as_tensor().clone(),
            frozen: false,
            bias: None,
        };
        let y = trainable.forward(&x).unwrap();
        assert_eq!(y.dtype(), DType::BF16);
        let g = y.to_dtype(DType::F32).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(
            g.get(master.as_tensor()).unwrap().dtype(),
            DType::F32,
            "master gradients arrive in f32"
        );
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
