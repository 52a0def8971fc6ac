//! Exported files, read by llama.cpp itself (llama-cpp-python) and the `gguf` package: the same logits as
//! FreezeTune's decoder within 1e-3 for f16, the same greedy tokens, the same tokenization; q8_0 and q4_k_m load
//! and generate.

mod common;

use common::*;
use freezetune_core::synth::Family;
use freezetune_gguf::{export_gguf, ExportOptions, ExportType};
use std::path::{Path, PathBuf};

/// Export as `kind`, nothing else asked for.
fn options(kind: ExportType) -> ExportOptions {
    ExportOptions {
        kind,
        force: false,
        modelfile: false,
        name: None,
    }
}

fn export(model: &Path, dest: &Path, kind: ExportType) -> PathBuf {
    let options = options(kind);
    export_gguf(model, dest, &options, &mut |_| true).unwrap();
    dest.to_path_buf()
}

fn check_f16(model: &Path, arch: &str, tmp: &Path) {
    check_export(model, arch, tmp, ExportType::F16, 1e-3);
}

/// The export of `model` as `kind`, run by llama.cpp: logits within `tolerance` of FreezeTune's, the same greedy
/// tokens and tokenization.
fn check_export(model: &Path, arch: &str, tmp: &Path, kind: ExportType, tolerance: f64) {
    let file = export(model, &tmp.join(format!("{arch}.gguf")), kind);
    let seen = llama_cpp(&file, &PROMPT, 12, SAMPLE);
    assert_eq!(seen["metadata"]["general.architecture"], arch);
    let ours = freezetune_logits(model, &PROMPT);
    let diff = max_diff(&ours, &seen["logits"]);
    assert!(
        diff <= tolerance,
        "{arch}: llama.cpp's logits differ from FreezeTune's by {diff}"
    );
    let eos = seen["metadata"]["tokenizer.ggml.eos_token_id"]
        .as_u64()
        .map(|e| e as u32);
    let theirs: Vec<u32> = ids_of(&seen["greedy"])
        .into_iter()
        .take_while(|t| Some(*t) != eos)
        .collect();
    let ours = freezetune_greedy(model, &PROMPT, 12);
    assert_eq!(
        theirs[..ours.len().min(theirs.len())],
        ours[..],
        "{arch}: greedy tokens"
    );
    assert_eq!(ids_of(&seen["text_ids"]), hf_ids(model, SAMPLE), "{arch}: tokenization");
    println!("{arch}: max |logit difference| {diff:.2e}, greedy {ours:?}");
}

#[test]
fn f16_exports_match_freezetune_in_llama_cpp() {
    let tmp = tempfile::tempdir().unwrap();
    check_f16(&fixture("llama"), "llama", tmp.path());
    check_f16(&fixture("qwen2"), "qwen2", tmp.path());
    for (family, arch) in [
        (Family::Qwen3, "qwen3"),
        (Family::Phi3, "phi3"),
        (Family::Gemma, "gemma"),
    ] {
        let model = tiny_model(&tmp.path().join(arch), family, 64);
        check_f16(&model, arch, tmp.path());
    }
}

#[test]
fn newer_families_match_freezetune_in_llama_cpp() {
    let tmp = tempfile::tempdir().unwrap();
    // f32 exports: these reference models have wide weights (so that their features bite), and f16 rounding of
    // them alone moves logits by ~1e-3; the f16 path is checked on the older families above. Gemma's GeLU runs in
    // llama.cpp through an f16 lookup table (ggml's GGML_GELU_FP16): the same table emulated in transformers moves
    // these two models' logits by 1.9e-3 and 2.0e-3, the differences llama.cpp shows.
    let (exact, gelu) = (1e-3, 3e-3);
    for (arch, model) in newer_family_models(tmp.path()) {
        let tolerance = if arch.starts_with("gemma") { gelu } else { exact };
        check_export(&model, arch, tmp.path(), ExportType::F32, tolerance);
    }
}

/// A model released in FP8 (every decoder projection as e4m3 codes and block scales: the qwen3_moe_fp8 fixture)
/// goes out as its dequantized values, which llama.cpp runs as FreezeTune does.
#[test]
fn fp8_checkpoints_export_their_dequantized_values() {
    let tmp = tempfile::tempdir().unwrap();
    let model = all_sparse(&tmp.path().join("qwen3moe_fp8"), "qwen3_moe_fp8");
    let stored = freezetune_core::safetensors::read_header(&model.join("model.safetensors")).unwrap();
    assert!(stored.tensors.iter().any(|t| t.name.ends_with("_scale_inv")));
    check_export(&model, "qwen3moe", tmp.path(), ExportType::F32, 1e-3);
}

