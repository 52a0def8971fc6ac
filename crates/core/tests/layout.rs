//! Model inspection on the reference fixtures, on every synthetic family, on sharded checkpoints, and on broken input.

mod common;
use common::{fixture, model, synth};
use freezetune_core::layout::ModuleKind;
use freezetune_core::synth::{write_checkpoint, Family, SynthSpec};
use freezetune_core::{plan, FreezeSpec, ModelLayout, PlanOptions};

#[test]
fn untied_llama() {
    let l = model("llama");
    assert_eq!(l.architecture, "LlamaForCausalLM");
    assert_eq!(l.num_layers, 4);
    assert_eq!(l.layer_prefix, "model.layers");
    assert!(!l.tie_word_embeddings && l.has_lm_head_tensor);
    assert_eq!(
        l.layer_module_names(),
        vec!["input_layernorm", "mlp", "post_attention_layernorm", "self_attn"]
    );
    let modules: Vec<(&str, &str)> = l
        .non_layer_modules
        .iter()
        .map(|m| (m.name.as_str(), m.path.as_str()))
        .collect();
    assert_eq!(
        modules,
        [
            ("lm_head", "lm_head"),
            ("embed_tokens", "model.embed_tokens"),
            ("norm", "model.norm")
        ]
    );
    // 4 layers x (q 64x64 + k,v 32x64 + o 64x64 + 3 x 128x64 + 2 norms 64) + embed + lm_head 512x64 + norm 64
    let per_layer = 64 * 64 * 2 + 32 * 64 * 2 + 3 * 128 * 64 + 2 * 64;
    assert_eq!(l.layers[0].params, per_layer);
    assert_eq!(l.total_params, 4 * per_layer + 2 * 512 * 64 + 64);
    let attn = &l.layers[2].modules.iter().find(|m| m.name == "self_attn").unwrap();
    assert_eq!(attn.kind, ModuleKind::Attention);
    assert_eq!(attn.tensors.len(), 4);
    assert_eq!(attn.path, "model.layers.2.self_attn");
}

#[test]
fn tied_qwen2_has_no_lm_head() {
    let l = model("qwen2");
    assert!(l.tie_word_embeddings && !l.has_lm_head_tensor);
    assert!(l.non_layer_modules.iter().all(|m| m.name != "lm_head"));
    let attn = l.layers[0].modules.iter().find(|m| m.name == "self_attn").unwrap();
    assert_eq!(attn.tensors.len(), 7, "q/k/v biases are part of self_attn");
}

#[test]
fn twelve_layers_keep_ids_apart() {
    let l = model("llama12");
    assert_eq!(l.layers.len(), 12);
    for layer in &l.layers {
        for m in &layer.modules {
            assert!(m
                .tensors
                .iter()
                .all(|t| t.name.starts_with(&format!("model.layers.{}.", layer.id))));
        }
    }
}

#[test]
fn every_family_is_shown() {
    for (family, prefix, modules) in [
        (
            Family::Phi3,
            "model.layers",
            vec!["input_layernorm", "mlp", "post_attention_layernorm", "self_attn"],
        ),
        (
            Family::Gemma,
            "model.layers",
            vec!["input_layernorm", "mlp", "post_attention_layernorm", "self_attn"],
        ),
        (
            Family::Qwen3,
            "model.layers",
            vec!["input_layernorm", "mlp", "post_attention_layernorm", "self_attn"],
        ),
        (
            Family::Opt,
            "model.decoder.layers",
            vec!["fc1", "fc2", "final_layer_norm", "self_attn", "self_attn_layer_norm"],
        ),
        (
            Family::Mixtral,
            "model.layers",
            vec![
                "block_sparse_moe",
                "input_layernorm",
                "post_attention_layernorm",
                "self_attn",
            ],
        ),
        (
            Family::Qwen2Vl,
            "model.language_model.layers",
            vec!["input_layernorm", "mlp", "post_attention_layernorm", "self_attn"],
        ),
    ] {
        let (_dir, l) = synth(family, 3, 1);
        assert_eq!(l.layer_prefix, prefix, "{family:?}");
        assert_eq!(l.num_layers, 3, "{family:?}");
        assert_eq!(l.layers.len(), 3, "{family:?}");
        assert_eq!(l.layer_module_names(), modules, "{family:?}");
        let total: u64 = SynthSpec::tiny(family, 3)
            .tensors()
            .iter()
            .map(|(_, s)| s.iter().product::<u64>())
            .sum();
        assert_eq!(l.total_params, total, "{family:?}");
        assert!(l.warnings.is_empty(), "{family:?}: {:?}", l.warnings);
    }
    let (_dir, vlm) = synth(Family::Qwen2Vl, 3, 1);
    assert!(vlm.multimodal);
    let visual = vlm
        .non_layer_modules
        .iter()
        .find(|m| m.path == "model.visual.blocks")
        .unwrap();
    assert_eq!(
        visual.tensors.len(),
        8,
        "the vision tower's 4 blocks show as one module"
    );
    let (_dir, opt) = synth(Family::Opt, 3, 1);
    assert!(opt.tie_word_embeddings);
    let fc1 = &opt.layers[0].modules.iter().find(|m| m.name == "fc1").unwrap();
    assert_eq!(fc1.kind, ModuleKind::Mlp);
    assert_eq!(
        opt.layers[0]
            .modules
            .iter()
            .find(|m| m.name == "self_attn_layer_norm")
            .unwrap()
            .kind,
        ModuleKind::Norm
    );
}

