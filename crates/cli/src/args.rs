//! Argument groups shared by several subcommands: the freeze choice and the sizes the memory estimate assumes.

use anyhow::Result;
use clap::Args;
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
}

impl FreezeArgs {
    pub fn is_empty(&self) -> bool {
        self.to_spec_unchecked().0 == FreezeSpec::default()
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
