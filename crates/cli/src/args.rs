//! Argument groups shared by several subcommands: the freeze choice and the sizes the memory estimate assumes.

use anyhow::Result;
use clap::Args;
use freezetune_core::schedule::{BlockOrder, IntervalUnit, ScheduleKind, ScheduleSpec, StatePolicy};
use freezetune_core::spec::{read_llamafactory_yaml, IdList, LlamaFactoryArgs};
use freezetune_core::{FreezeSpec, PlanOptions};
use std::path::PathBuf;

/// The freeze choice: native flags, or LLaMA-Factory's own arguments.
#[derive(Args, Debug, Clone, Default)]
pub struct FreezeArgs {
    /// Train the last N layers.
    #[arg(long, value_name = "N", help_heading = "Native selection (exactly one)")]
    pub top: Option<usize>,
    /// Train the first N layers.
    #[arg(long, value_name = "N", help_heading = "Native selection (exactly one)")]
    pub bottom: Option<usize>,
    /// Train these layer ids: "1,2,10-15".
    #[arg(long, value_name = "IDS", help_heading = "Native selection (exactly one)")]
    pub layers: Option<String>,
    /// Train every layer.
    #[arg(long, help_heading = "Native selection (exactly one)")]
    pub all_layers: bool,
    /// Train no layer (only --extra modules).
    #[arg(long, help_heading = "Native selection (exactly one)")]
    pub no_layers: bool,
    /// Modules of a selected layer that train, comma-separated (self_attn, mlp, mlp.gate_proj, ...); default all.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        help_heading = "Native selection (exactly one)"
    )]
    pub modules: Vec<String>,
    /// Non-layer modules that also train, comma-separated (embed_tokens, norm, lm_head, ...).
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        help_heading = "Native selection (exactly one)"
    )]
    pub extra: Vec<String>,
    /// Also train only some modules of one layer: ID=MODULE[+MODULE...] (repeatable), e.g. 3=mlp or 5=self_attn+mlp.
    #[arg(long, value_name = "ID=MODULES", help_heading = "Native selection (exactly one)")]
    pub layer_modules: Vec<String>,

    /// LLaMA-Factory: +N trains the last N layers, -N the first N.
    #[arg(
        long,
        value_name = "K",
        allow_negative_numbers = true,
        help_heading = "LLaMA-Factory mode"
    )]
    pub freeze_trainable_layers: Option<i64>,
    /// LLaMA-Factory (proposal): explicit trainable layer ids, "1,3,5".
    #[arg(
        long,
        value_name = "IDS",
        allow_hyphen_values = true,
        help_heading = "LLaMA-Factory mode"
    )]
    pub freeze_trainable_layers_ids: Option<String>,
    /// LLaMA-Factory: trainable modules, comma-separated (default all).
    #[arg(long, value_name = "M", help_heading = "LLaMA-Factory mode")]
    pub freeze_trainable_modules: Option<String>,
    /// LLaMA-Factory: extra modules, comma-separated.
    #[arg(long, value_name = "E", help_heading = "LLaMA-Factory mode")]
    pub freeze_extra_modules: Option<String>,
    /// LLaMA-Factory: LLaMA Pro block selection.
    #[arg(long, help_heading = "LLaMA-Factory mode")]
    pub use_llama_pro: bool,
    /// Read the freeze_* keys from a LLaMA-Factory training YAML (flags above override it).
    #[arg(long, value_name = "FILE.yaml", help_heading = "LLaMA-Factory mode")]
    pub llamafactory_config: Option<PathBuf>,
    #[command(flatten)]
    pub schedule: ScheduleArgs,
}

/// A layer schedule over the selection (`[freeze.schedule]`); see docs/run-config.md.
#[derive(Args, Debug, Clone, Default)]
pub struct ScheduleArgs {
    /// static, progressive (gradual unfreezing), cycle (BAdam block switching) or sample (LISA layer sampling).
    #[arg(long, value_name = "KIND", value_parser = parse_kind, help_heading = "Layer schedule")]
    pub schedule: Option<ScheduleKind>,
    /// Length of a phase (default: progressive 1 epoch, cycle 50 steps, sample 20 steps).
    #[arg(long, value_name = "N", help_heading = "Layer schedule")]
    pub interval: Option<u64>,
    /// What --interval counts: steps or epochs.
    #[arg(long, value_name = "UNIT", value_parser = parse_unit, help_heading = "Layer schedule")]
    pub unit: Option<IntervalUnit>,
    /// Layers per group (progressive) or block (cycle); default 1.
    #[arg(long, value_name = "N", help_heading = "Layer schedule")]
    pub group: Option<usize>,
    /// ascending, descending, random or fixed (cycle); descending or ascending (progressive).
    #[arg(long, value_name = "ORDER", value_parser = parse_order, help_heading = "Layer schedule")]
    pub order: Option<BlockOrder>,
    /// cycle: the block the run starts on (0-based, from the bottom).
    #[arg(long, value_name = "N", help_heading = "Layer schedule")]
    pub start_block: Option<usize>,
    /// sample: layers per phase (default 2).
    #[arg(long, value_name = "N", help_heading = "Layer schedule")]
    pub gamma: Option<usize>,
    /// Seed of random block orders and layer draws (default: the run's seed).
    #[arg(long, value_name = "N", help_heading = "Layer schedule")]
    pub schedule_seed: Option<u64>,
    /// Modules outside the layers that train in every phase, comma-separated (embed_tokens, norm, lm_head).
    #[arg(long, value_name = "LIST", value_delimiter = ',', help_heading = "Layer schedule")]
    pub always: Vec<String>,
    /// progressive: each lower group's learning rate is the one above divided by this (2.6 in ULMFiT).
    #[arg(long, value_name = "F", help_heading = "Layer schedule")]
    pub lr_decay: Option<f64>,
    /// reset (every switch starts the optimizer afresh, BAdam) or keep (moments survive, LISA).
    #[arg(long, value_name = "POLICY", value_parser = parse_policy, help_heading = "Layer schedule")]
    pub optimizer_state: Option<StatePolicy>,
}

