//! The `freezetune` binary end to end: inspect, plan (text, JSON, errors), export-config, presets, demo model.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name)
}

fn run(config_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_freezetune"))
        .args(args)
        .env("FREEZETUNE_CONFIG_DIR", config_dir)
        .output()
        .unwrap()
}

fn ok(config_dir: &Path, args: &[&str]) -> String {
    let out = run(config_dir, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(config_dir: &Path, args: &[&str]) -> Value {
    serde_json::from_str(&ok(config_dir, args)).unwrap()
}

fn fail(config_dir: &Path, args: &[&str]) -> (Value, String) {
    let out = run(config_dir, args);
    assert!(!out.status.success(), "{args:?} should fail");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let v = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (v, String::from_utf8(out.stderr).unwrap())
}

#[test]
fn inspect_text_and_json() {
    let cfg = tempfile::tempdir().unwrap();
    let llama = fixture("llama");
    let text = ok(cfg.path(), &["inspect", llama.to_str().unwrap()]);
    assert!(
        text.contains("LlamaForCausalLM") && text.contains("4 under model.layers") && text.contains("untied"),
        "{text}"
    );
    let j = json(cfg.path(), &["inspect", llama.to_str().unwrap(), "--json"]);
    assert_eq!(j["num_layers"], 4);
    assert_eq!(j["layer_prefix"], "model.layers");
    assert_eq!(j["layers"][0]["modules"][1]["name"], "mlp");
    assert_eq!(
        j["layers"][0]["modules"][1]["tensors"][0]["shape"],
        serde_json::json!([64, 128])
    );
    let (_, err) = fail(cfg.path(), &["inspect", cfg.path().to_str().unwrap()]);
    assert!(err.contains("no config.json"), "{err}");
}

#[test]
fn inspect_shows_each_layers_attention_kind_and_why_a_model_is_refused() {
    let cfg = tempfile::tempdir().unwrap();
    let gemma3 = fixture("gemma3");
    let text = ok(cfg.path(), &["inspect", gemma3.to_str().unwrap()]);
    let row = |id: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(&format!("{id} ")))
            .unwrap_or_default()
    };
    assert!(row("0").contains("sliding 8") && row("1").contains("full"), "{text}");
    let j = json(cfg.path(), &["inspect", fixture("smollm3").to_str().unwrap(), "--json"]);
    assert_eq!(
        j["training"]["layer_kinds"],
        serde_json::json!(["full, no rope", "full", "full"])
    );
    // A config key the decoder does not read: inspect still shows the layout, and says why training is refused.
    let odd = cfg.path().join("odd");
    std::fs::create_dir(&odd).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("llama").join(f), odd.join(f)).unwrap();
    }
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(odd.join("config.json")).unwrap()).unwrap();
    config["attn_logit_softcapping"] = 50.0.into();
    std::fs::write(odd.join("config.json"), config.to_string()).unwrap();
    let text = ok(cfg.path(), &["inspect", odd.to_str().unwrap()]);
    assert!(
        text.contains("Training     refused") && text.contains("attn_logit_softcapping"),
        "{text}"
    );
    let j = json(cfg.path(), &["inspect", odd.to_str().unwrap(), "--json"]);
    assert_eq!(j["training"]["supported"], false);
}

