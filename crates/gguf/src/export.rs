//! A Hugging Face folder (or a run's `final/`) as one GGUF file llama.cpp loads like its own converter's output:
//! llama.cpp's architecture keys and tensor names, llama's q/k rows permuted for its rope kernel, gemma's norms
//! stored as `1 + weight`, Llama 3 rope scaling as `rope_freqs.weight`, the tokenizer and the chat template.
//! Unsupported families are refused before anything is read. The file is written beside its destination and
//! renamed into place only when complete.

use crate::error::{GgufError, Result};
use crate::format::{self, Meta, TensorEntry};
use crate::names::{
    expert_tensor, gguf_arch, interleaved_expert_parts, offset_norm, order_key, reorder_rows, rope_heads,
    rope_permutation, split_layer, to_gguf, ExpertColumns, EXAONE4_FULL_EVERY, EXAONE4_SLIDING_LAYERS, EXPORTABLE,
};
use crate::quant::{encode, le_bytes, tensor_type, ExportType, TensorRole};
use crate::tokenizer::tokenizer_meta;
use crate::weights::Weights;
use crate::Progress;
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};
use freezetune_core::files::ModelFiles;
use freezetune_train::config::LayerSpec;
use freezetune_train::config::{Activation, Mixer};
use freezetune_train::experts::RouteBy;
use freezetune_train::rope::{yarn_mscale, RopeScaling};
use freezetune_train::{Architecture, DecoderConfig};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub kind: ExportType,
    /// Replace an existing file.
    pub force: bool,
    /// Write an Ollama `Modelfile` beside the file.
    pub modelfile: bool,
    /// `general.name`; the folder's name when `None`.
    pub name: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ExportReport {
    pub path: PathBuf,
    pub source: PathBuf,
    pub architecture: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub tensors: usize,
    pub bytes: u64,
    /// How many tensors each GGML type holds.
    pub tensor_types: BTreeMap<String, usize>,
    pub modelfile: Option<PathBuf>,
    pub warnings: Vec<String>,
}

/// The model folder an export reads: `DIR/final` for a run folder, else `DIR` itself.
pub fn model_dir_of(input: &Path) -> Result<PathBuf> {
    if input.join("config.json").is_file() {
        return Ok(input.to_path_buf());
    }
    if input.join("final").join("config.json").is_file() {
        return Ok(input.join("final"));
    }
    let reason = if input.join("run.toml").is_file() || input.join("metrics.jsonl").is_file() {
        "this run has no final/ model yet (it is still training or was stopped); finish or resume it, or export a model folder"
    } else {
        "not a model folder (no config.json) or a run folder (no final/config.json)"
    };
    Err(GgufError::BadInput {
        path: input.into(),
        reason: reason.into(),
    })
}

/// One tensor to write: where its values come from, and its place in the file.
struct Planned {
    entry: TensorEntry,
    source: Source,
}

enum Source {
    Weight {
        hf: String,
        /// Rows reordered for llama.cpp's rope (llama's q and k): the heads the tensor holds.
        rope_heads: Option<usize>,
        /// Gemma stores `weight - 1`; llama.cpp wants the weight itself.
        add_one: bool,
    },
    /// Computed values (Llama 3's `rope_freqs`), written as f32.
    Values(Vec<f32>),
    /// One projection of every expert of a layer, stacked in expert order (llama.cpp's `ffn_*_exps`).
    Stacked(Vec<String>),
    /// Part of a stacked, interleaved expert tensor (gpt-oss): some columns of each expert, its matrix transposed
    /// where `transpose`.
    Interleaved {
        hf: String,
        columns: ExpertColumns,
        transpose: bool,
    },
}

pub fn export_gguf(
    input: &Path,
    dest: &Path,
    options: &ExportOptions,
    progress: &mut dyn FnMut(&Progress) -> bool,
) -> Result<ExportReport> {
    let dir = model_dir_of(input)?;
    let config = DecoderConfig::read(&dir)?;
    refuse_unexportable(&config)?;
    let modelfile_path = dest.with_file_name("Modelfile");
    for path in [Some(dest), options.modelfile.then_some(modelfile_path.as_path())]
        .into_iter()
        .flatten()
    {
        if path.exists() && !options.force {
            return Err(GgufError::Exists(path.into()));
        }
    }
    let raw = read_config_json(&dir)?;
    let files = ModelFiles::find(&dir)?;
    if files.gguf_map.is_some() {
        return Err(GgufError::BadInput {
            path: dir,
            reason: "is a GGUF file's mapped folder, not a model: export a run trained from it (its final/), or \
                     use the GGUF file itself"
                .into(),
        });
    }
    let model =
        freezetune_core::config::ModelConfig::from_value(raw.clone()).map_err(|reason| GgufError::BadInput {
            path: dir.join("config.json"),
            reason,
        })?;
    let st = Weights::open(&files.weights, model.fp8.as_ref()).map_err(|reason| GgufError::BadInput {
        path: dir.clone(),
        reason,
    })?;
    let (plan, mut warnings) = plan_tensors(&st, &config, options.kind, &|n| model.is_prediction_layer(n))?;
    let tok = tokenizer_meta(&dir, config.vocab_size)?;
    warnings.extend(tok.warnings);
    let name = safe_name(
        options.name.clone().unwrap_or_else(|| model_name(&dir)),
        &tok.entries,
        &mut warnings,
    );
    let mut metadata = general_meta(&name, &config, options.kind);
    metadata.extend(arch_meta(&config, &raw));
    metadata.extend(tok.entries);
    warnings.extend(unslid_window(&config));
    warnings.extend(unrounded_yarn(&config));
    if let Some(record) = crate::patch::gguf_source(&dir)? {
        warnings.push(format!(
            "this model was trained from {}: every tensor was re-encoded as {} from final/'s values; export without \
             --type to keep that file's own blocks for the frozen tensors",
            record.map.source.display(),
            options.kind.name()
        ));
    }
    if raw["max_position_embeddings"].as_u64().is_none() {
        warnings.push("config.json has no max_position_embeddings; wrote a context length of 4096".into());
    }
    let tmp = crate::hidden_sibling(dest, "partial");
    let written = write_file(&tmp, &metadata, &st, &plan, progress).and_then(|()| place(&tmp, dest, options.force));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    let modelfile = match options.modelfile {
        true => Some(write_modelfile(dest, &dir, &modelfile_path, options.force)?),
        false => None,
    };
    Ok(ExportReport {
        bytes: std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0),
        path: dest.into(),
        source: dir,
        architecture: gguf_arch(config.architecture).into(),
        kind: options.kind.name().into(),
        tensors: plan.len(),
        tensor_types: crate::count_types(plan.iter().map(|p| p.entry.dtype)),
        modelfile,
        warnings,
    })
}

