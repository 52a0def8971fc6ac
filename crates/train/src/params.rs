//! The model's tensors as the freeze plan wants them: every name in the plan becomes an f32 `Var` (the optimizer's
//! master weight, cast to the compute dtype where the forward pass uses it), every other tensor a constant in the
//! compute dtype. Weights are read memory-mapped from the checkpoint's safetensors files.
//!
//! Under a layer schedule the trainable set changes between phases ([`Params::set_trainable`]): a tensor that
//! stops training becomes a constant holding its trained value (and is remembered as trained, so checkpoints save it
//! and `final/` writes it); one that starts training becomes an f32 master from its trained value, or from the
//! checkpoint file when it has not trained yet (exact, not rounded through the compute dtype).
//!
//! With `quantize_frozen` the frozen projection matrices core's quant.rs names are held quantized instead (quant.rs),
//! one tensor converted at a time while loading. A quantized tensor that starts training is read again from the
//! checkpoint as an f32 master; one that stops training keeps its trained values in the compute dtype, never
//! quantized again.

use crate::error::{Result, TrainError};
use crate::fp8::Fp8Weight;
use crate::linear::{Linear, LinearWeight};
use crate::mxfp4::PackedExperts;
use crate::weights::WeightFiles;
use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor, Var};
use freezetune_core::files::ModelFiles;
use freezetune_core::quant::{QuantFormat, QuantizeFrozen};
use freezetune_core::FreezePlan;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

/// A layer's experts stacked in one tensor, as [`Params`] holds it.
#[derive(Clone)]
pub enum StackedWeight {
    Dense(Tensor),
    /// Frozen, one block tensor per expert (`quantize_frozen`).
    Quantized(Arc<Vec<QTensor>>),
    /// Frozen, in the checkpoint's own MXFP4 blocks (mxfp4.rs).
    Mxfp4(Arc<PackedExperts>),
}

pub struct Params {
    /// Trainable tensors by name, in the plan's (sorted) order.
    pub vars: BTreeMap<String, Var>,
    consts: BTreeMap<String, Tensor>,
    /// Frozen matrices held quantized (`quantize_frozen`), never trained.
    quantized: BTreeMap<String, Arc<QTensor>>,
    /// Frozen stacked experts held quantized, one block tensor per expert.
    quantized_experts: BTreeMap<String, Arc<Vec<QTensor>>>,
    /// Frozen stacked experts held in the checkpoint's own MXFP4 blocks.
    packed_experts: BTreeMap<String, Arc<PackedExperts>>,
    /// Frozen matrices held in the checkpoint's own FP8 codes and scales.
    fp8: BTreeMap<String, Arc<Fp8Weight>>,
    /// Constants that hold trained values (trained in an earlier phase of a schedule).
    trained: BTreeSet<String>,
    /// The compute dtype: frozen tensors are stored in it, activations run in it.
    dtype: DType,
    device: Device,
    /// The checkpoint's weight files, read again when a tensor starts training later (weights.rs).
    weight_files: Vec<std::path::PathBuf>,
    /// config.json's FP8 scheme, for reading FP8 weights again.
    fp8_scheme: Option<freezetune_core::fp8::Scheme>,
    /// Names the model has asked for ([`Params::get`]): a checkpoint tensor the model never reads is math the
    /// model would silently leave out, so the decoder refuses it ([`Params::unread`]).
    read: std::sync::Mutex<BTreeSet<String>>,
}

fn candle_err(context: String) -> impl FnOnce(candle_core::Error) -> TrainError {
    move |source| TrainError::Candle { context, source }
}

impl Params {
    /// Loads every tensor of the checkpoint in `model_dir`: the plan's names as `Var`s, the rest as constants of
    /// `dtype` on `device`. Every trainable name must exist in the checkpoint.
    pub fn load(model_dir: &Path, plan: &FreezePlan, device: &Device, dtype: DType) -> Result<Params> {
        Params::load_with(model_dir, &plan.trainable, device, dtype)
    }

    /// [`Params::load`] with the trainable names given directly (a schedule's phase).
    pub fn load_with(model_dir: &Path, trainable: &[String], device: &Device, dtype: DType) -> Result<Params> {
        Params::load_quantized(model_dir, trainable, device, dtype, QuantizeFrozen::None)
    }

