//! Which layers of a mixture-of-experts family have a sparse MLP, and its sizes, read from config.json as the
//! family's [`ExpertTable`] says (the decoder's `moe.rs` applies it).

use crate::family::{ExpertActivation, ExpertTable, Family, Routing, SharedWidth, SparseLayers, TopKNorm};
use serde_json::Value;

/// A layer's sparse MLP: `count` experts, each a SwiGLU MLP of `width`; a token runs through its `top_k`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExpertsSpec {
    pub count: usize,
    pub top_k: usize,
    pub width: usize,
    /// The chosen experts' probabilities are divided by their sum.
    pub normalize: bool,
    /// The shared expert's MLP width, where the layer has one.
    pub shared_width: Option<usize>,
    /// The chosen probabilities weigh the outputs in f32 (the table's `weigh_in_f32`).
    pub weigh_in_f32: bool,
    pub routing: RouteBy,
}

/// How a layer's router chooses (the table's [`Routing`] with config.json's values).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RouteBy {
    Softmax,
    /// Gemma 4's normed router input and per-expert scales ([`Routing::NormedSoftmax`]).
    NormedSoftmax,
    /// σ scores in f32; the best `top_groups` of `groups` equal groups; the chosen scores × `scale`.
    SigmoidGroups {
        groups: usize,
        top_groups: usize,
        scale: f64,
    },
}

/// No open model comes near these; past them config.json is refused before anything is sized by it.
const MAX_EXPERTS: u64 = 1 << 16;
const MAX_WIDTH: u64 = 1 << 22;

/// Per layer, its sparse MLP or None (a dense one).
pub(crate) fn layer_experts(
    raw: &Value,
    fam: &Family,
    layers: usize,
) -> std::result::Result<Vec<Option<ExpertsSpec>>, String> {
    let Some(table) = fam.experts else {
        return Ok(vec![None; layers]);
    };
    // Mixtral's training-only noise on the router's input: other math than the model's, and random.
    match &raw["router_jitter_noise"] {
        Value::Null => {}
        v if v.as_f64() == Some(0.0) => {}
        v => {
            return Err(format!(
                "`router_jitter_noise` is {v}: transformers then scales the router's input by random noise while \
                 training, which FreezeTune does not do. Set it to 0.0 to train without it"
            ))
        }
    }
    // Gemma 4 sizes its experts only when its switch is on; off, the sizing keys are left unread, as there.
    if let SparseLayers::EveryWhen(key) = table.sparse_layers {
        match &raw[key] {
            Value::Null | Value::Bool(false) => return Ok(vec![None; layers]),
            Value::Bool(true) => {}
            v => return Err(format!("`{key}` must be true or false, not {v}")),
        }
    }
    let count = expert_count(raw, &table)?;
    if count == 0 {
        return Ok(vec![None; layers]);
    }
    let top_k = uint(raw, table.top_k_key, 1, count as u64)?;
    if let Some(alias) = table.top_k_alias.filter(|k| !raw[*k].is_null()) {
        if raw[alias].as_u64() != Some(top_k as u64) {
            return Err(format!(
                "`{alias}` is {} but `num_experts_per_tok` is {top_k}: transformers runs each token through \
                 `num_experts_per_tok` experts and never reads `{alias}`. Set `{alias}` to the same value or remove \
                 it",
                raw[alias]
            ));
        }
    }
    check_activation_limit(raw, table.activation)?;
    let width = uint(raw, table.width_key, 1, MAX_WIDTH)?;
    let spec = ExpertsSpec {
        count,
        top_k,
        width,
        normalize: normalizes(raw, &table)?,
        shared_width: table
            .shared
            .map(|shared| match shared.width {
                SharedWidth::Key(key) => uint(raw, key, 1, MAX_WIDTH),
                SharedWidth::ExpertWidths(key) => {
                    Ok(uint(raw, key, 1, MAX_EXPERTS)? * width).and_then(|w| match w as u64 <= MAX_WIDTH {
                        true => Ok(w),
                        false => Err(format!("`{key}` × `{}` is {w}, past {MAX_WIDTH}", table.width_key)),
                    })
                }
            })
            .transpose()?,
        weigh_in_f32: table.weigh_in_f32,
        routing: route_by(raw, table.routing, count, top_k)?,
    };
    let sparse = sparse_layers(raw, &table, layers)?;
    Ok(sparse.into_iter().map(|s| s.then_some(spec)).collect())
}