/// A family or rope export does not map to llama.cpp's keys is refused before anything is written: a file that
/// loads but computes other logits would be worse than none.
fn refuse_unexportable(c: &DecoderConfig) -> Result<()> {
    let family = c.architecture.model_type();
    if let Some(wrapper) = c.wrapper {
        return Err(GgufError::Unsupported(format!(
            "GGUF export of a {wrapper} vision-language model is not supported yet (llama.cpp wants its vision tower \
             in a separate mmproj file); it trains, and exports as a Hugging Face folder"
        )));
    }
    if !EXPORTABLE.contains(&c.architecture) {
        return Err(GgufError::Unsupported(format!(
            "GGUF export of {family} models is not supported yet (it trains, and exports as a Hugging Face \
             folder); GGUF export covers {}",
            EXPORTABLE.iter().map(|a| a.model_type()).collect::<Vec<_>>().join(", ")
        )));
    }
    let rope = c.global_rope();
    // llama3 scaling goes out as `rope_freqs.weight`, which the older families' loaders read; the newer ones take
    // linear scaling as `rope.scaling.*` keys.
    let plain = match c.architecture {
        Architecture::Llama
        | Architecture::Mistral
        | Architecture::Qwen2
        | Architecture::Qwen3
        | Architecture::Phi3
        | Architecture::Gemma
        | Architecture::Exaone4 => matches!(rope.scaling, RopeScaling::Default | RopeScaling::Llama3 { .. }),
        // llama.cpp's gpt-oss runs YaRN with llama-cpp-python's betas (32, 1) and its own attention factor.
        Architecture::GptOss => match rope.scaling {
            RopeScaling::Default => true,
            RopeScaling::Yarn {
                factor,
                beta_fast,
                beta_slow,
                ..
            } => {
                (beta_fast, beta_slow) == (32.0, 1.0) && (rope.attention_factor - yarn_mscale(factor, 1.0)).abs() < 1e-9
            }
            _ => false,
        },
        _ => matches!(rope.scaling, RopeScaling::Default | RopeScaling::Linear { .. }),
    };
    // llama.cpp's glm4moe rotates `rope.dimension_count` of each head, as transformers' partial rotary does.
    let partial_ok = c.architecture == Architecture::Glm4Moe;
    if !plain || (rope.rotary_dim(c.head_dim) != c.head_dim && !partial_ok) {
        return Err(GgufError::Unsupported(format!(
            "GGUF export of this {family} model's rope ({:?}, partial rotary factor {}) is not supported yet",
            rope.scaling, rope.partial_rotary_factor
        )));
    }
    llama_cpp_limits(c).map_err(|reason| {
        GgufError::Unsupported(format!(
            "this {family} model cannot be exported as GGUF: {reason}; llama.cpp would compute other logits than \
             the model's"
        ))
    })
}

/// Where the model's layers slide but llama.cpp's graph for its family has no sliding window (all but Gemma 2 and
/// 3 and Phi-3 in the pinned llama.cpp; Mistral 7B v0.1 and Qwen2 with use_sliding_window are the common cases):
/// llama.cpp then attends over the whole context, which is the same math only while a sequence fits the window.
/// Export goes ahead (within the window the file is exact) and says so.
fn unslid_window(c: &DecoderConfig) -> Option<String> {
    if matches!(
        c.architecture,
        Architecture::Gemma2 | Architecture::Gemma3 | Architecture::Phi3 | Architecture::GptOss | Architecture::Exaone4
    ) {
        return None;
    }
    let window = c.layers.iter().find_map(|l| l.window)?;
    let sliding = c.layers.iter().filter(|l| l.window.is_some()).count();
    Some(format!(
        "{sliding} of {} layers attend over a sliding window of {window} tokens, but llama.cpp's {} attends over \
         the whole context: it computes this model's outputs only for sequences up to {window} tokens",
        c.layers.len(),
        crate::names::gguf_arch(c.architecture)
    ))
}

/// Where the model's YaRN ramp runs between fractional dimensions (`truncate: false`, gpt-oss's setting): llama.cpp
/// always rounds the ramp's ends to whole dimensions (ggml's `ggml_rope_yarn_corr_dims`), so a few frequencies
/// rotate slightly differently there. That is how llama.cpp runs gpt-oss itself; export goes ahead and says so.
fn unrounded_yarn(c: &DecoderConfig) -> Option<String> {
    let rope = c.global_rope();
    let RopeScaling::Yarn { truncate: false, .. } = rope.scaling else {
        return None;
    };
    Some(
        "config.json's YaRN rope has `truncate: false`, but llama.cpp rounds the ramp between interpolated and \
         extrapolated frequencies to whole dimensions: a few rope frequencies differ from the model's, so \
         llama.cpp's outputs differ somewhat from FreezeTune's and transformers' (as in every llama.cpp run of \
         gpt-oss)"
            .into(),
    )
}

