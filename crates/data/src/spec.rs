//! A run's `[[data.datasets]]` read: each dataset's rows (a file or folder, or a dataset_info.json entry), its
//! mapping applied to every row (or detected from the first), its row limit, then all of them mixed.

use crate::error::{DataError, Result};
use crate::mapping::Mapping;
use crate::source::{open, open_files, split_files, Row};
use freezetune_core::data_spec::{Columns, DatasetSpec, Formatting, Mix, Tags};
use std::path::PathBuf;

/// One dataset's rows, as the trainer's records of one formatting.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub rows: Vec<Row>,
    pub formatting: Formatting,
}

/// Where a spec's rows are and how they map.
struct Resolved {
    path: PathBuf,
    /// A config and split to pick the folder's files by (a Hub snapshot, or where the spec names them).
    split: Option<(Option<String>, String)>,
    /// Only the folder's files these globs match (the spec's `files`).
    files: Vec<String>,
    /// A dataset_info entry naming only a prompt column: text when the rows have no response column.
    pretraining_text: bool,
    formatting: Option<Formatting>,
    columns: Columns,
    tags: Tags,
    limit: Option<usize>,
}

/// Columns or tags named without a formatting say which one is meant, as in LLaMA-Factory (where alpaca is the
/// default): sharegpt for messages or tags, alpaca for prompt, query, response or history. Detection would ignore
/// them.
fn implied_formatting(columns: &Columns, tags: &Tags) -> Option<Formatting> {
    let alpaca_only = [&columns.prompt, &columns.query, &columns.response, &columns.history];
    if columns.messages.is_some() || tags != &Tags::default() {
        Some(Formatting::Sharegpt)
    } else if alpaca_only.iter().any(|c| c.is_some()) {
        Some(Formatting::Alpaca)
    } else {
        // `system` or `tools` alone belong to either layout: the first row tells which.
        None
    }
}

fn resolve(spec: &DatasetSpec) -> Result<Resolved> {
    let split = match (&spec.split, &spec.config, &spec.hub) {
        (None, None, None) if spec.files.is_empty() => None,
        (split, config, _) => Some((config.clone(), split.clone().unwrap_or_else(|| "train".into()))),
    };
    match (&spec.path, &spec.dataset_info, &spec.name) {
        (None, None, _) if spec.hub.is_some() => Err(DataError::bad(
            &PathBuf::from(spec.label()),
            1,
            "is not downloaded yet: `freezetune train` and `data preview` fetch Hub datasets before the run; in the \
             app, press Download beside it"
                .into(),
        )),
        (Some(path), _, _) => Ok(Resolved {
            path: path.clone(),
            split,
            files: spec.files.clone(),
            pretraining_text: false,
            formatting: spec
                .formatting
                .or_else(|| implied_formatting(&spec.columns, &spec.tags)),
            columns: spec.columns.clone(),
            tags: spec.tags.clone(),
            limit: spec.limit,
        }),
        (None, Some(info), Some(name)) => {
            let e = crate::info::read_entry(info, name).map_err(|reason| DataError::bad(info, 1, reason))?;
            Ok(Resolved {
                path: e.path,
                split: None,
                files: Vec::new(),
                pretraining_text: e.pretraining_text && spec.formatting.is_none(),
                formatting: spec.formatting.or(Some(e.formatting)),
                columns: merge_columns(&spec.columns, e.columns),
                tags: merge_tags(&spec.tags, e.tags),
                limit: spec.limit.or(e.num_samples),
            })
        }
        _ => Err(DataError::bad(
            &PathBuf::from(spec.label()),
            1,
            "give `path`, or `dataset_info` and `name`".into(),
        )),
    }
}

/// The entry's columns with the spec's own named ones over them.
fn merge_columns(own: &Columns, entry: Columns) -> Columns {
    let pick = |a: &Option<String>, b: Option<String>| a.clone().or(b);
    Columns {
        prompt: pick(&own.prompt, entry.prompt),
        query: pick(&own.query, entry.query),
        response: pick(&own.response, entry.response),
        history: pick(&own.history, entry.history),
        messages: pick(&own.messages, entry.messages),
        system: pick(&own.system, entry.system),
        tools: pick(&own.tools, entry.tools),
    }
}

