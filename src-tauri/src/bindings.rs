//! TypeScript bindings of every type that crosses IPC, generated from the Rust types into `ui/src/lib/bindings/`.
//! `cargo test -p freezetune-app` fails when the committed files are stale; `UPDATE_BINDINGS=1` rewrites them.

use std::path::PathBuf;
use ts_rs::{Config, TS};

/// The folder the UI imports the bindings from.
pub fn bindings_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ui/src/lib/bindings")
}

/// (file name, contents) for every exported type and the types they use.
pub fn render_all() -> Vec<(String, String)> {
    use crate::commands::{dialogs, gguf, handoff, hub, models, plan, presets, runs, train};
    use freezetune_core as core;
    // Numbers: u64 counts and byte sizes arrive as JSON numbers (exact below 2^53, far above any model size).
    let cfg = Config::new().with_large_int("number");
    let mut files = Vec::new();
    let mut add = |name: String, text: String| {
        if !files.iter().any(|(n, _): &(String, String)| *n == name) {
            files.push((name, text));
        }
    };
    macro_rules! export {
        ($($t:ty),* $(,)?) => {$(
            add(format!("{}.ts", <$t as TS>::ident(&cfg)), <$t as TS>::export_to_string(&cfg).expect("ts export"));
        )*};
    }
    export!(
        crate::error::IpcError,
        models::ModelSummary,
        models::ModelSource,
        models::CachedModelView,
        models::TokenStatus,
        hub::HubKind,
        hub::HubHit,
        hub::HubDatasetView,
        hub::HubDatasetConfig,
        freezetune_train::remote::RemoteModelCheck,
        dialogs::PickKind,
        freezetune_gguf::Progress,
        gguf::GgufExport,
        plan::ExportFormat,
        presets::PresetListItem,
        crate::worker::devices::DeviceOption,
        train::DatasetPreview,
        train::DatasetMapping,
        handoff::Sharding,
        handoff::BundleEngine,
        handoff::RunBundleView,
        train::TrainOutcomeView,
        runs::RunSummary,
        runs::RunLayers,
        core::FreezePlan,
        core::FreezeSpec,
        core::LlamaFactoryArgs,
        core::spec::IdList,
        core::schedule::ScheduleSpec,
        core::schedule::ScheduleKind,
        core::schedule::IntervalUnit,
        core::schedule::BlockOrder,
        core::schedule::StatePolicy,
        core::schedule::Timeline,
        core::schedule::Phase,
        core::PlanOptions,
        core::fit::FitSetup,
        core::fit::DeviceMemory,
        core::fit::FitVerdict,
        core::fit::FitChange,
        core::fit::Change,
        core::FreezeMode,
        core::TrainState,
        core::Warning,
        core::plan::LayerPlan,
        core::plan::ModulePlan,
        core::memory::MemoryEstimate,
        core::events::DownloadEvent,
        core::events::PlannedFile,
        core::events::TrainEvent,
        core::preset::Preset,
        core::preset::ModelRef,
        core::run_config::RunConfig,
        core::run_config::ModelSection,
        core::quant::QuantizeFrozen,
        core::run_config::DataSection,
        core::run_config::DataFormat,
        core::data_spec::DatasetSpec,
        core::data_spec::Formatting,
        core::data_spec::Columns,
        core::data_spec::Tags,
        core::data_spec::Mix,
        core::run_config::TrainingSection,
        core::run_config::OptimizerKind,
        core::run_config::LrScheduler,
        core::run_config::RuntimeSection,
        core::run_config::OutputSection,
        core::run_config::ResolvedSection,
        freezetune_train::data::PreviewItem,
        freezetune_train::probe::ProbeReport,
        freezetune_train::probe::LayerSignal,
        freezetune_train::probe::SuggestBy,
        freezetune_train::probe::ProbeProgress,
    );
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_bindings_match_the_rust_types() {
        let dir = bindings_dir();
        let update = std::env::var_os("UPDATE_BINDINGS").is_some();
        let mut stale = Vec::new();
        for (name, text) in render_all() {
            let path = dir.join(&name);
            if update {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &text).unwrap();
            } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                stale.push(name);
            }
        }
        assert!(
            stale.is_empty(),
            "stale TypeScript bindings {stale:?}; run `UPDATE_BINDINGS=1 cargo test -p freezetune-app bindings`"
        );
    }
}