/// A sliding window llama.cpp's family has no room for is exported with a warning that names it; a model that does
/// not slide, or a family llama.cpp slides (Phi-3), gets none.
#[test]
fn windows_llama_cpp_ignores_are_named_in_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let options = options(ExportType::F32);
    for (name, warned) in [
        ("mistral_window", true),
        ("qwen2_window", true),
        ("llama", false),
        ("phi3_window", false),
    ] {
        // The reference llama's tokenizer beside each fixture's weights (the window fixtures carry none).
        let model = family_variant(&tmp.path().join(name), name, |_| {});
        let dest = tmp.path().join(format!("{name}.gguf"));
        let report = export_gguf(&model, &dest, &options, &mut |_| true).unwrap();
        let warning = report.warnings.iter().find(|w| w.contains("sliding window"));
        assert_eq!(warning.is_some(), warned, "{name}: {:?}", report.warnings);
        if let Some(w) = warning {
            assert!(w.contains("only for sequences up to"), "{w}");
        }
    }
}

#[test]
fn models_llama_cpp_would_run_differently_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let refused = |model: &Path, want: &str| {
        let options = options(ExportType::F16);
        let dest = model.join("out.gguf");
        let err = export_gguf(model, &dest, &options, &mut |_| true)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{err}");
        assert!(!dest.exists());
    };
    // The fixtures as made: a query scale of 1/2, a Gemma 3 full-attention layer at 1, a NoPE layer 0, MLP biases,
    // LFM2's convolution biases.
    let g2 = family_variant(&tmp.path().join("g2"), "gemma2", |c| {
        c["tie_word_embeddings"] = true.into()
    });
    drop_tensors(&g2, |name| name == "lm_head.weight");
    refused(&g2, "query_pre_attn_scalar");
    refused(
        &family_variant(&tmp.path().join("g2t"), "gemma2", |c| {
            c["query_pre_attn_scalar"] = 16.into()
        }),
        "lm_head",
    );
    refused(&family_variant(&tmp.path().join("gr"), "granite", |_| {}), "MLP biases");
    let g3 = family_variant(&tmp.path().join("g3"), "gemma3", |c| {
        c["query_pre_attn_scalar"] = 16.into()
    });
    refused(&g3, "every 6th layer");
    refused(&family_variant(&tmp.path().join("s3"), "smollm3", |_| {}), "NoPE");
    refused(
        &family_variant(&tmp.path().join("lf"), "lfm2", |_| {}),
        "no convolution biases",
    );
    refused(
        &family_variant(&tmp.path().join("o3"), "olmo3", |_| {}),
        "not supported yet",
    );
    // Qwen3 MoE as made: a dense layer 1; and, given experts everywhere, weights left unnormalised.
    refused(
        &family_variant(&tmp.path().join("q3m"), "qwen3_moe", |_| {}),
        "layer 1 has a dense MLP",
    );
    let unnormalised = family_variant(&tmp.path().join("q3n"), "qwen3_moe", |c| {
        c["mlp_only_layers"] = serde_json::json!([]);
        c["norm_topk_prob"] = false.into();
    });
    refused(&unnormalised, "norm_topk_prob");
    // gpt-oss with its full-attention layer first (llama.cpp slides the even layers), with other YaRN betas, and as
    // released with MXFP4 experts.
    let full_first = family_variant(&tmp.path().join("go"), "gpt_oss", |c| {
        c["layer_types"] = serde_json::json!(["full_attention", "sliding_attention"])
    });
    refused(&full_first, "every 2th layer full-attention");
    let betas = family_variant(&tmp.path().join("gb"), "gpt_oss", |c| {
        c["rope_parameters"]["beta_fast"] = 16.0.into()
    });
    refused(&betas, "rope");
    refused(
        &family_variant(&tmp.path().join("gm"), "gpt_oss_mxfp4", |_| {}),
        "MXFP4 blocks",
    );
    // gpt-oss tied to its embeddings (no lm_head stored: a stored one that differs keeps the model untied, as
    // transformers reads it), or without attention biases: llama.cpp's gpt-oss needs both.
    let tied = family_variant(&tmp.path().join("gt"), "gpt_oss", |c| {
        c["tie_word_embeddings"] = true.into()
    });
    drop_tensors(&tied, |name| name == "lm_head.weight");
    refused(&tied, "output matrix");
    refused(
        &family_variant(&tmp.path().join("ga"), "gpt_oss", |c| {
            c["attention_bias"] = false.into()
        }),
        "biases on every attention projection",
    );
    // OLMoE as made (grouped key/value heads), and renormalising its top-k weights, which llama.cpp's olmoe never
    // does.
    refused(
        &family_variant(&tmp.path().join("og"), "olmoe", |_| {}),
        "key/value heads",
    );
    let olmoe = olmoe_without_gqa(&tmp.path().join("om"));
    let path = olmoe.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["norm_topk_prob"] = true.into();
    std::fs::write(&path, config.to_string()).unwrap();
    refused(&olmoe, "norm_topk_prob");
    // GLM-4.5 as made (the best 2 of 4 expert groups: llama.cpp chooses among all experts), without q/k/v biases
    // (llama.cpp's glm4moe needs them), and with a dense layer after a sparse one. DeepSeek-V3 is not exported.
    refused(
        &family_variant(&tmp.path().join("gg"), "glm4_moe", |_| {}),
        "topk_group",
    );
    let one_group = |c: &mut serde_json::Value| {
        c["n_group"] = 1.into();
        c["topk_group"] = 1.into();
    };
    let unbiased = family_variant(&tmp.path().join("gn"), "glm4_moe", |c| {
        one_group(c);
        c["attention_bias"] = false.into();
    });
    drop_tensors(&unbiased, |name| name.ends_with("_proj.bias"));
    refused(&unbiased, "biases on q, k and v");
    refused(
        &family_variant(&tmp.path().join("ds"), "deepseek_v3", |_| {}),
        "not supported yet",
    );
    // EXAONE 4 sliding with 4 layers: llama.cpp's exaone4 slides only its 64-layer model.
    refused(&family_variant(&tmp.path().join("ex"), "exaone4", |_| {}), "64-layer");
    // EXAONE 4 with a window but no sliding layer: transformers rotates none of its layers, llama.cpp all of them.
    let unrotated = family_variant(&tmp.path().join("exf"), "exaone4", |c| {
        c["layer_types"] = serde_json::json!(["full_attention", "full_attention", "full_attention", "full_attention"]);
    });
    refused(&unrotated, "without rope");
    // ERNIE 4.5 with `use_bias`: llama.cpp's ernie4_5 has no MLP biases.
    refused(
        &family_variant(&tmp.path().join("er"), "ernie4_5", |_| {}),
        "no MLP biases",
    );
}

