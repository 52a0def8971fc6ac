//! `freezetune train --config` end to end: the loss falls, the run folder is complete, `--preset` replaces the
//! config's freeze choice, and a finished run is not overwritten.

use std::path::PathBuf;
use std::process::Command;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

#[test]
fn train_from_a_toml_file() {
    let dir = tempfile::tempdir().unwrap();
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference/parity.json")).unwrap()).unwrap();
    let r = &r["models"]["llama"];
    let data: Vec<String> = (0..2)
        .map(|i| serde_json::json!({"input_ids": r["input_ids"][i], "labels": r["labels"][i]}).to_string())
        .collect();
    std::fs::write(dir.path().join("data.jsonl"), data.join("\n")).unwrap();
    let config = format!(
        "[model]\npath = {:?}\n[freeze]\ntop = 1\nextra = [\"norm\"]\n[data]\ntrain = \"data.jsonl\"\n\
         [training]\nmax_steps = 8\nlearning_rate = 1e-2\nbatch_size = 2\n[output]\ndir = \"runs/one\"\n",
        fixtures().join("models/llama")
    );
    std::fs::write(dir.path().join("run.toml"), config).unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_freezetune"))
            .args(args)
            .env("FREEZETUNE_CONFIG_DIR", dir.path().join("cfg"))
            .output()
            .unwrap()
    };
    let cfg = dir.path().join("run.toml");
    let out = run(&["train", "--config", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let final_dir = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert_eq!(final_dir, dir.path().join("runs/one/final"));
    let metrics = std::fs::read_to_string(dir.path().join("runs/one/metrics.jsonl")).unwrap();
    let losses: Vec<f64> = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(losses.len(), 8);
    assert!(losses[7] < losses[0] - 0.1, "the loss falls: {losses:?}");
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("runs/one/freeze_plan.json")).unwrap()).unwrap();
    assert_eq!(plan["trainable"].as_array().unwrap().len(), 10);
    let inspect = run(&["inspect", final_dir.to_str().unwrap(), "--json"]);
    assert!(inspect.status.success());
    let generated = run(&[
        "generate",
        final_dir.to_str().unwrap(),
        "--prompt",
        "Hello",
        "--max-new-tokens",
        "5",
    ]);
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );

    let again = run(&["train", "--config", cfg.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));

    assert!(run(&["preset", "save", "mlp-only", "--top", "2", "--modules", "mlp"])
        .status
        .success());
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg).unwrap().replace("runs/one", "runs/two"),
    )
    .unwrap();
    let out = run(&["train", "--config", cfg.to_str().unwrap(), "--preset", "mlp-only"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("runs/two/freeze_plan.json")).unwrap()).unwrap();
    assert_eq!(plan["trainable"].as_array().unwrap().len(), 6);
}

#[test]
fn data_preview_marks_what_is_learned() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("chat.jsonl"),
        r#"{"instruction": "Say hi", "output": "hi"}"#,
    )
    .unwrap();
    let config = format!(
        "[model]\npath = {:?}\n[freeze]\ntop = 1\n[data]\ntrain = \"chat.jsonl\"\n[output]\ndir = \"r\"\n",
        fixtures().join("models/llama")
    );
    std::fs::write(dir.path().join("run.toml"), config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_freezetune"))
        .args(["data", "preview"])
        .arg(dir.path().join("run.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("as Alpaca")
            && text.contains("<|im_start|>user\nSay hi<|im_end|>")
            && text.contains("[[hi<|im_end|>\n]]"),
        "{text}"
    );
}

#[test]
fn a_whole_run_saved_as_a_preset_trains_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("d.jsonl"),
        r#"{"instruction": "Say hi", "output": "hi"}"#,
    )
    .unwrap();
    let config = format!(
        "[model]\npath = {:?}\n[freeze]\ntop = 1\n[data]\ntrain = \"d.jsonl\"\n[training]\nmax_steps = 2\n[output]\ndir = \"runs/p\"\n",
        fixtures().join("models/llama")
    );
    let cfg = dir.path().join("run.toml");
    std::fs::write(&cfg, config).unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_freezetune"))
            .args(args)
            .env("FREEZETUNE_CONFIG_DIR", dir.path().join("cfg"))
            .output()
            .unwrap()
    };
    assert!(run(&["preset", "save", "whole", "--config", cfg.to_str().unwrap()])
        .status
        .success());
    let out = run(&["train", "--preset", "whole"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()),
        dir.path().join("runs/p/final")
    );
    let model = fixtures().join("models/llama");
    assert!(run(&[
        "preset",
        "save",
        "freeze-only",
        "--top",
        "2",
        "--model",
        model.to_str().unwrap()
    ])
    .status
    .success());
    let out = run(&["train", "--preset", "freeze-only"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot run on its own"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
