//! SentencePiece-style tokenizers (Llama 2, Mistral, Gemma, Phi-3: a BPE with byte fallback and `▁` for spaces)
//! both ways: exported as llama.cpp's `llama` vocabulary (pieces, scores from merge ranks, token types), llama.cpp
//! tokenizes like the original; imported back, the rebuilt tokenizer.json tokenizes like the original.

mod common;

use common::*;
use freezetune_core::synth::Family;
use freezetune_gguf::{export_gguf, import_gguf, ExportOptions, ExportType, ImportDType, ImportOptions};
use serde_json::json;
use std::path::Path;

const MERGES: [(&str, &str); 14] = [
    ("▁", "t"),
    ("h", "e"),
    ("▁t", "he"),
    ("a", "t"),
    ("▁", "c"),
    ("▁c", "at"),
    ("▁", "s"),
    ("▁s", "at"),
    ("o", "n"),
    ("▁", "on"),
    ("▁", "m"),
    ("▁m", "at"),
    ("i", "s"),
    ("▁", "is"),
];

/// A Llama-2-style tokenizer.json: <unk> <s> </s>, the 256 byte tokens, letters and punctuation, merges.
fn write_spm_tokenizer(dir: &Path) {
    let mut vocab = serde_json::Map::new();
    let mut push = |t: String| {
        let id = vocab.len();
        vocab.entry(t).or_insert(json!(id));
    };
    for t in ["<unk>", "<s>", "</s>"] {
        push(t.into());
    }
    for b in 0..=255u8 {
        push(format!("<0x{b:02X}>"));
    }
    for c in "▁abcdefghijklmnopqrstuvwxyz.,?!'".chars() {
        push(c.to_string());
    }
    for (a, b) in MERGES {
        push(format!("{a}{b}"));
    }
    let special = |id: usize, t: &str| {
        json!({"id": id, "content": t, "single_word": false, "lstrip": false,
        "rstrip": false, "normalized": false, "special": true})
    };
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": null, "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": MERGES.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>()}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    let config = json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": true});
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
}

#[test]
fn sentencepiece_vocabularies_round_trip_through_llama_cpp() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(&tmp.path().join("spm"), Family::Llama, 64);
    std::fs::remove_file(model.join("chat_template.jinja")).unwrap();
    write_spm_tokenizer(&model);
    let text = "the cat sat on the mat. is the cat on it? Ünïcode ✓ falls back to bytes";
    let file = tmp.path().join("spm.gguf");
    let options = ExportOptions {
        kind: ExportType::F16,
        force: false,
        modelfile: false,
        name: None,
    };
    export_gguf(&model, &file, &options, &mut |_| true).unwrap();
    let seen = llama_cpp(&file, &PROMPT, 0, text);
    assert_eq!(seen["metadata"]["tokenizer.ggml.model"], "llama");
    let original = hf_ids(&model, text);
    assert!(
        original.iter().any(|&i| (3..259).contains(&i)),
        "the sample exercises byte fallback"
    );
    assert_eq!(
        ids_of(&seen["text_ids"]),
        original,
        "llama.cpp tokenizes like the original"
    );
    let dir = tmp.path().join("imported");
    import_gguf(
        &file,
        &dir,
        &ImportOptions {
            dtype: ImportDType::Auto,
            force: false,
        },
        &mut |_| true,
    )
    .unwrap();
    assert_eq!(
        hf_ids(&dir, text),
        original,
        "the rebuilt tokenizer.json tokenizes like the original"
    );
    let t = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    assert_eq!(t.decode(&original, true).unwrap(), text, "and decodes back");
    assert_eq!(t.encode(text, true).unwrap().get_ids()[0], 1, "add_bos_token survives");
}
