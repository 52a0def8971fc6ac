//! Differentiable building blocks. candle's fused `rms_norm`, `softmax_last_dim` and `rope` have no backward and
//! would silently cut the gradient, so these are written with primitive ops that do. The frozen linear is a custom
//! op whose backward returns only the input's gradient: a plain matmul would also compute (and keep) a gradient for
//! the frozen weight, doubling the backward cost of every frozen layer above the lowest trainable one.

use candle_core::backend::BackendStorage;
use candle_core::Result;
#[cfg(test)]
use candle_core::Var;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, D};

/// `x / sqrt(mean(x²) + eps) * weight`, over the last dimension, computed in f32.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = x.broadcast_div(&(ms + eps)?.sqrt()?)?;
    normed.to_dtype(dtype)?.broadcast_mul(weight)
}

/// Softmax over the last dimension; the subtracted maximum is detached (softmax does not depend on it).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// `log_softmax` over the last dimension.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(D::Minus1)?.log()?)
}

/// Rotary embedding on `x` of shape (batch, heads, seq, head_dim) with `cos`/`sin` of shape (seq, head_dim).
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)?.add(&rotated.broadcast_mul(sin)?)
}

/// Mean cross-entropy of `logits` (batch, seq, vocab) against `labels` (batch, seq; -100 = ignored), with the
/// shift transformers applies: position t predicts label t+1. Returns the loss and the number of counted tokens.
/// On the CPU a fused kernel computes it in one pass per row (and its gradient, softmax minus one-hot, in one more)
/// instead of materialising log-probabilities the size of the logits several times over.
pub fn causal_lm_loss(logits: &Tensor, labels: &[Vec<i64>]) -> Result<(Tensor, usize)> {
    let (b, t, _) = logits.dims3()?;
    let mut targets = Vec::with_capacity(b * t);
    for row in labels {
        // Row position p predicts label p+1; the last position predicts nothing.
        targets.extend(row[1..t].iter().map(|&l| if l < 0 { None } else { Some(l as u32) }));
        targets.push(None);
    }
    let count = targets.iter().filter(|x| x.is_some()).count();
    let logits = logits.to_dtype(DType::F32)?;
    if logits.device().is_cpu() {
        let op = CrossEntropy {
            targets: std::sync::Arc::new(targets),
            count: count.max(1),
        };
        return Ok((logits.contiguous()?.apply_op1(op)?, count));
    }
    let mask: Vec<f32> = targets.iter().map(|x| if x.is_some() { 1.0 } else { 0.0 }).collect();
    let ids: Vec<u32> = targets.iter().map(|x| x.unwrap_or(0)).collect();
    let dev = logits.device();
    let logp = log_softmax_last_dim(&logits)?;
    let picked = logp.gather(&Tensor::from_vec(ids, (b, t, 1), dev)?, 2)?.squeeze(2)?;
    let total = (picked * Tensor::from_vec(mask, (b, t), dev)?)?.sum_all()?;
    Ok(((total.neg()? / count.max(1) as f64)?, count))
}

/// Fused mean cross-entropy over rows of f32 logits; `targets[row]` is `None` for ignored rows.
struct CrossEntropy {
    targets: std::sync::Arc<Vec<Option<u32>>>,
    count: usize,
}

/// `(max, log Σ exp(x - max))` of a row.
fn log_sum_exp(row: &[f32]) -> (f32, f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (max, row.iter().map(|&x| (x - max).exp()).sum::<f32>().ln())
}

fn f32_rows<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<(&'a [f32], usize)> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("cross-entropy expects f32 logits")
    };
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("logits must be contiguous".into()))?;
    let vocab = *layout.dims().last().expect("rank 3");
    Ok((&data[start..end], vocab))
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (data, vocab) = f32_rows(storage, layout)?;
        let total: f64 = data
            .par_chunks(vocab)
            .zip(self.targets.par_iter())
            .filter_map(|(row, t)| t.map(|t| (row, t)))
            .map(|(row, t)| {
                let (max, lse) = log_sum_exp(row);
                (max + lse - row[t as usize]) as f64
            })
            .sum();
        Ok((
            CpuStorage::F32(vec![(total / self.count as f64) as f32]),
            Shape::from(()),
        ))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let scale = grad_res.to_dtype(DType::F32)?.to_scalar::<f32>()? / self.count as f32;
        let grad = CrossEntropyGrad {
            targets: self.targets.clone(),
            scale,
        };
        Ok(Some(arg.apply_op1_no_bwd(&grad)?))
    }
}

