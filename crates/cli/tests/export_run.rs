//! `freezetune export-run --to llamafactory`, proven by running the real LLaMA-Factory: the bundle's `launch.sh`
//! trains 2 steps with `llamafactory-cli train` on the CPU (LLaMA-Factory 0.9.5 in the venv
//! `scripts/python-venv.sh` builds; `make test` builds it first). LLaMA-Factory's trainable parameters are the
//! plan's, the tensors its saved model changed are exactly the plan's, and its first logged loss is FreezeTune's
//! step-1 loss on the same rows within 1e-3.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The venv's python; a missing venv fails the test with what to run.
fn python() -> PathBuf {
    let p = std::env::var_os("FREEZETUNE_LF_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/freezetune-python-venv/bin/python"));
    assert!(
        p.exists(),
        "{} is missing: run `bash scripts/python-venv.sh` (it installs LLaMA-Factory 0.9.5 once), or set \
         FREEZETUNE_LF_PYTHON",
        p.display()
    );
    p
}

/// FreezeTune's own run of `run`: its step-1 loss, its plan, and the plan's trainable tensors sorted.
fn freezetune_step1(run: &Path, dir: &Path) -> (f64, Value, Vec<String>) {
    let out = freezetune(&["train", "--config", run.to_str().unwrap()], dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metrics = std::fs::read_to_string(dir.join("runs/ft/metrics.jsonl")).unwrap();
    let first: Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    let plan: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("runs/ft/freeze_plan.json")).unwrap()).unwrap();
    let mut trainable: Vec<String> = serde_json::from_value(plan["trainable"].clone()).unwrap();
    trainable.sort();
    (first["loss"].as_f64().unwrap(), plan, trainable)
}

/// The tensors of `trained` that differ from the qwen2 fixture's.
fn changed_tensors(python: &Path, trained: &Path) -> Vec<String> {
    let changed = Command::new(python)
        .arg("-c")
        .arg(
            "import json, sys\n\
             from safetensors.numpy import load_file\n\
             a = load_file(sys.argv[1]); b = load_file(sys.argv[2])\n\
             print(json.dumps(sorted(k for k in a if k in b and not (a[k] == b[k]).all())))",
        )
        .arg(fixtures().join("models/qwen2/model.safetensors"))
        .arg(trained)
        .output()
        .unwrap();
    assert!(changed.status.success(), "{}", String::from_utf8_lossy(&changed.stderr));
    serde_json::from_slice(&changed.stdout).unwrap()
}

