//! Import of GGUF files written independently, by llama.cpp's `gguf` package (and llama.cpp's quantizer for the
//! k-quant mixes), from the reference checkpoints: every tensor back in the Hugging Face layout (exact for f32,
//! the f16/bf16 rounding of the original for those, within each type's quantization error otherwise), the
//! rebuilt tokenizer encoding like the original, and the folder opening, planning, training and generating like
//! any other model. Export then import reproduces the tensors exactly for f16 and bf16.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use freezetune_core::synth::Family;
use freezetune_gguf::{export_gguf, import_gguf, ExportOptions, ExportType, ImportDType, ImportOptions};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn tensors(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
}

fn import(file: &Path, dest: &Path, dtype: ImportDType) -> PathBuf {
    import_gguf(file, dest, &ImportOptions { dtype, force: false }, &mut |_| true).unwrap();
    dest.to_path_buf()
}

fn import_error(file: &Path, dest: &Path) -> freezetune_gguf::GgufError {
    let options = ImportOptions {
        dtype: ImportDType::Auto,
        force: false,
    };
    import_gguf(file, dest, &options, &mut |_| true).unwrap_err()
}

/// ||a - b|| / ||a|| over a tensor.
fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let num = (&a - &b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
        .sqrt();
    let den = a.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap().sqrt();
    num / den.max(1e-30)
}

fn rounded(t: &Tensor, dtype: DType) -> Tensor {
    t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap()
}

fn check_tokenizer(original: &Path, imported: &Path) {
    for text in [
        SAMPLE,
        "  leading spaces\tand tabs\n\nnew lines",
        "<|im_start|>user\nhi<|im_end|>",
        "ünïcødé ✓",
    ] {
        assert_eq!(hf_ids(imported, text), hf_ids(original, text), "tokenizer: {text:?}");
    }
}

#[test]
fn imports_what_the_gguf_package_writes_for_every_type() {
    let tmp = tempfile::tempdir().unwrap();
    let narrow = fixture("llama");
    let wide = tiny_model(&tmp.path().join("wide"), Family::Llama, 256);
    // (type, source model, largest relative error per tensor). Direct types on the reference llama; the k-quant
    // mixes need rows of 256, so they run on a wider llama with the same tokenizer.
    let cases = [
        ("f32", &narrow, 0.0),
        ("f16", &narrow, 0.0),
        ("bf16", &narrow, 0.0),
        ("q8_0", &narrow, 0.01),
        ("q5_1", &narrow, 0.04),
        ("q5_0", &narrow, 0.05),
        ("q4_1", &narrow, 0.08),
        ("q4_0", &narrow, 0.1),
        ("q6_k", &wide, 0.02),
        ("q5_k_m", &wide, 0.05),
        ("q4_k_m", &wide, 0.1),
        ("q3_k_m", &wide, 0.2),
        ("q2_k", &wide, 0.4),
    ];
    let mut seen_types = std::collections::BTreeSet::new();
    for (ty, model, bound) in cases {
        let file = tmp.path().join(format!("{ty}.gguf"));
        let written = run_py("write_gguf.py", &[model.to_str().unwrap(), file.to_str().unwrap(), ty]);
        seen_types.extend(written["types"].as_object().unwrap().keys().cloned());
        let dir = import(&file, &tmp.path().join(format!("imported-{ty}")), ImportDType::F32);
        let (orig, back) = (tensors(model), tensors(&dir));
        assert_eq!(orig.len(), back.len(), "{ty}: tensor count");
        let mut worst = 0f64;
        for (name, a) in &orig {
            let b = back.get(name).unwrap_or_else(|| panic!("{ty}: {name} missing"));
            assert_eq!(a.dims(), b.dims(), "{ty}: {name} shape");
            let expect = match ty {
                "f16" if a.rank() >= 2 => rounded(a, DType::F16),
                "bf16" if a.rank() >= 2 => rounded(a, DType::BF16),
                _ => a.clone(),
            };
            let err = relative_error(&expect, b);
            worst = worst.max(err);
            assert!(err <= bound, "{ty}: {name} relative error {err:.4} > {bound}");
        }
        println!("{ty}: worst relative tensor error {worst:.2e} ({written})");
        check_tokenizer(model, &dir);
    }
    for t in [
        "F32", "F16", "BF16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K",
    ] {
        assert!(seen_types.contains(t), "no file held a {t} tensor: {seen_types:?}");
    }
}

