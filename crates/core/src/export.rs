//! Writing a plan for other trainers, so the same choice runs on a bigger machine:
//! a LLaMA-Factory YAML fragment (only when LLaMA-Factory's own rules give exactly the plan's tensors) and Axolotl
//! `unfrozen_parameters` patterns (always exact). Both are checked against the plan before they are returned. A layer
//! schedule goes out as BAdam (LLaMA-Factory) or LISA (Axolotl) keys where those do exactly the same (`schedule/interop.rs`).

use crate::error::{Error, Result};
use crate::ids::format_layer_ids;
use crate::layout::ModelLayout;
use crate::plan::{FreezeMode, FreezePlan, TrainState};
use crate::runtime_names::{check_whole_parameters, runtime_module, runtime_name};
use crate::spec::{FreezeSpec, IdList, LlamaFactoryArgs};
use crate::{llamafactory, PlanOptions};
use std::collections::{BTreeMap, BTreeSet};

/// The LLaMA-Factory freeze arguments that reproduce `plan` exactly on this model, as a YAML fragment.
pub fn to_llamafactory_yaml(layout: &ModelLayout, spec: &FreezeSpec, plan: &FreezePlan) -> Result<String> {
    refuse_fp8(layout, "llamafactory", "LLaMA-Factory")?;
    if let Some(schedule) = spec.schedule.as_ref().filter(|s| !s.is_static()) {
        let mut out = header_comment(layout, plan);
        out.push_str(&crate::schedule::interop::badam_yaml(plan, schedule)?);
        return Ok(out);
    }
    let args = match (&spec.llamafactory, plan.mode) {
        (Some(args), FreezeMode::Llamafactory) => args.clone(),
        _ => {
            check_whole_parameters(layout, plan, "llamafactory")?;
            llamafactory_args_for(layout, plan)?
        }
    };
    let check = crate::plan(
        layout,
        &FreezeSpec {
            llamafactory: Some(args.clone()),
            ..Default::default()
        },
        PlanOptions::default(),
    )?;
    if check.trainable != plan.trainable {
        let extra: Vec<&String> = check.trainable.iter().filter(|n| !plan.is_trainable(n)).collect();
        let missing: Vec<&String> = plan.trainable.iter().filter(|n| !check.is_trainable(n)).collect();
        return Err(not_expressible(format!(
            "LLaMA-Factory's rules cannot express this plan: its closest arguments would also train {} tensor(s) \
             (e.g. {}) and miss {} (e.g. {}); use --format axolotl, whose patterns are exact",
            extra.len(),
            extra.first().map(|s| s.as_str()).unwrap_or("none"),
            missing.len(),
            missing.first().map(|s| s.as_str()).unwrap_or("none"),
        )));
    }
    let mut out = header_comment(layout, plan);
    out.push_str(&freeze_keys(&args)?);
    Ok(out)
}

/// The freeze keys of `args`, one per line.
fn freeze_keys(args: &LlamaFactoryArgs) -> Result<String> {
    let mut out = String::from("finetuning_type: freeze\n");
    match &args.freeze_trainable_layers_ids {
        Some(ids) => {
            let ids = match ids {
                IdList::Text(t) => t.clone(),
                other => other.to_ids()?.iter().map(i64::to_string).collect::<Vec<_>>().join(","),
            };
            out.push_str("# freeze_trainable_layers_ids needs a LLaMA-Factory with the trainable-layer-ids proposal\n");
            out.push_str(&format!("freeze_trainable_layers_ids: \"{ids}\"\n"));
        }
        None => out.push_str(&format!(
            "freeze_trainable_layers: {}\n",
            args.freeze_trainable_layers
                .unwrap_or(llamafactory::DEFAULT_TRAINABLE_LAYERS)
        )),
    }
    out.push_str(&format!(
        "freeze_trainable_modules: {}\n",
        args.freeze_trainable_modules.as_deref().unwrap_or("all")
    ));
    if let Some(extra) = &args.freeze_extra_modules {
        out.push_str(&format!("freeze_extra_modules: {extra}\n"));
    }
    if args.use_llama_pro {
        out.push_str("use_llama_pro: true\n");
    }
    Ok(out)
}

