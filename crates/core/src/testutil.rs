//! Fixtures the crate's unit tests share.

use crate::synth::{write_checkpoint, Family, SynthSpec};
use crate::{plan, FreezePlan, FreezeSpec, ModelLayout, PlanOptions};

/// A tiny 6-layer llama (untied, f32) in a temporary folder, its layout, and the plan of `spec`.
pub(crate) fn tiny_llama(spec: &FreezeSpec) -> (tempfile::TempDir, ModelLayout, FreezePlan) {
    let dir = tempfile::tempdir().unwrap();
    let mut synth = SynthSpec::tiny(Family::Llama, 6);
    synth.tied = false;
    write_checkpoint(dir.path(), &synth).unwrap();
    let layout = ModelLayout::inspect(dir.path()).unwrap();
    let p = plan(&layout, spec, PlanOptions::default()).unwrap();
    (dir, layout, p)
}

pub(crate) fn all_layers() -> FreezeSpec {
    FreezeSpec {
        all_layers: true,
        ..Default::default()
    }
}