#[test]
fn plan_json_contract_and_errors() {
    let cfg = tempfile::tempdir().unwrap();
    let m = fixture("llama12");
    let m = m.to_str().unwrap();
    let j = json(
        cfg.path(),
        &[
            "plan",
            m,
            "--layers",
            "1, 10-11",
            "--modules",
            "self_attn",
            "--extra",
            "norm",
            "--json",
        ],
    );
    assert_eq!(j["mode"], "native");
    let trainable: Vec<&str> = j["trainable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(trainable.len(), 3 * 4 + 1);
    assert!(trainable.windows(2).all(|w| w[0] < w[1]), "sorted");
    assert_eq!(j["layers"][1]["state"], "partial");
    assert_eq!(j["layers"][2]["state"], "frozen");
    assert!(j["memory"]["total_bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        j["trainable_params"].as_u64().unwrap(),
        j["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["trainable_params"].as_u64().unwrap())
            .sum::<u64>()
            + 32
    );

    let (e, _) = fail(cfg.path(), &["plan", m, "--layers", "12", "--json"]);
    assert_eq!(e["error"]["kind"], "layer_out_of_range");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("12 layers, valid ids are 0-11"));
    let (e, _) = fail(cfg.path(), &["plan", m, "--top", "1", "--modules", "attn", "--json"]);
    assert_eq!(e["error"]["module"], "attn");
    assert_eq!(
        e["error"]["choices"],
        serde_json::json!(["input_layernorm", "mlp", "post_attention_layernorm", "self_attn"])
    );
    let (_, err) = fail(cfg.path(), &["plan", m, "--layers", "5-2"]);
    assert!(err.contains("runs backwards; write 2-5"), "{err}");
    let (_, err) = fail(
        cfg.path(),
        &[
            "plan",
            fixture("qwen2").to_str().unwrap(),
            "--top",
            "1",
            "--extra",
            "lm_head",
        ],
    );
    assert!(err.contains("tie_word_embeddings"), "{err}");
    let text = ok(cfg.path(), &["plan", m, "--no-layers"]);
    assert!(text.contains("nothing trains"), "{text}");
}

#[test]
fn llamafactory_mode_from_flags_and_yaml() {
    let cfg = tempfile::tempdir().unwrap();
    let m = fixture("llama");
    let m = m.to_str().unwrap();
    let j = json(
        cfg.path(),
        &[
            "plan",
            m,
            "--freeze-trainable-layers",
            "-1",
            "--freeze-extra-modules",
            "norm",
            "--json",
        ],
    );
    assert_eq!(j["mode"], "llamafactory");
    assert_eq!(j["trainable"].as_array().unwrap().len(), 9 + 1 + 6);
    assert!(j["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w["code"] == "lf_substring_match"));
    let yaml = cfg.path().join("sft.yaml");
    std::fs::write(
        &yaml,
        "stage: sft\nfinetuning_type: freeze\nfreeze_trainable_layers: 0\n",
    )
    .unwrap();
    let j = json(
        cfg.path(),
        &["plan", m, "--llamafactory-config", yaml.to_str().unwrap(), "--json"],
    );
    assert_eq!(j["trainable"], serde_json::json!([]));
    assert!(j["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w["code"] == "lf_zero_layers"));
    let j = json(
        cfg.path(),
        &[
            "plan",
            m,
            "--freeze-trainable-layers-ids",
            "1,3",
            "--freeze-trainable-modules",
            "mlp",
            "--json",
        ],
    );
    assert_eq!(j["trainable_layer_ids"], "1,3");
    let (e, _) = fail(
        cfg.path(),
        &["plan", m, "--freeze-trainable-layers", "3", "--use-llama-pro", "--json"],
    );
    assert_eq!(e["error"]["kind"], "llama_pro_not_divisible");
}

#[test]
fn export_config_formats() {
    let cfg = tempfile::tempdir().unwrap();
    let m = fixture("llama12");
    let m = m.to_str().unwrap();
    let lf = ok(
        cfg.path(),
        &[
            "export-config",
            m,
            "--format",
            "llamafactory",
            "--top",
            "3",
            "--modules",
            "mlp",
        ],
    );
    assert!(
        lf.contains("finetuning_type: freeze\nfreeze_trainable_layers: 3\nfreeze_trainable_modules: mlp\n"),
        "{lf}"
    );
    let (_, err) = fail(
        cfg.path(),
        &["export-config", m, "--format", "llamafactory", "--layers", "1,5,9"],
    );
    assert!(err.contains("1,5,9") && err.contains("axolotl"), "{err}");
    let out = cfg.path().join("axolotl.yaml");
    let args = [
        "export-config",
        m,
        "--format",
        "axolotl",
        "--layers",
        "1,5,9",
        "-o",
        out.to_str().unwrap(),
    ];
    ok(cfg.path(), &args);
    assert!(std::fs::read_to_string(&out)
        .unwrap()
        .contains("- '^model.layers.(1|5|9).'"));
    let (_, err) = fail(cfg.path(), &args);
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn presets_round_trip_and_survive_corrupt_files() {
    let cfg = tempfile::tempdir().unwrap();
    let c = cfg.path();
    let m = fixture("llama");
    let m = m.to_str().unwrap();
    ok(
        c,
        &[
            "preset",
            "save",
            "mlp-top",
            "--top",
            "2",
            "--modules",
            "mlp",
            "--model",
            m,
        ],
    );
    let (_, err) = fail(c, &["preset", "save", "mlp-top", "--top", "1"]);
    assert!(err.contains("--force"), "{err}");
    let (_, err) = fail(c, &["preset", "save", "bad", "--layers", "9", "--model", m]);
    assert!(err.contains("out of range"), "{err}");
    ok(c, &["preset", "save", "lf", "--freeze-trainable-layers", "-1"]);
    let file = c.join("presets/mlp-top.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("schema_version = 1") && text.contains("top = 2"),
        "{text}"
    );
    let plan = json(c, &["plan", "--preset", "mlp-top", "--json"]);
    assert_eq!(plan["trainable"].as_array().unwrap().len(), 6);
    std::fs::write(c.join("presets/broken.toml"), "schema_version = [").unwrap();
    let list = json(c, &["preset", "list", "--json"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["broken", "lf", "mlp-top"]);
    assert_eq!(list[0]["error"]["kind"], "preset_corrupt");
    assert!(ok(c, &["preset", "list"]).contains("UNREADABLE"));
    let exported = c.join("out.toml");
    ok(c, &["preset", "export", "lf", exported.to_str().unwrap()]);
    ok(
        c,
        &["preset", "import", exported.to_str().unwrap(), "--name", "lf-copy"],
    );
    assert!(ok(c, &["preset", "show", "lf-copy"]).contains("freeze_trainable_layers = -1"));
    ok(c, &["preset", "rename", "lf-copy", "lf2"]);
    ok(c, &["preset", "delete", "lf2"]);
    let (e, _) = fail(c, &["preset", "show", "lf2", "--json"]);
    assert_eq!(e["error"]["kind"], "preset_not_found");
    assert_eq!(
        std::fs::read_to_string(c.join("presets/broken.toml")).unwrap(),
        "schema_version = ["
    );
}

#[test]
fn demo_model_is_inspectable_and_not_overwritten() {
    let cfg = tempfile::tempdir().unwrap();
    let dir = cfg.path().join("demo");
    let d = dir.to_str().unwrap();
    let model = ok(cfg.path(), &["demo-model", d]);
    assert_eq!(model.trim(), dir.join("model").to_str().unwrap());
    let j = json(cfg.path(), &["inspect", model.trim(), "--json"]);
    assert_eq!(j["num_layers"], 8);
    let (_, err) = fail(cfg.path(), &["demo-model", d]);
    assert!(err.contains("--force"), "{err}");
}

#[test]
fn probe_measures_every_layer_and_its_suggestion_is_a_plan_selection() {
    let cfg = tempfile::tempdir().unwrap();
    let dir = cfg.path().join("demo");
    let model = ok(cfg.path(), &["demo-model", dir.to_str().unwrap()]);
    let run = dir.join("run.toml");
    // `probe --config RUN --batches 1` and then `extra`.
    let probe = |extra: &[&str]| -> Vec<String> {
        let base = ["probe", "--config", run.to_str().unwrap(), "--batches", "1"];
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    fn args(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let j = json(cfg.path(), &args(&probe(&["--suggest", "3", "--json"])));
    let layers = j["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 8);
    assert!(layers.iter().all(|l| l["grad_norm"].as_f64().unwrap() > 0.0));
    let ids = j["suggestion"]["layers"].as_str().unwrap().to_string();
    let plan = json(cfg.path(), &["plan", model.trim(), "--layers", &ids, "--json"]);
    assert_eq!(
        plan["trainable_layer_ids"].as_str().unwrap(),
        ids,
        "plan takes the suggestion unchanged"
    );
    let forward = probe(&["--forward-only", "--suggest", "2", "--by", "influence", "--json"]);
    assert!(json(cfg.path(), &args(&forward))["layers"][0]["grad_norm"].is_null());
    // What the app's worker reads: a progress line per pass and the end, then the report on one line.
    let out = ok(cfg.path(), &args(&probe(&["--forward-only", "--events", "jsonl"])));
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let progress: Vec<(u64, u64)> = lines[..lines.len() - 1]
        .iter()
        .map(|l| {
            assert_eq!(l["event"], "probe_progress", "{l}");
            (l["done"].as_u64().unwrap(), l["total"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(
        progress,
        [(0, 1), (1, 1)],
        "one forward pass over one batch, then the end"
    );
    assert_eq!(lines.last().unwrap()["layers"].as_array().unwrap().len(), 8);
    // --cached-only reads an earlier result and measures nothing.
    let cache = cfg.path().join("probes");
    let cache = cache.to_str().unwrap();
    let only = ["--forward-only", "--cache", cache, "--cached-only", "--json"];
    let (err, _) = fail(cfg.path(), &args(&probe(&only)));
    let message = err["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("not measured"), "{err}");
    let measured = json(
        cfg.path(),
        &args(&probe(&["--forward-only", "--cache", cache, "--json"])),
    );
    assert_eq!(measured["cached"], false);
    let again = json(cfg.path(), &args(&probe(&only)));
    assert_eq!(
        (again["cached"].clone(), again["layers"].clone()),
        (true.into(), measured["layers"].clone())
    );
    let (_, err) = fail(cfg.path(), &args(&probe(&["--forward-only", "--suggest", "2"])));
    assert!(err.contains("forward-only probe has no gradients"), "{err}");
    // A model folder and its data, without a run config.
    let data = dir.join("data.jsonl");
    let direct = [
        "probe",
        model.trim(),
        "--data",
        data.to_str().unwrap(),
        "--format",
        "alpaca",
        "--cutoff-len",
        "64",
        "--batch-size",
        "8",
        "--batches",
        "1",
        "--forward-only",
        "--json",
    ];
    let direct = json(cfg.path(), &direct);
    assert_eq!(direct["layers"].as_array().unwrap().len(), 8);
    assert!(direct["tokens"].as_u64().unwrap() > 0);
}

#[test]
fn schedule_options_need_a_schedule_and_plan_prints_its_timeline() {
    let cfg = tempfile::tempdir().unwrap();
    let model = ok(cfg.path(), &["demo-model", cfg.path().join("demo").to_str().unwrap()]);
    let (_, err) = fail(cfg.path(), &["plan", model.trim(), "--all-layers", "--interval", "5"]);
    assert!(err.contains("need --schedule KIND"), "{err}");
    let j = json(
        cfg.path(),
        &[
            "plan",
            model.trim(),
            "--all-layers",
            "--schedule",
            "cycle",
            "--interval",
            "5",
            "--steps",
            "10",
            "--json",
        ],
    );
    assert_eq!(j["timeline"]["phases"].as_array().unwrap().len(), 2);
}

#[test]
fn plan_fit_says_whether_a_run_fits_and_what_would_make_it() {
    let cfg = tempfile::tempdir().unwrap();
    let dir = cfg.path().join("demo");
    ok(cfg.path(), &["demo-model", dir.to_str().unwrap()]);
    let model = dir.join("model");
    let m = model.to_str().unwrap();
    let base = ["plan", m, "--all-layers", "--batch-size", "64", "--seq-len", "8192"];
    let with = |extra: &[&'static str]| [&base[..], extra].concat();
    let fit = |extra: &[&'static str]| json(cfg.path(), &with(&[extra, &["--json"]].concat()))["fit"].clone();
    let roomy = fit(&["--fit-memory", "100000"]);
    assert_eq!(
        (roomy["fits"].clone(), roomy["changes"].as_array().unwrap().len()),
        (true.into(), 0)
    );
    let tight = fit(&["--fit-memory", "8"]);
    assert_eq!(tight["fits"], false);
    let kinds: Vec<&str> = tight["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["change"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[0], "gradient_checkpointing", "{tight}");
    assert!(
        tight["changes"].as_array().unwrap().iter().any(|c| c["fits"] == true),
        "{tight}"
    );
    let text = ok(cfg.path(), &with(&["--fit", "cpu"]));
    assert!(text.contains("this machine has") && text.contains("GiB free"), "{text}");
    let (err, _) = fail(cfg.path(), &["plan", m, "--all-layers", "--fit", "cuda:9", "--json"]);
    assert!(
        err["error"]["message"].as_str().unwrap().contains("no such device"),
        "{err}"
    );
}

#[test]
fn export_gguf_and_import_gguf_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let c = tmp.path();
    let file = c.join("llama.gguf");
    let f = file.to_str().unwrap();
    let report = json(
        c,
        &[
            "export-gguf",
            fixture("llama").to_str().unwrap(),
            "-o",
            f,
            "--type",
            "q8_0",
            "--modelfile",
            "--json",
        ],
    );
    assert_eq!(report["architecture"], "llama");
    assert_eq!(report["type"], "q8_0");
    assert_eq!(report["tensor_types"]["q8_0"], 30);
    assert!(c.join("Modelfile").is_file());
    // Never replaced without --force, with the error's kind.
    let (err, _) = fail(
        c,
        &["export-gguf", fixture("llama").to_str().unwrap(), "-o", f, "--json"],
    );
    assert_eq!(err["error"]["kind"], "exists");
    let dir = c.join("imported");
    let back = json(c, &["import-gguf", f, "-o", dir.to_str().unwrap(), "--json"]);
    assert_eq!(back["dtype"], "f16");
    assert_eq!(back["source_types"]["q8_0"], 30);
    let inspected = json(c, &["inspect", dir.to_str().unwrap(), "--json"]);
    assert_eq!(inspected["num_layers"], 4);
    let (err, _) = fail(
        c,
        &[
            "export-gguf",
            fixture("llama").to_str().unwrap(),
            "-o",
            f,
            "--type",
            "q3",
            "--json",
        ],
    );
    assert!(err.is_null() || err["error"]["message"].as_str().unwrap().contains("q4_k_m"));
}
