//! Native-mode plans on a tied model, an untied model, a 12-layer model, a sharded checkpoint and an MoE model,
//! and the error cases, checked by their messages.

mod common;
use common::{model, synth};
use freezetune_core::synth::Family;
use freezetune_core::{plan, FreezeMode, FreezePlan, FreezeSpec, ModelLayout, PlanOptions, TrainState};

fn native(l: &ModelLayout, spec: FreezeSpec) -> FreezePlan {
    plan(l, &spec, PlanOptions::default()).unwrap()
}

fn error(l: &ModelLayout, spec: FreezeSpec) -> freezetune_core::Error {
    plan(l, &spec, PlanOptions::default()).unwrap_err()
}

fn ids(s: &str) -> FreezeSpec {
    FreezeSpec {
        layers: Some(s.into()),
        ..Default::default()
    }
}

#[test]
fn untied_top_two_with_extras() {
    let l = model("llama");
    let spec = FreezeSpec {
        top: Some(2),
        extra: vec!["lm_head".into(), "norm".into()],
        ..Default::default()
    };
    let p = native(&l, spec);
    assert_eq!(p.mode, FreezeMode::Native);
    assert_eq!(p.trainable.len(), 2 * 9 + 2);
    assert!(p.trainable.contains(&"lm_head.weight".to_string()));
    assert!(p.trainable.contains(&"model.norm.weight".to_string()));
    assert!(
        !p.trainable
            .iter()
            .any(|n| n.contains("layers.1.") || n.contains("layers.0.")),
        "norm means the final norm only"
    );
    let states: Vec<TrainState> = p.layers.iter().map(|l| l.state).collect();
    assert_eq!(
        states,
        [
            TrainState::Frozen,
            TrainState::Frozen,
            TrainState::Trainable,
            TrainState::Trainable
        ]
    );
    assert_eq!(p.trainable_layer_ids, "2-3");
    let sum: u64 = l.tensors().filter(|t| p.is_trainable(&t.name)).map(|t| t.params).sum();
    assert_eq!(p.trainable_params, sum);
    assert_eq!(p.total_params, l.total_params);
    let mut sorted = p.trainable.clone();
    sorted.sort();
    assert_eq!(sorted, p.trainable);
}

#[test]
fn modules_make_partial_layers() {
    let l = model("llama");
    let p = native(
        &l,
        FreezeSpec {
            bottom: Some(1),
            modules: vec!["mlp".into()],
            ..Default::default()
        },
    );
    assert_eq!(
        p.trainable,
        [
            "model.layers.0.mlp.down_proj.weight",
            "model.layers.0.mlp.gate_proj.weight",
            "model.layers.0.mlp.up_proj.weight"
        ]
    );
    assert_eq!(p.layers[0].state, TrainState::Partial);
    let mlp = p.layers[0].modules.iter().find(|m| m.name == "mlp").unwrap();
    assert_eq!(mlp.state, TrainState::Trainable);
    let sub = native(
        &l,
        FreezeSpec {
            layers: Some("1".into()),
            modules: vec!["self_attn.q_proj".into()],
            ..Default::default()
        },
    );
    assert_eq!(sub.trainable, ["model.layers.1.self_attn.q_proj.weight"]);
    assert_eq!(
        sub.layers[1]
            .modules
            .iter()
            .find(|m| m.name == "self_attn")
            .unwrap()
            .state,
        TrainState::Partial
    );
}

#[test]
fn tied_model_refuses_lm_head_and_warns_on_embeddings() {
    let l = model("qwen2");
    let e = error(
        &l,
        FreezeSpec {
            top: Some(1),
            extra: vec!["lm_head".into()],
            ..Default::default()
        },
    );
    assert_eq!(e.kind(), "tied_lm_head");
    assert!(
        e.to_string().contains("tie_word_embeddings") && e.to_string().contains("embed_tokens"),
        "{e}"
    );
    let p = native(
        &l,
        FreezeSpec {
            top: Some(1),
            extra: vec!["embed_tokens".into()],
            ..Default::default()
        },
    );
    assert!(p.warnings.iter().any(|w| w.code == "tied_embeddings"));
    assert!(p.trainable.contains(&"model.embed_tokens.weight".to_string()));
    assert_eq!(
        p.memory.backward_from_layer,
        Some(0),
        "embeddings training means backward through every layer"
    );
}

#[test]
fn layer_one_never_touches_layer_eleven() {
    let l = model("llama12");
    let p = native(&l, ids("1"));
    assert!(p.trainable.iter().all(|n| n.starts_with("model.layers.1.")));
    assert_eq!(p.trainable.len(), 9);
    let p = native(&l, ids("1,2,10-11"));
    assert_eq!(p.trainable_layer_ids, "1-2,10-11");
    assert_eq!(p.trainable.len(), 36);
}

