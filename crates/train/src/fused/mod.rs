//! Fused, differentiable CPU kernels for the hot elementwise ops of a decoder layer: RMSNorm, the attention's
//! scale + mask + softmax, SwiGLU (`silu(gate) * up`), the rotary embedding (with the split into heads, `rope.rs`); and the AdamW update, in place. candle composes these from single-threaded scalar maps
//! that each write a full-size temporary and record it for the backward pass; here each is one pass over its rows,
//! parallel over rows (rayon), with a backward of its own that is one pass too. They run on f32 CPU tensors only —
//! [`applies`] says when; the composite ops in `ops.rs` stay the path for GPUs and other dtypes, and the tests
//! check both agree (value and gradient).

use candle_core::{
    bail, CpuStorage, CustomOp2, CustomOp3, DType, InplaceOp2, InplaceOp3, Layout, Result, Shape, Tensor,
};
mod amx;
mod amx_gemm;
mod attention;
mod attn_block;
pub mod blas;
mod delta_net_inputs;
mod delta_rule;
mod gelu;
mod gemm;
mod head_loss;
mod linear;
mod mlp;
mod pack;
mod packed_gemm;
mod pre_norm;
mod rope;
mod sinks;
mod tile_kernel;
mod wiring;

pub use amx::available as amx_available;
pub use attention::causal_attention;
pub use attn_block::{attention_block, AttnHeads, AttnWeights, QkvWeights};
pub use delta_net_inputs::delta_net_inputs;
pub use delta_rule::{gated_delta_rule, gated_delta_rule_packed};
pub use gelu::{geglu_tanh, gelu_tanh, GluActivation};
pub use gemm::{default_f32_kernel, with_bf16_matmuls, with_f32_kernel, Backend, F32Kernel};
#[cfg(test)]
pub(crate) use head_loss::head_cross_entropy_blocks;
pub use head_loss::{head_cross_entropy, Logits};
pub use linear::{linear, matmul_no_grad, rows_times_weight, rows_times_weight_t, transposed_times};
pub use mlp::{mlp_block, GateUpWeights, MlpWeights};
pub use packed_gemm::{
    available as bf16_matmul_available, f32_available as f32_kernel_available, faster_than_f32 as bf16_matmul_faster,
};
pub use rope::{rope_heads, split_heads};
pub use sinks::causal_attention_with_sinks;

use crate::fastmath::{self, exp_in_place};
use rayon::prelude::*;

/// Whether the fused kernels serve `x`: f32 on the CPU, unless `FREEZETUNE_FUSED=0` turns them off (to measure
/// what they buy, or to rule them out when chasing a numerical difference).
pub fn applies(x: &Tensor) -> bool {
    enabled() && x.device().is_cpu() && x.dtype() == DType::F32
}

/// The backends measured fastest so far in this process, one line per shape ("1024x512x1376 OpenBLAS"), for
/// benchmarks to say what they ran on.
pub fn matmul_choices() -> Vec<String> {
    gemm::all_chosen()
        .into_iter()
        .map(|((m, n, k, _, _), b)| format!("{m}x{k}x{n} {}", b.name()))
        .collect()
}

/// Whether the fused kernels are switched on (`FREEZETUNE_FUSED` is not `0`).
pub fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("FREEZETUNE_FUSED").map_or(true, |v| v != "0"))
}

/// `x / sqrt(mean(x²) + eps) * (weight + offset)` over the last dimension.
pub fn rms_norm(x: &Tensor, weight: &Tensor, offset: f32, eps: f32) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, RmsNorm { offset, eps })
}

/// `softmax(scores * scale + mask)` over the last dimension; `scores` is (batch, heads, q, k), `mask` is
/// (1 or batch, 1, q, k). The mask gets no gradient.
pub fn masked_softmax(scores: &Tensor, mask: &Tensor, scale: f32) -> Result<Tensor> {
    let (b, h, q, k) = scores.dims4()?;
    let (mb, one, mq, mk) = mask.dims4()?;
    if one != 1 || mq != q || mk != k || (mb != 1 && mb != b) {
        bail!(
            "masked_softmax: mask {:?} does not fit scores {:?}",
            mask.shape(),
            scores.shape()
        )
    }
    let op = MaskedSoftmax {
        scale,
        heads: h,
        q,
        mask_batched: mb != 1,
    };
    scores
        .contiguous()?
        .apply_op2(&mask.to_dtype(DType::F32)?.contiguous()?, op)
}

