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
    formatting: Option<Formatting>,
    columns: Columns,
    tags: Tags,
    limit: Option<usize>,
}

fn resolve(spec: &DatasetSpec) -> Result<Resolved> {
    let overridden = |c: &Columns, t: &Tags| *c != Columns::default() || *t != Tags::default();
    let split = match (&spec.split, &spec.config, &spec.hub) {
        (None, None, None) => None,
        (split, config, _) => Some((config.clone(), split.clone().unwrap_or_else(|| "train".into()))),
    };
    match (&spec.path, &spec.dataset_info, &spec.name) {
        (None, None, _) if spec.hub.is_some() => Err(DataError::bad(
            &PathBuf::from(spec.label()),
            1,
            "is not downloaded yet: the CLI and the app fetch Hub datasets before the run".into(),
        )),
        (Some(path), _, _) => Ok(Resolved {
            path: path.clone(),
            split,
            formatting: spec.formatting,
            columns: spec.columns.clone(),
            tags: spec.tags.clone(),
            limit: spec.limit,
        }),
        (None, Some(info), Some(name)) => {
            let e = crate::info::read_entry(info, name).map_err(|reason| DataError::bad(info, 1, reason))?;
            let own = overridden(&spec.columns, &spec.tags);
            Ok(Resolved {
                path: e.path,
                split: None,
                formatting: spec.formatting.or(Some(e.formatting)),
                columns: if own { spec.columns.clone() } else { e.columns },
                tags: if own { spec.tags.clone() } else { e.tags },
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

/// A dataset's rows with its mapping applied, at most its limit of them.
pub fn load_spec(spec: &DatasetSpec) -> Result<Loaded> {
    let r = resolve(spec)?;
    let rows = match &r.split {
        Some((config, split)) if r.path.is_dir() => open_files(&split_files(&r.path, config.as_deref(), split)?)?,
        _ => open(&r.path)?,
    };
    let mut rows = rows.take(r.limit.unwrap_or(usize::MAX));
    let Some(first) = rows.next().transpose()? else {
        return Err(DataError::bad(&r.path, 1, "holds no rows".into()));
    };
    let mapping = match r.formatting {
        Some(f) => Mapping::new(f, r.columns, r.tags),
        None => Mapping::detect(&first.value).map_err(|reason| DataError::bad(&first.file, first.line, reason))?,
    };
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

/// Every dataset of a run, mixed: each row with its dataset's formatting.
pub fn load_mixed(specs: &[DatasetSpec], mix: Mix, seed: u64) -> Result<Vec<(Row, Formatting)>> {
    let mut sets = Vec::with_capacity(specs.len());
    for spec in specs {
        let loaded = load_spec(spec)?;
        let f = loaded.formatting;
        sets.push(loaded.rows.into_iter().map(|r| (r, f)).collect::<Vec<_>>());
    }
    let weights: Vec<f64> = match specs.iter().all(|s| s.weight.is_some()) {
        true => specs.iter().map(|s| s.weight.unwrap_or(1.0)).collect(),
        false => Vec::new(),
    };
    Ok(crate::mix::mix(sets, &weights, mix, seed))
}
