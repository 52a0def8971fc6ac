//! The tokenizer both ways: a Hugging Face `tokenizer.json` (+ `tokenizer_config.json`) as llama.cpp's
//! `tokenizer.ggml.*` metadata, and that metadata rebuilt as a `tokenizer.json` the `tokenizers` library loads.
//!
//! Two kinds, as llama.cpp has them: byte-level BPE (`gpt2`: tokens in their byte-level spelling, merges, and a
//! pre-tokenizer named by its regex) and SentencePiece (`llama`: pieces with `▁`, scores, token types, byte
//! tokens `<0xNN>`). A Hugging Face BPE with byte fallback is SentencePiece in llama.cpp's eyes: its merge ranks
//! become scores (rank r scores -r, so llama.cpp's highest-score-first merging follows the same order), and a
//! SentencePiece vocabulary is rebuilt as a byte-fallback BPE whose merges are ordered by score, as transformers'
//! own SentencePiece converter does.

use crate::error::{GgufError, Result};
use crate::format::Meta;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::Path;

/// llama.cpp's token types (`llama_token_type`).
pub const NORMAL: i32 = 1;
pub const UNKNOWN: i32 = 2;
pub const CONTROL: i32 = 3;
pub const USER_DEFINED: i32 = 4;
pub const UNUSED: i32 = 5;
pub const BYTE: i32 = 6;

/// Scores of SentencePiece tokens no merge produces (rebuilt merges skip them).
const NO_MERGE: f32 = -1e9;

const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// OpenAI's o200k split (gpt-oss, and llama.cpp's `gpt-4o`, which Llama 4 shares).
const GPT4O_REGEX: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
);

/// What export learned from the tokenizer files.
pub struct TokenizerMeta {
    pub entries: Vec<(String, Meta)>,
    pub warnings: Vec<String>,
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| GgufError::BadInput {
            path: path.into(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(GgufError::io(path, e)),
    }
}

/// The chat template a model folder carries (chat_template.jinja, else tokenizer_config.json's).
pub fn chat_template(model_dir: &Path) -> Result<Option<String>> {
    let jinja = model_dir.join("chat_template.jinja");
    if jinja.is_file() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|e| GgufError::io(&jinja, e));
    }
    let config = read_json(&model_dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
    Ok(match &config["chat_template"] {
        Value::String(s) => Some(s.clone()),
        Value::Array(named) => named
            .iter()
            .find(|t| t["name"] == "default")
            .or(named.first())
            .and_then(|t| t["template"].as_str().map(str::to_string)),
        _ => None,
    })
}

/// The tokenizer metadata of a model folder, for a vocabulary of `vocab_size` rows.
pub fn tokenizer_meta(model_dir: &Path, vocab_size: usize) -> Result<TokenizerMeta> {
    let path = model_dir.join("tokenizer.json");
    let tok = read_json(&path)?.ok_or_else(|| GgufError::BadInput {
        path: path.clone(),
        reason: "no tokenizer.json: a GGUF file carries its tokenizer, and FreezeTune builds it from tokenizer.json \
                 (copy the base model's tokenizer files into the folder)"
            .into(),
    })?;
    let config = read_json(&model_dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
    let model_config = read_json(&model_dir.join("config.json"))?.unwrap_or(Value::Null);
    let mut warnings = Vec::new();
    let byte_level = mentions(&tok["pre_tokenizer"], "ByteLevel") || mentions(&tok["decoder"], "ByteLevel");
    let (vocab, scores) = vocab_of(&tok["model"], &path)?;
    let table = token_table(&tok, &vocab, vocab_size, byte_level, &path)?;
    let mut entries = model_entries(&tok, &table, scores, byte_level, &path, &mut warnings)?;
    entries.extend(special_entries(&tok, &config, &model_config, &table.ids));
    if let Some(template) = chat_template(model_dir)? {
        entries.push(("tokenizer.chat_template".into(), Meta::Str(template)));
    }
    Ok(TokenizerMeta { entries, warnings })
}

/// Every row's token text and type (`[PADn]` / unused where the tokenizer has none), and text -> id.
struct TokenTable {
    tokens: Vec<String>,
    types: Vec<i32>,
    ids: HashMap<String, u32>,
}

fn token_table(
    tok: &Value,
    vocab: &HashMap<String, u32>,
    vocab_size: usize,
    byte_level: bool,
    path: &Path,
) -> Result<TokenTable> {
    let mut t = TokenTable {
        tokens: (0..vocab_size).map(|i| format!("[PAD{i}]")).collect(),
        types: vec![UNUSED; vocab_size],
        ids: vocab.clone(),
    };
    for (text, &id) in vocab {
        let ty = if !byte_level && is_byte_token(text) {
            BYTE
        } else {
            NORMAL
        };
        put(&mut t.tokens, &mut t.types, id, text, ty, path)?;
    }
    if let Some(unk) = tok["model"]["unk_token"].as_str().and_then(|u| vocab.get(u)) {
        t.types[*unk as usize] = UNKNOWN;
    }
    for added in tok["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(text)) = (added["id"].as_u64(), added["content"].as_str()) else {
            continue;
        };
        let ty = match (t.types.get(id as usize), added["special"].as_bool().unwrap_or(false)) {
            (Some(&UNKNOWN), _) => UNKNOWN,
            (_, true) => CONTROL,
            (_, false) => USER_DEFINED,
        };
        put(&mut t.tokens, &mut t.types, id as u32, text, ty, path)?;
        t.ids.insert(text.to_string(), id as u32);
    }
    Ok(t)
}

