//! Optimizers over the plan's trainable `Var`s only. AdamW follows `torch.optim.AdamW` exactly (decoupled weight
//! decay, bias-corrected moments); HF Trainer's grouping leaves biases and norm weights without decay.

use crate::adafactor::AdafactorState;
use crate::fused;
use crate::optim8::{Moments8, Step8};
use crate::optim_state::{SavedState, Tracked, TrackedView};
use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use freezetune_core::schedule::StatePolicy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// HF Trainer's grouping: no weight decay on biases and norm weights.
    pub no_decay_for_bias_and_norm: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            no_decay_for_bias_and_norm: true,
        }
    }
}

/// A parameter without weight decay under HF Trainer's grouping (`get_decay_parameter_names`, transformers 5.6):
/// its lowercased name contains "bias" (a Mamba or DeltaNet `dt_bias`, gpt-oss's `gate_up_proj_bias` too),
/// "layernorm" or "rmsnorm", or has a component `norm` or ending in `_norm`.
pub fn is_bias_or_norm(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let named = ["bias", "layernorm", "rmsnorm"].iter().any(|p| name.contains(p));
    named || name.split('.').any(|part| part == "norm" || part.ends_with("_norm"))
}

/// AdamW state of one tensor: its moments and its own step count, as torch keeps `state['step']` per parameter, so a
/// tensor that sits out phases of a layer schedule resumes its bias correction where it left off.
#[derive(Clone)]
pub struct Moments {
    pub m: Tensor,
    pub v: Tensor,
    pub step: u64,
}

pub enum Optimizer {
    Sgd {
        params: Vec<(String, Var)>,
        lr_scale: Vec<f64>,
    },
    AdamW {
        tracked: Tracked<Moments>,
        config: AdamWConfig,
    },
    /// Adafactor (adafactor.rs): factored second moments, no first moment.
    Adafactor {
        tracked: Tracked<AdafactorState>,
        weight_decay: f64,
        /// HF Trainer's grouping: no weight decay on biases and norm weights.
        no_decay_for_bias_and_norm: bool,
    },
    /// AdamW with 8-bit blockwise moments (optim8.rs), kept on the host.
    AdamW8bit {
        tracked: Tracked<Moments8>,
        config: AdamWConfig,
    },
}

/// The weight decay of parameter `name`: none for biases and norms under HF Trainer's grouping.
fn decay_for(name: &str, weight_decay: f64, no_decay_for_bias_and_norm: bool) -> f64 {
    if no_decay_for_bias_and_norm && is_bias_or_norm(name) {
        0.0
    } else {
        weight_decay
    }
}

impl Optimizer {
    pub fn sgd(params: Vec<(String, Var)>) -> Optimizer {
        let lr_scale = vec![1.0; params.len()];
        Optimizer::Sgd { params, lr_scale }
    }

    pub fn adamw(params: Vec<(String, Var)>, config: AdamWConfig) -> Optimizer {
        Optimizer::AdamW {
            tracked: Tracked::new(params),
            config,
        }
    }

    pub fn adafactor(params: Vec<(String, Var)>, weight_decay: f64, no_decay_for_bias_and_norm: bool) -> Optimizer {
        Optimizer::Adafactor {
            tracked: Tracked::new(params),
            weight_decay,
            no_decay_for_bias_and_norm,
        }
    }

    pub fn adamw8bit(params: Vec<(String, Var)>, config: AdamWConfig) -> Optimizer {
        Optimizer::AdamW8bit {
            tracked: Tracked::new(params),
            config,
        }
    }

