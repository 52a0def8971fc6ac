//! A GGUF decoder as a complete Hugging Face folder: config.json from llama.cpp's keys, every tensor dequantized
//! (f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_K..q6_K) into `model.safetensors` in the chosen dtype, with
//! export's changes undone (llama's rope rows, gemma's `1 + weight` norms), and the tokenizer rebuilt from the
//! GGUF vocabulary with its chat template. The folder is assembled beside its destination and renamed into place.

use crate::error::{GgufError, Result};
use crate::names::{
    expert_name, from_gguf_arch, hf_class, offset_norm, order_key, reorder_rows, rope_heads, rope_unpermutation,
    stacked_experts_of, to_hf, EXAONE4_DEFAULT_WINDOW, EXAONE4_FULL_EVERY, EXAONE4_SLIDING_LAYERS, IMPORTABLE,
};
use crate::quant::le_bytes;
use crate::tokenizer::{rebuild_tokenizer_json, tokenizer_config, GgufVocab};
use crate::Progress;
use candle_core::quantized::gguf_file::{Content, Value as GValue};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use freezetune_train::{Architecture, DecoderConfig};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The dtype of the written safetensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportDType {
    /// f32/f16/bf16 files keep their precision; quantized ones become f16 (holds q8_0 and smaller exactly
    /// enough to train from, at half of f32's size).
    Auto,
    F32,
    F16,
    Bf16,
}

impl ImportDType {
    pub fn parse(s: &str) -> Option<ImportDType> {
        Some(match s {
            "auto" => ImportDType::Auto,
            "f32" | "float32" => ImportDType::F32,
            "f16" | "float16" => ImportDType::F16,
            "bf16" | "bfloat16" => ImportDType::Bf16,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub dtype: ImportDType,
    /// Replace an existing folder (it is moved aside and removed only once the new one is in place).
    pub force: bool,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ImportReport {
    pub path: PathBuf,
    pub architecture: String,
    pub dtype: String,
    pub tensors: usize,
    /// How many tensors of the file had each GGML type.
    pub source_types: BTreeMap<String, usize>,
    pub tokenizer: String,
    pub warnings: Vec<String>,
}

pub(crate) struct Gguf {
    pub path: PathBuf,
    pub content: Content,
    /// Read one tensor at a time, as the import reaches it.
    file: std::cell::RefCell<std::fs::File>,
}

impl Gguf {
    pub(crate) fn open(path: &Path) -> Result<Gguf> {
        // The whole header and tensor table checked against the file's size before candle's reader walks it.
        crate::validate::check_file(path).map_err(|reason| GgufError::BadInput {
            path: path.into(),
            reason: format!("not a GGUF file FreezeTune can read safely: {reason}"),
        })?;
        let mut file = std::fs::File::open(path).map_err(|e| GgufError::io(path, e))?;
        let content = Content::read(&mut file).map_err(|e| GgufError::BadInput {
            path: path.into(),
            reason: format!(
                "not a GGUF file FreezeTune can read ({e}); it reads f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0 \
                 and q2_K to q6_K tensors"
            ),
        })?;
        Ok(Gguf {
            path: path.into(),
            content,
            file: std::cell::RefCell::new(file),
        })
    }

    /// Tensor `name` as the file stores it.
    fn read(&self, name: &str) -> Result<candle_core::quantized::QTensor> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| self.bad(format!("no tensor {name}")))?;
        info.read(
            &mut *self.file.borrow_mut(),
            self.content.tensor_data_offset,
            &Device::Cpu,
        )
        .map_err(GgufError::candle(format!(
            "reading {name} from {}",
            self.path.display()
        )))
    }

    fn get(&self, key: &str) -> Option<&GValue> {
        self.content.metadata.get(key)
    }

    fn bad(&self, reason: String) -> GgufError {
        GgufError::BadInput {
            path: self.path.clone(),
            reason,
        }
    }

    fn u32(&self, key: &str) -> Result<u32> {
        self.opt_u32(key)?
            .ok_or_else(|| self.bad(format!("the file has no {key}")))
    }

    fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .to_u32()
                .or_else(|_| v.to_u64().map(|x| x as u32))
                .or_else(|_| v.to_i32().map(|x| x as u32))
                .map(Some)
                .map_err(|e| self.bad(format!("{key}: {e}"))),
        }
    }

    fn opt_f32(&self, key: &str) -> Option<f32> {
        self.get(key)
            .and_then(|v| v.to_f32().ok().or_else(|| v.to_f64().ok().map(|x| x as f32)))
    }

    fn opt_str(&self, key: &str) -> Option<String> {
        self.get(key).and_then(|v| v.to_string().ok().cloned())
    }

    fn opt_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(|v| v.to_bool().ok())
    }

    fn array(&self, key: &str) -> Vec<GValue> {
        self.get(key).and_then(|v| v.to_vec().ok().cloned()).unwrap_or_default()
    }
}