/// `silu(gate) * up`, elementwise.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gelu::glu(gate, up, GluActivation::Silu)
}

/// Runs `f` on the f32 values of CPU tensors (each contiguous).
pub(crate) fn with_values<R>(tensors: &[&Tensor], f: impl FnOnce(&[&[f32]]) -> Result<R>) -> Result<R> {
    let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let mut values = Vec::with_capacity(guards.len());
    for (storage, layout) in &guards {
        let candle_core::Storage::Cpu(cpu) = &**storage else {
            bail!("the fused kernels run on the CPU")
        };
        values.push(f32s(cpu, layout, "fused kernel operand")?);
    }
    f(&values)
}

fn f32s<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        bail!("{what}: the fused CPU kernels take f32")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{what}: input must be contiguous"),
    }
}

/// Rows per rayon task: a few tasks per thread, so uneven rows still balance.
fn rows_per_task(rows: usize) -> usize {
    (rows / (rayon::current_num_threads() * 4)).max(1)
}

/// Elements per rayon task for elementwise kernels: as for rows, but never so few that scheduling dominates.
fn elements_per_task(n: usize) -> usize {
    rows_per_task(n).max(4096)
}

/// Splits one buffer holding `[first (n), second (rest)]` into two tensors shaped like `a` and `b`.
fn split_pair(packed: Tensor, a: &Tensor, b: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let n = a.elem_count();
    let first = packed.narrow(0, 0, n)?.reshape(a.shape())?;
    let second = packed.narrow(0, n, b.elem_count())?.reshape(b.shape())?;
    Ok((Some(first), Some(second)))
}

fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ms = fastmath::dot(row, row) / row.len() as f32;
    1.0 / (ms + eps).sqrt()
}

struct RmsNorm {
    offset: f32,
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (f32s(xs, xl, "rms_norm x")?, f32s(ws, wl, "rms_norm weight")?);
        let h = w.len();
        if xl.dims().last() != Some(&h) {
            bail!("rms_norm: weight of {h} for rows of {:?}", xl.dims())
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(h)
            .zip(x.par_chunks(h))
            .for_each(|(o, r)| norm_row(r, inv_rms(r, self.eps), w, self.offset, o));
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = RmsNormGrad {
            offset: self.offset,
            eps: self.eps,
        };
        split_pair(x.apply_op3_no_bwd(w, &dy.contiguous()?, &grad)?, x, w)
    }
}

/// `[dx, dweight]` of [`RmsNorm`]: with n = x·r (r = 1/rms) and g = dy·(w + offset),
/// dx = r·(g − n·mean(g·n)) and dweight = Σ_rows dy·n.
struct RmsNormGrad {
    offset: f32,
    eps: f32,
}

impl CustomOp3 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "fused-rms-norm-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, dy) = (f32s(xs, xl, "x")?, f32s(ws, wl, "weight")?, f32s(gs, gl, "grad")?);
        let h = w.len();
        let block = rows_per_task(x.len() / h) * h;
        let w_offset: Vec<f32> = w.iter().map(|w| w + self.offset).collect();
        let mut dx = vec![0f32; x.len()];
        let dw = dx
            .par_chunks_mut(block)
            .zip(x.par_chunks(block).zip(dy.par_chunks(block)))
            .map(|(dxb, (xb, dyb))| {
                let mut dw = vec![0f32; h];
                for (dxr, (xr, dyr)) in dxb.chunks_mut(h).zip(xb.chunks(h).zip(dyb.chunks(h))) {
                    norm_grad_row(xr, dyr, inv_rms(xr, self.eps), &w_offset, dxr, &mut dw);
                }
                dw
            })
            .reduce(|| vec![0f32; h], add_into);
        dx.extend(dw);
        let len = dx.len();
        Ok((CpuStorage::F32(dx), Shape::from(len)))
    }
}

