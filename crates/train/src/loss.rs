//! The shifted cross-entropy of a causal LM, without several logits-sized copies. Two kernels compute the same
//! thing: a fused CPU kernel (one pass per row for the value, one more for the gradient), and a device-generic one
//! for CUDA and Metal built from candle ops, chunked over rows so that its temporaries stay a few chunks in size
//! whatever the vocabulary. Both read the logits in their own dtype (bf16 logits are never copied to f32 whole),
//! compute in f32, and give the gradient in the logits' dtype. No f64 anywhere (Metal has none).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
use std::sync::Arc;

/// Which kernel computes the loss. `Auto` is the fused one on the CPU, the generic one elsewhere; tests force
/// `Generic` on the CPU to check the two agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossKernel {
    Auto,
    Fused,
    Generic,
}

/// About 64 MB of f32 per chunk of the generic kernel.
const CHUNK_ELEMENTS: usize = 1 << 24;

/// Mean cross-entropy of `logits` (batch, seq, vocab) against `labels` (batch, seq; -100 = ignored), with the
/// shift transformers applies: position t predicts label t+1. Returns the loss (an f32 scalar on the logits'
/// device, not read back) and the number of counted tokens.
pub fn causal_lm_loss(logits: &Tensor, labels: &[Vec<i64>]) -> Result<(Tensor, usize)> {
    causal_lm_loss_with(logits, labels, LossKernel::Auto)
}

pub fn causal_lm_loss_with(logits: &Tensor, labels: &[Vec<i64>], kernel: LossKernel) -> Result<(Tensor, usize)> {
    let (b, t, v) = logits.dims3()?;
    let (targets, count) = counted_targets(labels, b, t)?;
    let fused = match kernel {
        LossKernel::Auto => logits.device().is_cpu(),
        LossKernel::Fused => true,
        LossKernel::Generic => false,
    };
    let loss = if fused {
        // The CPU kernel reads f32 rows; CPU training computes in f32 unless told otherwise. It reads the logits
        // as they are, rank 3: a reshape node between would cost a second logits-sized gradient (candle's backward
        // gives every node a zero-filled buffer of its own and adds into it).
        logits.to_dtype(DType::F32)?.contiguous()?.apply_op1(CrossEntropy {
            targets: Arc::new(targets),
            count: count.max(1),
        })?
    } else {
        generic_loss(&logits.reshape((b * t, v))?, targets, count.max(1), chunk_rows(v), None)?
    };
    Ok((loss, count))
}

/// As [`causal_lm_loss`] for the logits `cap · tanh(logits / cap)` (Gemma 2, 3 and 4's final softcap), with the
/// softcap inside the device-generic loss node: the graph keeps only the raw logits. As three candle ops it kept
/// three more logits-sized tensors and made their gradients (1 GB more on a 77M Gemma 4 at 1,024 tokens and a 32k
/// vocabulary; a 262k vocabulary makes that 8 GB).
pub fn causal_lm_softcapped_loss(logits: &Tensor, labels: &[Vec<i64>], cap: f64) -> Result<(Tensor, usize)> {
    let (b, t, v) = logits.dims3()?;
    let (targets, count) = counted_targets(labels, b, t)?;
    let rows = logits.reshape((b * t, v))?;
    let loss = generic_loss(&rows, targets, count.max(1), chunk_rows(v), Some(cap))?;
    Ok((loss, count))
}

/// As [`causal_lm_loss`] for the logits `hidden (batch, seq, h) · weightᵀ · scale`, with the projection and the loss
/// fused (`fused::head_cross_entropy`: the logits are never held whole); for a frozen dense f32 weight on the CPU.
pub fn causal_lm_head_loss(
    hidden: &Tensor,
    weight: &Tensor,
    logits: crate::fused::Logits,
    labels: &[Vec<i64>],
) -> Result<(Tensor, usize)> {
    let (b, t, _) = hidden.dims3()?;
    let (targets, count) = counted_targets(labels, b, t)?;
    let loss = crate::fused::head_cross_entropy(hidden, weight, Arc::new(targets), count, logits)?;
    Ok((loss, count))
}

/// The shifted targets of a (b, t) batch and how many are counted; refuses labels for another batch size.
fn counted_targets(labels: &[Vec<i64>], b: usize, t: usize) -> Result<(Vec<Option<u32>>, usize)> {
    let targets = shifted_targets(labels, t);
    if targets.len() != b * t {
        candle_core::bail!("cross-entropy: {} label rows for a batch of {b}", labels.len());
    }
    let count = targets.iter().filter(|x| x.is_some()).count();
    Ok((targets, count))
}

