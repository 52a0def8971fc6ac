//! Optimizers over the plan's trainable `Var`s only. AdamW follows `torch.optim.AdamW` exactly (decoupled weight
//! decay, bias-corrected moments); HF Trainer's grouping leaves biases and norm weights without decay.

use crate::adafactor::AdafactorState;
use crate::fused;
use crate::optim8::{Moments8, Step8};
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

/// A parameter without weight decay under HF Trainer's grouping.
pub fn is_bias_or_norm(name: &str) -> bool {
    name.ends_with(".bias") || name.rsplit('.').nth(1).is_some_and(|m| m.contains("norm"))
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
        params: Vec<(String, Var)>,
        lr_scale: Vec<f64>,
        config: AdamWConfig,
        state: Vec<Option<Moments>>,
        /// Moments of tensors not trainable in the current phase of a schedule (`keep`), on the host.
        stash: BTreeMap<String, Moments>,
        /// Updates applied so far (for progress reports; the bias corrections use each tensor's own count).
        steps: u64,
    },
    /// Adafactor (adafactor.rs): factored second moments, no first moment.
    Adafactor {
        params: Vec<(String, Var)>,
        lr_scale: Vec<f64>,
        weight_decay: f64,
        /// HF Trainer's grouping: no weight decay on biases and norm weights.
        no_decay_for_bias_and_norm: bool,
        state: Vec<Option<AdafactorState>>,
        stash: BTreeMap<String, AdafactorState>,
        steps: u64,
    },
    /// AdamW with 8-bit blockwise moments (optim8.rs), kept on the host.
    AdamW8bit {
        params: Vec<(String, Var)>,
        lr_scale: Vec<f64>,
        config: AdamWConfig,
        state: Vec<Option<Moments8>>,
        stash: BTreeMap<String, Moments8>,
        steps: u64,
    },
}

impl Optimizer {
    pub fn sgd(params: Vec<(String, Var)>) -> Optimizer {
        let lr_scale = vec![1.0; params.len()];
        Optimizer::Sgd { params, lr_scale }
    }

    pub fn adamw(params: Vec<(String, Var)>, config: AdamWConfig) -> Optimizer {
        let n = params.len();
        Optimizer::AdamW {
            params,
            lr_scale: vec![1.0; n],
            config,
            state: vec![None; n],
            stash: BTreeMap::new(),
            steps: 0,
        }
    }

    pub fn adafactor(params: Vec<(String, Var)>, weight_decay: f64, no_decay_for_bias_and_norm: bool) -> Optimizer {
        let n = params.len();
        Optimizer::Adafactor {
            params,
            lr_scale: vec![1.0; n],
            weight_decay,
            no_decay_for_bias_and_norm,
            state: vec![None; n],
            stash: BTreeMap::new(),
            steps: 0,
        }
    }

