//! Which files of a repo a download fetches: by default what training needs and nothing else; `--include` /
//! `--exclude` globs change that. Every name the server sends is checked before it can become a path.

use crate::error::{HubError, Result};
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;

/// One file of the repo as the Hub lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RemoteFile {
    #[serde(rename = "rfilename")]
    pub name: String,
    #[serde(default)]
    pub size: Option<u64>,
    /// Git blob id (the etag of non-LFS files).
    #[serde(default, rename = "blobId")]
    pub blob_id: Option<String>,
    #[serde(default)]
    pub lfs: Option<LfsInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LfsInfo {
    pub sha256: String,
    pub size: u64,
}

impl RemoteFile {
    pub fn size(&self) -> Option<u64> {
        self.lfs.as_ref().map(|l| l.size).or(self.size)
    }

    /// The blob name in the cache: the LFS sha256, else the git blob id.
    pub fn etag(&self) -> Option<&str> {
        self.lfs.as_ref().map(|l| l.sha256.as_str()).or(self.blob_id.as_deref())
    }
}

/// Files training needs besides the weights.
pub const TRAINING_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "vocab.txt",
    crate::INDEX_FILE,
];

/// A name is a plain relative path: no `..`, no absolute path, no backslash, no empty or `.` segment.
pub fn check_name(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.starts_with('/')
        || name.contains('\\')
        || name.contains('\0')
        || name.as_bytes().get(1) == Some(&b':')
        || name.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..");
    if bad {
        Err(HubError::UnsafeFileName { name: name.to_string() })
    } else {
        Ok(())
    }
}

fn globs(patterns: &[String]) -> Result<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let glob = Glob::new(p).map_err(|e| HubError::Protocol {
            url: p.clone(),
            reason: format!("bad glob: {e}"),
        })?;
        b.add(glob);
    }
    b.build().map_err(|e| HubError::Protocol {
        url: patterns.join(","),
        reason: format!("bad glob: {e}"),
    })
}

/// Files to fetch: `include` globs (or, without them, the training set: [`TRAINING_FILES`] and top-level
/// `*.safetensors`), minus `exclude` globs. Refuses a repo whose listing holds an unsafe name, and, with the default
/// set, a repo without safetensors weights.
pub fn select<'a>(
    repo: &str,
    files: &'a [RemoteFile],
    include: &[String],
    exclude: &[String],
) -> Result<Vec<&'a RemoteFile>> {
    for f in files {
        check_name(&f.name)?;
    }
    let include_set = globs(include)?;
    let exclude_set = globs(exclude)?;
    let default = include.is_empty();
    if default && !files.iter().any(|f| is_weights(&f.name)) {
        let others = files
            .iter()
            .filter(|f| {
                [".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack"]
                    .iter()
                    .any(|x| f.name.ends_with(x))
            })
            .map(|f| f.name.clone())
            .collect();
        return Err(HubError::NoSafetensors {
            repo: repo.to_string(),
            others,
        });
    }
    Ok(files
        .iter()
        .filter(|f| {
            if default {
                TRAINING_FILES.contains(&f.name.as_str()) || is_weights(&f.name)
            } else {
                include_set.is_match(&f.name)
            }
        })
        .filter(|f| !exclude_set.is_match(&f.name))
        .collect())
}

/// The files of a dataset repo to fetch: the data files FreezeTune reads (Parquet, JSON, JSONL, CSV, TSV, at any
/// depth: `data/train-00000-of-00002.parquet`, `<config>/<split>-*.parquet`) and the README that lists configs,
/// or what `include` matches; minus `exclude`.
pub fn select_dataset<'a>(
    files: &'a [RemoteFile],
    include: &[String],
    exclude: &[String],
) -> Result<Vec<&'a RemoteFile>> {
    for f in files {
        check_name(&f.name)?;
    }
    let (include_set, exclude_set) = (globs(include)?, globs(exclude)?);
    let data = |name: &str| {
        let lower = name.to_ascii_lowercase();
        [".parquet", ".json", ".jsonl", ".ndjson", ".csv", ".tsv", ".arrow"]
            .iter()
            .any(|x| lower.ends_with(x))
            || name == "README.md"
    };
    Ok(files
        .iter()
        .filter(|f| match include.is_empty() {
            true => data(&f.name),
            false => include_set.is_match(&f.name) || f.name == "README.md",
        })
        .filter(|f| !exclude_set.is_match(&f.name))
        .collect())
}

/// Top-level safetensors weights.
pub fn is_weights(name: &str) -> bool {
    name.ends_with(".safetensors") && !name.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str) -> RemoteFile {
        RemoteFile {
            name: name.into(),
            size: Some(1),
            blob_id: None,
            lfs: None,
        }
    }

    #[test]
    fn unsafe_names_are_refused() {
        for bad in ["../x", "/etc/passwd", "a/../../b", "a\\b", "", "a//b", "./a", "C:x"] {
            assert_eq!(check_name(bad).unwrap_err().kind(), "unsafe_file_name", "{bad:?}");
        }
        check_name("original/params.json").unwrap();
        let files = vec![f("config.json"), f("../../evil.json"), f("model.safetensors")];
        assert_eq!(select("a/b", &files, &[], &[]).unwrap_err().kind(), "unsafe_file_name");
    }

    #[test]
    fn default_set_is_what_training_needs() {
        let files: Vec<RemoteFile> = [
            "config.json",
            "README.md",
            ".gitattributes",
            "model.safetensors",
            "pytorch_model.bin",
            "tokenizer.json",
            "original/consolidated.safetensors",
            "onnx/model.onnx",
            "chat_template.jinja",
        ]
        .iter()
        .map(|n| f(n))
        .collect();
        let names: Vec<&str> = select("a/b", &files, &[], &[])
            .unwrap()
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "config.json",
                "model.safetensors",
                "tokenizer.json",
                "chat_template.jinja"
            ]
        );
        let names: Vec<&str> = select("a/b", &files, &["*.json".into()], &["config*".into()])
            .unwrap()
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(names, ["tokenizer.json"]);
    }

    #[test]
    fn pickle_only_repos_are_refused() {
        let files = vec![f("config.json"), f("pytorch_model.bin")];
        let e = select("a/b", &files, &[], &[]).unwrap_err();
        assert_eq!(e.kind(), "no_safetensors");
        assert!(
            e.to_string().contains("pytorch_model.bin") && e.to_string().contains("pickle"),
            "{e}"
        );
    }
}
