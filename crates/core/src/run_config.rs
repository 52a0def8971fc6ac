//! `RunConfig`: a training run as a TOML file (`freezetune train --config RUN.toml`). Every key has a default
//! (documented in docs/run-config.md); unknown keys are errors, so a typo never silently changes a run.

use crate::data_spec::{DatasetSpec, Mix};
use crate::error::{Error, Result};
use crate::quant::QuantizeFrozen;
use crate::spec::FreezeSpec;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub model: ModelSection,
    pub freeze: FreezeSpec,
    pub data: DataSection,
    #[serde(default)]
    pub training: TrainingSection,
    #[serde(default)]
    pub runtime: RuntimeSection,
    pub output: OutputSection,
    /// What the run actually used, written by the trainer into the run folder's `run.toml`; ignored as input (a
    /// resumed run chooses again and rewrites it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved: Option<ResolvedSection>,
}

/// The device and compute dtype a run used (`auto` resolved), and how the device was chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(deny_unknown_fields)]
pub struct ResolvedSection {
    /// `cpu`, `cuda:N` or `metal`.
    pub device: String,
    /// `f32`, `bf16` or `f16`.
    pub dtype: String,
    /// How `auto` chose, or why it fell back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Checkpoint folder (config.json + safetensors). Empty when the model is given as `repo`.
    #[serde(default, skip_serializing_if = "is_empty_path")]
    pub path: PathBuf,
    /// A Hugging Face Hub repo id instead of `path`: the CLI (and app) download it, or find it in the cache, and
    /// train on its snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// Branch, tag or commit of `repo` (default `main`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Compute dtype of frozen weights and activations: `auto` (f32 on the CPU, bf16 matmuls on an AMD CPU with
    /// AVX512-BF16 or an Intel one with AMX; on a GPU bf16, or f16 for an f16 checkpoint or a GPU without bf16),
    /// `f32`, `bf16`, `f16`. Trainable weights are always f32 master weights. bf16 on such a CPU keeps f32 tensors
    /// and multiplies bf16-rounded operands.
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// Frozen projection matrices held quantized while training (`none`, `q8_0`, `q4_k`; see core's quant.rs):
    /// their forward pass and input gradient use the quantized values, and `final/` copies them from the input.
    #[serde(default, skip_serializing_if = "is_dense")]
    pub quantize_frozen: QuantizeFrozen,
}

fn is_dense(q: &QuantizeFrozen) -> bool {
    *q == QuantizeFrozen::None
}

fn is_empty_path(p: &Path) -> bool {
    p.as_os_str().is_empty()
}

fn default_dtype() -> String {
    "auto".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    Auto,
    Alpaca,
    Sharegpt,
    Messages,
    Text,
    Tokenized,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// The training records: a JSON, JSONL, Parquet, CSV or TSV file, or a folder of them. Empty when
    /// `datasets` names them instead.
    #[serde(default)]
    pub train: PathBuf,
    /// Several datasets, each with its column mapping, row limit and weight (data_spec.rs); used instead of
    /// `train`.
    #[serde(default)]
    pub datasets: Vec<DatasetSpec>,
    /// How `datasets` are mixed: concat (the default), interleave_under, interleave_over.
    #[serde(default)]
    pub mix: Mix,
    #[serde(default = "default_format")]
    pub format: DataFormat,
    /// A separate evaluation file (same format).
    #[serde(default)]
    pub eval: Option<PathBuf>,
    /// Evaluation datasets, each as in `datasets` (a Hub dataset's `test` split, a file with its mapping, ...),
    /// concatenated; instead of `eval` or `eval_split`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub eval_datasets: Vec<DatasetSpec>,
    /// Fraction of the training records held out for evaluation when no `eval` file is given.
    #[serde(default)]
    pub eval_split: f64,
    /// Tokens per example; longer examples are truncated.
    #[serde(default = "default_cutoff")]
    pub cutoff_len: usize,
    /// Also learn the prompt tokens (by default only responses are learned).
    #[serde(default)]
    pub train_on_prompt: bool,
}

