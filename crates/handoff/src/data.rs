//! The run's rows as LLaMA-Factory reads them: exactly the rows FreezeTune trains on (each dataset mapped, cut to
//! its limit, the mixture drawn with the run's seed), written as JSON Lines in the two layouts FreezeTune's
//! records already have — alpaca (instruction / input / output / system / history) and sharegpt (conversations of
//! from human / gpt / system, and system) — with a `dataset_info.json` naming their columns. LLaMA-Factory then
//! concatenates the files and its trainer shuffles them, as FreezeTune's does. For Axolotl the same rows are
//! written as conversations, which it renders with the model's own chat template.

use crate::{put, HandoffError, Result};
use freezetune_core::data_spec::{DatasetSpec, Formatting, Mix};
use freezetune_core::run_config::{DataFormat, DataSection};
use freezetune_data::{messages, Row};
use serde_json::{json, Map, Value};
use std::path::Path;

/// One file written: the name its dataset_info.json entry has, and its rows.
pub(crate) struct Written {
    pub name: String,
    pub rows: usize,
}

/// The run's training datasets: `datasets`, or the old single `train` file read as its `format` says.
pub(crate) fn train_specs(data: &DataSection) -> Vec<DatasetSpec> {
    if !data.datasets.is_empty() {
        return data.datasets.clone();
    }
    vec![legacy_spec(&data.train, data.format)]
}

/// A file of the old form as a spec that reads it the same way.
pub(crate) fn legacy_spec(path: &Path, format: DataFormat) -> DatasetSpec {
    let formatting = match format {
        DataFormat::Alpaca => Some(Formatting::Alpaca),
        DataFormat::Sharegpt => Some(Formatting::Sharegpt),
        DataFormat::Text => Some(Formatting::Text),
        DataFormat::Tokenized => Some(Formatting::Tokenized),
        // `messages` is OpenAI's layout, which detection reads.
        DataFormat::Messages | DataFormat::Auto => None,
    };
    DatasetSpec {
        path: Some(path.to_path_buf()),
        formatting,
        ..Default::default()
    }
}

/// Writes `specs`' rows, mixed by `mix` with `seed`, under `dir/data/` as `<stem>_alpaca.jsonl` and
/// `<stem>_sharegpt.jsonl`, and adds their entries to `info`.
pub(crate) fn write_rows(
    dir: &Path,
    files: &mut Vec<String>,
    info: &mut Map<String, Value>,
    stem: &str,
    specs: &[DatasetSpec],
    mix: Mix,
    seed: u64,
) -> Result<Vec<Written>> {
    let rows = freezetune_data::load_mixed(specs, mix, seed)?;
    let mut alpaca = Vec::new();
    let mut sharegpt = Vec::new();
    for (row, formatting) in rows {
        match formatting {
            Formatting::Alpaca => alpaca.push(row),
            Formatting::Sharegpt => sharegpt.push(row),
            Formatting::Text | Formatting::Tokenized => return Err(no_sft_equivalent(&row, formatting)),
        }
    }
    let mut written = Vec::new();
    for (layout, rows) in [(Formatting::Alpaca, alpaca), (Formatting::Sharegpt, sharegpt)] {
        if rows.is_empty() {
            continue;
        }
        let name = format!(
            "{stem}_{}",
            if layout == Formatting::Alpaca {
                "alpaca"
            } else {
                "sharegpt"
            }
        );
        let file = format!("{name}.jsonl");
        let (lines, entry) = match layout {
            Formatting::Alpaca => alpaca_file(&rows, &file),
            _ => sharegpt_file(&rows, &file),
        };
        put(dir, files, &format!("data/{file}"), &lines)?;
        info.insert(name.clone(), entry);
        written.push(Written { name, rows: rows.len() });
    }
    Ok(written)
}

fn no_sft_equivalent(row: &Row, formatting: Formatting) -> HandoffError {
    let what = match formatting {
        Formatting::Text => "plain text, every token learned",
        _ => "already tokenized",
    };
    HandoffError::Refused(format!(
        "{}:{}: this dataset is {what}, which the engines' instruction-tuning stages have no form for (their \
         pretraining modes pack text into blocks, a different run); export the instruction and chat datasets only, \
         or train this one here",
        row.file.display(),
        row.line
    ))
}

