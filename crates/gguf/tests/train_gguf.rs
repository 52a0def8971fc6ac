//! Training a GGUF file where it lies: a q4_K_M file written by llama.cpp's own quantizer is mapped (view.rs),
//! read through its blocks with the same logits as its full f32 import, trains its top 2 layers with the frozen
//! ones held in the file's blocks, and exports back as the source file with only the trained tensors re-encoded:
//! the `gguf` package sees every frozen tensor byte-identical to the input's, and llama.cpp loads and runs it with
//! the trained model's logits.

mod common;

use common::*;
use freezetune_core::events::TrainEvent;
use freezetune_core::run_config::RunConfig;
use freezetune_core::synth::Family;
use freezetune_gguf::{
    export_patched, import_gguf, mapped_folder, ExportOptions, ExportType, ImportDType, ImportOptions,
};
use freezetune_train::DecoderConfig;
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

fn run_config(dir: &Path, model: &Path, freeze: &str) -> RunConfig {
    let data = dir.join("data.jsonl");
    let rows: Vec<String> = (0..16u32)
        .map(|r| {
            let ids: Vec<u32> = (0..32).map(|i| (r * 37 + (1 + r % 5) * i) % 256).collect();
            serde_json::json!({ "input_ids": ids, "labels": ids }).to_string()
        })
        .collect();
    std::fs::write(&data, rows.join("\n")).unwrap();
    let text = format!(
        "[model]\npath = {model:?}\n[freeze]\n{freeze}\n[data]\ntrain = {data:?}\nformat = \"tokenized\"\n\
         [training]\nbatch_size = 4\nshuffle = false\nlr_scheduler = \"constant\"\nlearning_rate = 1e-2\n\
         max_steps = 4\nsave_steps = 0\n[runtime]\ndevice = \"cpu\"\n[output]\ndir = {out:?}\n",
        out = dir.join("run"),
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, text).unwrap();
    RunConfig::read(&path).unwrap()
}

fn train(config: &RunConfig) -> Vec<TrainEvent> {
    let events = Mutex::new(Vec::new());
    freezetune_train::train(
        config,
        false,
        &|e| events.lock().unwrap().push(e),
        &AtomicBool::new(false),
    )
    .unwrap();
    events.into_inner().unwrap()
}

fn tensors(seen: &Value) -> &serde_json::Map<String, Value> {
    seen["tensors"].as_object().unwrap()
}

#[test]
fn a_q4_k_m_file_trains_its_top_layers_and_exports_its_frozen_blocks_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(&tmp.path().join("model"), Family::Llama, 256);
    let source = tmp.path().join("source-q4_k_m.gguf");
    run_py(
        "write_gguf.py",
        &[model.to_str().unwrap(), source.to_str().unwrap(), "q4_k_m"],
    );

    // Read through the map: the same logits as the file dequantized whole into f32 by import.
    let mapped = mapped_folder(&source, &tmp.path().join("maps")).unwrap();
    assert_eq!(
        mapped_folder(&source, &tmp.path().join("maps")).unwrap(),
        mapped,
        "the map is reused"
    );
    let imported = tmp.path().join("imported-f32");
    let options = ImportOptions {
        dtype: ImportDType::F32,
        force: false,
    };
    import_gguf(&source, &imported, &options, &mut |_| true).unwrap();
    let through_map = freezetune_logits(&mapped, &PROMPT);
    let diff = max_abs(&through_map, &freezetune_logits(&imported, &PROMPT));
    assert!(
        diff < 1e-4,
        "logits through the map differ from the f32 import's by {diff}"
    );

    // Top 2 of 3 layers train; the frozen matrices stay in the file's blocks.
    let config = run_config(tmp.path(), &mapped, "top = 2");
    let events = train(&config);
    let Some(TrainEvent::Started {
        quantized_tensors,
        frozen_weight_bytes,
        ..
    }) = events.first()
    else {
        panic!("no Started event")
    };
    // Layer 0's seven projections, the embeddings and lm_head.
    assert_eq!(*quantized_tensors, 9, "frozen tensors held in the file's blocks");
    let losses: Vec<f64> = events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step { loss, .. } => Some(*loss),
            _ => None,
        })
        .collect();
    assert!(losses.last() < losses.first(), "training lowers the loss: {losses:?}");
    println!("losses {losses:?}, frozen weights {frozen_weight_bytes} bytes");

    // Export: the source file with only the trained tensors re-encoded.
    let final_dir = config.output.dir.join("final");
    let out = tmp.path().join("trained.gguf");
    let options = ExportOptions {
        kind: ExportType::F16,
        force: false,
        modelfile: false,
        name: None,
    };
    // A read-only source (a shared model store) still exports: the copy is the program's own file.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o444)).unwrap();
    export_patched(&final_dir, &out, &options, &mut |_| true).unwrap();
    assert_eq!(
        std::fs::metadata(&out).unwrap().len(),
        std::fs::metadata(&source).unwrap().len()
    );
    let before = llama_cpp(&source, &PROMPT, 0, "");
    let after = llama_cpp(&out, &PROMPT, 6, "");
    assert_eq!(before["metadata"], after["metadata"], "the metadata is the source's");
    // llama.cpp runs the trained model: its logits follow final/'s (the trained layers re-encoded in q4_K/q6_K),
    // far closer to them than to the untrained file's.
    check_written_back(&before, &after, &final_dir, |name| {
        name.starts_with("blk.1.") || name.starts_with("blk.2.")
    });

    // A record that does not describe the file is refused before anything is written.
    let record_path = final_dir.join("gguf_source.json");
    let mut record: Value = serde_json::from_str(&std::fs::read_to_string(&record_path).unwrap()).unwrap();
    record["map"]["data_offset"] = Value::from(record["map"]["data_offset"].as_u64().unwrap() - 32);
    std::fs::write(&record_path, record.to_string()).unwrap();
    let refused = tmp.path().join("refused.gguf");
    let err = export_patched(&final_dir, &refused, &options, &mut |_| true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not describe this file"), "{err}");
    assert!(!refused.exists());
}

