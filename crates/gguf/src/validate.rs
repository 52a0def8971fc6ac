//! A GGUF file checked whole before anything reads it for use: every count, length, dimension and offset is
//! bounded by the file's size with checked arithmetic, before a byte is allocated for it. GGUF headers are a known
//! attack surface (llama.cpp has had advisories for crafted ones); a file that passes here has a header candle's
//! reader can walk without dividing by zero, overflowing or allocating what the file cannot hold, and tensors that
//! lie inside the file, apart, under unique names, of known types and sizes.

use candle_core::quantized::GgmlDType;
use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

/// Most dimensions a GGUF tensor has (ggml's GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;
/// Most metadata entries and tensors a file may declare, whatever its size.
const MAX_ENTRIES: u64 = 1 << 20;
/// Nested arrays deeper than this are refused (llama.cpp writes none).
const MAX_DEPTH: usize = 1;

/// The facts of a valid file the importer relies on.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub version: u32,
    pub tensors: u64,
    pub alignment: u64,
}

/// Why a file is refused: the field, and what was expected.
pub type Refusal = String;

/// Reads `path`'s header and tensor table and checks them against the file's size.
pub fn check_file(path: &Path) -> Result<Checked, Refusal> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let size = file.metadata().map_err(|e| format!("cannot read its size: {e}"))?.len();
    // The header and tensor table only: a bounded prefix, read once.
    let mut head = Vec::new();
    (&mut file)
        .take(size.min(256 << 20))
        .read_to_end(&mut head)
        .map_err(|e| format!("cannot read: {e}"))?;
    check(&head, size)
}

/// Checks a file whose first bytes are `head` and whose whole size is `size`.
pub fn check(head: &[u8], size: u64) -> Result<Checked, Refusal> {
    let mut r = Cursor { buf: head, pos: 0 };
    if r.bytes(4, "the magic")? != b"GGUF" {
        return Err("the file does not start with GGUF's magic bytes: it is not a GGUF file".into());
    }
    let version = r.u32("the version")?;
    if !(2..=3).contains(&version) {
        return Err(format!("GGUF version {version} is not supported (2 and 3 are)"));
    }
    let tensors = r.count("the tensor count", 8 + 4 + 4 + 8)?;
    let entries = r.count("the metadata entry count", 8 + 4 + 1)?;
    let mut alignment = 32u64;
    let mut keys = HashSet::new();
    for i in 0..entries {
        let key = r.string(&format!("metadata entry #{i}'s key"))?;
        let kind = r.u32(&format!("metadata {key:?}'s type"))?;
        if key == "general.alignment" {
            alignment = read_alignment(&mut r, kind)?;
        } else {
            r.skip_value(kind, &key, 0)?;
        }
        if !keys.insert(key.clone()) {
            return Err(format!("metadata key {key:?} appears twice"));
        }
    }
    let mut spans = Vec::with_capacity(tensors as usize);
    let mut names = HashSet::new();
    for i in 0..tensors {
        let name = r.string(&format!("tensor #{i}'s name"))?;
        let (bytes, offset) = tensor_info(&mut r, &name)?;
        if offset % alignment != 0 {
            return Err(format!(
                "tensor {name:?}'s offset {offset} is not a multiple of the alignment {alignment}"
            ));
        }
        if !names.insert(name.clone()) {
            return Err(format!("tensor name {name:?} appears twice"));
        }
        spans.push((offset, bytes, name));
    }
    let data_start = (r.pos as u64)
        .checked_next_multiple_of(alignment)
        .ok_or("the tensor data offset overflows")?;
    let data_len = size
        .checked_sub(data_start)
        .ok_or_else(|| format!("the file ends ({size} bytes) before its tensor data starts ({data_start})"))?;
    check_spans(&mut spans, data_len)?;
    Ok(Checked {
        version,
        tensors,
        alignment,
    })
}

fn read_alignment(r: &mut Cursor, kind: u32) -> Result<u64, Refusal> {
    if kind != 4 {
        return Err(format!("general.alignment must be a u32 (type 4), not type {kind}"));
    }
    let a = r.u32("general.alignment")? as u64;
    if a == 0 || !a.is_power_of_two() {
        return Err(format!("general.alignment is {a}; it must be a power of two"));
    }
    Ok(a)
}