/// `out = row · inv · (w + offset)`: one row of RMSNorm from its 1/rms.
fn norm_row(row: &[f32], inv: f32, w: &[f32], offset: f32, out: &mut [f32]) {
    for ((o, &v), &w) in out.iter_mut().zip(row).zip(w) {
        *o = v * inv * (w + offset);
    }
}

/// One row of RMSNorm's backward pass, with n = x·r (r = 1/rms) and g = dy·(w + offset): adds
/// r·(g − n·mean(g·n)) into `dx` and dy·n into `dw`.
fn norm_grad_row(x: &[f32], dy: &[f32], r: f32, w_offset: &[f32], dx: &mut [f32], dw: &mut [f32]) {
    let mean = fastmath::dot3(dy, w_offset, x) * r / x.len() as f32;
    for j in 0..x.len() {
        let n = x[j] * r;
        dx[j] += r * (dy[j] * w_offset[j] - n * mean);
        dw[j] += dy[j] * n;
    }
}

/// The gradients of `silu(g) · u` for gate and up from the product's gradient `dp`, with s = σ(g):
/// dgate = dp·u·s·(1 + g·(1 − s)), dup = dp·g·s.
#[inline]
fn swiglu_grads(g: f32, u: f32, s: f32, dp: f32) -> (f32, f32) {
    (dp * u * s * (1.0 + g * (1.0 - s)), dp * g * s)
}

fn add_into(mut a: Vec<f32>, b: Vec<f32>) -> Vec<f32> {
    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
    a
}

/// `row = softmax(row * scale + mask)`, in place.
fn masked_softmax_row(row: &mut [f32], mask: &[f32], scale: f32) {
    for (o, &m) in row.iter_mut().zip(mask) {
        *o = *o * scale + m;
    }
    let max = fastmath::max(row);
    for o in row.iter_mut() {
        *o -= max;
    }
    exp_in_place(row);
    let inv = 1.0 / fastmath::sum(row);
    row.iter_mut().for_each(|o| *o *= inv);
}

struct MaskedSoftmax {
    scale: f32,
    heads: usize,
    q: usize,
    mask_batched: bool,
}

impl MaskedSoftmax {
    /// The mask row for score row `r` (rows run over batch, head, query).
    fn mask_row<'a>(&self, mask: &'a [f32], r: usize, k: usize) -> &'a [f32] {
        let batch = r / (self.heads * self.q);
        let query = r % self.q;
        let row = if self.mask_batched {
            batch * self.q + query
        } else {
            query
        };
        &mask[row * k..(row + 1) * k]
    }
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "fused-masked-softmax"
    }

    fn cpu_fwd(&self, ss: &CpuStorage, sl: &Layout, ms: &CpuStorage, ml: &Layout) -> Result<(CpuStorage, Shape)> {
        let (scores, mask) = (f32s(ss, sl, "scores")?, f32s(ms, ml, "mask")?);
        let k = *sl.dims().last().expect("rank 4");
        let mut out = vec![0f32; scores.len()];
        out.par_chunks_mut(k)
            .zip(scores.par_chunks(k))
            .enumerate()
            .for_each(|(r, (o, s))| {
                o.copy_from_slice(s);
                masked_softmax_row(o, self.mask_row(mask, r, k), self.scale);
            });
        Ok((CpuStorage::F32(out), sl.shape().clone()))
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = y.apply_op2_no_bwd(&dy.contiguous()?, &SoftmaxGrad { scale: self.scale })?;
        Ok((Some(grad), None))
    }
}

