//! A bundle for a Hub model names the commit FreezeTune planned on, and every file it lists is in the folder.

use freezetune_core::layout::ModelLayout;
use freezetune_core::run_config::RunConfig;
use freezetune_handoff::{llamafactory_bundle, BundleOptions, Distributed};
use std::path::Path;

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

#[test]
fn a_hub_model_is_pinned_to_the_snapshot_it_was_planned_on() {
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
    let out = dir.path().join("bundle");
    let options = BundleOptions {
        gpus: 1,
        distributed: Distributed::Fsdp,
    };
    let bundle = llamafactory_bundle(&config, &layout, &out, &options).unwrap();
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
