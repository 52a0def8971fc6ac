//! AdamW with 8-bit moments (`optimizer = "adamw8bit"`), as bitsandbytes' blockwise `AdamW8bit` keeps them: each
//! moment in blocks of 256 values, one f32 absolute maximum per block and one byte per value, an index into
//! bitsandbytes' dynamic quantization map (signed for the first moment, unsigned for the second). Each update
//! dequantizes a block, applies torch's AdamW formula in f32, and quantizes the new moments to the nearest map value
//! against the block's new maximum. Tensors under 4096 values (norms, biases) keep f32 moments, as bitsandbytes does.
//! 2.03 bytes of state a parameter instead of 8.
//!
//! The update runs on the host over every core. On the CPU it works in place on the parameter; on a GPU the
//! parameter and its gradient make one round trip to the host per step, and the moments never take device memory.

use candle_core::{CpuStorage, Device, InplaceOp2, Layout, Result, Tensor, Var};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

/// Values per quantization block.
pub const BLOCK: usize = 256;
/// Tensors with fewer values keep f32 moments.
pub const MIN_8BIT_VALUES: usize = 4096;

/// bitsandbytes' `create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)`, sorted: for each decade
/// 10^-6 .. 10^0, the midpoints of an even split of [0.1, 1] scaled into it, twice as many per decade going up
/// (and, unsigned, twice as many again, with no negatives), then 0 and 1.
fn dynamic_map(signed: bool) -> [f32; 256] {
    let mut data: Vec<f64> = Vec::with_capacity(256);
    for i in 0..7i32 {
        let items = if signed {
            (1usize << i) + 1
        } else {
            (1usize << (i + 1)) + 1
        };
        let step = 0.9 / (items - 1) as f64;
        let scale = 10f64.powi(i - 6);
        for k in 0..items - 1 {
            let mean = (0.1 + step * k as f64 + 0.1 + step * (k + 1) as f64) / 2.0;
            data.push(scale * mean);
            if signed {
                data.push(-scale * mean);
            }
        }
    }
    data.push(0.0);
    data.push(1.0);
    data.sort_by(f64::total_cmp);
    let mut out = [0f32; 256];
    for (o, v) in out.iter_mut().zip(&data) {
        *o = *v as f32;
    }
    out
}

fn maps() -> &'static ([f32; 256], [f32; 256]) {
    static MAPS: OnceLock<([f32; 256], [f32; 256])> = OnceLock::new();
    MAPS.get_or_init(|| (dynamic_map(true), dynamic_map(false)))
}

/// The index of the map value nearest `x` (the map is sorted).
fn nearest(map: &[f32; 256], x: f32) -> u8 {
    let hi = map.partition_point(|&c| c < x).min(255);
    if hi == 0 {
        return 0;
    }
    let lo = hi - 1;
    if (x - map[lo]).abs() <= (map[hi] - x).abs() {
        lo as u8
    } else {
        hi as u8
    }
}

/// One tensor's moments.
#[derive(Clone)]
pub enum MomentState {
    Full {
        m: Vec<f32>,
        v: Vec<f32>,
    },
    Blockwise {
        m: Vec<u8>,
        v: Vec<u8>,
        m_max: Vec<f32>,
        v_max: Vec<f32>,
    },
}

#[derive(Clone)]
pub struct Moments8 {
    pub state: MomentState,
    pub step: u64,
}

impl Moments8 {
    /// Zero moments for a tensor of `n` values.
    pub fn zeros(n: usize) -> Moments8 {
        let state = if n < MIN_8BIT_VALUES {
            MomentState::Full {
                m: vec![0.0; n],
                v: vec![0.0; n],
            }
        } else {
            let blocks = n.div_ceil(BLOCK);
            // Zero maxima make every code dequantize to 0.
            MomentState::Blockwise {
                m: vec![0; n],
                v: vec![0; n],
                m_max: vec![0.0; blocks],
                v_max: vec![0.0; blocks],
            }
        };
        Moments8 { state, step: 0 }
    }
}

impl Moments8 {
    /// The tensors a checkpoint saves: f32 moments as `m.<name>` / `v.<name>` (as AdamW saves them), blockwise ones
    /// as their codes `m8.<name>` / `v8.<name>` (u8) and block maxima `mmax.<name>` / `vmax.<name>` (f32); the step
    /// count as `t.<name>`.
    pub fn save(&self, name: &str, out: &mut BTreeMap<String, Tensor>) -> Result<()> {
        let cpu = &Device::Cpu;
        match &self.state {
            MomentState::Full { m, v } => {
                out.insert(format!("m.{name}"), Tensor::from_slice(m, m.len(), cpu)?);
                out.insert(format!("v.{name}"), Tensor::from_slice(v, v.len(), cpu)?);
            }
            MomentState::Blockwise { m, v, m_max, v_max } => {
                out.insert(format!("m8.{name}"), Tensor::from_slice(m, m.len(), cpu)?);
                out.insert(format!("v8.{name}"), Tensor::from_slice(v, v.len(), cpu)?);
                out.insert(format!("mmax.{name}"), Tensor::from_slice(m_max, m_max.len(), cpu)?);
                out.insert(format!("vmax.{name}"), Tensor::from_slice(v_max, v_max.len(), cpu)?);
            }
        }
        out.insert(format!("t.{name}"), Tensor::new(self.step as i64, cpu)?);
        Ok(())
    }

