//! The checkpoint's tensors read one at a time with positioned reads, not through a memory map. A map of the whole
//! checkpoint counts every page read into the process's resident set until it is unmapped: loading a 13 GB model
//! through one map showed 13 GB resident on top of the weights built from it, whatever they are (quantized frozen
//! layers included). A read into a buffer of one tensor's size leaves only that buffer, dropped once the tensor is
//! built; the kernel's page cache keeps the file for the next read without charging the process.
//!
//! A folder mapped onto a GGUF file (core's gguf_map.rs) has the map as its one weight file: its tensors are read
//! from the GGUF file's blocks (gguf_blocks.rs), quantized ones kept as blocks where they stay frozen.
//!
//! An MXFP4 pair (`X_blocks`, `X_scales`: gpt-oss as released; core's mxfp4.rs) is read as the dense tensor `X`
//! it stands for: listed, loaded and exported under that name. So is an FP8 pair (`X.weight` in F8_E4M3 and
//! `X.weight_scale_inv`: DeepSeek-V3, Qwen3's FP8 builds; core's fp8.rs), as `X.weight`.

use crate::error::{io, Result, TrainError};
use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};
use freezetune_core::fp8::{self, Fp8Matrix, Scheme};
use freezetune_core::gguf_map::{GgufMap, GGUF_MAP_FILE};
use freezetune_core::mxfp4::{self, Packed};
use freezetune_core::safetensors::{read_header, DType as StDType, TensorHeader};
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Where one tensor's bytes are: its file, the data section's offset in it, and its header.
struct Entry {
    file: usize,
    data_start: u64,
    header: TensorHeader,
}

/// The tensors of a checkpoint's weight files, by name.
pub struct WeightFiles {
    files: Vec<PathBuf>,
    entries: BTreeMap<String, Entry>,
    /// A GGUF-mapped folder's tensors (then `entries` is empty).
    gguf: Option<GgufMap>,
    /// MXFP4 pairs by the dense name they stand for (their two entries stay in `entries`).
    packed: BTreeMap<String, Packed>,
    /// FP8 weights by name (their scales' entries stay in `entries`).
    fp8: BTreeMap<String, Fp8Matrix>,
}

impl WeightFiles {
    /// Reads (and validates) every file's header; a name in two files is refused. `fp8` is config.json's FP8
    /// scheme, which says how FP8 weights are scaled.
    pub fn open(files: &[PathBuf], fp8: Option<&Scheme>) -> Result<WeightFiles> {
        if let [map] = files {
            if map.file_name().is_some_and(|n| n == GGUF_MAP_FILE) {
                return Ok(WeightFiles {
                    files: files.to_vec(),
                    entries: BTreeMap::new(),
                    gguf: Some(GgufMap::read(map)?),
                    packed: BTreeMap::new(),
                    fp8: BTreeMap::new(),
                });
            }
        }
        let mut entries = BTreeMap::new();
        for (i, path) in files.iter().enumerate() {
            let header = read_header(path)?;
            let data_start = 8 + header.header_len;
            for t in header.tensors {
                if let Some(other) = entries.get(&t.name).map(|e: &Entry| &files[e.file]) {
                    return Err(TrainError::Tensor {
                        name: t.name.clone(),
                        reason: format!(
                            "is stored twice, in {} and {}: remove the stale shard",
                            other.display(),
                            path.display()
                        ),
                    });
                }
                entries.insert(
                    t.name.clone(),
                    Entry {
                        file: i,
                        data_start,
                        header: t,
                    },
                );
            }
        }
        let packed = packed_pairs(&entries)?;
        let fp8 = fp8_pairs(&entries, fp8)?;
        Ok(WeightFiles {
            files: files.to_vec(),
            entries,
            gguf: None,
            packed,
            fp8,
        })
    }