impl DataSection {
    /// `train` or `datasets`, not both; each dataset a path or a dataset_info.json entry; weights positive.
    pub fn check_sources(&self) -> std::result::Result<(), String> {
        match (self.train.as_os_str().is_empty(), self.datasets.is_empty()) {
            (true, true) => return Err("[data] needs `train` (a data file or folder) or [[data.datasets]]".into()),
            (false, false) => {
                return Err(
                    "[data] has both `train` and [[data.datasets]]: list the train file as one of the datasets".into(),
                )
            }
            _ => {}
        }
        let eval_sources = [
            self.eval.is_some(),
            !self.eval_datasets.is_empty(),
            self.eval_split > 0.0,
        ];
        if eval_sources.iter().filter(|given| **given).count() > 1 {
            return Err(
                "[data] names more than one evaluation set: give `eval` (a file), [[data.eval_datasets]] or \
                 `eval_split` (a held-out fraction), not several"
                    .into(),
            );
        }
        let lists = [("datasets", &self.datasets), ("eval_datasets", &self.eval_datasets)];
        for (list, i, d) in lists
            .into_iter()
            .flat_map(|(list, specs)| specs.iter().enumerate().map(move |(i, d)| (list, i, d)))
        {
            let at = format!("data.{list}[{i}] ({})", d.label());
            match (&d.path, &d.hub, &d.dataset_info, &d.name) {
                (Some(_), _, None, None) | (None, Some(_), None, None) | (None, None, Some(_), Some(_)) => {}
                _ => return Err(format!("{at}: give `path`, `hub`, or `dataset_info` and `name`")),
            }
            if !d.files.is_empty() && d.hub.is_none() {
                return Err(format!(
                    "{at}: `files` picks files of a `hub` repo; give a folder or file as `path`"
                ));
            }
            if d.weight.is_some_and(|w| !(w.is_finite() && w > 0.0)) {
                return Err(format!("{at}: weight must be a positive number"));
            }
            if d.limit == Some(0) {
                return Err(format!("{at}: limit must be at least 1"));
            }
        }
        Ok(())
    }
}

fn default_format() -> DataFormat {
    DataFormat::Auto
}
fn default_cutoff() -> usize {
    1024
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    #[default]
    Adamw,
    /// AdamW with 8-bit blockwise moments (bitsandbytes' AdamW8bit): 2 bytes of state a parameter instead of 8.
    Adamw8bit,
    /// Adafactor as HF Trainer's `optim="adafactor"` runs it: factored second moments (rows + columns of each
    /// matrix), no first moment.
    Adafactor,
    Sgd,
}