/// The vocabulary in llama.cpp's form for its kind: `gpt2` (tokens, types, merges, pre-tokenizer) or `llama`
/// (pieces, scores, types, space prefix).
fn model_entries(
    tok: &Value,
    table: &TokenTable,
    scores: Option<Vec<f32>>,
    byte_level: bool,
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<Vec<(String, Meta)>> {
    let model = &tok["model"];
    let kind = model["type"].as_str().unwrap_or_default();
    let str_entry = |k: &str, v: &str| (k.to_string(), Meta::Str(v.into()));
    let tokens = ("tokenizer.ggml.tokens".to_string(), Meta::Strs(table.tokens.clone()));
    let types = ("tokenizer.ggml.token_type".to_string(), Meta::I32s(table.types.clone()));
    match (kind, byte_level, model["byte_fallback"].as_bool().unwrap_or(false)) {
        ("BPE", true, _) => {
            let pre = gpt2_pre(&tok["pre_tokenizer"]);
            if pre == "default" {
                warnings.push(format!(
                    "the pre-tokenizer of {} is not one llama.cpp names (gpt-2, llama-bpe, qwen2, gpt-4o, smollm); wrote \
                     \"default\", so llama.cpp may split text differently",
                    path.display()
                ));
            }
            Ok(vec![
                str_entry("tokenizer.ggml.model", "gpt2"),
                str_entry("tokenizer.ggml.pre", pre),
                tokens,
                types,
                ("tokenizer.ggml.merges".into(), Meta::Strs(merges_of(model))),
            ])
        }
        ("BPE", false, true) | ("Unigram", false, _) => {
            let scores = scores.unwrap_or_else(|| merge_scores(model, &table.tokens));
            let mut full = vec![NO_MERGE; table.tokens.len()];
            for (slot, s) in full.iter_mut().zip(scores) {
                *slot = s;
            }
            Ok(vec![
                str_entry("tokenizer.ggml.model", "llama"),
                str_entry("tokenizer.ggml.pre", "default"),
                tokens,
                ("tokenizer.ggml.scores".into(), Meta::F32s(full)),
                types,
                (
                    "tokenizer.ggml.add_space_prefix".into(),
                    Meta::Bool(adds_space_prefix(tok)),
                ),
            ])
        }
        _ => {
            Err(GgufError::BadInput {
                path: path.into(),
                reason: format!(
                "a {kind} tokenizer{} cannot be written to GGUF yet (byte-level BPE, byte-fallback BPE and Unigram \
                 can)",
                if kind == "BPE" { " without byte-level or byte-fallback" } else { "" }
            ),
            })
        }
    }
}

/// Special token ids (tokenizer_config.json's tokens, else config.json's ids) and whether BOS / EOS are added.
fn special_entries(
    tok: &Value,
    config: &Value,
    model_config: &Value,
    ids: &HashMap<String, u32>,
) -> Vec<(String, Meta)> {
    let mut entries = Vec::new();
    for (key, name) in [
        ("bos", "bos_token"),
        ("eos", "eos_token"),
        ("unknown", "unk_token"),
        ("padding", "pad_token"),
    ] {
        let from_config = special_text(&config[name]).and_then(|t| ids.get(&t).copied());
        if let Some(id) = from_config.or_else(|| first_id(&model_config[format!("{name}_id")])) {
            entries.push((format!("tokenizer.ggml.{key}_token_id"), Meta::U32(id)));
        }
    }
    let (bos, eos) = template_specials(&tok["post_processor"]);
    let add_bos = config["add_bos_token"].as_bool().unwrap_or(bos);
    let add_eos = config["add_eos_token"].as_bool().unwrap_or(eos);
    entries.push(("tokenizer.ggml.add_bos_token".into(), Meta::Bool(add_bos)));
    entries.push(("tokenizer.ggml.add_eos_token".into(), Meta::Bool(add_eos)));
    entries
}

fn put(tokens: &mut [String], types: &mut [i32], id: u32, text: &str, ty: i32, path: &Path) -> Result<()> {
    let rows = tokens.len();
    let slot = tokens.get_mut(id as usize).ok_or_else(|| GgufError::BadInput {
        path: path.into(),
        reason: format!("token {text:?} has id {id}, beyond the model's {rows} embedding rows"),
    })?;
    *slot = text.to_string();
    types[id as usize] = ty;
    Ok(())
}

/// Token -> id, and the scores of a Unigram vocabulary.
type Vocab = (HashMap<String, u32>, Option<Vec<f32>>);

fn vocab_of(model: &Value, path: &Path) -> Result<Vocab> {
    match &model["vocab"] {
        Value::Object(map) => Ok((
            map.iter()
                .filter_map(|(t, id)| Some((t.clone(), id.as_u64()? as u32)))
                .collect(),
            None,
        )),
        Value::Array(pieces) => {
            let vocab = pieces
                .iter()
                .enumerate()
                .filter_map(|(i, p)| Some((p[0].as_str()?.to_string(), i as u32)))
                .collect();
            let scores = pieces.iter().map(|p| p[1].as_f64().unwrap_or(0.0) as f32).collect();
            Ok((vocab, Some(scores)))
        }
        _ => Err(GgufError::BadInput {
            path: path.into(),
            reason: "tokenizer.json has no model.vocab".into(),
        }),
    }
}

fn mentions(v: &Value, ty: &str) -> bool {
    match v {
        Value::Object(o) => o.get("type").and_then(Value::as_str) == Some(ty) || o.values().any(|x| mentions(x, ty)),
        Value::Array(a) => a.iter().any(|x| mentions(x, ty)),
        _ => false,
    }
}

fn regexes(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            if o.get("type").and_then(Value::as_str) == Some("Split") {
                if let Some(r) = o["pattern"]["Regex"].as_str() {
                    out.push(r.to_string());
                }
            }
            o.values().for_each(|x| regexes(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| regexes(x, out)),
        _ => {}
    }
}

/// llama.cpp's name for a byte-level pre-tokenizer, recognised by its split regex.
fn gpt2_pre(pre: &Value) -> &'static str {
    let mut found = Vec::new();
    regexes(pre, &mut found);
    match found.as_slice() {
        [r] if r == LLAMA3_REGEX => "llama-bpe",
        [r] if r == QWEN2_REGEX => "qwen2",
        [r] if r == GPT4O_REGEX => "gpt-4o",
        [] if mentions(pre, "Digits") => "smollm",
        [] => "gpt-2",
        _ => "default",
    }
}