/// The weight of the router's load-balancing loss in the training loss, where config.json asks for it:
/// transformers adds `router_aux_loss_coef` × the Switch Transformer balance loss (`moe/router_loss.rs`) when
/// `output_router_logits` is true (LLaMA-Factory sets it from `moe_aux_loss_coef`). None: the cross-entropy alone.
pub(crate) fn router_loss_weight(raw: &Value, fam: &Family) -> std::result::Result<Option<f64>, String> {
    let on = match &raw["output_router_logits"] {
        Value::Null | Value::Bool(false) => false,
        Value::Bool(true) => true,
        v => return Err(format!("`output_router_logits` must be true or false, not {v}")),
    };
    let Some(table) = fam.experts.filter(|_| on) else {
        return Ok(None);
    };
    if expert_count(raw, &table)? == 0 {
        return Ok(None);
    }
    if !table.router_loss && raw["router_aux_loss_coef"].as_f64() != Some(0.0) {
        return Err(format!(
            "`output_router_logits` is true, but transformers records no router logits for {} models and so adds \
             no load-balancing loss (its own training fails on it): set it to false",
            fam.model_type
        ));
    }
    match &raw["router_aux_loss_coef"] {
        v if v.as_f64() == Some(0.0) => Ok(None),
        v if v.as_f64().is_some_and(|c| c.is_finite() && c > 0.0) => Ok(v.as_f64()),
        v => Err(format!(
            "`router_aux_loss_coef` is {v}: with `output_router_logits` true it weighs the router's \
             load-balancing loss and must be a number of 0 or more"
        )),
    }
}

/// A clamped activation's limit as config.json gives it (gpt-oss's `swiglu_limit`) must be the one transformers
/// hard-codes, or the config means other math than transformers runs.
fn check_activation_limit(raw: &Value, activation: ExpertActivation) -> std::result::Result<(), String> {
    let ExpertActivation::ClampedSwiglu { limit, limit_key, .. } = activation else {
        return Ok(());
    };
    match &raw[limit_key] {
        Value::Null => Ok(()),
        v if v.as_f64() == Some(limit) => Ok(()),
        v => Err(format!(
            "`{limit_key}` is {v}, but transformers clamps this family's experts at {limit} whatever the config \
             says: training would compute other activations than the ones this config asks for. Set it to {limit}"
        )),
    }
}

/// The expert count under either of its names; both given must agree.
fn expert_count(raw: &Value, table: &ExpertTable) -> std::result::Result<usize, String> {
    let [a, b] = table.count_keys;
    let given: Vec<&str> = [a, b].into_iter().filter(|k| !raw[*k].is_null()).collect();
    match given[..] {
        [] => Err(format!("`{a}` is missing: how many experts each sparse layer has")),
        [k] => uint(raw, k, 0, MAX_EXPERTS),
        _ if raw[a] == raw[b] => uint(raw, a, 0, MAX_EXPERTS),
        _ => Err(format!(
            "`{a}` {} and `{b}` {} both give the expert count and differ. Keep one",
            raw[a], raw[b]
        )),
    }
}

fn uint(raw: &Value, key: &str, min: u64, max: u64) -> std::result::Result<usize, String> {
    let v = &raw[key];
    match v.as_u64() {
        Some(n) if (min..=max).contains(&n) => Ok(n as usize),
        _ => Err(format!("`{key}` is {v}; it must be an integer from {min} to {max}")),
    }
}

fn normalizes(raw: &Value, table: &ExpertTable) -> std::result::Result<bool, String> {
    match table.normalize {
        TopKNorm::Key(key) => match &raw[key] {
            Value::Bool(b) => Ok(*b),
            v => Err(format!("`{key}` must be true or false, not {v}")),
        },
        TopKNorm::Always => Ok(true),
    }
}

/// Each layer's entry of a `"dense"` / `"sparse"` list; absent, the first layer dense and the rest sparse.
fn layer_mlp_types(raw: &Value, key: &str, layers: usize) -> std::result::Result<Vec<bool>, String> {
    let list = match &raw[key] {
        Value::Null => return Ok((0..layers).map(|i| i > 0).collect()),
        Value::Array(list) if list.len() == layers => list,
        v => {
            return Err(format!(
                "`{key}` must list \"dense\" or \"sparse\" for each of the {layers} layers, not {v}"
            ))
        }
    };
    list.iter()
        .map(|t| match t.as_str() {
            Some("dense") => Ok(false),
            Some("sparse") => Ok(true),
            _ => Err(format!("`{key}` holds {t}: each entry must be \"dense\" or \"sparse\"")),
        })
        .collect()
}