fn header_comment(layout: &ModelLayout, plan: &FreezePlan) -> String {
    format!(
        "# FreezeTune freeze plan for {} ({} trainable tensors, {} of {} parameters)\n",
        layout.model_dir.display(),
        plan.trainable.len(),
        plan.trainable_params,
        plan.total_params
    )
}

fn not_expressible(message: String) -> Error {
    Error::NotExpressible {
        format: "llamafactory",
        message,
    }
}

/// The nearest LLaMA-Factory freeze keys for a plan they cannot express exactly, with the difference: the tensors
/// LLaMA-Factory would also train and those it would leave frozen. Layers that are not the first or last N become
/// the smallest first-N or last-N run covering them. What `export-run` writes when the exact form is refused, so
/// the user sees the difference instead of a dead end.
pub struct NearestLlamafactory {
    pub yaml: String,
    pub also_trained: Vec<String>,
    pub left_frozen: Vec<String>,
}

pub fn nearest_llamafactory(layout: &ModelLayout, spec: &FreezeSpec, plan: &FreezePlan) -> Result<NearestLlamafactory> {
    let exact = to_llamafactory_yaml(layout, spec, plan);
    // `freeze_trainable_layers_ids` is a proposal LLaMA-Factory 0.9.5 does not have: not runnable as it is.
    let runnable = exact
        .as_ref()
        .is_ok_and(|y| !y.contains("\nfreeze_trainable_layers_ids:"));
    if let (Ok(yaml), true) = (&exact, runnable) {
        let yaml = yaml.clone();
        return Ok(NearestLlamafactory {
            yaml,
            also_trained: Vec::new(),
            left_frozen: Vec::new(),
        });
    }
    if spec.schedule.as_ref().is_some_and(|s| !s.is_static()) {
        return exact.map(|yaml| NearestLlamafactory {
            yaml,
            also_trained: Vec::new(),
            left_frozen: Vec::new(),
        });
    }
    let mut args = llamafactory_args_covering(layout, plan)?;
    if args.freeze_trainable_modules.is_none() {
        args.freeze_trainable_modules = Some("all".into());
    }
    let check = crate::plan(
        layout,
        &FreezeSpec {
            llamafactory: Some(args.clone()),
            ..Default::default()
        },
        PlanOptions::default(),
    )?;
    let also_trained: Vec<String> = check
        .trainable
        .iter()
        .filter(|n| !plan.is_trainable(n))
        .cloned()
        .collect();
    let left_frozen: Vec<String> = plan
        .trainable
        .iter()
        .filter(|n| !check.is_trainable(n))
        .cloned()
        .collect();
    let mut yaml = header_comment(layout, plan);
    yaml.push_str(&format!(
        "# NOT EXACT: LLaMA-Factory's freeze keys cannot express this plan; the nearest form below also trains {} \
         tensor(s) and leaves {} of the plan's frozen (the bundle's README lists them)\n",
        also_trained.len(),
        left_frozen.len()
    ));
    yaml.push_str(&freeze_keys(&args)?);
    Ok(NearestLlamafactory {
        yaml,
        also_trained,
        left_frozen,
    })
}

/// As `llamafactory_args_for`, but layers that are not the first or last N become the smallest first-N or last-N
/// run that covers them (the one adding fewer layers).
fn llamafactory_args_covering(layout: &ModelLayout, plan: &FreezePlan) -> Result<LlamaFactoryArgs> {
    let ids: Vec<usize> = plan
        .layers
        .iter()
        .filter(|l| l.state != TrainState::Frozen)
        .map(|l| l.id)
        .collect();
    let mut args = match llamafactory_args_for(layout, plan) {
        Ok(args) => return Ok(args),
        Err(_) if ids.is_empty() => return Err(not_expressible("no layer trains".into())),
        Err(_) => llamafactory_args_for(layout, &all_layers_plan(plan))?,
    };
    let n = layout.num_layers;
    let (lo, hi) = (ids[0], ids[ids.len() - 1]);
    let (last, first) = (n - lo, hi + 1);
    args.freeze_trainable_layers = Some(if last <= first { last as i64 } else { -(first as i64) });
    Ok(args)
}