#[test]
fn sharded_checkpoint_plans_like_single() {
    let (_a, single) = synth(Family::Llama, 6, 1);
    let (_b, sharded) = synth(Family::Llama, 6, 4);
    let spec = FreezeSpec {
        layers: Some("0,2-3".into()),
        extra: vec!["embed_tokens".into()],
        ..Default::default()
    };
    let (p1, p2) = (native(&single, spec.clone()), native(&sharded, spec));
    assert_eq!(p1.trainable, p2.trainable);
    assert_eq!(p1.memory, p2.memory);
}

#[test]
fn moe_layer_one_is_not_expert_one() {
    let (_d, l) = synth(Family::Mixtral, 3, 1);
    let p = native(&l, ids("1"));
    assert!(p.trainable.iter().all(|n| n.starts_with("model.layers.1.")));
    let lf = FreezeSpec {
        llamafactory: Some(freezetune_core::LlamaFactoryArgs {
            freeze_trainable_layers_ids: Some(freezetune_core::spec::IdList::Text("1".into())),
            ..Default::default()
        }),
        ..Default::default()
    };
    // LLaMA-Factory 0.9.5 selects over transformers 5's parameters, where each layer's experts are fused: its
    // `.1.` pattern meets no expert number (on transformers 4's per-expert names it trained expert 1 everywhere).
    let p = plan(&l, &lf, PlanOptions::default()).unwrap();
    assert!(
        p.trainable.iter().all(|n| n.starts_with("model.layers.1.")),
        "{:?}",
        p.trainable
    );
    assert!(p.trainable.iter().any(|n| n.contains(".experts.")));
    assert!(
        p.warnings.iter().all(|w| w.code != "lf_substring_match"),
        "{:?}",
        p.warnings
    );
}

#[test]
fn errors_name_what_is_wrong() {
    let l = model("llama");
    let e = error(&l, ids("7"));
    assert_eq!(e.kind(), "layer_out_of_range");
    assert_eq!(
        e.to_string(),
        "layer 7 is out of range: this model has 4 layers, valid ids are 0-3"
    );
    for (input, needle) in [
        ("1,,x", "empty entry #2"),
        ("5-2", "runs backwards"),
        ("-1", "negative"),
        ("a", "not a layer id"),
    ] {
        let e = error(&l, ids(input));
        assert_eq!(e.kind(), "bad_layer_ids");
        assert!(e.to_string().contains(needle), "{input}: {e}");
    }
    let e = error(
        &l,
        FreezeSpec {
            top: Some(1),
            modules: vec!["attention".into()],
            ..Default::default()
        },
    );
    let j = e.to_json();
    assert_eq!(j["kind"], "module_not_found");
    assert_eq!(j["module"], "attention");
    assert_eq!(
        j["choices"],
        serde_json::json!(["input_layernorm", "mlp", "post_attention_layernorm", "self_attn"])
    );
    let e = error(
        &l,
        FreezeSpec {
            top: Some(1),
            extra: vec!["layers".into()],
            ..Default::default()
        },
    );
    assert_eq!(
        e.to_json()["choices"],
        serde_json::json!(["embed_tokens", "lm_head", "norm"])
    );
    let e = error(
        &l,
        FreezeSpec {
            top: Some(5),
            ..Default::default()
        },
    );
    assert!(e.to_string().contains("between 1 and 4"), "{e}");
    let e = error(
        &l,
        FreezeSpec {
            top: Some(1),
            bottom: Some(1),
            ..Default::default()
        },
    );
    assert!(e.to_string().contains("exactly one"), "{e}");
}

#[test]
fn nothing_trainable_is_a_warning_for_plan_and_an_error_for_training() {
    let l = model("llama");
    let p = native(
        &l,
        FreezeSpec {
            no_layers: true,
            ..Default::default()
        },
    );
    assert!(p.trainable.is_empty());
    assert!(p.warnings.iter().any(|w| w.code == "nothing_trainable"));
    assert_eq!(p.require_trainable().unwrap_err().kind(), "nothing_trainable");
    assert_eq!(p.memory.activation_bytes, Some(0));
}

