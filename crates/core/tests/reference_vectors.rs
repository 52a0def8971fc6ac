//! Every case of LLaMA-Factory 0.9.5's own answers (tests/fixtures/reference/freeze_vectors.jsonl) must come out
//! of FreezeTune's LLaMA-Factory mode unchanged: the same trainable names, or the same error.

mod common;
use freezetune_core::spec::{IdList, LlamaFactoryArgs};
use freezetune_core::{plan, FreezeSpec, ModelLayout, PlanOptions};
use serde_json::Value;
use std::collections::HashMap;

fn args_of(case: &Value) -> LlamaFactoryArgs {
    let a = &case["args"];
    LlamaFactoryArgs {
        freeze_trainable_layers: a["freeze_trainable_layers"].as_i64(),
        freeze_trainable_layers_ids: a["freeze_trainable_layers_ids"]
            .as_str()
            .map(|s| IdList::Text(s.to_string())),
        freeze_trainable_modules: a["freeze_trainable_modules"].as_str().map(str::to_string),
        freeze_extra_modules: a["freeze_extra_modules"].as_str().map(str::to_string),
        use_llama_pro: a["use_llama_pro"].as_bool().unwrap_or(false),
    }
}

#[test]
fn every_llamafactory_reference_case_matches() {
    let text = std::fs::read_to_string(common::fixture("reference/freeze_vectors.jsonl")).unwrap();
    let mut layouts: HashMap<String, ModelLayout> = HashMap::new();
    let mut checked = 0;
    let mut failures = Vec::new();
    for (line_no, line) in text.lines().enumerate() {
        let case: Value = serde_json::from_str(line).unwrap();
        let model = case["model"].as_str().unwrap().to_string();
        let layout = layouts.entry(model.clone()).or_insert_with(|| common::model(&model));
        let spec = FreezeSpec {
            llamafactory: Some(args_of(&case)),
            ..Default::default()
        };
        let got = plan(layout, &spec, PlanOptions::default());
        let ok = match (&case["trainable"], &got) {
            (Value::Array(want), Ok(p)) => {
                let want: Vec<&str> = want.iter().map(|v| v.as_str().unwrap()).collect();
                p.trainable == want
            }
            (Value::Null, Err(e)) => {
                let parsed = &case["error_parsed"];
                let json = e.to_json();
                json["kind"] == parsed["kind"]
                    && (parsed.get("module").is_none() || json["module"] == parsed["module"])
                    && (parsed.get("choices_sorted").is_none() || json["choices"] == parsed["choices_sorted"])
            }
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "line {}: {} args {} -> {:?}",
                line_no + 1,
                model,
                case["args"],
                got.map(|p| p.trainable)
            ));
        }
        checked += 1;
    }
    assert_eq!(checked, 674, "the reference file should hold 674 cases");
    assert!(
        failures.is_empty(),
        "{} of {checked} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
