//! Writing a complete Hugging Face checkpoint: the model folder's config, tokenizer and template files, and one
//! `model.safetensors` with every tensor. Frozen tensors are copied byte for byte from the input; trainable ones are
//! cast back to the dtype they had (so are tensors a layer schedule trained and then froze again). A model trained
//! from a GGUF file gets its frozen tensors' values in the dtype its map names each (a quantized one rounded to f16,
//! as import-gguf writes it) and `gguf_source.json` for `export-gguf`. A model read from MXFP4 experts (gpt-oss as
//! released) is written with them dense, in bf16 (the values transformers unpacks), and its config.json without
//! the `quantization_config` that would make transformers look for packed tensors. A model read from FP8 weights
//! (DeepSeek-V3, Qwen3's FP8 builds) keeps them where it can: a frozen weight's codes and scales are copied as
//! stored, but where any weight of a unit transformers converts whole (a projection; a layer's experts) trained,
//! the whole unit is written dense (its frozen weights dequantized) and added, under transformers' module name, to
//! `quantization_config.modules_to_not_convert`. The folder is assembled beside its
//! destination and renamed into place.

use crate::error::{io, Result, TrainError};
use crate::params::Params;
use crate::weights::WeightFiles;
use freezetune_core::files::{ModelFiles, INDEX_FILE};
use freezetune_core::fp8;
use freezetune_core::gguf_map::{GgufMap, GgufSource, GGUF_MAP_FILE, GGUF_SOURCE_FILE};
use freezetune_core::layout::ModelLayout;
use freezetune_core::safetensors::DType as StDType;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Raw little-endian bytes of a trained tensor in the checkpoint's dtype, rounded (to nearest even) from the f32
/// master (or from the trained constant a schedule left it as). Copied to the host first: the casts run there (an
/// f64 checkpoint cannot be cast to on Metal, which has no f64).
fn trained_bytes(value: &candle_core::Tensor, name: &str, dtype: StDType) -> Result<Vec<u8>> {
    let err = |e: candle_core::Error| TrainError::Candle {
        context: format!("exporting {name}"),
        source: e,
    };
    let t = value
        .to_device(&candle_core::Device::Cpu)
        .and_then(|t| t.to_dtype(candle_core::DType::F32))
        .and_then(|t| t.flatten_all())
        .map_err(err)?;
    Ok(match dtype {
        StDType::F32 => t
            .to_vec1::<f32>()
            .map_err(err)?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        StDType::F64 => t
            .to_dtype(candle_core::DType::F64)
            .and_then(|t| t.to_vec1::<f64>())
            .map_err(err)?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        StDType::BF16 => t
            .to_dtype(candle_core::DType::BF16)
            .and_then(|t| t.to_vec1::<half::bf16>())
            .map_err(err)?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        StDType::F16 => t
            .to_dtype(candle_core::DType::F16)
            .and_then(|t| t.to_vec1::<half::f16>())
            .map_err(err)?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        other => {
            return Err(TrainError::Tensor {
                name: name.into(),
                reason: format!("a trainable tensor cannot be {other}"),
            })
        }
    })
}

/// Writes `dest` (e.g. `<run>/final`) from the input checkpoint and the trained parameters.
pub fn export_checkpoint(layout: &ModelLayout, params: &Params, dest: &Path) -> Result<PathBuf> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    let staging = parent.join(format!(
        ".{}.partial",
        dest.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
    ));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    for entry in std::fs::read_dir(&layout.model_dir).map_err(io(&layout.model_dir))? {
        let path = entry.map_err(io(&layout.model_dir))?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // The GGUF map is not copied: `final/` holds every tensor in model.safetensors (and records its GGUF
        // source in gguf_source.json).
        let weights_file = name.ends_with(".safetensors") || name == INDEX_FILE || name == GGUF_MAP_FILE;
        if path.is_file() && !weights_file && name != GGUF_SOURCE_FILE && !name.starts_with('.') {
            std::fs::copy(&path, staging.join(&name)).map_err(io(&path))?;
        }
    }
    let written = write_weights(layout, params, &staging.join("model.safetensors"))?;
    match written {
        Written::Mxfp4Dense => drop_quantization_config(&staging.join("config.json"))?,
        Written::Fp8 { dense_units } if !dense_units.is_empty() => {
            leave_unconverted(&staging.join("config.json"), &dense_units)?
        }
        _ => {}
    }
    if dest.exists() {
        std::fs::remove_dir_all(dest).map_err(io(dest))?;
    }
    std::fs::rename(&staging, dest).map_err(io(dest))?;
    Ok(dest.to_path_buf())
}

