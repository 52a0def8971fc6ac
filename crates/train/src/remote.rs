//! What a Hub search row says about a model before any download: whether this build can train its architecture,
//! and whether a default plan fits the chosen device, from config.json and the safetensors headers alone (the hub
//! crate reads those with range requests). The same layout, planner and fit check as a downloaded model.

use crate::config::DecoderConfig;
use freezetune_core::fit::{fit, DeviceMemory, FitSetup, FitVerdict};
use freezetune_core::{plan, FreezeSpec, ModelLayout, PlanOptions, RemoteShard};
use serde::Serialize;

/// The layers a default plan trains: the last two, LLaMA-Factory's `freeze_trainable_layers` default.
pub const DEFAULT_TOP_LAYERS: usize = 2;
/// Tokens per example in the default plan: the run config's default `cutoff_len`.
pub const DEFAULT_SEQ_LEN: u64 = 1024;

/// The verdict on one remote checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct RemoteModelCheck {
    pub repo: String,
    pub architecture: String,
    pub model_type: Option<String>,
    pub num_layers: usize,
    pub total_params: u64,
    pub weight_bytes: u64,
    /// Why this build cannot train it (it can still be downloaded, inspected and planned); `None` when it can.
    pub training_unsupported: Option<String>,
    /// The default plan (the last two layers, batch 1, 1024 tokens, AdamW) against the device.
    pub fit: FitVerdict,
}

/// Checks `repo`'s checkpoint, given its config.json and its shards' headers, against `device` (`cpu`: the device
/// is this machine's memory and the CPU's f32 path; otherwise a GPU in half precision).
pub fn check_remote_model(
    repo: &str,
    config: serde_json::Value,
    shards: &[RemoteShard],
    device: &DeviceMemory,
    cpu: bool,
) -> freezetune_core::Result<RemoteModelCheck> {
    let training_unsupported = DecoderConfig::from_config_json(&config).err().map(|e| e.to_string());
    let layout = ModelLayout::from_headers(repo, config, shards)?;
    let setup = default_setup(cpu);
    let spec = FreezeSpec {
        top: Some(DEFAULT_TOP_LAYERS.min(layout.num_layers)),
        ..FreezeSpec::default()
    };
    let options = PlanOptions {
        batch_size: setup.batch_size,
        seq_len: setup.seq_len,
    };
    let plan = plan(&layout, &spec, options)?;
    let trainable = plan.trainable.iter().cloned().collect();
    Ok(RemoteModelCheck {
        repo: repo.to_string(),
        architecture: layout.architecture.clone(),
        model_type: layout.model_type.clone(),
        num_layers: layout.num_layers,
        total_params: layout.total_params,
        weight_bytes: layout.weight_bytes(),
        training_unsupported,
        fit: fit(&layout, &trainable, setup, device),
    })
}

/// A run's defaults as the fit check counts them: batch 1 of 1024 tokens, no accumulation or checkpointing,
/// AdamW, weights kept whole; half precision on a GPU.
pub fn default_setup(cpu: bool) -> FitSetup {
    FitSetup {
        batch_size: 1,
        seq_len: DEFAULT_SEQ_LEN,
        gradient_accumulation: 1,
        gradient_checkpointing: false,
        half_precision: !cpu,
        cpu,
        quantize_frozen: Default::default(),
        optimizer: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// config.json and the headers of every shard in `dir`, as the hub crate reads them remotely.
    fn remote_parts(dir: &Path) -> (serde_json::Value, Vec<RemoteShard>) {
        let config = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        let mut shards = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "safetensors") {
                let bytes = std::fs::read(&path).unwrap();
                let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
                shards.push(RemoteShard {
                    name: path.file_name().unwrap().to_string_lossy().into_owned(),
                    size: bytes.len() as u64,
                    header: bytes[8..8 + n].to_vec(),
                });
            }
        }
        (config, shards)
    }

    fn gib(n: u64) -> DeviceMemory {
        DeviceMemory {
            name: format!("{n} GiB"),
            available_bytes: n << 30,
        }
    }

    #[test]
    fn a_remote_check_counts_what_the_same_plan_on_the_downloaded_model_counts() {
        let tmp = tempfile::tempdir().unwrap();
        let demo = freezetune_core::demo::write_demo(tmp.path(), false).unwrap();
        let (config, shards) = remote_parts(&demo.model);
        let check = check_remote_model("acme/demo", config.clone(), &shards, &gib(64), true).unwrap();
        assert_eq!(check.training_unsupported, None);
        assert!(check.fit.fits, "{:?}", check.fit);

        let local = ModelLayout::inspect(&demo.model).unwrap();
        let spec = FreezeSpec {
            top: Some(2),
            ..FreezeSpec::default()
        };
        let options = PlanOptions {
            batch_size: 1,
            seq_len: DEFAULT_SEQ_LEN,
        };
        let local_plan = plan(&local, &spec, options).unwrap();
        let local_fit = fit(
            &local,
            &local_plan.trainable.iter().cloned().collect(),
            default_setup(true),
            &gib(64),
        );
        assert_eq!(check.fit, local_fit);
        assert_eq!(check.total_params, local.total_params);
        assert_eq!(check.num_layers, local.num_layers);

        // A device smaller than the weights does not fit, and the verdict says what would.
        let tiny = DeviceMemory {
            name: "1 MiB".into(),
            available_bytes: 1 << 20,
        };
        let check = check_remote_model("acme/demo", config, &shards, &tiny, false).unwrap();
        assert!(!check.fit.fits);
        assert!(check.fit.need_bytes > check.fit.available_bytes);
    }

    #[test]
    fn an_architecture_this_build_cannot_train_is_named_but_still_planned() {
        let tmp = tempfile::tempdir().unwrap();
        let demo = freezetune_core::demo::write_demo(tmp.path(), false).unwrap();
        let (mut config, shards) = remote_parts(&demo.model);
        config["architectures"] = serde_json::json!(["MambaForCausalLM"]);
        config["model_type"] = serde_json::json!("mamba");
        let check = check_remote_model("acme/demo", config, &shards, &gib(64), true).unwrap();
        let reason = check.training_unsupported.expect("mamba is not trained here");
        assert!(reason.contains("mamba") || reason.contains("Mamba"), "{reason}");
        assert_eq!(check.architecture, "MambaForCausalLM");
        assert!(check.fit.need_bytes > 0);
    }
}