/// Row p of a batch row predicts label p+1; the last position predicts nothing.
fn shifted_targets(labels: &[Vec<i64>], t: usize) -> Vec<Option<u32>> {
    let mut targets = Vec::with_capacity(labels.len() * t);
    for row in labels {
        targets.extend(row[1..t].iter().map(|&l| if l < 0 { None } else { Some(l as u32) }));
        targets.push(None);
    }
    targets
}

// ---------------------------------------------------------------------------------------------------------------
// Device-generic kernel.

/// The targets of one chunk of rows as device tensors: ids (rows, 1) u32 (0 where ignored) and mask (rows, 1) f32.
struct ChunkTargets {
    ids: Tensor,
    mask: Tensor,
}

fn chunk_targets(targets: &[Option<u32>], dev: &candle_core::Device) -> Result<ChunkTargets> {
    let n = targets.len();
    let ids: Vec<u32> = targets.iter().map(|x| x.unwrap_or(0)).collect();
    let mask: Vec<f32> = targets.iter().map(|x| if x.is_some() { 1.0 } else { 0.0 }).collect();
    Ok(ChunkTargets {
        ids: Tensor::from_vec(ids, (n, 1), dev)?,
        mask: Tensor::from_vec(mask, (n, 1), dev)?,
    })
}

/// `cap · tanh(x / cap)` of f32 `x`, or `x` without a cap.
fn capped(x: Tensor, cap: Option<f64>) -> Result<Tensor> {
    match cap {
        Some(cap) => (x / cap)?.tanh()? * cap,
        None => Ok(x),
    }
}

/// `log Σ exp(x)` of each row of f32 `x` (rows, vocab), as (rows, 1).
fn row_log_sum_exp(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    x.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + max
}

fn chunk_rows(vocab: usize) -> usize {
    (CHUNK_ELEMENTS / vocab.max(1)).max(1)
}

/// The loss over `rows` (n, vocab) computed chunk by chunk with no graph, then attached to `rows` through
/// [`LossNode`], whose backward produces the gradient chunk by chunk as well.
fn generic_loss(
    rows: &Tensor,
    targets: Vec<Option<u32>>,
    count: usize,
    step: usize,
    cap: Option<f64>,
) -> Result<Tensor> {
    let x = rows.detach();
    let n = x.dim(0)?;
    let dev = x.device();
    let mut total = Tensor::zeros((), DType::F32, dev)?;
    let mut chunks = Vec::with_capacity(n.div_ceil(step));
    for start in (0..n).step_by(step) {
        let len = step.min(n - start);
        let tg = chunk_targets(&targets[start..start + len], dev)?;
        let xc = capped(x.narrow(0, start, len)?.to_dtype(DType::F32)?, cap)?;
        let lse = row_log_sum_exp(&xc)?;
        let picked = xc.gather(&tg.ids, 1)?;
        total = (total + ((lse - picked)? * &tg.mask)?.sum_all()?)?;
        chunks.push(tg);
    }
    let value = (total / count as f64)?;
    rows.apply_op2(
        &value,
        LossNode {
            chunks: Arc::new(chunks),
            count,
            step,
            cap,
        },
    )
}

/// A node whose value is the loss computed outside the graph and whose backward is the cross-entropy gradient of
/// its first argument (the logits rows). Its forward only copies the value, so it runs on every backend.
struct LossNode {
    chunks: Arc<Vec<ChunkTargets>>,
    count: usize,
    step: usize,
    /// The final softcap applied to the rows before the loss, recomputed chunk by chunk in the backward pass.
    cap: Option<f64>,
}

impl LossNode {
    /// `grad_scale × (softmax(row) − onehot(target))` for counted rows, zero elsewhere, in the logits' dtype; with a
    /// softcap, of the capped row, times the cap's slope `1 − tanh²`.
    fn gradient(&self, logits: &Tensor, grad_scale: &Tensor) -> Result<Tensor> {
        let x = logits.detach();
        let (n, vocab) = x.dims2()?;
        let scale = (grad_scale.to_dtype(DType::F32)? / self.count as f64)?;
        let out = Tensor::zeros((n, vocab), x.dtype(), x.device())?;
        for (i, tg) in self.chunks.iter().enumerate() {
            let start = i * self.step;
            let len = tg.ids.dim(0)?;
            let xc = capped(x.narrow(0, start, len)?.to_dtype(DType::F32)?, self.cap)?;
            let probs = xc.broadcast_sub(&row_log_sum_exp(&xc)?)?.exp()?;
            let minus_one = Tensor::full(-1f32, (len, 1), x.device())?;
            let g = probs.scatter_add(&tg.ids, &minus_one, 1)?;
            let g = g.broadcast_mul(&tg.mask.broadcast_mul(&scale)?)?;
            let g = match self.cap {
                Some(cap) => (g * (1.0 - (xc / cap)?.sqr()?)?)?,
                None => g,
            };
            out.slice_set(&g.to_dtype(x.dtype())?, 0, start)?;
        }
        Ok(out)
    }
}

