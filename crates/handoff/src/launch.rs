//! How the bundle starts: `launch.sh` with LLaMA-Factory's command for one GPU, N GPUs (torchrun through
//! FORCE_TORCHRUN), DeepSpeed ZeRO-2/3 (the config files LLaMA-Factory 0.9.5 ships in examples/deepspeed) or FSDP
//! (accelerate with LLaMA-Factory's examples/accelerate/fsdp_config.yaml, `use_orig_params` on, which frozen
//! parameters need); or with Axolotl's `axolotl train`, which starts accelerate itself (the same DeepSpeed files;
//! FSDP is keys of its config.yml).

use crate::{put, BundleOptions, Distributed, Result};
use std::path::Path;

/// The DeepSpeed or FSDP config file the YAML names (`deepspeed:`), if any, written into `dir`.
/// `mixed_precision` is accelerate's name for the run's compute dtype (`bf16`, `fp16` or `no`), as train.yaml says.
pub(crate) fn write_distributed(
    dir: &Path,
    files: &mut Vec<String>,
    o: &BundleOptions,
    mixed_precision: &str,
) -> Result<Option<String>> {
    let (name, text) = match o.distributed {
        Distributed::None => return Ok(None),
        Distributed::Zero2 => ("ds_z2_config.json", deepspeed(ZERO2)),
        Distributed::Zero3 => ("ds_z3_config.json", deepspeed(ZERO3)),
        Distributed::Fsdp => ("fsdp_config.yaml", fsdp(o.gpus, mixed_precision)),
    };
    put(dir, files, name, &text)?;
    Ok(Some(name.to_string()))
}

const ZERO2: &str = r#"    "stage": 2,
    "allgather_partitions": true,
    "allgather_bucket_size": 5e8,
    "overlap_comm": false,
    "reduce_scatter": true,
    "reduce_bucket_size": 5e8,
    "contiguous_gradients": true,
    "round_robin_gradients": true"#;

const ZERO3: &str = r#"    "stage": 3,
    "overlap_comm": false,
    "contiguous_gradients": true,
    "sub_group_size": 1e9,
    "reduce_bucket_size": "auto",
    "stage3_prefetch_bucket_size": "auto",
    "stage3_param_persistence_threshold": "auto",
    "stage3_max_live_parameters": 1e9,
    "stage3_max_reuse_distance": 1e9,
    "stage3_gather_16bit_weights_on_model_save": true"#;

fn deepspeed(zero: &str) -> String {
    format!(
        r#"{{
  "train_batch_size": "auto",
  "train_micro_batch_size_per_gpu": "auto",
  "gradient_accumulation_steps": "auto",
  "gradient_clipping": "auto",
  "zero_allow_untested_optimizer": true,
  "fp16": {{
    "enabled": "auto",
    "loss_scale": 0,
    "loss_scale_window": 1000,
    "initial_scale_power": 16,
    "hysteresis": 2,
    "min_loss_scale": 1
  }},
  "bf16": {{
    "enabled": "auto"
  }},
  "zero_optimization": {{
{zero}
  }}
}}
"#
    )
}

fn fsdp(gpus: usize, mixed_precision: &str) -> String {
    format!(
        "compute_environment: LOCAL_MACHINE
debug: false
distributed_type: FSDP
downcast_bf16: 'no'
fsdp_config:
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_backward_prefetch: BACKWARD_PRE
  fsdp_forward_prefetch: false
  fsdp_cpu_ram_efficient_loading: true
  fsdp_offload_params: false
  fsdp_sharding_strategy: FULL_SHARD
  fsdp_state_dict_type: FULL_STATE_DICT
  fsdp_sync_module_states: true
  fsdp_use_orig_params: true
machine_rank: 0
main_training_function: main
mixed_precision: {mixed_precision}
num_machines: 1
num_processes: {gpus}
rdzv_backend: static
same_network: true
tpu_env: []
tpu_use_cluster: false
tpu_use_sudo: false
use_cpu: false
"
    )
}

/// `launch.sh`: runs from its own folder, so the bundle can be copied anywhere; extra arguments go to the
/// command (LLaMA-Factory reads `key=value` overrides after the YAML).
pub(crate) fn launch_script(o: &BundleOptions) -> String {
    let command = match (o.distributed, o.gpus) {
        (Distributed::Fsdp, n) => format!(
            "accelerate launch --config_file fsdp_config.yaml --num_processes {n} -m llamafactory.launcher train.yaml \"$@\""
        ),
        (_, n) if n > 1 => format!("FORCE_TORCHRUN=1 NPROC_PER_NODE={n} llamafactory-cli train train.yaml \"$@\""),
        // DeepSpeed on one GPU still goes through torchrun, as LLaMA-Factory requires for DeepSpeed.
        (Distributed::Zero2 | Distributed::Zero3, _) => {
            "FORCE_TORCHRUN=1 llamafactory-cli train train.yaml \"$@\"".to_string()
        }
        _ => "llamafactory-cli train train.yaml \"$@\"".to_string(),
    };
    script(
        "LLaMA-Factory (pip install llamafactory==0.9.5",
        "set NNODES, NODE_RANK, MASTER_ADDR and MASTER_PORT on each (LLaMA-Factory passes them to torchrun)",
        o,
        &command,
    )
}

/// Axolotl's `launch.sh`: `axolotl train` starts accelerate, which takes the GPU count after `--`; extra
/// arguments go to axolotl (config overrides such as `--learning-rate 1e-5`, or `--launcher torchrun`).
pub(crate) fn axolotl_launch_script(o: &BundleOptions) -> String {
    let command = match o.gpus {
        1 => "axolotl train config.yml \"$@\"".to_string(),
        n => format!("axolotl train config.yml \"$@\" -- --num_processes {n}"),
    };
    script(
        "Axolotl (pip install axolotl==0.19.0",
        "add accelerate's --num_machines, --machine_rank and --main_process_ip after `--`",
        o,
        &command,
    )
}

/// A launch script that runs `command` from its own folder, so the bundle can be copied anywhere. `install` is the
/// engine and the start of its pip command (DeepSpeed is added when the bundle uses it); `nodes` says how to run
/// on several nodes.
fn script(install: &str, nodes: &str, o: &BundleOptions, command: &str) -> String {
    let extra = match o.distributed {
        Distributed::Zero2 | Distributed::Zero3 => " deepspeed",
        _ => "",
    };
    format!(
        "#!/usr/bin/env bash
# Trains this FreezeTune run with {install}{extra}).
# Several nodes: {nodes}.
set -euo pipefail
cd \"$(dirname \"$0\")\"
{command}
"
    )
}

#[cfg(unix)]
pub(crate) fn make_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(|e| crate::io(path, e))
}

#[cfg(not(unix))]
pub(crate) fn make_executable(_path: &Path) -> Result<()> {
    Ok(())
}
