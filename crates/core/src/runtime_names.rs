//! The names transformers 5 gives a checkpoint's parameters, where its loading converts them: what LLaMA-Factory
//! 0.9.5 and Axolotl 0.19 (both on transformers 5) select over. A mixture-of-experts checkpoint stores one linear
//! per expert; transformers 5 holds each layer's experts as one parameter per projection, so a hand-off can train
//! all of a layer's experts of a projection or none of them.

use crate::error::{Error, Result};
use crate::layout::ModelLayout;
use crate::plan::FreezePlan;
use std::collections::BTreeMap;

/// Families whose checkpoints store one linear per expert and which transformers 5 loads fused (its
/// `conversion_mapping.py`, 5.6): each layer's experts become one `mlp.experts.gate_up_proj` and one
/// `mlp.experts.down_proj` parameter.
const FUSED_EXPERTS: [&str; 20] = [
    "qwen2_moe",
    "qwen3_moe",
    "qwen3_next",
    "qwen3_omni_moe",
    "qwen3_omni_moe_thinker",
    "olmoe",
    "flex_olmo",
    "deepseek_v2",
    "deepseek_v3",
    "dots1",
    "ernie4_5_moe",
    "glm4_moe",
    "glm4_moe_lite",
    "glm4v_moe",
    "glm_moe_dsa",
    "hunyuan_v1_moe",
    "longcat_flash",
    "solar_open",
    "afmoe",
    "exaone_moe",
];

/// Mixtral-style families: `block_sparse_moe` is renamed `mlp` as well, and the experts' `w1`/`w3` (gate, up) and
/// `w2` (down) are fused the same way.
const RENAMED_EXPERTS: [&str; 2] = ["mixtral", "minimax"];

/// The name a checkpoint tensor's parameter has in transformers 5, which LLaMA-Factory 0.9.5 selects over (its
/// requirements resolve to transformers 5.6): a mixture-of-experts layer's experts are one fused parameter per
/// projection there, so `.{id}.` patterns never meet an expert's number. Every other name is its own.
pub fn runtime_name(name: &str, model_type: &str) -> String {
    let renamed = RENAMED_EXPERTS.contains(&model_type);
    if !renamed && !FUSED_EXPERTS.contains(&model_type) {
        return name.to_string();
    }
    let name = match renamed {
        true => name.replace(".block_sparse_moe.", ".mlp."),
        false => name.to_string(),
    };
    let Some((head, rest)) = name.split_once(".mlp.experts.") else {
        return name;
    };
    let Some((expert, projection)) = rest.split_once('.') else {
        return name;
    };
    let fused = match projection {
        _ if expert.parse::<usize>().is_err() => None,
        "gate_proj.weight" | "up_proj.weight" | "w1.weight" | "w3.weight" => Some("gate_up_proj"),
        "down_proj.weight" | "w2.weight" => Some("down_proj"),
        _ => None,
    };
    match fused {
        Some(f) => format!("{head}.mlp.experts.{f}"),
        None => name,
    }
}

/// Refuses a checkpoint whose experts are stored one tensor each (`.experts.N.`) in a family this table does not
/// know (transformers 5 fuses and renames those differently per family: phimoe, jamba, minimax_m2, ...): what
/// LLaMA-Factory or Axolotl would select in it cannot be told. `what` names the caller.
pub fn check_known_experts(layout: &ModelLayout, what: &str) -> std::result::Result<(), String> {
    let model_type = layout.model_type.as_deref().unwrap_or_default();
    if FUSED_EXPERTS.contains(&model_type) || RENAMED_EXPERTS.contains(&model_type) {
        return Ok(());
    }
    let per_expert = layout.tensors().find(|t| {
        t.name
            .split_once(".experts.")
            .is_some_and(|(_, rest)| rest.split('.').next().is_some_and(|n| n.parse::<usize>().is_ok()))
    });
    match per_expert {
        None => Ok(()),
        Some(t) => Err(format!(
            "{what} selects over transformers 5's parameter names, and FreezeTune does not know how transformers 5 \
             names the experts of a {model_type:?} model ({} is one expert's tensor); plan in native mode, whose \
             selection is structural",
            t.name
        )),
    }
}

/// A layer module's name in transformers 5 (Mixtral's `block_sparse_moe` is `mlp`).
pub fn runtime_module<'a>(module: &'a str, model_type: &str) -> &'a str {
    match module {
        "block_sparse_moe" if RENAMED_EXPERTS.contains(&model_type) => "mlp",
        m => m,
    }
}

/// Refuses a plan that trains some but not all of the checkpoint tensors one transformers 5 parameter holds (some
/// of a layer's experts): no hand-off can express it. `format` names the hand-off.
pub fn check_whole_parameters(layout: &ModelLayout, plan: &FreezePlan, format: &'static str) -> Result<()> {
    check_known_experts(layout, "this hand-off").map_err(|message| Error::NotExpressible { format, message })?;
    let model_type = layout.model_type.as_deref().unwrap_or_default();
    let mut parameters: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for t in layout.tensors() {
        let entry = parameters.entry(runtime_name(&t.name, model_type)).or_default();
        entry.0 += 1;
        entry.1 += usize::from(plan.is_trainable(&t.name));
    }
    match parameters
        .into_iter()
        .find(|(_, (all, trained))| *trained > 0 && trained < all)
    {
        None => Ok(()),
        Some((name, (all, trained))) => Err(Error::NotExpressible {
            format,
            message: format!(
                "the plan trains {trained} of the {all} experts' tensors that transformers 5 holds as one parameter, \
                 {name}; LLaMA-Factory and Axolotl train a layer's experts of a projection together or not at all. \
                 Train all of that layer's experts (or none) to hand the run off"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn experts_of_a_family_the_table_does_not_know_are_refused() {
        let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models");
        let mut layout = ModelLayout::inspect(&models.join("qwen3_moe")).unwrap();
        assert!(check_known_experts(&layout, "LLaMA-Factory mode").is_ok());
        layout.model_type = Some("phimoe".into());
        let e = check_known_experts(&layout, "LLaMA-Factory mode").unwrap_err();
        assert!(e.contains("\"phimoe\"") && e.contains(".experts.0."), "{e}");
        // Stacked experts (Qwen3.5 MoE) and models without experts pass whatever their family.
        for dense in ["llama", "qwen3_5_moe"] {
            let mut layout = ModelLayout::inspect(&models.join(dense)).unwrap();
            layout.model_type = Some("unknown".into());
            assert!(check_known_experts(&layout, "x").is_ok(), "{dense}");
        }
    }

    #[test]
    fn experts_are_selected_as_transformers_5_fuses_them() {
        let q = "model.layers.3.mlp.experts.12.up_proj.weight";
        assert_eq!(runtime_name(q, "qwen3_moe"), "model.layers.3.mlp.experts.gate_up_proj");
        let m = "model.layers.0.block_sparse_moe.experts.7.w2.weight";
        assert_eq!(runtime_name(m, "mixtral"), "model.layers.0.mlp.experts.down_proj");
        assert_eq!(
            runtime_name("model.layers.0.block_sparse_moe.gate.weight", "mixtral"),
            "model.layers.0.mlp.gate.weight"
        );
        // Families the table does not list keep their names (and are refused where it matters,
        // `check_known_experts`).
        assert_eq!(runtime_name(q, "phimoe"), q);
        assert_eq!(
            runtime_name("model.layers.3.mlp.down_proj.weight", "qwen3_moe"),
            "model.layers.3.mlp.down_proj.weight"
        );
    }
}
