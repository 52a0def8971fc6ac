//! Whether a checkpoint's lm_head is tied to its embeddings, decided as transformers decides it on load: the
//! config's flag ties them, except where the checkpoint stores both with different values (transformers then warns
//! and keeps both, untied). A header cannot tell equal from different, so the stored bytes are compared.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::files::ModelFiles;
use crate::safetensors::{read_header, DType};
use crate::{Error, Result};

/// Whether `name` is an output head's stored weight (`lm_head.weight`, a wrapper's `….lm_head.weight`).
pub fn is_lm_head(name: &str) -> bool {
    name == "lm_head.weight" || name.ends_with(".lm_head.weight")
}

/// Whether `name` is the token embeddings' weight (a wrapper's `model.language_model.embed_tokens.weight` too; not
/// Gemma 4's `embed_tokens_per_layer`).
pub fn is_embeddings(name: &str) -> bool {
    name == "embed_tokens.weight" || name.ends_with(".embed_tokens.weight")
}

/// Where one stored tensor's bytes lie.
struct Stored {
    path: PathBuf,
    dtype: DType,
    shape: Vec<u64>,
    /// Offset of the first byte in the file, and the byte count.
    start: u64,
    len: u64,
}

/// Whether the safetensors in `dir` store an lm_head whose values differ from the embeddings' (`Some(true)`), an
/// identical copy (`Some(false)`), or no lm_head or no embeddings (`None`: transformers then ties the one it has; a
/// GGUF-mapped folder says `None` too). Where several tensors are embeddings (DeepSeek-V3's prediction layers
/// store their own), the model's is the one with the shortest name.
pub fn stored_head_differs(dir: &Path) -> Result<Option<bool>> {
    let files = ModelFiles::find(dir)?;
    if files.gguf_map.is_some() {
        return Ok(None);
    }
    let (mut head, mut embed) = (None, None);
    for path in &files.weights {
        let header = read_header(path)?;
        for t in header.tensors {
            let slot = match &t.name {
                n if is_lm_head(n) => &mut head,
                n if is_embeddings(n) => &mut embed,
                _ => continue,
            };
            if slot
                .as_ref()
                .is_some_and(|(name, _): &(String, Stored)| name.len() <= t.name.len())
            {
                continue;
            }
            let stored = Stored {
                path: path.clone(),
                dtype: t.dtype,
                shape: t.shape,
                start: 8 + header.header_len + t.data_offsets.0,
                len: t.data_offsets.1 - t.data_offsets.0,
            };
            *slot = Some((t.name, stored));
        }
    }
    let (Some((_, head)), Some((_, embed))) = (head, embed) else {
        return Ok(None);
    };
    if (head.dtype, &head.shape, head.len) != (embed.dtype, &embed.shape, embed.len) {
        return Ok(Some(true));
    }
    Ok(Some(!same_bytes(&head, &embed)?))
}

/// Compares two stored tensors a block at a time; two different matrices part within the first block.
fn same_bytes(a: &Stored, b: &Stored) -> Result<bool> {
    const BLOCK: u64 = 1 << 20;
    let open = |s: &Stored| -> Result<File> {
        let mut f = File::open(&s.path).map_err(|e| Error::io(&s.path, e))?;
        f.seek(SeekFrom::Start(s.start)).map_err(|e| Error::io(&s.path, e))?;
        Ok(f)
    };
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; BLOCK as usize], vec![0u8; BLOCK as usize]);
    let mut left = a.len;
    while left > 0 {
        let n = left.min(BLOCK) as usize;
        fa.read_exact(&mut ba[..n]).map_err(|e| Error::io(&a.path, e))?;
        fb.read_exact(&mut bb[..n]).map_err(|e| Error::io(&b.path, e))?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
        left -= n as u64;
    }
    Ok(true)
}
