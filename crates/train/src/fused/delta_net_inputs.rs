//! A Gated DeltaNet layer's delta-rule inputs in one op on the CPU, from the layer's q/k/v projection: the causal
//! depthwise convolution and SiLU over it, q and k L2-normalised (q also scaled by 1/sqrt(dk)) and repeated for
//! each value head, v, and the decays g and write strengths β beside them, in the packed layout the fused rule
//! reads (`crate::delta_rule::pack`). Composite, these are a dozen candle nodes, each keeping its operands for the
//! backward pass: the convolution's padded input, its output and SiLU, q and k per value head before and after
//! their norm, and the packing's inputs. This op keeps its input and its output only (at the Qwen3.5-0.8B shape
//! about 50K values per token and layer fewer); its backward pass recomputes the convolution and the norms.

use super::{f32s, rows_per_task, with_values};
use crate::config::DeltaNetShape;
use candle_core::{bail, CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Values per (position, value head) of the output: q, k, v, g, β.
fn width(d: DeltaNetShape) -> usize {
    2 * d.key_dim + d.value_dim + 2
}

/// The packed rule inputs (batch, seq, value heads, 2·dk + dv + 2) from `qkv` (batch, seq, channels), the
/// convolution `weight` (channels, 1, kernel) and `gb`, g and β stacked last (batch, seq, value heads, 2); all f32 on
/// the CPU, no convolution bias, no cache (a training or probing pass).
pub fn delta_net_inputs(qkv: &Tensor, weight: &Tensor, gb: &Tensor, dims: DeltaNetShape) -> Result<Tensor> {
    let (b, t, channels) = qkv.dims3()?;
    let fits = channels == dims.conv_width()
        && weight.elem_count() == channels * dims.kernel
        && gb.dims4()? == (b, t, dims.value_heads, 2)
        && dims.key_heads > 0
        && dims.value_heads % dims.key_heads == 0;
    if !fits {
        bail!(
            "delta_net_inputs: qkv {:?}, weight {:?} and gb {:?} do not fit {dims:?}",
            qkv.shape(),
            weight.shape(),
            gb.shape()
        )
    }
    let (qkv, weight, gb) = (qkv.contiguous()?, weight.contiguous()?, gb.contiguous()?);
    qkv.apply_op3(&weight, &gb, InputsOp { dims })
}

struct InputsOp {
    dims: DeltaNetShape,
}

impl CustomOp3 for InputsOp {
    fn name(&self) -> &'static str {
        "fused-delta-net-inputs"
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
        let (x, w, gb) = (
            f32s(xs, xl, "delta net projection")?,
            f32s(ws, wl, "delta net convolution weight")?,
            f32s(gs, gl, "delta net decays")?,
        );
        let d = self.dims;
        let (b, t, _) = xl.shape().dims3()?;
        let (c, width, hv) = (d.conv_width(), width(d), d.value_heads);
        let w = &taps(d, w);
        let mut out = vec![0f32; b * t * hv * width];
        let task = rows_per_task(b * t);
        out.par_chunks_mut(task * hv * width).enumerate().for_each(|(n, rows)| {
            let mut s = vec![0f32; c];
            for (i, row) in rows.chunks_exact_mut(hv * width).enumerate() {
                let r = n * task + i;
                conv_row(d, x, w, t, r, &mut s);
                s.iter_mut().for_each(|v| *v = silu(*v));
                write_row(d, &s, &gb[r * hv * 2..][..hv * 2], row);
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, t, hv, width))))
    }

    fn bwd(
        &self,
        qkv: &Tensor,
        weight: &Tensor,
        gb: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // An input that wants no gradient gets none: candle would keep it, activation-sized, until the backward
        // pass ends.
        let d = self.dims;
        let (b, t, c) = qkv.dims3()?;
        let grad = grad.contiguous()?;
        let w = with_values(&[weight], |v| Ok(taps(d, v[0])))?;
        let (dy, dgb) = with_values(&[qkv, &grad], |v| Ok(conv_output_grads(d, v[0], &w, v[1], t)))?;
        let dx = match qkv.track_op() {
            true => Some(Tensor::from_vec(
                input_gradient(d, &w, &dy, b * t, t),
                (b, t, c),
                &Device::Cpu,
            )?),
            false => None,
        };
        let dw = match weight.track_op() {
            true => {
                let dw = with_values(&[qkv], |v| Ok(weight_gradient(d, v[0], &dy, t)))?;
                Some(Tensor::from_vec(dw, weight.shape(), &Device::Cpu)?)
            }
            false => None,
        };
        let dgb = match gb.track_op() {
            true => Some(Tensor::from_vec(dgb, (b, t, d.value_heads, 2), &Device::Cpu)?),
            false => None,
        };
        Ok((dx, dw, dgb))
    }
}

