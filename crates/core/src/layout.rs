//! `ModelLayout`: the structure of a checkpoint as the layer picker and the freeze planner see it, built from
//! config.json and the safetensors headers alone.

use crate::config::{ModelConfig, ModelDims};
use crate::error::{Error, Result};
use crate::files::ModelFiles;
use crate::gguf_map::GgufMap;
use crate::safetensors::{read_header, DType};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One weight file of a checkpoint not on disk: its name, its size in bytes, and its safetensors header (the JSON
/// after the 8-byte length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteShard {
    pub name: String,
    pub size: u64,
    pub header: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub params: u64,
    /// The weight file holding it (file name inside the model folder).
    pub file: String,
    /// Held in a GGUF file's blocks (a model folder mapped onto a GGUF file, gguf_map.rs), or in an MXFP4 pair
    /// (mxfp4.rs, ggml type `mxfp4`): the block type and the bytes the blocks take, which is what the tensor costs
    /// while frozen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gguf: Option<GgufBlocks>,
}

impl TensorInfo {
    /// The shape as `usize`s.
    pub fn dims(&self) -> Vec<usize> {
        self.shape.iter().map(|&d| d as usize).collect()
    }

    /// Bytes the tensor takes while frozen when the trainer keeps it in the checkpoint's own quantized blocks (a
    /// GGUF file's for a matrix operand, MXFP4 pairs for stacked experts: params.rs's rules), else `None`.
    pub fn frozen_block_bytes(&self) -> Option<u64> {
        let dims = self.dims();
        let operand = crate::quant::held_as_matrix(&self.name, &dims)
            || (dims.len() == 3 && crate::quant::is_stacked_experts(&self.name));
        self.gguf.as_ref().filter(|b| b.quantized && operand).map(|b| b.bytes)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GgufBlocks {
    pub ggml_type: String,
    pub bytes: u64,
    pub quantized: bool,
}

/// What a module does, for filters (attention / MLP) and for drawing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleKind {
    Attention,
    Mlp,
    Norm,
    Embedding,
    Head,
    Other,
}

impl ModuleKind {
    /// Classifies a module by its name as checkpoints spell it (`self_attn`, `mlp`, `post_attention_layernorm`,
    /// `fc1`, `block_sparse_moe`, ...).
    pub fn classify(name: &str) -> ModuleKind {
        let n = name.to_ascii_lowercase();
        if n.contains("norm") || n.starts_with("ln") {
            ModuleKind::Norm
        } else if n.contains("attn") || n.contains("attention") || n == "conv" || n == "mamba" {
            // A layer's token mixer, whatever its kind: LFM2's gated short convolution is `conv`, Qwen3.5's
            // Gated DeltaNet `linear_attn`, Granite 4.0-H's Mamba 2 `mamba`; the "attention" filter selects them
            // as it selects `self_attn`.
            ModuleKind::Attention
        } else if n.contains("mlp")
            || n.contains("feed_forward")
            || n.contains("ffn")
            || n.contains("moe")
            || n.contains("expert")
            || n == "fc1"
            || n == "fc2"
        {
            ModuleKind::Mlp
        } else if n.contains("embed") || n == "wte" || n == "wpe" {
            ModuleKind::Embedding
        } else if n == "lm_head" || n == "embed_out" || n == "output" {
            ModuleKind::Head
        } else {
            ModuleKind::Other
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleInfo {
    /// Short name: `self_attn` inside a layer, `embed_tokens` / `norm` / `lm_head` outside.
    pub name: String,
    /// Full dotted path of the module (`model.layers.3.self_attn`, `model.norm`).
    pub path: String,
    pub kind: ModuleKind,
    pub params: u64,
    pub tensors: Vec<TensorInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    pub id: usize,
    pub params: u64,
    pub modules: Vec<ModuleInfo>,
}

impl LayerInfo {
    /// Every tensor of the layer, module by module.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorInfo> {
        self.modules.iter().flat_map(|m| &m.tensors)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightFile {
    pub name: String,
    pub tensors: usize,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelLayout {
    pub model_dir: PathBuf,
    pub architecture: String,
    pub model_type: Option<String>,
    /// A vision-language model (its config has `text_config` / `vision_config`).
    pub multimodal: bool,
    /// Layer count: the config's, or the checkpoint's when the config does not say.
    pub num_layers: usize,
    /// Dotted path of the repeated block, e.g. `model.layers` or `model.decoder.layers`.
    pub layer_prefix: String,
    pub layers: Vec<LayerInfo>,
    /// Modules outside the repeated block: embeddings, final norm, lm_head, vision towers, ...
    pub non_layer_modules: Vec<ModuleInfo>,
    pub tie_word_embeddings: bool,
    pub has_lm_head_tensor: bool,
    /// Tensors that alias another (a tied `lm_head.weight` stored beside `embed_tokens`): not counted, not planned.
    pub tied_aliases: Vec<String>,
    /// Tensors the checkpoint holds that are no parameter of the model transformers builds, so never counted,
    /// planned or trained, and written back unchanged: buffers ([`is_buffer`]) and what transformers leaves unread
    /// ([`ModelConfig::dropped_on_load`]: multi-token-prediction layers, shared layers' key/value tensors).
    #[serde(default)]
    pub unplanned: Vec<TensorInfo>,
    pub total_params: u64,
    pub dims: ModelDims,
    pub files: Vec<WeightFile>,
    pub warnings: Vec<String>,
}

/// The tensors a GGUF map names, as the Hugging Face layout has them, and the GGUF file as their one weight file.
fn gguf_tensors(map_path: &Path) -> Result<(Vec<TensorInfo>, WeightFile)> {
    let map = GgufMap::read(map_path)?;
    let file = map
        .source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tensors: Vec<TensorInfo> = map
        .tensors
        .iter()
        .map(|(name, t)| TensorInfo {
            name: name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            params: t.shape.iter().product(),
            file: file.clone(),
            gguf: Some(GgufBlocks {
                ggml_type: t.type_name().into(),
                bytes: t.bytes,
                quantized: t.is_quantized(),
            }),
        })
        .collect();
    let weight_file = WeightFile {
        name: file,
        tensors: tensors.len(),
        bytes: map.tensors.values().map(|t| t.bytes).sum(),
    };
    Ok((tensors, weight_file))
}

impl ModelLayout {
    /// Inspects the checkpoint folder `dir`: reads config.json and every weight file's header, nothing more.
    pub fn inspect(dir: &Path) -> Result<ModelLayout> {
        let files = ModelFiles::find(dir)?;
        let mut config = ModelConfig::read(&files.config)?;
        let untied = config.tie_word_embeddings == Some(true) && crate::tie::stored_head_differs(dir)? == Some(true);
        if untied {
            config.tie_word_embeddings = Some(false);
        }
        if let Some(map) = &files.gguf_map {
            let (tensors, file) = gguf_tensors(map)?;
            return Self::from_parts(dir, &config, tensors, vec![file]);
        }
        let mut tensors = Vec::new();
        let mut weight_files = Vec::new();
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for path in &files.weights {
            let file = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let header = read_header(path)?;
            let mut bytes = 0;
            for t in &header.tensors {
                if let Some(other) = seen.insert(t.name.clone(), file.clone()) {
                    return Err(Error::BadSafetensors {
                        path: path.clone(),
                        reason: format!(
                            "tensor {} is also stored in {other}; the checkpoint is inconsistent",
                            t.name
                        ),
                    });
                }
                bytes += t.data_offsets.1 - t.data_offsets.0;
                let params = t.numel();
                tensors.push(TensorInfo {
                    name: t.name.clone(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    params,
                    file: file.clone(),
                    gguf: None,
                });
            }
            weight_files.push(WeightFile {
                name: file,
                tensors: header.tensors.len(),
                bytes,
            });
        }
        if let (Some(index), Some(map)) = (&files.index, &files.weight_map) {
            for (name, shard) in map {
                if seen.get(name) != Some(shard) {
                    return Err(Error::BadIndex {
                        path: index.clone(),
                        reason: format!("tensor {name} is listed in shard {shard} but that shard does not hold it"),
                    });
                }
            }
        }
        let mut layout = Self::from_parts(dir, &config, tensors, weight_files)?;
        if untied {
            layout.warnings.push(
                "config.json ties lm_head to the embeddings, but the checkpoint stores an lm_head with other values: \
                 it is trained and written as its own tensor, as transformers loads it (untied, with a warning)"
                    .into(),
            );
        }
        Ok(layout)
    }

    /// The layout of a checkpoint known only by its config.json and its weight files' headers: a Hub repo before
    /// any download (range requests read the headers). `place` (the repo id) names it in errors and as its folder.
    /// The same checks as `inspect`, except that shards are not matched against an index.
    pub fn from_headers(place: &str, config: serde_json::Value, shards: &[RemoteShard]) -> Result<ModelLayout> {
        let dir = Path::new(place);
        let mut config = ModelConfig::from_value(config).map_err(|reason| Error::BadConfig {
            path: dir.join("config.json"),
            reason,
        })?;
        let mut tensors = Vec::new();
        let mut files = Vec::new();
        let mut seen = BTreeSet::new();
        for shard in shards {
            let bad = |reason: String| Error::BadSafetensors {
                path: dir.join(&shard.name),
                reason,
            };
            let header_len = shard.header.len() as u64;
            if shard.size < 8 {
                return Err(bad(format!("the file is {} bytes, shorter than a header", shard.size)));
            }
            crate::safetensors::check_header_len(header_len, shard.size).map_err(bad)?;
            let data_len = shard.size - 8 - header_len;
            let (headers, _) = crate::safetensors::parse_header_json(&shard.header, data_len).map_err(bad)?;
            let mut bytes = 0;
            for t in &headers {
                if !seen.insert(t.name.clone()) {
                    return Err(bad(format!("tensor {} is also stored in another shard", t.name)));
                }
                bytes = u64::saturating_add(bytes, t.data_offsets.1.saturating_sub(t.data_offsets.0));
                tensors.push(TensorInfo {
                    name: t.name.clone(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    params: t.numel(),
                    file: shard.name.clone(),
                    gguf: None,
                });
            }
            files.push(WeightFile {
                name: shard.name.clone(),
                tensors: headers.len(),
                bytes,
            });
        }
        // A tie over a stored lm_head holds only if the two are equal, which headers cannot show; transformers'
        // safetensors never store a tied copy, so a stored one is read as untied (`inspect` checks the bytes).
        let stored_head = tensors.iter().any(|t| crate::tie::is_lm_head(&t.name));
        if stored_head && config.tie_word_embeddings == Some(true) {
            config.tie_word_embeddings = Some(false);
        }
        Self::from_parts(dir, &config, tensors, files)
    }

    /// Builds a layout from a parsed config and a tensor list (used by `inspect` and by tests).
    pub fn from_parts(
        dir: &Path,
        config: &ModelConfig,
        mut tensors: Vec<TensorInfo>,
        files: Vec<WeightFile>,
    ) -> Result<ModelLayout> {
        fold_packed(dir, &mut tensors)?;
        fold_fp8(dir, config, &mut tensors)?;
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        let (unplanned, mut tensors): (Vec<TensorInfo>, Vec<TensorInfo>) = tensors
            .into_iter()
            .partition(|t| is_buffer(&t.name) || config.dropped_on_load(&t.name));
        let mut warnings = Vec::new();
        let layer_prefix = find_layer_prefix(&tensors, config.num_layers).unwrap_or_default();
        let observed_layers = layer_index_count(&tensors, &layer_prefix);
        let num_layers = match config.num_layers {
            // A layer count the weights do not back is refused before anything is sized by it (a config of 10^9
            // layers would otherwise allocate for them all).
            Some(n) if n > observed_layers => {
                let under = match layer_prefix.as_str() {
                    "" => String::new(),
                    p => format!(" under {p}"),
                };
                return Err(Error::BadConfig {
                    path: dir.join("config.json"),
                    reason: format!(
                        "num_hidden_layers is {n}, but the weights hold {observed_layers} layers{under}: the config \
                         does not describe these weights"
                    ),
                });
            }
            Some(n) => {
                if !layer_prefix.is_empty() && n != observed_layers {
                    warnings.push(format!(
                        "config.json says {n} layers but the weights hold {observed_layers} under {layer_prefix}"
                    ));
                }
                n
            }
            None => observed_layers,
        };
        let has_lm_head_tensor = tensors.iter().any(|t| crate::tie::is_lm_head(&t.name));
        // transformers' per-family defaults differ; a missing flag is read from the checkpoint itself.
        let tie_word_embeddings = config.tie_word_embeddings.unwrap_or(!has_lm_head_tensor);
        let mut tied_aliases = Vec::new();
        if tie_word_embeddings && has_lm_head_tensor {
            tensors.retain(|t| {
                let alias = crate::tie::is_lm_head(&t.name);
                if alias {
                    tied_aliases.push(t.name.clone());
                }
                !alias
            });
        }

        let mut layer_modules: Vec<BTreeMap<String, ModuleInfo>> =
            vec![BTreeMap::new(); observed_layers.max(num_layers)];
        let mut other: BTreeMap<String, ModuleInfo> = BTreeMap::new();
        for t in tensors {
            match split_layer_name(&t.name, &layer_prefix) {
                Some((id, module, _)) if id < layer_modules.len() => {
                    let path = format!("{layer_prefix}.{id}.{module}");
                    push_tensor(&mut layer_modules[id], module.to_string(), path, t);
                }
                _ => {
                    let path = non_layer_module_path(&t.name);
                    let name = path.rsplit('.').next().unwrap_or(&path).to_string();
                    push_tensor(&mut other, path.clone(), path, t).name = name;
                }
            }
        }
        let layers: Vec<LayerInfo> = layer_modules
            .into_iter()
            .enumerate()
            .map(|(id, modules)| {
                let modules: Vec<ModuleInfo> = modules.into_values().collect();
                LayerInfo {
                    id,
                    params: modules.iter().map(|m| m.params).sum(),
                    modules,
                }
            })
            .collect();
        let mut non_layer_modules: Vec<ModuleInfo> = other.into_values().collect();
        let text_root = layer_prefix.rsplit_once('.').map_or("", |(root, _)| root);
        unique_short_names(&mut non_layer_modules, text_root);
        // Saturating: the sizes can come from a server's headers (from_headers), not only from files on disk.
        let total_params = layers
            .iter()
            .map(|l| l.params)
            .chain(non_layer_modules.iter().map(|m| m.params))
            .fold(0u64, u64::saturating_add);
        Ok(ModelLayout {
            model_dir: dir.to_path_buf(),
            architecture: config.architecture.clone(),
            model_type: config.model_type.clone(),
            multimodal: config.multimodal,
            num_layers,
            layer_prefix,
            layers,
            non_layer_modules,
            tie_word_embeddings,
            has_lm_head_tensor,
            tied_aliases,
            unplanned,
            total_params,
            dims: config.dims.clone(),
            files,
            warnings,
        })
    }

    /// Every planned tensor: layers bottom to top, then the non-layer modules.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorInfo> {
        self.layers
            .iter()
            .flat_map(|l| l.modules.iter())
            .chain(self.non_layer_modules.iter())
            .flat_map(|m| m.tensors.iter())
    }

    /// Sorted, de-duplicated names of the modules that appear inside layers.
    pub fn layer_module_names(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self
            .layers
            .iter()
            .flat_map(|l| l.modules.iter().map(|m| m.name.as_str()))
            .collect();
        set.into_iter().map(str::to_string).collect()
    }

    pub fn weight_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).fold(0, u64::saturating_add)
    }
}

/// A buffer stored in the checkpoint: state a model keeps beside its parameters (DeepSeek-V3's and GLM-4.5's router
/// `e_score_correction_bias`, updated by the load-balancing rule of pretraining, never by gradients; Gemma 4's
/// `layer_scalar`, a fixed factor on each layer's output). LLaMA-Factory never sees it among the parameters it
/// freezes.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with(".e_score_correction_bias") || name.ends_with(".layer_scalar")
}

fn push_tensor(map: &mut BTreeMap<String, ModuleInfo>, key: String, path: String, t: TensorInfo) -> &mut ModuleInfo {
    let m = map.entry(key.clone()).or_insert_with(|| ModuleInfo {
        kind: ModuleKind::classify(&key),
        name: key,
        path,
        params: 0,
        tensors: Vec::new(),
    });
    m.params += t.params;
    m.tensors.push(t);
    m
}

/// Gives each module outside the layers a short name of its own. A vision-language checkpoint has a vision tower
/// beside the text model, and both may hold a `norm` (Qwen3.5's `model.language_model.norm` and
/// `model.visual.merger.norm`): the module right under the text model's root (`text_root`, the layer stack's parent)
/// keeps the short name, so `--extra norm` means the text model's final norm as on a text-only checkpoint; every
/// other module of that name is named by the shortest end of its path that no other module's path ends with
/// (`merger.norm`).
fn unique_short_names(modules: &mut [ModuleInfo], text_root: &str) {
    let mut by_name: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, m) in modules.iter().enumerate() {
        by_name.entry(m.name.clone()).or_default().push(i);
    }
    let paths: Vec<String> = modules.iter().map(|m| m.path.clone()).collect();
    let taken_by_another = |suffix: &str, own: usize| {
        paths
            .iter()
            .enumerate()
            .any(|(i, p)| i != own && (p == suffix || p.ends_with(&format!(".{suffix}"))))
    };
    for (name, sharing) in by_name.into_iter().filter(|(_, sharing)| sharing.len() > 1) {
        let direct = format!("{text_root}.{name}");
        for i in sharing {
            if paths[i] == direct || paths[i] == name {
                continue;
            }
            let segments: Vec<&str> = paths[i].split('.').collect();
            let unique = (2..segments.len())
                .map(|k| segments[segments.len() - k..].join("."))
                .find(|suffix| !taken_by_another(suffix, i));
            modules[i].name = unique.unwrap_or_else(|| paths[i].clone());
        }
    }
}

/// Splits `<prefix>.<id>.<module>.<rest>` structurally; `None` when the name is not inside the layer stack.
pub fn split_layer_name<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str, &'a str)> {
    if prefix.is_empty() {
        return None;
    }
    let rest = name.strip_prefix(prefix)?.strip_prefix('.')?;
    let (id, rest) = rest.split_once('.')?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id = id.parse().ok()?;
    let (module, tail) = rest.split_once('.').unwrap_or((rest, ""));
    Some((id, module, tail))
}

/// The module a non-layer tensor belongs to: the name without its last segment, or, for tensors of another repeated
/// stack (a vision tower's `visual.blocks.3...`), the path up to the stack so it shows as one module.
fn non_layer_module_path(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    if let Some(i) = parts
        .iter()
        .position(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        if i > 0 {
            return parts[..i].join(".");
        }
    }
    if parts.len() > 1 {
        parts[..parts.len() - 1].join(".")
    } else {
        name.to_string()
    }
}

/// The dotted prefix of the repeated block: among the prefixes `p` of names `p.<int>.…`, the one whose distinct
/// index count equals the config's layer count (a VLM's vision tower has its own count), else the one with most.
fn find_layer_prefix(tensors: &[TensorInfo], config_layers: Option<usize>) -> Option<String> {
    let mut by_prefix: BTreeMap<&str, (BTreeSet<u64>, usize)> = BTreeMap::new();
    for t in tensors {
        let mut offset = 0;
        for seg in t.name.split('.') {
            if offset > 0 && !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
                let entry = by_prefix.entry(&t.name[..offset - 1]).or_default();
                if let Ok(i) = seg.parse() {
                    entry.0.insert(i);
                }
                entry.1 += 1;
                break;
            }
            offset += seg.len() + 1;
        }
    }
    let score = |(ids, n): &(BTreeSet<u64>, usize)| (Some(ids.len()) == config_layers, ids.len(), *n);
    by_prefix
        .into_iter()
        .max_by_key(|(_, v)| score(v))
        .map(|(p, _)| p.to_string())
}

fn layer_index_count(tensors: &[TensorInfo], prefix: &str) -> usize {
    tensors
        .iter()
        .filter_map(|t| split_layer_name(&t.name, prefix))
        .map(|(i, _, _)| i + 1)
        .max()
        .unwrap_or(0)
}

/// Each MXFP4 pair (`X_blocks`, `X_scales`; mxfp4.rs) as the dense bf16 tensor `X` it stands for: what the plan
/// trains, what the memory estimate counts and what a trained model holds.
fn fold_packed(dir: &Path, tensors: &mut Vec<TensorInfo>) -> Result<()> {
    let names = tensors.iter().map(|t| t.name.as_str());
    let bad = |file: &str, reason: String| Error::BadSafetensors {
        path: dir.join(file),
        reason,
    };
    let bases = crate::mxfp4::pairs(names).map_err(|(name, why)| {
        let file = tensors.iter().find(|t| t.name == name).map_or("", |t| t.file.as_str());
        bad(file, format!("tensor {name} {why}"))
    })?;
    for base in bases {
        let take = |tensors: &mut Vec<TensorInfo>, suffix: &str| {
            let at = tensors.iter().position(|t| t.name == format!("{base}{suffix}"));
            tensors.remove(at.expect("paired"))
        };
        let blocks = take(tensors, crate::mxfp4::BLOCKS_SUFFIX);
        let scales = take(tensors, crate::mxfp4::SCALES_SUFFIX);
        let packed = crate::mxfp4::Packed::of(&base, (blocks.dtype, &blocks.shape), (scales.dtype, &scales.shape))
            .map_err(|reason| bad(&blocks.file, reason))?;
        tensors.push(TensorInfo {
            name: base,
            dtype: DType::BF16,
            shape: packed.dense_shape(),
            params: packed.numel(),
            file: blocks.file,
            gguf: Some(GgufBlocks {
                ggml_type: "mxfp4".into(),
                bytes: blocks.params + scales.params,
                quantized: true,
            }),
        });
    }
    Ok(())
}

/// Each FP8 pair (`X.weight` in F8_E4M3, `X.weight_scale_inv`; fp8.rs) as the dense tensor `X.weight` it stands
/// for, in the checkpoint's dtype, with the pair's bytes as its frozen cost.
fn fold_fp8(dir: &Path, config: &ModelConfig, tensors: &mut Vec<TensorInfo>) -> Result<()> {
    let file_of = |tensors: &[TensorInfo], name: &str| {
        tensors
            .iter()
            .find(|t| t.name == name)
            .map_or(String::new(), |t| t.file.clone())
    };
    let bad = |file: String, reason: String| Error::BadSafetensors {
        path: dir.join(file),
        reason,
    };
    let named = tensors.iter().map(|t| (t.name.as_str(), t.dtype));
    let bases = crate::fp8::pairs(named, config.fp8.as_ref())
        .map_err(|(name, why)| bad(file_of(tensors, &name), format!("tensor {name} {why}")))?;
    let Some(scheme) = config.fp8 else { return Ok(()) };
    let dense = crate::fp8::dense_dtype(&config.raw);
    let mut scales = BTreeMap::new();
    for t in tensors.iter() {
        if let Some(base) = t.name.strip_suffix(crate::fp8::SCALE_SUFFIX) {
            scales.insert(base.to_string(), (t.dtype, t.shape.clone()));
        }
    }
    tensors.retain(|t| !t.name.ends_with(crate::fp8::SCALE_SUFFIX));
    for t in tensors.iter_mut().filter(|t| bases.binary_search(&t.name).is_ok()) {
        let (scale_dtype, scale_shape) = &scales[&t.name];
        let m = crate::fp8::Fp8Matrix::of(&t.name, (t.dtype, &t.shape), (*scale_dtype, scale_shape), &scheme)
            .map_err(|reason| bad(t.file.clone(), reason))?;
        t.dtype = dense;
        t.gguf = Some(GgufBlocks {
            ggml_type: "fp8_e4m3".into(),
            bytes: m.held_bytes(),
            quantized: true,
        });
    }
    Ok(())
}
