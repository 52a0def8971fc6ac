//! `FreezeSpec`: what the user chose, in the shape it takes in a run config's or preset's `[freeze]` table.
//! The planner turns it into a `FreezePlan`; nothing here knows the model.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The user's freeze choice. Native keys (`top`, `bottom`, `layers`, `all_layers`, `no_layers`, `modules`, `extra`)
/// or, instead, a `llamafactory` table with LLaMA-Factory's own argument names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(deny_unknown_fields)]
pub struct FreezeSpec {
    /// Train the last N layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top: Option<usize>,
    /// Train the first N layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bottom: Option<usize>,
    /// Train these layer ids: `"1,2,10-15"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub all_layers: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_layers: bool,
    /// Modules of a selected layer that train, as the layout names them; empty or `["all"]` means every tensor.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<String>,
    /// Layers that train only some of their modules, by layer id (`{"3" = ["mlp"]}`), in addition to the layer
    /// selection: what the app's per-module cells produce.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub layer_modules: BTreeMap<String, Vec<String>>,
    /// Non-layer modules that also train (`embed_tokens`, `norm`, `lm_head`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llamafactory: Option<LlamaFactoryArgs>,
    /// How the trainable set changes during a run (`[freeze.schedule]`, see `schedule.rs`); without one the
    /// selection trains throughout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<crate::schedule::ScheduleSpec>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Which layers train, in native mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Top(usize),
    Bottom(usize),
    Ids(String),
    All,
    None,
}

impl FreezeSpec {
    pub fn is_llamafactory(&self) -> bool {
        self.llamafactory.is_some()
    }

    /// The native layer selection; exactly one of the selection keys must be set.
    pub fn selection(&self) -> Result<Selection> {
        let mut chosen = Vec::new();
        if let Some(n) = self.top {
            chosen.push(("top", Selection::Top(n)));
        }
        if let Some(n) = self.bottom {
            chosen.push(("bottom", Selection::Bottom(n)));
        }
        if let Some(ids) = &self.layers {
            chosen.push(("layers", Selection::Ids(ids.clone())));
        }
        if self.all_layers {
            chosen.push(("all_layers", Selection::All));
        }
        if self.no_layers {
            chosen.push(("no_layers", Selection::None));
        }
        match chosen.len() {
            1 => Ok(chosen.pop().expect("one").1),
            0 => Err(Error::BadSelection {
                message: "no layer selection: choose one of top N, bottom N, layers \"IDS\", all_layers, no_layers"
                    .into(),
            }),
            _ => Err(Error::BadSelection {
                message: format!(
                    "choose exactly one layer selection, got {}",
                    chosen.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(" and ")
                ),
            }),
        }
    }

    /// Checks the spec is one mode or the other, not a mix.
    pub fn check_mode(&self) -> Result<()> {
        if self.llamafactory.is_some() {
            let native = self.top.is_some()
                || self.bottom.is_some()
                || self.layers.is_some()
                || self.all_layers
                || self.no_layers
                || !self.modules.is_empty()
                || !self.layer_modules.is_empty()
                || !self.extra.is_empty();
            if native {
                return Err(Error::BadSelection {
                    message: "a freeze spec is either native (top/bottom/layers/all_layers/no_layers/modules/extra) \
                              or llamafactory, not both"
                        .into(),
                });
            }
        }
        Ok(())
    }
}

/// LLaMA-Factory's freeze arguments, spelled as in its YAML files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(deny_unknown_fields)]
pub struct LlamaFactoryArgs {
    /// Signed: +N trains the last N layers, -N the first N. LLaMA-Factory's default is 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_trainable_layers: Option<i64>,
    /// The proposed explicit list of trainable layer ids; takes precedence over `freeze_trainable_layers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_trainable_layers_ids: Option<IdList>,
    /// Comma-separated module names, default `all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_trainable_modules: Option<String>,
    /// Comma-separated extra module names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_extra_modules: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub use_llama_pro: bool,
}

/// Layer ids as LLaMA-Factory might receive them: `"1,3"`, `[1, 3]` or `3`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(untagged)]
pub enum IdList {
    One(i64),
    List(Vec<i64>),
    Text(String),
}