pub fn import_gguf(
    file: &Path,
    dest: &Path,
    options: &ImportOptions,
    progress: &mut dyn FnMut(&Progress) -> bool,
) -> Result<ImportReport> {
    let m = read_model(file, options.dtype, &|| {
        if dest.exists() && !options.force {
            return Err(GgufError::Exists(dest.into()));
        }
        Ok(())
    })?;
    let tmp = crate::hidden_sibling(dest, "partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| GgufError::io(&tmp, e))?;
    let written = write_weights(&tmp, &m.g, &m.tensors, &m.target, progress)
        .and_then(|()| write_files(&tmp, &m.g, &m.config, &m.vocab))
        .and_then(|()| place_dir(&tmp, dest, options.force));
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written?;
    Ok(ImportReport {
        path: dest.into(),
        architecture: m.arch_name,
        dtype: st_dtype(m.target.dtype).to_lowercase(),
        tensors: m.tensors.len(),
        source_types: crate::count_types(m.g.content.tensor_infos.values().map(|i| i.ggml_dtype)),
        tokenizer: m.vocab.model.clone(),
        warnings: m.warnings,
    })
}

/// A GGUF decoder read and checked: its config.json, vocabulary and tensors in the Hugging Face layout.
pub(crate) struct GgufModel {
    pub g: Gguf,
    pub arch_name: String,
    pub vocab: GgufVocab,
    pub config: Value,
    pub warnings: Vec<String>,
    pub target: Target,
    pub tensors: Vec<Planned>,
}

/// Reads the file's model (`before_reading` runs once the architecture is known to be supported, before the
/// vocabulary and tensors are read).
pub(crate) fn read_model(
    file: &Path,
    dtype: ImportDType,
    before_reading: &dyn Fn() -> Result<()>,
) -> Result<GgufModel> {
    let g = Gguf::open(file)?;
    let arch_name = g.opt_str("general.architecture").unwrap_or_default();
    let arch = from_gguf_arch(&arch_name).ok_or_else(|| {
        GgufError::Unsupported(format!(
            "{}: the GGUF architecture {arch_name:?} cannot be imported (FreezeTune trains {})",
            file.display(),
            IMPORTABLE.join(", ")
        ))
    })?;
    // llama.cpp's llama with experts is Mixtral (its converter writes Mixtral so).
    let experts = g.opt_u32(&format!("{arch_name}.expert_count"))?.unwrap_or(0);
    let arch = match arch {
        Architecture::Llama if experts > 0 => Architecture::Mixtral,
        other => other,
    };
    before_reading()?;
    let dtype = choose_dtype(dtype, &g);
    let vocab = read_vocab(&g)?;
    let (config, warnings) = config_json(&g, arch, &arch_name, dtype, &vocab)?;
    let target = Target {
        arch,
        heads: config["num_attention_heads"].as_u64().unwrap_or(1) as usize,
        kv_heads: config["num_key_value_heads"].as_u64().unwrap_or(1) as usize,
        dtype,
    };
    let tensors = plan_tensors(&g, arch, &arch_name)?;
    check_model(&g, &config, &tensors, &vocab)?;
    Ok(GgufModel {
        g,
        arch_name,
        vocab,
        config,
        warnings,
        target,
        tensors,
    })
}

/// What the Hugging Face layout of the tensors depends on.
pub(crate) struct Target {
    pub arch: Architecture,
    pub heads: usize,
    pub kv_heads: usize,
    pub dtype: DType,
}

/// One tensor to import: its GGUF name, its Hugging Face name, its shape; for one expert of llama.cpp's stacked
/// experts (`ffn_*_exps`), which expert of the GGUF tensor it is.
pub(crate) struct Planned {
    pub gguf: String,
    pub hf: String,
    pub shape: Vec<usize>,
    pub expert: Option<usize>,
}

/// Every tensor in llama.cpp's converter order; `rope_freqs` is read into config.json instead.
fn plan_tensors(g: &Gguf, arch: Architecture, arch_name: &str) -> Result<Vec<Planned>> {
    let mut names: Vec<&String> = g
        .content
        .tensor_infos
        .keys()
        .filter(|n| *n != "rope_freqs.weight")
        .collect();
    names.sort_by_key(|n| order_key(n));
    let mut plan = Vec::with_capacity(names.len());
    for name in names {
        let expert_of = |e| stacked_experts_of(name).and_then(|(l, p)| expert_name(arch, l, e, p));
        if expert_of(0).is_some() {
            // Experts first: each expert's matrix is one slice (experts × rows × columns).
            let dims = g.content.tensor_infos[name].shape.dims().to_vec();
            let [experts, rows, cols] = dims[..] else {
                return Err(g.bad(format!(
                    "tensor {name} has shape {dims:?}; stacked experts have three dimensions"
                )));
            };
            plan.extend((0..experts).map(|e| Planned {
                gguf: name.clone(),
                hf: expert_of(e).expect("checked above"),
                shape: vec![rows, cols],
                expert: Some(e),
            }));
            continue;
        }
        plan.push(one_tensor(g, name, arch, arch_name)?);
    }
    Ok(plan)
}

/// A GGUF tensor that is one Hugging Face tensor.
fn one_tensor(g: &Gguf, name: &str, arch: Architecture, arch_name: &str) -> Result<Planned> {
    let hf = to_hf(name, arch).ok_or_else(|| {
        g.bad(format!(
            "tensor {name} has no place in FreezeTune's {arch_name} decoder"
        ))
    })?;
    let mut shape = g.content.tensor_infos[name].shape.dims().to_vec();
    // llama.cpp's LFM2 convolution {kernel, hidden} is transformers' Conv1d weight (hidden, 1, kernel).
    if let (Architecture::Lfm2, &[h, k]) = (arch, shape.as_slice()) {
        if name.ends_with("shortconv.conv.weight") {
            shape = vec![h, 1, k];
        }
    }
    Ok(Planned {
        gguf: name.to_string(),
        hf,
        shape,
        expert: None,
    })
}

/// `model.safetensors`, synced: the header, then each tensor as it is dequantized.
fn write_weights(
    dir: &Path,
    g: &Gguf,
    tensors: &[Planned],
    target: &Target,
    progress: &mut dyn FnMut(&Progress) -> bool,
) -> Result<()> {
    let path = dir.join("model.safetensors");
    let io = |e| GgufError::io(&path, e);
    let mut w = BufWriter::with_capacity(8 << 20, std::fs::File::create(&path).map_err(io)?);
    write_safetensors_header(&mut w, tensors, target.dtype).map_err(io)?;
    let total = tensors.len();
    // The last stacked expert tensor dequantized: its experts are consecutive in the plan.
    let mut stacked: Option<(String, Tensor)> = None;
    for (i, t) in tensors.iter().enumerate() {
        if !progress(&Progress {
            done: i,
            total,
            tensor: t.gguf.clone(),
        }) {
            return Err(GgufError::Stopped);
        }
        let bytes = hf_bytes(&mut stacked, g, t, target)?;
        w.write_all(&bytes).map_err(io)?;
    }
    let out = w.into_inner().map_err(|e| GgufError::io(&path, e.into_error()))?;
    out.sync_all().map_err(io)?;
    progress(&Progress {
        done: total,
        total,
        tensor: String::new(),
    });
    Ok(())
}

/// config.json, the rebuilt tokenizer, its config, the chat template and generation_config.json.
pub(crate) fn write_files(dir: &Path, g: &Gguf, config: &Value, vocab: &GgufVocab) -> Result<()> {
    write_json(&dir.join("config.json"), config)?;
    let template = g.opt_str("tokenizer.chat_template");
    write_json(&dir.join("tokenizer.json"), &rebuild_tokenizer_json(vocab)?)?;
    let ctx = config["max_position_embeddings"].as_u64();
    write_json(
        &dir.join("tokenizer_config.json"),
        &tokenizer_config(vocab, template.as_deref(), ctx),
    )?;
    if let Some(t) = &template {
        let p = dir.join("chat_template.jinja");
        std::fs::write(&p, t).map_err(|e| GgufError::io(&p, e))?;
    }
    let generation = json!({"bos_token_id": vocab.bos, "eos_token_id": vocab.eos, "pad_token_id": vocab.pad});
    write_json(&dir.join("generation_config.json"), &generation)
}

pub(crate) fn place_dir(tmp: &Path, dest: &Path, force: bool) -> Result<()> {
    let aside = crate::hidden_sibling(dest, "old");
    let replaced = force && dest.exists();
    if replaced {
        std::fs::rename(dest, &aside).map_err(|e| GgufError::io(dest, e))?;
    } else if dest.exists() {
        return Err(GgufError::Exists(dest.into()));
    }
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| GgufError::io(parent, e))?;
    }
    if let Err(e) = std::fs::rename(tmp, dest) {
        if replaced {
            let _ = std::fs::rename(&aside, dest);
        }
        return Err(GgufError::io(dest, e));
    }
    if replaced {
        let _ = std::fs::remove_dir_all(&aside);
    }
    Ok(())
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("json");
    std::fs::write(path, text).map_err(|e| GgufError::io(path, e))
}