    /// [`Params::load_with`], with the frozen tensors `quantize` names held quantized.
    pub fn load_quantized(
        model_dir: &Path,
        trainable: &[String],
        device: &Device,
        dtype: DType,
        quantize: QuantizeFrozen,
    ) -> Result<Params> {
        let files = ModelFiles::find(model_dir)?;
        let mut params = Params {
            vars: BTreeMap::new(),
            consts: BTreeMap::new(),
            quantized: BTreeMap::new(),
            quantized_experts: BTreeMap::new(),
            packed_experts: BTreeMap::new(),
            fp8: BTreeMap::new(),
            trained: BTreeSet::new(),
            dtype,
            device: device.clone(),
            weight_files: files.weights,
            fp8_scheme: None,
            read: Default::default(),
        };
        let config = freezetune_core::config::ModelConfig::read(&files.config)?;
        params.fp8_scheme = config.fp8;
        let source = params.open_source()?;
        let wanted: BTreeSet<&str> = trainable.iter().map(String::as_str).collect();
        // The embeddings are a lookup table only beside an lm_head of their own (a flagged tie over a stored head
        // that differs is left in the compute dtype: rare, and only memory).
        let stored_head = source.tensors().any(|(n, _)| freezetune_core::tie::is_lm_head(n));
        let untied = stored_head && config.tie_word_embeddings != Some(true);
        for (name, shape) in source.tensors() {
            let name = name.clone();
            if config.dropped_on_load(&name) {
                // Never run (transformers leaves them unread): left on disk, and written back from there.
                continue;
            }
            if wanted.contains(name.as_str()) {
                let var = Var::from_tensor(&params.load_source(&source, &name, DType::F32)?)
                    .map_err(candle_err(format!("tensor {name}")))?;
                params.vars.insert(name, var);
            } else if let Some(q) = match freezetune_core::quant::held_as_matrix(&name, &shape) {
                true => source.load_blocks(&name, device)?,
                false => None,
            } {
                // A GGUF file's quantized tensor, frozen: its own blocks, never dequantized whole.
                params.quantized.insert(name, Arc::new(q));
            } else if let Some(w) = match freezetune_core::quant::held_as_matrix(&name, &shape) {
                true => source.load_fp8(&name, device)?,
                false => None,
            } {
                // An FP8 matrix, frozen: the checkpoint's own codes and scales, exact and half of bf16's size.
                params.fp8.insert(name, Arc::new(w));
            } else if let Some(p) = match freezetune_core::quant::is_stacked_experts(&name) {
                true => source.load_packed(&name, device)?,
                false => None,
            } {
                // MXFP4 experts, frozen: the checkpoint's own blocks, exact and smaller than any requantization.
                params.packed_experts.insert(name, Arc::new(p));
            } else if let Some(format) = quantize.format_for(&name, &shape) {
                if shape.len() == 3 {
                    let experts = params.load_quantized_experts(&source, &name, format)?;
                    params.quantized_experts.insert(name, Arc::new(experts));
                } else {
                    let q = params.load_quantized_source(&source, &name, format)?;
                    params.quantized.insert(name, Arc::new(q));
                }
            } else {
                // A buffer stays f32: transformers keeps the router's correction bias so whatever the dtype; Gemma
                // 4's `layer_scalar` it rounds to the dtype, which the decoder does before multiplying.
                let t = if freezetune_core::layout::is_buffer(&name) {
                    params.load_source(&source, &name, DType::F32)?
                } else if freezetune_core::quant::is_lookup_table(&name, untied) {
                    params.load_table(&source, &name)?
                } else {
                    params.load_source(&source, &name, dtype)?
                };
                params.consts.insert(name, t);
            }
        }
        if let Some(missing) = trainable.iter().find(|n| !params.vars.contains_key(*n)) {
            return Err(TrainError::Tensor {
                name: missing.clone(),
                reason: "is in the freeze plan but not in the checkpoint".into(),
            });
        }
        Ok(params)
    }

    /// The checkpoint's weight files, read tensor by tensor (weights.rs: no memory map to stay resident).
    fn open_source(&self) -> Result<WeightFiles> {
        WeightFiles::open(&self.weight_files, self.fp8_scheme.as_ref())
    }

