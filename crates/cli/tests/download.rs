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

#[test]
fn search_says_which_models_train_here_and_fit_before_any_download() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models");
    let mut qwen = FakeRepo::from_dir("tiny/qwen2", &fixtures.join("qwen2"));
    qwen.downloads = 50;
    let mut lfm = FakeRepo::from_dir("tiny/lfm2", &fixtures.join("lfm2"));
    lfm.downloads = 900;
    let mut other = FakeRepo::from_dir("other/llama", &fixtures.join("llama"));
    other.downloads = 5000;
    let hub = FakeHub::start(vec![qwen, lfm, other]);
    let cache = tempfile::tempdir().unwrap();
    let out = freezetune(&hub, cache.path(), &["search", "tiny", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["tiny/lfm2", "tiny/qwen2"], "most downloaded first, only matches");
    let qwen = &rows[1]["check"];
    assert_eq!(qwen["architecture"], "Qwen2ForCausalLM");
    assert_eq!(qwen["training_unsupported"], serde_json::Value::Null);
    assert_eq!(qwen["fit"]["fits"], true);
    // Nothing was downloaded: the cache holds no snapshot.
    let out = freezetune(&hub, cache.path(), &["models", "--json"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );

    // Against a device smaller than the weights, the row says it does not fit.
    let out = freezetune(&hub, cache.path(), &["search", "qwen2", "--fit-memory", "0.0001"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("trains here") && text.contains("does not fit"), "{text}");
}

#[test]
fn data_configs_lists_a_hub_datasets_configs_and_splits() {
    let tree = tempfile::tempdir().unwrap();
    let readme = "---\nconfigs:\n- config_name: en\n  default: true\n  data_files:\n  - split: train\n    path: en/train-*\n  - split: test\n    path: en/test-*\n- config_name: fr\n  data_files: fr/*.jsonl\n---\n";
    std::fs::write(tree.path().join("README.md"), readme).unwrap();
    for (dir, file) in [
        ("en", "train-00000.jsonl"),
        ("en", "test-00000.jsonl"),
        ("fr", "all.jsonl"),
    ] {
        std::fs::create_dir_all(tree.path().join(dir)).unwrap();
        std::fs::write(tree.path().join(dir).join(file), "{\"text\": \"a\"}\n").unwrap();
    }
    let mut repo = FakeRepo::from_tree("org/multi", tree.path());
    repo.dataset = true;
    let hub = FakeHub::start(vec![repo]);
    let cache = tempfile::tempdir().unwrap();
    let out = freezetune(&hub, cache.path(), &["data", "configs", "org/multi"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("en (default): train, test"), "{text}");
    assert!(text.contains("fr: train"), "{text}");
    let out = freezetune(&hub, cache.path(), &["search", "multi", "--datasets", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["id"], "org/multi");
}

/// A run naming one config of a Hub dataset fetches that config's data files (every split of it) and the README,
/// never another config's: a repo of many subsets (languages, say) would otherwise download them all. A config
/// the repo does not have is refused before anything is fetched.
#[test]
fn a_run_fetches_only_its_datasets_config() {
    let tree = tempfile::tempdir().unwrap();
    let readme = "---\nconfigs:\n- config_name: en\n  default: true\n  data_files:\n  - split: train\n    path: en/train-*\n  - split: test\n    path: en/test-*\n- config_name: fr\n  data_files: fr/*.jsonl\n---\n";
    std::fs::write(tree.path().join("README.md"), readme).unwrap();
    for (dir, file, say) in [
        ("en", "train-00000.jsonl", "Say hi"),
        ("en", "test-00000.jsonl", "Say bye"),
        ("fr", "all.jsonl", "Dis bonjour"),
    ] {
        std::fs::create_dir_all(tree.path().join(dir)).unwrap();
        let row = format!("{{\"instruction\": \"{say}\", \"output\": \"ok\"}}\n");
        std::fs::write(tree.path().join(dir).join(file), row).unwrap();
    }
    let mut repo = FakeRepo::from_tree("org/multi", tree.path());
    repo.dataset = true;
    let hub = FakeHub::start(vec![repo]);
    let cache = tempfile::tempdir().unwrap();
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/llama");
    let run = cache.path().join("run.toml");
    let preview_with = |dataset: &str, offline: bool| {
        let config = format!(
            "[model]\npath = {model:?}\n[freeze]\ntop = 1\n[[data.datasets]]\nhub = \"org/multi\"\n{dataset}\n\
             [output]\ndir = \"r\"\n"
        );
        std::fs::write(&run, config).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_freezetune"));
        command
            .args(["data", "preview", run.to_str().unwrap()])
            .env("HF_ENDPOINT", hub.url())
            .env("HF_HUB_CACHE", cache.path())
            .env_remove("HF_TOKEN")
            .env("HF_HOME", cache.path().join("home"))
            .env("FREEZETUNE_CONFIG_DIR", cache.path().join("config"));
        match offline {
            true => command.env("HF_HUB_OFFLINE", "1"),
            false => command.env_remove("HF_HUB_OFFLINE"),
        };
        command.output().unwrap()
    };
    let preview = |dataset: &str| preview_with(dataset, false);
    let snapshot_files = || {
        let snapshots = cache.path().join("datasets--org--multi/snapshots");
        let snapshot = std::fs::read_dir(&snapshots).unwrap().next().unwrap().unwrap().path();
        let mut names = Vec::new();
        for top in std::fs::read_dir(&snapshot).unwrap() {
            let top = top.unwrap().path();
            match top.is_dir() {
                true => names.extend(std::fs::read_dir(&top).unwrap().map(|f| {
                    let f = f.unwrap().path();
                    f.strip_prefix(&snapshot).unwrap().to_string_lossy().into_owned()
                })),
                false => names.push(top.file_name().unwrap().to_string_lossy().into_owned()),
            }
        }
        names.sort();
        names
    };

    let out = preview("config = \"fr\"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Dis bonjour"));
    assert_eq!(snapshot_files(), ["README.md", "fr/all.jsonl"], "only the fr config");
    // Fetched at the commit it was listed at; `refs/main` learns it, for offline runs.
    let snapshots = cache.path().join("datasets--org--multi/snapshots");
    let commit = std::fs::read_dir(&snapshots)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let commit = commit.to_string_lossy().into_owned();
    let pinned = format!("/api/datasets/org/multi/revision/{commit}");
    assert!(
        hub.requests().iter().any(|r| r.path.starts_with(&pinned)),
        "asked for {pinned}"
    );
    let main = std::fs::read_to_string(cache.path().join("datasets--org--multi/refs/main")).unwrap();
    assert_eq!(main.trim(), commit);

    // Offline, the cached copy serves the config it holds, and says so for another.
    let out = preview_with("config = \"fr\"", true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = preview_with("config = \"en\"", true);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cached copy of org/multi cannot serve"),
        "{err}"
    );

    // The default config, its test split named: both of its splits come, fr's file is kept.
    let out = preview("split = \"test\"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Say bye"));
    assert_eq!(
        snapshot_files(),
        [
            "README.md",
            "en/test-00000.jsonl",
            "en/train-00000.jsonl",
            "fr/all.jsonl"
        ]
    );

    let fetched = hub.requests().len();
    let out = preview("config = \"de\"");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has no config \"de\"") && err.contains("\"fr\""), "{err}");
    let resolves_only = hub.requests()[fetched..]
        .iter()
        .all(|r| !r.path.contains("/resolve/") || r.path.ends_with("README.md"));
    assert!(
        resolves_only,
        "nothing but the README was fetched for an unknown config"
    );
}
