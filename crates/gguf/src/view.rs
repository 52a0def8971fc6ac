//! A GGUF file trained where it lies: a small model folder beside nothing of the user's (in FreezeTune's cache)
//! with config.json, the tokenizer and chat template rebuilt from the file (as import does), and core's
//! `model.gguf.json` mapping each Hugging Face tensor to its blocks in the file. Inspecting, planning, the fit
//! check and training read that folder like any other; the trainer keeps the file's quantized tensors in their
//! blocks while frozen and dequantizes only the trainable ones into f32 masters. Nothing is converted to disk.
//!
//! The folder is written once per file and reused while the file's size and modification time are unchanged.

use crate::error::{GgufError, Result};
use crate::format::{bytes_for, type_id};
use crate::import::{place_dir, read_model, write_files, ImportDType};
use crate::names::{offset_norm, rope_heads};
use candle_core::quantized::GgmlDType;
use candle_core::DType;
use freezetune_core::gguf_map::{GgufFingerprint, GgufMap, GgufTensor, GGUF_MAP_FILE};
use freezetune_core::safetensors::DType as StDType;
use std::path::{Path, PathBuf};

/// Whether `path` names a GGUF file (by its magic, whatever its extension).
pub fn is_gguf_file(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    path.is_file()
        && std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
        && &magic == b"GGUF"
}

/// Where mapped folders live: `$FREEZETUNE_GGUF_MAPS`, else `$XDG_CACHE_HOME/freezetune/gguf`, else
/// `~/.cache/freezetune/gguf`.
pub fn default_maps_dir() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = env("FREEZETUNE_GGUF_MAPS") {
        return dir;
    }
    let cache = env("XDG_CACHE_HOME").unwrap_or_else(|| env("HOME").unwrap_or_else(std::env::temp_dir).join(".cache"));
    cache.join("freezetune").join("gguf")
}

/// The model folder for GGUF `file` under `maps_dir`: reused while it maps this very file unchanged, else
/// written (atomically) now.
pub fn mapped_folder(file: &Path, maps_dir: &Path) -> Result<PathBuf> {
    let file = std::fs::canonicalize(file).map_err(|e| GgufError::io(file, e))?;
    let stem = file
        .file_stem()
        .map(|s| {
            s.to_string_lossy()
                .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_', "_")
        })
        .unwrap_or_default();
    let dest = maps_dir.join(format!("{stem}-{:016x}", fnv(file.to_string_lossy().as_bytes())));
    if let Ok(map) = GgufMap::read(&dest.join(GGUF_MAP_FILE)) {
        if map.source == file && map.written_by == written_by() && dest.join("config.json").is_file() {
            return Ok(dest);
        }
    }
    write_mapped_folder(&file, &dest)?;
    Ok(dest)
}

/// Writes the mapped folder for `file` at `dest`, replacing one there.
pub fn write_mapped_folder(file: &Path, dest: &Path) -> Result<()> {
    let fingerprint = GgufFingerprint::of(file)?;
    let m = read_model(file, ImportDType::Auto, &|| Ok(()))?;
    let mut map = GgufMap::new(file.to_path_buf(), fingerprint, m.g.content.tensor_data_offset);
    map.written_by = written_by();
    // A quantized tensor takes the folder's dtype (f16 in a quantized file, as import writes it); a float one
    // keeps its own, so trained norms and biases are written back as the file held them.
    let folder_dtype = match m.target.dtype {
        DType::F32 => StDType::F32,
        DType::BF16 => StDType::BF16,
        _ => StDType::F16,
    };
    for t in &m.tensors {
        let info = &m.g.content.tensor_infos[&t.gguf];
        let dtype = match info.ggml_dtype {
            GgmlDType::F32 => StDType::F32,
            GgmlDType::F16 => StDType::F16,
            GgmlDType::BF16 => StDType::BF16,
            _ => folder_dtype,
        };
        // One expert of a stacked tensor: its blocks follow the experts before it.
        let bytes = bytes_for(info.ggml_dtype, t.shape.iter().product()) as u64;
        let tensor = GgufTensor {
            gguf: t.gguf.clone(),
            ggml_type: type_id(info.ggml_dtype),
            shape: t.shape.iter().map(|&d| d as u64).collect(),
            offset: info.offset + t.expert.map_or(0, |e| e as u64 * bytes),
            bytes,
            expert: t.expert.map(|e| e as u64),
            dtype,
            rope_heads: rope_heads(&t.hf, m.target.arch, m.target.heads, m.target.kv_heads),
            norm_offset: offset_norm(&t.hf, m.target.arch),
        };
        map.tensors.insert(t.hf.clone(), tensor);
    }
    map.check().map_err(|reason| GgufError::BadInput {
        path: file.into(),
        reason,
    })?;
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| GgufError::io(parent, e))?;
    }
    let tmp = crate::hidden_sibling(dest, "partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| GgufError::io(&tmp, e))?;
    let map_path = tmp.join(GGUF_MAP_FILE);
    let written = write_files(&tmp, &m.g, &m.config, &m.vocab)
        .and_then(|()| {
            let text = serde_json::to_string_pretty(&map).expect("json");
            std::fs::write(&map_path, text).map_err(|e| GgufError::io(&map_path, e))
        })
        .and_then(|()| place_dir(&tmp, dest, true));
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written
}

/// This program's mark in a map: a map another version wrote is written again.
fn written_by() -> String {
    format!("freezetune {}", env!("CARGO_PKG_VERSION"))
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
    })
}
