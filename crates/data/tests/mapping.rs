//! Column mapping and dataset_info.json entries (LLaMA-Factory's own entries, tests/fixtures/data/llamafactory),
//! detection of the common layouts, and mixtures by weight.

use freezetune_core::data_spec::{Columns, DatasetSpec, Formatting, Mix, Tags};
use freezetune_data::{load_mixed, load_spec, Mapping};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/data")
}

fn entry(name: &str) -> DatasetSpec {
    DatasetSpec {
        dataset_info: Some(fixtures().join("llamafactory/dataset_info.json")),
        name: Some(name.into()),
        ..Default::default()
    }
}

fn values(spec: &DatasetSpec) -> Vec<Value> {
    load_spec(spec).unwrap().rows.into_iter().map(|r| r.value).collect()
}

#[test]
fn llamafactory_entries_load_as_its_loader_reads_them_or_are_refused_by_name() {
    let identity = load_spec(&entry("identity")).unwrap();
    assert_eq!(identity.formatting, Formatting::Alpaca);
    let file: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("llamafactory/identity.json")).unwrap()).unwrap();
    assert_eq!(
        identity.rows.iter().map(|r| &r.value).collect::<Vec<_>>(),
        file.iter().collect::<Vec<_>>()
    );
    // A prompt-only entry is pretraining text.
    let c4 = load_spec(&entry("c4_demo")).unwrap();
    assert_eq!(c4.formatting, Formatting::Text);
    assert_eq!(
        c4.rows[1].value,
        json!({"text": "Pack my box with five dozen liquor jugs."})
    );
    // num_samples / limit.
    let limited = DatasetSpec {
        limit: Some(2),
        ..entry("identity")
    };
    assert_eq!(values(&limited).len(), 2);
    for (name, want) in [
        ("glaive_toolcall_en_demo", "tool turn (\"function_call\")"),
        ("mllm_demo", "unknown field `images`"),
        ("dpo_en_demo", "preference training"),
        ("alpaca_en", "hf_hub_url \"llamafactory/alpaca_en\""),
        ("no_such_entry", "has no dataset \"no_such_entry\""),
    ] {
        let err = load_spec(&entry(name)).unwrap_err().to_string();
        assert!(err.contains(want), "{name}: {err}");
    }
}

#[test]
fn common_layouts_are_detected_and_mapped_to_the_trainers_records() {
    let cases = [
        (
            json!({"prompt": "Say hi", "completion": "hi"}),
            json!({"instruction": "Say hi", "input": "", "output": "hi"}),
        ),
        (
            json!({"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                                {"role": "assistant", "content": "Hello"}]}),
            json!({"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"},
                                     {"from": "gpt", "value": "Hello"}]}),
        ),
        (json!({"text": "plain"}), json!({"text": "plain"})),
        (json!({"input_ids": [1, 2]}), json!({"input_ids": [1, 2]})),
    ];
    for (row, want) in cases {
        let m = Mapping::detect(&row).unwrap();
        assert_eq!(m.apply(&row).unwrap(), want, "{row}");
    }
    let err = Mapping::detect(&json!({"prompt": "p", "chosen": "a", "rejected": "b"})).unwrap_err();
    assert!(err.contains("preference"), "{err}");
    let err = Mapping::detect(&json!({"q": "p"})).unwrap_err();
    assert!(err.contains("[\"q\"]") && err.contains("columns"), "{err}");
}