/// The routing config.json asks for, checked so that the groups divide the experts and leave `top_k` to choose
/// from, each group holding the two experts its score sums.
fn route_by(raw: &Value, routing: Routing, count: usize, top_k: usize) -> std::result::Result<RouteBy, String> {
    let (groups_key, top_groups_key, scale_key) = match routing {
        Routing::Softmax => return Ok(RouteBy::Softmax),
        Routing::NormedSoftmax { .. } => return Ok(RouteBy::NormedSoftmax),
        Routing::SigmoidGroups {
            groups_key,
            top_groups_key,
            scale_key,
            ..
        } => (groups_key, top_groups_key, scale_key),
    };
    let groups = uint(raw, groups_key, 1, count as u64)?;
    let top_groups = uint(raw, top_groups_key, 1, groups as u64)?;
    let per_group = count / groups;
    if count % groups != 0 || per_group < 2 {
        return Err(format!(
            "`{groups_key}` is {groups}: the {count} experts must split into groups of equal size, two or more \
             each (a group is scored by its two best experts)"
        ));
    }
    if top_k > top_groups * per_group {
        return Err(format!(
            "`num_experts_per_tok` is {top_k}, more than the {} experts of the best `{top_groups_key}` = \
             {top_groups} groups a token chooses among",
            top_groups * per_group
        ));
    }
    let scale = match raw[scale_key].as_f64() {
        Some(s) if s.is_finite() && s > 0.0 => s,
        _ => {
            return Err(format!(
                "`{scale_key}` is {}; it must be a positive number",
                raw[scale_key]
            ))
        }
    };
    Ok(RouteBy::SigmoidGroups {
        groups,
        top_groups,
        scale,
    })
}