impl OptimizerKind {
    /// Bytes of optimizer state the trainer keeps for a trainable tensor of shape `shape`.
    pub fn state_bytes(self, shape: &[u64]) -> u64 {
        let values: u64 = shape.iter().product();
        match self {
            OptimizerKind::Adamw => 8 * values,
            // Mirrors crates/train/src/adafactor.rs: f32 means over the last dimension and over the one before.
            OptimizerKind::Adafactor if shape.len() >= 2 => {
                let (last, before) = (shape[shape.len() - 1], shape[shape.len() - 2]);
                4 * (values.checked_div(last).unwrap_or(0) + values.checked_div(before).unwrap_or(0))
            }
            OptimizerKind::Adafactor => 4 * values,
            // Mirrors crates/train/src/optim8.rs: 8-bit codes and an f32 maximum per 256 values for each moment;
            // tensors under 4096 values keep f32 moments.
            OptimizerKind::Adamw8bit if values < 4096 => 8 * values,
            OptimizerKind::Adamw8bit => 2 * values + 8 * values.div_ceil(256),
            OptimizerKind::Sgd => 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum LrScheduler {
    Constant,
    Linear,
    Cosine,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(deny_unknown_fields, default)]
pub struct TrainingSection {
    pub optimizer: OptimizerKind,
    pub learning_rate: f64,
    pub weight_decay: f64,
    /// HF Trainer's grouping: biases and norm weights get no weight decay.
    pub no_decay_for_bias_and_norm: bool,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub lr_scheduler: LrScheduler,
    pub warmup_steps: u64,
    pub batch_size: usize,
    pub gradient_accumulation_steps: usize,
    /// Global gradient-norm clipping; 0 turns it off.
    pub max_grad_norm: f64,
    pub epochs: f64,
    /// Stop after this many optimizer steps (0: run `epochs`).
    pub max_steps: u64,
    pub seed: u64,
    pub shuffle: bool,
    /// Save a checkpoint every N optimizer steps (0: only at the end).
    pub save_steps: u64,
    /// Evaluate every N optimizer steps (0: only at the end, when there is eval data).
    pub eval_steps: u64,
    pub gradient_checkpointing: bool,
}

impl Default for TrainingSection {
    fn default() -> Self {
        TrainingSection {
            optimizer: OptimizerKind::Adamw,
            learning_rate: 1e-4,
            weight_decay: 0.0,
            no_decay_for_bias_and_norm: true,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            lr_scheduler: LrScheduler::Cosine,
            warmup_steps: 0,
            batch_size: 1,
            gradient_accumulation_steps: 1,
            max_grad_norm: 1.0,
            epochs: 1.0,
            max_steps: 0,
            seed: 42,
            shuffle: true,
            save_steps: 0,
            eval_steps: 0,
            gradient_checkpointing: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSection {
    /// `auto`, `cpu`, `cuda`, `cuda:N` or `metal`.
    pub device: String,
    /// CPU threads for matrix multiplications (candle's rayon pool; `RAYON_NUM_THREADS`); 0 = one per core.
    pub threads: usize,
    /// CPU threads for the other ops (candle's own pool; `CANDLE_NUM_THREADS`); 0 = same as `threads`.
    /// On small machines the two pools compete: measure with `make bench`.
    pub op_threads: usize,
}

impl Default for RuntimeSection {
    fn default() -> Self {
        RuntimeSection {
            device: "auto".into(),
            threads: 0,
            op_threads: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    /// The run folder: run.toml, freeze_plan.json, metrics.jsonl, checkpoints/, final/.
    pub dir: PathBuf,
}

impl RunConfig {
    /// Reads and checks a run config. Relative paths are taken relative to the file's folder.
    pub fn read(path: &Path) -> Result<RunConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut config: RunConfig = toml::from_str(&text).map_err(|e| Error::BadConfig {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut config.model.path, &mut config.data.train, &mut config.output.dir] {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        }
        for d in config.data.datasets.iter_mut().chain(&mut config.data.eval_datasets) {
            for p in [&mut d.path, &mut d.dataset_info].into_iter().flatten() {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        if let Some(eval) = &mut config.data.eval {
            if eval.is_relative() {
                *eval = base.join(&*eval);
            }
        }
        config.check().map_err(|reason| Error::BadConfig {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(config)
    }

    /// Value checks serde cannot express.
    pub fn check(&self) -> std::result::Result<(), String> {
        let t = &self.training;
        if self.model.path.as_os_str().is_empty() && self.model.repo.is_none() {
            return Err("[model] needs `path` (a checkpoint folder) or `repo` (a Hugging Face repo id)".into());
        }
        if !matches!(self.model.dtype.as_str(), "auto" | "f32" | "bf16" | "f16") {
            return Err(format!(
                "model.dtype {:?} is not one of auto, f32, bf16, f16",
                self.model.dtype
            ));
        }
        self.data.check_sources()?;
        if t.batch_size == 0 || t.gradient_accumulation_steps == 0 {
            return Err("training.batch_size and training.gradient_accumulation_steps must be at least 1".into());
        }
        if !(t.learning_rate.is_finite() && t.learning_rate > 0.0) {
            return Err(format!(
                "training.learning_rate {} must be a positive number",
                t.learning_rate
            ));
        }
        if t.max_steps == 0 && !(t.epochs.is_finite() && t.epochs > 0.0) {
            return Err("set training.epochs > 0 or training.max_steps > 0".into());
        }
        if !(0.0..1.0).contains(&self.data.eval_split) {
            return Err(format!("data.eval_split {} must be in [0, 1)", self.data.eval_split));
        }
        if self.data.cutoff_len < 2 {
            return Err("data.cutoff_len must be at least 2".into());
        }
        let d = self.runtime.device.as_str();
        let cuda_n = d.strip_prefix("cuda:").is_some_and(|n| n.parse::<usize>().is_ok());
        if !(matches!(d, "auto" | "cpu" | "cuda" | "metal") || cuda_n) {
            return Err(format!(
                "runtime.device {d:?} is not one of auto, cpu, cuda, cuda:N, metal"
            ));
        }
        self.freeze.check_mode().map_err(|e| e.to_string())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a run config always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str =
        "[model]\npath = \"m\"\n[freeze]\ntop = 2\n[data]\ntrain = \"d.jsonl\"\n[output]\ndir = \"runs/a\"\n";

    #[test]
    fn minimal_config_gets_documented_defaults_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("run.toml");
        std::fs::write(&p, MINIMAL).unwrap();
        let c = RunConfig::read(&p).unwrap();
        assert_eq!(c.model.path, dir.path().join("m"));
        assert_eq!(c.training, TrainingSection::default());
        assert_eq!(c.data.cutoff_len, 1024);
        assert_eq!(c.runtime.device, "auto");
        let round = toml::from_str::<RunConfig>(&c.to_toml()).unwrap();
        assert_eq!(round, c);
    }

    #[test]
    fn a_hub_repo_can_name_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("run.toml");
        std::fs::write(&p, MINIMAL.replace("path = \"m\"", "repo = \"Qwen/Qwen2.5-0.5B\"")).unwrap();
        let c = RunConfig::read(&p).unwrap();
        assert_eq!(c.model.repo.as_deref(), Some("Qwen/Qwen2.5-0.5B"));
        assert!(c.model.path.as_os_str().is_empty());
        std::fs::write(&p, MINIMAL.replace("path = \"m\"\n", "")).unwrap();
        assert!(RunConfig::read(&p).unwrap_err().to_string().contains("`path`"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("run.toml");
        std::fs::write(&p, format!("{MINIMAL}[training]\nlearning_rte = 1e-4\n")).unwrap();
        let e = RunConfig::read(&p).unwrap_err().to_string();
        assert!(e.contains("run.toml") && e.contains("learning_rte"), "{e}");
        std::fs::write(&p, format!("{MINIMAL}[training]\nbatch_size = 0\n")).unwrap();
        assert!(RunConfig::read(&p).unwrap_err().to_string().contains("batch_size"));
        std::fs::write(&p, format!("{MINIMAL}[runtime]\ndevice = \"tpu\"\n")).unwrap();
        assert!(RunConfig::read(&p).unwrap_err().to_string().contains("tpu"));
    }
}
