//! Writing a complete Hugging Face checkpoint: the model folder's config, tokenizer and template files, and one
//! `model.safetensors` with every tensor. Frozen tensors are copied byte for byte from the input; trainable ones are
//! cast back to the dtype they had (so are tensors a layer schedule trained and then froze again). A model trained
//! from a GGUF file gets its frozen tensors' values in the dtype its map names each (a quantized one rounded to f16,
//! as import-gguf writes it) and `gguf_source.json` for `export-gguf`. A model read from MXFP4 experts (gpt-oss as
//! released) is written with them dense, in bf16 (the values transformers unpacks), and its config.json without
//! the `quantization_config` that would make transformers look for packed tensors. The folder is assembled beside
//! its destination and renamed into place.

use crate::error::{io, Result, TrainError};
use crate::params::Params;
use crate::weights::WeightFiles;
use freezetune_core::files::{ModelFiles, INDEX_FILE};
use freezetune_core::gguf_map::{GgufMap, GgufSource, GGUF_MAP_FILE, GGUF_SOURCE_FILE};
use freezetune_core::layout::ModelLayout;
use freezetune_core::safetensors::DType as StDType;
use std::collections::BTreeMap;
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
    if write_weights(layout, params, &staging.join("model.safetensors"))? {
        drop_quantization_config(&staging.join("config.json"))?;
    }
    if dest.exists() {
        std::fs::remove_dir_all(dest).map_err(io(dest))?;
    }
    std::fs::rename(&staging, dest).map_err(io(dest))?;
    Ok(dest.to_path_buf())
}

/// Writes every tensor; returns whether some were read from MXFP4 pairs (and so are written dense).
fn write_weights(layout: &ModelLayout, params: &Params, path: &Path) -> Result<bool> {
    let files = ModelFiles::find(&layout.model_dir)?;
    let source = WeightFiles::open(&files.weights)?;
    let mut tensors: Vec<(String, StDType, Vec<u64>)> = layout
        .tensors()
        .chain(&layout.unplanned)
        .map(|t| (t.name.clone(), t.dtype, t.shape.clone()))
        .collect();
    let shapes: BTreeMap<&String, Vec<usize>> = source.tensors().collect();
    for alias in &layout.tied_aliases {
        let shape = shapes.get(alias).ok_or_else(|| TrainError::Tensor {
            name: alias.clone(),
            reason: "is not in the checkpoint's weight files".into(),
        })?;
        let embed = layout.tensors().find(|t| t.name.ends_with("embed_tokens.weight"));
        let dtype = embed.map(|e| e.dtype).unwrap_or(StDType::F32);
        tensors.push((alias.clone(), dtype, shape.iter().map(|&d| d as u64).collect()));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0u64;
    for (name, dtype, shape) in &tensors {
        let bytes = dtype.bytes_for(shape.iter().product());
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype.name(), "shape": shape, "data_offsets": [offset, offset + bytes]}),
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
    for (name, dtype, _) in &tensors {
        let bytes = match params.trained_value(name) {
            Some(value) => trained_bytes(&value, name, *dtype)?,
            // Frozen: the checkpoint's bytes; a GGUF file's tensor, its values in the dtype the map names (rounded to
            // f16 for a quantized one).
            // MXFP4 experts: unpacked to bf16 (the layout's dtype for them), one expert at a time.
            None if *dtype == StDType::BF16 && source.write_unpacked_bf16(name, &mut out, path)? => continue,
            None => match source.raw_bytes(name)? {
                Some(bytes) => bytes,
                None => trained_bytes(&source.load(name)?, name, *dtype)?,
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
    Ok(source.has_packed())
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
