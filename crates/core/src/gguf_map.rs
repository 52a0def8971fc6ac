//! A GGUF file trained where it lies: `model.gguf.json` in a model folder names the GGUF file and, for every tensor
//! of the Hugging Face layout, where its blocks are in that file and how to read them (llama.cpp's type, llama's q/k
//! rows to put back in order, gemma's `1 + weight` norms). The gguf crate writes the map beside config.json and the
//! tokenizer it rebuilds; the layout, the memory estimate and the trainer read the tensors through it, so frozen
//! quantized tensors stay in their blocks and nothing is dequantized to disk.
//!
//! The map records the file's size and modification time: a file changed since the map was written is refused by
//! name (its offsets would point at other bytes), and the CLI writes a new map.

use crate::error::{Error, Result};
use crate::safetensors::DType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const GGUF_MAP_FILE: &str = "model.gguf.json";
/// What a run's `final/` records of the GGUF it was trained from (the map plus the trained tensors), so
/// `export-gguf` can write the source file back with only those tensors re-encoded.
pub const GGUF_SOURCE_FILE: &str = "gguf_source.json";
const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GgufFingerprint {
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub modified_ns: u128,
}

impl GgufFingerprint {
    pub fn of(path: &Path) -> Result<GgufFingerprint> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let modified_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        Ok(GgufFingerprint {
            size: meta.len(),
            modified_ns,
        })
    }
}

/// One tensor: its GGUF name and blocks, and how they become the Hugging Face tensor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GgufTensor {
    pub gguf: String,
    /// llama.cpp's `ggml_type` id (0 f32, 1 f16, 8 q8_0, 12 q4_K, 14 q6_K, 30 bf16, ...).
    pub ggml_type: u32,
    /// The Hugging Face shape (rows first).
    pub shape: Vec<u64>,
    /// Offset of the blocks from the start of the file's tensor data.
    pub offset: u64,
    /// One expert of llama.cpp's stacked experts (`ffn_*_exps`, experts first): which one. `offset` and `bytes`
    /// are that expert's slice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expert: Option<u64>,
    pub bytes: u64,
    /// The dtype the dequantized tensor takes in a Hugging Face folder (`final/`).
    pub dtype: DType,
    /// llama's q/k rows are stored permuted for llama.cpp's rope: the heads the tensor holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_heads: Option<usize>,
    /// Gemma's norms: the file holds `1 + weight`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub norm_offset: bool,
}

impl GgufTensor {
    /// Whether the blocks are a quantized format (not f32/f16/bf16).
    pub fn is_quantized(&self) -> bool {
        !matches!(self.ggml_type, 0 | 1 | 30)
    }

    /// llama.cpp's name for the type (`q4_K`).
    pub fn type_name(&self) -> &'static str {
        block_layout(self.ggml_type).map_or("unknown", |b| b.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GgufMap {
    pub format: u32,
    /// The program and version that wrote the map: a map from another version is written again, not reused
    /// (the config and tokenizer beside it are that version's reading of the file).
    #[serde(default)]
    pub written_by: String,
    /// The GGUF file, absolute.
    pub source: PathBuf,
    pub fingerprint: GgufFingerprint,
    /// Where tensor data starts in the file.
    pub data_offset: u64,
    /// Hugging Face name -> tensor.
    pub tensors: BTreeMap<String, GgufTensor>,
}

/// A `final/`'s record of its GGUF source: the map, and the tensors training changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GgufSource {
    pub map: GgufMap,
    pub trained: Vec<String>,
}

/// llama.cpp's block layout of a type: values and bytes per block.
#[derive(Debug, Clone, Copy)]
pub struct BlockLayout {
    pub name: &'static str,
    pub values: u64,
    pub bytes: u64,
}

/// The types FreezeTune reads (llama.cpp's ids).
pub fn block_layout(ggml_type: u32) -> Option<BlockLayout> {
    let (name, values, bytes) = match ggml_type {
        0 => ("f32", 1, 4),
        1 => ("f16", 1, 2),
        2 => ("q4_0", 32, 18),
        3 => ("q4_1", 32, 20),
        6 => ("q5_0", 32, 22),
        7 => ("q5_1", 32, 24),
        8 => ("q8_0", 32, 34),
        9 => ("q8_1", 32, 36),
        10 => ("q2_K", 256, 84),
        11 => ("q3_K", 256, 110),
        12 => ("q4_K", 256, 144),
        13 => ("q5_K", 256, 176),
        14 => ("q6_K", 256, 210),
        15 => ("q8_K", 256, 292),
        30 => ("bf16", 1, 2),
        _ => return None,
    };
    Some(BlockLayout { name, values, bytes })
}

impl GgufMap {
    pub fn new(source: PathBuf, fingerprint: GgufFingerprint, data_offset: u64) -> GgufMap {
        GgufMap {
            format: FORMAT,
            written_by: String::new(),
            source,
            fingerprint,
            data_offset,
            tensors: BTreeMap::new(),
        }
    }