    /// The moments [`Moments8::save`] wrote for `name` (f32 ones from an AdamW checkpoint too), if any.
    /// `default_step` is the step count of checkpoints that lack `t.<name>`.
    pub fn load(name: &str, tensors: &BTreeMap<String, Tensor>, default_step: u64) -> Result<Option<Moments8>> {
        let get = |prefix: &str| tensors.get(&format!("{prefix}.{name}")).map(|t| t.flatten_all());
        let state = match (get("m8"), get("v8"), get("mmax"), get("vmax"), get("m"), get("v")) {
            (Some(m), Some(v), Some(mm), Some(vm), _, _) => MomentState::Blockwise {
                m: m?.to_vec1::<u8>()?,
                v: v?.to_vec1::<u8>()?,
                m_max: mm?.to_vec1::<f32>()?,
                v_max: vm?.to_vec1::<f32>()?,
            },
            (_, _, _, _, Some(m), Some(v)) => MomentState::Full {
                m: m?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?,
                v: v?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?,
            },
            _ => return Ok(None),
        };
        let step = match tensors.get(&format!("t.{name}")) {
            Some(t) => t.to_dtype(candle_core::DType::I64)?.to_scalar::<i64>()? as u64,
            None => default_step,
        };
        Ok(Some(Moments8 { state, step }))
    }
}

/// The scalars of one update of one tensor (torch's AdamW: bias corrections of this tensor's step).
#[derive(Clone, Copy)]
pub struct Step8 {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub decay: f32,
    pub bc1: f32,
    pub bc2_sqrt: f32,
}

impl Step8 {
    /// One value's update: new moments, and the parameter moved.
    #[inline(always)]
    fn apply(&self, p: &mut f32, g: f32, m: f32, v: f32) -> (f32, f32) {
        let m = self.beta1 * m + (1.0 - self.beta1) * g;
        let v = self.beta2 * v + (1.0 - self.beta2) * g * g;
        *p *= 1.0 - self.lr * self.decay;
        *p -= self.lr / self.bc1 * m / (v.sqrt() / self.bc2_sqrt + self.eps);
        (m, v)
    }
}

/// Updates `p` from `g` and the moments in `s`, in place, over every core.
pub fn update(p: &mut [f32], g: &[f32], s: &mut MomentState, h: Step8) {
    match s {
        MomentState::Full { m, v } => {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                (*m, *v) = h.apply(p, g, *m, *v);
            }
        }
        MomentState::Blockwise { m, v, m_max, v_max } => {
            let (signed, unsigned) = maps();
            p.par_chunks_mut(BLOCK)
                .zip(g.par_chunks(BLOCK))
                .zip(m.par_chunks_mut(BLOCK).zip(v.par_chunks_mut(BLOCK)))
                .zip(m_max.par_iter_mut().zip(v_max.par_iter_mut()))
                .for_each(|(((p, g), (mc, vc)), (mmax, vmax))| {
                    let mut ms = [0f32; BLOCK];
                    let mut vs = [0f32; BLOCK];
                    let (mut new_mmax, mut new_vmax) = (0f32, 0f32);
                    for i in 0..p.len() {
                        let m = signed[mc[i] as usize] * *mmax;
                        let v = unsigned[vc[i] as usize] * *vmax;
                        (ms[i], vs[i]) = h.apply(&mut p[i], g[i], m, v);
                        new_mmax = new_mmax.max(ms[i].abs());
                        new_vmax = new_vmax.max(vs[i]);
                    }
                    for i in 0..p.len() {
                        mc[i] = if new_mmax > 0.0 {
                            nearest(signed, ms[i] / new_mmax)
                        } else {
                            nearest(signed, 0.0)
                        };
                        vc[i] = if new_vmax > 0.0 {
                            nearest(unsigned, vs[i] / new_vmax)
                        } else {
                            0
                        };
                    }
                    (*mmax, *vmax) = (new_mmax, new_vmax);
                });
        }
    }
}

/// The update as an in-place op on a CPU parameter (`p` and `g` contiguous f32).
struct InPlace<'a> {
    state: Mutex<&'a mut MomentState>,
    step: Step8,
}