#[test]
fn named_columns_and_tags_map_other_layouts() {
    // OpenOrca's columns, as LLaMA-Factory's dataset_info.json names them.
    let orca = Mapping::new(
        Formatting::Alpaca,
        Columns {
            prompt: Some("question".into()),
            response: Some("response".into()),
            system: Some("system_prompt".into()),
            ..Default::default()
        },
        Tags::default(),
    );
    let row = json!({"question": "2+2?", "response": "4", "system_prompt": "Answer briefly.", "id": "x"});
    assert_eq!(
        orca.apply(&row).unwrap(),
        json!({"instruction": "2+2?", "input": "", "output": "4", "system": "Answer briefly."})
    );
    let lmsys = Mapping::new(
        Formatting::Sharegpt,
        Columns {
            messages: Some("conversation".into()),
            ..Default::default()
        },
        Tags {
            role_tag: Some("role".into()),
            content_tag: Some("content".into()),
            user_tag: Some("user".into()),
            assistant_tag: Some("assistant".into()),
            ..Default::default()
        },
    );
    let row = json!({"conversation": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]});
    assert_eq!(
        lmsys.apply(&row).unwrap()["conversations"][1],
        json!({"from": "gpt", "value": "Yo"})
    );
    let err = lmsys
        .apply(&json!({"conversation": [{"role": "bot", "content": "x"}]}))
        .unwrap_err();
    assert!(err.contains("\"bot\"") && err.contains("assistant_tag"), "{err}");
}

#[test]
fn datasets_mix_by_weight_within_five_percent_over_two_thousand_rows() {
    let dir = tempfile::tempdir().unwrap();
    let specs: Vec<DatasetSpec> = [("a", 0.6), ("b", 0.3), ("c", 0.1)]
        .iter()
        .map(|(name, weight)| {
            let path = dir.path().join(format!("{name}.jsonl"));
            let rows: Vec<String> = (0..3000)
                .map(|i| json!({"text": format!("{name}{i}")}).to_string())
                .collect();
            std::fs::write(&path, rows.join("\n")).unwrap();
            DatasetSpec {
                path: Some(path),
                weight: Some(*weight),
                ..Default::default()
            }
        })
        .collect();
    let rows = load_mixed(&specs, Mix::InterleaveUnder, 7).unwrap();
    let first: Vec<&str> = rows[..2000]
        .iter()
        .map(|(r, _)| r.value["text"].as_str().unwrap())
        .collect();
    for (name, want) in [("a", 0.6), ("b", 0.3), ("c", 0.1)] {
        let share = first.iter().filter(|t| t.starts_with(name)).count() as f64 / 2000.0;
        println!("{name}: {share:.3} (weight {want})");
        assert!((share - want).abs() < 0.05, "{name}: {share} for {want}");
    }
    // Rows keep their dataset's order and their own file and line.
    let a: Vec<usize> = rows
        .iter()
        .filter(|(r, _)| r.file.ends_with("a.jsonl"))
        .map(|(r, _)| r.line)
        .take(3)
        .collect();
    assert_eq!(a, [1, 2, 3]);
    assert_eq!(load_mixed(&specs, Mix::Concat, 7).unwrap().len(), 9000);
}

#[test]
fn a_hub_snapshot_reads_its_config_and_split_and_an_unfetched_repo_is_named() {
    let dir = tempfile::tempdir().unwrap();
    for (rel, src) in [
        ("default/train-00000-of-00001.parquet", "alpaca.parquet"),
        ("default/test-00000-of-00001.parquet", "sharegpt.parquet"),
        ("other/train.jsonl", ""),
    ] {
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        match src {
            "" => std::fs::write(&path, "{\"text\": \"x\"}\n").unwrap(),
            src => drop(std::fs::copy(fixtures().join(src), &path).unwrap()),
        }
    }
    let spec = DatasetSpec {
        hub: Some("org/set".into()),
        path: Some(dir.path().to_path_buf()),
        config: Some("default".into()),
        ..Default::default()
    };
    let loaded = load_spec(&spec).unwrap();
    assert_eq!(
        (loaded.formatting, loaded.rows.len()),
        (Formatting::Alpaca, 5),
        "the train split by default"
    );
    let test = load_spec(&DatasetSpec {
        split: Some("test".into()),
        ..spec.clone()
    })
    .unwrap();
    assert_eq!((test.formatting, test.rows.len()), (Formatting::Sharegpt, 2));
    let err = load_spec(&DatasetSpec { path: None, ..spec }).unwrap_err().to_string();
    assert!(
        err.contains("hub dataset org/set") && err.contains("not downloaded"),
        "{err}"
    );
}