/// The entry's tags with the spec's own named ones over them.
fn merge_tags(own: &Tags, entry: Tags) -> Tags {
    let pick = |a: &Option<String>, b: Option<String>| a.clone().or(b);
    Tags {
        role_tag: pick(&own.role_tag, entry.role_tag),
        content_tag: pick(&own.content_tag, entry.content_tag),
        user_tag: pick(&own.user_tag, entry.user_tag),
        assistant_tag: pick(&own.assistant_tag, entry.assistant_tag),
        observation_tag: pick(&own.observation_tag, entry.observation_tag),
        function_tag: pick(&own.function_tag, entry.function_tag),
        system_tag: pick(&own.system_tag, entry.system_tag),
    }
}

/// A dataset's rows with its mapping applied, at most its limit of them.
pub fn load_spec(spec: &DatasetSpec) -> Result<Loaded> {
    let r = resolve(spec)?;
    let rows = match &r.split {
        Some((config, split)) if r.path.is_dir() => {
            open_files(&split_files(&r.path, config.as_deref(), split, &r.files)?)?
        }
        _ => open(&r.path)?,
    };
    let mut rows = rows.take(r.limit.unwrap_or(usize::MAX));
    let Some(first) = rows.next().transpose()? else {
        return Err(DataError::bad(&r.path, 1, "holds no rows".into()));
    };
    let mapping = mapping_of(&r, &first)?;
    let mut out = Vec::new();
    for row in std::iter::once(Ok(first)).chain(rows) {
        let mut row = row?;
        row.value = mapping
            .apply(&row.value)
            .map_err(|reason| DataError::bad(&row.file, row.line, reason))?;
        out.push(row);
    }
    Ok(Loaded {
        rows: out,
        formatting: mapping.formatting,
    })
}

/// The mapping a spec's rows are read with (given, or detected from its first row) and the first row's columns:
/// what the picker shows and lets the user edit, read without loading the rest of the dataset.
pub fn detect_spec(spec: &DatasetSpec) -> Result<(Mapping, Vec<String>)> {
    let r = resolve(spec)?;
    let mut rows = match &r.split {
        Some((config, split)) if r.path.is_dir() => {
            open_files(&split_files(&r.path, config.as_deref(), split, &r.files)?)?
        }
        _ => open(&r.path)?,
    };
    let Some(first) = rows.next().transpose()? else {
        return Err(DataError::bad(&r.path, 1, "holds no rows".into()));
    };
    let keys = match &first.value {
        serde_json::Value::Object(map) => map.keys().cloned().collect(),
        _ => Vec::new(),
    };
    Ok((mapping_of(&r, &first)?, keys))
}

fn mapping_of(r: &Resolved, first: &Row) -> Result<Mapping> {
    let response = r.columns.response.as_deref().unwrap_or("output");
    let formatting = match r.pretraining_text && first.value.get(response).is_none() {
        true => Some(Formatting::Text),
        false => r.formatting,
    };
    match formatting {
        Some(f) => Ok(Mapping::new(f, r.columns.clone(), r.tags.clone())),
        None => Mapping::detect(&first.value).map_err(|reason| DataError::bad(&first.file, first.line, reason)),
    }
}

/// Every dataset of a run, mixed: each row with its dataset's formatting.
pub fn load_mixed(specs: &[DatasetSpec], mix: Mix, seed: u64) -> Result<Vec<(Row, Formatting)>> {
    let mut sets = Vec::with_capacity(specs.len());
    for spec in specs {
        let loaded = load_spec(spec)?;
        let f = loaded.formatting;
        sets.push(loaded.rows.into_iter().map(|r| (r, f)).collect::<Vec<_>>());
    }
    let weighted = specs.iter().filter(|s| s.weight.is_some()).count();
    if weighted != 0 && weighted != specs.len() {
        let missing = specs
            .iter()
            .find(|s| s.weight.is_none())
            .map(|s| s.label())
            .unwrap_or_default();
        return Err(DataError::bad(
            &PathBuf::from(missing),
            1,
            "has no weight while other datasets have one: give every dataset a weight, or none (they then take turns)"
                .into(),
        ));
    }
    let weights: Vec<f64> = specs.iter().filter_map(|s| s.weight).collect();
    Ok(crate::mix::mix(sets, &weights, mix, seed))
}
