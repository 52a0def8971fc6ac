//! `freezetune-app`: the desktop shell. Every command wraps a library function of freezetune-core, -hub or -train;
//! this crate holds only IPC types, the path allow-list, task cancellation, event batching, and the client of the
//! worker processes that train and generate (crate::worker).

pub mod batching;
pub mod bindings;
pub mod blocking;
pub mod commands;
pub mod error;
pub mod paths;
pub mod state;
pub mod tasks;
pub mod worker;

use commands::{dialogs, gguf, handoff, hub, models, plan, presets, runs, train};
use state::AppState;
use tauri::Manager;

/// Builds and runs the app (main.rs calls only this).
pub fn run() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,tao=warn,wry=warn".into()),
        )
        .init();
    let paths = match paths::AppPaths::from_env() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("FreezeTune cannot start: {}", e.message);
            std::process::exit(1);
        }
    };
    tauri::Builder::default()
        .plugin(tauri_plugin_window_state::Builder::default().build())
        .plugin(tauri_plugin_dialog::init())
        .plugin(tauri_plugin_notification::init())
        .manage(AppState::new(paths))
        .setup(|app| {
            // Which workers and devices this machine has, in the log (a CUDA edition that cannot start says why).
            let workers = app.state::<AppState>().workers.clone();
            std::thread::spawn(move || worker::devices::log_summary(&workers));
            Ok(())
        })
        .on_window_event(|window, event| {
            // Closing the window while a run trains would kill it without a checkpoint: stop every worker task
            // first (a run saves one and can be resumed; a GGUF job cleans up), then quit once they have ended.
            if let tauri::WindowEvent::CloseRequested { api, .. } = event {
                let state = window.state::<AppState>();
                if state.tasks.cancel_workers() {
                    api.prevent_close();
                    let app = window.app_handle().clone();
                    std::thread::spawn(move || {
                        while app.state::<AppState>().tasks.any_worker() {
                            std::thread::sleep(std::time::Duration::from_millis(100));
                        }
                        app.exit(0);
                    });
                }
            }
        })
        .invoke_handler(tauri::generate_handler![
            models::open_demo_model,
            models::open_model,
            models::list_cached_models,
            models::download_model,
            hub::search_hub,
            hub::check_hub_model,
            hub::inspect_hub_dataset,
            hub::download_dataset,
            models::cancel_task,
            models::get_token_status,
            models::set_hub_token,
            models::clear_hub_token,
            dialogs::pick_path,
            gguf::export_gguf,
            gguf::import_gguf,
            plan::plan_freeze,
            plan::plan_timeline,
            plan::check_fit,
            train::probe_layers,
            train::cached_probe,
            plan::preview_export,
            plan::export_config,
            plan::check_layer_ids,
            presets::list_presets,
            presets::save_preset,
            presets::load_preset,
            presets::rename_preset,
            presets::duplicate_preset,
            presets::delete_preset,
            presets::import_preset,
            presets::export_preset,
            train::list_devices,
            train::default_run,
            train::preview_dataset,
            train::detect_dataset,
            handoff::export_run,
            handoff::export_run_dir,
            train::train_model,
            runs::list_runs,
            runs::read_run_metrics,
            runs::open_folder,
            runs::generate_text,
        ])
        .run(tauri::generate_context!())
        .expect("error while running FreezeTune");
}