#[test]
fn mixes_without_weights_take_turns_and_half_weighted_mixes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let specs: Vec<DatasetSpec> = ["a", "b"]
        .iter()
        .map(|name| {
            let path = dir.path().join(format!("{name}.jsonl"));
            let rows: Vec<String> = (0..3)
                .map(|i| json!({"text": format!("{name}{i}")}).to_string())
                .collect();
            std::fs::write(&path, rows.join("\n")).unwrap();
            DatasetSpec {
                path: Some(path),
                ..Default::default()
            }
        })
        .collect();
    let texts = |rows: Vec<(freezetune_data::Row, Formatting)>| -> Vec<String> {
        rows.iter()
            .map(|(r, _)| r.value["text"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        texts(load_mixed(&specs, Mix::InterleaveUnder, 1).unwrap()),
        ["a0", "b0", "a1", "b1", "a2"]
    );
    let mut half = specs.clone();
    half[0].weight = Some(2.0);
    let err = load_mixed(&half, Mix::InterleaveUnder, 1).unwrap_err().to_string();
    assert!(err.contains("has no weight while other datasets have one"), "{err}");
}

#[test]
fn entries_stay_in_their_folder_and_a_renamed_prompt_keeps_its_response() {
    let dir = tempfile::tempdir().unwrap();
    let info = dir.path().join("dataset_info.json");
    std::fs::write(
        &info,
        json!({
            "outside": {"file_name": "../secret.jsonl"},
            "absolute": {"file_name": "/etc/passwd"},
            "renamed": {"file_name": "qa.jsonl", "columns": {"prompt": "question"}},
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("qa.jsonl"),
        json!({"question": "2+2?", "output": "4"}).to_string(),
    )
    .unwrap();
    let spec = |name: &str| DatasetSpec {
        dataset_info: Some(info.clone()),
        name: Some(name.into()),
        ..Default::default()
    };
    for name in ["outside", "absolute"] {
        let err = load_spec(&spec(name)).unwrap_err().to_string();
        assert!(err.contains("leaves the dataset_info.json's folder"), "{name}: {err}");
    }
    let renamed = load_spec(&spec("renamed")).unwrap();
    assert_eq!(renamed.formatting, Formatting::Alpaca);
    assert_eq!(
        renamed.rows[0].value,
        json!({"instruction": "2+2?", "input": "", "output": "4"})
    );
}

#[test]
fn the_picker_reads_a_specs_mapping_and_columns_from_its_first_row_only() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chat.jsonl");
    // The second row is broken: detection reads the first row and nothing after it.
    std::fs::write(
        &file,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"id\": 1}\nnot json\n",
    )
    .unwrap();
    let spec = DatasetSpec {
        path: Some(file.clone()),
        ..Default::default()
    };
    let (mapping, mut keys) = freezetune_data::detect_spec(&spec).unwrap();
    keys.sort();
    assert_eq!(keys, ["id", "messages"]);
    assert_eq!(mapping.formatting, Formatting::Sharegpt);
    assert_eq!(mapping.columns.messages.as_deref(), Some("messages"));
    assert_eq!(mapping.tags.role_tag.as_deref(), Some("role"));
    assert!(load_spec(&spec).is_err(), "a full load reads the broken row");
    // A mapping the user gives is the one reported.
    let given = DatasetSpec {
        formatting: Some(Formatting::Text),
        columns: Columns {
            prompt: Some("id".into()),
            ..Default::default()
        },
        ..spec
    };
    let (mapping, _) = freezetune_data::detect_spec(&given).unwrap();
    assert_eq!(mapping.formatting, Formatting::Text);
    assert_eq!(mapping.columns.prompt.as_deref(), Some("id"));
}

#[test]
fn columns_named_without_a_formatting_are_used_not_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("qa.jsonl");
    std::fs::write(&file, "{\"q\": \"2+2?\", \"a\": \"4\"}\n").unwrap();
    let spec = DatasetSpec {
        path: Some(file),
        columns: Columns {
            prompt: Some("q".into()),
            response: Some("a".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let loaded = load_spec(&spec).unwrap();
    assert_eq!(loaded.formatting, Formatting::Alpaca);
    assert_eq!(loaded.rows[0].value["instruction"], "2+2?");
    assert_eq!(loaded.rows[0].value["output"], "4");
}