#[test]
fn a_vision_language_checkpoints_short_names_are_its_text_models() {
    // Qwen3.5's released checkpoints hold `model.language_model.norm` and the vision merger's
    // `model.visual.merger.norm`: "norm" must mean the text model's, as on a text-only checkpoint.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/qwen3_5_vlm");
    let layout = ModelLayout::inspect(&dir).unwrap();
    let path_of = |name: &str| -> Vec<&str> {
        let named = layout.non_layer_modules.iter().filter(|m| m.name == name);
        named.map(|m| m.path.as_str()).collect()
    };
    assert_eq!(path_of("norm"), ["model.language_model.norm"]);
    assert_eq!(path_of("merger.norm"), ["model.visual.merger.norm"]);
    let mut names: Vec<&str> = layout.non_layer_modules.iter().map(|m| m.name.as_str()).collect();
    let count = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), count, "short names repeat: {names:?}");
    let spec = FreezeSpec {
        top: Some(1),
        extra: vec!["norm".into()],
        ..Default::default()
    };
    let p = plan(&layout, &spec, PlanOptions::default()).unwrap();
    assert!(p.trainable.iter().any(|t| t == "model.language_model.norm.weight"));
    assert!(!p.trainable.iter().any(|t| t.starts_with("model.visual")));
}

#[test]
fn every_token_mixer_is_an_attention_module() {
    // The app's "attention" filter must reach the hybrids' mixers: LFM2's `conv` was "other" before.
    for name in ["self_attn", "linear_attn", "conv", "attention"] {
        assert_eq!(ModuleKind::classify(name), ModuleKind::Attention, "{name}");
    }
    assert_eq!(ModuleKind::classify("conv_norm"), ModuleKind::Norm);
    assert_eq!(ModuleKind::classify("feed_forward"), ModuleKind::Mlp);
}

#[test]
fn sharded_equals_single() {
    let (_a, single) = synth(Family::Llama, 4, 1);
    let (_b, sharded) = synth(Family::Llama, 4, 3);
    assert_eq!(sharded.files.len(), 3);
    assert_eq!(
        single.layers,
        sharded
            .layers
            .iter()
            .map(|l| {
                let mut l = l.clone();
                for m in &mut l.modules {
                    for t in &mut m.tensors {
                        t.file = "model.safetensors".into();
                    }
                }
                l
            })
            .collect::<Vec<_>>()
    );
    assert_eq!(single.total_params, sharded.total_params);
}

fn err(dir: &std::path::Path) -> (String, String) {
    let e = ModelLayout::inspect(dir).unwrap_err();
    (e.kind().to_string(), e.to_string())
}

#[test]
fn broken_checkpoints_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (kind, msg) = err(d);
    assert_eq!(kind, "missing_config");
    assert!(msg.contains("no config.json"), "{msg}");

    std::fs::copy(fixture("models/llama/config.json"), d.join("config.json")).unwrap();
    let (kind, msg) = err(d);
    assert_eq!(kind, "no_safetensors");
    assert!(msg.contains("pickle"), "{msg}");

    let good = std::fs::read(fixture("models/llama/model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &good[..good.len() - 100]).unwrap();
    let (kind, msg) = err(d);
    assert_eq!(kind, "bad_safetensors");
    assert!(msg.contains("model.safetensors") && msg.contains("truncated"), "{msg}");

    std::fs::write(d.join("model.safetensors"), &good[..20]).unwrap();
    let (_, msg) = err(d);
    assert!(msg.contains("truncated"), "{msg}");

    let mut garbage = 12u64.to_le_bytes().to_vec();
    garbage.extend_from_slice(b"{{{ garbage ");
    std::fs::write(d.join("model.safetensors"), &garbage).unwrap();
    let (kind, msg) = err(d);
    assert_eq!(kind, "bad_safetensors");
    assert!(msg.contains("not a JSON object"), "{msg}");

    std::fs::write(d.join("config.json"), "{ nope").unwrap();
    std::fs::write(d.join("model.safetensors"), &good).unwrap();
    let (kind, msg) = err(d);
    assert_eq!(kind, "bad_config");
    assert!(msg.contains("config.json"), "{msg}");
}

#[test]
fn index_naming_a_missing_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spec = SynthSpec::tiny(Family::Llama, 2);
    spec.shards = 2;
    write_checkpoint(tmp.path(), &spec).unwrap();
    std::fs::remove_file(tmp.path().join("model-00002-of-00002.safetensors")).unwrap();
    let (kind, msg) = err(tmp.path());
    assert_eq!(kind, "missing_shard");
    assert!(
        msg.contains("model-00002-of-00002.safetensors") && msg.contains("model.safetensors.index.json"),
        "{msg}"
    );

    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        r#"{"weight_map": {"x": "../etc/passwd"}}"#,
    )
    .unwrap();
    let (kind, _) = err(tmp.path());
    assert_eq!(kind, "bad_index");
}

