//! LLaMA-Factory mode: reproduces `_setup_freeze_tuning` of LLaMA-Factory 0.9.5 exactly, quirks included, and
//! reports each place where its answer differs from native mode's structural one.
//!
//! What LLaMA-Factory does, in order:
//! 1. trainable layer ids: `use_llama_pro` -> every `num_layers // K`-th layer (K must divide the count, with
//!    Python's signed `%`); `K > 0` -> the last `min(K, n)`; `K <= 0` -> the first `min(-K, n)` (so 0 trains none);
//!    the ids proposal takes an explicit list instead.
//! 2. "hidden modules" = for every parameter name containing `.0.` (else `.1.`), the first segment after the last
//!    split on it; "non-hidden modules" = `name.split(".")[-2]` of names without `\.\d+\.`.
//! 3. patterns `.{id}.{module}` (`.{id}.` for `all`) and the extra module names themselves;
//!    a parameter trains if any pattern is a SUBSTRING of its name.
//!
//! Tied `lm_head.weight` is not among a tied model's parameters (PyTorch de-duplicates shared tensors). The names
//! are transformers 5's parameter names (`runtime_name`): a mixture-of-experts checkpoint's per-expert tensors are
//! one fused parameter per layer and projection there, and a tensor trains when its parameter does.

use crate::error::{Error, Result};
use crate::layout::{split_layer_name, ModelLayout};
use crate::plan::Warning;
use crate::runtime_names::runtime_name;
use crate::spec::LlamaFactoryArgs;
use std::collections::BTreeSet;

/// LLaMA-Factory's default for `freeze_trainable_layers`.
pub const DEFAULT_TRAINABLE_LAYERS: i64 = 2;

pub(crate) fn trainable_set(layout: &ModelLayout, args: &LlamaFactoryArgs) -> Result<(BTreeSet<String>, Vec<Warning>)> {
    crate::runtime_names::check_known_experts(layout, "LLaMA-Factory mode")
        .map_err(|message| lf_error("lf_unknown_experts", message))?;
    let model_type = layout.model_type.as_deref().unwrap_or_default();
    let checkpoint: Vec<(&str, String)> = layout
        .tensors()
        .map(|t| (t.name.as_str(), runtime_name(&t.name, model_type)))
        .collect();
    let runtime: BTreeSet<&str> = checkpoint.iter().map(|(_, r)| r.as_str()).collect();
    let names: Vec<&str> = runtime.into_iter().collect();
    let n = layout.num_layers as i64;
    if n == 0 {
        return Err(lf_error(
            "freeze_unsupported",
            "Current model does not support freeze tuning (no layer count in config.json).",
        ));
    }
    let mut warnings = Vec::new();
    let ids = layer_ids(args, n, &mut warnings)?;

    let hidden = hidden_modules(&names);
    let non_hidden = non_hidden_modules(&names);
    let mut patterns = Vec::new();
    let modules = split_arg(args.freeze_trainable_modules.as_deref().unwrap_or("all"));
    for module in &modules {
        if module != "all" && !hidden.contains(module) {
            return Err(Error::UnknownModule {
                module: module.clone(),
                place: "LLaMA-Factory's layer modules".into(),
                choices: hidden.iter().cloned().collect(),
            });
        }
        for id in &ids {
            patterns.push(format!(".{id}.{}", if module == "all" { "" } else { module }));
        }
    }
    let extras = args.freeze_extra_modules.as_deref().map(split_arg).unwrap_or_default();
    for module in &extras {
        if !non_hidden.contains(module) {
            return Err(Error::UnknownModule {
                module: module.clone(),
                place: "LLaMA-Factory's non-layer modules".into(),
                choices: non_hidden.iter().cloned().collect(),
            });
        }
        patterns.push(module.clone());
    }
    let chosen: BTreeSet<&str> = names
        .iter()
        .copied()
        .filter(|name| patterns.iter().any(|p| name.contains(p.as_str())))
        .collect();
    let trainable: BTreeSet<String> = checkpoint
        .iter()
        .filter(|(_, r)| chosen.contains(r.as_str()))
        .map(|(c, _)| c.to_string())
        .collect();
    warnings.extend(structural_differences(layout, &ids, &modules, &extras, &trainable));
    if layout.multimodal {
        warnings.push(Warning::new(
            "lf_multimodal_unverified",
            "for vision-language models LLaMA-Factory also applies freeze_vision_tower / freeze_multi_modal_projector; \
             this mode reproduces its text-model rules only, so check the vision and projector tensors in the plan",
        ));
    }
    Ok((trainable, warnings))
}

