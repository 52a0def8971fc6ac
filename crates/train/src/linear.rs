//! A linear layer as the freeze plan wants it. A trainable weight is a `Var`'s f32 tensor, cast to the input's
//! dtype for a plain matmul (on the CPU in f32, the one-node [`fused::linear`]). A frozen one is a constant in the
//! compute dtype, or a quantized matrix (quant.rs), and where a graph is being recorded it goes through
//! [`FrozenMatmul`], whose backward returns only the input's gradient: a plain matmul would also compute (and keep)
//! a gradient for the frozen weight, doubling the backward cost of every frozen layer above the lowest trainable
//! one. The bias (if any) is trainable or not on its own.

use crate::fp8::Fp8Weight;
use crate::fused;
use crate::node::attach1;
use crate::quant;
use candle_core::backend::BackendStorage;
use candle_core::quantized::QTensor;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};
use std::sync::Arc;

pub struct Linear {
    pub weight: LinearWeight,
    pub bias: Option<Tensor>,
}

#[derive(Clone)]
pub enum LinearWeight {
    /// A `Var`'s f32 master.
    Trainable(Tensor),
    /// A frozen constant in the compute dtype.
    Frozen(Tensor),
    /// A frozen matrix held in a block format, dequantized for each matmul that reads it.
    Quantized(Arc<QTensor>),
    /// A frozen matrix held in the checkpoint's FP8 codes and scales (fp8.rs), rebuilt for each matmul.
    Fp8(Arc<Fp8Weight>),
}

impl LinearWeight {
    pub fn is_trainable(&self) -> bool {
        matches!(self, LinearWeight::Trainable(_))
    }

    /// Rows `ids` (a token embedding lookup) in f32 or the stored dtype; a quantized matrix dequantizes only them.
    pub fn rows(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            LinearWeight::Trainable(w) | LinearWeight::Frozen(w) => w.index_select(ids, 0),
            LinearWeight::Quantized(q) => q.embedding(ids),
            LinearWeight::Fp8(w) => w.matrix(DType::F32)?.index_select(ids, 0),
        }
    }

    /// A dense weight, trainable when it is a `Var`'s tensor.
    pub fn dense(weight: Tensor) -> LinearWeight {
        if weight.is_variable() {
            LinearWeight::Trainable(weight)
        } else {
            LinearWeight::Frozen(weight)
        }
    }
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            LinearWeight::Trainable(w) => trainable_matmul(x, w)?,
            LinearWeight::Frozen(w) => frozen_matmul(x, FrozenWeight::Dense(w.clone()))?,
            LinearWeight::Quantized(q) => frozen_matmul(x, FrozenWeight::Quantized(q.clone()))?,
            LinearWeight::Fp8(w) => frozen_matmul(x, FrozenWeight::Fp8(w.clone()))?,
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

fn trainable_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if fused::applies(x) && w.dtype() == DType::F32 {
        return fused::linear(x, w);
    }
    // Rows flattened to one 2-D matmul: a batched one would broadcast the weight, and its backward would compute
    // one weight gradient per batch item and then sum them.
    let (rows, features) = (x.elem_count() / x.dim(D::Minus1)?, x.dim(D::Minus1)?);
    let mut out_shape = x.dims().to_vec();
    *out_shape.last_mut().expect("rank >= 1") = w.dim(0)?;
    x.reshape((rows, features))?
        .matmul(&w.to_dtype(x.dtype())?.t()?)?
        .reshape(out_shape)
}

fn frozen_matmul(x: &Tensor, weight: FrozenWeight) -> Result<Tensor> {
    if x.track_op() {
        // FrozenMatmul checks the operands' dtypes itself, on every backend.
        return x.contiguous()?.apply_op1(FrozenMatmul { weight });
    }
    // No graph to record below the lowest trainable layer: a plain matmul is cheapest.
    let w = weight.dense(x.dtype())?;
    if fused::applies(x) && w.dtype() == DType::F32 {
        return fused::matmul_no_grad(x, &w, true);
    }
    check_dtypes(x.dtype(), w.dtype())?;
    x.broadcast_matmul(&w.t()?)
}

/// Frozen weights are loaded in the compute dtype; a mismatch is a bug upstream. It is refused here because
/// backends read the operands as the first one's dtype (Metal's matmul silently, giving garbage).
fn check_dtypes(x: DType, weight: DType) -> Result<()> {
    if x != weight {
        candle_core::bail!("frozen linear: activations are {x:?} but the frozen weight is {weight:?}");
    }
    Ok(())
}

/// A frozen weight as a matmul reads it.
#[derive(Clone)]
enum FrozenWeight {
    Dense(Tensor),
    Quantized(Arc<QTensor>),
    Fp8(Arc<Fp8Weight>),
}

impl FrozenWeight {
    /// The weight as a dense (n, k) tensor for activations of `dtype`: a dense weight as it is (its dtype is
    /// checked by the caller), a quantized one dequantized into `dtype` for this one use.
    fn dense(&self, dtype: DType) -> Result<Tensor> {
        match self {
            FrozenWeight::Dense(w) => Ok(w.clone()),
            FrozenWeight::Quantized(q) => quant::dequantize(q, dtype),
            FrozenWeight::Fp8(w) => w.matrix(dtype),
        }
    }