/// The pre-tokenizer of a rebuilt byte-level tokenizer.json, from llama.cpp's name for it.
fn gpt2_pre_tokenizer(pre: &str) -> (Value, bool) {
    let byte_level =
        |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
    let split = |r: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false},
            byte_level(false)]})
    };
    match pre {
        "llama-bpe" | "llama3" | "llama-v3" => (split(LLAMA3_REGEX), true),
        "qwen2" | "deepseek-r1-qwen" => (split(QWEN2_REGEX), false),
        "gpt-4o" | "llama4" => (split(GPT4O_REGEX), false),
        "smollm" => (
            json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            false,
        ),
        _ => (byte_level(true), false),
    }
}

fn merges_of(model: &Value) -> Vec<String> {
    model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            Value::String(s) => Some(s.clone()),
            Value::Array(pair) => Some(format!("{} {}", pair.first()?.as_str()?, pair.get(1)?.as_str()?)),
            _ => None,
        })
        .collect()
}

/// SentencePiece scores of a byte-fallback BPE: the token merge rank r produces scores -r.
fn merge_scores(model: &Value, tokens: &[String]) -> Vec<f32> {
    let mut rank: HashMap<String, usize> = HashMap::new();
    for (r, m) in merges_of(model).iter().enumerate() {
        if let Some((a, b)) = m.split_once(' ') {
            rank.entry(format!("{a}{b}")).or_insert(r);
        }
    }
    tokens
        .iter()
        .map(|t| rank.get(t).map_or(NO_MERGE, |&r| -(r as f32)))
        .collect()
}