#[test]
fn export_then_import_reproduces_f16_and_bf16_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    for (family, name) in [
        (Family::Llama, "llama"),
        (Family::Qwen3, "qwen3"),
        (Family::Phi3, "phi3"),
        (Family::Gemma, "gemma"),
    ] {
        let model = tiny_model(&tmp.path().join(name), family, 64);
        let orig = tensors(&model);
        for (kind, dtype, import_as) in [
            (ExportType::F16, DType::F16, ImportDType::F16),
            (ExportType::Bf16, DType::BF16, ImportDType::Bf16),
        ] {
            let file = tmp.path().join(format!("{name}-{}.gguf", kind.name()));
            let options = ExportOptions {
                kind,
                force: false,
                modelfile: false,
                name: None,
            };
            export_gguf(&model, &file, &options, &mut |_| true).unwrap();
            let dir = import(&file, &tmp.path().join(format!("{name}-{}", kind.name())), import_as);
            let back = tensors(&dir);
            for (n, a) in &orig {
                // Norms are f32 in the file: their round trip is exact only up to the folder's dtype.
                let want = a.to_dtype(dtype).unwrap();
                let got = &back[n];
                assert_eq!(got.dtype(), dtype, "{name}: {n}");
                let same = want
                    .to_dtype(DType::F32)
                    .unwrap()
                    .eq(&got.to_dtype(DType::F32).unwrap())
                    .unwrap();
                let all = same
                    .to_dtype(DType::U32)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<u32>()
                    .unwrap();
                assert_eq!(
                    all as usize,
                    a.elem_count(),
                    "{name} {}: {n} not reproduced exactly",
                    kind.name()
                );
            }
            assert_eq!(
                std::fs::read_to_string(dir.join("chat_template.jinja")).unwrap(),
                std::fs::read_to_string(model.join("chat_template.jinja")).unwrap()
            );
            check_tokenizer(&model, &dir);
        }
    }
}

#[test]
fn newer_families_export_then_import_to_the_same_model() {
    // gemma2, gemma3, smollm3, granite, olmo2, lfm2, qwen3moe and olmoe as llama.cpp runs them (Mixtral as
    // llama.cpp's llama with experts, back as Mixtral; gpt-oss exports only): the imported folder's config
    // describes the same layers (windows, ropes, scales, softcaps, multipliers, experts; qwen3moe's stacked experts
    // split back into one linear each), and FreezeTune computes the same logits on it.
    let tmp = tempfile::tempdir().unwrap();
    for (arch, model) in newer_family_models(tmp.path()) {
        let file = tmp.path().join(format!("{arch}.gguf"));
        let options = ExportOptions {
            kind: ExportType::F32,
            force: false,
            modelfile: false,
            name: None,
        };
        export_gguf(&model, &file, &options, &mut |_| true).unwrap();
        if arch == "gpt-oss" {
            // Exported, not imported yet: the file is refused by its architecture's name, nothing written.
            let dest = tmp.path().join("gpt-oss-imported");
            let err = import_error(&file, &dest).to_string();
            assert!(err.contains("gpt-oss"), "{err}");
            assert!(!dest.exists());
            continue;
        }
        let dir = import(&file, &tmp.path().join(format!("{arch}-imported")), ImportDType::F32);
        let (a, b) = (
            freezetune_train::DecoderConfig::read(&model).unwrap(),
            freezetune_train::DecoderConfig::read(&dir).unwrap(),
        );
        assert_eq!(a.layers, b.layers, "{arch}: layer descriptions");
        assert_eq!(a.ropes, b.ropes, "{arch}: ropes");
        assert_eq!(
            (
                a.embedding_multiplier,
                a.residual_multiplier,
                a.logits_scaling,
                a.final_softcap
            ),
            (
                b.embedding_multiplier,
                b.residual_multiplier,
                b.logits_scaling,
                b.final_softcap
            ),
            "{arch}: multipliers"
        );
        let diff = max_abs(&freezetune_logits(&model, &PROMPT), &freezetune_logits(&dir, &PROMPT));
        assert!(diff < 1e-4, "{arch}: the imported model's logits differ by {diff}");
    }
}