fn parse_enum<T: serde::de::DeserializeOwned>(what: &str, choices: &str, s: &str) -> std::result::Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("{s:?} is not a {what}; choose {choices}"))
}

fn parse_kind(s: &str) -> std::result::Result<ScheduleKind, String> {
    parse_enum("schedule kind", "static, progressive, cycle or sample", s)
}

fn parse_unit(s: &str) -> std::result::Result<IntervalUnit, String> {
    parse_enum("unit", "steps or epochs", s)
}

fn parse_order(s: &str) -> std::result::Result<BlockOrder, String> {
    parse_enum("block order", "ascending, descending, random or fixed", s)
}

fn parse_policy(s: &str) -> std::result::Result<StatePolicy, String> {
    parse_enum("optimizer state policy", "reset or keep", s)
}

impl ScheduleArgs {
    /// The schedule these flags describe; `None` without `--schedule` (its options alone are an error).
    pub fn to_spec(&self) -> Result<Option<ScheduleSpec>> {
        let spec = ScheduleSpec {
            kind: self.schedule.unwrap_or_default(),
            interval: self.interval,
            unit: self.unit,
            group: self.group,
            order: self.order,
            start_block: self.start_block,
            gamma: self.gamma,
            seed: self.schedule_seed,
            always: self.always.iter().map(|m| m.trim().to_string()).collect(),
            lr_decay: self.lr_decay,
            optimizer_state: self.optimizer_state,
        };
        if self.schedule.is_none() {
            if spec != ScheduleSpec::default() {
                anyhow::bail!("layer schedule options need --schedule KIND (progressive, cycle or sample)");
            }
            return Ok(None);
        }
        spec.validate()?;
        Ok(Some(spec))
    }
}

impl FreezeArgs {
    pub fn is_empty(&self) -> bool {
        self.to_spec_unchecked().0 == FreezeSpec::default() && self.schedule.schedule.is_none()
    }

    /// The spec these flags describe, plus notes to show (e.g. from reading a LLaMA-Factory YAML).
    pub fn to_spec(&self) -> Result<(FreezeSpec, Vec<String>)> {
        let (mut spec, uses_lf) = self.to_spec_unchecked();
        let mut notes = Vec::new();
        if uses_lf {
            let mut lf = LlamaFactoryArgs::default();
            if let Some(path) = &self.llamafactory_config {
                let (args, n) = read_llamafactory_yaml(path)?;
                lf = args;
                notes = n;
            }
            if let Some(k) = self.freeze_trainable_layers {
                lf.freeze_trainable_layers = Some(k);
            }
            if let Some(ids) = &self.freeze_trainable_layers_ids {
                lf.freeze_trainable_layers_ids = Some(IdList::Text(ids.clone()));
            }
            if let Some(m) = &self.freeze_trainable_modules {
                lf.freeze_trainable_modules = Some(m.clone());
            }
            if let Some(e) = &self.freeze_extra_modules {
                lf.freeze_extra_modules = Some(e.clone());
            }
            lf.use_llama_pro |= self.use_llama_pro;
            spec.llamafactory = Some(lf);
        }
        spec.schedule = self.schedule.to_spec()?;
        Ok((spec, notes))
    }

    fn to_spec_unchecked(&self) -> (FreezeSpec, bool) {
        let spec = FreezeSpec {
            top: self.top,
            bottom: self.bottom,
            layers: self.layers.clone(),
            all_layers: self.all_layers,
            no_layers: self.no_layers,
            modules: self.modules.iter().map(|m| m.trim().to_string()).collect(),
            extra: self.extra.iter().map(|m| m.trim().to_string()).collect(),
            layer_modules: self
                .layer_modules
                .iter()
                .map(|item| {
                    let (id, modules) = item.split_once('=').unwrap_or((item, ""));
                    let modules = modules
                        .split('+')
                        .map(|m| m.trim().to_string())
                        .filter(|m| !m.is_empty());
                    (id.trim().to_string(), modules.collect())
                })
                .collect(),
            llamafactory: None,
            schedule: None,
        };
        let uses_lf = self.freeze_trainable_layers.is_some()
            || self.freeze_trainable_layers_ids.is_some()
            || self.freeze_trainable_modules.is_some()
            || self.freeze_extra_modules.is_some()
            || self.use_llama_pro
            || self.llamafactory_config.is_some();
        (spec, uses_lf)
    }
}

/// Sizes for the memory estimate.
#[derive(Args, Debug, Clone)]
pub struct SizeArgs {
    /// Batch size the memory estimate assumes.
    #[arg(long, default_value_t = 1, value_name = "N", help_heading = "Memory estimate")]
    pub batch_size: u64,
    /// Sequence length the memory estimate assumes.
    #[arg(long, default_value_t = 512, value_name = "N", help_heading = "Memory estimate")]
    pub seq_len: u64,
}

impl SizeArgs {
    pub fn options(&self) -> PlanOptions {
        PlanOptions {
            batch_size: self.batch_size,
            seq_len: self.seq_len,
        }
    }
}