/// What a Hub repo's range requests read: config.json and each shard's size and header bytes.
fn remote_parts(dir: &std::path::Path) -> (serde_json::Value, Vec<freezetune_core::RemoteShard>) {
    let config = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let mut shards = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            let bytes = std::fs::read(&path).unwrap();
            let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            shards.push(freezetune_core::RemoteShard {
                name: path.file_name().unwrap().to_string_lossy().into_owned(),
                size: bytes.len() as u64,
                header: bytes[8..8 + n].to_vec(),
            });
        }
    }
    (config, shards)
}

#[test]
fn a_layout_from_remote_headers_equals_the_inspected_one() {
    let (dir, inspected) = synth(Family::Llama, 4, 3);
    let (config, shards) = remote_parts(dir.path());
    assert_eq!(shards.len(), 3);
    let remote = ModelLayout::from_headers("acme/tiny", config.clone(), &shards).unwrap();
    assert_eq!(remote.layers, inspected.layers);
    assert_eq!(remote.total_params, inspected.total_params);
    assert_eq!(remote.weight_bytes(), inspected.weight_bytes());
    // A header that claims more bytes than its file holds, and a tensor in two shards, are refused by name.
    let mut short = shards.clone();
    short[0].size = 8 + short[0].header.len() as u64 + 1;
    let e = ModelLayout::from_headers("acme/tiny", config.clone(), &short).unwrap_err();
    assert!(e.to_string().contains("acme/tiny"), "{e}");
    let twice = [shards[0].clone(), shards[0].clone()];
    let e = ModelLayout::from_headers("acme/tiny", config, &twice).unwrap_err();
    assert!(e.to_string().contains("also stored in another shard"), "{e}");
}

/// A copy of the Ministral 3 fixture (a wrapper storing its own lm_head) whose config.json leaves out the top-level
/// tie flag, as Mistral's published configs do: transformers' class default then ties, and the stored head decides.
fn ministral3_without_top_level_tie(dir: &std::path::Path) {
    let src = fixture("models/ministral3");
    for f in ["model.safetensors", "generation_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config.as_object_mut().unwrap().remove("tie_word_embeddings");
    config["text_config"]["tie_word_embeddings"] = false.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

#[test]
fn a_tie_holds_as_transformers_reads_it_the_wrappers_flag_and_the_stored_heads_values() {
    let tmp = tempfile::tempdir().unwrap();
    ministral3_without_top_level_tie(tmp.path());
    // The stored head differs from the embeddings: transformers keeps both, untied.
    let l = ModelLayout::inspect(tmp.path()).unwrap();
    assert!(!l.tie_word_embeddings && l.has_lm_head_tensor);
    assert!(l.non_layer_modules.iter().any(|m| m.name == "lm_head"));
    assert!(
        l.warnings
            .iter()
            .any(|w| w.contains("stores an lm_head with other values")),
        "{:?}",
        l.warnings
    );
    // The same bytes in both: transformers ties them, and the stored head is the embeddings' alias.
    let path = tmp.path().join("model.safetensors");
    let header = freezetune_core::safetensors::read_header(&path).unwrap();
    let range = |name: &str| {
        let t = header.tensors.iter().find(|t| t.name == name).unwrap();
        let start = (8 + header.header_len + t.data_offsets.0) as usize;
        start..start + (t.data_offsets.1 - t.data_offsets.0) as usize
    };
    let mut bytes = std::fs::read(&path).unwrap();
    let embed = bytes[range("language_model.model.embed_tokens.weight")].to_vec();
    bytes[range("language_model.lm_head.weight")].copy_from_slice(&embed);
    std::fs::write(&path, bytes).unwrap();
    let l = ModelLayout::inspect(tmp.path()).unwrap();
    assert!(l.tie_word_embeddings && l.tied_aliases == ["language_model.lm_head.weight"]);
    assert!(l.non_layer_modules.iter().all(|m| m.name != "lm_head"));
    // The text tower's flag is never read: a wrapper that unties at the top level stays untied, whatever
    // text_config says (transformers 5 writes the text class's default there).
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("config.json")).unwrap()).unwrap();
    config["tie_word_embeddings"] = false.into();
    config["text_config"]["tie_word_embeddings"] = true.into();
    std::fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
    let l = ModelLayout::inspect(tmp.path()).unwrap();
    assert!(!l.tie_word_embeddings && l.non_layer_modules.iter().any(|m| m.name == "lm_head"));
}