/// Whether each layer's MLP is sparse: every layer; (qwen3_moe) those `decoder_sparse_step` picks that
/// `mlp_only_layers` does not keep dense; or (GLM-4.5) all after the first `first_k_dense_replace`.
fn sparse_layers(raw: &Value, table: &ExpertTable, layers: usize) -> std::result::Result<Vec<bool>, String> {
    let (step_key, dense_key) = match table.sparse_layers {
        SparseLayers::Every | SparseLayers::EveryWhen(_) => return Ok(vec![true; layers]),
        SparseLayers::AfterFirstDense(key) => {
            let dense = uint(raw, key, 0, u32::MAX as u64)?;
            return Ok((0..layers).map(|i| i >= dense).collect());
        }
        SparseLayers::Types(key) => return layer_mlp_types(raw, key, layers),
        SparseLayers::StepAndDense { step, dense } => (step, dense),
    };
    let step = uint(raw, step_key, 1, u32::MAX as u64)?;
    let dense: Vec<usize> = match &raw[dense_key] {
        Value::Null => Vec::new(),
        v => v
            .as_array()
            .and_then(|l| l.iter().map(|i| i.as_u64().map(|i| i as usize)).collect())
            .ok_or_else(|| format!("`{dense_key}` must be a list of layer numbers, not {v}"))?,
    };
    if let Some(bad) = dense.iter().find(|&&i| i >= layers) {
        return Err(format!("`{dense_key}` names layer {bad}, but the model has {layers}"));
    }
    Ok((0..layers)
        .map(|i| !dense.contains(&i) && (i + 1) % step == 0)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::family::family;
    use serde_json::json;

    fn experts(config: Value) -> std::result::Result<Vec<Option<ExpertsSpec>>, String> {
        let fam = family("qwen3_moe").unwrap();
        layer_experts(&fam.with_defaults(&config), fam, 4)
    }

    #[test]
    fn sparse_step_and_dense_layers_pick_the_layers_with_experts() {
        let got = experts(
            json!({"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
            "decoder_sparse_step": 2, "mlp_only_layers": [3], "norm_topk_prob": true}),
        )
        .unwrap();
        let spec = ExpertsSpec {
            count: 8,
            top_k: 2,
            width: 16,
            normalize: true,
            shared_width: None,
            weigh_in_f32: false,
            routing: RouteBy::Softmax,
        };
        assert_eq!(got, vec![None, Some(spec), None, None]);
        let all = experts(json!({"num_local_experts": 8, "num_experts_per_tok": 2})).unwrap();
        assert!(all.iter().all(|l| l.is_some_and(|s| !s.normalize && s.width == 768)));
        assert_eq!(experts(json!({"num_experts": 0})).unwrap(), vec![None; 4]);
    }

    #[test]
    fn grouped_routing_is_read_from_the_glm_keys_and_bad_groups_are_refused_by_name() {
        let fam = family("glm4_moe").unwrap();
        let glm = |extra: Value| {
            let mut raw = json!({"n_routed_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
                "n_group": 4, "topk_group": 2, "routed_scaling_factor": 2.5, "first_k_dense_replace": 2});
            extra.as_object().unwrap().iter().for_each(|(k, v)| raw[k] = v.clone());
            layer_experts(&fam.with_defaults(&raw), fam, 4)
        };
        let got = glm(json!({})).unwrap();
        let spec = got[2].unwrap();
        assert_eq!(
            got.iter().map(Option::is_some).collect::<Vec<_>>(),
            [false, false, true, true]
        );
        assert_eq!(
            spec.routing,
            RouteBy::SigmoidGroups {
                groups: 4,
                top_groups: 2,
                scale: 2.5
            }
        );
        // One shared expert (the default) of the routed experts' width.
        assert_eq!((spec.shared_width, spec.normalize), (Some(16), true));
        assert_eq!(
            glm(json!({"n_shared_experts": 2})).unwrap()[3].unwrap().shared_width,
            Some(32)
        );
        let e = glm(json!({"n_group": 3})).unwrap_err();
        assert!(e.contains("`n_group` is 3") && e.contains("equal size"), "{e}");
        let e = glm(json!({"n_group": 8, "topk_group": 1})).unwrap_err();
        assert!(e.contains("two or more"), "{e}");
        let e = glm(json!({"topk_group": 1, "num_experts_per_tok": 3})).unwrap_err();
        assert!(e.contains("num_experts_per_tok") && e.contains("topk_group"), "{e}");
        let e = glm(json!({"topk_group": 5})).unwrap_err();
        assert!(e.contains("topk_group") && e.contains("from 1 to 4"), "{e}");
        let e = glm(json!({"routed_scaling_factor": 0})).unwrap_err();
        assert!(e.contains("routed_scaling_factor"), "{e}");
        // The count under transformers' other name for it, with no default under the first to disagree with.
        let raw = json!({"num_local_experts": 8, "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1});
        let aliased = layer_experts(&fam.with_defaults(&raw), fam, 4).unwrap();
        assert_eq!(aliased[3].unwrap().count, 8);
    }

    #[test]
    fn bad_sizes_and_the_router_loss_are_refused_by_name() {
        let e = experts(json!({"num_local_experts": 4, "num_experts_per_tok": 5})).unwrap_err();
        assert!(e.contains("num_experts_per_tok") && e.contains("from 1 to 4"), "{e}");
        let e = experts(json!({"num_experts": 4, "num_experts_per_tok": 2, "mlp_only_layers": [4]})).unwrap_err();
        assert!(e.contains("mlp_only_layers") && e.contains("layer 4"), "{e}");
        let fam = family("qwen3_moe").unwrap();
        let weight = |extra: Value| {
            let mut raw = json!({"num_experts": 4, "num_experts_per_tok": 2});
            extra.as_object().unwrap().iter().for_each(|(k, v)| raw[k] = v.clone());
            router_loss_weight(&fam.with_defaults(&raw), fam)
        };
        assert_eq!(weight(json!({})).unwrap(), None);
        assert_eq!(weight(json!({"output_router_logits": true})).unwrap(), Some(0.001));
        let zero = json!({"output_router_logits": true, "router_aux_loss_coef": 0.0});
        assert_eq!(weight(zero).unwrap(), None);
        let e = weight(json!({"output_router_logits": true, "router_aux_loss_coef": -1})).unwrap_err();
        assert!(e.contains("router_aux_loss_coef") && e.contains("-1"), "{e}");
        let e = weight(json!({"output_router_logits": "yes"})).unwrap_err();
        assert!(e.contains("output_router_logits"), "{e}");
        let mixtral = family("mixtral").unwrap();
        let jitter = mixtral.with_defaults(&json!({"num_local_experts": 8, "router_jitter_noise": 0.01}));
        let e = layer_experts(&jitter, mixtral, 2).unwrap_err();
        assert!(e.contains("router_jitter_noise") && e.contains("0.01"), "{e}");
        let e = experts(json!({"num_experts": 4, "num_local_experts": 8})).unwrap_err();
        assert!(e.contains("num_local_experts") && e.contains("differ"), "{e}");
        let e = experts(json!({})).unwrap_err();
        assert!(e.contains("`num_experts` is missing"), "{e}");
        let e = experts(json!({"num_experts": 4, "num_experts_per_tok": 2, "norm_topk_prob": 1})).unwrap_err();
        assert!(e.contains("norm_topk_prob"), "{e}");
    }
}
