//! An entry of a LLaMA-Factory `dataset_info.json`, read as LLaMA-Factory reads it (`data/dataset_info.json`
//! in its repository): `file_name` (relative to the file's folder), `formatting`, `columns`, `tags`,
//! `num_samples`. Keys FreezeTune cannot honour (Hub or script sources, ranking data, subsets and splits of a
//! Hub dataset) are refused by name, as is any key it does not know.

use freezetune_core::data_spec::{Columns, Formatting, Tags};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    file_name: Option<String>,
    hf_hub_url: Option<String>,
    ms_hub_url: Option<String>,
    om_hub_url: Option<String>,
    script_url: Option<String>,
    cloud_file_name: Option<String>,
    formatting: Option<Formatting>,
    /// Refused before parsing (read from the raw entry); here so the key is known.
    #[serde(default)]
    #[allow(dead_code)]
    ranking: bool,
    subset: Option<String>,
    split: Option<String>,
    folder: Option<String>,
    num_samples: Option<usize>,
    #[serde(default)]
    columns: Columns,
    #[serde(default)]
    tags: Tags,
}

/// What an entry resolves to: the local file or folder, its mapping and its row limit.
#[derive(Debug, Clone, PartialEq)]
pub struct InfoEntry {
    pub path: PathBuf,
    pub formatting: Formatting,
    /// Only a prompt column is named: the rows are text if they have no response column.
    pub pretraining_text: bool,
    pub columns: Columns,
    pub tags: Tags,
    pub num_samples: Option<usize>,
}

/// Entry `name` of the dataset_info.json at `info`.
pub fn read_entry(info: &Path, name: &str) -> Result<InfoEntry, String> {
    let text = std::fs::read_to_string(info).map_err(|e| e.to_string())?;
    let all: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(&text).map_err(|e| format!("not a dataset_info.json: {e}"))?;
    let raw = all.get(name).ok_or_else(|| {
        let names: Vec<&str> = all.keys().map(String::as_str).take(12).collect();
        format!(
            "{} has no dataset {name:?} (it has {}{})",
            info.display(),
            names.join(", "),
            if all.len() > 12 { ", ..." } else { "" }
        )
    })?;
    let at = format!("entry {name:?}");
    // Ranking first: its columns (chosen, rejected) are preference data's, not unknown keys.
    if raw.get("ranking").and_then(serde_json::Value::as_bool) == Some(true) {
        return Err(format!(
            "{at}: ranking data is for preference training, which FreezeTune does not do yet"
        ));
    }
    let e: Entry = serde_json::from_value(raw.clone()).map_err(|e| format!("{at}: {e}"))?;
    let Some(file) = e.file_name else {
        let source = [
            ("hf_hub_url", &e.hf_hub_url),
            ("ms_hub_url", &e.ms_hub_url),
            ("om_hub_url", &e.om_hub_url),
            ("script_url", &e.script_url),
            ("cloud_file_name", &e.cloud_file_name),
        ]
        .into_iter()
        .find_map(|(key, v)| v.as_ref().map(|v| format!(" ({key} {v:?})")))
        .unwrap_or_default();
        return Err(format!(
            "{at}: has no file_name{source}; only local files are read from dataset_info.json yet: download the \
             data and give its file or folder as file_name"
        ));
    };
    for (key, set) in [("subset", e.subset.is_some()), ("folder", e.folder.is_some())] {
        if set {
            return Err(format!(
                "{at}: {key} applies to Hub datasets; a local file_name has none"
            ));
        }
    }
    if e.split.as_deref().is_some_and(|s| s != "train") {
        return Err(format!(
            "{at}: split {:?} of a local file: LLaMA-Factory reads a local file as its train split",
            e.split
        ));
    }
    // A file_name stays inside the dataset_info.json's folder, as LLaMA-Factory's dataset_dir: an entry cannot
    // name a file elsewhere on the machine.
    let inside = Path::new(&file)
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !inside {
        return Err(format!(
            "{at}: file_name {file:?} leaves the dataset_info.json's folder; name a file inside it"
        ));
    }
    let base = info.parent().unwrap_or(Path::new("."));
    // An alpaca entry naming only a prompt column may be pretraining text (LLaMA-Factory's c4_demo, wiki_demo,
    // refinedweb: its `pt` stage reads the prompt as the text); it is, when its rows have no response column
    // (spec.rs decides on the first row).
    let c = &e.columns;
    let prompt_only = c.prompt.is_some() && c.query.is_none() && c.response.is_none() && c.history.is_none();
    let formatting = e.formatting.unwrap_or(Formatting::Alpaca);
    let pretraining_text = prompt_only && formatting == Formatting::Alpaca;
    Ok(InfoEntry {
        path: base.join(file),
        formatting,
        pretraining_text,
        columns: e.columns,
        tags: e.tags,
        num_samples: e.num_samples,
    })
}
