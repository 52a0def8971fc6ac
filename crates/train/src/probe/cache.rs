//! Probe results kept per (model, dataset, settings), so measuring the same layers on the same data again is
//! instant. The key hashes the weight files' and the data file's paths, sizes and modification times, and every
//! setting that changes a number (format, cutoff, prompt masking, eval split and seed, batch size and count, window,
//! gradients, device and dtype): editing the data or a setting is a different key.

use super::{ProbeOptions, ProbeReport};
use crate::error::{io, Result};
use freezetune_core::files::ModelFiles;
use freezetune_core::fsutil::{write_atomic, Overwrite};
use freezetune_core::run_config::RunConfig;
use std::hash::Hasher;
use std::path::{Path, PathBuf};

/// FNV-1a, 64 bits: stable across runs and builds (std's hasher is not).
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn feed_file(h: &mut Fnv, path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    h.write(path.to_string_lossy().as_bytes());
    h.write(&meta.len().to_le_bytes());
    h.write(&modified.to_le_bytes());
    Ok(())
}

/// The cache file for this probe of this run's model and data.
pub fn cache_path(dir: &Path, config: &RunConfig, o: &ProbeOptions) -> Result<PathBuf> {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    for file in ModelFiles::find(&config.model.path)?.weights {
        feed_file(&mut h, &file)?;
    }
    if config.data.datasets.is_empty() {
        feed_file(&mut h, &config.data.train)?;
    } else {
        for d in &config.data.datasets {
            for p in [&d.path, &d.dataset_info].into_iter().flatten() {
                feed_file(&mut h, p)?;
            }
        }
        h.write(format!("{:?}|{:?}", config.data.datasets, config.data.mix).as_bytes());
    }
    let d = &config.data;
    let settings = format!(
        "{:?}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
        d.format,
        d.cutoff_len,
        d.train_on_prompt,
        d.eval_split,
        config.training.seed,
        o.batch_size,
        o.batches,
        o.window,
        o.gradients,
        config.runtime.device,
        config.model.dtype
    );
    h.write(settings.as_bytes());
    Ok(dir.join(format!("probe-{:016x}.json", h.finish())))
}

/// A cached report, if there is a readable one.
pub fn load(path: &Path) -> Option<ProbeReport> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn store(path: &Path, report: &ProbeReport) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let text = serde_json::to_string_pretty(report).expect("json");
    write_atomic(path, text.as_bytes(), Overwrite::Allow)?;
    Ok(())
}