fn lf_error(kind: &'static str, message: impl Into<String>) -> Error {
    Error::LlamaFactory {
        kind,
        message: message.into(),
    }
}

/// LLaMA-Factory's `split_arg`: a comma list, each item stripped; `""` becomes `[""]`.
fn split_arg(s: &str) -> Vec<String> {
    s.split(',').map(|t| t.trim().to_string()).collect()
}

fn layer_ids(args: &LlamaFactoryArgs, n: i64, warnings: &mut Vec<Warning>) -> Result<Vec<i64>> {
    let k = args.freeze_trainable_layers.unwrap_or(DEFAULT_TRAINABLE_LAYERS);
    if let Some(list) = &args.freeze_trainable_layers_ids {
        let ids = list.to_ids()?;
        if args.freeze_trainable_layers.is_some() {
            warnings.push(Warning::new(
                "lf_ids_override_count",
                "freeze_trainable_layers_ids is set, so freeze_trainable_layers is ignored",
            ));
        }
        let outside: Vec<String> = ids
            .iter()
            .filter(|&&i| i < 0 || i >= n)
            .map(|i| i.to_string())
            .collect();
        if !outside.is_empty() {
            warnings.push(Warning::new(
                "lf_ids_out_of_range",
                format!(
                    "layer ids {} are outside 0-{} and match nothing (LLaMA-Factory ignores them silently; native mode refuses them)",
                    outside.join(", "),
                    n - 1
                ),
            ));
        }
        return Ok(ids);
    }
    if args.use_llama_pro {
        if k == 0 {
            return Err(lf_error(
                "llama_pro_zero",
                "use_llama_pro needs freeze_trainable_layers != 0 (LLaMA-Factory fails with a division by zero)",
            ));
        }
        if n.rem_euclid(k.abs()) != 0 {
            return Err(lf_error(
                "llama_pro_not_divisible",
                format!("`num_layers` {n} should be divisible by `num_layer_trainable` {k}."),
            ));
        }
        // k divides n here, so Python's floor division is exact division.
        let stride = n / k;
        let ids = python_range(stride - 1, n + stride - 1, stride);
        if ids.is_empty() {
            warnings.push(Warning::new(
                "lf_zero_layers",
                format!("use_llama_pro with freeze_trainable_layers {k} selects no layer"),
            ));
        }
        return Ok(ids);
    }
    if k == 0 {
        warnings.push(Warning::new(
            "lf_zero_layers",
            "freeze_trainable_layers 0 trains no layer (LLaMA-Factory does this silently)",
        ));
    } else if k.abs() > n {
        warnings.push(Warning::new(
            "lf_clamped",
            format!(
                "freeze_trainable_layers {k} is more than the {n} layers of this model; clamped to {}",
                n * k.signum()
            ),
        ));
    }
    Ok(if k > 0 {
        (0.max(n - k)..n).collect()
    } else {
        (0..(-k).min(n)).collect()
    })
}

/// Python's `range(start, stop, step)` for a non-zero step.
fn python_range(start: i64, stop: i64, step: i64) -> Vec<i64> {
    let mut out = Vec::new();
    let mut i = start;
    while (step > 0 && i < stop) || (step < 0 && i > stop) {
        out.push(i);
        i += step;
    }
    out
}

/// The text after the last piece of Python's `s.split(sep)` (non-overlapping, left to right).
fn python_split_last<'a>(s: &'a str, sep: &str) -> &'a str {
    let mut rest = s;
    while let Some(pos) = rest.find(sep) {
        rest = &rest[pos + sep.len()..];
    }
    rest
}

fn hidden_modules(names: &[&str]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for name in names {
        let sep = if name.contains(".0.") {
            ".0."
        } else if name.contains(".1.") {
            ".1."
        } else {
            continue;
        };
        let tail = python_split_last(name, sep);
        out.insert(tail.split('.').next().unwrap_or_default().to_string());
    }
    out
}

fn has_dotted_number(name: &str) -> bool {
    let b = name.as_bytes();
    (0..b.len()).any(|i| {
        b[i] == b'.' && {
            let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            digits > 0 && b.get(i + 1 + digits) == Some(&b'.')
        }
    })
}

fn non_hidden_modules(names: &[&str]) -> BTreeSet<String> {
    names
        .iter()
        .filter(|n| !has_dotted_number(n))
        .filter_map(|n| {
            let parts: Vec<&str> = n.split('.').collect();
            (parts.len() >= 2).then(|| parts[parts.len() - 2].to_string())
        })
        .collect()
}