/// Gradient of [`CrossEntropy`]: `scale × (softmax(row) − onehot(target))` for counted rows, zero elsewhere.
struct CrossEntropyGrad {
    targets: std::sync::Arc<Vec<Option<u32>>>,
    scale: f32,
}

impl CustomOp1 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "cross-entropy-grad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (data, vocab) = f32_rows(storage, layout)?;
        let mut out = vec![0f32; data.len()];
        out.par_chunks_mut(vocab)
            .zip(data.par_chunks(vocab))
            .zip(self.targets.par_iter())
            .for_each(|((o, row), t)| {
                if let Some(t) = t {
                    let (max, lse) = log_sum_exp(row);
                    for (g, &x) in o.iter_mut().zip(row) {
                        *g = (x - max - lse).exp() * self.scale;
                    }
                    o[*t as usize] -= self.scale;
                }
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// A linear layer as the freeze plan wants it. A trainable weight is a `Var`'s tensor and uses a plain matmul; a
/// frozen one is a constant and, where a graph is being recorded, the input-gradient-only [`FrozenMatmul`].
/// The bias (if any) is trainable or not on its own.
pub struct Linear {
    pub weight: Tensor,
    pub frozen: bool,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = if !self.frozen {
            x.broadcast_matmul(&self.weight.t()?)?
        } else if x.track_op() {
            x.contiguous()?.apply_op1(FrozenMatmul {
                weight: self.weight.clone(),
            })?
        } else {
            // No graph to record below the lowest trainable layer: a plain matmul is cheapest.
            x.broadcast_matmul(&self.weight.t()?)?
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
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
        let (w, _) = self.weight.storage_and_layout();
        let candle_core::Storage::Cpu(w) = &*w else {
            candle_core::bail!("frozen weight is not on the CPU")
        };
        Ok((storage.matmul(w, p.bmnk, &p.lhs, &p.rhs)?, p.out))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let p = self.problem(layout)?;
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
        let (w, _) = self.weight.storage_and_layout();
        let candle_core::Storage::Metal(w) = &*w else {
            candle_core::bail!("frozen weight is not on the GPU")
        };
        Ok((storage.matmul(w, p.bmnk, &p.lhs, &p.rhs)?, p.out))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.broadcast_matmul(&self.weight)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
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
    fn loss_ignores_masked_labels_and_shifts() {
        let dev = Device::Cpu;
        // Uniform logits over 4 classes: every counted token costs ln 4.
        let logits = Tensor::zeros((1, 3, 4), DType::F32, &dev).unwrap();
        let (loss, n) = causal_lm_loss(&logits, &[vec![-100, -100, 2]]).unwrap();
        assert_eq!(n, 1);
        assert!((loss.to_scalar::<f32>().unwrap() - 4f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn fused_cross_entropy_matches_the_composite_one() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 2., (2, 5, 7), &dev).unwrap()).unwrap();
        let labels = vec![vec![-100, 3, 6, -100, 1], vec![0, 2, 2, 5, -100]];
        let (fused, n) = causal_lm_loss(x.as_tensor(), &labels).unwrap();
        assert_eq!(n, 6);
        let gf = fused.backward().unwrap();
        // The composite path, as used on GPUs.
        let logp = log_softmax_last_dim(&x.as_tensor().narrow(1, 0, 4).unwrap()).unwrap();
        let mut total = Tensor::new(0f32, &dev).unwrap();
        for (b, row) in labels.iter().enumerate() {
            for p in 0..4 {
                if row[p + 1] >= 0 {
                    let v = logp.get(b).unwrap().get(p).unwrap().get(row[p + 1] as usize).unwrap();
                    total = (total + v).unwrap();
                }
            }
        }
        let composite = (total.neg().unwrap() / 6.0).unwrap();
        let gc = composite.backward().unwrap();
        close(&fused, &composite, 1e-5);
        close(gf.get(x.as_tensor()).unwrap(), gc.get(x.as_tensor()).unwrap(), 1e-6);
    }
}