    /// Every tensor's name and shape, sorted by name.
    pub fn tensors(&self) -> Box<dyn Iterator<Item = (&String, Vec<usize>)> + '_> {
        let dims = |shape: &[u64]| shape.iter().map(|&d| d as usize).collect();
        match &self.gguf {
            Some(map) => Box::new(map.tensors.iter().map(move |(n, t)| (n, dims(&t.shape)))),
            None => {
                let plain = self.entries.iter().filter(|(n, _)| !self.is_packed_part(n));
                let plain = plain.map(move |(n, e)| (n, dims(&e.header.shape)));
                let packed = self.packed.iter().map(move |(n, p)| (n, dims(&p.dense_shape())));
                let mut all: Vec<_> = plain.chain(packed).collect();
                all.sort_by(|a, b| a.0.cmp(b.0));
                Box::new(all.into_iter())
            }
        }
    }

    /// Whether `name` is one half of an MXFP4 pair, or an FP8 weight's scales.
    fn is_packed_part(&self, name: &str) -> bool {
        let fp8_scales = name
            .strip_suffix(fp8::SCALE_SUFFIX)
            .is_some_and(|base| self.fp8.contains_key(base));
        fp8_scales
            || [mxfp4::BLOCKS_SUFFIX, mxfp4::SCALES_SUFFIX]
                .iter()
                .any(|s| name.strip_suffix(s).is_some_and(|base| self.packed.contains_key(base)))
    }

    /// Whether any tensor is read from an MXFP4 pair (a model written from these files holds it dense).
    pub fn has_packed(&self) -> bool {
        !self.packed.is_empty()
    }

    /// The file's own quantized blocks of tensor `name` on `device`, when it is a GGUF file's quantized tensor.
    pub fn load_blocks(&self, name: &str, device: &Device) -> Result<Option<QTensor>> {
        let Some(map) = &self.gguf else { return Ok(None) };
        match map.tensors.get(name).filter(|t| t.is_quantized()) {
            Some(t) => crate::gguf_blocks::load_blocks(map, name, t, device).map(Some),
            None => Ok(None),
        }
    }

    /// Tensor `name`'s bytes exactly as a safetensors file stores them (copied into an export unchanged), or
    /// `None` for a GGUF file's tensor (its values are converted instead).
    pub fn raw_bytes(&self, name: &str) -> Result<Option<Vec<u8>>> {
        if self.gguf.is_some() || self.packed.contains_key(name) || self.fp8.contains_key(name) {
            return Ok(None);
        }
        self.entry_bytes(self.entry(name)?).map(Some)
    }

    /// A safetensors entry's bytes, read with one positioned read.
    fn entry_bytes(&self, e: &Entry) -> Result<Vec<u8>> {
        let path = &self.files[e.file];
        let (start, end) = e.header.data_offsets;
        let mut bytes = vec![0u8; (end - start) as usize];
        let file = std::fs::File::open(path).map_err(io(path))?;
        file.read_exact_at(&mut bytes, e.data_start + start).map_err(io(path))?;
        Ok(bytes)
    }

    /// The GGUF map, for a folder mapped onto a GGUF file.
    pub fn gguf_map(&self) -> Option<&GgufMap> {
        self.gguf.as_ref()
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries.get(name).ok_or_else(|| TrainError::Tensor {
            name: name.into(),
            reason: "is not in the checkpoint's weight files".into(),
        })
    }

    /// Tensor `name` on the CPU, in its stored dtype (a GGUF file's quantized tensor: its values in f32).
    pub fn load(&self, name: &str) -> Result<Tensor> {
        if let Some(map) = &self.gguf {
            let t = map.tensors.get(name).ok_or_else(|| TrainError::Tensor {
                name: name.into(),
                reason: format!("is not in {}", map.source.display()),
            })?;
            return crate::gguf_blocks::load_values(map, name, t);
        }
        if let Some(p) = self.packed.get(name) {
            return self.unpack(name, p);
        }
        if let Some(m) = self.fp8.get(name) {
            let (codes, scales) = self.fp8_values(name, m)?;
            let shape = (m.rows as usize, m.cols as usize);
            return Tensor::from_vec(m.dequantize(&codes, &scales), shape, &Device::Cpu).map_err(|source| {
                TrainError::Candle {
                    context: format!("dequantizing FP8 tensor {name}"),
                    source,
                }
            });
        }
        let e = self.entry(name)?;
        let path = &self.files[e.file];
        let dtype = candle_dtype(e.header.dtype).ok_or_else(|| TrainError::Tensor {
            name: name.into(),
            reason: format!(
                "is stored as {}, which FreezeTune cannot compute with; convert the checkpoint to bf16 or f32",
                e.header.dtype
            ),
        })?;
        let bytes = self.entry_bytes(e)?;
        let shape: Vec<usize> = e.header.shape.iter().map(|&d| d as usize).collect();
        Tensor::from_raw_buffer(&bytes, dtype, &shape, &Device::Cpu).map_err(|source| TrainError::Candle {
            context: format!("reading tensor {name} from {}", path.display()),
            source,
        })
    }
}