/// Runs a bundle's own `launch.sh` on the CPU, offline, with `python`'s venv first on PATH and the engine's one
/// extra variable; returns its stdout and stderr together, after asserting it succeeded.
fn launch(bundle: &Path, python: &Path, dir: &Path, engine_env: (&str, &str), engine: &str) -> String {
    let venv_bin = python.parent().unwrap();
    let path = format!("{}:{}", venv_bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("bash")
        .arg(bundle.join("launch.sh"))
        .env("PATH", path)
        .env("CUDA_VISIBLE_DEVICES", "")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_DATASETS_CACHE", dir.join("hf-datasets"))
        .env(engine_env.0, engine_env.1)
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{engine} failed:\n{log}");
    log
}

fn freezetune(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_freezetune"))
        .args(args)
        .env("FREEZETUNE_CONFIG_DIR", dir.join("cfg"))
        .output()
        .unwrap()
}

/// A run on 4 alpaca rows and 2 sharegpt conversations (one with a system prompt, one of two turns) in one batch
/// of 6, so both trainers' first step sees the same rows whatever their shuffles; the last two layers train
/// (LLaMA-Factory's `freeze_trainable_layers: 2`).
fn write_run(dir: &Path) -> PathBuf {
    let config = format!(
        "[model]\npath = {:?}\ndtype = \"f32\"\n[freeze]\ntop = 2\n[data]\ncutoff_len = 256\n\
         [[data.datasets]]\npath = {:?}\nlimit = 4\n[[data.datasets]]\npath = {:?}\n\
         [training]\nmax_steps = 2\nbatch_size = 6\nlearning_rate = 1e-3\nlr_scheduler = \"constant\"\n\
         [output]\ndir = \"runs/ft\"\n",
        fixtures().join("models/qwen2"),
        fixtures().join("data/alpaca.parquet"),
        fixtures().join("data/sharegpt.parquet"),
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, config).unwrap();
    path
}

#[test]
fn the_llamafactory_bundle_trains_the_plans_tensors_with_freezetunes_first_loss() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let run = write_run(dir.path());
    let bundle = dir.path().join("bundle");
    let out = freezetune(
        &[
            "export-run",
            run.to_str().unwrap(),
            "--to",
            "llamafactory",
            "-o",
            bundle.to_str().unwrap(),
            "--json",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["train_rows"], 6);
    let yaml = std::fs::read_to_string(bundle.join("train.yaml")).unwrap();
    assert!(yaml.contains("freeze_trainable_layers: 2"), "{yaml}");

    // FreezeTune's own run, for its step-1 loss and its plan.
    let (ft_loss, plan, trainable) = freezetune_step1(&run, dir.path());

    // LLaMA-Factory, started by the bundle's own launch.sh, on the CPU.
    let log = launch(
        &bundle,
        &python,
        dir.path(),
        ("DISABLE_VERSION_CHECK", "1"),
        "llamafactory-cli",
    );
    let counted = log
        .lines()
        .find_map(|l| l.split("trainable params: ").nth(1))
        .and_then(|rest| rest.split(" ||").next())
        .map(|n| n.replace(',', ""))
        .unwrap_or_else(|| panic!("LLaMA-Factory did not log its trainable parameters:\n{log}"));
    assert_eq!(counted, plan["trainable_params"].to_string(), "trainable parameters");

    let trainer_log = std::fs::read_to_string(bundle.join("output/trainer_log.jsonl")).unwrap();
    let step1: Value = serde_json::from_str(trainer_log.lines().next().unwrap()).unwrap();
    let lf_loss = step1["loss"].as_f64().unwrap();
    assert!(
        (lf_loss - ft_loss).abs() < 1e-3,
        "first loss: LLaMA-Factory {lf_loss}, FreezeTune {ft_loss}"
    );

    // The tensors LLaMA-Factory's saved model changed are exactly the plan's.
    let changed = changed_tensors(&python, &bundle.join("output/model.safetensors"));
    assert_eq!(changed, trainable, "tensors LLaMA-Factory changed vs the plan");
}

#[test]
fn a_bundle_lists_what_it_cannot_carry_and_never_replaces_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let run = write_run(dir.path());
    let text = std::fs::read_to_string(&run)
        .unwrap()
        .replace("dtype = \"f32\"\n", "dtype = \"f32\"\nquantize_frozen = \"q8_0\"\n")
        + "[runtime]\nthreads = 2\n";
    std::fs::write(&run, text.replace("[training]\n", "[training]\nshuffle = false\n")).unwrap();
    let bundle = dir.path().join("bundle");
    let args = [
        "export-run",
        run.to_str().unwrap(),
        "--to",
        "llamafactory",
        "-o",
        bundle.to_str().unwrap(),
    ];
    let out = freezetune(
        &[&args[..], &["--gpus", "2", "--deepspeed", "zero3", "--json"]].concat(),
        dir.path(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let readme = std::fs::read_to_string(bundle.join("README.md")).unwrap();
    for unmapped in ["quantize_frozen", "shuffle = false", "threads = 2"] {
        assert!(readme.contains(unmapped), "README names {unmapped}:\n{readme}");
    }
    let yaml = std::fs::read_to_string(bundle.join("train.yaml")).unwrap();
    assert!(yaml.contains("deepspeed: \"ds_z3_config.json\""), "{yaml}");
    assert!(
        yaml.contains("per_device_train_batch_size: 3"),
        "batch 6 over 2 GPUs: {yaml}"
    );
    let ds: Value = serde_json::from_str(&std::fs::read_to_string(bundle.join("ds_z3_config.json")).unwrap()).unwrap();
    assert_eq!(ds["zero_optimization"]["stage"], 3);
    let launch = std::fs::read_to_string(bundle.join("launch.sh")).unwrap();
    assert!(
        launch.contains("FORCE_TORCHRUN=1 NPROC_PER_NODE=2 llamafactory-cli train train.yaml"),
        "{launch}"
    );
    // The folder exists now: a second export refuses it, and leaves it as it was.
    let out = freezetune(&args, dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(std::fs::read_to_string(bundle.join("README.md")).unwrap(), readme);
    // A plan LLaMA-Factory's rules cannot express gets the nearest form, with the difference named.
    let odd = std::fs::read_to_string(&run)
        .unwrap()
        .replace("top = 2", "layers = \"0,2\"");
    std::fs::write(&run, odd).unwrap();
    let other = dir.path().join("other");
    let out = freezetune(
        &[
            "export-run",
            run.to_str().unwrap(),
            "--to",
            "llamafactory",
            "-o",
            other.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let yaml = std::fs::read_to_string(other.join("train.yaml")).unwrap();
    assert!(
        yaml.contains("NOT EXACT") && yaml.contains("freeze_trainable_layers: -3"),
        "{yaml}"
    );
    let readme = std::fs::read_to_string(other.join("README.md")).unwrap();
    assert!(
        readme.contains("cannot express it") && readme.contains("model.layers.1."),
        "{readme}"
    );
}

/// The Axolotl venv's python (scripts/axolotl-venv.sh; `make test` builds it first).
fn axolotl_python() -> PathBuf {
    let p = std::env::var_os("FREEZETUNE_AXOLOTL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/freezetune-axolotl-venv/bin/python"));
    assert!(
        p.exists(),
        "{} is missing: run `bash scripts/axolotl-venv.sh` (it installs Axolotl 0.19.0 once), or set \
         FREEZETUNE_AXOLOTL_PYTHON",
        p.display()
    );
    p
}

/// Axolotl bundles for plans of every shape — whole top layers with a non-layer module, one module of some
/// layers (which LLaMA-Factory's keys cannot express), LFM2's short convolutions in its conv layers, and the
/// full-attention layer of Qwen3.5's vision-language checkpoint — pass Axolotl's own config validation, and
/// Axolotl's freeze code, given the bundle's patterns, leaves trainable exactly the plan's tensors.
#[test]
fn axolotl_validates_each_bundle_and_its_patterns_free_exactly_the_plans_tensors() {
    let python = axolotl_python();
    let dir = tempfile::tempdir().unwrap();
    // Each plan as run.toml's [freeze] and as `freezetune plan`'s flags.
    let cases: [(&str, &str, &[&str]); 5] = [
        (
            "qwen2",
            "top = 2\nextra = [\"norm\"]",
            &["--top", "2", "--extra", "norm"],
        ),
        (
            "qwen2",
            "layers = \"0,2\"\nmodules = [\"mlp\"]",
            &["--layers", "0,2", "--modules", "mlp"],
        ),
        (
            "lfm2",
            "layers = \"0,2\"\nmodules = [\"conv\"]",
            &["--layers", "0,2", "--modules", "conv"],
        ),
        (
            "qwen3_5_vlm",
            "layers = \"3\"\nextra = [\"lm_head\"]",
            &["--layers", "3", "--extra", "lm_head"],
        ),
        // Mixtral's experts, which transformers 5 (and so Axolotl) holds fused under `mlp`.
        (
            "mixtral",
            "layers = \"1\"\nmodules = [\"block_sparse_moe\"]",
            &["--layers", "1", "--modules", "block_sparse_moe"],
        ),
    ];
    let mut bundles = Vec::new();
    let mut plans = Vec::new();
    for (k, (model, freeze, flags)) in cases.iter().enumerate() {
        let case = dir.path().join(format!("case{k}"));
        std::fs::create_dir_all(&case).unwrap();
        let run = case.join("run.toml");
        let config = format!(
            "[model]\npath = {:?}\n[freeze]\n{freeze}\n[data]\ncutoff_len = 128\n[[data.datasets]]\npath = {:?}\n\
             [[data.datasets]]\npath = {:?}\n[training]\nbatch_size = 4\nlearning_rate = 2e-5\n\
             [output]\ndir = \"runs/ft\"\n",
            fixtures().join("models").join(model),
            fixtures().join("data/alpaca.parquet"),
            fixtures().join("data/sharegpt.parquet"),
        );
        std::fs::write(&run, config).unwrap();
        let bundle = case.join("bundle");
        let args = [
            "export-run",
            run.to_str().unwrap(),
            "--to",
            "axolotl",
            "-o",
            bundle.to_str().unwrap(),
        ];
        let out = freezetune(&args, &case);
        assert!(
            out.status.success(),
            "{model}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let model_dir = fixtures().join("models").join(model);
        let plan_args = [&["plan", model_dir.to_str().unwrap(), "--json"][..], flags].concat();
        let out = freezetune(&plan_args, &case);
        assert!(
            out.status.success(),
            "{model}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        plans.push(serde_json::from_slice::<Value>(&out.stdout).unwrap());
        bundles.push(bundle);
    }
    let out = Command::new(&python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/axolotl_check.py"))
        .args(&bundles)
        .env("CUDA_VISIBLE_DEVICES", "")
        .env("HF_DATASETS_CACHE", dir.path().join("hf-datasets"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "Axolotl refused a bundle:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("REPORT "))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), cases.len(), "{}", String::from_utf8_lossy(&out.stdout));
    for (((model, freeze, _), plan), report) in cases.iter().zip(&plans).zip(&reports) {
        // In transformers 5's parameter names, as Axolotl sees them (a layer's experts are one parameter).
        let config = std::fs::read_to_string(fixtures().join("models").join(model).join("config.json")).unwrap();
        let config: Value = serde_json::from_str(&config).unwrap();
        let model_type = config["model_type"].as_str().unwrap_or_default().to_string();
        let trainable: Vec<String> = serde_json::from_value(plan["trainable"].clone()).unwrap();
        let trainable: Vec<String> = trainable
            .iter()
            .map(|n| freezetune_core::runtime_names::runtime_name(n, &model_type))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let axolotl: Vec<String> = serde_json::from_value(report["trainable"].clone()).unwrap();
        assert_eq!(
            axolotl, trainable,
            "{model} with {freeze:?}: Axolotl's trainable tensors vs the plan"
        );
        assert_eq!(
            report["trainable_params"], plan["trainable_params"],
            "{model} with {freeze:?}"
        );
        assert_eq!(report["sequence_len"], 128);
        assert_eq!(report["micro_batch_size"], 4);
        assert_eq!(report["datasets"], serde_json::json!(["chat_template"]));
    }
    let lfm2 = &reports[2];
    assert_eq!(lfm2["trainable_params"], 33792, "LFM2's conv modules of layers 0 and 2");
}

/// The Axolotl bundle of the same run, started by its own launch.sh (`axolotl train` on the CPU, 2 steps): the
/// tensors Axolotl's saved model changed are exactly the plan's; the examples Axolotl tokenized are FreezeTune's,
/// token for token in length, with the one masking difference the bundle's README states (Axolotl learns each
/// reply and its end-of-turn token, FreezeTune also the newline Qwen's template writes after it: one token per
/// reply); and its first loss is FreezeTune's step-1 loss up to that difference.
#[test]
fn the_axolotl_bundle_trains_the_plans_tensors() {
    let python = axolotl_python();
    let dir = tempfile::tempdir().unwrap();
    let run = write_run(dir.path());
    let bundle = dir.path().join("bundle");
    let args = [
        "export-run",
        run.to_str().unwrap(),
        "--to",
        "axolotl",
        "-o",
        bundle.to_str().unwrap(),
    ];
    let out = freezetune(&args, dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let readme = std::fs::read_to_string(bundle.join("README.md")).unwrap();
    assert!(readme.contains("end-of-turn"), "{readme}");

    let (ft_loss, _, trainable) = freezetune_step1(&run, dir.path());

    let log = launch(
        &bundle,
        &python,
        dir.path(),
        ("AXOLOTL_DO_NOT_TRACK", "1"),
        "axolotl train",
    );
    // The Trainer's log line: {'loss': '6.235', ...}
    let ax_loss: f64 = log
        .split("{'loss': '")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("Axolotl logged no loss:\n{log}"));
    assert!(
        (ax_loss - ft_loss).abs() < 0.05 * ft_loss,
        "first loss: Axolotl {ax_loss}, FreezeTune {ft_loss}"
    );
    let changed = changed_tensors(&python, &bundle.join("output/model.safetensors"));
    assert_eq!(changed, trainable, "tensors Axolotl changed vs the plan");
    eprintln!("first loss: Axolotl {ax_loss}, FreezeTune {ft_loss}");

    // (tokens, learned tokens) of each example: Axolotl's prepared dataset, and FreezeTune's preview less one
    // learned token per reply (each learned run, marked [[ ]], is one reply).
    let prepared = Command::new(&python)
        .arg("-c")
        .arg(
            "import glob, json, sys\n\
             from datasets import load_from_disk\n\
             rows = []\n\
             for d in glob.glob(sys.argv[1] + '/prepared/*/'):\n\
             \x20   rows += [[len(r['input_ids']), sum(l != -100 for l in r['labels'])] for r in load_from_disk(d)]\n\
             print(json.dumps(sorted(rows)))",
        )
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        prepared.status.success(),
        "{}",
        String::from_utf8_lossy(&prepared.stderr)
    );
    let axolotl: Vec<(usize, usize)> = serde_json::from_slice(&prepared.stdout).unwrap();
    let out = freezetune(
        &["data", "preview", run.to_str().unwrap(), "-n", "6", "--json"],
        dir.path(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let preview: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut ours: Vec<(usize, usize)> = preview["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let replies = e["marked"].as_str().unwrap().matches("[[").count();
            let learned = e["learned_tokens"].as_u64().unwrap() as usize;
            (e["tokens"].as_u64().unwrap() as usize, learned - replies)
        })
        .collect();
    ours.sort();
    assert_eq!(axolotl, ours, "(tokens, learned) per example: Axolotl vs FreezeTune");
}