fn choose_dtype(want: ImportDType, g: &Gguf) -> DType {
    match want {
        ImportDType::F32 => DType::F32,
        ImportDType::F16 => DType::F16,
        ImportDType::Bf16 => DType::BF16,
        ImportDType::Auto => {
            let matrices: Vec<GgmlDType> = g
                .content
                .tensor_infos
                .values()
                .filter(|i| i.shape.rank() >= 2)
                .map(|i| i.ggml_dtype)
                .collect();
            if matrices.iter().all(|d| *d == GgmlDType::F32) {
                DType::F32
            } else if matrices.iter().all(|d| *d == GgmlDType::BF16) {
                DType::BF16
            } else {
                DType::F16
            }
        }
    }
}

fn st_dtype(d: DType) -> &'static str {
    match d {
        DType::F32 => "F32",
        DType::BF16 => "BF16",
        _ => "F16",
    }
}

fn write_safetensors_header(w: &mut impl Write, tensors: &[Planned], dtype: DType) -> std::io::Result<()> {
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        json!({"format": "pt", "written_by": "freezetune import-gguf"}),
    );
    let mut offset = 0usize;
    for Planned { hf, shape, .. } in tensors {
        let bytes = shape.iter().product::<usize>() * dtype.size_in_bytes();
        header.insert(
            hf.clone(),
            json!({"dtype": st_dtype(dtype), "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut text = serde_json::to_string(&Value::Object(header)).expect("json");
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    w.write_all(&(text.len() as u64).to_le_bytes())?;
    w.write_all(text.as_bytes())
}

/// A tensor's bytes in the Hugging Face layout and the target dtype. One expert of a stacked tensor is sliced from
/// `stacked`, which keeps the whole tensor dequantized for its other experts.
fn hf_bytes(stacked: &mut Option<(String, Tensor)>, g: &Gguf, t: &Planned, target: &Target) -> Result<Vec<u8>> {
    let err = || GgufError::candle(format!("converting {}", t.gguf));
    let dense = match t.expert {
        None => g.read(&t.gguf)?.dequantize(&Device::Cpu).map_err(err())?,
        Some(e) => {
            if stacked.as_ref().is_none_or(|(name, _)| *name != t.gguf) {
                let whole = g.read(&t.gguf)?.dequantize(&Device::Cpu).map_err(err())?;
                *stacked = Some((t.gguf.clone(), whole));
            }
            let (_, whole) = stacked.as_ref().expect("just read");
            whole.get(e).map_err(err())?
        }
    };
    layout_bytes(dense, t, target).map_err(err())
}

fn layout_bytes(dense: Tensor, t: &Planned, target: &Target) -> candle_core::Result<Vec<u8>> {
    let mut v = dense.reshape(t.shape.as_slice())?;
    if let Some(h) = rope_heads(&t.hf, target.arch, target.heads, target.kv_heads) {
        v = reorder_rows(&v, rope_unpermutation(t.shape[0], h))?;
    }
    if offset_norm(&t.hf, target.arch) {
        v = (v - 1.0)?;
    }
    le_bytes(&v.to_dtype(target.dtype)?)
}

/// config.json's keys and the GGUF metadata they are read from.
const GGUF_KEYS: [(&str, &str); 6] = [
    ("hidden_size", "embedding_length"),
    ("intermediate_size", "feed_forward_length"),
    ("num_hidden_layers", "block_count"),
    ("num_attention_heads", "attention.head_count"),
    ("num_key_value_heads", "attention.head_count_kv"),
    ("head_dim", "attention.key_length"),
];

/// The model the file describes, checked before anything is written: its config as FreezeTune's decoder reads it
/// (positive, divisible, bounded sizes), every tensor the decoder needs present with the shape that config implies
/// and none left over, and a vocabulary no larger than the embedding matrix.
fn check_model(g: &Gguf, config: &Value, tensors: &[Planned], vocab: &GgufVocab) -> Result<()> {
    let model_type = config["model_type"].as_str().unwrap_or_default();
    let arch = g.opt_str("general.architecture").unwrap_or_default();
    let c = DecoderConfig::from_json(config, model_type).map_err(|reason| {
        // The decoder names config.json's keys; the user's file has GGUF's.
        let keys: Vec<String> = GGUF_KEYS
            .iter()
            .filter(|(hf, _)| reason.contains(hf))
            .map(|(_, key)| format!("{arch}.{key}"))
            .collect();
        let from = match keys.is_empty() {
            true => String::new(),
            false => format!(" (from {})", keys.join(", ")),
        };
        g.bad(format!("the model its metadata describes is not sound: {reason}{from}"))
    })?;
    let mut expected: BTreeMap<String, Vec<usize>> = c.tensor_shapes().into_iter().collect();
    let model = freezetune_core::config::ModelConfig::from_value(config.clone()).map_err(|reason| g.bad(reason))?;
    // The multi-token-prediction layers are carried through, not run: only the decoder's tensors are checked.
    for t in tensors.iter().filter(|t| !model.is_prediction_layer(&t.hf)) {
        let want = expected.remove(&t.hf).ok_or_else(|| {
            g.bad(format!(
                "tensor {} ({}) is not part of the {}-layer model its metadata describes",
                t.gguf, t.hf, c.num_layers
            ))
        })?;
        if t.shape != want {
            return Err(g.bad(format!(
                "tensor {} has shape {:?}, but the metadata implies {want:?} for {}",
                t.gguf, t.shape, t.hf
            )));
        }
    }
    if let Some(missing) = expected.keys().next() {
        return Err(g.bad(format!(
            "the file lacks {missing} (and {} more tensors) that its metadata's model needs",
            expected.len() - 1
        )));
    }
    if vocab.tokens.len() > c.vocab_size {
        return Err(g.bad(format!(
            "tokenizer.ggml.tokens lists {} tokens, more than the {} rows of token_embd.weight",
            vocab.tokens.len(),
            c.vocab_size
        )));
    }
    Ok(())
}

fn read_vocab(g: &Gguf) -> Result<GgufVocab> {
    let model = g.opt_str("tokenizer.ggml.model").ok_or_else(|| {
        g.bad("the file carries no tokenizer (tokenizer.ggml.model); FreezeTune needs one to train".into())
    })?;
    let tokens: Vec<String> = g
        .array("tokenizer.ggml.tokens")
        .iter()
        .filter_map(|v| v.to_string().ok().cloned())
        .collect();
    let n = tokens.len();
    if n == 0 || n != g.array("tokenizer.ggml.tokens").len() {
        return Err(g.bad("tokenizer.ggml.tokens must be a non-empty list of strings".into()));
    }
    // Parallel arrays must be as long as the token list (or absent): a shorter one would shift every token's type
    // or score onto another token.
    let parallel = |key: &str| -> Result<Vec<GValue>> {
        let values = g.array(key);
        if !values.is_empty() && values.len() != n {
            return Err(g.bad(format!(
                "{key} has {} entries for {n} tokens; it must have one per token",
                values.len()
            )));
        }
        Ok(values)
    };
    let types: Vec<i32> = match parallel("tokenizer.ggml.token_type")?
        .iter()
        .map(|v| v.to_i32().ok())
        .collect::<Option<Vec<_>>>()
    {
        Some(t) if !t.is_empty() => t,
        Some(_) => vec![crate::tokenizer::NORMAL; n],
        None => return Err(g.bad("tokenizer.ggml.token_type must hold i32 values".into())),
    };
    let scores = parallel("tokenizer.ggml.scores")?
        .iter()
        .map(|v| v.to_f32().ok())
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| g.bad("tokenizer.ggml.scores must hold f32 values".into()))?;
    let merges = g
        .array("tokenizer.ggml.merges")
        .iter()
        .filter_map(|v| v.to_string().ok().cloned())
        .collect();
    let id = |k: &str| -> Result<Option<u32>> {
        Ok(g.opt_u32(&format!("tokenizer.ggml.{k}_token_id"))?
            .filter(|&i| (i as usize) < n))
    };
    Ok(GgufVocab {
        pre: g.opt_str("tokenizer.ggml.pre").unwrap_or_else(|| "default".into()),
        bos: id("bos")?,
        eos: id("eos")?,
        unk: id("unknown")?,
        pad: id("padding")?,
        add_bos: g.opt_bool("tokenizer.ggml.add_bos_token").unwrap_or(model == "llama"),
        add_eos: g.opt_bool("tokenizer.ggml.add_eos_token").unwrap_or(false),
        add_space_prefix: g.opt_bool("tokenizer.ggml.add_space_prefix").unwrap_or(true),
        model,
        tokens,
        types,
        scores,
        merges,
    })
}

fn config_json(g: &Gguf, arch: Architecture, a: &str, dtype: DType, vocab: &GgufVocab) -> Result<(Value, Vec<String>)> {
    let k = |s: &str| format!("{a}.{s}");
    let hidden = g.u32(&k("embedding_length"))? as usize;
    let heads = g.u32(&k("attention.head_count"))? as usize;
    // LFM2 gives a count per layer, 0 for its convolution layers.
    let kv_per_layer = kv_heads_per_layer(g, &k("attention.head_count_kv"));
    let kv_heads = match &kv_per_layer {
        Some(counts) => counts.iter().copied().max().unwrap_or(heads as u32) as usize,
        None => g.opt_u32(&k("attention.head_count_kv"))?.map_or(heads, |v| v as usize),
    };
    let head_dim = g
        .opt_u32(&k("attention.key_length"))?
        .map_or(hidden / heads.max(1), |v| v as usize);
    let embd = &g
        .content
        .tensor_infos
        .get("token_embd.weight")
        .ok_or_else(|| g.bad("no token_embd.weight".into()))?;
    let vocab_size = embd.shape.dims()[0];
    let tied = !g.content.tensor_infos.contains_key("output.weight");
    let (class, model_type) = hf_class(arch);
    let theta = g.opt_f32(&k("rope.freq_base")).unwrap_or(10000.0) as f64;
    let mut warnings = Vec::new();
    let mut c = json!({
        "architectures": [class],
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": g.u32(&k("feed_forward_length"))?,
        "num_hidden_layers": g.u32(&k("block_count"))?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": vocab_size,
        "rms_norm_eps": g.opt_f32(&k("attention.layer_norm_rms_epsilon")).unwrap_or(1e-6) as f64,
        "rope_theta": round_theta(theta),
        "max_position_embeddings": g.opt_u32(&k("context_length"))?.unwrap_or(4096),
        "tie_word_embeddings": tied,
        "bos_token_id": vocab.bos,
        "eos_token_id": vocab.eos,
        "pad_token_id": vocab.pad,
        "dtype": match dtype { DType::F32 => "float32", DType::BF16 => "bfloat16", _ => "float16" },
        "use_cache": true,
    });
    match arch {
        Architecture::Gemma | Architecture::Gemma2 | Architecture::Gemma3 => {
            c["hidden_activation"] = json!("gelu_pytorch_tanh")
        }
        _ => c["hidden_act"] = json!("silu"),
    }
    if matches!(arch, Architecture::Llama | Architecture::Granite) {
        c["attention_bias"] = json!(g.content.tensor_infos.contains_key("blk.0.attn_q.bias"));
        c["mlp_bias"] = json!(false);
    }
    newer_family_keys(g, arch, a, &mut c)?;
    if arch == Architecture::Lfm2 {
        lfm2_keys(g, a, kv_per_layer.as_deref(), &mut c)?;
    }
    if arch == Architecture::Qwen3Moe {
        // llama.cpp's qwen3moe gives every layer experts and always renormalises a token's top-k weights.
        c["num_experts"] = json!(g.u32(&k("expert_count"))?);
        c["num_experts_per_tok"] = json!(g.u32(&k("expert_used_count"))?);
        c["moe_intermediate_size"] = json!(g.u32(&k("expert_feed_forward_length"))?);
        c["norm_topk_prob"] = json!(true);
        c["decoder_sparse_step"] = json!(1);
        c["mlp_only_layers"] = json!([]);
    }
    if arch == Architecture::Glm4Moe {
        glm4_moe_keys(g, a, &mut c)?;
    }
    if arch == Architecture::Ernie4_5 {
        ernie4_5_keys(g, &mut c)?;
    }
    if arch == Architecture::Exaone4 {
        exaone4_keys(g, a, &mut c)?;
    }
    if arch == Architecture::Olmoe {
        // llama.cpp's olmoe: experts of `feed_forward_length` on every layer, top-k weights never renormalised.
        c["num_experts"] = json!(g.u32(&k("expert_count"))?);
        c["num_experts_per_tok"] = json!(g.u32(&k("expert_used_count"))?);
        c["norm_topk_prob"] = json!(false);
    }
    if arch == Architecture::Mixtral {
        // llama.cpp's llama with experts: renormalised top-k on every layer, no sliding window.
        c["num_local_experts"] = json!(g.u32(&k("expert_count"))?);
        c["num_experts_per_tok"] = json!(g.u32(&k("expert_used_count"))?);
        c["sliding_window"] = Value::Null;
    }
    if arch == Architecture::Phi3 {
        if let Some(w) = g.opt_u32(&k("attention.sliding_window"))?.filter(|&w| w > 0) {
            c["sliding_window"] = json!(w);
        }
    }
    if let Some(factors) = rope_factors(g)? {
        let scaling = llama3_scaling(&factors, head_dim, theta).ok_or_else(|| {
            g.bad(
                "rope_freqs.weight holds rope factors that are not Llama 3's scaling; FreezeTune cannot train \
                   with them yet"
                    .into(),
            )
        })?;
        c["rope_scaling"] = scaling;
        warnings.push("Llama 3 rope scaling recovered from rope_freqs.weight".into());
    }
    Ok((c, warnings))
}

/// llama.cpp's glm4moe as transformers' config states it: `block_count` counts the multi-token-prediction layers
/// too; the dense first layers, the shared MLP's width in experts, sigmoid routing over one group with the file's
/// renormalisation and scale; q/k norms and q/k/v biases where the file has them; partial rotary from
/// `rope.dimension_count`.
fn glm4_moe_keys(g: &Gguf, a: &str, c: &mut Value) -> Result<()> {
    let k = |s: &str| format!("{a}.{s}");
    match g.opt_u32(&k("expert_gating_func"))? {
        None | Some(2) => {}
        Some(other) => {
            return Err(g.bad(format!(
                "{} is {other}; GLM-4.5 routes by sigmoid scores (2), the only routing FreezeTune's glm4_moe runs",
                k("expert_gating_func")
            )))
        }
    }
    let blocks = g.u32(&k("block_count"))?;
    let nextn = g.opt_u32(&k("nextn_predict_layers"))?.unwrap_or(0);
    if nextn >= blocks {
        return Err(g.bad(format!(
            "{} ({nextn}) leaves no decoder layer of {blocks}",
            k("nextn_predict_layers")
        )));
    }
    let head_dim = c["head_dim"].as_u64().unwrap_or(1).max(1);
    let rotary = g.opt_u32(&k("rope.dimension_count"))?.map_or(head_dim, u64::from);
    let has = |name: &str| g.content.tensor_infos.contains_key(name);
    let dense_lead = g.opt_u32(&k("leading_dense_block_count"))?.unwrap_or(0);
    c["num_hidden_layers"] = json!(blocks - nextn);
    c["num_nextn_predict_layers"] = json!(nextn);
    c["n_routed_experts"] = json!(g.u32(&k("expert_count"))?);
    c["num_experts_per_tok"] = json!(g.u32(&k("expert_used_count"))?);
    c["moe_intermediate_size"] = json!(g.u32(&k("expert_feed_forward_length"))?);
    c["n_shared_experts"] = json!(g.opt_u32(&k("expert_shared_count"))?.unwrap_or(0));
    c["first_k_dense_replace"] = json!(dense_lead);
    // Required, as llama.cpp's glm4moe requires it.
    let scale = g
        .opt_f32(&k("expert_weights_scale"))
        .ok_or_else(|| g.bad(format!("{} is missing or not a number", k("expert_weights_scale"))))?;
    c["routed_scaling_factor"] = json!(shortest(scale));
    c["norm_topk_prob"] = json!(g.opt_bool(&k("expert_weights_norm")).unwrap_or(false));
    c["n_group"] = json!(1);
    c["topk_group"] = json!(1);
    c["partial_rotary_factor"] = json!(rotary as f64 / head_dim as f64);
    c["use_qk_norm"] = json!(has("blk.0.attn_q_norm.weight"));
    c["attention_bias"] = json!(has("blk.0.attn_q.bias"));
    Ok(())
}

/// ERNIE 4.5's `use_bias` puts biases on the MLP too, which llama.cpp's ernie4_5 never has: a file with attention
/// biases describes no ERNIE 4.5 transformers runs.
fn ernie4_5_keys(g: &Gguf, c: &mut Value) -> Result<()> {
    let biased = g
        .content
        .tensor_infos
        .keys()
        .find(|n| n.starts_with("blk.") && n.contains(".attn_") && n.ends_with(".bias"));
    if let Some(name) = biased {
        return Err(g.bad(format!(
            "{name}: an ernie4_5 file with attention biases but none on the MLP is no ERNIE 4.5 transformers runs \
             (its `use_bias` covers both)"
        )));
    }
    c["use_bias"] = json!(false);
    Ok(())
}

/// llama.cpp's exaone4 slides only the 64-layer model (names.rs: its window, every 4th layer full and without rope);
/// every other model attends in full with rope on every layer.
fn exaone4_keys(g: &Gguf, a: &str, c: &mut Value) -> Result<()> {
    let layers = c["num_hidden_layers"].as_u64().unwrap_or(0) as usize;
    if layers == EXAONE4_SLIDING_LAYERS {
        let window = g.opt_u32(&format!("{a}.attention.sliding_window"))?;
        c["sliding_window"] = json!(window.unwrap_or(EXAONE4_DEFAULT_WINDOW));
        c["sliding_window_pattern"] = json!(EXAONE4_FULL_EVERY);
    } else {
        c["sliding_window"] = Value::Null;
        c["layer_types"] = json!(vec!["full_attention"; layers]);
    }
    Ok(())
}

/// The keys of the families whose layer patterns llama.cpp hard-codes: written back as transformers' config
/// states them (the patterns export checked, the scales and softcaps the file holds).
fn newer_family_keys(g: &Gguf, arch: Architecture, a: &str, c: &mut Value) -> Result<()> {
    let k = |s: &str| format!("{a}.{s}");
    let layers = c["num_hidden_layers"].as_u64().unwrap_or(0) as usize;
    let (hidden, heads, head_dim) = (
        c["hidden_size"].as_u64().unwrap_or(1),
        c["num_attention_heads"].as_u64().unwrap_or(1).max(1),
        c["head_dim"].as_u64().unwrap_or(1),
    );
    let f = |key: &str, default: f32| shortest(g.opt_f32(&k(key)).unwrap_or(default));
    // llama.cpp's Gemma query scale: 1/sqrt(hidden/heads) for the 27B shapes, 1/sqrt(head_dim) otherwise.
    let query_scalar = |big: usize| if layers == big { hidden / heads } else { head_dim };
    let pattern = |n: usize| -> Vec<&str> {
        (0..layers)
            .map(|i| {
                if i % n < n - 1 {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
            })
            .collect()
    };
    let linear = g
        .opt_str(&k("rope.scaling.type"))
        .filter(|t| t == "linear")
        .map(|_| json!({"rope_type": "linear", "factor": f("rope.scaling.factor", 1.0)}));
    match arch {
        Architecture::Gemma2 => {
            c["query_pre_attn_scalar"] = json!(query_scalar(46));
            c["attn_logit_softcapping"] = json!(f("attn_logit_softcapping", 50.0));
            c["final_logit_softcapping"] = json!(f("final_logit_softcapping", 30.0));
            c["sliding_window"] = json!(g.opt_u32(&k("attention.sliding_window"))?.unwrap_or(4096));
            c["layer_types"] = json!(pattern(2));
            c["tie_word_embeddings"] = json!(true);
        }
        Architecture::Gemma3 => {
            c["query_pre_attn_scalar"] = json!(query_scalar(62));
            c["sliding_window"] = json!(g.u32(&k("attention.sliding_window"))?);
            c["layer_types"] = json!(pattern(6));
            c["rope_local_base_freq"] = json!(10000.0);
            if let Some(l) = linear {
                c["rope_scaling"] = l;
            }
        }
        Architecture::Granite => {
            for (hf, key) in [
                ("attention_multiplier", "attention.scale"),
                ("embedding_multiplier", "embedding_scale"),
                ("residual_multiplier", "residual_scale"),
                ("logits_scaling", "logit_scale"),
            ] {
                let v = g
                    .opt_f32(&k(key))
                    .ok_or_else(|| g.bad(format!("the file has no {}", k(key))))?;
                c[hf] = json!(shortest(v));
            }
            if let Some(l) = linear {
                c["rope_scaling"] = l;
            }
        }
        Architecture::SmolLM3 => {
            c["no_rope_layers"] = json!((0..layers).map(|i| u8::from((i + 1) % 4 != 0)).collect::<Vec<_>>());
            c["use_sliding_window"] = json!(false);
            if let Some(l) = linear {
                c["rope_scaling"] = l;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A per-layer key/value head count (an array), where the file gives one.
fn kv_heads_per_layer(g: &Gguf, key: &str) -> Option<Vec<u32>> {
    let values = g.get(key)?.to_vec().ok()?;
    values
        .iter()
        .map(|v| v.to_u32().or_else(|_| v.to_i32().map(|x| x as u32)).ok())
        .collect()
}

/// LFM2's config.json as transformers reads it: the layer kinds from the per-layer head counts (0: a convolution
/// layer), the convolution's length, its epsilon under `norm_eps`, and the MLP width as the file states it (no
/// further adjustment). It has no activation key (always SiLU).
fn lfm2_keys(g: &Gguf, a: &str, kv_per_layer: Option<&[u32]>, c: &mut Value) -> Result<()> {
    let layers = c["num_hidden_layers"].as_u64().unwrap_or(0) as usize;
    let counts = kv_per_layer.filter(|k| k.len() == layers).ok_or_else(|| {
        g.bad(format!(
            "{a}.attention.head_count_kv must list a count per layer ({layers})"
        ))
    })?;
    let types: Vec<&str> = counts
        .iter()
        .map(|&n| if n == 0 { "conv" } else { "full_attention" })
        .collect();
    let obj = c.as_object_mut().expect("an object");
    obj.remove("hidden_act");
    let eps = obj.remove("rms_norm_eps").unwrap_or(json!(1e-5));
    obj.insert("norm_eps".into(), eps);
    obj.insert("layer_types".into(), json!(types));
    obj.insert("conv_L_cache".into(), json!(g.u32(&format!("{a}.shortconv.l_cache"))?));
    obj.insert("conv_bias".into(), json!(false));
    obj.insert("block_auto_adjust_ff_dim".into(), json!(false));
    Ok(())
}

/// An f32 key's value as the shortest decimal that reads back as it (0.1, not 0.10000000149): what the
/// converter read from config.json.
fn shortest(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(v as f64)
}

/// f32 keys hold 500000.0 or 1000000.0 exactly; 10000.0 too. Anything else is written as read.
fn round_theta(t: f64) -> f64 {
    if (t - t.round()).abs() < 1e-3 {
        t.round()
    } else {
        t
    }
}

fn rope_factors(g: &Gguf) -> Result<Option<Vec<f32>>> {
    if !g.content.tensor_infos.contains_key("rope_freqs.weight") {
        return Ok(None);
    }
    g.read("rope_freqs.weight")?
        .dequantize(&Device::Cpu)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map(Some)
        .map_err(GgufError::candle("reading rope_freqs.weight"))
}

/// The Llama 3 rope scaling whose per-frequency factors are `factors`, among the settings Meta's models use.
fn llama3_scaling(factors: &[f32], head_dim: usize, theta: f64) -> Option<Value> {
    let factor = factors.iter().copied().fold(1f32, f32::max) as f64;
    for orig in [8192.0, 4096.0, 16384.0, 32768.0, 2048.0] {
        for (low, high) in [(1.0, 4.0), (1.0, 8.0), (1.0, 2.0), (2.0, 8.0)] {
            let candidate = crate::export::llama3_factors(head_dim, theta, factor, low, high, orig);
            if candidate.len() == factors.len()
                && candidate
                    .iter()
                    .zip(factors)
                    .all(|(a, b)| (a - b).abs() <= 1e-4 * a.abs().max(1.0))
            {
                return Some(json!({"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
                    "high_freq_factor": high, "original_max_position_embeddings": orig as u64}));
            }
        }
    }
    None
}