#[test]
fn an_imported_model_plans_trains_generates_and_exports_again() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("ref.gguf");
    run_py(
        "write_gguf.py",
        &[fixture("qwen2").to_str().unwrap(), file.to_str().unwrap(), "q8_0"],
    );
    let model = import(&file, &tmp.path().join("model"), ImportDType::Auto);
    let layout = freezetune_core::ModelLayout::inspect(&model).unwrap();
    assert_eq!(layout.num_layers, 4);
    let data = tmp.path().join("data.jsonl");
    std::fs::write(
        &data,
        "{\"text\": \"the cat sat on the mat\"}\n{\"text\": \"what is 3 plus 4? it is 7\"}\n",
    )
    .unwrap();
    let run = tmp.path().join("run.toml");
    std::fs::write(
        &run,
        format!(
            "[model]\npath = {model:?}\n[freeze]\nlayers = \"2-3\"\n[data]\ntrain = {data:?}\nformat = \"text\"\n\
             [training]\nmax_steps = 3\nlearning_rate = 1e-2\n[runtime]\ndevice = \"cpu\"\n[output]\ndir = {out:?}\n",
            out = tmp.path().join("runs/imported")
        ),
    )
    .unwrap();
    let config = freezetune_core::run_config::RunConfig::read(&run).unwrap();
    let outcome = freezetune_train::train(&config, false, &|_| {}, &std::sync::atomic::AtomicBool::new(false)).unwrap();
    assert_eq!(outcome.steps, 3);
    let trained = outcome.final_dir.unwrap();
    // Layers 2-3 trained, the rest kept, and the result generates.
    let (before, after) = (tensors(&model), tensors(&trained));
    let q = |l: usize| format!("model.layers.{l}.self_attn.q_proj.weight");
    assert!(relative_error(&before[&q(2)], &after[&q(2)]) > 0.0, "layer 2 trained");
    assert_eq!(relative_error(&before[&q(0)], &after[&q(0)]), 0.0, "layer 0 frozen");
    freezetune_greedy(&trained, &PROMPT, 4);
    let again = tmp.path().join("again.gguf");
    let options = ExportOptions {
        kind: ExportType::F16,
        force: false,
        modelfile: true,
        name: None,
    };
    let report = export_gguf(&outcome.run_dir, &again, &options, &mut |_| true).unwrap();
    assert_eq!(report.architecture, "qwen2");
    let seen = llama_cpp(&again, &PROMPT, 4, SAMPLE);
    let diff = max_diff(&freezetune_logits(&trained, &PROMPT), &seen["logits"]);
    assert!(diff <= 1e-3, "the trained import, exported: logits differ by {diff}");
    assert!(std::fs::read_to_string(tmp.path().join("Modelfile"))
        .unwrap()
        .contains("FROM ./again.gguf"));
}

