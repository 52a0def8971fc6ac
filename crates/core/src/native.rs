//! Native freeze mode: names are matched structurally (`<prefix>.<i>.<module>…`), so layer 1 never touches
//! layer 11, expert 1 of an MoE block or a vision tower, and `norm` means the final norm only.

use crate::error::{Error, Result};
use crate::ids::parse_layer_ids;
use crate::layout::{ModelLayout, ModuleInfo};
use crate::plan::Warning;
use crate::spec::{FreezeSpec, Selection};
use std::collections::BTreeSet;

pub(crate) fn trainable_set(layout: &ModelLayout, spec: &FreezeSpec) -> Result<(BTreeSet<String>, Vec<Warning>)> {
    let n = layout.num_layers;
    let ids: BTreeSet<usize> = match spec.selection()? {
        Selection::Top(k) => {
            check_count("top", k, n)?;
            (n - k..n).collect()
        }
        Selection::Bottom(k) => {
            check_count("bottom", k, n)?;
            (0..k).collect()
        }
        Selection::Ids(text) => parse_layer_ids(&text, n)?,
        Selection::All => (0..n).collect(),
        Selection::None => BTreeSet::new(),
    };
    let mut trainable = BTreeSet::new();
    add_layer_tensors(&mut trainable, layout, &ids, &resolve_modules(layout, &spec.modules)?);
    for (id_text, wanted) in &spec.layer_modules {
        if wanted.is_empty() {
            // An empty list would mean "every tensor" to `resolve_modules`; here it can only be a mistake.
            return Err(Error::BadSelection {
                message: format!(
                    "layer_modules for layer {id_text} lists no module; name at least one, or drop the entry"
                ),
            });
        }
        let ids = parse_layer_ids(id_text, n)?;
        add_layer_tensors(&mut trainable, layout, &ids, &resolve_modules(layout, wanted)?);
    }
    let mut warnings = Vec::new();
    for name in &spec.extra {
        let module = resolve_extra(layout, name)?;
        trainable.extend(module.tensors.iter().map(|t| t.name.clone()));
        if layout.tie_word_embeddings && module.name == "embed_tokens" {
            warnings.push(Warning::new(
                "tied_embeddings",
                "embed_tokens is tied to lm_head (tie_word_embeddings = true): training it also changes the output head",
            ));
        }
    }
    Ok((trainable, warnings))
}

/// Adds the tensors of layers `ids` that belong to `modules` (every tensor when `None`).
fn add_layer_tensors(
    trainable: &mut BTreeSet<String>,
    layout: &ModelLayout,
    ids: &BTreeSet<usize>,
    modules: &Option<Vec<String>>,
) {
    for layer in layout.layers.iter().filter(|l| ids.contains(&l.id)) {
        for module in &layer.modules {
            for t in &module.tensors {
                let rel = &t.name[module.path.len() - module.name.len()..];
                if modules
                    .as_ref()
                    .is_none_or(|wanted| wanted.iter().any(|w| rel == w || rel.starts_with(&format!("{w}."))))
                {
                    trainable.insert(t.name.clone());
                }
            }
        }
    }
}

fn check_count(key: &str, k: usize, n: usize) -> Result<()> {
    if k == 0 || k > n {
        return Err(Error::BadSelection {
            message: format!(
                "{key} {k} is not possible: this model has {n} layers, so {key} must be between 1 and {n} \
                 (use all_layers for every layer, no_layers for none)"
            ),
        });
    }
    Ok(())
}

/// `None` means every tensor of a selected layer; otherwise module names or sub-paths (`mlp`, `mlp.gate_proj`).
fn resolve_modules(layout: &ModelLayout, modules: &[String]) -> Result<Option<Vec<String>>> {
    if modules.is_empty() || modules.iter().any(|m| m == "all") {
        return Ok(None);
    }
    let mut out = Vec::new();
    for m in modules {
        let m = m.trim();
        let found = layout.layers.iter().flat_map(|l| &l.modules).any(|module| {
            let (head, tail) = m.split_once('.').unwrap_or((m, ""));
            module.name == head
                && (tail.is_empty()
                    || module.tensors.iter().any(|t| {
                        let rel = &t.name[module.path.len() + 1..];
                        rel == tail || rel.starts_with(&format!("{tail}."))
                    }))
        });
        if !found {
            return Err(Error::UnknownModule {
                module: m.to_string(),
                place: "the layers of this model".into(),
                choices: layout.layer_module_names(),
            });
        }
        out.push(m.to_string());
    }
    Ok(Some(out))
}

/// A non-layer module by short name (`norm`) or full path (`model.norm`).
pub(crate) fn resolve_extra<'a>(layout: &'a ModelLayout, name: &str) -> Result<&'a ModuleInfo> {
    let name = name.trim();
    if name == "lm_head" && layout.tie_word_embeddings {
        return Err(Error::TiedLmHead);
    }
    let by_path: Vec<&ModuleInfo> = layout.non_layer_modules.iter().filter(|m| m.path == name).collect();
    let candidates = if by_path.is_empty() {
        layout.non_layer_modules.iter().filter(|m| m.name == name).collect()
    } else {
        by_path
    };
    match candidates.as_slice() {
        [one] => Ok(one),
        [] => {
            let choices: BTreeSet<String> = layout.non_layer_modules.iter().map(|m| m.name.clone()).collect();
            Err(Error::UnknownModule {
                module: name.to_string(),
                place: "the modules outside the layers".into(),
                choices: choices.into_iter().collect(),
            })
        }
        many => Err(Error::BadSelection {
            message: format!(
                "extra module {name:?} is ambiguous; name one of {}",
                many.iter().map(|m| m.path.as_str()).collect::<Vec<_>>().join(", ")
            ),
        }),
    }
}