fn is_byte_token(t: &str) -> bool {
    t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') && u8::from_str_radix(&t[3..5], 16).is_ok()
}

fn adds_space_prefix(tok: &Value) -> bool {
    let prepend = |v: &Value| mentions(v, "Prepend");
    let metaspace = tok["pre_tokenizer"]["type"] == "Metaspace"
        && tok["pre_tokenizer"]["prepend_scheme"]
            .as_str()
            .is_none_or(|s| s != "never")
        && tok["pre_tokenizer"]["add_prefix_space"].as_bool().unwrap_or(true);
    prepend(&tok["normalizer"]) || metaspace
}

fn special_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn first_id(v: &Value) -> Option<u32> {
    match v {
        Value::Number(n) => n.as_u64().map(|n| n as u32),
        Value::Array(a) => a.first().and_then(Value::as_u64).map(|n| n as u32),
        _ => None,
    }
}

/// Whether a TemplateProcessing post-processor puts a special token first (bos) or last (eos) of one sequence.
fn template_specials(post: &Value) -> (bool, bool) {
    let single = match post["type"].as_str() {
        Some("TemplateProcessing") => post["single"].as_array().cloned().unwrap_or_default(),
        Some("Sequence") => {
            return post["processors"]
                .as_array()
                .into_iter()
                .flatten()
                .map(template_specials)
                .fold((false, false), |a, b| (a.0 || b.0, a.1 || b.1))
        }
        _ => return (false, false),
    };
    let special = |p: Option<&Value>| p.is_some_and(|p| p.get("SpecialToken").is_some());
    (special(single.first()), single.len() > 1 && special(single.last()))
}

/// A GGUF file's tokenizer metadata, read back.
pub struct GgufVocab {
    pub model: String,
    pub pre: String,
    pub tokens: Vec<String>,
    pub types: Vec<i32>,
    pub scores: Vec<f32>,
    pub merges: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
}

