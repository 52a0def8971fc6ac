//! A bundle for a Hub model names the commit FreezeTune planned on, and every file it lists is in the folder.

use freezetune_core::layout::ModelLayout;
use freezetune_core::run_config::RunConfig;
use freezetune_handoff::{write_bundle, BundleOptions, Distributed, Engine};
use std::path::Path;

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// A run on a copy of the qwen2 fixture laid out as a Hub-cache snapshot of `acme/tiny` at commit 0123abcd.
fn hub_run() -> (tempfile::TempDir, RunConfig, ModelLayout) {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("hub/models--acme--tiny/snapshots/0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    for entry in std::fs::read_dir(fixtures().join("models/qwen2")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, snapshot.join(path.file_name().unwrap())).unwrap();
    }
    let text = format!(
        "[model]\npath = {snapshot:?}\nrepo = \"acme/tiny\"\n[freeze]\ntop = 2\n[data]\ntrain = {:?}\n\
         [output]\ndir = \"run\"\n",
        fixtures().join("data/alpaca.parquet")
    );
    std::fs::write(dir.path().join("run.toml"), text).unwrap();
    let config = RunConfig::read(&dir.path().join("run.toml")).unwrap();
    let layout = ModelLayout::inspect(&snapshot).unwrap();
    (dir, config, layout)
}

#[test]
fn a_hub_model_is_pinned_to_the_snapshot_it_was_planned_on() {
    let (dir, config, layout) = hub_run();
    let out = dir.path().join("bundle");
    let options = BundleOptions {
        gpus: 1,
        distributed: Distributed::Fsdp,
    };
    let bundle = write_bundle(Engine::Llamafactory, &config, &layout, &out, &options).unwrap();
    let yaml = std::fs::read_to_string(out.join("train.yaml")).unwrap();
    assert!(
        yaml.contains("model_name_or_path: \"acme/tiny\"\nmodel_revision: \"0123abcd\"\n"),
        "{yaml}"
    );
    // FSDP follows the run's dtype (auto: bf16 on a GPU), as train.yaml does.
    assert!(yaml.contains("bf16: true"), "{yaml}");
    let fsdp = std::fs::read_to_string(out.join("fsdp_config.yaml")).unwrap();
    assert!(
        fsdp.contains("mixed_precision: bf16\n") && fsdp.contains("fsdp_use_orig_params: true"),
        "{fsdp}"
    );
    for f in &bundle.files {
        assert!(out.join(f).is_file(), "{f} is listed but missing");
    }
    assert_eq!(bundle.train_rows, 5);
    // Nothing is left beside the bundle (the staging folder was renamed into place).
    let siblings: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        siblings.iter().all(|n| !n.to_string_lossy().contains(".partial")),
        "{siblings:?}"
    );
}

#[test]
fn the_axolotl_bundle_pins_the_snapshot_and_shards_with_fsdp2() {
    let (dir, config, layout) = hub_run();
    let out = dir.path().join("axolotl");
    let options = BundleOptions {
        gpus: 4,
        distributed: Distributed::Fsdp,
    };
    let bundle = write_bundle(Engine::Axolotl, &config, &layout, &out, &options).unwrap();
    let yaml = std::fs::read_to_string(out.join("config.yml")).unwrap();
    assert!(
        yaml.contains("base_model: \"acme/tiny\"\nrevision_of_model: \"0123abcd\"\n"),
        "{yaml}"
    );
    assert!(yaml.contains("fsdp_version: 2\nfsdp_config:\n"), "{yaml}");
    assert!(yaml.contains("bf16: \"auto\""), "{yaml}");
    assert!(
        yaml.contains("unfrozen_parameters:\n  - '^model.layers.(2|3).'"),
        "{yaml}"
    );
    let launch = std::fs::read_to_string(out.join("launch.sh")).unwrap();
    assert!(
        launch.contains("axolotl train config.yml \"$@\" -- --num_processes 4"),
        "{launch}"
    );
    for f in &bundle.files {
        assert!(out.join(f).is_file(), "{f} is listed but missing");
    }
    // Every alpaca row is a conversation of a user turn and an assistant turn (after any system prompt).
    let data = std::fs::read_to_string(out.join("data/train.jsonl")).unwrap();
    assert_eq!(data.lines().count(), bundle.train_rows);
    for line in data.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let roles: Vec<&str> = row["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .filter(|r| *r != "system")
            .collect();
        assert_eq!(roles, ["user", "assistant"], "{line}");
    }
}

/// An FP8 checkpoint is refused by name for either engine: on an FP8 GPU transformers loads its projections as
/// FP8Linear modules, which do not train.
#[test]
fn an_fp8_checkpoint_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures().join("models/qwen3_moe_fp8");
    let text = format!(
        "[model]\npath = {model:?}\n[freeze]\ntop = 1\n[data]\ntrain = {:?}\n[output]\ndir = \"run\"\n",
        fixtures().join("data/alpaca.parquet")
    );
    std::fs::write(dir.path().join("run.toml"), text).unwrap();
    let config = RunConfig::read(&dir.path().join("run.toml")).unwrap();
    let layout = ModelLayout::inspect(&model).unwrap();
    let options = BundleOptions {
        gpus: 1,
        distributed: Distributed::Fsdp,
    };
    for engine in [Engine::Llamafactory, Engine::Axolotl] {
        let out = dir.path().join(engine.title());
        let e = write_bundle(engine, &config, &layout, &out, &options)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("FP8") && e.contains("FP8Linear") && e.contains("full-precision"),
            "{e}"
        );
        assert!(!out.exists());
    }
    // The config fragments `export-config` and the app write are refused the same way.
    let spec = freezetune_core::FreezeSpec {
        top: Some(1),
        ..Default::default()
    };
    let plan = freezetune_core::plan(&layout, &spec, freezetune_core::PlanOptions::default()).unwrap();
    let lf = freezetune_core::export::to_llamafactory_yaml(&layout, &spec, &plan).unwrap_err();
    let axolotl = freezetune_core::export::to_axolotl_yaml(&layout, &spec, &plan).unwrap_err();
    for e in [lf.to_string(), axolotl.to_string()] {
        assert!(e.contains("FP8Linear"), "{e}");
    }
}