    pub fn adamw8bit(params: Vec<(String, Var)>, config: AdamWConfig) -> Optimizer {
        let n = params.len();
        Optimizer::AdamW8bit {
            params,
            lr_scale: vec![1.0; n],
            config,
            state: vec![None; n],
            stash: BTreeMap::new(),
            steps: 0,
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

    pub fn params(&self) -> &[(String, Var)] {
        match self {
            Optimizer::Sgd { params, .. }
            | Optimizer::AdamW { params, .. }
            | Optimizer::Adafactor { params, .. }
            | Optimizer::AdamW8bit { params, .. } => params,
        }
    }

    /// Updates applied so far.
    pub fn steps_taken(&self) -> u64 {
        match self {
            Optimizer::Sgd { .. } => 0,
            Optimizer::AdamW { steps, .. }
            | Optimizer::Adafactor { steps, .. }
            | Optimizer::AdamW8bit { steps, .. } => *steps,
        }
    }

    /// Per-parameter learning-rate factors (aligned with [`Optimizer::params`]; 1 is the base rate).
    pub fn set_lr_scale(&mut self, scale: Vec<f64>) {
        match self {
            Optimizer::Sgd { lr_scale, .. }
            | Optimizer::AdamW { lr_scale, .. }
            | Optimizer::Adafactor { lr_scale, .. }
            | Optimizer::AdamW8bit { lr_scale, .. } => *lr_scale = scale,
        }
    }

    /// A schedule's phase change: `new` becomes the parameter list. With `Keep`, a tensor's moments leave with it
    /// (to the host) and come back when it trains again; with `Reset`, every tensor starts afresh, as BAdam does.
    pub fn switch_params(&mut self, new: Vec<(String, Var)>, policy: StatePolicy) -> Result<()> {
        let n = new.len();
        match self {
            Optimizer::Sgd { params, lr_scale } => {
                *params = new;
                *lr_scale = vec![1.0; n];
            }
            Optimizer::AdamW {
                params,
                lr_scale,
                state,
                stash,
                ..
            } => {
                if policy == StatePolicy::Reset {
                    stash.clear();
                } else {
                    for ((name, _), slot) in params.iter().zip(state.iter_mut()) {
                        if let Some(s) = slot.take() {
                            stash.insert(name.clone(), s.to_device(&candle_core::Device::Cpu)?);
                        }
                    }
                }
                let mut fresh = Vec::with_capacity(n);
                for (name, var) in &new {
                    fresh.push(match stash.remove(name) {
                        Some(s) => Some(s.to_device(var.as_tensor().device())?),
                        None => None,
                    });
                }
                *state = fresh;
                *params = new;
                *lr_scale = vec![1.0; n];
            }
            Optimizer::Adafactor {
                params,
                lr_scale,
                state,
                stash,
                ..
            } => {
                if policy == StatePolicy::Reset {
                    stash.clear();
                } else {
                    for ((name, _), slot) in params.iter().zip(state.iter_mut()) {
                        if let Some(s) = slot.take() {
                            stash.insert(name.clone(), s.to_device(&candle_core::Device::Cpu)?);
                        }
                    }
                }
                let mut fresh = Vec::with_capacity(n);
                for (name, var) in &new {
                    fresh.push(
                        stash
                            .remove(name)
                            .map(|s| s.to_device(var.as_tensor().device()))
                            .transpose()?,
                    );
                }
                *state = fresh;
                *params = new;
                *lr_scale = vec![1.0; n];
            }
            Optimizer::AdamW8bit {
                params,
                lr_scale,
                state,
                stash,
                ..
            } => {
                // The moments live on the host already: they move between the list and the stash as they are.
                if policy == StatePolicy::Reset {
                    stash.clear();
                } else {
                    for ((name, _), slot) in params.iter().zip(state.iter_mut()) {
                        if let Some(s) = slot.take() {
                            stash.insert(name.clone(), s);
                        }
                    }
                }
                *state = new.iter().map(|(name, _)| stash.remove(name)).collect();
                *params = new;
                *lr_scale = vec![1.0; n];
            }
        }
        Ok(())
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
            }
            Optimizer::AdamW {
                params,
                lr_scale,
                config: c,
                state,
                steps,
                ..
            } => {
                *steps += 1;
                for ((((name, var), slot), g), k) in params.iter().zip(state.iter_mut()).zip(grads).zip(lr_scale.iter())
                {
                    let Some(g) = g else { continue };
                    let s = match slot.take() {
                        Some(s) => s,
                        None => Moments {
                            m: g.zeros_like()?,
                            v: g.zeros_like()?,
                            step: 0,
                        },
                    };
                    let decay = if c.no_decay_for_bias_and_norm && is_bias_or_norm(name) {
                        0.0
                    } else {
                        c.weight_decay
                    };
                    *slot = Some(adamw_update(var, g, s, c, lr * k, decay)?);
                }
            }
            Optimizer::Adafactor {
                params,
                lr_scale,
                weight_decay,
                no_decay_for_bias_and_norm,
                state,
                steps,
                ..
            } => {
                *steps += 1;
                for ((((name, var), slot), g), k) in params.iter().zip(state.iter_mut()).zip(grads).zip(lr_scale.iter())
                {
                    let Some(g) = g else { continue };
                    let s = match slot.take() {
                        Some(s) => s,
                        None => AdafactorState::zeros(g)?,
                    };
                    let decay = if *no_decay_for_bias_and_norm && is_bias_or_norm(name) {
                        0.0
                    } else {
                        *weight_decay
                    };
                    *slot = Some(crate::adafactor::step(var, g, s, lr * k, decay)?);
                }
            }
            Optimizer::AdamW8bit {
                params,
                lr_scale,
                config: c,
                state,
                steps,
                ..
            } => {
                *steps += 1;
                for ((((name, var), slot), g), k) in params.iter().zip(state.iter_mut()).zip(grads).zip(lr_scale.iter())
                {
                    let Some(g) = g else { continue };
                    let mut s = slot
                        .take()
                        .unwrap_or_else(|| Moments8::zeros(var.as_tensor().elem_count()));
                    s.step += 1;
                    let decay = if c.no_decay_for_bias_and_norm && is_bias_or_norm(name) {
                        0.0
                    } else {
                        c.weight_decay
                    };
                    let h = Step8::new(lr * k, c.beta1, c.beta2, c.eps, decay, s.step);
                    crate::optim8::step(var, g, &mut s.state, h)?;
                    *slot = Some(s);
                }
            }
        }
        Ok(())
    }