fn silu(y: f32) -> f32 {
    y / (1.0 + (-y).exp())
}

/// The convolution weight (channels, kernel) as taps (kernel, channels), so each tap is one contiguous run over
/// the channels.
fn taps(d: DeltaNetShape, w: &[f32]) -> Vec<f32> {
    let (c, k) = (d.conv_width(), d.kernel);
    let mut taps = vec![0f32; k * c];
    for ch in 0..c {
        for j in 0..k {
            taps[j * c + ch] = w[ch * k + j];
        }
    }
    taps
}

/// Row `r` (batch · t + position) of the causal depthwise convolution into `y` (channels), with the weight as
/// [`taps`]: position p reads inputs p − kernel + 1 ..= p of its own sequence, zeros before the first.
fn conv_row(d: DeltaNetShape, x: &[f32], w: &[f32], t: usize, r: usize, y: &mut [f32]) {
    let (c, k) = (d.conv_width(), d.kernel);
    let (seq_start, p) = (r - r % t, r % t);
    y.iter_mut().for_each(|v| *v = 0.0);
    for j in 0..k {
        // Tap j reads position p − (k − 1 − j).
        let Some(src) = (p + j).checked_sub(k - 1) else {
            continue;
        };
        let xs = &x[(seq_start + src) * c..][..c];
        for ((y, w), x) in y.iter_mut().zip(&w[j * c..][..c]).zip(xs) {
            *y += w * x;
        }
    }
}

/// `x / sqrt(Σ x² + 1e-6)`'s norm, as `crate::delta_rule::l2_normalize` takes it.
fn norm(x: &[f32]) -> f32 {
    (x.iter().map(|v| v * v).sum::<f32>() + 1e-6).sqrt()
}

/// One position's output rows (value heads × width) from its convolved, SiLU'd channels `s` and its g, β.
fn write_row(d: DeltaNetShape, s: &[f32], gb: &[f32], out: &mut [f32]) {
    let (dk, dv, width) = (d.key_dim, d.value_dim, width(d));
    let rep = d.value_heads / d.key_heads;
    let keys = d.key_heads * dk;
    let scale = 1.0 / (dk as f32).sqrt();
    for (hv, row) in out.chunks_exact_mut(width).enumerate() {
        let kh = hv / rep;
        let (q, k) = (&s[kh * dk..][..dk], &s[keys + kh * dk..][..dk]);
        let (nq, nk) = (norm(q), norm(k));
        for i in 0..dk {
            row[i] = q[i] / nq * scale;
            row[dk + i] = k[i] / nk;
        }
        row[2 * dk..2 * dk + dv].copy_from_slice(&s[2 * keys + hv * dv..][..dv]);
        row[width - 2..].copy_from_slice(&gb[hv * 2..][..2]);
    }
}

/// The gradient at the convolution's output (before SiLU), batch × t × channels, and g's and β's, from the output
/// gradient `grad`: the norms' and the SiLU's backward, recomputing the convolution row by row.
fn conv_output_grads(d: DeltaNetShape, x: &[f32], w: &[f32], grad: &[f32], t: usize) -> (Vec<f32>, Vec<f32>) {
    let (c, width, hv) = (d.conv_width(), width(d), d.value_heads);
    let rows = x.len() / c;
    let mut dy = vec![0f32; rows * c];
    let mut dgb = vec![0f32; rows * hv * 2];
    let task = rows_per_task(rows);
    dy.par_chunks_mut(task * c)
        .zip(dgb.par_chunks_mut(task * hv * 2))
        .enumerate()
        .for_each(|(n, (dys, dgbs))| {
            let mut y = vec![0f32; c];
            for (i, (dy, dgb)) in dys.chunks_exact_mut(c).zip(dgbs.chunks_exact_mut(hv * 2)).enumerate() {
                let r = n * task + i;
                let g = &grad[r * hv * width..][..hv * width];
                for (h, gh) in g.chunks_exact(width).enumerate() {
                    dgb[h * 2..][..2].copy_from_slice(&gh[width - 2..]);
                }
                conv_row(d, x, w, t, r, &mut y);
                row_grad(d, &y, g, dy);
            }
        });
    (dy, dgb)
}

