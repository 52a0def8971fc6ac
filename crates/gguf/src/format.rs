//! The GGUF v3 container, little-endian (the llama.cpp spec, `docs/gguf.md` upstream): a header of metadata
//! key/values and tensor infos, then each tensor's bytes at an offset aligned to 32. Written as a stream: the
//! sizes are known from shapes and types, so the header is written first and each tensor is produced (read,
//! converted, quantized) only when its turn comes, one at a time.

use candle_core::quantized::GgmlDType;
use std::io::{self, Write};

pub const ALIGNMENT: u64 = 32;
const MAGIC: &[u8; 4] = b"GGUF";
const VERSION: u32 = 3;

/// A metadata value (the subset llama.cpp's converter writes for decoders).
#[derive(Debug, Clone, PartialEq)]
pub enum Meta {
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    F32s(Vec<f32>),
    I32s(Vec<i32>),
}

impl Meta {
    fn type_id(&self) -> u32 {
        match self {
            Meta::U32(_) => 4,
            Meta::I32(_) => 5,
            Meta::F32(_) => 6,
            Meta::Bool(_) => 7,
            Meta::Str(_) => 8,
            Meta::Strs(_) | Meta::F32s(_) | Meta::I32s(_) => 9,
        }
    }

    fn write(&self, w: &mut impl Write) -> io::Result<()> {
        match self {
            Meta::U32(v) => w.write_all(&v.to_le_bytes()),
            Meta::I32(v) => w.write_all(&v.to_le_bytes()),
            Meta::F32(v) => w.write_all(&v.to_le_bytes()),
            Meta::Bool(v) => w.write_all(&[*v as u8]),
            Meta::Str(s) => write_str(w, s),
            Meta::Strs(items) => {
                w.write_all(&8u32.to_le_bytes())?;
                w.write_all(&(items.len() as u64).to_le_bytes())?;
                items.iter().try_for_each(|s| write_str(w, s))
            }
            Meta::F32s(items) => {
                w.write_all(&6u32.to_le_bytes())?;
                w.write_all(&(items.len() as u64).to_le_bytes())?;
                items.iter().try_for_each(|v| w.write_all(&v.to_le_bytes()))
            }
            Meta::I32s(items) => {
                w.write_all(&5u32.to_le_bytes())?;
                w.write_all(&(items.len() as u64).to_le_bytes())?;
                items.iter().try_for_each(|v| w.write_all(&v.to_le_bytes()))
            }
        }
    }
}

fn write_str(w: &mut impl Write, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

/// GGML's type id (ggml.h's `ggml_type`).
pub fn type_id(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

/// llama.cpp's name of a type, as its tools print it.
pub fn type_name(dtype: GgmlDType) -> &'static str {
    match dtype {
        GgmlDType::F32 => "f32",
        GgmlDType::F16 => "f16",
        GgmlDType::BF16 => "bf16",
        GgmlDType::Q4_0 => "q4_0",
        GgmlDType::Q4_1 => "q4_1",
        GgmlDType::Q5_0 => "q5_0",
        GgmlDType::Q5_1 => "q5_1",
        GgmlDType::Q8_0 => "q8_0",
        GgmlDType::Q8_1 => "q8_1",
        GgmlDType::Q2K => "q2_K",
        GgmlDType::Q3K => "q3_K",
        GgmlDType::Q4K => "q4_K",
        GgmlDType::Q5K => "q5_K",
        GgmlDType::Q6K => "q6_K",
        GgmlDType::Q8K => "q8_K",
    }
}

/// Bytes of `elems` values of a type (a whole number of blocks; the caller checks divisibility).
pub fn bytes_for(dtype: GgmlDType, elems: usize) -> usize {
    elems / dtype.block_size() * dtype.type_size()
}

/// One tensor of the file: its GGUF name, its shape in row-major order (rows first, as Hugging Face writes it;
/// GGUF stores the dimensions reversed) and its type.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: GgmlDType,
}

impl TensorEntry {
    pub fn bytes(&self) -> usize {
        bytes_for(self.dtype, self.shape.iter().product())
    }
}

fn padding(pos: u64) -> usize {
    ((ALIGNMENT - pos % ALIGNMENT) % ALIGNMENT) as usize
}

/// A GGUF file being written: [`Writer::start`] writes the header (every tensor's offset follows from the shapes
/// and types), then [`Writer::tensor`] each tensor's bytes in the header's order, then [`Writer::finish`].
pub struct Writer<W: Write> {
    inner: Counting<W>,
}

impl<W: Write> Writer<W> {
    pub fn start(w: W, metadata: &[(String, Meta)], tensors: &[TensorEntry]) -> io::Result<Writer<W>> {
        let mut w = Counting { inner: w, pos: 0 };
        w.write_all(MAGIC)?;
        w.write_all(&VERSION.to_le_bytes())?;
        w.write_all(&(tensors.len() as u64).to_le_bytes())?;
        w.write_all(&(metadata.len() as u64).to_le_bytes())?;
        for (key, value) in metadata {
            write_str(&mut w, key)?;
            w.write_all(&value.type_id().to_le_bytes())?;
            value.write(&mut w)?;
        }
        let mut offset = 0u64;
        for t in tensors {
            write_str(&mut w, &t.name)?;
            w.write_all(&(t.shape.len() as u32).to_le_bytes())?;
            for &d in t.shape.iter().rev() {
                w.write_all(&(d as u64).to_le_bytes())?;
            }
            w.write_all(&type_id(t.dtype).to_le_bytes())?;
            w.write_all(&offset.to_le_bytes())?;
            offset += t.bytes() as u64;
            offset += padding(offset) as u64;
        }
        let mut writer = Writer { inner: w };
        writer.pad()?;
        Ok(writer)
    }

    /// The next tensor's bytes (exactly `t.bytes()` of them), then padding to the alignment.
    pub fn tensor(&mut self, t: &TensorEntry, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() != t.bytes() {
            return Err(io::Error::other(format!(
                "tensor {} produced {} bytes, its shape and type need {}",
                t.name,
                bytes.len(),
                t.bytes()
            )));
        }
        self.inner.write_all(bytes)?;
        self.pad()
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.inner.flush()?;
        Ok(self.inner.inner)
    }

    fn pad(&mut self) -> io::Result<()> {
        let pad = padding(self.inner.pos);
        self.inner.write_all(&vec![0u8; pad])
    }
}

struct Counting<W: Write> {
    inner: W,
    pos: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