impl WeightFiles {
    /// An MXFP4 pair's own bytes on `device`, for a frozen tensor held packed; `None` for any other tensor.
    pub fn load_packed(&self, name: &str, device: &Device) -> Result<Option<crate::mxfp4::PackedExperts>> {
        let Some(p) = self.packed.get(name) else {
            return Ok(None);
        };
        let (blocks, scales) = self.packed_bytes(name, p)?;
        crate::mxfp4::PackedExperts::new(*p, &blocks, &scales, device)
            .map(Some)
            .map_err(|source| TrainError::Candle {
                context: format!("holding MXFP4 tensor {name}"),
                source,
            })
    }

    /// An MXFP4 pair's blocks and scales, checked (core's `Packed::check_bytes`).
    fn packed_bytes(&self, name: &str, p: &Packed) -> Result<(Vec<u8>, Vec<u8>)> {
        let part = |suffix: &str| self.entry_bytes(self.entry(&format!("{name}{suffix}"))?);
        let (blocks, scales) = (part(mxfp4::BLOCKS_SUFFIX)?, part(mxfp4::SCALES_SUFFIX)?);
        p.check_bytes(name, &blocks, &scales)
            .map_err(|reason| TrainError::Tensor {
                name: name.into(),
                reason,
            })?;
        Ok((blocks, scales))
    }

    /// Writes MXFP4 tensor `name`'s dense values as bf16 bytes into `out` (the file at `path`), one expert at a time
    /// (an export never holds a whole unpacked stack); false, writing nothing, for any other tensor.
    pub fn write_unpacked_bf16(&self, name: &str, out: &mut impl std::io::Write, path: &Path) -> Result<bool> {
        let Some(p) = self.packed.get(name) else {
            return Ok(false);
        };
        let (blocks, scales) = self.packed_bytes(name, p)?;
        for e in 0..p.experts as usize {
            let bytes: Vec<u8> = p
                .unpack_expert(e, &blocks, &scales)
                .into_iter()
                .flat_map(|v| half::bf16::from_f32(v).to_le_bytes())
                .collect();
            out.write_all(&bytes).map_err(io(path))?;
        }
        Ok(true)
    }

    /// An MXFP4 pair's dense values as f32 (exact: each is a 4-bit value times a power of two).
    fn unpack(&self, name: &str, p: &Packed) -> Result<Tensor> {
        let (blocks, scales) = self.packed_bytes(name, p)?;
        let values: Vec<f32> = (0..p.experts as usize)
            .flat_map(|e| p.unpack_expert(e, &blocks, &scales))
            .collect();
        let shape: Vec<usize> = p.dense_shape().iter().map(|&d| d as usize).collect();
        Tensor::from_vec(values, shape, &Device::Cpu).map_err(|source| TrainError::Candle {
            context: format!("unpacking MXFP4 tensor {name}"),
            source,
        })
    }
}

impl WeightFiles {
    /// Whether FP8 weight `name` is stored with its scales (a model written from these files keeps it so where it
    /// stays frozen).
    pub fn is_fp8(&self, name: &str) -> bool {
        self.fp8.contains_key(name)
    }

    /// An FP8 weight's scales' dtype and shape; `None` for any other tensor.
    pub fn fp8_shape(&self, name: &str) -> Option<(StDType, Vec<u64>)> {
        self.fp8.get(name)?;
        let scales = &self.entries.get(&format!("{name}{}", fp8::SCALE_SUFFIX))?.header;
        Some((scales.dtype, scales.shape.clone()))
    }

    /// FP8 weight `name`'s codes, or its scales, exactly as stored (an export copies them unchanged).
    pub fn fp8_stored(&self, name: &str, scales: bool) -> Result<Vec<u8>> {
        match scales {
            true => self.entry_bytes(self.entry(&format!("{name}{}", fp8::SCALE_SUFFIX))?),
            false => self.entry_bytes(self.entry(name)?),
        }
    }

    /// A frozen FP8 weight held in its codes and scales on `device`; `None` for any other tensor.
    pub fn load_fp8(&self, name: &str, device: &Device) -> Result<Option<crate::fp8::Fp8Weight>> {
        let Some(m) = self.fp8.get(name) else { return Ok(None) };
        let (codes, scales) = self.fp8_values(name, m)?;
        crate::fp8::Fp8Weight::new(*m, &codes, &scales, device)
            .map(Some)
            .map_err(|source| TrainError::Candle {
                context: format!("holding FP8 tensor {name}"),
                source,
            })
    }