/// One tensor's byte size and offset, checked: known type, 1 to 4 dimensions each ≥ 1, the element count and byte
/// size without overflow, whole blocks of its type along the first dimension.
fn tensor_info(r: &mut Cursor, name: &str) -> Result<(u64, u64), Refusal> {
    let dims = r.u32(&format!("tensor {name:?}'s dimension count"))?;
    if !(1..=MAX_DIMS).contains(&dims) {
        return Err(format!(
            "tensor {name:?} has {dims} dimensions; 1 to {MAX_DIMS} are allowed"
        ));
    }
    let mut shape = Vec::with_capacity(dims as usize);
    for d in 0..dims {
        let n = r.u64(&format!("tensor {name:?}'s dimension {d}"))?;
        if n == 0 {
            return Err(format!("tensor {name:?} has a dimension of 0"));
        }
        shape.push(n);
    }
    let kind = r.u32(&format!("tensor {name:?}'s type"))?;
    let dtype = ggml_type(kind).ok_or_else(|| format!("tensor {name:?} has the unknown GGML type {kind}"))?;
    let offset = r.u64(&format!("tensor {name:?}'s offset"))?;
    let elements = shape
        .iter()
        .try_fold(1u64, |acc, &n| acc.checked_mul(n))
        .ok_or_else(|| format!("tensor {name:?}'s dimensions {shape:?} overflow"))?;
    let block = dtype.block_size() as u64;
    if shape[0] % block != 0 {
        return Err(format!(
            "tensor {name:?}'s first dimension {} is not a multiple of its type {dtype:?}'s block of {block}",
            shape[0]
        ));
    }
    let bytes = (elements / block)
        .checked_mul(dtype.type_size() as u64)
        .ok_or_else(|| format!("tensor {name:?}'s byte size overflows"))?;
    Ok((bytes, offset))
}

/// Every tensor inside the data section, none overlapping another.
fn check_spans(spans: &mut [(u64, u64, String)], data_len: u64) -> Result<(), Refusal> {
    spans.sort_by_key(|(offset, _, _)| *offset);
    let mut end_of_last: Option<(u64, &str)> = None;
    for (offset, bytes, name) in spans.iter() {
        let end = offset
            .checked_add(*bytes)
            .filter(|&e| e <= data_len)
            .ok_or_else(|| {
                format!("tensor {name:?} ({bytes} bytes at offset {offset}) runs past the end of the file's data ({data_len} bytes)")
            })?;
        if let Some((last, other)) = end_of_last {
            if *offset < last {
                return Err(format!("tensors {other:?} and {name:?} overlap in the file"));
            }
        }
        end_of_last = Some((end, name));
    }
    Ok(())
}

/// The GGML types candle reads (the importer's set; the trainer reads the same through a GGUF map).
fn ggml_type(kind: u32) -> Option<GgmlDType> {
    freezetune_train::gguf_blocks::ggml_dtype(kind)
}