impl CustomOp2 for LossNode {
    fn name(&self) -> &'static str {
        "cross-entropy-node"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, value: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((value.try_clone(l)?, Shape::from(())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        value: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((value.try_clone(l)?, Shape::from(())))
    }

    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        _: &candle_core::MetalStorage,
        _: &Layout,
        value: &candle_core::MetalStorage,
        l: &Layout,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        Ok((value.try_clone(l)?, Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        _value: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(self.gradient(logits, grad_res)?), None))
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Fused CPU kernel.

/// Fused mean cross-entropy over rows of f32 logits; `targets[row]` is `None` for ignored rows.
struct CrossEntropy {
    targets: Arc<Vec<Option<u32>>>,
    count: usize,
}

fn row_max(row: &[f32]) -> f32 {
    crate::fastmath::max(row)
}

fn f32_rows<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<(&'a [f32], usize)> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("cross-entropy expects f32 logits")
    };
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("logits must be contiguous".into()))?;
    let vocab = *layout.dims().last().expect("rank 2");
    Ok((&data[start..end], vocab))
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (data, vocab) = f32_rows(storage, layout)?;
        // Row sums in f64 on the host are fine: this kernel only runs on the CPU.
        let total: f64 = data
            .par_chunks(vocab)
            .zip(self.targets.par_iter())
            .filter_map(|(row, t)| t.map(|t| (row, t)))
            .map_init(
                || vec![0f32; vocab],
                |exps, (row, t)| {
                    let max = row_max(row);
                    let lse = crate::fastmath::exp_shifted_sum(row, max, exps).ln();
                    (max + lse - row[t as usize]) as f64
                },
            )
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
    targets: Arc<Vec<Option<u32>>>,
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
                    let sum = crate::fastmath::exp_shifted_sum(row, row_max(row), o);
                    let k = self.scale / sum;
                    o.iter_mut().for_each(|g| *g *= k);
                    o[*t as usize] -= self.scale;
                }
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::max_abs_diff as max_diff;
    use candle_core::{Device, Var};

    #[test]
    fn fused_head_loss_matches_logits_then_loss_across_blocks() {
        for softcap in [None, Some(1.5f32)] {
            check_fused_head_loss(softcap);
        }
    }

    /// The fused head against logits (scaled, softcapped as asked) then the loss, in value and input gradient.
    fn check_fused_head_loss(softcap: Option<f32>) {
        let dev = Device::Cpu;
        let (b, t, h, v) = (2, 5, 6, 11);
        let values = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i + seed) * 7919) % 200) as f32 * 0.02 - 2.0)
                .collect()
        };
        let hidden = Var::from_vec(values(b * t * h, 1), (b, t, h), &dev).unwrap();
        // A trainable weight: the fused head gives its gradient too.
        let weight_var = Var::from_vec(values(v * h, 5), (v, h), &dev).unwrap();
        let weight = weight_var.as_tensor().clone();
        // Ignored labels inside a row and at its start; the last position of each row predicts nothing.
        let labels = vec![vec![3, -100, 7, 10, 0], vec![-100, 4, 4, 9, 1]];
        let scale = 0.625f32;
        let logits = (hidden
            .as_tensor()
            .matmul(&weight.t().unwrap().unsqueeze(0).unwrap().repeat((b, 1, 1)).unwrap()))
        .unwrap()
        .affine(scale as f64, 0.0)
        .unwrap();
        // A cap below the logits' range, so the tanh bends them.
        let logits = match softcap {
            Some(cap) => ((logits / cap as f64).unwrap().tanh().unwrap() * cap as f64).unwrap(),
            None => logits,
        };
        let head = crate::fused::Logits { scale, softcap };
        let (want, want_n) = causal_lm_loss(&logits, &labels).unwrap();
        let want_grads = (&want * 0.37).unwrap().backward().unwrap();
        let want_grad = want_grads.get(hidden.as_tensor()).unwrap();
        let want_weight_grad = want_grads.get(&weight).unwrap();
        // Blocks of 3 rows over 10 (a short last block), one row, and the whole at once.
        for block_rows in [Some(3), Some(1), None] {
            let targets = Arc::new(shifted_targets(&labels, t));
            let n = targets.iter().flatten().count();
            assert_eq!(n, want_n);
            let got =
                crate::fused::head_cross_entropy_blocks(hidden.as_tensor(), &weight, targets, n, head, block_rows)
                    .unwrap();
            let diff = (got.to_scalar::<f32>().unwrap() - want.to_scalar::<f32>().unwrap()).abs();
            assert!(
                diff < 1e-5,
                "{softcap:?}: loss differs by {diff} with blocks of {block_rows:?}"
            );
            let grads = (&got * 0.37).unwrap().backward().unwrap();
            let g = grads.get(hidden.as_tensor()).unwrap();
            assert!(
                max_diff(g, want_grad) < 1e-5,
                "{softcap:?}: hidden gradient, blocks of {block_rows:?}"
            );
            let gw = grads.get(&weight).unwrap();
            assert!(
                max_diff(gw, want_weight_grad) < 1e-5,
                "{softcap:?}: weight gradient, blocks of {block_rows:?}"
            );
        }
        // Only the weight trains (every layer below frozen): its gradient alone, the same.
        let targets = Arc::new(shifted_targets(&labels, t));
        let detached = hidden.as_tensor().detach();
        let got = crate::fused::head_cross_entropy(&detached, &weight, targets, want_n, head).unwrap();
        let grads = (&got * 0.37).unwrap().backward().unwrap();
        assert!(grads.get(&detached).is_none());
        assert!(
            max_diff(grads.get(&weight).unwrap(), want_weight_grad) < 1e-5,
            "{softcap:?}: weight alone"
        );
        // A frozen weight gets no gradient, the input still does.
        let frozen = weight.detach();
        let targets = Arc::new(shifted_targets(&labels, t));
        let got = crate::fused::head_cross_entropy(hidden.as_tensor(), &frozen, targets, want_n, head).unwrap();
        let grads = got.backward().unwrap();
        assert!(grads.get(&frozen).is_none() && grads.get(hidden.as_tensor()).is_some());
        // Without a graph no gradient is made, and the value is the same.
        let (value, _) = causal_lm_head_loss(&hidden.as_tensor().detach(), &weight, head, &labels).unwrap();
        assert!((value.to_scalar::<f32>().unwrap() - want.to_scalar::<f32>().unwrap()).abs() < 1e-5);
        // A target outside the vocabulary is refused, not read out of bounds.
        let bad = Arc::new(vec![Some(v as u32); b * t]);
        let plain = crate::fused::Logits {
            scale: 1.0,
            softcap: None,
        };
        assert!(crate::fused::head_cross_entropy(hidden.as_tensor(), &weight, bad, b * t, plain).is_err());
    }

    #[test]
    fn loss_ignores_masked_labels_and_shifts() {
        let dev = Device::Cpu;
        // Uniform logits over 4 classes: every counted token costs ln 4.
        let logits = Tensor::zeros((1, 3, 4), DType::F32, &dev).unwrap();
        for kernel in [LossKernel::Fused, LossKernel::Generic] {
            let (loss, n) = causal_lm_loss_with(&logits, &[vec![-100, -100, 2]], kernel).unwrap();
            assert_eq!(n, 1);
            assert!(
                (loss.to_scalar::<f32>().unwrap() - 4f32.ln()).abs() < 1e-6,
                "{kernel:?}"
            );
        }
    }

    /// The composite log-softmax loss, as a reference for both kernels.
    fn composite(x: &Tensor, labels: &[Vec<i64>]) -> Tensor {
        let dev = x.device();
        let t = x.dim(1).unwrap();
        let max = x.max_keepdim(D::Minus1).unwrap().detach();
        let shifted = x.broadcast_sub(&max).unwrap();
        let logp = shifted
            .broadcast_sub(&shifted.exp().unwrap().sum_keepdim(D::Minus1).unwrap().log().unwrap())
            .unwrap();
        let mut total = Tensor::new(0f32, dev).unwrap();
        let mut n = 0;
        for (b, row) in labels.iter().enumerate() {
            for p in 0..t - 1 {
                if row[p + 1] >= 0 {
                    let v = logp.get(b).unwrap().get(p).unwrap().get(row[p + 1] as usize).unwrap();
                    total = (total + v).unwrap();
                    n += 1;
                }
            }
        }
        (total.neg().unwrap() / n as f64).unwrap()
    }

    #[test]
    fn both_kernels_match_the_composite_loss_in_value_and_gradient() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 2., (2, 5, 7), &dev).unwrap()).unwrap();
        let labels = vec![vec![-100, 3, 6, -100, 1], vec![0, 2, 2, 5, -100]];
        let reference = composite(x.as_tensor(), &labels);
        let g_ref = reference.backward().unwrap();
        let g_ref = g_ref.get(x.as_tensor()).unwrap();
        for kernel in [LossKernel::Fused, LossKernel::Generic] {
            let (loss, n) = causal_lm_loss_with(x.as_tensor(), &labels, kernel).unwrap();
            assert_eq!(n, 6);
            assert!(max_diff(&loss, &reference) < 1e-5, "{kernel:?} value");
            let g = loss.backward().unwrap();
            assert!(
                max_diff(g.get(x.as_tensor()).unwrap(), g_ref) < 1e-6,
                "{kernel:?} gradient"
            );
        }
    }

    /// The softcap inside the loss node gives the value and the raw logits' gradient of the three ops it replaces.
    #[test]
    fn the_softcapped_loss_matches_the_cap_then_the_loss() {
        let dev = Device::Cpu;
        // Logits well past the cap of 2, so tanh saturates and the slope matters.
        let x = Var::from_tensor(&Tensor::randn(0f32, 4., (2, 5, 7), &dev).unwrap()).unwrap();
        let labels = vec![vec![-100, 3, 6, -100, 1], vec![0, 2, 2, 5, -100]];
        let cap = 2.0;
        let capped = ((x.as_tensor() / cap).unwrap().tanh().unwrap() * cap).unwrap();
        let reference = composite(&capped, &labels);
        let g_ref = reference.backward().unwrap();
        let g_ref = g_ref.get(x.as_tensor()).unwrap();
        let (loss, n) = causal_lm_softcapped_loss(x.as_tensor(), &labels, cap).unwrap();
        assert_eq!(n, 6);
        assert!(max_diff(&loss, &reference) < 1e-5, "value");
        let (plain, _) = causal_lm_loss(x.as_tensor(), &labels).unwrap();
        assert!(max_diff(&plain, &reference) > 1e-2, "the cap must change the loss");
        let g = (loss * 0.37).unwrap().backward().unwrap();
        let want = (g_ref * 0.37).unwrap();
        assert!(max_diff(g.get(x.as_tensor()).unwrap(), &want) < 1e-6, "gradient");
    }

    #[test]
    fn generic_kernel_equals_the_fused_one_across_chunks_and_scaled_gradients() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 3., (2, 4, 9), &dev).unwrap()).unwrap();
        let labels = vec![vec![1, 7, -100, 8], vec![-100, 0, 4, 2]];
        let targets = shifted_targets(&labels, 4);
        let rows = x.as_tensor().reshape((8, 9)).unwrap();
        // A scaled loss, as gradient accumulation and f16 loss scaling use it.
        let gradient = |loss: &Tensor| {
            let g = (loss * 0.37).unwrap().backward().unwrap();
            g.get(x.as_tensor()).unwrap().clone()
        };
        let (fused, _) = causal_lm_loss_with(x.as_tensor(), &labels, LossKernel::Fused).unwrap();
        let g_fused = gradient(&fused);
        // Chunks of 3 rows: 8 rows end in a short chunk.
        for step in [1, 3, 8, 100] {
            let generic = generic_loss(&rows, targets.clone(), 5, step, None).unwrap();
            assert!(max_diff(&fused, &generic) < 1e-5, "chunks of {step}");
            assert!(max_diff(&g_fused, &gradient(&generic)) < 1e-7, "chunks of {step}");
        }
        assert_eq!(
            chunk_rows(151_936),
            110,
            "a 152k vocabulary takes 110 rows (64 MB of f32) a chunk"
        );
    }

    #[test]
    fn generic_kernel_reads_bf16_logits_and_answers_in_bf16() {
        let dev = Device::Cpu;
        let x32 = Tensor::randn(0f32, 2., (1, 6, 11), &dev).unwrap();
        let x = Var::from_tensor(&x32.to_dtype(DType::BF16).unwrap()).unwrap();
        let labels = vec![vec![-100, 3, 6, 10, 1, 0]];
        let (loss, _) = causal_lm_loss_with(x.as_tensor(), &labels, LossKernel::Generic).unwrap();
        assert_eq!(loss.dtype(), DType::F32);
        let g = loss.backward().unwrap();
        let g = g.get(x.as_tensor()).unwrap();
        assert_eq!(g.dtype(), DType::BF16);
        let (reference, _) =
            causal_lm_loss_with(&x.as_tensor().to_dtype(DType::F32).unwrap(), &labels, LossKernel::Fused).unwrap();
        assert!(max_diff(&loss, &reference) < 1e-5);
    }
}