    /// An FP8 weight's codes and its scales as f32, checked (core's `Fp8Matrix::check`).
    fn fp8_values(&self, name: &str, m: &Fp8Matrix) -> Result<(Vec<u8>, Vec<f32>)> {
        let (codes, scale_bytes) = (self.fp8_stored(name, false)?, self.fp8_stored(name, true)?);
        let scales = m
            .check(name, &codes, &scale_bytes)
            .map_err(|reason| TrainError::Tensor {
                name: name.into(),
                reason,
            })?;
        Ok((codes, scales))
    }
}

/// The FP8 weights among a checkpoint's tensors, each checked against its scales.
fn fp8_pairs(entries: &BTreeMap<String, Entry>, scheme: Option<&Scheme>) -> Result<BTreeMap<String, Fp8Matrix>> {
    let bad = |name: &str, reason: String| TrainError::Tensor {
        name: name.into(),
        reason,
    };
    let named = entries.iter().map(|(n, e)| (n.as_str(), e.header.dtype));
    let names = fp8::pairs(named, scheme).map_err(|(name, why)| bad(&name, why))?;
    let mut out = BTreeMap::new();
    for name in names {
        let scheme = scheme.expect("pairs refuses FP8 without a scheme");
        let (w, s) = (
            &entries[&name].header,
            &entries[&format!("{name}{}", fp8::SCALE_SUFFIX)].header,
        );
        let m = Fp8Matrix::of(&name, (w.dtype, &w.shape), (s.dtype, &s.shape), scheme).map_err(|r| bad(&name, r))?;
        out.insert(name, m);
    }
    Ok(out)
}

/// The MXFP4 pairs among a checkpoint's tensors, checked, by the dense name each stands for.
fn packed_pairs(entries: &BTreeMap<String, Entry>) -> Result<BTreeMap<String, Packed>> {
    let bad = |name: &str, reason: String| TrainError::Tensor {
        name: name.into(),
        reason,
    };
    let bases = mxfp4::pairs(entries.keys().map(String::as_str)).map_err(|(name, why)| bad(&name, why))?;
    let mut out = BTreeMap::new();
    for base in bases {
        let header = |suffix: &str| &entries[&format!("{base}{suffix}")].header;
        let (b, s) = (header(mxfp4::BLOCKS_SUFFIX), header(mxfp4::SCALES_SUFFIX));
        let p = Packed::of(&base, (b.dtype, &b.shape), (s.dtype, &s.shape)).map_err(|r| bad(&base, r))?;
        out.insert(base, p);
    }
    Ok(out)
}

fn candle_dtype(d: StDType) -> Option<DType> {
    Some(match d {
        StDType::U8 => DType::U8,
        StDType::U32 => DType::U32,
        StDType::I64 => DType::I64,
        StDType::F16 => DType::F16,
        StDType::BF16 => DType::BF16,
        StDType::F32 => DType::F32,
        StDType::F64 => DType::F64,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::safetensors::MmapedSafetensors;

    #[test]
    fn reads_the_same_tensors_as_candles_memory_map() {
        let dir = tempfile::tempdir().unwrap();
        let spec = freezetune_core::synth::SynthSpec {
            dtype: freezetune_core::safetensors::DType::BF16,
            shards: 2,
            ..freezetune_core::synth::SynthSpec::tiny(freezetune_core::synth::Family::Llama, 2)
        };
        let files = freezetune_core::synth::write_checkpoint(dir.path(), &spec).unwrap();
        let ours = WeightFiles::open(&files, None).unwrap();
        let mapped = unsafe { MmapedSafetensors::multi(&files) }.unwrap();
        let names: Vec<String> = ours.tensors().map(|(n, _)| n.clone()).collect();
        assert_eq!(names.len(), mapped.tensors().len());
        for name in names {
            let a = ours.load(&name).unwrap();
            let b = mapped.load(&name, &Device::Cpu).unwrap();
            assert_eq!((a.dtype(), a.dims()), (b.dtype(), b.dims()), "{name}");
            let diff = (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap();
            assert_eq!(
                diff.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(),
                0.0,
                "{name}"
            );
        }
        assert!(ours.load("model.nothing").is_err());
    }
}