    /// Reads and checks the map at `path`, and that its GGUF file is the one it was written for.
    pub fn read(path: &Path) -> Result<GgufMap> {
        let bad = |reason: String| Error::BadGgufMap {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let map: GgufMap = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let again = "give the .gguf file itself as the model again (FreezeTune maps it anew)";
        if map.format != FORMAT {
            return Err(bad(format!("format {} is not {FORMAT}; {again}", map.format)));
        }
        map.check().map_err(bad)?;
        let now = GgufFingerprint::of(&map.source)?;
        if now != map.fingerprint {
            return Err(bad(format!(
                "{} changed since FreezeTune mapped it (size {} then {}, modified at {} then {} ns); {again}",
                map.source.display(),
                map.fingerprint.size,
                now.size,
                map.fingerprint.modified_ns,
                now.modified_ns
            )));
        }
        Ok(map)
    }

    /// Every tensor's blocks fit its shape and lie inside the file, apart from each other.
    pub fn check(&self) -> std::result::Result<(), String> {
        let data = self
            .fingerprint
            .size
            .checked_sub(self.data_offset)
            .ok_or("data offset past the file's end")?;
        let mut spans = Vec::new();
        for (name, t) in &self.tensors {
            let layout =
                block_layout(t.ggml_type).ok_or_else(|| format!("{name}: unknown ggml type {}", t.ggml_type))?;
            let row = *t.shape.last().ok_or_else(|| format!("{name}: no dimensions"))?;
            let values = t.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
            let values = values.ok_or_else(|| format!("{name}: shape {:?} overflows", t.shape))?;
            if row % layout.values != 0 || values == 0 {
                return Err(format!("{name}: rows of {row} are not whole {} blocks", layout.name));
            }
            if (values / layout.values).checked_mul(layout.bytes) != Some(t.bytes) {
                return Err(format!(
                    "{name}: {} bytes do not hold {values} {} values",
                    t.bytes, layout.name
                ));
            }
            let end = t.offset.checked_add(t.bytes).filter(|e| *e <= data);
            end.ok_or_else(|| format!("{name}: its blocks lie past the file's end"))?;
            if let Some(h) = t.rope_heads {
                let rows = t.shape[0];
                let pairs = (h as u64).checked_mul(2).filter(|p| *p > 0 && rows % p == 0);
                if t.shape.len() > 2 || pairs.is_none() || t.bytes % rows != 0 {
                    return Err(format!("{name}: {rows} rows are not {h} heads of rotary pairs"));
                }
            }
            spans.push((t.offset, t.offset + t.bytes, name));
        }
        spans.sort();
        for w in spans.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(format!("{} and {} overlap", w[0].2, w[1].2));
            }
        }
        Ok(())
    }

    /// Bytes one row of `t` (one index of its first dimension: a single value of a vector) takes in the file.
    pub fn row_bytes(t: &GgufTensor) -> u64 {
        t.bytes / t.shape.first().copied().unwrap_or(1).max(1)
    }
}

/// llama.cpp's converter permutes llama's q and k rows from the Hugging Face layout (rotary halves) to the
/// interleaved pairs its rope kernel reads: within each head, row `i*2 + j` comes from row `j*(d/2) + i`.
/// Returns, for each output row, its source row. `heads` is the number of heads the tensor holds.
pub fn rope_permutation(rows: usize, heads: usize) -> Vec<usize> {
    let d = rows / heads;
    let half = d / 2;
    (0..rows)
        .map(|r| {
            let (h, within) = (r / d, r % d);
            let (i, j) = (within / 2, within % 2);
            h * d + j * half + i
        })
        .collect()
}

