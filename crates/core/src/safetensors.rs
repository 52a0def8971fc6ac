//! Reads safetensors headers (8-byte little-endian length, then a JSON header) without touching tensor data.
//!
//! The parser is written for hostile input: the length field is checked against the file size and a hard cap before
//! anything is allocated, every shape and offset is checked with overflow-safe arithmetic, and a malformed header is
//! an error, never a panic (see the proptest fuzz tests below).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::Path;

/// Largest header accepted (the safetensors format's own limit is 100 MB).
pub const MAX_HEADER_LEN: u64 = 100 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "UPPERCASE")]
pub enum DType {
    Bool,
    U8,
    I8,
    #[serde(rename = "F8_E4M3")]
    F8E4M3,
    #[serde(rename = "F8_E5M2")]
    F8E5M2,
    #[serde(rename = "F8_E8M0")]
    F8E8M0,
    #[serde(rename = "F4")]
    F4,
    U16,
    I16,
    F16,
    BF16,
    U32,
    I32,
    F32,
    U64,
    I64,
    F64,
}

impl DType {
    pub fn from_name(name: &str) -> Option<DType> {
        serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::F8E4M3 => "F8_E4M3",
            DType::F8E5M2 => "F8_E5M2",
            DType::F8E8M0 => "F8_E8M0",
            DType::F4 => "F4",
            DType::U16 => "U16",
            DType::I16 => "I16",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::U32 => "U32",
            DType::I32 => "I32",
            DType::F32 => "F32",
            DType::U64 => "U64",
            DType::I64 => "I64",
            DType::F64 => "F64",
        }
    }

    pub fn bits(self) -> u64 {
        match self {
            DType::F4 => 4,
            DType::Bool | DType::U8 | DType::I8 | DType::F8E4M3 | DType::F8E5M2 | DType::F8E8M0 => 8,
            DType::U16 | DType::I16 | DType::F16 | DType::BF16 => 16,
            DType::U32 | DType::I32 | DType::F32 => 32,
            DType::U64 | DType::I64 | DType::F64 => 64,
        }
    }

    /// Bytes taken by `numel` elements (rounded up for sub-byte types).
    pub fn bytes_for(self, numel: u64) -> u64 {
        (numel.saturating_mul(self.bits())).div_ceil(8)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor's entry in a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorHeader {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    /// Byte range inside the data section (after the header).
    pub data_offsets: (u64, u64),
}

