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
//! Tied `lm_head.weight` is not among a tied model's parameters (PyTorch de-duplicates shared tensors).

use crate::error::{Error, Result};
use crate::layout::{split_layer_name, ModelLayout};
use crate::plan::Warning;
use crate::spec::LlamaFactoryArgs;
use std::collections::BTreeSet;

/// LLaMA-Factory's default for `freeze_trainable_layers`.
pub const DEFAULT_TRAINABLE_LAYERS: i64 = 2;

pub(crate) fn trainable_set(layout: &ModelLayout, args: &LlamaFactoryArgs) -> Result<(BTreeSet<String>, Vec<Warning>)> {
    let names: Vec<&str> = layout.tensors().map(|t| t.name.as_str()).collect();
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
    let trainable: BTreeSet<String> = names
        .iter()
        .filter(|name| patterns.iter().any(|p| name.contains(p.as_str())))
        .map(|s| s.to_string())
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
/// arguments disagree (e.g. `norm` catching every layernorm, `.1.` catching expert 1 or a vision block).
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
}
