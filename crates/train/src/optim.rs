//! Optimizers over the plan's trainable `Var`s only. AdamW follows `torch.optim.AdamW` exactly (decoupled weight
//! decay, bias-corrected moments); HF Trainer's grouping leaves biases and norm weights without decay.

use crate::fused;
use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
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

pub enum Optimizer {
    Sgd {
        params: Vec<(String, Var)>,
    },
    AdamW {
        params: Vec<(String, Var)>,
        config: AdamWConfig,
        state: Vec<Option<(Tensor, Tensor)>>,
        step: u64,
    },
}

impl Optimizer {
    pub fn sgd(params: Vec<(String, Var)>) -> Optimizer {
        Optimizer::Sgd { params }
    }

    pub fn adamw(params: Vec<(String, Var)>, config: AdamWConfig) -> Optimizer {
        let n = params.len();
        Optimizer::AdamW {
            params,
            config,
            state: vec![None; n],
            step: 0,
        }
    }

    pub fn params(&self) -> &[(String, Var)] {
        match self {
            Optimizer::Sgd { params } | Optimizer::AdamW { params, .. } => params,
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
            Optimizer::Sgd { params } => {
                for ((_, var), g) in params.iter().zip(grads) {
                    if let Some(g) = g {
                        var.set(&(var.as_tensor() - (g * lr)?)?)?;
                    }
                }
            }
            Optimizer::AdamW {
                params,
                config: c,
                state,
                step,
            } => {
                *step += 1;
                let bc1 = 1.0 - c.beta1.powi(*step as i32);
                let bc2_sqrt = (1.0 - c.beta2.powi(*step as i32)).sqrt();
                for (((name, var), slot), g) in params.iter().zip(state.iter_mut()).zip(grads) {
                    let Some(g) = g else { continue };
                    let (m, v) = match slot.take() {
                        Some(s) => s,
                        None => (g.zeros_like()?, g.zeros_like()?),
                    };
                    let decay = if c.no_decay_for_bias_and_norm && is_bias_or_norm(name) {
                        0.0
                    } else {
                        c.weight_decay
                    };
                    let moments = if fused::applies(var.as_tensor()) && var.as_tensor().is_contiguous() {
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
                        (m, v)
                    } else {
                        let m = ((m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
                        let v = ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                        let p = (var.as_tensor() * (1.0 - lr * decay))?;
                        let denom = ((v.sqrt()? / bc2_sqrt)? + c.eps)?;
                        var.set(&(p - (m.div(&denom)? * (lr / bc1))?)?)?;
                        (m, v)
                    };
                    *slot = Some(moments);
                }
            }
        }
        Ok(())
    }

    /// Optimizer state to save in a checkpoint: AdamW's moments as `m.<name>` / `v.<name>`, and its step count.
    pub fn state(&self) -> (BTreeMap<String, Tensor>, u64) {
        let mut out = BTreeMap::new();
        if let Optimizer::AdamW {
            params, state, step, ..
        } = self
        {
            for ((name, _), slot) in params.iter().zip(state) {
                if let Some((m, v)) = slot {
                    out.insert(format!("m.{name}"), m.clone());
                    out.insert(format!("v.{name}"), v.clone());
                }
            }
            return (out, *step);
        }
        (out, 0)
    }

    /// Restores what [`Optimizer::state`] saved.
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, saved_step: u64) {
        if let Optimizer::AdamW {
            params, state, step, ..
        } = self
        {
            for ((name, _), slot) in params.iter().zip(state.iter_mut()) {
                if let (Some(m), Some(v)) = (tensors.get(&format!("m.{name}")), tensors.get(&format!("v.{name}"))) {
                    *slot = Some((m.clone(), v.clone()));
                }
            }
            *step = saved_step;
        }
    }
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
        sum = (sum + g.to_dtype(candle_core::DType::F32)?.sqr()?.sum_all()?)?;
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