    /// The run config's name of this optimizer.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Optimizer::Sgd { .. } => "sgd",
            Optimizer::AdamW { .. } => "adamw",
            Optimizer::Adafactor { .. } => "adafactor",
            Optimizer::AdamW8bit { .. } => "adamw8bit",
        }
    }

    /// The state-keeping part of a stateful optimizer, as its common view.
    fn common(&self) -> Option<&dyn TrackedView> {
        match self {
            Optimizer::Sgd { .. } => None,
            Optimizer::AdamW { tracked, .. } => Some(tracked),
            Optimizer::Adafactor { tracked, .. } => Some(tracked),
            Optimizer::AdamW8bit { tracked, .. } => Some(tracked),
        }
    }

    fn common_mut(&mut self) -> Option<&mut dyn TrackedView> {
        match self {
            Optimizer::Sgd { .. } => None,
            Optimizer::AdamW { tracked, .. } => Some(tracked),
            Optimizer::Adafactor { tracked, .. } => Some(tracked),
            Optimizer::AdamW8bit { tracked, .. } => Some(tracked),
        }
    }

    pub fn params(&self) -> &[(String, Var)] {
        match self {
            Optimizer::Sgd { params, .. } => params,
            other => other.common().expect("stateful").params(),
        }
    }

    /// Updates applied so far.
    pub fn steps_taken(&self) -> u64 {
        self.common().map_or(0, |t| t.steps())
    }

    /// Per-parameter learning-rate factors (aligned with [`Optimizer::params`]; 1 is the base rate).
    pub fn set_lr_scale(&mut self, scale: Vec<f64>) {
        match self {
            Optimizer::Sgd { lr_scale, .. } => *lr_scale = scale,
            other => other.common_mut().expect("stateful").set_lr_scale(scale),
        }
    }

    /// A schedule's phase change: `new` becomes the parameter list. With `Keep`, a tensor's moments leave with it
    /// (to the host) and come back when it trains again; with `Reset`, every tensor starts afresh, as BAdam does.
    pub fn switch_params(&mut self, new: Vec<(String, Var)>, policy: StatePolicy) -> Result<()> {
        match self {
            Optimizer::Sgd { params, lr_scale } => {
                *lr_scale = vec![1.0; new.len()];
                *params = new;
                Ok(())
            }
            other => other.common_mut().expect("stateful").switch(new, policy),
        }
    }

    /// The gradients of the optimizer's parameters, in its order, taken out of a backward pass's store.
    pub fn collect(&self, store: &GradStore) -> Vec<Option<Tensor>> {
        self.params()
            .iter()
            .map(|(_, v)| store.get(v.as_tensor()).cloned())
            .collect()
    }

    /// One update with learning rate `lr` from `grads` (aligned with [`Optimizer::params`]). Parameters without a
    /// gradient are left alone, as PyTorch does.
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        match self {
            Optimizer::Sgd { params, lr_scale } => {
                for (((_, var), g), k) in params.iter().zip(grads).zip(lr_scale.iter()) {
                    if let Some(g) = g {
                        var.set(&(var.as_tensor() - (g * (lr * k))?)?)?;
                    }
                }
                Ok(())
            }
            Optimizer::AdamW { tracked, config: c } => tracked.update(grads, lr, |name, var, g, s, lr| {
                let s = match s {
                    Some(s) => s,
                    None => Moments {
                        m: g.zeros_like()?,
                        v: g.zeros_like()?,
                        step: 0,
                    },
                };
                let decay = decay_for(name, c.weight_decay, c.no_decay_for_bias_and_norm);
                adamw_update(var, g, s, c, lr, decay)
            }),
            Optimizer::Adafactor {
                tracked,
                weight_decay,
                no_decay_for_bias_and_norm,
            } => tracked.update(grads, lr, |name, var, g, s, lr| {
                let s = match s {
                    Some(s) => s,
                    None => AdafactorState::zeros(g)?,
                };
                let decay = decay_for(name, *weight_decay, *no_decay_for_bias_and_norm);
                crate::adafactor::step(var, g, s, lr, decay)
            }),
            Optimizer::AdamW8bit { tracked, config: c } => tracked.update(grads, lr, |name, var, g, s, lr| {
                let mut s = s.unwrap_or_else(|| Moments8::zeros(var.as_tensor().elem_count()));
                s.step += 1;
                let decay = decay_for(name, c.weight_decay, c.no_decay_for_bias_and_norm);
                let h = Step8::new(lr, c.beta1, c.beta2, c.eps, decay, s.step);
                crate::optim8::step(var, g, &mut s.state, h)?;
                Ok(s)
            }),
        }
    }

    /// Optimizer state to save in a checkpoint (each kind's own tensors per parameter, the tensors a schedule keeps
    /// aside included, and each tensor's step count `t.<name>`), and the updates applied so far.
    pub fn state(&self) -> (BTreeMap<String, Tensor>, u64) {
        let mut out = BTreeMap::new();
        let steps = self.common().map_or(0, |t| {
            t.save(&mut out);
            t.steps()
        });
        (out, steps)
    }

    /// Restores what [`Optimizer::state`] saved. Checkpoints from before per-tensor step counts give every tensor
    /// the saved update count.
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, saved_steps: u64) -> Result<()> {
        match self.common_mut() {
            Some(t) => t.load(tensors, saved_steps),
            None => Ok(()),
        }
    }
}

impl SavedState for Moments {
    /// `m.<name>`, `v.<name>` and the step count `t.<name>`.
    fn save(&self, name: &str, out: &mut BTreeMap<String, Tensor>) -> Result<()> {
        out.insert(format!("m.{name}"), self.m.clone());
        out.insert(format!("v.{name}"), self.v.clone());
        out.insert(
            format!("t.{name}"),
            Tensor::new(self.step as i64, &candle_core::Device::Cpu)?,
        );
        Ok(())
    }