    /// A tensor of the input checkpoint as `dtype` on the device. Cast on the host, then uploaded: the stored dtype
    /// may be one the device lacks (f64 on Metal).
    fn load_source(&self, source: &WeightFiles, name: &str, dtype: DType) -> Result<Tensor> {
        source
            .load(name)?
            .to_dtype(dtype)
            .and_then(|t| t.to_device(&self.device))
            .map_err(candle_err(format!("loading tensor {name}")))
    }

    /// A frozen lookup table (`quant::is_lookup_table`) on the device: in the checkpoint's float dtype where that
    /// is narrower than the compute dtype (its rows are cast as they are read), else in the compute dtype. Metal
    /// keeps the compute dtype: bf16 there needs macOS 14.
    fn load_table(&self, source: &WeightFiles, name: &str) -> Result<Tensor> {
        let stored = source.load(name)?;
        let narrower = stored.dtype().is_float() && stored.dtype().size_in_bytes() < self.dtype.size_in_bytes();
        let dtype = match narrower && !self.device.is_metal() {
            true => stored.dtype(),
            false => self.dtype,
        };
        stored
            .to_dtype(dtype)
            .and_then(|t| t.to_device(&self.device))
            .map_err(candle_err(format!("loading tensor {name}")))
    }

    /// A tensor of the input checkpoint quantized onto the device (converted on the host, one tensor at a time).
    fn load_quantized_source(&self, source: &WeightFiles, name: &str, format: QuantFormat) -> Result<QTensor> {
        let t = source.load(name)?;
        crate::quant::quantize(&t, format, &self.device)
            .map_err(candle_err(format!("quantizing tensor {name} to {}", format.name())))
    }

    /// Stacked experts (experts × rows × columns) quantized one expert at a time onto the device.
    fn load_quantized_experts(&self, source: &WeightFiles, name: &str, format: QuantFormat) -> Result<Vec<QTensor>> {
        let t = source.load(name)?;
        let experts = t.dim(0).map_err(candle_err(format!("tensor {name}")))?;
        (0..experts)
            .map(|e| {
                t.get(e)
                    .and_then(|m| crate::quant::quantize(&m, format, &self.device))
                    .map_err(candle_err(format!(
                        "quantizing expert {e} of {name} to {}",
                        format.name()
                    )))
            })
            .collect()
    }

    /// Bytes the frozen weights take on the device: dense constants and quantized blocks.
    pub fn frozen_bytes(&self) -> u64 {
        let dense: usize = self
            .consts
            .values()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum();
        let quantized: usize = self.quantized.values().map(|q| q.storage_size_in_bytes()).sum();
        let experts: usize = self
            .quantized_experts
            .values()
            .flat_map(|e| e.iter())
            .map(|q| q.storage_size_in_bytes())
            .sum();
        let packed: usize = self.packed_experts.values().map(|p| p.storage_bytes()).sum();
        let fp8: usize = self.fp8.values().map(|w| w.storage_bytes()).sum();
        (dense + quantized + experts + packed + fp8) as u64
    }

    /// How many frozen tensors are held quantized (`quantize_frozen`, or a GGUF file's blocks).
    pub fn quantized_count(&self) -> usize {
        self.quantized.len() + self.quantized_experts.len()
    }

    /// How many frozen tensors are held in the checkpoint's own MXFP4 blocks.
    pub fn packed_count(&self) -> usize {
        self.packed_experts.len()
    }

    /// How many frozen matrices are held in the checkpoint's own FP8 codes and scales.
    pub fn fp8_count(&self) -> usize {
        self.fp8.len()
    }

    /// Whether `name` is held quantized; forgets it if so (it is about to be held otherwise).
    fn take_quantized(&mut self, name: &str) -> bool {
        self.quantized.remove(name).is_some()
            | self.quantized_experts.remove(name).is_some()
            | self.packed_experts.remove(name).is_some()
            | self.fp8.remove(name).is_some()
    }