#[test]
fn memory_estimate_follows_the_documented_formula() {
    let l = model("llama");
    let opts = PlanOptions {
        batch_size: 2,
        seq_len: 16,
    };
    let p = plan(
        &l,
        &FreezeSpec {
            top: Some(2),
            ..Default::default()
        },
        opts,
    )
    .unwrap();
    let m = &p.memory;
    let trainable = p.trainable_params;
    assert_eq!(m.trainable_weight_bytes, 4 * trainable);
    assert_eq!(m.gradient_bytes, 4 * trainable);
    assert_eq!(m.optimizer_bytes, 8 * trainable);
    assert_eq!(
        m.frozen_weight_bytes,
        4 * (l.total_params - trainable),
        "fixture is f32"
    );
    assert_eq!(m.backward_from_layer, Some(2));
    // h=64, kv=2*16=32, i=128, H=4, V=512, S=16, B=2, two layers kept; the blockwise attention keeps one
    // log-sum-exp per head and token, and works in blocks of at most 32 MiB of scores (four such tensors at once).
    let per_layer = 10 * 64 + 4 * 32 + 4 * 128 + 4;
    let blocks = 4 * (32 << 20);
    assert_eq!(
        m.activation_bytes,
        Some(4 * 2 * 16 * (2 * per_layer + 64 + 3 * 512) + blocks)
    );
    // The largest trainable tensor of the top two layers is an MLP matrix (128 x 64).
    assert_eq!(m.update_bytes, 10 * 4 * 128 * 64);
    let deeper = plan(
        &l,
        &FreezeSpec {
            bottom: Some(1),
            ..Default::default()
        },
        opts,
    )
    .unwrap();
    assert!(
        deeper.memory.activation_bytes > m.activation_bytes,
        "training a low layer keeps more activations"
    );
    // The update runs after the step's activations are dropped: the larger of the two counts.
    assert_eq!(
        m.total_bytes,
        m.frozen_weight_bytes + 16 * trainable + m.update_bytes.max(m.activation_bytes.unwrap())
    );
    // Nothing of seq × seq size is kept: twice the sequence, twice the per-token activations.
    let longer = plan(
        &l,
        &FreezeSpec {
            top: Some(2),
            ..Default::default()
        },
        PlanOptions {
            batch_size: 2,
            seq_len: 32,
        },
    )
    .unwrap();
    assert_eq!(
        longer.memory.activation_bytes.unwrap() - blocks,
        2 * (m.activation_bytes.unwrap() - blocks)
    );
    // The CPU's fused kernels keep fewer activations and update in place: no update temporaries.
    assert_eq!(
        m.cpu_total_bytes,
        m.frozen_weight_bytes + 16 * trainable + m.cpu_activation_bytes.unwrap()
    );
    assert!(m.cpu_activation_bytes.unwrap() < m.activation_bytes.unwrap());
}

#[test]
fn plan_json_contract() {
    let l = model("llama");
    let p = native(&l, ids("1,3"));
    let j = serde_json::to_value(&p).unwrap();
    for key in [
        "mode",
        "trainable",
        "trainable_params",
        "total_params",
        "layers",
        "warnings",
        "memory",
    ] {
        assert!(j.get(key).is_some(), "missing {key}");
    }
    assert_eq!(j["mode"], "native");
    assert_eq!(j["layers"][1]["state"], "trainable");
    assert_eq!(j["layers"][0]["state"], "frozen");
    assert!(j["layers"][0]["id"].is_u64() && j["layers"][0]["trainable_params"].is_u64());
}

#[test]
fn layer_modules_train_single_modules_of_single_layers() {
    let l = model("llama");
    let spec = FreezeSpec {
        layers: Some("0".into()),
        layer_modules: [("1".to_string(), vec!["mlp".to_string()])].into_iter().collect(),
        ..Default::default()
    };
    let p = native(&l, spec);
    assert_eq!(p.layers[0].state, TrainState::Trainable);
    assert_eq!(p.layers[1].state, TrainState::Partial);
    let layer1: Vec<&String> = p.trainable.iter().filter(|n| n.contains("layers.1.")).collect();
    assert_eq!(layer1.len(), 3, "{layer1:?}");
    assert!(layer1.iter().all(|n| n.contains(".mlp.")), "{layer1:?}");
    assert_eq!(p.trainable_layer_ids, "0-1");

    // Only partial layers: no_layers plus the table.
    let spec = FreezeSpec {
        no_layers: true,
        layer_modules: [("1".to_string(), vec!["self_attn".to_string()])].into_iter().collect(),
        ..Default::default()
    };
    let p = native(&l, spec);
    assert!(
        p.trainable.iter().all(|n| n.contains("layers.1.self_attn.")),
        "{:?}",
        p.trainable
    );

    // Bad ids and modules are named.
    let bad_id = FreezeSpec {
        no_layers: true,
        layer_modules: [("9".to_string(), vec!["mlp".to_string()])].into_iter().collect(),
        ..Default::default()
    };
    assert!(error(&l, bad_id).to_string().contains('9'));
    let bad_module = FreezeSpec {
        no_layers: true,
        layer_modules: [("1".to_string(), vec!["attention".to_string()])].into_iter().collect(),
        ..Default::default()
    };
    assert!(error(&l, bad_module).to_string().contains("attention"));
    let empty = FreezeSpec {
        no_layers: true,
        layer_modules: [("1".to_string(), vec![])].into_iter().collect(),
        ..Default::default()
    };
    assert!(error(&l, empty).to_string().contains("lists no module"));
}
