//! The model's tensors as the freeze plan wants them: every name in the plan becomes an f32 `Var` (the optimizer's
//! master weight, cast to the compute dtype where the forward pass uses it), every other tensor a constant in the
//! compute dtype. Weights are read memory-mapped from the checkpoint's safetensors files.

use crate::error::{Result, TrainError};
use crate::ops::Linear;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor, Var};
use freezetune_core::files::ModelFiles;
use freezetune_core::FreezePlan;
use std::collections::BTreeMap;
use std::path::Path;

pub struct Params {
    /// Trainable tensors by name, in the plan's (sorted) order.
    pub vars: BTreeMap<String, Var>,
    consts: BTreeMap<String, Tensor>,
    /// The compute dtype: frozen tensors are stored in it, activations run in it.
    dtype: DType,
}

impl Params {
    /// Loads every tensor of the checkpoint in `model_dir`: the plan's names as `Var`s, the rest as constants of
    /// `dtype` on `device`. Every trainable name must exist in the checkpoint.
    pub fn load(model_dir: &Path, plan: &FreezePlan, device: &Device, dtype: DType) -> Result<Params> {
        let files = ModelFiles::find(model_dir)?;
        // SAFETY: the files are memory-mapped read-only; FreezeTune never writes into a model folder it reads from.
        let st = unsafe { MmapedSafetensors::multi(&files.weights) }.map_err(|e| TrainError::Candle {
            context: format!("mapping the weights of {}", model_dir.display()),
            source: e,
        })?;
        let mut vars = BTreeMap::new();
        let mut consts = BTreeMap::new();
        for (name, _) in st.tensors() {
            // Cast on the host, then upload: the stored dtype may be one the device lacks (f64 on Metal).
            let load = |dt: DType| -> Result<Tensor> {
                st.load(&name, &Device::Cpu)
                    .and_then(|t| t.to_dtype(dt))
                    .and_then(|t| t.to_device(device))
                    .map_err(|e| TrainError::Candle {
                        context: format!("loading tensor {name}"),
                        source: e,
                    })
            };
            if plan.is_trainable(&name) {
                let t = load(DType::F32)?;
                let var = Var::from_tensor(&t).map_err(|e| TrainError::Candle {
                    context: format!("tensor {name}"),
                    source: e,
                })?;
                vars.insert(name, var);
            } else {
                consts.insert(name.clone(), load(dtype)?);
            }
        }
        if let Some(missing) = plan.trainable.iter().find(|n| !vars.contains_key(*n)) {
            return Err(TrainError::Tensor {
                name: missing.clone(),
                reason: "is in the freeze plan but not in the checkpoint".into(),
            });
        }
        Ok(Params { vars, consts, dtype })
    }

    /// A tensor by name (a trainable one shares its `Var`'s storage and records gradients).
    pub fn get(&self, name: &str) -> Result<Tensor> {
        if let Some(v) = self.vars.get(name) {
            return Ok(v.as_tensor().clone());
        }
        self.consts.get(name).cloned().ok_or_else(|| TrainError::Tensor {
            name: name.to_string(),
            reason: "is missing from the checkpoint".into(),
        })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn contains(&self, name: &str) -> bool {
        self.vars.contains_key(name) || self.consts.contains_key(name)
    }

    /// `<prefix>.weight` (and `<prefix>.bias` when `bias`) as a linear layer; weight and bias are each trainable
    /// or frozen as the plan says.
    pub fn linear(&self, prefix: &str, bias: bool) -> Result<Linear> {
        let w = format!("{prefix}.weight");
        Ok(Linear {
            weight: self.get(&w)?,
            frozen: !self.vars.contains_key(&w),
            bias: if bias {
                Some(self.get(&format!("{prefix}.bias"))?)
            } else {
                None
            },
        })
    }
}