    fn load(name: &str, tensors: &BTreeMap<String, Tensor>, default_step: u64) -> Result<Option<Moments>> {
        let (Some(m), Some(v)) = (tensors.get(&format!("m.{name}")), tensors.get(&format!("v.{name}"))) else {
            return Ok(None);
        };
        let step = match tensors.get(&format!("t.{name}")) {
            Some(t) => t.to_dtype(candle_core::DType::I64)?.to_scalar::<i64>()? as u64,
            None => default_step,
        };
        Ok(Some(Moments {
            m: m.clone(),
            v: v.clone(),
            step,
        }))
    }

    fn to_device(self, device: &candle_core::Device) -> Result<Moments> {
        Ok(Moments {
            m: self.m.to_device(device)?,
            v: self.v.to_device(device)?,
            step: self.step,
        })
    }
}

/// One AdamW update of `var` (torch's formula): in place on the CPU, composite elsewhere.
fn adamw_update(var: &Var, g: &Tensor, s: Moments, c: &AdamWConfig, lr: f64, decay: f64) -> Result<Moments> {
    let step = s.step + 1;
    let bc1 = 1.0 - c.beta1.powi(step as i32);
    let bc2_sqrt = (1.0 - c.beta2.powi(step as i32)).sqrt();
    let Moments { m, v, .. } = s;
    if fused::applies(var.as_tensor()) && var.as_tensor().is_contiguous() {
        let h = fused::AdamWStep {
            lr: lr as f32,
            beta1: c.beta1 as f32,
            beta2: c.beta2 as f32,
            eps: c.eps as f32,
            decay: decay as f32,
            bc1: bc1 as f32,
            bc2_sqrt: bc2_sqrt as f32,
        };
        fused::adamw_update(var.as_tensor(), &m, &v, g, h)?;
        return Ok(Moments { m, v, step });
    }
    let m = ((m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
    let v = ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
    let p = (var.as_tensor() * (1.0 - lr * decay))?;
    let denom = ((v.sqrt()? / bc2_sqrt)? + c.eps)?;
    var.set(&(p - (m.div(&denom)? * (lr / bc1))?)?)?;
    Ok(Moments { m, v, step })
}

/// Adds a backward pass's parameter gradients (aligned with [`Optimizer::params`]) to running sums.
pub fn accumulate(sums: &mut [Option<Tensor>], grads: Vec<Option<Tensor>>) -> Result<()> {
    for (acc, g) in sums.iter_mut().zip(grads) {
        *acc = match (acc.take(), g) {
            (Some(a), Some(g)) => Some((a + g)?),
            (a, g) => a.or(g),
        };
    }
    Ok(())
}

/// The squared global L2 norm of a set of gradients, as an f32 scalar on `device` (summed there; the caller reads
/// it back once, with the loss).
pub fn squared_norm(grads: &[Option<Tensor>], device: &candle_core::Device) -> Result<Tensor> {
    let mut sum = Tensor::zeros((), candle_core::DType::F32, device)?;
    for g in grads.iter().flatten() {
        let sq = g.to_dtype(candle_core::DType::F32)?.sqr()?;
        // Rows first: a GPU reduces each output in one block, so one sum over a whole matrix would run on one
        // block; row sums spread it over the device.
        let rows = if sq.rank() >= 2 {
            sq.sum(candle_core::D::Minus1)?
        } else {
            sq
        };
        sum = (sum + rows.sum_all()?)?;
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping() {
        assert!(is_bias_or_norm("model.layers.0.input_layernorm.weight"));
        assert!(is_bias_or_norm("model.norm.weight"));
        assert!(is_bias_or_norm("model.layers.0.self_attn.q_proj.bias"));
        assert!(is_bias_or_norm("model.layers.0.self_attn.q_norm.weight"));
        assert!(!is_bias_or_norm("model.layers.0.mlp.down_proj.weight"));
        assert!(!is_bias_or_norm("model.embed_tokens.weight"));
        // HF's patterns match anywhere in the name: Mamba's and DeltaNet's dt_bias, gpt-oss's expert biases, a
        // Mamba layer's gated norm; not A_log, D or the sinks.
        assert!(is_bias_or_norm("model.layers.0.mamba.dt_bias"));
        assert!(is_bias_or_norm("model.layers.0.linear_attn.dt_bias"));
        assert!(is_bias_or_norm("model.layers.0.mlp.experts.gate_up_proj_bias"));
        assert!(is_bias_or_norm("model.layers.0.mamba.norm.weight"));
        assert!(is_bias_or_norm("model.layers.0.self_attn.kv_a_layernorm.weight"));
        for name in [
            "model.layers.0.mamba.A_log",
            "model.layers.0.mamba.D",
            "model.layers.0.self_attn.sinks",
        ] {
            assert!(!is_bias_or_norm(name), "{name}");
        }
    }
}