/// The tokenizer.json of a GGUF vocabulary.
pub fn rebuild_tokenizer_json(v: &GgufVocab) -> Result<Value> {
    let added: Vec<Value> = v
        .tokens
        .iter()
        .zip(&v.types)
        .enumerate()
        .filter(|(_, (_, ty))| matches!(**ty, CONTROL | USER_DEFINED | UNKNOWN))
        .map(|(id, (t, ty))| {
            json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": *ty == USER_DEFINED, "special": *ty != USER_DEFINED})
        })
        .collect();
    let vocab: Map<String, Value> = v
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let post = post_processor(v);
    let tok = match v.model.as_str() {
        "gpt2" => {
            let (pre, ignore_merges) = gpt2_pre_tokenizer(&v.pre);
            let merges: Vec<Value> = v
                .merges
                .iter()
                .filter_map(|m| m.split_once(' ').map(|(a, b)| json!([a, b])))
                .collect();
            json!({
                "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
                "normalizer": null, "pre_tokenizer": pre,
                "post_processor": post.unwrap_or(json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})),
                "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                          "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                          "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges}
            })
        }
        "llama" => {
            let normalizer = if v.add_space_prefix {
                json!({"type": "Sequence", "normalizers": [
                    {"type": "Prepend", "prepend": "▁"},
                    {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]})
            } else {
                json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"})
            };
            let mut decoders = vec![
                json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if v.add_space_prefix {
                decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            json!({
                "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
                "normalizer": normalizer, "pre_tokenizer": null, "post_processor": post,
                "decoder": {"type": "Sequence", "decoders": decoders},
                "model": {"type": "BPE", "dropout": null,
                          "unk_token": v.unk.map(|u| v.tokens[u as usize].clone()),
                          "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                          "byte_fallback": true, "ignore_merges": false, "vocab": vocab,
                          "merges": spm_merges(v)}
            })
        }
        other => {
            return Err(GgufError::Unsupported(format!(
                "the GGUF tokenizer model {other:?} cannot be rebuilt (gpt2 and llama can)"
            )))
        }
    };
    Ok(tok)
}

/// Merges of a SentencePiece vocabulary, as transformers' converter derives them: every split of a piece into
/// two pieces, pieces by score (highest first), splits within a piece by the ids of their halves.
fn spm_merges(v: &GgufVocab) -> Vec<Value> {
    let ids: HashMap<&str, usize> = v.tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let mut merges: Vec<(f32, usize, usize, usize)> = Vec::new();
    for (id, piece) in v.tokens.iter().enumerate() {
        let score = v.scores.get(id).copied().unwrap_or(0.0);
        if v.types[id] != NORMAL || score <= NO_MERGE {
            continue;
        }
        for (cut, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(cut);
            if let (Some(&a), Some(&b)) = (ids.get(l), ids.get(r)) {
                merges.push((score, id, a, b));
            }
        }
    }
    merges.sort_by(|x, y| {
        y.0.total_cmp(&x.0)
            .then(x.1.cmp(&y.1))
            .then(x.2.cmp(&y.2))
            .then(x.3.cmp(&y.3))
    });
    merges
        .into_iter()
        .map(|(_, _, a, b)| json!([v.tokens[a], v.tokens[b]]))
        .collect()
}

fn post_processor(v: &GgufVocab) -> Option<Value> {
    let bos = v.bos.filter(|_| v.add_bos).map(|b| v.tokens[b as usize].clone());
    let eos = v.eos.filter(|_| v.add_eos).map(|e| v.tokens[e as usize].clone());
    if bos.is_none() && eos.is_none() {
        return None;
    }
    let special = |t: &String| json!({"SpecialToken": {"id": t, "type_id": 0}});
    let seq = |id: &str| json!({"Sequence": {"id": id, "type_id": 0}});
    let mut single = Vec::new();
    let mut pair = Vec::new();
    bos.iter().for_each(|b| single.push(special(b)));
    single.push(seq("A"));
    eos.iter().for_each(|e| single.push(special(e)));
    pair.extend(single.iter().cloned());
    bos.iter().for_each(|b| pair.push(special(b)));
    pair.push(seq("B"));
    eos.iter().for_each(|e| pair.push(special(e)));
    let mut specials = Map::new();
    for (t, id) in [(bos, v.bos), (eos, v.eos)] {
        if let (Some(t), Some(id)) = (t, id) {
            specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
        }
    }
    Some(json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials}))
}

/// tokenizer_config.json for a rebuilt tokenizer.
pub fn tokenizer_config(v: &GgufVocab, chat_template: Option<&str>, max_len: Option<u64>) -> Value {
    let name = |id: Option<u32>| id.map(|i| v.tokens[i as usize].clone());
    let mut c = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name(v.bos), "eos_token": name(v.eos), "unk_token": name(v.unk), "pad_token": name(v.pad),
        "add_bos_token": v.add_bos, "add_eos_token": v.add_eos,
        "clean_up_tokenization_spaces": false,
    });
    if let Some(t) = chat_template {
        c["chat_template"] = json!(t);
    }
    if let Some(n) = max_len {
        c["model_max_length"] = json!(n);
    }
    c
}
