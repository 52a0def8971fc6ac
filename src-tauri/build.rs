// Every command is listed here so Tauri generates an `allow-<command>` permission for it; the window's capability
// (capabilities/main.json) grants exactly these, so a command added to the app but not to the capability is refused.
const COMMANDS: &[&str] = &[
    "open_demo_model",
    "open_model",
    "list_cached_models",
    "download_model",
    "search_hub",
    "check_hub_model",
    "inspect_hub_dataset",
    "download_dataset",
    "cancel_task",
    "get_token_status",
    "set_hub_token",
    "clear_hub_token",
    "pick_path",
    "export_gguf",
    "import_gguf",
    "plan_freeze",
    "plan_timeline",
    "check_fit",
    "probe_layers",
    "cached_probe",
    "preview_export",
    "export_config",
    "check_layer_ids",
    "list_presets",
    "save_preset",
    "load_preset",
    "rename_preset",
    "duplicate_preset",
    "delete_preset",
    "import_preset",
    "export_preset",
    "list_devices",
    "default_run",
    "preview_dataset",
    "detect_dataset",
    "export_run",
    "export_run_dir",
    "train_model",
    "list_runs",
    "read_run_metrics",
    "open_folder",
    "generate_text",
];

fn main() {
    // The web view's files are embedded at compile time: a rebuilt UI must rebuild the app (cargo scans the folder).
    println!("cargo:rerun-if-changed=../ui/dist");
    tauri_build::try_build(
        tauri_build::Attributes::new().app_manifest(tauri_build::AppManifest::new().commands(COMMANDS)),
    )
    .expect("tauri build step");
}
