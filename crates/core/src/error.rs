//! The one error type of `freezetune-core`. Every variant names the thing that is wrong (a file, a tensor, a layer id,
//! a module) and, where there is one, what the user can do about it.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{dir}: no config.json found; a model folder needs the config.json that came with the checkpoint")]
    MissingConfig { dir: PathBuf },

    #[error("{path}: not a valid model config: {reason}")]
    BadConfig { path: PathBuf, reason: String },

    #[error(
        "{dir}: no safetensors weights found (looked for model.safetensors, model.safetensors.index.json and *.safetensors); \
         FreezeTune reads only safetensors, convert pickle .bin checkpoints first"
    )]
    NoSafetensors { dir: PathBuf },

    #[error("{path}: corrupt safetensors file: {reason}")]
    BadSafetensors { path: PathBuf, reason: String },

    #[error("{path}: bad safetensors index: {reason}")]
    BadIndex { path: PathBuf, reason: String },

    #[error("{path}: bad GGUF tensor map: {reason}")]
    BadGgufMap { path: PathBuf, reason: String },

    #[error("{index}: names shard {shard} which is missing from {dir}; re-download the checkpoint", dir = .index.parent().map(|p| p.display().to_string()).unwrap_or_default())]
    MissingShard { index: PathBuf, shard: String },

    #[error("{message}")]
    BadLayerIds { input: String, message: String },

    #[error("layer {id} is out of range: this model has {num_layers} layers, valid ids are 0-{max}", max = .num_layers.saturating_sub(1))]
    LayerOutOfRange { id: i64, num_layers: usize },

    #[error("{message}")]
    BadSelection { message: String },

    #[error("freeze.schedule: {message}")]
    BadSchedule { message: String },

    #[error("module {module:?} is not found in {place}; choose from {}", .choices.join(", "))]
    UnknownModule {
        module: String,
        place: String,
        choices: Vec<String>,
    },

    #[error(
        "lm_head cannot be trained on its own: this model ties lm_head to embed_tokens (tie_word_embeddings = true), \
         so they are one tensor; add embed_tokens instead, which trains the head too"
    )]
    TiedLmHead,

    #[error("nothing would train: the freeze plan selects no tensor; choose at least one layer or extra module")]
    NothingTrainable,

    #[error("{message}")]
    LlamaFactory { kind: &'static str, message: String },

    #[error("{message}")]
    NotExpressible { format: &'static str, message: String },

    #[error("{message}")]
    Preset {
        kind: &'static str,
        path: Option<PathBuf>,
        message: String,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A stable machine-readable name for the error, used in `--json` output and over IPC.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::MissingConfig { .. } => "missing_config",
            Error::BadConfig { .. } => "bad_config",
            Error::NoSafetensors { .. } => "no_safetensors",
            Error::BadSafetensors { .. } => "bad_safetensors",
            Error::BadIndex { .. } => "bad_index",
            Error::BadGgufMap { .. } => "bad_gguf_map",
            Error::MissingShard { .. } => "missing_shard",
            Error::BadLayerIds { .. } => "bad_layer_ids",
            Error::LayerOutOfRange { .. } => "layer_out_of_range",
            Error::BadSelection { .. } => "bad_selection",
            Error::BadSchedule { .. } => "bad_schedule",
            Error::UnknownModule { .. } => "module_not_found",
            Error::TiedLmHead => "tied_lm_head",
            Error::NothingTrainable => "nothing_trainable",
            Error::LlamaFactory { kind, .. } => kind,
            Error::NotExpressible { .. } => "not_expressible",
            Error::Preset { kind, .. } => kind,
        }
    }

    /// The error as a JSON object `{kind, message, ...}` with the fields a program may want to act on.
    pub fn to_json(&self) -> serde_json::Value {
        let mut obj = serde_json::json!({ "kind": self.kind(), "message": self.to_string() });
        let map = obj.as_object_mut().expect("object");
        match self {
            Error::UnknownModule { module, choices, place } => {
                map.insert("module".into(), module.clone().into());
                map.insert("choices".into(), choices.clone().into());
                map.insert("place".into(), place.clone().into());
            }
            Error::LayerOutOfRange { id, num_layers } => {
                map.insert("id".into(), (*id).into());
                map.insert("num_layers".into(), (*num_layers).into());
            }
            Error::BadLayerIds { input, .. } => {
                map.insert("input".into(), input.clone().into());
            }
            Error::Io { path, .. }
            | Error::BadConfig { path, .. }
            | Error::BadSafetensors { path, .. }
            | Error::BadIndex { path, .. }
            | Error::BadGgufMap { path, .. } => {
                map.insert("path".into(), path.display().to_string().into());
            }
            Error::MissingConfig { dir } | Error::NoSafetensors { dir } => {
                map.insert("path".into(), dir.display().to_string().into());
            }
            Error::MissingShard { index, shard } => {
                map.insert("path".into(), index.display().to_string().into());
                map.insert("shard".into(), shard.clone().into());
            }
            Error::Preset { path: Some(path), .. } => {
                map.insert("path".into(), path.display().to_string().into());
            }
            _ => {}
        }
        obj
    }
}