/// Warnings for every tensor where LLaMA-Factory's substring answer and a structural reading of the same
/// arguments disagree (e.g. `norm` catching every layernorm, `.1.` catching a vision block).
fn structural_differences(
    layout: &ModelLayout,
    ids: &[i64],
    modules: &[String],
    extras: &[String],
    lf: &BTreeSet<String>,
) -> Vec<Warning> {
    let ids: BTreeSet<usize> = ids.iter().filter(|&&i| i >= 0).map(|&i| i as usize).collect();
    let all = modules.iter().any(|m| m == "all");
    let structural: BTreeSet<&str> = layout
        .tensors()
        .filter(|t| match split_layer_name(&t.name, &layout.layer_prefix) {
            Some((id, module, _)) => ids.contains(&id) && (all || modules.iter().any(|m| m == module)),
            None => layout
                .non_layer_modules
                .iter()
                .any(|m| extras.contains(&m.name) && m.tensors.iter().any(|x| x.name == t.name)),
        })
        .map(|t| t.name.as_str())
        .collect();
    let extra: Vec<&str> = lf
        .iter()
        .map(String::as_str)
        .filter(|n| !structural.contains(n))
        .collect();
    let missing: Vec<&str> = structural.iter().copied().filter(|n| !lf.contains(*n)).collect();
    let mut out = Vec::new();
    if !extra.is_empty() {
        let norm_note = if extras.iter().any(|e| e == "norm") && extra.iter().any(|n| n.contains("norm")) {
            " (the extra module `norm` is a substring match: it also unfreezes every layer's *norm tensors)"
        } else {
            ""
        };
        out.push(Warning::new(
            "lf_substring_match",
            format!(
                "LLaMA-Factory's substring matching trains {} tensor(s) a structural match would not{norm_note}: {}",
                extra.len(),
                examples(&extra)
            ),
        ));
    }
    if !missing.is_empty() {
        out.push(Warning::new(
            "lf_structural_miss",
            format!(
                "LLaMA-Factory leaves {} tensor(s) frozen that a structural match would train: {}",
                missing.len(),
                examples(&missing)
            ),
        ));
    }
    out
}

fn examples(names: &[&str]) -> String {
    let shown: Vec<&str> = names.iter().take(3).copied().collect();
    let more = names.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_semantics() {
        assert_eq!(python_split_last("a.0.0.b", ".0."), "0.b");
        assert_eq!(python_split_last("model.layers.0.mlp.w", ".0."), "mlp.w");
        assert_eq!(python_range(-3, 1, -2), Vec::<i64>::new());
        assert_eq!(python_range(1, 5, 2), vec![1, 3]);
        assert!(has_dotted_number("model.layers.10.mlp"));
        assert!(!has_dotted_number("model.norm.weight"));
        assert!(!has_dotted_number("a.10"));
    }

    /// The real LLaMA-Factory 0.9.5 on transformers 5.6 (tests/fixtures/reference/llamafactory_moe.json, from
    /// tests/fixtures/scripts/make_llamafactory_moe_reference.py): the fixtures' expert numbers overlap their layer
    /// ids, which a per-expert name would match; the fused parameters never do.
    #[test]
    fn mixtures_of_experts_train_what_llamafactory_trains() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        let text = std::fs::read_to_string(root.join("reference/llamafactory_moe.json")).unwrap();
        let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
        for case in reference["cases"].as_array().unwrap() {
            let model = case["model"].as_str().unwrap();
            let layout = ModelLayout::inspect(&root.join("models").join(model)).unwrap();
            let args = LlamaFactoryArgs {
                freeze_trainable_layers: case["freeze_trainable_layers"].as_i64(),
                freeze_trainable_modules: case["freeze_trainable_modules"].as_str().map(str::to_string),
                ..Default::default()
            };
            let (trainable, _) = trainable_set(&layout, &args).unwrap();
            let model_type = layout.model_type.as_deref().unwrap();
            let ours: BTreeSet<String> = trainable.iter().map(|n| runtime_name(n, model_type)).collect();
            let theirs: BTreeSet<String> = case["trainable"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap().to_string())
                .collect();
            assert_eq!(ours, theirs, "{case}");
            // A fused parameter trains every expert's tensor it holds.
            for t in layout.tensors() {
                assert_eq!(
                    trainable.contains(&t.name),
                    theirs.contains(&runtime_name(&t.name, model_type)),
                    "{}",
                    t.name
                );
            }
        }
    }
}