/// gpt-oss as released (`truncate: false`): llama.cpp rounds YaRN's ramp to whole dimensions, so the export warns and
/// llama.cpp's logits move off FreezeTune's (9e-2 on this wide-weight fixture, against 7e-6 rounded); the rounded
/// model gets no warning, and neither warns of a sliding window (llama.cpp's gpt-oss slides).
#[test]
fn gpt_oss_unrounded_yarn_is_named_in_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let options = options(ExportType::F32);
    for truncate in [false, true] {
        let dir = tmp.path().join(format!("gpt_oss_{truncate}"));
        // An original context of 4096 puts the ramp's ends between dimensions (2.62 and 5.63 of 8 here); the
        // fixture's own 16 puts them where rounding changes nothing.
        let model = family_variant(&dir, "gpt_oss", |c| {
            c["rope_parameters"]["truncate"] = truncate.into();
            c["rope_parameters"]["original_max_position_embeddings"] = 4096.into();
        });
        let dest = dir.join("out.gguf");
        let report = export_gguf(&model, &dest, &options, &mut |_| true).unwrap();
        let warned = report.warnings.iter().any(|w| w.contains("truncate: false"));
        assert_eq!(warned, !truncate, "{:?}", report.warnings);
        assert!(
            !report.warnings.iter().any(|w| w.contains("sliding window")),
            "{:?}",
            report.warnings
        );
        let seen = llama_cpp(&dest, &PROMPT, 0, SAMPLE);
        let diff = max_diff(&freezetune_logits(&model, &PROMPT), &seen["logits"]);
        println!("gpt-oss, truncate {truncate}: max |logit difference| {diff:.2e}");
        match truncate {
            true => assert!(diff < 1e-4, "{diff}"),
            false => assert!(diff > 1e-4 && diff < 0.5, "{diff}"),
        }
    }
}