/// What a written model.safetensors holds that config.json must say.
enum Written {
    Plain,
    /// Experts read from MXFP4 pairs, written dense.
    Mxfp4Dense,
    /// FP8 weights: those that stayed frozen as stored, the units (fp8.rs's `conversion_unit`) holding a trained
    /// one dense.
    Fp8 {
        dense_units: BTreeSet<String>,
    },
}

/// One entry of the written file and where its bytes come from.
struct Entry {
    name: String,
    dtype: StDType,
    shape: Vec<u64>,
    bytes: Bytes,
}

enum Bytes {
    /// The tensor's values: trained, the checkpoint's bytes, or converted into `dtype`.
    Value,
    /// An FP8 weight's codes, or its scales (`name` is the weight's), as stored.
    Fp8Codes,
    Fp8Scales(String),
}

/// Every tensor, with the units of FP8 weights a trained one is in written dense (transformers converts a unit
/// whole: a layer's experts are one fused module).
fn entries(layout: &ModelLayout, params: &Params, source: &WeightFiles) -> Result<(Vec<Entry>, BTreeSet<String>)> {
    let shapes: BTreeMap<&String, Vec<usize>> = source.tensors().collect();
    let mut tensors: Vec<(String, StDType, Vec<u64>)> = layout
        .tensors()
        .chain(&layout.unplanned)
        .map(|t| (t.name.clone(), t.dtype, t.shape.clone()))
        .collect();
    for alias in &layout.tied_aliases {
        let shape = shapes.get(alias).ok_or_else(|| TrainError::Tensor {
            name: alias.clone(),
            reason: "is not in the checkpoint's weight files".into(),
        })?;
        let embed = layout.tensors().find(|t| t.name.ends_with("embed_tokens.weight"));
        let dtype = embed.map(|e| e.dtype).unwrap_or(StDType::F32);
        tensors.push((alias.clone(), dtype, shape.iter().map(|&d| d as u64).collect()));
    }
    let model_type = layout.model_type.as_deref().unwrap_or_default();
    let dense_units: BTreeSet<String> = params
        .trained_values()
        .map(|(n, _)| n)
        .filter(|n| source.is_fp8(n))
        .map(|n| fp8::conversion_unit(n, model_type))
        .collect();
    let mut out = Vec::with_capacity(tensors.len());
    for (name, dtype, shape) in tensors {
        match source.fp8_shape(&name) {
            Some((scale_dtype, scale_shape)) if !dense_units.contains(&fp8::conversion_unit(&name, model_type)) => {
                out.push(Entry {
                    name: format!("{name}{}", fp8::SCALE_SUFFIX),
                    dtype: scale_dtype,
                    shape: scale_shape,
                    bytes: Bytes::Fp8Scales(name.clone()),
                });
                out.push(Entry {
                    name,
                    dtype: StDType::F8E4M3,
                    shape,
                    bytes: Bytes::Fp8Codes,
                });
            }
            _ => out.push(Entry {
                name,
                dtype,
                shape,
                bytes: Bytes::Value,
            }),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((out, dense_units))
}

/// Writes every tensor, and says what config.json must say of them.
fn write_weights(layout: &ModelLayout, params: &Params, path: &Path) -> Result<Written> {
    let files = ModelFiles::find(&layout.model_dir)?;
    let scheme = freezetune_core::config::ModelConfig::read(&files.config)?.fp8;
    let source = WeightFiles::open(&files.weights, scheme.as_ref())?;
    let (tensors, dense_units) = entries(layout, params, &source)?;
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0u64;
    for e in &tensors {
        let bytes = e.dtype.bytes_for(e.shape.iter().product());
        header.insert(
            e.name.clone(),
            serde_json::json!({"dtype": e.dtype.name(), "shape": e.shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut text = serde_json::to_string(&header).expect("json");
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(io(path))?);
    out.write_all(&(text.len() as u64).to_le_bytes()).map_err(io(path))?;
    out.write_all(text.as_bytes()).map_err(io(path))?;
    for Entry { name, dtype, bytes, .. } in &tensors {
        let bytes = match bytes {
            Bytes::Fp8Scales(weight) => source.fp8_stored(weight, true)?,
            Bytes::Fp8Codes => source.fp8_stored(name, false)?,
            Bytes::Value => match params.trained_value(name) {
                Some(value) => trained_bytes(&value, name, *dtype)?,
                // Frozen: the checkpoint's bytes; a GGUF file's tensor, its values in the dtype the map names
                // (rounded to f16 for a quantized one).
                // MXFP4 experts: unpacked to bf16 (the layout's dtype for them), one expert at a time.
                None if *dtype == StDType::BF16 && source.write_unpacked_bf16(name, &mut out, path)? => continue,
                None => match source.raw_bytes(name)? {
                    Some(bytes) => bytes,
                    None => trained_bytes(&source.load(name)?, name, *dtype)?,
                },
            },
        };
        out.write_all(&bytes).map_err(io(path))?;
    }
    let file = out.into_inner().map_err(|e| TrainError::Io {
        path: path.to_path_buf(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io(path))?;
    if let Some(map) = source.gguf_map() {
        write_gguf_source(map, params, path.with_file_name(GGUF_SOURCE_FILE).as_path())?;
    }
    Ok(match (source.has_packed(), scheme.is_some()) {
        (true, _) => Written::Mxfp4Dense,
        (false, true) => Written::Fp8 { dense_units },
        (false, false) => Written::Plain,
    })
}

/// config.json with `units` added to the FP8 `quantization_config.modules_to_not_convert` (in the staging folder,
/// so rewritten in place): transformers then loads their dense weights as plain linear layers, and converts the
/// rest as before.
fn leave_unconverted(path: &Path, units: &BTreeSet<String>) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut config: serde_json::Value = serde_json::from_str(&text).map_err(|e| freezetune_core::Error::BadConfig {
        path: path.to_path_buf(),
        reason: format!("cannot be read back to list the trained FP8 modules: {e}"),
    })?;
    let q = match config.get_mut("quantization_config") {
        Some(q) => q,
        None => config
            .get_mut("text_config")
            .and_then(|t| t.get_mut("quantization_config"))
            .expect("an FP8 checkpoint's config has quantization_config"),
    };
    let mut listed: BTreeSet<String> = q["modules_to_not_convert"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let mut ordered: Vec<serde_json::Value> = q["modules_to_not_convert"].as_array().cloned().unwrap_or_default();
    for unit in units {
        if listed.insert(unit.clone()) {
            ordered.push(unit.clone().into());
        }
    }
    q["modules_to_not_convert"] = ordered.into();
    let text = serde_json::to_string_pretty(&config).expect("json") + "\n";
    std::fs::write(path, text).map_err(io(path))
}

/// config.json without `quantization_config` (in the staging folder, so rewritten in place).
fn drop_quantization_config(path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut config: serde_json::Value = serde_json::from_str(&text).map_err(|e| freezetune_core::Error::BadConfig {
        path: path.to_path_buf(),
        reason: format!("cannot be read back to drop its quantization_config: {e}"),
    })?;
    if let Some(map) = config.as_object_mut() {
        map.remove("quantization_config");
    }
    let text = serde_json::to_string_pretty(&config).expect("json") + "\n";
    std::fs::write(path, text).map_err(io(path))
}

/// What `export-gguf` needs to write the source GGUF back with only the trained tensors re-encoded: the map and
/// every tensor training changed.
fn write_gguf_source(map: &GgufMap, params: &Params, path: &Path) -> Result<()> {
    let trained: Vec<String> = params.trained_values().map(|(n, _)| n.clone()).collect();
    let record = GgufSource {
        map: map.clone(),
        trained,
    };
    let text = serde_json::to_string_pretty(&record).expect("json");
    std::fs::write(path, text).map_err(io(path))
}
