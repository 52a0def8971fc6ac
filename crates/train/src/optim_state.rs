//! What every stateful optimizer does with its per-tensor state, written once ([`Tracked`]): step the tensors that
//! have gradients, save the state into a checkpoint's tensors, read it back (onto the parameter's device, or aside
//! on the host for a tensor the current phase does not train), and move it between the active list and the stash
//! when a layer schedule changes the trainable set.

use candle_core::{Device, Result, Tensor, Var};
use freezetune_core::schedule::StatePolicy;
use std::collections::{BTreeMap, BTreeSet};

/// One tensor's optimizer state.
pub trait SavedState: Sized {
    /// Adds this state's checkpoint tensors for parameter `name` to `out`.
    fn save(&self, name: &str, out: &mut BTreeMap<String, Tensor>) -> Result<()>;
    /// The state saved for `name`, if the checkpoint has it; `default_step` for checkpoints without step counts.
    fn load(name: &str, tensors: &BTreeMap<String, Tensor>, default_step: u64) -> Result<Option<Self>>;
    /// The state on `device` (host-side states stay where they are).
    fn to_device(self, device: &Device) -> Result<Self>;
}

/// A stateful optimizer's parameters and their states.
pub struct Tracked<S> {
    pub params: Vec<(String, Var)>,
    /// Per-parameter learning-rate factors (1 is the base rate).
    pub lr_scale: Vec<f64>,
    /// Aligned with `params`; `None` until a tensor's first update.
    pub state: Vec<Option<S>>,
    /// States of tensors not trainable in the current phase of a schedule (`keep`), on the host.
    pub stash: BTreeMap<String, S>,
    /// Updates applied so far (for progress reports; bias corrections use each tensor's own count).
    pub steps: u64,
}

impl<S: SavedState> Tracked<S> {
    pub fn new(params: Vec<(String, Var)>) -> Tracked<S> {
        let n = params.len();
        Tracked {
            params,
            lr_scale: vec![1.0; n],
            state: (0..n).map(|_| None).collect(),
            stash: BTreeMap::new(),
            steps: 0,
        }
    }

    /// One update: `f(name, parameter, gradient, state, learning rate)` for each parameter with a gradient (the
    /// others are left alone, as PyTorch does) returns its new state.
    pub fn update(
        &mut self,
        grads: &[Option<Tensor>],
        lr: f64,
        mut f: impl FnMut(&str, &Var, &Tensor, Option<S>, f64) -> Result<S>,
    ) -> Result<()> {
        self.steps += 1;
        let rows = self
            .params
            .iter()
            .zip(self.state.iter_mut())
            .zip(grads)
            .zip(&self.lr_scale);
        for ((((name, var), slot), g), k) in rows {
            let Some(g) = g else { continue };
            *slot = Some(f(name, var, g, slot.take(), lr * k)?);
        }
        Ok(())
    }
}

/// [`Tracked`] seen without its state type, for the optimizer's common operations.
pub trait TrackedView {
    fn params(&self) -> &[(String, Var)];
    fn steps(&self) -> u64;
    fn set_lr_scale(&mut self, scale: Vec<f64>);
    /// A schedule's phase change: the current states go to the host stash (`Keep`) or are dropped with it
    /// (`Reset`), and the new parameters take theirs from the stash.
    fn switch(&mut self, new: Vec<(String, Var)>, policy: StatePolicy) -> Result<()>;
    /// The active and stashed states into `out`.
    fn save(&self, out: &mut BTreeMap<String, Tensor>);
    /// Every state `tensors` holds: a trainable tensor's onto its device, any other's into the stash on the host.
    fn load(&mut self, tensors: &BTreeMap<String, Tensor>, saved_steps: u64) -> Result<()>;
}

impl<S: SavedState> TrackedView for Tracked<S> {
    fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    fn steps(&self) -> u64 {
        self.steps
    }

    fn set_lr_scale(&mut self, scale: Vec<f64>) {
        self.lr_scale = scale;
    }

    fn switch(&mut self, new: Vec<(String, Var)>, policy: StatePolicy) -> Result<()> {
        if policy == StatePolicy::Reset {
            self.stash.clear();
        } else {
            for ((name, _), slot) in self.params.iter().zip(self.state.iter_mut()) {
                if let Some(s) = slot.take() {
                    self.stash.insert(name.clone(), s.to_device(&Device::Cpu)?);
                }
            }
        }
        self.state = new
            .iter()
            .map(|(name, var)| {
                self.stash
                    .remove(name)
                    .map(|s| s.to_device(var.as_tensor().device()))
                    .transpose()
            })
            .collect::<Result<_>>()?;
        self.lr_scale = vec![1.0; new.len()];
        self.params = new;
        Ok(())
    }

    fn save(&self, out: &mut BTreeMap<String, Tensor>) {
        let active = self
            .params
            .iter()
            .zip(&self.state)
            .filter_map(|((n, _), s)| s.as_ref().map(|s| (n, s)));
        for (name, s) in active.chain(self.stash.iter()) {
            if let Err(e) = s.save(name, out) {
                tracing::warn!("optimizer state of {name} not saved: {e}");
            }
        }
    }

    fn load(&mut self, tensors: &BTreeMap<String, Tensor>, saved_steps: u64) -> Result<()> {
        let position: BTreeMap<&str, usize> = self
            .params
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.as_str(), i))
            .collect();
        // Keys are `<kind>.<parameter name>`.
        let names: BTreeSet<&str> = tensors
            .keys()
            .filter_map(|k| k.split_once('.').map(|(_, n)| n))
            .collect();
        for name in names {
            let Some(s) = S::load(name, tensors, saved_steps)? else {
                continue;
            };
            match position.get(name) {
                Some(&i) => self.state[i] = Some(s.to_device(self.params[i].1.as_tensor().device())?),
                None => {
                    self.stash.insert(name.to_string(), s.to_device(&Device::Cpu)?);
                }
            }
        }
        self.steps = saved_steps;
        Ok(())
    }
}
