//! The bundle's README.md: what it holds, how to start it, and every setting that was not carried over or was
//! carried over with a difference.

use crate::{BundleOptions, Distributed, Engine};
use freezetune_core::run_config::RunConfig;
use freezetune_core::FreezePlan;

/// `facts` are the engine's own lines (the freeze selection, the data, what to install).
pub(crate) fn readme(
    engine: Engine,
    config: &RunConfig,
    plan: &FreezePlan,
    o: &BundleOptions,
    facts: &[String],
    unmapped: &[String],
    notes: &[String],
) -> String {
    let sharding = match o.distributed {
        Distributed::None => "",
        Distributed::Zero2 => ", DeepSpeed ZeRO-2",
        Distributed::Zero3 => ", DeepSpeed ZeRO-3",
        Distributed::Fsdp => ", FSDP",
    };
    let mut out = format!(
        "# FreezeTune run for {engine}\n\n\
         Written by `freezetune export-run` from the run whose output folder is `{}`.\n\n\
         - The FreezeTune plan trains {} tensors ({} of {} parameters).\n",
        config.output.dir.display(),
        plan.trainable.len(),
        plan.trainable_params,
        plan.total_params,
        engine = engine.title(),
    );
    for fact in facts {
        out.push_str(&format!("- {fact}\n"));
    }
    out.push_str(&format!(
        "- Start it with `./launch.sh` ({} GPU{}{sharding}).\n",
        o.gpus,
        if o.gpus == 1 { "" } else { "s" },
    ));
    out.push_str("\n## Not carried over\n\n");
    if unmapped.is_empty() {
        out.push_str(&format!("Every setting of the run has its {} key.\n", engine.title()));
    }
    for u in unmapped {
        out.push_str(&format!("- {u}\n"));
    }
    out.push_str("\n## Carried over, with a difference\n\n");
    for n in notes {
        out.push_str(&format!("- {n}\n"));
    }
    out
}
