//! Export of a model trained from a GGUF file (view.rs): the source file copied whole, then only the tensors
//! training changed re-encoded in their own GGML type and written over their own blocks. Every other byte
//! (metadata, frozen tensors, alignment padding) is the source's, so the frozen tensors are the original blocks
//! byte for byte, and the file loads wherever the source did. A trained tensor keeps its type, shape and so its
//! size: nothing moves.

use crate::error::{GgufError, Result};
use crate::export::{model_dir_of, place, ExportOptions, ExportReport};
use crate::format::type_id;
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
    let restore = "restore the file, or export with --type to re-encode every tensor from final/";
    let now = GgufFingerprint::of(source).map_err(|e| GgufError::BadInput {
        path: source.clone(),
        reason: format!("this model was trained from it, and it cannot be read now ({e}); {restore}"),
    })?;
    if now != record.map.fingerprint {
        return Err(GgufError::BadInput {
            path: source.clone(),
            reason: format!(
                "changed since this model was trained from it; its frozen tensors cannot be copied from it ({restore})"
            ),
        });
    }
    if dest.exists() && !options.force {
        return Err(GgufError::Exists(dest.into()));
    }
    let files = ModelFiles::find(&dir)?;
    // SAFETY: the files are only read, and FreezeTune does not write a model folder while exporting it.
    let st = unsafe { MmapedSafetensors::multi(&files.weights) }.map_err(GgufError::candle("reading the weights"))?;
    check_against_file(&record)?;
    let tmp = crate::hidden_sibling(dest, "partial");
    let written = copy_source(source, &tmp)
        .and_then(|out| overwrite_trained(&out, &tmp, &record, &st, progress))
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
        tensor_types: crate::count_types(record.map.tensors.values().filter_map(|t| ggml_dtype(t.ggml_type))),
        modelfile: None,
        warnings,
    })
}

/// The record's places, checked against the file itself (its validated header and tensor table): the data
/// section starts where the record says, and every trained tensor is there with its name, type, shape and offset.
/// A record that says otherwise would have the export write over other bytes.
fn check_against_file(record: &GgufSource) -> Result<()> {
    let g = crate::import::Gguf::open(&record.map.source)?;
    let bad = |reason: String| GgufError::BadInput {
        path: record.map.source.clone(),
        reason: format!("{reason}; {GGUF_SOURCE_FILE} does not describe this file (export with --type instead)"),
    };
    if g.content.tensor_data_offset != record.map.data_offset {
        return Err(bad(format!(
            "tensor data starts at {}, not {}",
            g.content.tensor_data_offset, record.map.data_offset
        )));
    }
    for name in &record.trained {
        let t = record
            .map
            .tensors
            .get(name)
            .ok_or_else(|| bad(format!("the trained tensor {name} has no place in it")))?;
        let info = g
            .content
            .tensor_infos
            .get(&t.gguf)
            .ok_or_else(|| bad(format!("it has no tensor {}", t.gguf)))?;
        let mut dims: Vec<u64> = info.shape.dims().iter().map(|&d| d as u64).collect();
        let mut offset = info.offset;
        // One expert of a stacked tensor: that expert's slice.
        if let Some(e) = t.expert {
            let experts = match dims.is_empty() {
                true => 0,
                false => dims.remove(0),
            };
            offset = if e < experts { offset + e * t.bytes } else { u64::MAX };
        }
        if type_id(info.ggml_dtype) != t.ggml_type || offset != t.offset || dims != t.shape {
            return Err(bad(format!(
                "its tensor {} is not where, or what, the record says",
                t.gguf
            )));
        }
    }
    Ok(())
}

/// A writable copy of the source at `tmp` (created, not `fs::copy`'d: a read-only source would give a read-only
/// copy), open for the trained tensors to be written into.
fn copy_source(source: &Path, tmp: &Path) -> Result<std::fs::File> {
    let mut from = std::fs::File::open(source).map_err(|e| GgufError::io(source, e))?;
    let mut out = std::fs::File::create(tmp).map_err(|e| GgufError::io(tmp, e))?;
    std::io::copy(&mut from, &mut out).map_err(|e| GgufError::io(tmp, e))?;
    Ok(out)
}

/// Each trained tensor of `final/` encoded as its source tensor and written over its blocks in `out`, synced.
fn overwrite_trained(
    out: &std::fs::File,
    file: &Path,
    record: &GgufSource,
    st: &MmapedSafetensors,
    progress: &mut dyn FnMut(&Progress) -> bool,
) -> Result<()> {
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
    let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
    let encoded = (|| {
        let mut v = st.load(name, &Device::Cpu)?.to_dtype(DType::F32)?;
        if v.dims() != shape.as_slice() {
            candle_core::bail!("final/ holds it as {:?}, the GGUF file as {shape:?}", v.dims())
        }
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