impl TensorHeader {
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// The parsed header of one safetensors file.
#[derive(Debug, Clone)]
pub struct SafetensorsHeader {
    pub tensors: Vec<TensorHeader>,
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Length of the JSON header in bytes.
    pub header_len: u64,
}

/// Reads and validates the header of the safetensors file at `path`; reads `8 + header_len` bytes and no more.
pub fn read_header(path: &Path) -> Result<SafetensorsHeader> {
    let bad = |reason: String| Error::BadSafetensors {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if file_len < 8 {
        return Err(bad(format!(
            "file is {file_len} bytes, shorter than the 8-byte header length; it is truncated"
        )));
    }
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes).map_err(|e| Error::io(path, e))?;
    let header_len = u64::from_le_bytes(len_bytes);
    check_header_len(header_len, file_len).map_err(bad)?;
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    let data_len = file_len - 8 - header_len;
    let (tensors, metadata) = parse_header_json(&header, data_len).map_err(bad)?;
    Ok(SafetensorsHeader {
        tensors,
        metadata,
        header_len,
    })
}

/// Parses a whole safetensors file image held in memory (used by the fuzz tests and by tools that already hold
/// the bytes). Same checks as [`read_header`].
pub fn parse_bytes(bytes: &[u8]) -> std::result::Result<Vec<TensorHeader>, String> {
    if bytes.len() < 8 {
        return Err(format!(
            "file is {} bytes, shorter than the 8-byte header length",
            bytes.len()
        ));
    }
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    check_header_len(header_len, bytes.len() as u64)?;
    let header = &bytes[8..8 + header_len as usize];
    let data_len = bytes.len() as u64 - 8 - header_len;
    parse_header_json(header, data_len).map(|(t, _)| t)
}

/// Whether a header of `header_len` bytes can sit in a file of `file_len` bytes (at least 8) under the size limit.
pub fn check_header_len(header_len: u64, file_len: u64) -> std::result::Result<(), String> {
    if header_len > MAX_HEADER_LEN {
        return Err(format!(
            "header length field says {header_len} bytes, over the {MAX_HEADER_LEN}-byte limit"
        ));
    }
    if header_len > file_len - 8 {
        return Err(format!(
            "header length field says {header_len} bytes but only {} follow; the file is truncated",
            file_len - 8
        ));
    }
    Ok(())
}

type ParsedHeader = (Vec<TensorHeader>, std::collections::BTreeMap<String, String>);

/// Parses the JSON header and checks every entry against the `data_len` bytes that follow it.
pub fn parse_header_json(header: &[u8], data_len: u64) -> std::result::Result<ParsedHeader, String> {
    let text = std::str::from_utf8(header).map_err(|e| format!("header is not UTF-8: {e}"))?;
    let value: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text.trim_end_matches(' ')).map_err(|e| format!("header is not a JSON object: {e}"))?;
    let mut tensors = Vec::with_capacity(value.len());
    let mut metadata = std::collections::BTreeMap::new();
    for (name, entry) in value {
        if name == "__metadata__" {
            let map = entry.as_object().ok_or("__metadata__ is not an object")?;
            for (k, v) in map {
                let v = v
                    .as_str()
                    .ok_or_else(|| format!("__metadata__ value {k:?} is not a string"))?;
                metadata.insert(k.clone(), v.to_string());
            }
            continue;
        }
        tensors.push(parse_entry(&name, &entry, data_len)?);
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((tensors, metadata))
}

fn parse_entry(name: &str, entry: &serde_json::Value, data_len: u64) -> std::result::Result<TensorHeader, String> {
    let obj = entry
        .as_object()
        .ok_or_else(|| format!("tensor {name}: entry is not an object"))?;
    let dtype_name = obj
        .get("dtype")
        .and_then(|v| v.as_str())
        .ok_or_else(|| format!("tensor {name}: no dtype"))?;
    let dtype = DType::from_name(dtype_name).ok_or_else(|| format!("tensor {name}: unknown dtype {dtype_name:?}"))?;
    let shape_json = obj
        .get("shape")
        .and_then(|v| v.as_array())
        .ok_or_else(|| format!("tensor {name}: no shape"))?;
    let mut shape = Vec::with_capacity(shape_json.len().min(16));
    let mut numel: u64 = 1;
    for dim in shape_json {
        let d = dim
            .as_u64()
            .ok_or_else(|| format!("tensor {name}: shape entry {dim} is not a non-negative integer"))?;
        numel = numel
            .checked_mul(d)
            .ok_or_else(|| format!("tensor {name}: shape {shape_json:?} overflows"))?;
        shape.push(d);
    }
    let offsets = obj
        .get("data_offsets")
        .and_then(|v| v.as_array())
        .filter(|a| a.len() == 2)
        .ok_or_else(|| format!("tensor {name}: data_offsets is not a pair of integers"))?;
    let (begin, end) = match (offsets[0].as_u64(), offsets[1].as_u64()) {
        (Some(b), Some(e)) => (b, e),
        _ => return Err(format!("tensor {name}: data_offsets is not a pair of integers")),
    };
    if begin > end {
        return Err(format!("tensor {name}: data_offsets [{begin}, {end}] run backwards"));
    }
    if end > data_len {
        return Err(format!(
            "tensor {name}: data ends at byte {end} but the file holds only {data_len} data bytes; the file is truncated"
        ));
    }
    let expected = numel.checked_mul(dtype.bits()).map(|b| b.div_ceil(8));
    if expected != Some(end - begin) {
        return Err(format!(
            "tensor {name}: shape {shape:?} of {dtype} needs {} bytes but data_offsets span {}",
            expected.map(|e| e.to_string()).unwrap_or_else(|| "too many".into()),
            end - begin
        ));
    }
    Ok(TensorHeader {
        name: name.to_string(),
        dtype,
        shape,
        data_offsets: (begin, end),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn image(header: &str, data_len: usize) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.resize(v.len() + data_len, 0);
        v
    }

    #[test]
    fn parses_a_valid_header() {
        let h = r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[2,3],"data_offsets":[16,28]},"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        let t = parse_bytes(&image(h, 28)).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].name, "a");
        assert_eq!(t[1].dtype, DType::BF16);
        assert_eq!(t[1].numel(), 6);
    }

    #[test]
    fn rejects_truncation_garbage_and_hostile_lengths() {
        let h = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        assert!(parse_bytes(&image(h, 8)).unwrap_err().contains("truncated"));
        assert!(parse_bytes(&image("{not json", 0))
            .unwrap_err()
            .contains("not a JSON object"));
        let mut hostile = u64::MAX.to_le_bytes().to_vec();
        hostile.extend_from_slice(b"{}");
        assert!(parse_bytes(&hostile).unwrap_err().contains("limit"));
        let mut short = 1000u64.to_le_bytes().to_vec();
        short.extend_from_slice(b"{}");
        assert!(parse_bytes(&short).unwrap_err().contains("truncated"));
        let bad_size = r#"{"a":{"dtype":"F32","shape":[5],"data_offsets":[0,16]}}"#;
        assert!(parse_bytes(&image(bad_size, 16))
            .unwrap_err()
            .contains("needs 20 bytes"));
        let overflow = r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}}"#;
        assert!(parse_bytes(&image(overflow, 16)).unwrap_err().contains("overflows"));
        let dtype = r#"{"a":{"dtype":"Q4","shape":[4],"data_offsets":[0,16]}}"#;
        assert!(parse_bytes(&image(dtype, 16)).unwrap_err().contains("unknown dtype"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn fuzz_random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_bytes(&bytes);
        }

        #[test]
        fn fuzz_hostile_length_field(len in any::<u64>(), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut bytes = len.to_le_bytes().to_vec();
            bytes.extend_from_slice(&tail);
            let _ = parse_bytes(&bytes);
        }

        #[test]
        fn fuzz_structured_entries(
            dtype in "(F32|BF16|F16|I8|F4|BOOL|XX)",
            shape in proptest::collection::vec(0u64..u64::MAX, 0..5),
            begin in any::<u64>(), end in any::<u64>(), data_len in 0usize..256,
        ) {
            let h = format!(r#"{{"t":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[{begin},{end}]}}}}"#);
            if let Ok(t) = parse_bytes(&image(&h, data_len)) {
                prop_assert!(t[0].data_offsets.1 <= data_len as u64);
                prop_assert_eq!(t[0].dtype.bytes_for(t[0].numel()), end - begin);
            }
        }
    }
}