/// Every row with the same keys (null where a row has none), so the `datasets` JSON reader infers one schema; the
/// system and history columns are declared only when some row has them.
fn alpaca_file(rows: &[Row], file: &str) -> (String, Value) {
    let has = |key: &str| rows.iter().any(|r| r.value.get(key).is_some_and(|v| !v.is_null()));
    let (system, history) = (has("system"), has("history"));
    let mut lines = String::new();
    for r in rows {
        let v = &r.value;
        let mut out = Map::new();
        for key in ["instruction", "input", "output"] {
            out.insert(key.into(), v.get(key).cloned().unwrap_or(Value::String(String::new())));
        }
        if system {
            out.insert("system".into(), v.get("system").cloned().unwrap_or(Value::Null));
        }
        if history {
            out.insert("history".into(), v.get("history").cloned().unwrap_or(Value::Null));
        }
        lines.push_str(&Value::Object(out).to_string());
        lines.push('\n');
    }
    let mut columns = json!({"prompt": "instruction", "query": "input", "response": "output"});
    if system {
        columns["system"] = "system".into();
    }
    if history {
        columns["history"] = "history".into();
    }
    (lines, json!({"file_name": file, "columns": columns}))
}

fn sharegpt_file(rows: &[Row], file: &str) -> (String, Value) {
    let system = rows.iter().any(|r| r.value.get("system").is_some_and(|v| !v.is_null()));
    let mut lines = String::new();
    for r in rows {
        let mut out = Map::new();
        out.insert(
            "conversations".into(),
            r.value
                .get("conversations")
                .cloned()
                .unwrap_or(Value::Array(Vec::new())),
        );
        if system {
            out.insert("system".into(), r.value.get("system").cloned().unwrap_or(Value::Null));
        }
        lines.push_str(&Value::Object(out).to_string());
        lines.push('\n');
    }
    let mut columns = json!({"messages": "conversations"});
    if system {
        columns["system"] = "system".into();
    }
    (
        lines,
        json!({"file_name": file, "formatting": "sharegpt", "columns": columns}),
    )
}

/// Writes `specs`' rows, mixed by `mix` with `seed`, as `dir/data/<stem>.jsonl`: one `{"messages": [{role,
/// content}]}` conversation per line, each read from its alpaca or sharegpt row as FreezeTune reads it. The
/// conversations FreezeTune leaves out (turns that do not alternate user / assistant) are left out here too and
/// counted in the returned `skipped`.
pub(crate) fn write_conversations(
    dir: &Path,
    files: &mut Vec<String>,
    stem: &str,
    specs: &[DatasetSpec],
    mix: Mix,
    seed: u64,
) -> Result<Conversations> {
    let rows = freezetune_data::load_mixed(specs, mix, seed)?;
    let mut lines = String::new();
    let (mut written, mut skipped) = (0, 0);
    for (row, formatting) in rows {
        let messages = match formatting {
            Formatting::Alpaca => messages::alpaca(&row.value),
            Formatting::Sharegpt => messages::sharegpt(&row.value),
            Formatting::Text | Formatting::Tokenized => return Err(no_sft_equivalent(&row, formatting)),
        };
        let messages = messages.map_err(|reason| freezetune_data::DataError::bad(&row.file, row.line, reason))?;
        if !messages::alternates(&messages) {
            skipped += 1;
            continue;
        }
        lines.push_str(&json!({ "messages": messages }).to_string());
        lines.push('\n');
        written += 1;
    }
    let file = format!("data/{stem}.jsonl");
    put(dir, files, &file, &lines)?;
    Ok(Conversations { file, written, skipped })
}

/// A conversations file written: its path in the bundle, and how many rows it holds and left out.
pub(crate) struct Conversations {
    pub file: String,
    pub written: usize,
    pub skipped: usize,
}