/// d(scores) = scale · y · (dy − Σ dy·y), row by row.
struct SoftmaxGrad {
    scale: f32,
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "fused-masked-softmax-grad"
    }

    fn cpu_fwd(&self, ys: &CpuStorage, yl: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (y, dy) = (f32s(ys, yl, "softmax")?, f32s(gs, gl, "grad")?);
        let k = *yl.dims().last().expect("rank 4");
        let mut out = vec![0f32; y.len()];
        out.par_chunks_mut(k)
            .zip(y.par_chunks(k).zip(dy.par_chunks(k)))
            .for_each(|(o, (y, g))| {
                let dot = fastmath::dot(y, g);
                for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
                    *o = self.scale * y * (g - dot);
                }
            });
        Ok((CpuStorage::F32(out), yl.shape().clone()))
    }
}

/// The hyper-parameters of one AdamW update of one tensor (bias corrections folded in by the caller).
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub decay: f32,
    /// 1 − beta1^t and sqrt(1 − beta2^t).
    pub bc1: f32,
    pub bc2_sqrt: f32,
}

/// AdamW in place on contiguous f32 CPU tensors, as PyTorch's (non-foreach) loop computes it:
/// m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g²; p = p·(1 − lr·decay) − lr/bc1 · m / (sqrt(v)/bc2_sqrt + eps).
/// Three passes, no temporaries, where the composite ops make a dozen full-size tensors per parameter.
pub fn adamw_update(p: &Tensor, m: &Tensor, v: &Tensor, g: &Tensor, h: AdamWStep) -> Result<()> {
    let g = g.contiguous()?;
    m.inplace_op2(
        &g,
        &Moment {
            beta: h.beta1,
            square: false,
        },
    )?;
    v.inplace_op2(
        &g,
        &Moment {
            beta: h.beta2,
            square: true,
        },
    )?;
    p.inplace_op3(m, v, &AdamWApply(h))
}

fn f32s_mut<'a>(s: &'a mut CpuStorage, l: &Layout, what: &str) -> Result<&'a mut [f32]> {
    let CpuStorage::F32(data) = s else {
        bail!("{what}: the fused CPU kernels take f32")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&mut data[a..b]),
        None => bail!("{what}: must be contiguous"),
    }
}

/// `x = β·x + (1−β)·g` (or `g²`).
struct Moment {
    beta: f32,
    square: bool,
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "fused-adamw-moment"
    }

    fn cpu_fwd(&self, xs: &mut CpuStorage, xl: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<()> {
        let (x, g) = (f32s_mut(xs, xl, "moment")?, f32s(gs, gl, "grad")?);
        let (beta, rest, square) = (self.beta, 1.0 - self.beta, self.square);
        let chunk = elements_per_task(x.len());
        x.par_chunks_mut(chunk).zip(g.par_chunks(chunk)).for_each(|(x, g)| {
            for (x, &g) in x.iter_mut().zip(g) {
                *x = beta * *x + rest * if square { g * g } else { g };
            }
        });
        Ok(())
    }
}

struct AdamWApply(AdamWStep);

