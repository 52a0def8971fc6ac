//! Tensors of a GGUF file read through its map (core's gguf_map.rs): quantized ones as candle `QTensor`s holding
//! the file's own blocks (a frozen matrix is never dequantized whole), every one as its exact values (dequantized
//! blocks in f32) for an f32 master or an export. llama's q/k rows, stored permuted for llama.cpp's rope, are put back in the Hugging Face order by
//! moving whole rows: blocks run along a row, so a quantized row moves as its bytes.

use crate::error::{io, Result, TrainError};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use freezetune_core::gguf_map::{rope_unpermutation, GgufMap, GgufTensor};
use std::borrow::Cow;
use std::os::unix::fs::FileExt;

/// candle's type for llama.cpp's type id (those core's `block_layout` lists; GGUF validation reads it too).
pub fn ggml_dtype(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

fn candle_err(name: &str) -> impl FnOnce(candle_core::Error) -> TrainError + '_ {
    move |source| TrainError::Candle {
        context: format!("reading tensor {name} from its GGUF file"),
        source,
    }
}

/// An 8-byte aligned buffer: candle reinterprets block bytes in place and asserts their alignment.
struct Aligned(Vec<u64>, usize);

impl Aligned {
    fn bytes(&self) -> &[u8] {
        // SAFETY: a u64 buffer viewed as its first `self.1` bytes (within its length).
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<u8>(), self.1) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<u8>(), self.1) }
    }
}

/// The tensor's bytes as the Hugging Face layout orders its rows.
fn read_rows(map: &GgufMap, name: &str, t: &GgufTensor) -> Result<Aligned> {
    let len = t.bytes as usize;
    let mut buf = Aligned(vec![0u64; len.div_ceil(8)], len);
    let file = std::fs::File::open(&map.source).map_err(io(&map.source))?;
    file.read_exact_at(buf.bytes_mut(), map.data_offset + t.offset)
        .map_err(io(&map.source))?;
    let Some(heads) = t.rope_heads else {
        return Ok(buf);
    };
    let rows = t.shape[0] as usize;
    let row = GgufMap::row_bytes(t) as usize;
    if rows * row != len || heads == 0 || rows % (2 * heads) != 0 {
        return Err(TrainError::Tensor {
            name: name.into(),
            reason: format!("{len} bytes are not {rows} rows of {row} in {heads} rotary heads"),
        });
    }
    let mut out = Aligned(vec![0u64; len.div_ceil(8)], len);
    let (src, dst) = (buf.bytes(), out.bytes_mut());
    for (r, from) in rope_unpermutation(rows, heads).into_iter().enumerate() {
        dst[r * row..(r + 1) * row].copy_from_slice(&src[from * row..(from + 1) * row]);
    }
    Ok(out)
}

fn dtype_of(name: &str, t: &GgufTensor) -> Result<GgmlDType> {
    ggml_dtype(t.ggml_type).ok_or_else(|| TrainError::Tensor {
        name: name.into(),
        reason: format!("is stored as GGML type {}, which FreezeTune cannot read", t.ggml_type),
    })
}

/// The file's blocks of a quantized tensor on `device`, rows in the Hugging Face order.
pub fn load_blocks(map: &GgufMap, name: &str, t: &GgufTensor, device: &Device) -> Result<QTensor> {
    let dtype = dtype_of(name, t)?;
    let bytes = read_rows(map, name, t)?;
    let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
    QStorage::from_data(Cow::Borrowed(bytes.bytes()), device, dtype)
        .and_then(|s| QTensor::new(s, shape))
        .map_err(candle_err(name))
}

/// The tensor's values on the host, exactly: f32 for a quantized type (its dequantized blocks), else the stored
/// float type. Gemma's `1 + weight` norms come back as the weight.
pub fn load_values(map: &GgufMap, name: &str, t: &GgufTensor) -> Result<Tensor> {
    let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
    let values = if t.is_quantized() {
        let q = load_blocks(map, name, t, &Device::Cpu)?;
        crate::quant::dequantize(&q, DType::F32).map_err(candle_err(name))?
    } else {
        let dtype = match dtype_of(name, t)? {
            GgmlDType::F16 => DType::F16,
            GgmlDType::BF16 => DType::BF16,
            _ => DType::F32,
        };
        let bytes = read_rows(map, name, t)?;
        Tensor::from_raw_buffer(bytes.bytes(), dtype, &shape, &Device::Cpu).map_err(candle_err(name))?
    };
    if !t.norm_offset {
        return Ok(values);
    }
    // In f32: `w - 1` rounded back to a half type would not be the file's value.
    (values.to_dtype(DType::F32).map_err(candle_err(name))? - 1.0).map_err(candle_err(name))
}
