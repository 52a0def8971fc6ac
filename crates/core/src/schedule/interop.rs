//! A layer schedule said in another trainer's keys, only when that trainer would do the same thing:
//! a `cycle` as LLaMA-Factory's BAdam (`use_badam`, `badam_mode: layer`), a `sample` as Axolotl's LISA
//! (`lisa_n_layers`, `lisa_step_interval`). Anything else is a `not_expressible` error naming the difference.

use super::{kind_name, BlockOrder, IntervalUnit, ScheduleKind, ScheduleSpec, StatePolicy};
use crate::error::{Error, Result};
use crate::layout::ModelLayout;
use crate::plan::{FreezePlan, TrainState};

fn differs(format: &'static str, message: String) -> Error {
    Error::NotExpressible { format, message }
}

/// Whether the plan trains every tensor of every layer (BAdam and LISA move through whole layers, all of them).
fn whole_stack(plan: &FreezePlan) -> bool {
    !plan.layers.is_empty() && plan.layers.iter().all(|l| l.state == TrainState::Trainable)
}

/// The non-layer modules that train in every phase: the plan's and the schedule's `always`.
fn always_trained(plan: &FreezePlan, spec: &ScheduleSpec) -> Vec<String> {
    let mut names: Vec<String> = plan
        .extra_modules
        .iter()
        .filter(|m| m.state != TrainState::Frozen)
        .map(|m| m.name.clone())
        .chain(spec.always.iter().cloned())
        .collect();
    names.sort();
    names.dedup();
    names
}

fn steps_only(format: &'static str, spec: &ScheduleSpec) -> Result<()> {
    if spec.unit() == IntervalUnit::Epochs {
        return Err(differs(
            format,
            "the interval is in epochs; BAdam and LISA switch every N steps (set unit = \"steps\")".into(),
        ));
    }
    Ok(())
}

/// LLaMA-Factory's BAdam keys for a `cycle` schedule.
pub fn badam_yaml(plan: &FreezePlan, spec: &ScheduleSpec) -> Result<String> {
    const F: &str = "llamafactory";
    if spec.kind != ScheduleKind::Cycle {
        return Err(differs(
            F,
            format!(
                "LLaMA-Factory has no {} schedule; its layer schedule is BAdam, a cycle (kind = \"cycle\")",
                kind_name(spec.kind)
            ),
        ));
    }
    if !whole_stack(plan) {
        return Err(differs(
            F,
            format!(
                "BAdam's layer mode cycles through every layer with all its modules; this schedule moves through \
                 layers {} with a module filter or a subset",
                plan.trainable_layer_ids
            ),
        ));
    }
    let always = always_trained(plan, spec);
    if !always.is_empty() {
        return Err(differs(
            F,
            format!(
                "BAdam never trains modules outside the layers; this schedule always trains {}",
                always.join(", ")
            ),
        ));
    }
    if spec.group() != 1 {
        return Err(differs(
            F,
            format!(
                "BAdam's layer mode has one layer per block; this schedule has {}",
                spec.group()
            ),
        ));
    }
    if spec.state_policy() != StatePolicy::Reset {
        return Err(differs(
            F,
            "BAdam resets the optimizer state at each switch; this schedule keeps it (optimizer_state = \"keep\")"
                .into(),
        ));
    }
    steps_only(F, spec)?;
    let mode = match spec.order() {
        BlockOrder::Ascending => "ascending",
        BlockOrder::Descending => "descending",
        BlockOrder::Random => "random",
        BlockOrder::Fixed => "fixed",
    };
    let mut out = String::from("finetuning_type: full\nuse_badam: true\nbadam_mode: layer\n");
    out.push_str(&format!(
        "badam_switch_mode: {mode}\nbadam_switch_interval: {}\n",
        spec.interval()
    ));
    if let Some(b) = spec.start_block {
        out.push_str(&format!("badam_start_block: {b}\n"));
    }
    if spec.order() == BlockOrder::Random {
        out.push_str("# BAdam draws its random block order with Python's random module, not FreezeTune's seed\n");
    }
    Ok(out)
}

/// Axolotl's LISA keys for a `sample` schedule.
pub fn lisa_yaml(layout: &ModelLayout, plan: &FreezePlan, spec: &ScheduleSpec) -> Result<String> {
    const F: &str = "axolotl";
    if spec.kind != ScheduleKind::Sample {
        return Err(differs(
            F,
            format!(
                "Axolotl has no {} schedule; its layer schedule is LISA, layer sampling (kind = \"sample\")",
                kind_name(spec.kind)
            ),
        ));
    }
    if !whole_stack(plan) {
        return Err(differs(
            F,
            format!(
                "LISA samples from every layer with all its modules; this schedule samples from layers {} with a \
                 module filter or a subset",
                plan.trainable_layer_ids
            ),
        ));
    }
    // Axolotl's LISA freezes only the layers: every module outside them trains throughout.
    let mut outside: Vec<String> = layout.non_layer_modules.iter().map(|m| m.name.clone()).collect();
    outside.sort();
    if layout.tie_word_embeddings {
        outside.retain(|m| m != "lm_head");
    }
    let always = always_trained(plan, spec);
    if always != outside {
        return Err(differs(
            F,
            format!(
                "Axolotl's LISA trains every module outside the layers ({}) in every phase; this schedule trains {}",
                outside.join(", "),
                if always.is_empty() {
                    "none".to_string()
                } else {
                    always.join(", ")
                }
            ),
        ));
    }
    if spec.state_policy() != StatePolicy::Keep {
        return Err(differs(
            F,
            "Axolotl's LISA leaves the optimizer state alone at a switch; this schedule resets it".into(),
        ));
    }
    steps_only(F, spec)?;
    Ok(format!(
        "lisa_n_layers: {}\nlisa_step_interval: {}\nlisa_layers_attribute: {}\n\
         # Axolotl draws the layers with numpy's random generator, not FreezeTune's seed\n",
        spec.gamma(),
        spec.interval(),
        layout.layer_prefix
    ))
}