/// One position's gradient at the convolution output into `dy` from its output rows' gradient `g`, given the
/// convolution output `y`.
fn row_grad(d: DeltaNetShape, y: &[f32], g: &[f32], dy: &mut [f32]) {
    let (dk, dv, width) = (d.key_dim, d.value_dim, width(d));
    let rep = d.value_heads / d.key_heads;
    let keys = d.key_heads * dk;
    let s: Vec<f32> = y.iter().map(|&v| silu(v)).collect();
    dy.iter_mut().for_each(|v| *v = 0.0);
    // ds for v (one value head each), and for q and k summed over the value heads that share them.
    for (hv, gh) in g.chunks_exact(width).enumerate() {
        let kh = hv / rep;
        for i in 0..dk {
            dy[kh * dk + i] += gh[i];
            dy[keys + kh * dk + i] += gh[dk + i];
        }
        dy[2 * keys + hv * dv..][..dv].copy_from_slice(&gh[2 * dk..2 * dk + dv]);
    }
    let scale = 1.0 / (dk as f32).sqrt();
    for kh in 0..d.key_heads {
        for (at, factor) in [(kh * dk, scale), (keys + kh * dk, 1.0)] {
            // out = factor · x / n: dx = factor · (dout − x̂ (x̂ · dout)) / n, with x̂ = x / n.
            let x = &s[at..at + dk];
            let n = norm(x);
            let dot: f32 = x.iter().zip(&dy[at..at + dk]).map(|(a, b)| a * b).sum::<f32>() / n;
            for i in 0..dk {
                dy[at + i] = factor * (dy[at + i] - x[i] / n * dot) / n;
            }
        }
    }
    // Through the SiLU: silu'(y) = σ(y)·(1 + y·(1 − σ(y))).
    for (dv, &v) in dy.iter_mut().zip(y) {
        let sig = 1.0 / (1.0 + (-v).exp());
        *dv *= sig * (1.0 + v * (1.0 - sig));
    }
}

/// The convolution weight's gradient (channels × kernel) from the output gradient `dy` and the input `x`.
fn weight_gradient(d: DeltaNetShape, x: &[f32], dy: &[f32], t: usize) -> Vec<f32> {
    let (c, k) = (d.conv_width(), d.kernel);
    let rows = x.len() / c;
    let taps = (0..rows)
        .into_par_iter()
        .fold(
            || vec![0f32; c * k],
            |mut dw, r| {
                let (seq_start, p) = (r - r % t, r % t);
                let g = &dy[r * c..][..c];
                for j in 0..k {
                    let Some(src) = (p + j).checked_sub(k - 1) else {
                        continue;
                    };
                    let xs = &x[(seq_start + src) * c..][..c];
                    for ((dw, g), x) in dw[j * c..][..c].iter_mut().zip(g).zip(xs) {
                        *dw += g * x;
                    }
                }
                dw
            },
        )
        .reduce(
            || vec![0f32; c * k],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        );
    // Taps (kernel, channels) back to the weight's (channels, kernel).
    (0..c * k).map(|i| taps[(i % k) * c + i / k]).collect()
}

