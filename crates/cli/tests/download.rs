//! End to end through the binary: download a fixture model from the fake Hub, then inspect the printed folder.

use freezetune_fakehub::{FakeHub, FakeRepo};
use std::path::PathBuf;
use std::process::Command;

fn freezetune(hub: &FakeHub, cache: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_freezetune"))
        .args(args)
        .env("HF_ENDPOINT", hub.url())
        .env("HF_HUB_CACHE", cache)
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .env("HF_HOME", cache.join("home"))
        .env("FREEZETUNE_CONFIG_DIR", cache.join("config"))
        .output()
        .unwrap()
}

#[test]
fn download_then_inspect_the_printed_snapshot() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/qwen2");
    let hub = FakeHub::start(vec![FakeRepo::from_dir("tiny/qwen2", &fixture)]);
    let cache = tempfile::tempdir().unwrap();
    let out = freezetune(&hub, cache.path(), &["download", "tiny/qwen2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let snapshot = stdout.lines().last().unwrap().trim();
    assert!(snapshot.starts_with(cache.path().to_str().unwrap()), "{stdout}");
    let out = freezetune(&hub, cache.path(), &["inspect", snapshot, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let layout: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(layout["architecture"], "Qwen2ForCausalLM");
    assert_eq!(layout["tie_word_embeddings"], true);

    // Offline, the cached snapshot resolves without a single request.
    let requests = hub.requests().len();
    let out = Command::new(env!("CARGO_BIN_EXE_freezetune"))
        .args(["download", "tiny/qwen2"])
        .env("HF_ENDPOINT", hub.url())
        .env("HF_HUB_CACHE", cache.path())
        .env("HF_HOME", cache.path().join("home"))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), snapshot);
    assert_eq!(hub.requests().len(), requests);

    let out = freezetune(&hub, cache.path(), &["models", "--json"]);
    let models: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(models[0]["repo"], "tiny/qwen2");
    assert_eq!(models[0]["num_layers"], 4);

    // A preset naming the Hub repo plans on the cached snapshot.
    assert!(freezetune(
        &hub,
        cache.path(),
        &["preset", "save", "q", "--repo", "tiny/qwen2", "--top", "1"]
    )
    .status
    .success());
    let out = freezetune(&hub, cache.path(), &["plan", "--preset", "q", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["trainable_layer_ids"], "3");

    let out = freezetune(&hub, cache.path(), &["download", "tiny/qwen2", "--include", "*.bin"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("any file matching --include"));

    let out = freezetune(&hub, cache.path(), &["download", "nobody/none", "--json"]);
    assert!(!out.status.success());
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(err["error"]["kind"], "repo_not_found");

    assert!(freezetune(&hub, cache.path(), &["models", "rm", "tiny/qwen2"])
        .status
        .success());
    let out = freezetune(&hub, cache.path(), &["models", "--json"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
}

#[test]
fn a_run_config_can_name_a_hub_repo() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/llama");
    let hub = FakeHub::start(vec![FakeRepo::from_dir("tiny/llama", &fixture)]);
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path();
    std::fs::write(dir.join("d.jsonl"), r#"{"instruction": "Say hi", "output": "hi"}"#).unwrap();
    std::fs::write(
        dir.join("run.toml"),
        "[model]\nrepo = \"tiny/llama\"\n[freeze]\ntop = 1\n[data]\ntrain = \"d.jsonl\"\n[training]\nmax_steps = 2\n[output]\ndir = \"run\"\n",
    )
    .unwrap();
    let out = freezetune(
        &hub,
        dir,
        &["train", "--config", dir.join("run.toml").to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run: String = std::fs::read_to_string(dir.join("run/run.toml")).unwrap();
    assert!(
        run.contains("repo = \"tiny/llama\"") && run.contains("models--tiny--llama"),
        "{run}"
    );
    assert!(dir.join("run/final/model.safetensors").is_file());
}