impl InplaceOp2 for InPlace<'_> {
    fn name(&self) -> &'static str {
        "adamw8bit"
    }

    fn cpu_fwd(&self, ps: &mut CpuStorage, pl: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<()> {
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (ps, gs) else {
            candle_core::bail!("adamw8bit: parameters and gradients must be f32")
        };
        let (Some((pa, pb)), Some((ga, gb))) = (pl.contiguous_offsets(), gl.contiguous_offsets()) else {
            candle_core::bail!("adamw8bit: parameters and gradients must be contiguous")
        };
        let mut state = self.state.lock().expect("adamw8bit state");
        update(&mut p[pa..pb], &g[ga..gb], &mut state, self.step);
        Ok(())
    }
}

/// One update of `var`: in place on the CPU; through the host elsewhere.
pub fn step(var: &Var, g: &Tensor, s: &mut MomentState, h: Step8) -> Result<()> {
    let p = var.as_tensor();
    if p.device().is_cpu() && p.is_contiguous() {
        let g = g.contiguous()?;
        let op = InPlace {
            state: Mutex::new(s),
            step: h,
        };
        return p.inplace_op2(&g, &op);
    }
    let mut host = p.flatten_all()?.to_vec1::<f32>()?;
    let grad = g.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    update(&mut host, &grad, s, h);
    var.set(&Tensor::from_vec(host, p.shape(), p.device())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_maps_are_bitsandbytes_dynamic_maps() {
        let (signed, unsigned) = maps();
        // Signed: 127 negative values, 0, 127 positive values up to 1; symmetric.
        assert_eq!((signed[0], signed[127], signed[255]), (-0.99296875, 0.0, 1.0));
        assert!((1..127).all(|i| signed[127 - i] == -signed[127 + i]));
        // The smallest magnitudes: the midpoint of [0.1, 1] in the 1e-6 decade.
        assert_eq!(signed[128], 0.55e-6_f64 as f32);
        // Unsigned: 0, then 254 positive values, then 1.
        assert_eq!(
            (unsigned[0], unsigned[1], unsigned[255]),
            (0.0, 0.325e-6_f64 as f32, 1.0)
        );
        assert!(signed.windows(2).all(|w| w[0] < w[1]) && unsigned.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn the_fit_checks_state_size_is_what_the_moments_hold() {
        use freezetune_core::run_config::OptimizerKind;
        for n in [10usize, 4095, 4096, 4097, 11008 * 4096] {
            let held = match Moments8::zeros(n).state {
                MomentState::Full { m, v } => 4 * (m.len() + v.len()),
                MomentState::Blockwise { m, v, m_max, v_max } => m.len() + v.len() + 4 * (m_max.len() + v_max.len()),
            };
            assert_eq!(OptimizerKind::Adamw8bit.state_bytes(n as u64), held as u64, "{n}");
        }
    }

    #[test]
    fn nearest_picks_the_closest_map_value() {
        let (signed, _) = maps();
        for &x in &[-1.0f32, -0.5, -1e-7, 0.0, 3e-6, 0.02, 0.333, 0.999, 1.0] {
            let i = nearest(signed, x) as usize;
            let best = signed.iter().map(|c| (c - x).abs()).fold(f32::INFINITY, f32::min);
            assert_eq!((signed[i] - x).abs(), best, "{x}");
        }
    }

    #[test]
    fn blockwise_updates_track_f32_adamw() {
        let n = 3 * BLOCK + 17;
        let h = Step8 {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            decay: 0.01,
            bc1: 0.1,
            bc2_sqrt: 0.001f32.sqrt(),
        };
        let p0: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01).collect();
        let g: Vec<f32> = (0..n).map(|i| ((i * 53 % 97) as f32 - 48.0) * 1e-3).collect();
        let (mut p8, mut p32) = (p0.clone(), p0.clone());
        let blocks = n.div_ceil(BLOCK);
        let mut s8 = MomentState::Blockwise {
            m: vec![0; n],
            v: vec![0; n],
            m_max: vec![0.0; blocks],
            v_max: vec![0.0; blocks],
        };
        let mut s32 = MomentState::Full {
            m: vec![0.0; n],
            v: vec![0.0; n],
        };
        // Three steps: the second and third read moments the first quantized.
        for _ in 0..3 {
            update(&mut p8, &g, &mut s8, h);
            update(&mut p32, &g, &mut s32, h);
        }
        let moved: f32 = p32.iter().zip(&p0).map(|(a, b)| (a - b).abs()).sum();
        let diff: f32 = p8.iter().zip(&p32).map(|(a, b)| (a - b).abs()).sum();
        assert!(
            moved > 0.0 && diff < 0.02 * moved,
            "8-bit moments moved the update by {diff} of {moved}"
        );
    }
}