/// What llama.cpp's graph for a family hard-codes instead of reading from the file (llama.cpp as of August 2025,
/// `src/llama-model.cpp`): a model that differs would load and compute something else, so it is refused.
fn llama_cpp_limits(c: &DecoderConfig) -> std::result::Result<(), String> {
    let layers = &c.layers;
    let default_scale = 1.0 / (c.head_dim as f64).sqrt();
    let natural_head = c.hidden_size / c.num_heads;
    // Gemma 2 and 3 scale queries by 1/sqrt(head_dim), or 1/sqrt(hidden/heads) for the 27B shape (46 and 62
    // layers), whatever query_pre_attn_scalar says.
    let gemma_scale = |big_layers: usize| {
        let alt = 1.0 / (natural_head as f64).sqrt();
        let ok = |s: f64| (s - default_scale).abs() < 1e-9 || (c.num_layers == big_layers && (s - alt).abs() < 1e-9);
        match layers.iter().all(|l| ok(l.scale)) {
            true => Ok(()),
            false => Err(
                "query_pre_attn_scalar must equal head_dim (llama.cpp derives the query scale from the \
                          model's size)"
                    .to_string(),
            ),
        }
    };
    // The layers llama.cpp slides: all but every `n`-th, with one window.
    let pattern = |n: usize| {
        let window = layers
            .iter()
            .find_map(|l| l.window)
            .ok_or("the model has no sliding window")?;
        for (i, l) in layers.iter().enumerate() {
            let want = (i % n < n - 1).then_some(window);
            if l.window != want {
                return Err(format!(
                    "layer {i} is {} but llama.cpp makes every {n}th layer full-attention and the others slide",
                    l.kind()
                ));
            }
        }
        Ok(())
    };
    // llama.cpp hard-codes each family's MLP activation: GeLU (tanh) for Gemma, SiLU for the rest.
    let gemma = matches!(
        c.architecture,
        Architecture::Gemma | Architecture::Gemma2 | Architecture::Gemma3
    );
    let activation = if gemma { Activation::GeluTanh } else { Activation::Silu };
    if let Some(l) = layers.iter().find(|l| l.activation != activation) {
        return Err(format!(
            "its MLP runs {:?} (`hidden_act`), but llama.cpp's {} runs {activation:?}",
            l.activation,
            gguf_arch(c.architecture)
        ));
    }
    match (c.architecture, c.tie_word_embeddings) {
        (Architecture::Gemma2, false) => {
            return Err(
                "llama.cpp's Gemma 2 reads its output from the embeddings; this model has its own lm_head".into(),
            )
        }
        (Architecture::Granite, _) if c.layers.iter().any(|l| l.mlp_bias) => {
            return Err("llama.cpp's Granite has no MLP biases".into())
        }
        (Architecture::Olmo2 | Architecture::Olmoe | Architecture::GptOss, true) => {
            return Err(format!(
                "llama.cpp's {} needs an output matrix of its own; this model ties it to the embeddings",
                gguf_arch(c.architecture)
            ))
        }
        // ERNIE 4.5's `use_bias` puts biases on the MLP too, which llama.cpp's ernie4_5 has no place for.
        (Architecture::Ernie4_5, _) if layers.iter().any(|l| l.mlp_bias) => {
            return Err("llama.cpp's ernie4_5 has no MLP biases (use_bias is true)".into())
        }
        (Architecture::Olmoe, _) if layers.iter().any(|l| l.qkv_bias || l.o_bias) => {
            return Err("llama.cpp's olmoe has no attention biases (attention_bias is true)".into())
        }
        (Architecture::GptOss, _) if layers.iter().any(|l| !l.qkv_bias || !l.o_bias) => {
            return Err(
                "llama.cpp's gpt-oss needs biases on every attention projection (attention_bias is false)".into(),
            )
        }
        (Architecture::Lfm2, _)
            if layers
                .iter()
                .any(|l| matches!(l.mixer, Mixer::ShortConv { bias: true, .. })) =>
        {
            return Err("llama.cpp's LFM2 has no convolution biases (conv_bias is true)".into())
        }
        _ => {}
    }
    match c.architecture {
        Architecture::Gemma2 => {
            gemma_scale(46)?;
            pattern(2)?;
            if layers.iter().any(|l| l.softcap.is_none()) || c.final_softcap.is_none() {
                return Err("llama.cpp always applies Gemma 2's attention and final softcaps".into());
            }
            Ok(())
        }
        Architecture::Gemma3 => {
            gemma_scale(62)?;
            pattern(6)?;
            if layers.iter().any(|l| l.softcap.is_some()) || c.final_softcap.is_some() {
                return Err("llama.cpp applies no softcap to Gemma 3".into());
            }
            let local = &c.ropes[1];
            if local.theta != 10_000.0 || local.scaling != RopeScaling::Default {
                return Err(format!(
                    "the sliding layers' rope must be the default one of base 10000 (rope_local_base_freq), not {} \
                     {:?}",
                    local.theta, local.scaling
                ));
            }
            Ok(())
        }
        Architecture::Granite | Architecture::Olmo2 | Architecture::Olmoe if c.head_dim != natural_head => {
            Err(format!(
                "head_dim {} must be hidden_size / num_attention_heads ({natural_head})",
                c.head_dim
            ))
        }
        Architecture::GptOss => gpt_oss_limits(c, pattern),
        Architecture::Glm4Moe => glm4_moe_limits(c),
        Architecture::Exaone4 => exaone4_limits(c, pattern),
        Architecture::Olmoe if c.num_kv_heads != c.num_heads => Err(format!(
            "llama.cpp's olmoe has as many key/value heads as query heads (its k norm is hidden_size wide); this model \
             has {} of {}",
            c.num_kv_heads, c.num_heads
        )),
        // llama.cpp's qwen3moe and llama (Mixtral) renormalise a token's top-k weights; its olmoe does not.
        Architecture::Qwen3Moe | Architecture::Mixtral => experts_on_every_layer(layers, true),
        Architecture::Olmoe => experts_on_every_layer(layers, false),
        Architecture::SmolLM3 => {
            for (i, l) in layers.iter().enumerate() {
                let rotates = (i + 1) % 4 != 0;
                if l.rope.is_some() != rotates || l.window.is_some() {
                    return Err(format!(
                        "layer {i} is {}; llama.cpp makes every 4th layer NoPE and none slide",
                        l.kind()
                    ));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// llama.cpp's gpt-oss: even layers slide and odd ones attend in full, queries scaled by 1/sqrt(head_dim), sinks
/// and experts on every layer, the router's softmax over each token's top-k logits. (Its clamped SwiGLU's alpha
/// 1.702 and limit 7 are the family's own: config.json cannot change them.)
fn gpt_oss_limits(
    c: &DecoderConfig,
    pattern: impl Fn(usize) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    pattern(2)?;
    let default_scale = 1.0 / (c.head_dim as f64).sqrt();
    for (i, l) in c.layers.iter().enumerate() {
        if (l.scale - default_scale).abs() > 1e-9 || !l.sinks {
            return Err(format!(
                "layer {i} must scale queries by 1/sqrt(head_dim) and have attention sinks"
            ));
        }
    }
    experts_on_every_layer(&c.layers, true)
}

/// llama.cpp's glm4moe: biases on q, k and v; the dense layers first, then experts on every layer; no group-limited
/// routing (it picks the top-k over all experts).
fn glm4_moe_limits(c: &DecoderConfig) -> std::result::Result<(), String> {
    let layers = &c.layers;
    if layers.iter().any(|l| !l.qkv_bias) {
        return Err("llama.cpp's glm4moe needs biases on q, k and v (attention_bias is false)".into());
    }
    let dense_lead = leading_dense_layers(layers);
    if dense_lead == layers.len() {
        return Err(
            "no layer has experts (`first_k_dense_replace` covers them all), but llama.cpp's glm4moe needs them".into(),
        );
    }
    if let Some(i) = (dense_lead..layers.len()).find(|&i| layers[i].experts.is_none()) {
        return Err(format!(
            "layer {i} has a dense MLP after sparse ones, but llama.cpp's glm4moe keeps dense MLPs to the first \
             layers (`first_k_dense_replace`)"
        ));
    }
    match layers.iter().find_map(|l| l.experts).map(|e| e.routing) {
        Some(RouteBy::SigmoidGroups { groups, top_groups, .. }) if top_groups < groups => Err(format!(
            "each token chooses among the best {top_groups} of {groups} expert groups (`topk_group`, `n_group`), \
             but llama.cpp's glm4moe chooses among all experts"
        )),
        _ => Ok(()),
    }
}

/// llama.cpp's exaone4: an output projection as wide as the model; sliding layers only in the 64-layer (32B) model,
/// every 4th full and without rope, as it hard-codes them; every other model attends in full with rope throughout.
fn exaone4_limits(
    c: &DecoderConfig,
    pattern: impl Fn(usize) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    if c.num_heads * c.head_dim != c.hidden_size {
        return Err(format!(
            "llama.cpp's exaone4 needs num_attention_heads × head_dim ({}) to equal hidden_size ({})",
            c.num_heads * c.head_dim,
            c.hidden_size
        ));
    }
    let slides = c.num_layers == EXAONE4_SLIDING_LAYERS;
    match c.layers.iter().find_map(|l| l.window) {
        None if slides => Err(format!(
            "llama.cpp's exaone4 slides every {EXAONE4_SLIDING_LAYERS}-layer model (every \
             {EXAONE4_FULL_EVERY}th layer full), but this one has no window"
        )),
        // A `sliding_window` with no sliding layer leaves transformers' full layers without rope.
        None if c.layers.iter().any(|l| l.rope.is_none()) => Err(
            "its layers attend in full without rope (`sliding_window` is set, no layer slides), but llama.cpp's \
             exaone4 rotates them; set `sliding_window` to null"
                .into(),
        ),
        None => Ok(()),
        Some(_) if !slides => Err(format!(
            "the model slides, but llama.cpp's exaone4 slides only {EXAONE4_SLIDING_LAYERS}-layer models; this one \
             has {} (set `sliding_window` to null to train and export it without a window)",
            c.num_layers
        )),
        Some(_) => pattern(EXAONE4_FULL_EVERY),
    }
}

/// How many layers from the first have a dense MLP.
fn leading_dense_layers(layers: &[LayerSpec]) -> usize {
    layers.iter().take_while(|l| l.experts.is_none()).count()
}

/// llama.cpp's mixture-of-experts graphs give every layer experts, and always or never (`normalize`) renormalise a
/// token's top-k weights: the first layer that differs is refused by name.
fn experts_on_every_layer(layers: &[LayerSpec], normalize: bool) -> std::result::Result<(), String> {
    match layers
        .iter()
        .position(|l| l.experts.is_none_or(|e| e.normalize != normalize))
    {
        None => Ok(()),
        Some(i) if layers[i].experts.is_none() => Err(format!(
            "layer {i} has a dense MLP (`mlp_only_layers` / `decoder_sparse_step`), but llama.cpp gives every layer \
             experts"
        )),
        Some(_) if normalize => {
            Err("`norm_topk_prob` is false, but llama.cpp always renormalises the chosen experts' weights".into())
        }
        Some(_) => Err(
            "`norm_topk_prob` is true, but llama.cpp never renormalises this family's chosen experts' \
                        weights"
                .into(),
        ),
    }
}

fn read_config_json(dir: &Path) -> Result<Value> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| GgufError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| GgufError::BadInput {
        path,
        reason: e.to_string(),
    })
}

/// The whole file at `tmp`, synced: header, then each tensor as it is converted.
fn write_file(
    tmp: &Path,
    metadata: &[(String, Meta)],
    st: &Weights,
    plan: &[Planned],
    progress: &mut dyn FnMut(&Progress) -> bool,
) -> Result<()> {
    let io = |e| GgufError::io(tmp, e);
    let file = std::fs::File::create(tmp).map_err(io)?;
    let entries: Vec<TensorEntry> = plan.iter().map(|p| p.entry.clone()).collect();
    let mut w = format::Writer::start(BufWriter::with_capacity(8 << 20, file), metadata, &entries).map_err(io)?;
    let total = plan.len();
    for (i, p) in plan.iter().enumerate() {
        if !progress(&Progress {
            done: i,
            total,
            tensor: p.entry.name.clone(),
        }) {
            return Err(GgufError::Stopped);
        }
        w.tensor(&p.entry, &tensor_bytes(st, p)?).map_err(io)?;
    }
    let file = w
        .finish()
        .map_err(io)?
        .into_inner()
        .map_err(|e| GgufError::io(tmp, e.into_error()))?;
    file.sync_all().map_err(io)?;
    progress(&Progress {
        done: total,
        total,
        tensor: String::new(),
    });
    Ok(())
}

fn write_modelfile(gguf: &Path, dir: &Path, path: &Path, force: bool) -> Result<PathBuf> {
    use freezetune_core::fsutil::{write_atomic, Overwrite};
    let text = crate::modelfile::modelfile(gguf, dir)?;
    let overwrite = if force { Overwrite::Allow } else { Overwrite::Refuse };
    if !write_atomic(path, text.as_bytes(), overwrite)? {
        return Err(GgufError::Exists(path.into()));
    }
    Ok(path.into())
}

/// Moves the finished file into place; without `force` a file that appeared meanwhile is kept (hard link fails).
pub(crate) fn place(tmp: &Path, dest: &Path, force: bool) -> Result<()> {
    if force {
        return std::fs::rename(tmp, dest).map_err(|e| GgufError::io(dest, e));
    }
    match std::fs::hard_link(tmp, dest) {
        Ok(()) => {
            let _ = std::fs::remove_file(tmp);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(GgufError::Exists(dest.into())),
        Err(e) => Err(GgufError::io(dest, e)),
    }
}

fn model_name(dir: &Path) -> String {
    let leaf = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if leaf == "final" {
        if let Some(run) = dir.parent().and_then(Path::file_name) {
            return run.to_string_lossy().into_owned();
        }
    }
    leaf
}

/// llama.cpp looks up `</s>`, `<unk>`, `<s>` and `<|endoftext|>` by name when a model's name says Phi-3, and
/// fails to load a file whose vocabulary lacks one; such a name is not written.
fn safe_name(name: String, tokenizer: &[(String, Meta)], warnings: &mut Vec<String>) -> String {
    let lower = name.to_lowercase();
    if !(lower.contains("phi3") || lower.contains("phi-3")) {
        return name;
    }
    let tokens = tokenizer.iter().find_map(|(k, v)| match v {
        Meta::Strs(t) if k == "tokenizer.ggml.tokens" => Some(t),
        _ => None,
    });
    let has_all = tokens.is_some_and(|t| {
        ["</s>", "<unk>", "<s>", "<|endoftext|>"]
            .iter()
            .all(|w| t.iter().any(|x| x == w))
    });
    if has_all {
        return name;
    }
    warnings.push(format!(
        "general.name {name:?} would make llama.cpp look up Phi-3's special tokens, which this vocabulary lacks; \
         wrote \"model\" instead (pass --name to choose one)"
    ));
    "model".into()
}

/// The GGUF tensors the checkpoint's go out as, and warnings. `dropped` names tensors that stay behind (the
/// multi-token-prediction layers transformers drops and llama.cpp never runs).
fn plan_tensors(
    st: &Weights,
    c: &DecoderConfig,
    kind: ExportType,
    dropped: &dyn Fn(&str) -> bool,
) -> Result<(Vec<Planned>, Vec<String>)> {
    let mut names: Vec<(String, Vec<usize>)> = st.tensors();
    if let Some((packed, _)) = names
        .iter()
        .find(|(n, _)| n.ends_with(freezetune_core::mxfp4::BLOCKS_SUFFIX))
    {
        return Err(GgufError::Unsupported(format!(
            "{packed} holds experts in MXFP4 blocks (the model as released); GGUF export writes dense experts from \
             a dense folder: export a run trained from this model (its final/ holds every expert dense)"
        )));
    }
    let has_lm_head = names.iter().any(|(n, _)| n == "lm_head.weight");
    let has_output = has_lm_head && !c.tie_word_embeddings;
    let mut warnings = Vec::new();
    if has_lm_head && c.tie_word_embeddings {
        warnings.push("lm_head.weight is stored but the model ties it to the embeddings; it is not written".into());
    }
    names.retain(|(n, _)| !n.ends_with("rotary_emb.inv_freq") && (has_output || n != "lm_head.weight") && !dropped(n));
    names.sort_by_key(|(n, _)| order_key(n));
    let (names, experts): (Vec<_>, Vec<_>) = names.into_iter().partition(|(n, _)| expert_tensor(n).is_none());
    let interleaved = c.architecture == Architecture::GptOss;
    let (names, interleaved): (Vec<_>, Vec<_>) = names
        .into_iter()
        .partition(|(n, _)| !interleaved || interleaved_expert_parts(n).is_none());
    let mut plan = Vec::with_capacity(names.len());
    for (hf, shape) in interleaved {
        plan.extend(interleaved_parts(hf, &shape, c, kind, has_output)?);
    }
    for (hf, shape) in names {
        let gguf = to_gguf(&hf, c.architecture).ok_or_else(|| {
            GgufError::Unsupported(format!(
                "tensor {hf} has no place in llama.cpp's {} architecture; FreezeTune exports decoders of the \
                 families it trains ({})",
                gguf_arch(c.architecture),
                EXPORTABLE.iter().map(|a| a.model_type()).collect::<Vec<_>>().join(", ")
            ))
        })?;
        let dtype = planned_type(&gguf, &shape, c, kind, has_output);
        // LFM2's depthwise convolution (hidden, 1, kernel) is llama.cpp's {kernel, hidden}: the same values.
        let shape = match (c.architecture, shape.as_slice()) {
            (Architecture::Lfm2, &[h, 1, k]) => vec![h, k],
            _ => shape,
        };
        let source = Source::Weight {
            rope_heads: rope_heads(&hf, c.architecture, c.num_heads, c.num_kv_heads),
            add_one: offset_norm(&hf, c.architecture),
            hf,
        };
        plan.push(Planned {
            entry: TensorEntry {
                name: gguf,
                shape,
                dtype,
            },
            source,
        });
    }
    plan.extend(stacked_experts(experts, c, kind, has_output)?);
    // Each layer's stacked experts after its other tensors (a stable sort keeps every other tensor in place).
    plan.sort_by_key(|p| {
        let (group, layer, _) = order_key(&p.entry.name);
        (group, layer)
    });
    if let Some(factors) = rope_freqs(c) {
        let entry = TensorEntry {
            name: "rope_freqs.weight".into(),
            shape: vec![factors.len()],
            dtype: GgmlDType::F32,
        };
        plan.insert(
            1.min(plan.len()),
            Planned {
                entry,
                source: Source::Values(factors),
            },
        );
    }
    Ok((plan, warnings))
}

/// The GGML type the export writes GGUF tensor `gguf` of `shape` (Hugging Face order) in.
fn planned_type(gguf: &str, shape: &[usize], c: &DecoderConfig, kind: ExportType, has_output: bool) -> GgmlDType {
    let role = TensorRole {
        gguf_name: gguf,
        shape,
        has_output,
        layer: split_layer(gguf).map(|(l, _)| l),
        num_layers: c.num_layers,
        experts: c.layers.iter().find_map(|l| l.experts).map_or(0, |e| e.count),
    };
    tensor_type(kind, &role)
}

/// The GGUF tensors a stacked, interleaved expert tensor of gpt-oss (experts × …) splits into: gate and up from
/// alternate columns, each expert's matrix transposed to llama.cpp's output-major layout.
fn interleaved_parts(
    hf: String,
    shape: &[usize],
    c: &DecoderConfig,
    kind: ExportType,
    has_output: bool,
) -> Result<Vec<Planned>> {
    let parts = interleaved_expert_parts(&hf).expect("partitioned on it");
    let experts = split_layer(&hf).and_then(|(l, _)| c.layers.get(l)?.experts);
    let count = experts.map(|e| e.count);
    // Per expert: gate_up (hidden, 2·width) and its bias (2·width); down (width, hidden) and its bias (hidden).
    let (h, w) = (c.hidden_size, experts.map_or(0, |e| e.width));
    let expert: &[usize] = match hf.rsplit('.').next().unwrap_or_default() {
        "gate_up_proj" => &[h, 2 * w],
        "gate_up_proj_bias" => &[2 * w],
        "down_proj" => &[w, h],
        _ => &[h],
    };
    if count.is_none() || shape.first() != count.as_ref() || shape[1..] != *expert {
        return Err(GgufError::Unsupported(format!(
            "{hf} has shape {shape:?}, not config.json's {} experts of {expert:?}",
            count.map_or("no".into(), |n| n.to_string())
        )));
    }
    let plan = parts.into_iter().map(|(gguf, columns, transpose)| {
        let mut expert: Vec<usize> = shape[1..].to_vec();
        if columns != ExpertColumns::All {
            *expert.last_mut().expect("2-D or more") /= 2;
        }
        if transpose {
            expert.reverse();
        }
        let shape: Vec<usize> = std::iter::once(shape[0]).chain(expert).collect();
        let dtype = planned_type(&gguf, &shape, c, kind, has_output);
        Planned {
            entry: TensorEntry {
                name: gguf,
                shape,
                dtype,
            },
            source: Source::Interleaved {
                hf: hf.clone(),
                columns,
                transpose,
            },
        }
    });
    Ok(plan.collect())
}

/// Every expert's projection grouped into llama.cpp's stacked tensors, one per layer and projection: each must
/// hold the config's experts, numbered 0 to count − 1, all of one shape.
fn stacked_experts(
    experts: Vec<(String, Vec<usize>)>,
    c: &DecoderConfig,
    kind: ExportType,
    has_output: bool,
) -> Result<Vec<Planned>> {
    let mut stacks: BTreeMap<String, Vec<(usize, String, Vec<usize>)>> = BTreeMap::new();
    for (hf, shape) in experts {
        let (_, expert, gguf) = expert_tensor(&hf).expect("partitioned on it");
        stacks.entry(gguf).or_default().push((expert, hf, shape));
    }
    let mut plan = Vec::with_capacity(stacks.len());
    for (gguf, mut members) in stacks {
        members.sort_by_key(|(e, _, _)| *e);
        let layer = split_layer(&gguf).map(|(l, _)| l);
        let count = layer
            .and_then(|l| c.layers.get(l))
            .and_then(|l| l.experts)
            .map(|e| e.count);
        let numbered = members
            .iter()
            .enumerate()
            .all(|(i, (e, _, s))| *e == i && *s == members[0].2);
        if count != Some(members.len()) || !numbered {
            return Err(GgufError::Unsupported(format!(
                "{gguf}: the checkpoint holds experts {:?} of this layer, but config.json gives it {} experts of one \
                 shape",
                members.iter().map(|(e, _, _)| e).collect::<Vec<_>>(),
                count.map_or("no".into(), |n| n.to_string())
            )));
        }
        let shape: Vec<usize> = std::iter::once(members.len())
            .chain(members[0].2.iter().copied())
            .collect();
        let dtype = planned_type(&gguf, &shape, c, kind, has_output);
        plan.push(Planned {
            entry: TensorEntry {
                name: gguf,
                shape,
                dtype,
            },
            source: Source::Stacked(members.into_iter().map(|(_, hf, _)| hf).collect()),
        });
    }
    Ok(plan)
}

fn tensor_bytes(st: &Weights, p: &Planned) -> Result<Vec<u8>> {
    let (hf, rope_heads, add_one) = match &p.source {
        Source::Values(values) => return Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        Source::Stacked(names) => return stacked_bytes(st, names, p),
        Source::Interleaved { hf, columns, transpose } => return interleaved_bytes(st, hf, *columns, *transpose, p),
        Source::Weight {
            hf,
            rope_heads,
            add_one,
        } => (hf, *rope_heads, *add_one),
    };
    let convert = || -> candle_core::Result<Vec<u8>> {
        let mut t = st.load(hf)?;
        if let Some(heads) = rope_heads {
            t = reorder_rows(&t, rope_permutation(t.dim(0)?, heads))?;
        }
        if add_one {
            t = (t.to_dtype(DType::F32)? + 1.0)?;
        }
        // Same precision in and out: the bytes as they are (exact).
        match (p.entry.dtype, t.dtype()) {
            (GgmlDType::F16, DType::F16) | (GgmlDType::BF16, DType::BF16) => return le_bytes(&t),
            _ => {}
        }
        let values = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let cols = *p.entry.shape.last().unwrap_or(&1);
        encode(&values, cols, p.entry.dtype)
    };
    convert().map_err(GgufError::candle(format!("converting {hf}")))
}

/// The experts' projections `names`, stacked in order, in the planned type: each expert encoded on its own (its
/// rows are whole blocks, so the bytes are the stack's), never the whole stack in f32 at once.
fn stacked_bytes(st: &Weights, names: &[String], p: &Planned) -> Result<Vec<u8>> {
    let cols = *p.entry.shape.last().unwrap_or(&1);
    let mut out = Vec::new();
    for name in names {
        let convert = || -> candle_core::Result<Vec<u8>> {
            let t = st.load(name)?;
            match (p.entry.dtype, t.dtype()) {
                (GgmlDType::F16, DType::F16) | (GgmlDType::BF16, DType::BF16) => le_bytes(&t),
                _ => encode(
                    &t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?,
                    cols,
                    p.entry.dtype,
                ),
            }
        };
        out.extend(convert().map_err(GgufError::candle(format!("stacking {name} into {}", p.entry.name)))?);
    }
    Ok(out)
}

/// Part of a stacked, interleaved expert tensor `hf` in the planned type, one expert at a time (read from the
/// mapped file, never the whole stack at once): the expert's `columns`, its matrix transposed where `transpose`.
fn interleaved_bytes(st: &Weights, hf: &str, columns: ExpertColumns, transpose: bool, p: &Planned) -> Result<Vec<u8>> {
    let cols = *p.entry.shape.last().unwrap_or(&1);
    let convert = || -> candle_core::Result<Vec<u8>> {
        let view = st.mapped().get(hf)?;
        let (dtype, shape, data) = (DType::try_from(view.dtype())?, view.shape(), view.data());
        let per_expert = data.len() / shape[0].max(1);
        let mut out = Vec::new();
        for bytes in data.chunks_exact(per_expert.max(1)) {
            let mut t = candle_core::Tensor::from_raw_buffer(bytes, dtype, &shape[1..], &Device::Cpu)?;
            if columns != ExpertColumns::All {
                let mut pairs = t.dims().to_vec();
                let last = pairs.pop().expect("2-D or more");
                pairs.extend([last / 2, 2]);
                let at = usize::from(columns == ExpertColumns::Odd);
                t = t
                    .reshape(pairs.as_slice())?
                    .narrow(t.rank(), at, 1)?
                    .squeeze(t.rank())?;
            }
            if transpose {
                t = t.t()?;
            }
            let values = t.contiguous()?.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            out.extend(encode(&values, cols, p.entry.dtype)?);
        }
        Ok(out)
    };
    convert().map_err(GgufError::candle(format!("splitting {hf} into {}", p.entry.name)))
}

fn general_meta(name: &str, c: &DecoderConfig, kind: ExportType) -> Vec<(String, Meta)> {
    vec![
        (
            "general.architecture".into(),
            Meta::Str(gguf_arch(c.architecture).into()),
        ),
        ("general.type".into(), Meta::Str("model".into())),
        ("general.name".into(), Meta::Str(name.into())),
        ("general.file_type".into(), Meta::U32(kind.file_type())),
        ("general.quantization_version".into(), Meta::U32(2)),
    ]
}

fn arch_meta(c: &DecoderConfig, raw: &Value) -> Vec<(String, Meta)> {
    let a = gguf_arch(c.architecture);
    let k = |s: &str| format!("{a}.{s}");
    let u = |v: usize| Meta::U32(v as u32);
    let ctx = raw["max_position_embeddings"].as_u64().unwrap_or(4096) as usize;
    let mut m = vec![
        (k("context_length"), u(ctx)),
        (k("embedding_length"), u(c.hidden_size)),
        (k("feed_forward_length"), u(c.intermediate_size)),
        (k("block_count"), u(c.num_layers)),
        (k("attention.head_count"), u(c.num_heads)),
        (k("attention.head_count_kv"), kv_heads(c)),
        (k("attention.layer_norm_rms_epsilon"), Meta::F32(c.rms_norm_eps as f32)),
        (k("rope.freq_base"), Meta::F32(c.global_rope().theta as f32)),
        (k("rope.dimension_count"), u(c.global_rope().rotary_dim(c.head_dim))),
    ];
    let gemma = matches!(
        c.architecture,
        Architecture::Gemma | Architecture::Gemma2 | Architecture::Gemma3
    );
    if c.head_dim * c.num_heads != c.hidden_size || gemma {
        m.push((k("attention.key_length"), u(c.head_dim)));
        m.push((k("attention.value_length"), u(c.head_dim)));
    }
    let window = c.layers.iter().find_map(|l| l.window).unwrap_or(0);
    if let RopeScaling::Linear { factor } = c.global_rope().scaling {
        m.push((k("rope.scaling.type"), Meta::Str("linear".into())));
        m.push((k("rope.scaling.factor"), Meta::F32(factor as f32)));
    }
    if let RopeScaling::Yarn {
        factor,
        original_max_position_embeddings,
        ..
    } = c.global_rope().scaling
    {
        m.push((k("rope.scaling.type"), Meta::Str("yarn".into())));
        m.push((k("rope.scaling.factor"), Meta::F32(factor as f32)));
        m.push((
            k("rope.scaling.original_context_length"),
            u(original_max_position_embeddings as usize),
        ));
    }
    if let Some(e) = c.layers.iter().find_map(|l| l.experts) {
        m.push((k("expert_count"), u(e.count)));
        m.push((k("expert_used_count"), u(e.top_k)));
        m.push((k("expert_feed_forward_length"), u(e.width)));
    }
    let f = |v: f64| Meta::F32(v as f32);
    match c.architecture {
        Architecture::Llama | Architecture::Mistral | Architecture::Mixtral | Architecture::SmolLM3 => {
            m.push((k("vocab_size"), u(c.vocab_size)))
        }
        Architecture::Gemma2 => {
            m.push((k("attn_logit_softcapping"), f(c.layers[0].softcap.unwrap_or(50.0))));
            m.push((k("final_logit_softcapping"), f(c.final_softcap.unwrap_or(30.0))));
            m.push((k("attention.sliding_window"), u(window)));
        }
        Architecture::Gemma3 => m.push((k("attention.sliding_window"), u(window))),
        Architecture::Granite => {
            m.push((k("vocab_size"), u(c.vocab_size)));
            m.push((k("attention.scale"), f(c.layers[0].scale)));
            m.push((k("embedding_scale"), f(c.embedding_multiplier)));
            m.push((k("residual_scale"), f(c.residual_multiplier)));
            m.push((k("logit_scale"), f(c.logits_scaling)));
        }
        Architecture::Lfm2 => {
            let kernel = c.layers.iter().find_map(|l| match l.mixer {
                Mixer::ShortConv { kernel, .. } => Some(kernel),
                _ => None,
            });
            m.push((k("shortconv.l_cache"), u(kernel.unwrap_or(3))));
            m.push((k("vocab_size"), u(c.vocab_size)));
        }
        Architecture::GptOss => m.push((k("attention.sliding_window"), u(window))),
        Architecture::Glm4Moe => m.extend(glm4_moe_meta(c).into_iter().map(|(key, v)| (k(key), v))),
        Architecture::Exaone4 => {
            m.push((k("vocab_size"), u(c.vocab_size)));
            if window > 0 {
                m.push((k("attention.sliding_window"), u(window)));
            }
        }
        Architecture::Phi3 => {
            let window = raw["sliding_window"].as_u64().unwrap_or(0) as usize;
            m.push((k("attention.sliding_window"), u(window)));
            if let Some(orig) = raw["original_max_position_embeddings"].as_u64() {
                m.push((k("rope.scaling.original_context_length"), u(orig as usize)));
            }
        }
        _ => {}
    }
    m
}

/// llama.cpp's glm4moe keys beyond the common expert ones: the shared MLP's width in experts, the dense layers,
/// and DeepSeek-V3's sigmoid routing (`expert_gating_func` 2), its renormalisation and scale.
fn glm4_moe_meta(c: &DecoderConfig) -> Vec<(&'static str, Meta)> {
    let Some(e) = c.layers.iter().find_map(|l| l.experts) else {
        return Vec::new();
    };
    let scale = match e.routing {
        RouteBy::SigmoidGroups { scale, .. } => scale,
        // Gemma 4's routing is not exported (the family is not in EXPORTABLE).
        RouteBy::Softmax | RouteBy::NormedSoftmax => 1.0,
    };
    vec![
        (
            "expert_shared_count",
            Meta::U32((e.shared_width.unwrap_or(0) / e.width) as u32),
        ),
        (
            "leading_dense_block_count",
            Meta::U32(leading_dense_layers(&c.layers) as u32),
        ),
        ("expert_weights_scale", Meta::F32(scale as f32)),
        ("expert_weights_norm", Meta::Bool(e.normalize)),
        ("expert_gating_func", Meta::U32(2)),
    ]
}

/// The key/value head count: one number, or, where some layers do not attend (LFM2's convolutions), one per
/// layer with 0 for those, which is how llama.cpp tells them apart.
fn kv_heads(c: &DecoderConfig) -> Meta {
    if c.layers.iter().all(|l| l.mixer == Mixer::Attention) {
        return Meta::U32(c.num_kv_heads as u32);
    }
    let per_layer = c.layers.iter().map(|l| match l.mixer {
        Mixer::Attention => c.num_kv_heads as i32,
        _ => 0,
    });
    Meta::I32s(per_layer.collect())
}

/// Llama 3's rope scaling as the per-frequency divisors llama.cpp reads from `rope_freqs.weight`.
fn rope_freqs(c: &DecoderConfig) -> Option<Vec<f32>> {
    let rope = c.global_rope();
    let RopeScaling::Llama3 {
        factor,
        low_freq_factor,
        high_freq_factor,
        original_max_position_embeddings,
    } = rope.scaling
    else {
        return None;
    };
    Some(llama3_factors(
        c.head_dim,
        rope.theta,
        factor,
        low_freq_factor,
        high_freq_factor,
        original_max_position_embeddings,
    ))
}

/// The converter's `rope_freqs` for Llama 3 scaling: 1 for short wavelengths, `factor` for long ones, smoothed
/// between.
pub(crate) fn llama3_factors(dim: usize, theta: f64, factor: f64, low: f64, high: f64, orig: f64) -> Vec<f32> {
    let (low_wavelen, high_wavelen) = (orig / low, orig / high);
    (0..dim / 2)
        .map(|i| {
            let freq = 1.0 / theta.powf((2 * i) as f64 / dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let f = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (orig / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect()
}
