//! LLaMA-Factory and Axolotl export: exact or refused.

mod common;
use common::{model, synth};
use freezetune_core::export::{axolotl_selects, to_axolotl_patterns, to_axolotl_yaml, to_llamafactory_yaml};
use freezetune_core::runtime_names::runtime_name;
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
        (moe, "layers = \"1\"\nmodules = [\"block_sparse_moe\"]"),
        (vlm, "all_layers = true\nextra = [\"norm\"]"),
        (model("llama"), "no_layers = true"),
    ];
    for (l, text) in &cases {
        let p = plan(l, &spec(text), PlanOptions::default()).unwrap();
        let patterns = to_axolotl_patterns(l, &p).unwrap();
        // Axolotl sees transformers 5's parameter names (a layer's experts fused).
        let model_type = l.model_type.as_deref().unwrap_or_default();
        for t in l.tensors() {
            assert_eq!(
                axolotl_selects(&patterns, &runtime_name(&t.name, model_type)),
                p.is_trainable(&t.name),
                "{text}: {} with {patterns:?}",
                t.name
            );
        }
        assert!(to_axolotl_yaml(l, &FreezeSpec::default(), &p)
            .unwrap()
            .contains("unfrozen_parameters"));
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

#[test]
fn a_cycle_goes_out_as_badam_only_when_badam_would_do_the_same() {
    let l = model("llama");
    let yaml = |text: &str| {
        let s = spec(text);
        let p = plan(&l, &s, PlanOptions::default()).unwrap();
        to_llamafactory_yaml(&l, &s, &p)
    };
    let out =
        yaml("all_layers = true\n[schedule]\nkind = \"cycle\"\ninterval = 30\norder = \"descending\"\nstart_block = 2")
            .unwrap();
    assert!(
        out.ends_with(
            "finetuning_type: full\nuse_badam: true\nbadam_mode: layer\nbadam_switch_mode: descending\n\
             badam_switch_interval: 30\nbadam_start_block: 2\n"
        ),
        "{out}"
    );
    for (text, why) in [
        ("top = 2\n[schedule]\nkind = \"cycle\"", "every layer"),
        (
            "all_layers = true\nmodules = [\"mlp\"]\n[schedule]\nkind = \"cycle\"",
            "every layer",
        ),
        (
            "all_layers = true\nextra = [\"norm\"]\n[schedule]\nkind = \"cycle\"",
            "always trains norm",
        ),
        (
            "all_layers = true\n[schedule]\nkind = \"cycle\"\ngroup = 2",
            "one layer per block",
        ),
        (
            "all_layers = true\n[schedule]\nkind = \"cycle\"\noptimizer_state = \"keep\"",
            "resets the optimizer",
        ),
        (
            "all_layers = true\n[schedule]\nkind = \"cycle\"\nunit = \"epochs\"",
            "epochs",
        ),
        ("all_layers = true\n[schedule]\nkind = \"sample\"", "no sample schedule"),
    ] {
        let e = yaml(text).unwrap_err();
        assert_eq!(e.kind(), "not_expressible", "{text}");
        assert!(e.to_string().contains(why), "{text}: {e}");
    }
}

#[test]
fn a_sample_goes_out_as_axolotl_lisa_only_when_lisa_would_do_the_same() {
    let l = model("llama");
    let yaml = |text: &str| {
        let s = spec(text);
        let p = plan(&l, &s, PlanOptions::default()).unwrap();
        to_axolotl_yaml(&l, &s, &p)
    };
    let lisa = "all_layers = true\nextra = [\"embed_tokens\", \"norm\", \"lm_head\"]\n[schedule]\nkind = \"sample\"\ngamma = 3\ninterval = 10";
    let out = yaml(lisa).unwrap();
    assert!(
        out.contains("lisa_n_layers: 3\nlisa_step_interval: 10\nlisa_layers_attribute: model.layers\n"),
        "{out}"
    );
    // `always` counts as the plan's extras do.
    let via_always = "all_layers = true\n[schedule]\nkind = \"sample\"\ngamma = 3\ninterval = 10\nalways = [\"embed_tokens\", \"norm\", \"lm_head\"]";
    assert!(yaml(via_always).is_ok());
    for (text, why) in [
        (
            "all_layers = true\n[schedule]\nkind = \"sample\"",
            "trains every module outside the layers",
        ),
        (&format!("{lisa}\noptimizer_state = \"reset\""), "resets it"),
        (
            "layers = \"1-2\"\nextra = [\"embed_tokens\", \"norm\", \"lm_head\"]\n[schedule]\nkind = \"sample\"",
            "every layer",
        ),
        (
            "all_layers = true\n[schedule]\nkind = \"progressive\"",
            "no progressive schedule",
        ),
    ] {
        let e = yaml(text).unwrap_err();
        assert_eq!(e.kind(), "not_expressible", "{text}");
        assert!(e.to_string().contains(why), "{text}: {e}");
    }
}

/// A mixture-of-experts model hands off in transformers 5's names, which LLaMA-Factory and Axolotl select over:
/// Mixtral's `block_sparse_moe` is `mlp`, and each layer's experts are one parameter per projection, so a plan
/// training some of a layer's experts is refused by name rather than handed off as something else.
#[test]
fn mixture_of_experts_hand_offs_use_transformers_5_parameter_names() {
    let (_d, l) = synth(Family::Mixtral, 3, 1);
    let s = spec("top = 1\nmodules = [\"block_sparse_moe\"]");
    let p = plan(&l, &s, PlanOptions::default()).unwrap();
    let yaml = to_llamafactory_yaml(&l, &s, &p).unwrap();
    assert!(
        yaml.ends_with("freeze_trainable_layers: 1\nfreeze_trainable_modules: mlp\n"),
        "{yaml}"
    );
    let patterns = to_axolotl_patterns(&l, &p).unwrap();
    assert!(
        axolotl_selects(&patterns, "model.layers.2.mlp.experts.gate_up_proj"),
        "{patterns:?}"
    );
    assert!(
        axolotl_selects(&patterns, "model.layers.2.mlp.gate.weight"),
        "{patterns:?}"
    );
    assert!(
        !axolotl_selects(&patterns, "model.layers.2.self_attn.q_proj.weight"),
        "{patterns:?}"
    );
    // One expert of layer 2.
    let one = spec("layers = \"2\"\nmodules = [\"block_sparse_moe.experts.1\"]");
    let p = plan(&l, &one, PlanOptions::default()).unwrap();
    assert!(!p.trainable.is_empty());
    for e in [
        to_llamafactory_yaml(&l, &one, &p).unwrap_err(),
        to_axolotl_patterns(&l, &p).unwrap_err(),
    ] {
        assert_eq!(e.kind(), "not_expressible");
        assert!(e.to_string().contains("model.layers.2.mlp.experts."), "{e}");
    }
}