/// A position in the header bytes; every read is bounded by them.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn bytes(&mut self, n: u64, what: &str) -> Result<&[u8], Refusal> {
        if n > self.remaining() as u64 {
            return Err(format!("{what} runs past the end of the file's header"));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.buf[start..self.pos])
    }

    fn u32(&mut self, what: &str) -> Result<u32, Refusal> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    fn u64(&mut self, what: &str) -> Result<u64, Refusal> {
        let b = self.bytes(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// A count of entries each at least `min_entry` bytes long: bounded by what is left of the header.
    fn count(&mut self, what: &str, min_entry: u64) -> Result<u64, Refusal> {
        let n = self.u64(what)?;
        if n > MAX_ENTRIES || n.saturating_mul(min_entry) > self.remaining() as u64 {
            return Err(format!("{what} is {n}, more than the file can hold"));
        }
        Ok(n)
    }

    fn string(&mut self, what: &str) -> Result<String, Refusal> {
        let len = self.u64(what)?;
        let bytes = self.bytes(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }

    /// Steps over one metadata value of type `kind`, checking its lengths.
    fn skip_value(&mut self, kind: u32, key: &str, depth: usize) -> Result<(), Refusal> {
        let fixed = match kind {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => {
                self.string(&format!("metadata {key:?}"))?;
                return Ok(());
            }
            9 => return self.skip_array(key, depth),
            other => return Err(format!("metadata {key:?} has the unknown value type {other}")),
        };
        self.bytes(fixed, &format!("metadata {key:?}"))?;
        Ok(())
    }

    fn skip_array(&mut self, key: &str, depth: usize) -> Result<(), Refusal> {
        if depth >= MAX_DEPTH {
            return Err(format!(
                "metadata {key:?} nests arrays, which GGUF files from llama.cpp never do"
            ));
        }
        let kind = self.u32(&format!("metadata {key:?}'s element type"))?;
        let min = match kind {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => 12,
            _ => 1,
        };
        let n = self.u64(&format!("metadata {key:?}'s length"))?;
        if n.saturating_mul(min) > self.remaining() as u64 {
            return Err(format!(
                "metadata {key:?} declares {n} elements, more than the file can hold"
            ));
        }
        for _ in 0..n {
            self.skip_value(kind, key, depth + 1)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF v3 file: `meta` entries as (key, type, value bytes), then tensors as (name, dims, type, offset),
    /// then `data` bytes after alignment to `align`.
    pub(crate) fn file(meta: &[(&str, u32, Vec<u8>)], tensors: &[(&str, Vec<u64>, u32, u64)], data: usize) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((tensors.len() as u64).to_le_bytes());
        b.extend((meta.len() as u64).to_le_bytes());
        let string = |b: &mut Vec<u8>, s: &str| {
            b.extend((s.len() as u64).to_le_bytes());
            b.extend(s.as_bytes());
        };
        let mut align = 32usize;
        for (k, t, v) in meta {
            string(&mut b, k);
            b.extend(t.to_le_bytes());
            b.extend(v);
            if *k == "general.alignment" && *t == 4 {
                align = (u32::from_le_bytes(v[..4].try_into().unwrap()) as usize).max(1);
            }
        }
        for (name, dims, kind, offset) in tensors {
            string(&mut b, name);
            b.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(kind.to_le_bytes());
            b.extend(offset.to_le_bytes());
        }
        b.resize(b.len().next_multiple_of(align) + data, 0);
        b
    }

    fn refusal(meta: &[(&str, u32, Vec<u8>)], tensors: &[(&str, Vec<u64>, u32, u64)], data: usize) -> String {
        let f = file(meta, tensors, data);
        check(&f, f.len() as u64).unwrap_err()
    }

    #[test]
    fn a_sound_file_passes() {
        let f = file(
            &[(
                "general.architecture",
                8,
                [5u64.to_le_bytes().to_vec(), b"llama".to_vec()].concat(),
            )],
            &[("a", vec![4, 2], 0, 0), ("b", vec![8], 0, 32)],
            64,
        );
        assert_eq!(check(&f, f.len() as u64).unwrap().tensors, 2);
    }

    #[test]
    fn crafted_headers_are_refused_by_field() {
        let cases: Vec<(String, &str)> = vec![
            (
                refusal(&[("general.alignment", 4, 0u32.to_le_bytes().to_vec())], &[], 0),
                "power of two",
            ),
            (
                refusal(&[("general.alignment", 4, 24u32.to_le_bytes().to_vec())], &[], 0),
                "power of two",
            ),
            (refusal(&[], &[("a", vec![u64::MAX, u64::MAX], 0, 0)], 0), "overflow"),
            (refusal(&[], &[("a", vec![4, 0], 0, 0)], 0), "dimension of 0"),
            (
                refusal(&[], &[("a", vec![4], 0, 0), ("a", vec![4], 0, 32)], 64),
                "twice",
            ),
            (refusal(&[], &[("a", vec![64], 0, 0)], 16), "past the end"),
            (
                refusal(&[], &[("a", vec![16], 0, 0), ("b", vec![16], 0, 32)], 128),
                "overlap",
            ),
            (refusal(&[], &[("a", vec![4], 99, 0)], 16), "unknown GGML type"),
            (refusal(&[], &[("a", vec![4], 0, 3)], 16), "alignment"),
            (refusal(&[], &[("a", vec![4, 1, 1, 1, 1], 0, 0)], 16), "dimensions"),
            (
                refusal(
                    &[(
                        "k",
                        9,
                        [8u32.to_le_bytes().to_vec(), u64::MAX.to_le_bytes().to_vec()].concat(),
                    )],
                    &[],
                    0,
                ),
                "more than the file can hold",
            ),
            (
                refusal(&[("k", 8, u64::MAX.to_le_bytes().to_vec())], &[], 0),
                "past the end",
            ),
            (refusal(&[("k", 77, vec![])], &[], 0), "unknown value type"),
            (refusal(&[], &[("a", vec![20], 8, 0)], 64), "block"),
        ];
        for (got, want) in cases {
            assert!(got.contains(want), "{got:?} should mention {want:?}");
        }
        let mut huge = b"GGUF".to_vec();
        huge.extend(3u32.to_le_bytes());
        huge.extend(u64::MAX.to_le_bytes());
        huge.extend(0u64.to_le_bytes());
        assert!(check(&huge, huge.len() as u64).unwrap_err().contains("tensor count"));
        assert!(check(b"GGML", 4).unwrap_err().contains("magic"));
    }

    #[test]
    fn no_prefix_of_a_valid_file_panics() {
        let f = file(
            &[(
                "general.architecture",
                8,
                [5u64.to_le_bytes().to_vec(), b"llama".to_vec()].concat(),
            )],
            &[("a", vec![4, 2], 0, 0)],
            32,
        );
        for cut in 0..f.len() {
            let _ = check(&f[..cut], cut as u64);
        }
    }
}