/// `plan` with every layer marked as its trained layers are, so the module and extra choice can be derived.
fn all_layers_plan(plan: &FreezePlan) -> FreezePlan {
    let mut p = plan.clone();
    let template = plan.layers.iter().find(|l| l.state != TrainState::Frozen).cloned();
    if let Some(t) = template {
        for l in &mut p.layers {
            let id = l.id;
            *l = t.clone();
            l.id = id;
        }
    }
    p
}

/// Derives `freeze_trainable_layers` (+N last / -N first), modules and extras from a native plan.
fn llamafactory_args_for(layout: &ModelLayout, plan: &FreezePlan) -> Result<LlamaFactoryArgs> {
    let n = layout.num_layers;
    let ids: Vec<usize> = plan
        .layers
        .iter()
        .filter(|l| l.state != TrainState::Frozen)
        .map(|l| l.id)
        .collect();
    let k = ids.len();
    let count: i64 = if k == 0 {
        0
    } else if ids == (n - k..n).collect::<Vec<_>>() {
        k as i64
    } else if ids == (0..k).collect::<Vec<_>>() {
        -(k as i64)
    } else {
        return Err(not_expressible(format!(
            "layers {} cannot be expressed in LLaMA-Factory 0.9.5, whose freeze_trainable_layers trains only the first \
             or the last N layers; use --format axolotl, whose patterns select exactly these layers",
            format_layer_ids(&ids)
        )));
    };
    let trained: Vec<_> = plan.layers.iter().filter(|l| l.state != TrainState::Frozen).collect();
    let modules = if trained.iter().all(|l| l.state == TrainState::Trainable) {
        "all".to_string()
    } else {
        // LLaMA-Factory knows the modules by transformers 5's names (Mixtral's `block_sparse_moe` is `mlp`).
        let model_type = layout.model_type.as_deref().unwrap_or_default();
        let names: BTreeSet<&str> = trained
            .iter()
            .flat_map(|l| &l.modules)
            .filter(|m| m.state == TrainState::Trainable)
            .map(|m| runtime_module(&m.name, model_type))
            .collect();
        names.into_iter().collect::<Vec<_>>().join(",")
    };
    let extras: Vec<&str> = plan
        .extra_modules
        .iter()
        .filter(|m| m.state != TrainState::Frozen)
        .map(|m| m.name.as_str())
        .collect();
    Ok(LlamaFactoryArgs {
        freeze_trainable_layers: Some(count),
        freeze_trainable_layers_ids: None,
        freeze_trainable_modules: Some(if modules.is_empty() { "all".into() } else { modules }),
        freeze_extra_modules: (!extras.is_empty()).then(|| extras.join(",")),
        use_llama_pro: false,
    })
}