impl IdList {
    /// The ids as LLaMA-Factory's proposal reads them: `int(x.strip())` for each comma-separated item.
    pub fn to_ids(&self) -> Result<Vec<i64>> {
        match self {
            IdList::One(i) => Ok(vec![*i]),
            IdList::List(v) => Ok(v.clone()),
            IdList::Text(text) => text
                .split(',')
                .map(|t| {
                    t.trim().parse::<i64>().map_err(|_| Error::LlamaFactory {
                        kind: "bad_layer_ids",
                        message: format!(
                            "freeze_trainable_layers_ids {text:?}: {:?} is not an integer; LLaMA-Factory takes a plain \
                             list like \"1,3,5\" (use native mode for ranges)",
                            t.trim()
                        ),
                    })
                })
                .collect(),
        }
    }
}

/// Reads the freeze keys from a LLaMA-Factory training YAML (other keys are LLaMA-Factory's business and ignored).
pub fn read_llamafactory_yaml(path: &std::path::Path) -> Result<(LlamaFactoryArgs, Vec<String>)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let bad = |reason: String| Error::LlamaFactory {
        kind: "bad_llamafactory_config",
        message: format!("{}: {reason}", path.display()),
    };
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).map_err(|e| bad(format!("not valid YAML: {e}")))?;
    let map = doc
        .as_mapping()
        .ok_or_else(|| bad("the top level is not a mapping of keys".into()))?;
    let mut notes = Vec::new();
    let mut args = serde_yaml_ng::Mapping::new();
    for (k, v) in map {
        let key = k.as_str().unwrap_or_default();
        match key {
            "freeze_trainable_layers"
            | "freeze_trainable_layers_ids"
            | "freeze_trainable_modules"
            | "freeze_extra_modules"
            | "use_llama_pro"
                if !v.is_null() =>
            {
                args.insert(k.clone(), v.clone());
            }
            "finetuning_type" if v.as_str() != Some("freeze") => notes.push(format!(
                "{} sets finetuning_type: {}; its freeze_* keys are applied as if it were `freeze`",
                path.display(),
                v.as_str().unwrap_or("?")
            )),
            _ => {}
        }
    }
    let args: LlamaFactoryArgs = serde_yaml_ng::from_value(serde_yaml_ng::Value::Mapping(args))
        .map_err(|e| bad(format!("bad freeze_* value: {e}")))?;
    Ok((args, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_shape_round_trips_and_rejects_unknown_keys() {
        let spec: FreezeSpec = toml::from_str("layers = \"1,3\"\nmodules = [\"mlp\"]\nextra = [\"norm\"]").unwrap();
        assert_eq!(spec.selection().unwrap(), Selection::Ids("1,3".into()));
        let text = toml::to_string(&spec).unwrap();
        assert_eq!(toml::from_str::<FreezeSpec>(&text).unwrap(), spec);
        assert!(toml::from_str::<FreezeSpec>("layer = \"1\"")
            .unwrap_err()
            .to_string()
            .contains("unknown field"));
        let lf: FreezeSpec = toml::from_str("[llamafactory]\nfreeze_trainable_layers = -2").unwrap();
        assert_eq!(lf.llamafactory.unwrap().freeze_trainable_layers, Some(-2));
    }

    #[test]
    fn exactly_one_selection() {
        let two = FreezeSpec {
            top: Some(1),
            layers: Some("1".into()),
            ..Default::default()
        };
        assert!(two.selection().unwrap_err().to_string().contains("top and layers"));
        assert!(FreezeSpec::default()
            .selection()
            .unwrap_err()
            .to_string()
            .contains("no layer selection"));
    }

    #[test]
    fn reads_llamafactory_yaml() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sft.yaml");
        std::fs::write(&p, "model_name_or_path: x\nfinetuning_type: freeze\nfreeze_trainable_layers: -3\nfreeze_trainable_modules: mlp,self_attn\nfreeze_extra_modules: null\n").unwrap();
        let (args, notes) = read_llamafactory_yaml(&p).unwrap();
        assert_eq!(args.freeze_trainable_layers, Some(-3));
        assert_eq!(args.freeze_trainable_modules.as_deref(), Some("mlp,self_attn"));
        assert!(notes.is_empty());
        std::fs::write(&p, "freeze_trainable_layers_ids: [1, 5]\n").unwrap();
        assert_eq!(
            read_llamafactory_yaml(&p)
                .unwrap()
                .0
                .freeze_trainable_layers_ids
                .unwrap()
                .to_ids()
                .unwrap(),
            vec![1, 5]
        );
        std::fs::write(&p, "freeze_trainable_layers: many\n").unwrap();
        assert!(read_llamafactory_yaml(&p).unwrap_err().to_string().contains("sft.yaml"));
    }
}