    fn dims(&self) -> Result<(usize, usize)> {
        match self {
            FrozenWeight::Dense(w) => w.dims2(),
            FrozenWeight::Quantized(q) => q.shape().dims2(),
            FrozenWeight::Fp8(w) => Ok(w.dims()),
        }
    }
}

/// `x @ weightᵀ` with a backward pass that produces the gradient of `x` only. A quantized weight is dequantized in
/// the forward pass and again in the backward pass, never kept dense between them.
struct FrozenMatmul {
    weight: FrozenWeight,
}

/// A matmul as candle's storage backends take it: (batch, m, n, k), both operand layouts and the output shape.
struct MatmulProblem {
    bmnk: (usize, usize, usize, usize),
    lhs: Layout,
    rhs: Layout,
    out: Shape,
}

/// `x` viewed as (m, k) times the weight `w` (n, k) read transposed.
fn problem(x: &Layout, w: &Tensor) -> Result<MatmulProblem> {
    let dims = x.dims();
    let k = *dims.last().expect("rank >= 1");
    let m = dims.iter().rev().skip(1).product::<usize>();
    let (n, wk) = w.dims2()?;
    if wk != k {
        candle_core::bail!("frozen linear: input width {k} but weight is {n}x{wk}");
    }
    let wl = w.layout();
    let wt = Layout::new(
        Shape::from((k, n)),
        vec![wl.stride()[1], wl.stride()[0]],
        wl.start_offset(),
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

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let weight = self.weight.dense(storage.dtype())?;
        let p = problem(layout, &weight)?;
        check_dtypes(storage.dtype(), weight.dtype())?;
        let (w, wl) = weight.storage_and_layout();
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
        let weight = self.weight.dense(storage.dtype())?;
        let p = problem(layout, &weight)?;
        check_dtypes(storage.dtype(), weight.dtype())?;
        let (w, _) = weight.storage_and_layout();
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
        let weight = self.weight.dense(storage.dtype())?;
        let p = problem(layout, &weight)?;
        check_dtypes(storage.dtype(), weight.dtype())?;
        let (w, _) = weight.storage_and_layout();
        let candle_core::Storage::Metal(w) = &*w else {
            candle_core::bail!("frozen weight is not on the GPU")
        };
        Ok((storage.matmul(w, p.bmnk, &p.lhs, &p.rhs)?, p.out))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (n, _) = self.weight.dims()?;
        if grad_res.dim(D::Minus1)? != n {
            candle_core::bail!(
                "frozen linear: gradient width {} but weight has {n} rows",
                grad_res.dim(D::Minus1)?
            );
        }
        let weight = self.weight.dense(grad_res.dtype())?;
        check_dtypes(grad_res.dtype(), weight.dtype())?;
        if fused::applies(grad_res) {
            return Ok(Some(fused::matmul_no_grad(grad_res, &weight, false)?));
        }
        Ok(Some(grad_res.broadcast_matmul(&weight)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::max_abs_diff;
    use candle_core::{Device, Var};
    use freezetune_core::quant::QuantFormat;

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let d = max_abs_diff(a, b);
        assert!(d < tol, "max abs diff {d}");
    }

    fn frozen(w: &Tensor) -> Linear {
        Linear {
            weight: LinearWeight::Frozen(w.clone()),
            bias: None,
        }
    }

    #[test]
    fn frozen_linear_matches_matmul_and_only_differentiates_the_input() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, 5), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1., (4, 5), &dev).unwrap();
        let frozen = frozen(&w);
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
    fn frozen_linear_refuses_a_weight_of_another_dtype_and_casts_trainable_ones() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 5), &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let w = Tensor::randn(0f32, 1., (4, 5), &dev).unwrap();
        let frozen = frozen(&w);
        let err = frozen.forward(&x).unwrap_err().to_string();
        assert!(err.contains("BF16") && err.contains("F32"), "{err}");
        let master = Var::from_tensor(&w).unwrap();
        let trainable = Linear {
            weight: LinearWeight::Trainable(master.as_tensor().clone()),
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
    fn a_quantized_weight_computes_with_its_dequantized_values_forward_and_backward() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (8, 256), &dev).unwrap();
        // Outputs are about 0.8 in size: q8_0 moves them by about 1%, q4_k by about 10%.
        for (format, most) in [(QuantFormat::Q8_0, 0.03), (QuantFormat::Q4K, 0.25)] {
            let q = Arc::new(quant::quantize(&w, format, &dev).unwrap());
            let dequantized = quant::dequantize(&q, DType::F32).unwrap();
            let quantized = Linear {
                weight: LinearWeight::Quantized(q),
                bias: None,
            };
            let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, 256), &dev).unwrap()).unwrap();
            let y = quantized.forward(x.as_tensor()).unwrap();
            let reference = frozen(&dequantized).forward(x.as_tensor()).unwrap();
            close(&y, &reference, 1e-5);
            // Below the lowest trainable layer (no graph) the same values.
            close(&quantized.forward(&x.as_tensor().detach()).unwrap(), &reference, 1e-5);
            // Quantization moved the output, a little.
            let dense = frozen(&w).forward(x.as_tensor()).unwrap();
            let moved = max_abs_diff(&y, &dense);
            assert!(moved > 1e-6 && moved < most, "{format:?}: output moved by {moved}");
            let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let g_ref = reference.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            close(g.get(x.as_tensor()).unwrap(), g_ref.get(x.as_tensor()).unwrap(), 1e-4);
        }
    }
}