/// A copy of the reference llama with config.json changed by `edit`.
fn llama_variant(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(fixture("llama")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, config.to_string()).unwrap();
    dir.to_path_buf()
}

#[test]
fn mistral_and_llama3_rope_scaling_match_in_llama_cpp() {
    let tmp = tempfile::tempdir().unwrap();
    let mistral = llama_variant(&tmp.path().join("mistral"), |c| {
        c["architectures"] = serde_json::json!(["MistralForCausalLM"]);
        c["model_type"] = "mistral".into();
    });
    check_f16(&mistral, "llama", tmp.path());
    // Short original context so that the scaling changes most frequencies of this 16-wide head.
    let scaled = llama_variant(&tmp.path().join("llama3"), |c| {
        c["rope_parameters"] = serde_json::json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16});
    });
    let file = export(&scaled, &tmp.path().join("llama3.gguf"), ExportType::F16);
    let seen = llama_cpp(&file, &PROMPT, 0, "");
    assert_eq!(seen["tensors"]["rope_freqs.weight"]["type"], "F32");
    let diff = max_diff(&freezetune_logits(&scaled, &PROMPT), &seen["logits"]);
    assert!(diff <= 1e-3, "llama 3 rope scaling: logits differ by {diff}");
}

/// llama.cpp's per-tensor types of a file, by GGUF name.
fn types_of(seen: &serde_json::Value) -> std::collections::BTreeMap<String, String> {
    seen["tensors"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(n, t)| (n.clone(), t["type"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn q8_0_and_q4_k_m_load_and_generate_with_llama_cpp_s_own_mix() {
    let tmp = tempfile::tempdir().unwrap();
    // Rows of 256: whole k-quant blocks, so q4_k_m holds q4_K and q6_K tensors (narrower rows fall back).
    let model = tiny_model(&tmp.path().join("wide"), Family::Llama, 256);
    let ours = freezetune_logits(&model, &PROMPT);
    for (kind, ftype, bound) in [(ExportType::Q8_0, "q8_0", 1.05), (ExportType::Q4KM, "q4_k_m", 1.1)] {
        let file = export(&model, &tmp.path().join(format!("{ftype}.gguf")), kind);
        let seen = llama_cpp(&file, &PROMPT, 6, SAMPLE);
        assert_eq!(ids_of(&seen["greedy"]).len(), 6, "{ftype}: llama.cpp generates");
        // The same model quantized by llama.cpp's own quantizer from an f32 file: the same per-tensor types, the
        // same bytes for q8_0 and q4_K (FreezeTune's q4_K is llama.cpp's current search; q6_K is candle's, close
        // to llama.cpp's but not bit-equal), and logits as close to f32.
        let reference = tmp.path().join(format!("llama-cpp-{ftype}.gguf"));
        run_py(
            "write_gguf.py",
            &[model.to_str().unwrap(), reference.to_str().unwrap(), ftype],
        );
        let theirs = llama_cpp(&reference, &PROMPT, 0, "");
        assert_eq!(types_of(&seen), types_of(&theirs), "{ftype}: per-tensor types");
        for (name, t) in seen["tensors"].as_object().unwrap() {
            if matches!(t["type"].as_str(), Some("Q8_0" | "Q4_K")) {
                assert_eq!(t["sha256"], theirs["tensors"][name]["sha256"], "{ftype}: {name} bytes");
            }
        }
        let (d_ours, d_theirs) = (max_diff(&ours, &seen["logits"]), max_diff(&ours, &theirs["logits"]));
        println!("{ftype}: max |logit - f32 logit|: FreezeTune's file {d_ours:.3e}, llama.cpp's {d_theirs:.3e}");
        assert!(
            d_ours <= bound * d_theirs + 1e-4,
            "{ftype}: {d_ours} vs llama.cpp's own {d_theirs}"
        );
    }
}

/// Qwen3 MoE quantized: the same per-tensor types as llama.cpp's own quantizer picks from the f32 file (the router
/// kept f32, the stacked experts quantized), the same q8_0 bytes, and logits as close to FreezeTune's f32 ones.
#[test]
fn quantized_mixtures_of_experts_match_llama_cpp_s_own_quantizer() {
    let tmp = tempfile::tempdir().unwrap();
    let moe = ["qwen3moe", "gpt-oss", "llama", "olmoe", "glm4moe"];
    for (arch, model) in newer_family_models(tmp.path())
        .into_iter()
        .filter(|(a, _)| moe.contains(a))
    {
        check_quantized_against_llama_cpp(arch, &model, &tmp.path().join(arch));
    }
}

/// q8_0 and q4_k_m exports of `model` against llama.cpp's own quantizer run on its f32 export: the same per-tensor
/// types (gpt-oss's expert biases stay f32 in both), the same q8_0 bytes, the router f32, and logits as close to the
/// f32 model's as llama.cpp's file's.
fn check_quantized_against_llama_cpp(arch: &str, model: &Path, tmp: &Path) {
    std::fs::create_dir_all(tmp).unwrap();
    let f32_file = export(model, &tmp.join("f32.gguf"), ExportType::F32);
    let ours_f32 = freezetune_logits(model, &PROMPT);
    for (kind, ftype) in [(ExportType::Q8_0, "q8_0"), (ExportType::Q4KM, "q4_k_m")] {
        let seen = llama_cpp(&export(model, &tmp.join(format!("{ftype}.gguf")), kind), &PROMPT, 6, "");
        let reference = tmp.join(format!("llama-cpp-{ftype}.gguf"));
        run_py(
            "quantize_gguf.py",
            &[f32_file.to_str().unwrap(), reference.to_str().unwrap(), ftype],
        );
        let theirs = llama_cpp(&reference, &PROMPT, 0, "");
        let types = types_of(&seen);
        assert_eq!(types, types_of(&theirs), "{arch} {ftype}: per-tensor types");
        let routers: Vec<&String> = types.keys().filter(|n| n.ends_with("ffn_gate_inp.weight")).collect();
        assert!(!routers.is_empty(), "{arch} {ftype}: no router");
        for router in routers {
            assert_eq!(types[router], "F32", "{arch} {ftype}: the router {router}");
        }
        for (name, t) in seen["tensors"].as_object().unwrap() {
            if t["type"] == "Q8_0" {
                assert_eq!(
                    t["sha256"], theirs["tensors"][name]["sha256"],
                    "{arch} {ftype}: {name} bytes"
                );
            }
        }
        assert_eq!(ids_of(&seen["greedy"]).len(), 6, "{arch} {ftype}: llama.cpp generates");
        let (d_ours, d_theirs) = (
            max_diff(&ours_f32, &seen["logits"]),
            max_diff(&ours_f32, &theirs["logits"]),
        );
        println!("{arch} {ftype}: max |logit - f32 logit|: FreezeTune's file {d_ours:.3e}, llama.cpp's {d_theirs:.3e}");
        assert!(
            d_ours <= 1.1 * d_theirs + 1e-4,
            "{arch} {ftype}: {d_ours} vs llama.cpp's own {d_theirs}"
        );
    }
}

/// A byte-level tokenizer that splits text as OpenAI's o200k does (gpt-oss's tokenizer.json) goes out as llama.cpp's
/// `gpt-4o` pre-tokenizer, and llama.cpp then tokenizes text as the tokenizers library does (digits in groups of
/// three, so "1110" is "111" and "0": with this vocabulary's merges of "1 1" and "1 0", other ids than gpt-2's split
/// gives).
#[test]
fn an_o200k_split_goes_out_as_gpt_4o() {
    let tmp = tempfile::tempdir().unwrap();
    let model = family_variant(&tmp.path().join("gpt_oss"), "gpt_oss", |c| {
        c["rope_parameters"]["truncate"] = true.into()
    });
    let path = model.join("tokenizer.json");
    let mut tok: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let o200k = concat!(
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    );
    tok["pre_tokenizer"] = serde_json::json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": o200k}, "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]});
    std::fs::write(&path, tok.to_string()).unwrap();
    let file = export(&model, &tmp.path().join("o200k.gguf"), ExportType::F32);
    let text = "Room 1110, shelf 140: It's 7!";
    let seen = llama_cpp(&file, &PROMPT, 0, text);
    assert_eq!(seen["metadata"]["tokenizer.ggml.pre"], "gpt-4o");
    let ids = hf_ids(&model, text);
    assert_eq!(ids_of(&seen["text_ids"]), ids, "tokenization");
    // The split matters here: the same vocabulary under the plain byte-level split gives other ids.
    assert_ne!(ids, hf_ids(&fixture("llama"), text));
}
