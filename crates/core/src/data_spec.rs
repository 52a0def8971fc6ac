//! Several datasets in one run (`[[data.datasets]]`), each with its column mapping as LLaMA-Factory's
//! `dataset_info.json` writes it (the same names: `formatting`, `columns`, `tags`), and how they are mixed
//! (`[data] mix`, LLaMA-Factory's `mix_strategy`). Plain data: freezetune-data applies it.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// How a dataset's rows are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum Formatting {
    /// A prompt, an optional query and a response per row (LLaMA-Factory's default).
    Alpaca,
    /// A list of messages per row, with role and content tags.
    Sharegpt,
    /// Plain text, every token learned.
    Text,
    /// `input_ids` (and `labels`) already tokenized.
    Tokenized,
}

/// Which column holds what (LLaMA-Factory's `columns`); a role left out takes the formatting's default column.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(deny_unknown_fields)]
pub struct Columns {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub response: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub history: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub messages: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub system: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub tools: Option<String>,
}

/// How a sharegpt row's messages name their roles (LLaMA-Factory's `tags`); left out, its defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(deny_unknown_fields)]
pub struct Tags {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub role_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub content_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub user_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub assistant_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub observation_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub function_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub system_tag: Option<String>,
}

/// One dataset of a run: a file or folder (`path`), or an entry of a LLaMA-Factory `dataset_info.json`
/// (`dataset_info` and `name`), with its mapping and an optional row limit and mixing weight.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub path: Option<PathBuf>,
    /// A Hugging Face dataset repo, `owner/name[@revision]`: downloaded into the shared cache
    /// (`datasets--owner--name`) before the run; `path` then names its snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub hub: Option<String>,
    /// With `hub` (or a folder): the config (subset), as the repo's README declares it (`configs:`), else the
    /// top-level folder of that name; left out, the README's default config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub config: Option<String>,
    /// With `hub` (or a folder): the split, the data files named `<split>-*` or `<split>.*` or in a `<split>/`
    /// folder; `train` when a Hub repo names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub split: Option<String>,
    /// Only the repo files these globs match (`data/train-0000[0-3]-*.parquet`): what is downloaded, and what is
    /// read from the folder whatever else it holds.
    #[serde(default)]
    pub files: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub dataset_info: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub name: Option<String>,
    /// Left out: sharegpt when `columns.messages` or `tags` are given, alpaca when prompt, query, response or
    /// history are (as in LLaMA-Factory), else detected from the first row (alpaca, sharegpt / OpenAI messages, prompt/completion,
    /// text, tokenized).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub formatting: Option<Formatting>,
    #[serde(default)]
    pub columns: Columns,
    #[serde(default)]
    pub tags: Tags,
    /// Use at most this many rows (LLaMA-Factory's `num_samples` / `max_samples`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub limit: Option<usize>,
    /// With `mix = "interleave_*"`: this dataset's share of the rows (`interleave_probs`); the weights are
    /// normalised. Left out everywhere: equal shares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub weight: Option<f64>,
}

impl DatasetSpec {
    /// How the dataset is named in messages: its path, or `name` in its dataset_info.json.
    pub fn label(&self) -> String {
        if let Some(repo) = &self.hub {
            return format!("hub dataset {repo}");
        }
        match (&self.path, &self.dataset_info, &self.name) {
            (Some(p), _, _) => p.display().to_string(),
            (None, Some(info), Some(name)) => format!("{name} ({})", info.display()),
            (None, _, Some(name)) => name.clone(),
            _ => "a dataset with neither path nor name".into(),
        }
    }
}

/// How several datasets become one (LLaMA-Factory's `mix_strategy`, Hugging Face `interleave_datasets`'
/// stopping strategies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum Mix {
    /// One after the other.
    #[default]
    Concat,
    /// Rows drawn by weight until the first dataset runs out.
    InterleaveUnder,
    /// Rows drawn by weight until every dataset has been used whole (smaller ones repeat).
    InterleaveOver,
}
