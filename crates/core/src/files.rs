//! Finding a checkpoint's files in a folder: config.json and the safetensors weights (single file, sharded with an
//! index, or loose `*.safetensors`). Finding is separate from reading so the hub crate can reuse it on a snapshot.

use crate::error::{Error, Result};
use crate::gguf_map::GGUF_MAP_FILE;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "config.json";
pub const SINGLE_WEIGHTS: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The files of a checkpoint folder that inspection needs.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub config: PathBuf,
    /// The index, for sharded checkpoints.
    pub index: Option<PathBuf>,
    /// Weight files in a stable order.
    pub weights: Vec<PathBuf>,
    /// For sharded checkpoints: tensor name -> shard file name, as the index says.
    pub weight_map: Option<BTreeMap<String, String>>,
    /// A folder mapped onto a GGUF file (gguf_map.rs): the map, which is then the only weight file.
    pub gguf_map: Option<PathBuf>,
}

impl ModelFiles {
    /// Locates config and weights in `dir`; every shard named by an index must exist.
    pub fn find(dir: &Path) -> Result<ModelFiles> {
        if !dir.is_dir() {
            let source = std::io::Error::new(std::io::ErrorKind::NotFound, "not a folder (expected a model folder)");
            return Err(Error::io(dir, source));
        }
        let config = dir.join(CONFIG_FILE);
        if !config.is_file() {
            return Err(Error::MissingConfig { dir: dir.to_path_buf() });
        }
        let map = dir.join(GGUF_MAP_FILE);
        if map.is_file() {
            return Ok(ModelFiles {
                dir: dir.to_path_buf(),
                config,
                index: None,
                weights: vec![map.clone()],
                weight_map: None,
                gguf_map: Some(map),
            });
        }
        let index = dir.join(INDEX_FILE);
        if index.is_file() {
            let weight_map = read_index(&index)?;
            let mut shards: Vec<&String> = weight_map.values().collect();
            shards.sort();
            shards.dedup();
            let mut weights = Vec::with_capacity(shards.len());
            for shard in shards {
                if shard.contains('/') || shard.contains('\\') || shard == ".." {
                    return Err(Error::BadIndex {
                        path: index,
                        reason: format!("shard name {shard:?} is not a plain file name"),
                    });
                }
                let path = dir.join(shard);
                if !path.is_file() {
                    return Err(Error::MissingShard {
                        index,
                        shard: shard.clone(),
                    });
                }
                weights.push(path);
            }
            return Ok(ModelFiles {
                dir: dir.to_path_buf(),
                config,
                index: Some(index),
                weights,
                weight_map: Some(weight_map),
                gguf_map: None,
            });
        }
        let single = dir.join(SINGLE_WEIGHTS);
        let weights = if single.is_file() {
            vec![single]
        } else {
            let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| Error::io(dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            found.sort();
            found
        };
        if weights.is_empty() {
            return Err(Error::NoSafetensors { dir: dir.to_path_buf() });
        }
        Ok(ModelFiles {
            dir: dir.to_path_buf(),
            config,
            index: None,
            weights,
            weight_map: None,
            gguf_map: None,
        })
    }
}

fn read_index(path: &Path) -> Result<BTreeMap<String, String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let index: Index = serde_json::from_str(&text).map_err(|e| Error::BadIndex {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if index.weight_map.is_empty() {
        return Err(Error::BadIndex {
            path: path.to_path_buf(),
            reason: "weight_map is empty".into(),
        });
    }
    Ok(index.weight_map)
}
