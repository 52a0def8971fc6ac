#![allow(dead_code)]
use freezetune_core::synth::{write_checkpoint, Family, SynthSpec};
use freezetune_core::ModelLayout;
use std::path::PathBuf;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

pub fn model(name: &str) -> ModelLayout {
    ModelLayout::inspect(&fixture(&format!("models/{name}"))).unwrap()
}

/// A synthetic checkpoint in a fresh temp dir (kept alive by the returned guard).
pub fn synth(family: Family, layers: usize, shards: usize) -> (tempfile::TempDir, ModelLayout) {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = SynthSpec::tiny(family, layers);
    spec.shards = shards;
    write_checkpoint(dir.path(), &spec).unwrap();
    let layout = ModelLayout::inspect(dir.path()).unwrap();
    (dir, layout)
}