/// A mixture-of-experts GGUF file (q8_0, its experts stacked) trained where it lies, for Qwen3 MoE, Mixtral (llama.cpp's
/// llama with experts, its q/k rows permuted) and OLMoE: the map gives each expert's slice of a stacked tensor as its
/// own tensor, with the f32 import's logits; the top layer trains with the lower layers' experts held in the file's
/// blocks; the export writes the trained experts back into their slices, every frozen tensor byte-identical, and
/// llama.cpp runs it.
#[test]
fn a_mixture_of_experts_file_trains_its_top_layer_and_writes_its_experts_back() {
    let tmp = tempfile::tempdir().unwrap();
    let models = [
        ("qwen3moe", qwen3_moe_all_sparse(&tmp.path().join("qwen3moe"))),
        (
            "mixtral",
            family_variant(&tmp.path().join("mixtral"), "mixtral", |c| {
                c["sliding_window"] = Value::Null
            }),
        ),
        ("olmoe", olmoe_without_gqa(&tmp.path().join("olmoe"))),
        // GLM-4.5 with its dense first layer, shared MLP, router correction bias and a prediction layer the file
        // never holds.
        ("glm4moe", glm4_moe_as_released(&tmp.path().join("glm4moe"))),
    ];
    for (name, model) in models {
        trains_in_place(&model, &tmp.path().join(format!("{name}-run")));
    }
}

fn trains_in_place(model: &Path, tmp: &Path) {
    std::fs::create_dir_all(tmp).unwrap();
    let source = tmp.join("source-q8_0.gguf");
    let options = ExportOptions {
        kind: ExportType::Q8_0,
        force: false,
        modelfile: false,
        name: None,
    };
    freezetune_gguf::export_gguf(model, &source, &options, &mut |_| true).unwrap();
    let mapped = mapped_folder(&source, &tmp.join("maps")).unwrap();
    let imported = tmp.join("imported-f32");
    let import = ImportOptions {
        dtype: ImportDType::F32,
        force: false,
    };
    import_gguf(&source, &imported, &import, &mut |_| true).unwrap();
    let diff = max_abs(
        &freezetune_logits(&mapped, &PROMPT),
        &freezetune_logits(&imported, &PROMPT),
    );
    assert!(
        diff < 1e-4,
        "{}: logits through the map differ from the f32 import's by {diff}",
        model.display()
    );

    let config = run_config(tmp, &mapped, "top = 1");
    let events = train(&config);
    let Some(TrainEvent::Started { quantized_tensors, .. }) = events.first() else {
        panic!("no Started event")
    };
    // Every quantized tensor of the file below the top layer, each expert of a stacked one on its own.
    let decoder = DecoderConfig::read(model).unwrap();
    let layers = decoder.num_layers;
    let experts = decoder.layers.iter().find_map(|l| l.experts).map_or(1, |e| e.count);
    let source_tensors = llama_cpp(&source, &PROMPT, 0, "");
    let held: usize = tensors(&source_tensors)
        .iter()
        .filter(|(name, t)| t["type"] != "F32" && !name.starts_with(&format!("blk.{}.", layers - 1)))
        .map(|(name, _)| if name.contains("_exps.") { experts } else { 1 })
        .sum();
    assert_eq!(
        *quantized_tensors,
        held,
        "{}: frozen tensors held in the file's blocks",
        model.display()
    );

    let final_dir = config.output.dir.join("final");
    let out = tmp.join("trained.gguf");
    export_patched(&final_dir, &out, &options, &mut |_| true).unwrap();
    let (before, after) = (llama_cpp(&source, &PROMPT, 0, ""), llama_cpp(&out, &PROMPT, 6, ""));
    let top = format!("blk.{}.", layers - 1);
    // The router's correction bias is a buffer: it stays as it was in the trained layer too.
    let trained = |name: &str| name.starts_with(&top) && !name.contains("exp_probs_b");
    check_written_back(&before, &after, &final_dir, trained);
}

/// `after` (llama.cpp's reading of the exported file) against `before` (the source's): each tensor keeps its type,
/// the frozen ones their bytes and the `trained` ones not; llama.cpp generates from it, and its logits follow
/// `final/`'s, far closer to them than to the untrained file's.
fn check_written_back(before: &Value, after: &Value, final_dir: &Path, trained: impl Fn(&str) -> bool) {
    for (name, t) in tensors(after) {
        let was = &tensors(before)[name];
        assert_eq!(t["type"], was["type"], "{name}: type");
        match trained(name) {
            false => assert_eq!(t["sha256"], was["sha256"], "{name}: a frozen tensor's bytes"),
            true => assert_ne!(t["sha256"], was["sha256"], "{name}: a trained tensor"),
        }
    }
    assert_eq!(
        ids_of(&after["greedy"]).len(),
        6,
        "llama.cpp generates from the trained file"
    );
    let ours: Vec<Vec<f32>> = freezetune_logits(final_dir, &PROMPT);
    let theirs: Vec<Vec<f32>> = serde_json::from_value(after["logits"].clone()).unwrap();
    let untrained: Vec<Vec<f32>> = serde_json::from_value(before["logits"].clone()).unwrap();
    let (to_trained, moved) = (max_abs(&ours, &theirs), max_abs(&ours, &untrained));
    println!("llama.cpp's logits vs final/'s: {to_trained:.3e}; training moved them by {moved:.3e}");
    assert!(to_trained < moved / 5.0, "{to_trained} vs {moved}");
}