/// The inverse of [`rope_permutation`]: for each Hugging Face row, the file's row it is read from.
pub fn rope_unpermutation(rows: usize, heads: usize) -> Vec<usize> {
    let forward = rope_permutation(rows, heads);
    let mut inverse = vec![0; rows];
    for (out, src) in forward.into_iter().enumerate() {
        inverse[src] = out;
    }
    inverse
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> GgufMap {
        let file = dir.join("m.gguf");
        std::fs::write(&file, vec![0u8; 64 + 144 * 4 + 8]).unwrap();
        let mut map = GgufMap::new(file.clone(), GgufFingerprint::of(&file).unwrap(), 64);
        let t = GgufTensor {
            expert: None,
            gguf: "blk.0.attn_q.weight".into(),
            ggml_type: 12,
            shape: vec![4, 256],
            offset: 0,
            bytes: 144 * 4,
            dtype: DType::F16,
            rope_heads: Some(2),
            norm_offset: false,
        };
        map.tensors.insert("model.layers.0.self_attn.q_proj.weight".into(), t);
        map
    }

    #[test]
    fn a_sound_map_reads_back_and_a_changed_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let map = sample(dir.path());
        let path = dir.path().join(GGUF_MAP_FILE);
        std::fs::write(&path, serde_json::to_string(&map).unwrap()).unwrap();
        assert_eq!(GgufMap::read(&path).unwrap(), map);
        std::fs::write(&map.source, vec![0u8; 10]).unwrap();
        let err = GgufMap::read(&path).unwrap_err().to_string();
        assert!(err.contains("changed since FreezeTune mapped it"), "{err}");
    }

    #[test]
    fn blocks_that_do_not_fit_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let q = "model.layers.0.self_attn.q_proj.weight";
        type Edit = fn(&mut GgufTensor);
        let cases: [(&str, Edit); 4] = [
            ("bytes do not hold", |t| t.bytes -= 1),
            ("past the file's end", |t| t.offset = 100),
            ("not whole q4_K blocks", |t| t.shape = vec![8, 128]),
            ("unknown ggml type", |t| t.ggml_type = 99),
        ];
        for (want, edit) in cases {
            let mut map = sample(dir.path());
            edit(map.tensors.get_mut(q).unwrap());
            let err = map.check().unwrap_err();
            assert!(err.contains(want) && err.contains(q), "{want}: {err}");
        }
        let mut map = sample(dir.path());
        let mut other = map.tensors[q].clone();
        other.offset = 8;
        other.shape = vec![4, 256];
        map.tensors.insert("x".into(), other);
        map.fingerprint.size += 8;
        assert!(map.check().unwrap_err().contains("overlap"));
    }

    #[test]
    fn a_vector_with_rotary_rows_has_one_value_a_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut map = sample(dir.path());
        let bias = GgufTensor {
            expert: None,
            gguf: "blk.0.attn_q.bias".into(),
            ggml_type: 0,
            shape: vec![8],
            offset: 576,
            bytes: 32,
            dtype: DType::F32,
            rope_heads: Some(2),
            norm_offset: false,
        };
        assert_eq!(GgufMap::row_bytes(&bias), 4);
        map.tensors.insert("model.layers.0.self_attn.q_proj.bias".into(), bias);
        map.fingerprint.size += 32;
        map.check().unwrap();
        map.tensors
            .get_mut("model.layers.0.self_attn.q_proj.bias")
            .unwrap()
            .rope_heads = Some(3);
        assert!(map.check().unwrap_err().contains("rotary pairs"));
    }

    #[test]
    fn the_rope_unpermutation_inverts_the_permutation() {
        let (p, u) = (rope_permutation(16, 2), rope_unpermutation(16, 2));
        assert_eq!(p[..4], [0, 4, 1, 5]);
        for r in 0..16 {
            assert_eq!(p[u[r]], r);
        }
    }
}