    /// Optimizer state to save in a checkpoint: AdamW's moments as `m.<name>` / `v.<name>` and each tensor's step
    /// count as a scalar `t.<name>` (the tensors a schedule keeps aside included), and the updates applied so far.
    pub fn state(&self) -> (BTreeMap<String, Tensor>, u64) {
        let mut out = BTreeMap::new();
        if let Optimizer::Adafactor {
            params,
            state,
            stash,
            steps,
            ..
        } = self
        {
            let active = params
                .iter()
                .zip(state)
                .filter_map(|((n, _), s)| s.as_ref().map(|s| (n, s)));
            for (name, s) in active.chain(stash.iter()) {
                if let Err(e) = s.save(name, &mut out) {
                    tracing::warn!("optimizer state of {name} not saved: {e}");
                }
            }
            return (out, *steps);
        }
        if let Optimizer::AdamW8bit {
            params,
            state,
            stash,
            steps,
            ..
        } = self
        {
            let active = params
                .iter()
                .zip(state)
                .filter_map(|((n, _), s)| s.as_ref().map(|s| (n, s)));
            for (name, s) in active.chain(stash.iter()) {
                if let Err(e) = s.save(name, &mut out) {
                    tracing::warn!("optimizer state of {name} not saved: {e}");
                }
            }
            return (out, *steps);
        }
        if let Optimizer::AdamW {
            params,
            state,
            stash,
            steps,
            ..
        } = self
        {
            let active = params
                .iter()
                .zip(state)
                .filter_map(|((n, _), s)| s.as_ref().map(|s| (n, s)));
            for (name, s) in active.chain(stash.iter()) {
                out.insert(format!("m.{name}"), s.m.clone());
                out.insert(format!("v.{name}"), s.v.clone());
                if let Ok(t) = Tensor::new(s.step as i64, &candle_core::Device::Cpu) {
                    out.insert(format!("t.{name}"), t);
                }
            }
            return (out, *steps);
        }
        (out, 0)
    }

    /// Restores what [`Optimizer::state`] saved. Checkpoints from before per-tensor step counts give every tensor
    /// the saved update count.
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, saved_steps: u64) -> Result<()> {
        if let Optimizer::Adafactor {
            params,
            state,
            stash,
            steps,
            ..
        } = self
        {
            let position: BTreeMap<&str, (usize, candle_core::Device)> = params
                .iter()
                .enumerate()
                .map(|(i, (n, v))| (n.as_str(), (i, v.as_tensor().device().clone())))
                .collect();
            let names: std::collections::BTreeSet<&str> = tensors
                .keys()
                .filter_map(|k| k.split_once('.').map(|(_, n)| n))
                .collect();
            for name in names {
                let Some(s) = AdafactorState::load(name, tensors, saved_steps)? else {
                    continue;
                };
                match position.get(name) {
                    Some((i, device)) => state[*i] = Some(s.to_device(device)?),
                    None => {
                        stash.insert(name.to_string(), s);
                    }
                }
            }
            *steps = saved_steps;
            return Ok(());
        }
        if let Optimizer::AdamW8bit {
            params,
            state,
            stash,
            steps,
            ..
        } = self
        {
            let position: BTreeMap<&str, usize> =
                params.iter().enumerate().map(|(i, (n, _))| (n.as_str(), i)).collect();
            let names: std::collections::BTreeSet<&str> = tensors
                .keys()
                .filter_map(|k| k.split_once('.').map(|(_, n)| n))
                .collect();
            for name in names {
                let Some(s) = Moments8::load(name, tensors, saved_steps)? else {
                    continue;
                };
                match position.get(name) {
                    Some(&i) => state[i] = Some(s),
                    None => {
                        stash.insert(name.to_string(), s);
                    }
                }
            }
            *steps = saved_steps;
            return Ok(());
        }
        if let Optimizer::AdamW {
            params,
            state,
            stash,
            steps,
            ..
        } = self
        {
            let position: BTreeMap<&str, usize> =
                params.iter().enumerate().map(|(i, (n, _))| (n.as_str(), i)).collect();
            for (key, m) in tensors {
                let Some(name) = key.strip_prefix("m.") else { continue };
                let Some(v) = tensors.get(&format!("v.{name}")) else {
                    continue;
                };
                let step = match tensors.get(&format!("t.{name}")) {
                    Some(t) => t.to_dtype(candle_core::DType::I64)?.to_scalar::<i64>()? as u64,
                    None => saved_steps,
                };
                let s = Moments {
                    m: m.clone(),
                    v: v.clone(),
                    step,
                };
                match position.get(name) {
                    Some(&i) => state[i] = Some(s),
                    None => {
                        stash.insert(name.to_string(), s.to_device(&candle_core::Device::Cpu)?);
                    }
                }
            }
            *steps = saved_steps;
        }
        Ok(())
    }
}

impl Moments {
    fn to_device(&self, device: &candle_core::Device) -> Result<Moments> {
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
    }
}