    /// Makes exactly `names` trainable: the others become constants holding their current values.
    pub fn set_trainable(&mut self, names: &[String]) -> Result<()> {
        let wanted: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        let stopping: Vec<String> = self
            .vars
            .keys()
            .filter(|n| !wanted.contains(n.as_str()))
            .cloned()
            .collect();
        for name in stopping {
            let var = self.vars.remove(&name).expect("listed");
            let t = var
                .as_tensor()
                .to_dtype(self.dtype)
                .and_then(|t| t.copy())
                .map_err(candle_err(format!("freezing {name}")))?;
            self.consts.insert(name.clone(), t);
            self.trained.insert(name);
        }
        // Opened once for the tensors that start training for the first time (opening reads every header).
        let mut source = None;
        for name in names {
            if self.vars.contains_key(name) {
                continue;
            }
            let was_quantized = self.take_quantized(name);
            let current = self.consts.remove(name);
            if current.is_none() && !was_quantized {
                return Err(TrainError::Tensor {
                    name: name.clone(),
                    reason: "is in the schedule but not in the checkpoint".into(),
                });
            }
            let master = match current {
                // Trained in an earlier phase: its trained value.
                Some(t) if self.trained.remove(name) => t
                    .to_dtype(DType::F32)
                    .map_err(candle_err(format!("unfreezing {name}")))?,
                // Never trained (the only kind held quantized): exact from the checkpoint.
                _ => {
                    if source.is_none() {
                        source = Some(self.open_source()?);
                    }
                    self.load_source(source.as_ref().expect("just opened"), name, DType::F32)?
                }
            };
            let var = Var::from_tensor(&master).map_err(candle_err(format!("tensor {name}")))?;
            self.vars.insert(name.clone(), var);
        }
        Ok(())
    }

    /// Every tensor whose value training has changed or may change: the trainable ones and the trained constants.
    pub fn trained_values(&self) -> impl Iterator<Item = (&String, Tensor)> {
        let vars = self.vars.iter().map(|(n, v)| (n, v.as_tensor().clone()));
        let consts = self.trained.iter().map(|n| (n, self.consts[n].clone()));
        vars.chain(consts)
    }

    /// The trained value of `name` if training has touched it (a `Var`, or a trained constant).
    pub fn trained_value(&self, name: &str) -> Option<Tensor> {
        if let Some(v) = self.vars.get(name) {
            return Some(v.as_tensor().clone());
        }
        self.trained.contains(name).then(|| self.consts[name].clone())
    }

    /// Puts a value saved in a checkpoint back: into the `Var`, or as a trained constant.
    pub fn restore_value(&mut self, name: &str, value: &Tensor) -> Result<()> {
        if let Some(var) = self.vars.get(name) {
            let t = value
                .to_dtype(DType::F32)
                .map_err(candle_err(format!("restoring {name}")))?;
            return var.set(&t).map_err(candle_err(format!("restoring {name}")));
        }
        // A tensor trained in an earlier phase (restored from a checkpoint) is held with its trained values.
        let was_quantized = self.take_quantized(name);
        if !self.consts.contains_key(name) && !was_quantized {
            return Err(TrainError::Tensor {
                name: name.into(),
                reason: "is in the checkpoint but not in the model".into(),
            });
        }
        let t = value
            .to_dtype(self.dtype)
            .and_then(|t| t.to_device(&self.device))
            .map_err(candle_err(format!("restoring {name}")))?;
        self.consts.insert(name.into(), t);
        self.trained.insert(name.into());
        Ok(())
    }

    /// The checkpoint's tensors that nothing has asked for through [`Params::get`], sorted.
    pub fn unread(&self) -> Vec<String> {
        let read = self.read.lock().expect("read names");
        let names = self.vars.keys().chain(self.consts.keys()).chain(self.quantized.keys());
        let names = names
            .chain(self.quantized_experts.keys())
            .chain(self.packed_experts.keys())
            .chain(self.fp8.keys());
        let mut unread: Vec<String> = names.filter(|n| !read.contains(*n)).cloned().collect();
        unread.sort();
        unread
    }