/// Axolotl `unfrozen_parameters` patterns selecting exactly the plan's tensors. Axolotl turns every `.` into a
/// literal dot, so the patterns use only `^`, `$`, `(a|b)` and literal names.
pub fn to_axolotl_patterns(layout: &ModelLayout, plan: &FreezePlan) -> Result<Vec<String>> {
    check_whole_parameters(layout, plan, "axolotl")?;
    // Axolotl matches transformers 5's parameter names: a layer's experts are one parameter per projection.
    let model_type = layout.model_type.as_deref().unwrap_or_default();
    let runtime = |name: &str| runtime_name(name, model_type);
    let prefix = &layout.layer_prefix;
    // Group layers by the exact set of their trainable tensors (relative to the layer), so equal layers share a line.
    let mut groups: BTreeMap<Vec<String>, Vec<usize>> = BTreeMap::new();
    let mut whole: Vec<usize> = Vec::new();
    for (layer, lp) in layout.layers.iter().zip(&plan.layers) {
        match lp.state {
            TrainState::Frozen => {}
            TrainState::Trainable => whole.push(layer.id),
            TrainState::Partial => {
                let head = format!("{prefix}.{}.", layer.id);
                let rel: Vec<String> = layer
                    .tensors()
                    .filter(|t| plan.is_trainable(&t.name))
                    .map(|t| runtime(&t.name)[head.len()..].to_string())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                groups.entry(rel).or_default().push(layer.id);
            }
        }
    }
    let alt = |items: Vec<String>| {
        if items.len() == 1 {
            items[0].clone()
        } else {
            format!("({})", items.join("|"))
        }
    };
    let ids = |v: &[usize]| alt(v.iter().map(usize::to_string).collect());
    let mut patterns = Vec::new();
    if !whole.is_empty() {
        patterns.push(format!("^{prefix}.{}.", ids(&whole)));
    }
    for (rel, layer_ids) in groups {
        patterns.push(format!("^{prefix}.{}.{}$", ids(&layer_ids), alt(rel)));
    }
    for m in &layout.non_layer_modules {
        for t in m.tensors.iter().filter(|t| plan.is_trainable(&t.name)) {
            patterns.push(format!("^{}$", t.name));
        }
    }
    let selected: Vec<String> = layout
        .tensors()
        .filter(|t| axolotl_selects(&patterns, &runtime(&t.name)))
        .map(|t| t.name.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if selected != plan.trainable {
        return Err(Error::NotExpressible {
            format: "axolotl",
            message: "internal check failed: the Axolotl patterns do not select exactly the plan's tensors".into(),
        });
    }
    Ok(patterns)
}

/// Axolotl 0.19's reading of `unfrozen_parameters` (utils/freeze.py, `LayerNamePattern`): every `.` not followed
/// by `+` escaped, then Python's `re.match`, which matches from the start of the name.
pub fn axolotl_selects(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| {
        let mut escaped = String::with_capacity(p.len() + 8);
        let mut chars = p.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '.' if chars.peek() != Some(&'+') => escaped.push_str("\\."),
                c => escaped.push(c),
            }
        }
        regex::Regex::new(&format!("^(?:{escaped})")).is_ok_and(|re| re.is_match(name))
    })
}

/// Axolotl's config for the plan: `unfrozen_parameters`, or for a layer-sampling schedule its LISA keys.
pub fn to_axolotl_yaml(layout: &ModelLayout, spec: &FreezeSpec, plan: &FreezePlan) -> Result<String> {
    refuse_fp8(layout, "axolotl", "Axolotl")?;
    if let Some(schedule) = spec.schedule.as_ref().filter(|s| !s.is_static()) {
        let mut out = header_comment(layout, plan);
        out.push_str(&crate::schedule::interop::lisa_yaml(layout, plan, schedule)?);
        return Ok(out);
    }
    let patterns = to_axolotl_patterns(layout, plan)?;
    let mut out = header_comment(layout, plan);
    out.push_str("# Axolotl escapes every '.' in these patterns; they select exactly the plan's tensors.\n");
    if patterns.is_empty() {
        out.push_str("unfrozen_parameters: []\n");
    } else {
        out.push_str("unfrozen_parameters:\n");
        for p in patterns {
            out.push_str(&format!("  - '{}'\n", p.replace('\'', "''")));
        }
    }
    Ok(out)
}

/// An FP8 checkpoint's hand-off is refused (fp8.rs's `refuse_handoff`).
fn refuse_fp8(layout: &ModelLayout, format: &'static str, engine: &str) -> Result<()> {
    crate::fp8::refuse_handoff(layout, engine).map_err(|message| Error::NotExpressible { format, message })
}