/// The convolution's input gradient (rows × channels) from the output gradient `dy`; `w` as [`taps`].
fn input_gradient(d: DeltaNetShape, w: &[f32], dy: &[f32], rows: usize, t: usize) -> Vec<f32> {
    let (c, k) = (d.conv_width(), d.kernel);
    let mut dx = vec![0f32; rows * c];
    let task = rows_per_task(rows);
    dx.par_chunks_mut(task * c).enumerate().for_each(|(n, dxs)| {
        for (i, dx) in dxs.chunks_exact_mut(c).enumerate() {
            let r = n * task + i;
            let (seq_start, p) = (r - r % t, r % t);
            // Input p feeds output p + (k − 1 − j) through tap j.
            for j in 0..k {
                let out = p + k - 1 - j;
                if out >= t {
                    continue;
                }
                let g = &dy[(seq_start + out) * c..][..c];
                for ((dx, w), g) in dx.iter_mut().zip(&w[j * c..][..c]).zip(g) {
                    *dx += w * g;
                }
            }
        }
    });
    dx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta_rule::{l2_normalize, pack, RuleInputs};
    use crate::fused::tests::randn;
    use crate::ops::tests::{assert_same_gradients, max_abs_diff};
    use candle_core::Var;

    const DIMS: DeltaNetShape = DeltaNetShape {
        key_heads: 2,
        value_heads: 4,
        key_dim: 8,
        value_dim: 6,
        kernel: 4,
    };

    /// The same inputs from candle's composite ops, as the model's device-generic path makes them.
    fn composite(qkv: &Tensor, weight: &Tensor, gb: &Tensor) -> Tensor {
        let d = DIMS;
        let (b, t, c) = qkv.dims3().unwrap();
        let padded = qkv.pad_with_zeros(1, d.kernel - 1, 0).unwrap();
        let w = weight.reshape((c, d.kernel)).unwrap();
        let tap = |j: usize| {
            let w = w.narrow(1, j, 1).unwrap().squeeze(1).unwrap();
            padded.narrow(1, j, t).unwrap().broadcast_mul(&w).unwrap()
        };
        let y = (1..d.kernel).fold(tap(0), |y, j| (y + tap(j)).unwrap());
        let s = y.silu().unwrap();
        let keys = d.key_heads * d.key_dim;
        let rep = d.value_heads / d.key_heads;
        let per_value_head = |x: Tensor| {
            x.reshape((b, t, d.key_heads, 1, d.key_dim))
                .unwrap()
                .broadcast_as((b, t, d.key_heads, rep, d.key_dim))
                .unwrap()
                .reshape((b, t, d.value_heads, d.key_dim))
                .unwrap()
        };
        let q = l2_normalize(&per_value_head(s.narrow(2, 0, keys).unwrap())).unwrap();
        let q = (q * (1.0 / (d.key_dim as f64).sqrt())).unwrap();
        let k = l2_normalize(&per_value_head(s.narrow(2, keys, keys).unwrap())).unwrap();
        let v = s
            .narrow(2, 2 * keys, d.value_heads * d.value_dim)
            .unwrap()
            .reshape((b, t, d.value_heads, d.value_dim))
            .unwrap();
        let (g, beta) = (
            gb.narrow(3, 0, 1).unwrap().squeeze(3).unwrap(),
            gb.narrow(3, 1, 1).unwrap().squeeze(3).unwrap(),
        );
        pack(RuleInputs {
            q: &q,
            k: &k,
            v: &v,
            g: &g,
            beta: &beta,
        })
        .unwrap()
    }

    #[test]
    fn one_op_gives_the_composite_inputs_and_gradients() {
        // Two sequences of 70 positions (so the convolution's window crosses from one row to the next only within
        // a sequence), two value heads per key head; the weight trained and frozen.
        let (b, t) = (2, 70);
        let c = DIMS.conv_width();
        // Each of the projection and the weight trained or not (a frozen projection below the lowest trained
        // layer's other inputs gets no gradient).
        for (qkv_trains, weight_trains) in [(true, true), (true, false), (false, true)] {
            let tracked = |x: Tensor, trains: bool| match trains {
                true => Var::from_tensor(&x).unwrap().as_tensor().clone(),
                false => x,
            };
            let qkv = tracked(randn(&[b, t, c], 1), qkv_trains);
            let weight = tracked(randn(&[c, 1, DIMS.kernel], 2), weight_trains);
            let gb = tracked(randn(&[b, t, DIMS.value_heads, 2], 3), true);
            let fused = delta_net_inputs(&qkv, &weight, &gb, DIMS).unwrap();
            let reference = composite(&qkv, &weight, &gb);
            let d = max_abs_diff(&fused, &reference);
            assert!(d < 1e-5, "values differ by {d}");
            let probe = randn(fused.dims(), 4);
            let loss = |x: &Tensor| (x * &probe).unwrap().sum_all().unwrap();
            let (gf, gr) = (loss(&fused).backward().unwrap(), loss(&reference).backward().unwrap());
            assert_same_gradients(&gf, &gr, &[("qkv", &qkv), ("gb", &gb), ("weight", &weight)], 1e-4);
        }
    }
}