    /// A tensor by name (a trainable one shares its `Var`'s storage and records gradients).
    pub fn get(&self, name: &str) -> Result<Tensor> {
        self.read.lock().expect("read names").insert(name.to_string());
        if let Some(v) = self.vars.get(name) {
            return Ok(v.as_tensor().clone());
        }
        if self.packed_experts.contains_key(name) {
            return Err(TrainError::Tensor {
                name: name.to_string(),
                reason: "is held in the checkpoint's own MXFP4 blocks and can only be read as the experts' weight"
                    .into(),
            });
        }
        if self.fp8.contains_key(name) {
            return Err(TrainError::Tensor {
                name: name.to_string(),
                reason: "is held in the checkpoint's own FP8 codes and can only be read as a linear layer's weight"
                    .into(),
            });
        }
        if self.quantized.contains_key(name) || self.quantized_experts.contains_key(name) {
            return Err(TrainError::Tensor {
                name: name.to_string(),
                reason: "is held quantized (quantize_frozen) and can only be read as a linear layer's or the \
                         experts' weight"
                    .into(),
            });
        }
        self.consts.get(name).cloned().ok_or_else(|| TrainError::Tensor {
            name: name.to_string(),
            reason: "is missing from the checkpoint".into(),
        })
    }

    /// The device every tensor is on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The shape of tensor `name`, without counting it as read.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        if let Some(q) = self.quantized.get(name) {
            return Some(q.shape().dims().to_vec());
        }
        if let Some(e) = self.quantized_experts.get(name) {
            let matrix = e.first().map(|q| q.shape().dims().to_vec()).unwrap_or_default();
            return Some(std::iter::once(e.len()).chain(matrix).collect());
        }
        if let Some(p) = self.packed_experts.get(name) {
            return Some(p.dense_shape());
        }
        if let Some(w) = self.fp8.get(name) {
            let (rows, cols) = w.dims();
            return Some(vec![rows, cols]);
        }
        let t = match self.vars.get(name) {
            Some(v) => v.as_tensor(),
            None => self.consts.get(name)?,
        };
        Some(t.dims().to_vec())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.vars.contains_key(name)
            || self.consts.contains_key(name)
            || self.quantized.contains_key(name)
            || self.quantized_experts.contains_key(name)
            || self.packed_experts.contains_key(name)
            || self.fp8.contains_key(name)
    }

    /// Stacked experts `name` (experts × rows × columns): a trainable `Var`'s tensor, a frozen constant, one
    /// block tensor per expert, or the checkpoint's MXFP4 blocks.
    pub fn stacked_experts(&self, name: &str) -> Result<StackedWeight> {
        if let Some(q) = self.quantized_experts.get(name) {
            self.read.lock().expect("read names").insert(name.to_string());
            return Ok(StackedWeight::Quantized(q.clone()));
        }
        if let Some(p) = self.packed_experts.get(name) {
            self.read.lock().expect("read names").insert(name.to_string());
            return Ok(StackedWeight::Mxfp4(p.clone()));
        }
        Ok(StackedWeight::Dense(self.get(name)?))
    }

    /// Tensor `name` as a matrix operand: a trainable `Var`'s tensor, a frozen constant, or a quantized matrix.
    pub fn weight(&self, name: &str) -> Result<LinearWeight> {
        if let Some(q) = self.quantized.get(name) {
            self.read.lock().expect("read names").insert(name.to_string());
            return Ok(LinearWeight::Quantized(q.clone()));
        }
        if let Some(w) = self.fp8.get(name) {
            self.read.lock().expect("read names").insert(name.to_string());
            return Ok(LinearWeight::Fp8(w.clone()));
        }
        Ok(LinearWeight::dense(self.get(name)?))
    }

    /// Tensor `name` as the checkpoint file stores it, in f32 on the host (for comparisons, not training: a quantized
    /// or trained copy would compare other values).
    pub fn checkpoint_f32(&self, name: &str) -> Result<Tensor> {
        self.open_source()?
            .load(name)?
            .to_dtype(DType::F32)
            .map_err(candle_err(format!("reading {name}")))
    }

    /// `<prefix>.weight` (and `<prefix>.bias` when `bias`) as a linear layer; weight and bias are each trainable
    /// or frozen as the plan says.
    pub fn linear(&self, prefix: &str, bias: bool) -> Result<Linear> {
        Ok(Linear {
            weight: self.weight(&format!("{prefix}.weight"))?,
            bias: if bias {
                Some(self.get(&format!("{prefix}.bias"))?)
            } else {
                None
            },
        })
    }
}
