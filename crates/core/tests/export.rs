//! LLaMA-Factory and Axolotl export: exact or refused.

mod common;
use common::{model, synth};
use freezetune_core::export::{axolotl_selects, to_axolotl_patterns, to_axolotl_yaml, to_llamafactory_yaml};
use freezetune_core::synth::Family;
use freezetune_core::{plan, FreezeSpec, LlamaFactoryArgs, PlanOptions};

fn spec(text: &str) -> FreezeSpec {
    toml::from_str(text).unwrap()
}

#[test]
fn llamafactory_export_round_trips_through_llamafactory_mode() {
    let l = model("llama");
    for (native, expect) in [
        ("top = 2", "freeze_trainable_layers: 2\nfreeze_trainable_modules: all\n"),
        (
            "bottom = 1\nmodules = [\"mlp\", \"self_attn\"]",
            "freeze_trainable_layers: -1\nfreeze_trainable_modules: mlp,self_attn\n",
        ),
        (
            "all_layers = true\nextra = [\"embed_tokens\", \"lm_head\"]",
            "freeze_trainable_layers: 4\nfreeze_trainable_modules: all\nfreeze_extra_modules: lm_head,embed_tokens\n",
        ),
    ] {
        let s = spec(native);
        let p = plan(&l, &s, PlanOptions::default()).unwrap();
        let yaml = to_llamafactory_yaml(&l, &s, &p).unwrap();
        assert!(yaml.contains("finetuning_type: freeze\n"), "{yaml}");
        assert!(yaml.ends_with(expect), "{native}:\n{yaml}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lf.yaml");
        std::fs::write(&file, &yaml).unwrap();
        let (args, _) = freezetune_core::spec::read_llamafactory_yaml(&file).unwrap();
        let back = plan(
            &l,
            &FreezeSpec {
                llamafactory: Some(args),
                ..Default::default()
            },
            PlanOptions::default(),
        )
        .unwrap();
        assert_eq!(back.trainable, p.trainable, "{native}");
    }
}

#[test]
fn llamafactory_export_refuses_what_it_cannot_express() {
    let l = model("llama12");
    let s = spec("layers = \"1,5,9\"");
    let p = plan(&l, &s, PlanOptions::default()).unwrap();
    let e = to_llamafactory_yaml(&l, &s, &p).unwrap_err();
    assert_eq!(e.kind(), "not_expressible");
    assert!(
        e.to_string().contains("1,5,9") && e.to_string().contains("axolotl"),
        "{e}"
    );
    // native `norm` is the final norm only; LLaMA-Factory's `norm` would catch every layernorm
    let s = spec("top = 1\nmodules = [\"mlp\"]\nextra = [\"norm\"]");
    let p = plan(&l, &s, PlanOptions::default()).unwrap();
    let e = to_llamafactory_yaml(&l, &s, &p).unwrap_err();
    assert!(e.to_string().contains("also train"), "{e}");
}

#[test]
fn axolotl_patterns_select_exactly_the_plan() {
    let (_d, moe) = synth(Family::Mixtral, 4, 1);
    let (_e, vlm) = synth(Family::Qwen2Vl, 3, 1);
    let cases = [
        (model("llama12"), "layers = \"1,5,9\""),
        (
            model("llama12"),
            "layers = \"1,10-11\"\nmodules = [\"mlp\", \"self_attn.q_proj\"]\nextra = [\"norm\", \"lm_head\"]",
        ),
        (
            model("qwen2"),
            "top = 1\nmodules = [\"self_attn\"]\nextra = [\"embed_tokens\"]",
        ),
        (moe, "layers = \"1\"\nmodules = [\"block_sparse_moe.experts.1\"]"),
        (vlm, "all_layers = true\nextra = [\"norm\"]"),
        (model("llama"), "no_layers = true"),
    ];
    for (l, text) in &cases {
        let p = plan(l, &spec(text), PlanOptions::default()).unwrap();
        let patterns = to_axolotl_patterns(l, &p).unwrap();
        for t in l.tensors() {
            assert_eq!(
                axolotl_selects(&patterns, &t.name),
                p.is_trainable(&t.name),
                "{text}: {} with {patterns:?}",
                t.name
            );
        }
        assert!(to_axolotl_yaml(l, &p).unwrap().contains("unfrozen_parameters"));
    }
    let p = plan(&model("llama12"), &spec("layers = \"1,5,9\""), PlanOptions::default()).unwrap();
    assert_eq!(
        to_axolotl_patterns(&model("llama12"), &p).unwrap(),
        vec!["^model.layers.(1|5|9)."]
    );
}

#[test]
fn llamafactory_spec_exports_its_own_arguments() {
    let l = model("llama");
    let args = LlamaFactoryArgs {
        freeze_trainable_layers: Some(-2),
        freeze_extra_modules: Some("norm".into()),
        ..Default::default()
    };
    let s = FreezeSpec {
        llamafactory: Some(args),
        ..Default::default()
    };
    let p = plan(&l, &s, PlanOptions::default()).unwrap();
    let yaml = to_llamafactory_yaml(&l, &s, &p).unwrap();
    assert!(
        yaml.contains("freeze_trainable_layers: -2\n") && yaml.contains("freeze_extra_modules: norm\n"),
        "{yaml}"
    );
}
