//! Export of a model trained from a GGUF file (view.rs): the source file copied whole, then only the tensors
//! training changed re-encoded in their own GGML type and written over their own blocks. Every other byte
//! (metadata, frozen tensors, alignment padding) is the source's, so the frozen tensors are the original blocks
//! byte for byte, and the file loads wherever the source did. A trained tensor keeps its type, shape and so its
//! size: nothing moves.

use crate::error::{GgufError, Result};
use crate::export::{model_dir_of, place, ExportOptions, ExportReport};
use crate::names::{reorder_rows, rope_permutation};
use crate::quant::encode;
use crate::Progress;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use freezetune_core::files::ModelFiles;
use freezetune_core::gguf_map::{GgufFingerprint, GgufSource, GgufTensor, GGUF_SOURCE_FILE};
use freezetune_train::gguf_blocks::ggml_dtype;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The GGUF source a model folder (or a run's `final/`) records, if it was trained from one.
pub fn gguf_source(input: &Path) -> Result<Option<GgufSource>> {
    let Ok(dir) = model_dir_of(input) else { return Ok(None) };
    let path = dir.join(GGUF_SOURCE_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| GgufError::io(&path, e))?;
    let record: GgufSource = serde_json::from_str(&text).map_err(|e| GgufError::BadInput {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    record
        .map
        .check()
        .map_err(|reason| GgufError::BadInput { path, reason })?;
    Ok(Some(record))
}

/// Writes `dest`: the run's GGUF source with its trained tensors replaced.
pub fn export_patched(
    input: &Path,
    dest: &Path,
    options: &ExportOptions,
    progress: &mut dyn FnMut(&Progress) -> bool,
) -> Result<ExportReport> {
    let dir = model_dir_of(input)?;
    let record = gguf_source(&dir)?.ok_or_else(|| GgufError::BadInput {
        path: dir.clone(),
        reason: format!("has no {GGUF_SOURCE_FILE}: it was not trained from a GGUF file"),
    })?;
    let source = &record.map.source;
    if GgufFingerprint::of(source)? != record.map.fingerprint {
        return Err(GgufError::BadInput {
            path: source.clone(),
            reason: "changed since this model was trained from it; its frozen tensors cannot be copied from it \
                     (restore the file, or export with --type to re-encode every tensor)"
                .into(),
        });
    }
    if dest.exists() && !options.force {
        return Err(GgufError::Exists(dest.into()));
    }
    let files = ModelFiles::find(&dir)?;
    // SAFETY: the files are only read, and FreezeTune does not write a model folder while exporting it.
    let st = unsafe { MmapedSafetensors::multi(&files.weights) }.map_err(GgufError::candle("reading the weights"))?;
    let tmp = crate::hidden_sibling(dest, "partial");
    let written = std::fs::copy(source, &tmp)
        .map_err(|e| GgufError::io(&tmp, e))
        .and_then(|_| overwrite_trained(&tmp, &record, &st, progress))
        .and_then(|()| place(&tmp, dest, options.force));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    let mut warnings = Vec::new();
    if options.modelfile || options.name.is_some() {
        warnings.push(
            "the file keeps its source's metadata (general.name included) and no Modelfile was written: only the \
             trained tensors change"
                .into(),
        );
    }
    Ok(ExportReport {
        bytes: std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0),
        path: dest.into(),
        architecture: crate::names::gguf_arch(freezetune_train::DecoderConfig::read(&dir)?.architecture).into(),
        source: dir,
        kind: format!("source ({} tensors re-encoded)", record.trained.len()),
        tensors: record.map.tensors.len(),
        tensor_types: types_of(&record),
        modelfile: None,
        warnings,
    })
}

fn types_of(record: &GgufSource) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for t in record.map.tensors.values() {
        *counts.entry(t.type_name().to_string()).or_insert(0) += 1;
    }
    counts
}

/// Each trained tensor of `final/` encoded as its source tensor and written over its blocks in `file`, synced.
fn overwrite_trained(
    file: &Path,
    record: &GgufSource,
    st: &MmapedSafetensors,
    progress: &mut dyn FnMut(&Progress) -> bool,
) -> Result<()> {
    let out = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .map_err(|e| GgufError::io(file, e))?;
    let total = record.trained.len();
    for (i, name) in record.trained.iter().enumerate() {
        if !progress(&Progress {
            done: i,
            total,
            tensor: name.clone(),
        }) {
            return Err(GgufError::Stopped);
        }
        let t = record.map.tensors.get(name).ok_or_else(|| GgufError::BadInput {
            path: record.map.source.clone(),
            reason: format!("the trained tensor {name} is not in the GGUF file"),
        })?;
        let bytes = encode_like(st, name, t)?;
        out.write_all_at(&bytes, record.map.data_offset + t.offset)
            .map_err(|e| GgufError::io(file, e))?;
    }
    out.sync_all().map_err(|e| GgufError::io(file, e))?;
    progress(&Progress {
        done: total,
        total,
        tensor: String::new(),
    });
    Ok(())
}

/// A trained tensor in its source tensor's layout and type: llama's rope rows permuted again, gemma's norms as
/// `1 + weight`, then encoded (q4_K as llama.cpp encodes it).
fn encode_like(st: &MmapedSafetensors, name: &str, t: &GgufTensor) -> Result<Vec<u8>> {
    let err = GgufError::candle(format!("encoding {name} as {}", t.type_name()));
    let dtype =
        ggml_dtype(t.ggml_type).ok_or_else(|| GgufError::Unsupported(format!("{name}: GGML type {}", t.ggml_type)))?;
    let encoded = (|| {
        let mut v = st.load(name, &Device::Cpu)?.to_dtype(DType::F32)?;
        if let Some(heads) = t.rope_heads {
            v = reorder_rows(&v, rope_permutation(v.dim(0)?, heads))?;
        }
        if t.norm_offset {
            v = (v + 1.0)?;
        }
        let cols = v.dims().last().copied().unwrap_or(1);
        encode(&v.flatten_all()?.to_vec1::<f32>()?, cols, dtype)
    })()
    .map_err(err)?;
    if encoded.len() as u64 != t.bytes {
        return Err(GgufError::BadInput {
            path: name.into(),
            reason: format!("encodes to {} bytes where the source holds {}", encoded.len(), t.bytes),
        });
    }
    Ok(encoded)
}