impl InplaceOp3 for AdamWApply {
    fn name(&self) -> &'static str {
        "fused-adamw-apply"
    }

    fn cpu_fwd(
        &self,
        ps: &mut CpuStorage,
        pl: &Layout,
        ms: &CpuStorage,
        ml: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<()> {
        let h = self.0;
        let (p, m, v) = (f32s_mut(ps, pl, "param")?, f32s(ms, ml, "m")?, f32s(vs, vl, "v")?);
        let (keep, step) = (1.0 - h.lr * h.decay, h.lr / h.bc1);
        let chunk = elements_per_task(p.len());
        p.par_chunks_mut(chunk)
            .zip(m.par_chunks(chunk).zip(v.par_chunks(chunk)))
            .for_each(|(p, (m, v))| {
                for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
                    *p = *p * keep - step * (m / (v.sqrt() / h.bc2_sqrt + h.eps));
                }
            });
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ops::tests::max_abs_diff;
    use candle_core::{Device, Var, D};

    pub(crate) fn randn(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        // A fixed pseudo-random fill, so failures reproduce.
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 4.0 - 2.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// The model's own dense mask: causal, padded keys hidden, and a sliding window where given.
    pub(super) fn model_mask(t: usize, window: Option<usize>, lengths: &[usize]) -> Tensor {
        let lens: Vec<f32> = lengths.iter().map(|&l| l as f32).collect();
        let lens = Tensor::from_vec(lens, (lengths.len(), 1, 1), &Device::Cpu).unwrap();
        crate::attention::additive_mask(0..t, 0..t, window, Some(&lens), &Device::Cpu).unwrap()
    }

    /// Value and gradients of `f` on vars made from `inputs`, against the weights `probe` (so the gradient of a
    /// non-scalar output is tested in every direction at once).
    pub(super) fn value_and_grads(
        inputs: &[Tensor],
        probe: &Tensor,
        f: impl Fn(&[Tensor]) -> Result<Tensor>,
    ) -> Vec<Tensor> {
        let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let xs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&xs).unwrap();
        let loss = (y.clone() * probe).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let mut out = vec![y];
        out.extend(vars.iter().map(|v| grads.get(v).expect("a gradient").clone()));
        out
    }

    pub(super) fn assert_close(fused: &[Tensor], composite: &[Tensor], tol: f32) {
        for (i, (a, b)) in fused.iter().zip(composite).enumerate() {
            let d = max_abs_diff(a, b);
            assert!(d < tol, "output {i} (0 = value, then gradients) differs by {d}");
        }
    }

    #[test]
    fn rms_norm_matches_the_composite_op_in_value_and_gradient() {
        for offset in [0.0f32, 1.0] {
            let (x, w) = (randn(&[3, 5, 64], 1), randn(&[64], 2));
            let probe = randn(&[3, 5, 64], 3);
            let fused = value_and_grads(&[x.clone(), w.clone()], &probe, |t| {
                rms_norm(&t[0], &t[1], offset, 1e-6)
            });
            let composite = value_and_grads(&[x, w], &probe, |t| {
                let ms = t[0].sqr()?.mean_keepdim(D::Minus1)?;
                t[0].broadcast_div(&(ms + 1e-6)?.sqrt()?)?
                    .broadcast_mul(&(&t[1] + offset as f64)?)
            });
            assert_close(&fused, &composite, 1e-4);
        }
    }

    #[test]
    fn masked_softmax_matches_the_composite_op_with_a_shared_or_batched_mask() {
        let scores = randn(&[2, 3, 7, 7], 4);
        let causal: Vec<f32> = (0..49)
            .map(|i| if i % 7 > i / 7 { f32::NEG_INFINITY } else { 0.0 })
            .collect();
        let shared = Tensor::from_vec(causal.clone(), (1, 1, 7, 7), &Device::Cpu).unwrap();
        let mut padded = causal.clone();
        padded.extend(
            causal
                .iter()
                .enumerate()
                .map(|(i, &m)| if i % 7 == 0 && i > 0 { f32::NEG_INFINITY } else { m }),
        );
        let batched = Tensor::from_vec(padded, (2, 1, 7, 7), &Device::Cpu).unwrap();
        let probe = randn(&[2, 3, 7, 7], 5);
        for mask in [shared, batched] {
            let scale = 0.125f32;
            let fused = value_and_grads(std::slice::from_ref(&scores), &probe, |t| {
                masked_softmax(&t[0], &mask, scale)
            });
            let composite = value_and_grads(std::slice::from_ref(&scores), &probe, |t| {
                crate::ops::softmax_last_dim(&(&t[0] * scale as f64)?.broadcast_add(&mask)?)
            });
            assert_close(&fused, &composite, 1e-5);
        }
    }

    #[test]
    fn swiglu_matches_the_composite_op_in_value_and_gradient() {
        let (g, u) = (randn(&[4, 9, 300], 6), randn(&[4, 9, 300], 7));
        let probe = randn(&[4, 9, 300], 8);
        let fused = value_and_grads(&[g.clone(), u.clone()], &probe, |t| swiglu(&t[0], &t[1]));
        let composite = value_and_grads(&[g, u], &probe, |t| t[0].silu()? * &t[1]);
        assert_close(&fused, &composite, 1e-4);
    }

    #[test]
    fn gradients_match_finite_differences() {
        // d/dx_i of sum(probe * f(x)) by central differences, for one input element of each op.
        let check = |inputs: Vec<Tensor>, which: usize, f: &dyn Fn(&[Tensor]) -> Result<Tensor>| {
            let probe = randn(inputs[0].dims(), 9);
            let grads = value_and_grads(&inputs, &probe, f);
            let analytic = grads[1 + which].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let base = inputs[which].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for i in [0, base.len() / 2, base.len() - 1] {
                let eval = |delta: f32| {
                    let mut v = base.clone();
                    v[i] += delta;
                    let mut xs = inputs.clone();
                    xs[which] = Tensor::from_vec(v, inputs[which].shape(), &Device::Cpu).unwrap();
                    (f(&xs).unwrap() * &probe)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap()
                };
                let numeric = (eval(1e-2) - eval(-1e-2)) / 2e-2;
                let tol = 2e-2 * (1.0 + numeric.abs());
                assert!(
                    (numeric - analytic[i]).abs() < tol,
                    "element {i}: {numeric} vs {}",
                    analytic[i]
                );
            }
        };
        let mask = Tensor::zeros((1, 1, 4, 4), DType::F32, &Device::Cpu).unwrap();
        check(vec![randn(&[2, 8], 10), randn(&[8], 11)], 0, &|t| {
            rms_norm(&t[0], &t[1], 0.0, 1e-6)
        });
        check(vec![randn(&[2, 8], 10), randn(&[8], 11)], 1, &|t| {
            rms_norm(&t[0], &t[1], 1.0, 1e-6)
        });
        check(vec![randn(&[1, 2, 4, 4], 12)], 0, &|t| {
            masked_softmax(&t[0], &mask, 0.5)
        });
        check(vec![randn(&[3, 5], 13), randn(&[3, 5], 14)], 0, &|t| {
            swiglu(&t[0], &t[1])
        });
        check(vec![randn(&[3, 5], 13), randn(&[3, 5], 14)], 1, &|t| {
            swiglu(&t[0], &t[1])
        });
        // Rope's output is the input transposed (seq and heads): equal sizes keep the probe's shape valid.
        let angles = randn(&[3, 2], 15);
        let angles = Tensor::cat(&[&angles, &angles], 1).unwrap();
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        check(vec![randn(&[2, 3, 3, 4], 16)], 0, &|t| rope_heads(&t[0], &cos, &sin));
    }

    #[test]
    fn adamw_in_place_matches_the_composite_update() {
        let (p0, g) = (randn(&[1000, 3], 20), randn(&[1000, 3], 21));
        let h = AdamWStep {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            decay: 0.1,
            bc1: 0.19,
            bc2_sqrt: 0.0447,
        };
        let m0 = (randn(&[1000, 3], 22) * 0.1).unwrap();
        let v0 = randn(&[1000, 3], 23).sqr().unwrap();
        let scaled = |t: &Tensor, k: f32| (t * k as f64).unwrap();
        let m = scaled(&m0, h.beta1).add(&scaled(&g, 1.0 - h.beta1)).unwrap();
        let v = scaled(&v0, h.beta2)
            .add(&scaled(&g.sqr().unwrap(), 1.0 - h.beta2))
            .unwrap();
        let denom = ((v.sqrt().unwrap() / h.bc2_sqrt as f64).unwrap() + h.eps as f64).unwrap();
        let update = scaled(&m.div(&denom).unwrap(), h.lr / h.bc1);
        let expected = scaled(&p0, 1.0 - h.lr * h.decay).sub(&update).unwrap();
        let (p, mi, vi) = (p0.copy().unwrap(), m0.copy().unwrap(), v0.copy().unwrap());
        adamw_update(&p, &mi, &vi, &g, h).unwrap();
        assert!(max_abs_diff(&p, &expected) < 1e-6);
        assert!(max_abs_diff(&mi, &m) < 1e-7 && max_abs_diff(&vi, &v) < 1e-7);
    }
}