#[test]
fn refuses_what_it_cannot_read_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("f16.gguf");
    run_py(
        "write_gguf.py",
        &[fixture("llama").to_str().unwrap(), file.to_str().unwrap(), "f16"],
    );
    // Another architecture: same bytes, general.architecture renamed (same length keeps the layout).
    let bytes = std::fs::read(&file).unwrap();
    let at = bytes.windows(5).position(|w| w == b"llama").unwrap();
    let mut other = bytes.clone();
    other[at..at + 5].copy_from_slice(b"bloom");
    let bloom = tmp.path().join("bloom.gguf");
    std::fs::write(&bloom, other).unwrap();
    let err = import_error(&bloom, &tmp.path().join("x")).to_string();
    assert!(err.contains("\"bloom\"") && err.contains("cannot be imported"), "{err}");
    // Not a GGUF file at all.
    let junk = tmp.path().join("junk.gguf");
    std::fs::write(&junk, b"not a gguf").unwrap();
    let err = import_error(&junk, &tmp.path().join("y")).to_string();
    assert!(err.contains("junk.gguf") && err.contains("not a GGUF file"), "{err}");
    // An existing folder is never replaced without force.
    std::fs::create_dir_all(tmp.path().join("taken")).unwrap();
    let err = import_error(&file, &tmp.path().join("taken"));
    assert_eq!(err.kind(), "exists");
    // Export refuses an architecture it does not know before writing anything.
    let opt = tmp.path().join("opt");
    let mut spec = freezetune_core::synth::SynthSpec::tiny(Family::Opt, 2);
    spec.shards = 1;
    freezetune_core::synth::write_checkpoint(&opt, &spec).unwrap();
    let out = tmp.path().join("opt.gguf");
    let options = ExportOptions {
        kind: ExportType::F16,
        force: false,
        modelfile: false,
        name: None,
    };
    let err = export_gguf(&opt, &out, &options, &mut |_| true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("opt"), "{err}");
    assert!(!out.exists());
}

/// GLM-4.5 as llama.cpp's converter writes it: one more block, the multi-token-prediction layer (its decoder tensors
/// and `nextn.*`), counted in `block_count` and named by `nextn_predict_layers` (the file rewritten by llama.cpp's
/// own `gguf` package). llama.cpp runs it as FreezeTune runs the model; import gives back the decoder with the
/// prediction layer under transformers' names, left out of the layout as transformers leaves it out, and export
/// leaves it behind again.
#[test]
fn a_glm_file_with_its_prediction_layer_imports_with_it_and_runs_without_it() {
    let tmp = tempfile::tempdir().unwrap();
    let model = glm4_moe_as_released(&tmp.path().join("glm"));
    let options = ExportOptions {
        kind: ExportType::F32,
        force: false,
        modelfile: false,
        name: None,
    };
    let plain = tmp.path().join("plain.gguf");
    export_gguf(&model, &plain, &options, &mut |_| true).unwrap();
    let file = tmp.path().join("nextn.gguf");
    let added = run_py("add_nextn.py", &[plain.to_str().unwrap(), file.to_str().unwrap()]);
    assert_eq!(added["layer"], 3);
    let ours = freezetune_logits(&model, &PROMPT);
    let seen = llama_cpp(&file, &PROMPT, 0, "");
    assert_eq!(seen["metadata"]["glm4moe.block_count"], 4);
    let diff = max_diff(&ours, &seen["logits"]);
    assert!(
        diff < 1e-3,
        "llama.cpp's logits with the prediction layer differ by {diff}"
    );

    let dir = import(&file, &tmp.path().join("imported"), ImportDType::F32);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        (
            config["num_hidden_layers"].as_u64(),
            config["num_nextn_predict_layers"].as_u64()
        ),
        (Some(3), Some(1))
    );
    let layout = freezetune_core::ModelLayout::inspect(&dir).unwrap();
    assert_eq!(layout.layers.len(), 3);
    let unplanned: Vec<&str> = layout.unplanned.iter().map(|t| t.name.as_str()).collect();
    for name in [
        "model.layers.3.eh_proj.weight",
        "model.layers.3.shared_head.head.weight",
        "model.layers.3.self_attn.q_proj.weight",
    ] {
        assert!(unplanned.contains(&name), "{unplanned:?}");
    }
    let imported = tensors(&dir);
    let eh = imported["model.layers.3.eh_proj.weight"].clone();
    assert_eq!(eh.dims(), [64, 128]);
    assert_eq!(eh.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0], 0.01);
    let diff = max_abs(&ours, &freezetune_logits(&dir, &PROMPT));
    assert!(diff < 1e-4, "the imported model's logits differ by {diff}");

    let again = tmp.path().join("again.gguf");
    export_gguf(&dir, &again, &options, &mut |_| true).unwrap();
    assert_eq!(llama_cpp(&again, &PROMPT, 0, "")["metadata"]["glm4moe.block_count"], 3);
}
