//! Which files of a dataset folder (a Hub snapshot or the like) hold one config's split. A repo whose README
//! declares its configs (the `configs:` list in its YAML header, as the Hub and `datasets` read it) is read as
//! declared: each config's `data_files` patterns per split, the config marked `default: true` (or named
//! `default`, or the only one) when none is named, and a repo with several and no default refused naming them, as
//! `load_dataset` refuses it. Without such a list, a config is a top-level folder and a split is the files named
//! `<split>-*` / `<split>.*` or inside a `<split>/` folder (all data files are `train` when none names a split).
//! The run's own `files` globs narrow either: only what they match is read, whatever else the snapshot holds.

use crate::error::{DataError, Result};
use crate::source::{is_data_file, walk};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde_yaml_ng::Value;
use std::path::{Path, PathBuf};

/// One config as a README declares it: its name, whether it is the default, and per split its file patterns
/// (None: it names no `data_files`, so its files are found by layout, under its `data_dir` where it gives one).
#[derive(Debug, Clone, PartialEq)]
struct Declared {
    name: String,
    default: bool,
    splits: Option<Vec<(String, Vec<String>)>>,
    data_dir: Option<String>,
}

/// The data files of `dir` for `split` of `config`, in name order, among those `files` matches (all when empty).
/// None matching is refused, naming what is there.
pub fn split_files(dir: &Path, config: Option<&str>, split: &str, files: &[String]) -> Result<Vec<PathBuf>> {
    let mut all = Vec::new();
    walk(dir, dir, &mut all)?;
    let declared = declared_configs(dir)?;
    let chosen = choose(dir, &all, &declared, (config, split), files)?;
    Ok(chosen.into_iter().map(|rel| dir.join(rel)).collect())
}

/// The files of a repo a run of `config` can read once the repo is downloaded, from its file listing (relative,
/// `/`-separated, as the Hub lists them) and its README's text: each split of the config (as [`list_configs`]
/// finds them, plus `split` where the run names another) as [`split_files`] would choose it, narrowed by `files`.
/// A download needs these and no other config's files; every split of the config is kept, so an eval set from
/// another split needs no second download. An unknown config, or one without data files, is refused as a run
/// would refuse it. `repo` names the repo in errors.
pub fn config_names(
    repo: &str,
    names: &[String],
    readme: Option<&str>,
    (config, split): (Option<&str>, Option<&str>),
    files: &[String],
) -> Result<Vec<String>> {
    // As a folder is walked: hidden files and folders are not read.
    let visible = |n: &&String| !n.split('/').any(|part| part.starts_with('.'));
    let all: Vec<String> = names
        .iter()
        .filter(visible)
        .filter(|n| is_data_file(Path::new(n)))
        .cloned()
        .collect();
    let declared = match readme {
        Some(text) => declared_in(text, &Path::new(repo).join("README.md"))?,
        None => Vec::new(),
    };
    let listed = list_configs(&all, readme)?;
    let this = listed.iter().find(|c| match config {
        Some(name) => c.name == name,
        None => c.default,
    });
    let mut splits: Vec<&str> = this
        .map(|c| c.splits.iter().map(String::as_str).collect())
        .unwrap_or_default();
    splits.extend(split.filter(|s| !splits.contains(s)));
    let mut chosen = std::collections::BTreeSet::new();
    for s in &splits {
        match choose(Path::new(repo), &all, &declared, (config, s), files) {
            Ok(found) => chosen.extend(found),
            // The run's own split refused is the run's error, given before anything is fetched.
            Err(e) if split == Some(*s) => return Err(e),
            // Another split may hold nothing `files` keeps.
            Err(_) => {}
        }
    }
    if chosen.is_empty() {
        return choose(Path::new(repo), &all, &declared, (config, "train"), files);
    }
    Ok(chosen.into_iter().collect())
}

/// The data files among `all` (relative names) for `split` of `config`, narrowed by `files`, in name order;
/// `dir` names the folder or repo in errors.
fn choose(
    dir: &Path,
    all: &[String],
    declared: &[Declared],
    (config, split): (Option<&str>, &str),
    files: &[String],
) -> Result<Vec<String>> {
    let narrowed: Vec<String>;
    let all = if files.is_empty() {
        all
    } else {
        let wanted = glob_set(dir, files)?;
        narrowed = all.iter().filter(|rel| wanted.is_match(rel)).cloned().collect();
        if narrowed.is_empty() {
            return Err(DataError::bad(
                dir,
                1,
                format!("none of its {} data files matches `files` {files:?}", all.len()),
            ));
        }
        &narrowed
    };
    let mut chosen = match declared.is_empty() {
        true => by_layout(all, config, split),
        false => by_declaration(dir, all, declared, config, split)?,
    };
    chosen.sort();
    if chosen.is_empty() {
        let found: Vec<&String> = all.iter().take(8).collect();
        let config = config.map(|c| format!(" of config {c:?}")).unwrap_or_default();
        return Err(DataError::bad(
            dir,
            1,
            format!("no data files for split {split:?}{config}; the data files are {found:?}"),
        ));
    }
    Ok(chosen)
}

/// One config of a dataset repo and its splits, as a picker lists them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConfigSplits {
    pub name: String,
    /// The config `load_dataset` takes when none is named.
    pub default: bool,
    pub splits: Vec<String>,
}

/// The configs and splits of a repo from its file names (relative, `/`-separated, as the Hub lists them) and its
/// README's text, read by the same rules as `split_files`, so what the picker offers is what a run then reads.
/// A repo without declared configs has one config per top-level folder holding data files, or one named
/// `default` when its data files are not in folders named for configs.
pub fn list_configs(names: &[String], readme: Option<&str>) -> Result<Vec<ConfigSplits>> {
    let all: Vec<String> = names.iter().filter(|n| is_data_file(Path::new(n))).cloned().collect();
    let declared = match readme {
        Some(text) => declared_in(text, Path::new("README.md"))?,
        None => Vec::new(),
    };
    let splits_of = |config: Option<&str>| -> Vec<String> {
        let mut found: Vec<String> = ["train", "validation", "test"]
            .iter()
            .filter(|s| !by_layout(&all, config, s).is_empty())
            .map(|s| s.to_string())
            .collect();
        found.dedup();
        found
    };
    if declared.is_empty() {
        let folders: std::collections::BTreeSet<&str> = all
            .iter()
            .filter_map(|n| n.split_once('/').map(|(top, _)| top))
            .filter(|top| !["data", "train", "test", "validation"].contains(top))
            .collect();
        let loose = all.iter().any(|n| !n.contains('/') || n.starts_with("data/"));
        let mut configs: Vec<ConfigSplits> = Vec::new();
        if loose || folders.is_empty() {
            configs.push(ConfigSplits {
                name: "default".into(),
                default: true,
                splits: splits_of(None),
            });
        }
        configs.extend(folders.into_iter().map(|f| ConfigSplits {
            name: f.to_string(),
            default: false,
            splits: splits_of(Some(f)),
        }));
        return Ok(configs);
    }
    let default = default_config(&declared).map(|d| d.name.clone());
    Ok(declared
        .iter()
        .map(|d| ConfigSplits {
            name: d.name.clone(),
            default: default.as_deref() == Some(d.name.as_str()),
            splits: match &d.splits {
                Some(splits) => splits.iter().map(|(s, _)| s.clone()).collect(),
                None => {
                    let has_folder = all.iter().any(|rel| rel.starts_with(&format!("{}/", d.name)));
                    let folder = d.data_dir.as_deref().map(|p| p.trim_matches('/'));
                    splits_of(folder.or(has_folder.then_some(d.name.as_str())))
                }
            },
        })
        .collect())
}

/// The files of a repo without declared configs: under `<config>/` when one is named, and named for the split.
fn by_layout(all: &[String], config: Option<&str>, split: &str) -> Vec<String> {
    let in_config = |rel: &&String| config.is_none_or(|c| rel.starts_with(&format!("{c}/")));
    let files: Vec<String> = all
        .iter()
        .filter(in_config)
        .filter(|rel| is_named(rel, split))
        .cloned()
        .collect();
    let named_splits = all
        .iter()
        .any(|rel| ["train", "test", "validation"].iter().any(|s| is_named(rel, s)));
    if files.is_empty() && split == "train" && !named_splits {
        // No file names a split: the Hub's loader puts every data file in train.
        return all.iter().filter(in_config).cloned().collect();
    }
    files
}

/// The files of `split` of the named (or default) declared config. A config declared without `data_files` is
/// found by layout (under its `data_dir`, or its own folder); so is one the README leaves out that has a folder
/// of its name (the layout of the Hub's Parquet conversions).
fn by_declaration(
    dir: &Path,
    all: &[String],
    declared: &[Declared],
    config: Option<&str>,
    split: &str,
) -> Result<Vec<String>> {
    let names: Vec<&str> = declared.iter().map(|c| c.name.as_str()).collect();
    let has_folder = |name: &str| all.iter().any(|rel| rel.starts_with(&format!("{name}/")));
    let chosen = match config {
        Some(name) => match declared.iter().find(|c| c.name == name) {
            Some(c) => c,
            None if has_folder(name) => return Ok(by_layout(all, Some(name), split)),
            None => {
                return Err(DataError::bad(
                    dir,
                    1,
                    format!("has no config {name:?}; its README declares {names:?}"),
                ))
            }
        },
        None => default_config(declared).ok_or_else(|| {
            DataError::bad(
                dir,
                1,
                format!("declares several configs and no default: name one with `config` (one of {names:?})"),
            )
        })?,
    };
    let Some(splits) = &chosen.splits else {
        let folder = chosen.data_dir.as_deref().map(|d| d.trim_matches('/'));
        let folder = folder.or(has_folder(&chosen.name).then_some(chosen.name.as_str()));
        return Ok(by_layout(all, folder, split));
    };
    let Some((_, patterns)) = splits.iter().find(|(s, _)| s == split) else {
        let splits: Vec<&str> = splits.iter().map(|(s, _)| s.as_str()).collect();
        return Err(DataError::bad(
            dir,
            1,
            format!(
                "config {:?} has no split {split:?}; its splits are {splits:?}",
                chosen.name
            ),
        ));
    };
    let set = glob_set(dir, patterns)?;
    Ok(all.iter().filter(|rel| set.is_match(rel.as_str())).cloned().collect())
}

/// The config `load_dataset` takes when none is named: the one marked default, else one named `default`, else
/// the only one.
fn default_config(declared: &[Declared]) -> Option<&Declared> {
    declared
        .iter()
        .find(|c| c.default)
        .or_else(|| declared.iter().find(|c| c.name == "default"))
        .or_else(|| (declared.len() == 1).then(|| &declared[0]))
}

/// Whether the file at `rel` belongs to `split`: named `<split>.*` or `<split>-*`, or inside a `<split>/` folder.
fn is_named(rel: &str, split: &str) -> bool {
    let mut parts: Vec<&str> = rel.split('/').collect();
    let name = parts.pop().unwrap_or_default();
    let stem = name.split('.').next().unwrap_or_default();
    stem == split || stem.starts_with(&format!("{split}-")) || parts.contains(&split)
}

/// Globs over paths relative to the folder, `*` not crossing a `/` (as the Hub's patterns and `fnmatch`-style
/// globs read), `**` any depth.
fn glob_set(dir: &Path, patterns: &[String]) -> Result<GlobSet> {
    let mut set = GlobSetBuilder::new();
    for p in patterns {
        let glob = GlobBuilder::new(p.trim_start_matches("./"))
            .literal_separator(true)
            .build()
            .map_err(|e| DataError::bad(dir, 1, format!("bad file pattern {p:?}: {e}")))?;
        set.add(glob);
    }
    set.build()
        .map_err(|e| DataError::bad(dir, 1, format!("bad file patterns {patterns:?}: {e}")))
}

/// The configs the folder's README.md declares in its YAML header (`configs:`); none where it has no README, no
/// header or no such list. A list it cannot read is refused by name (reading the folder by its layout instead
/// could train other data than the repo's author declared).
fn declared_configs(dir: &Path) -> Result<Vec<Declared>> {
    let readme = dir.join("README.md");
    let Ok(text) = std::fs::read_to_string(&readme) else {
        return Ok(Vec::new());
    };
    declared_in(&text, &readme)
}

/// The configs a README's text declares (`readme` names it in errors).
fn declared_in(text: &str, readme: &Path) -> Result<Vec<Declared>> {
    let Some(header) = yaml_header(text) else {
        return Ok(Vec::new());
    };
    let bad = |reason: String| DataError::bad(readme, 1, reason);
    let yaml: Value =
        serde_yaml_ng::from_str(header).map_err(|e| bad(format!("its YAML header does not parse: {e}")))?;
    let Some(configs) = yaml.get("configs") else {
        return Ok(Vec::new());
    };
    let configs = configs
        .as_sequence()
        .ok_or_else(|| bad("`configs` is not a list".into()))?;
    configs.iter().map(|c| declared(c).map_err(&bad)).collect()
}

/// The YAML between a leading `---` line and the next one.
fn yaml_header(text: &str) -> Option<&str> {
    let rest = text.strip_prefix("---\n").or_else(|| text.strip_prefix("---\r\n"))?;
    let end = rest.find("\n---")?;
    Some(&rest[..end])
}

/// One entry of `configs:`: `config_name`, `default`, `data_dir`, and `data_files` as a pattern, a list of
/// patterns (the train split) or a list of `{split, path}` with `path` a pattern or a list of them.
fn declared(entry: &Value) -> std::result::Result<Declared, String> {
    let name = entry
        .get("config_name")
        .and_then(Value::as_str)
        .ok_or("a `configs` entry has no config_name")?
        .to_string();
    let default = entry.get("default").and_then(Value::as_bool).unwrap_or(false);
    let patterns = |v: &Value| -> Option<Vec<String>> {
        match v {
            Value::String(s) => Some(vec![s.clone()]),
            Value::Sequence(items) => items.iter().map(|i| i.as_str().map(str::to_string)).collect(),
            _ => None,
        }
    };
    let unreadable = || format!("config {name:?}: `data_files` is neither patterns nor a list of split and path");
    let data_dir = entry.get("data_dir").and_then(Value::as_str).map(str::to_string);
    let splits = match entry.get("data_files") {
        None => None,
        Some(Value::Sequence(items)) if items.iter().all(Value::is_mapping) => items
            .iter()
            .map(|item| {
                let split = item.get("split").and_then(Value::as_str).unwrap_or("train");
                let paths = item.get("path").and_then(patterns).ok_or_else(unreadable)?;
                Ok((split.to_string(), paths))
            })
            .collect::<std::result::Result<_, String>>()
            .map(Some)?,
        Some(v) => Some(vec![("train".to_string(), patterns(v).ok_or_else(unreadable)?)]),
    };
    Ok(Declared {
        name,
        default,
        splits,
        data_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(files: &[&str], readme: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for rel in files {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, "{\"text\": \"x\"}\n").unwrap();
        }
        if let Some(text) = readme {
            std::fs::write(dir.path().join("README.md"), text).unwrap();
        }
        dir
    }

    fn names(dir: &Path, config: Option<&str>, split: &str, files: &[&str]) -> Result<Vec<String>> {
        let files: Vec<String> = files.iter().map(|s| s.to_string()).collect();
        Ok(split_files(dir, config, split, &files)?
            .iter()
            .map(|p| p.strip_prefix(dir).unwrap().to_string_lossy().into_owned())
            .collect())
    }

    const README: &str = "---\nlicense: mit\nconfigs:\n- config_name: en\n  data_files:\n  - split: train\n    \
                          path: data/en/train-*\n  - split: test\n    path: [data/en/test.jsonl]\n  default: true\n\
                          - config_name: fr\n  data_files: data/fr/*.jsonl\n---\n# A dataset\n";

    const FILES: &[&str] = &[
        "data/en/train-00000.jsonl",
        "data/en/train-00001.jsonl",
        "data/en/test.jsonl",
        "data/fr/train.jsonl",
        "data/fr/extra.jsonl",
    ];

    #[test]
    fn declared_configs_choose_the_files_and_the_default() {
        let dir = folder(FILES, Some(README));
        let d = dir.path();
        let en_train = ["data/en/train-00000.jsonl", "data/en/train-00001.jsonl"];
        assert_eq!(names(d, None, "train", &[]).unwrap(), en_train, "the default config");
        assert_eq!(names(d, Some("en"), "test", &[]).unwrap(), ["data/en/test.jsonl"]);
        // A bare pattern is the train split; `*` stays inside its folder.
        assert_eq!(
            names(d, Some("fr"), "train", &[]).unwrap(),
            ["data/fr/extra.jsonl", "data/fr/train.jsonl"]
        );
        let err = names(d, Some("de"), "train", &[]).unwrap_err().to_string();
        assert!(
            err.contains("no config \"de\"") && err.contains("[\"en\", \"fr\"]"),
            "{err}"
        );
        let err = names(d, Some("fr"), "test", &[]).unwrap_err().to_string();
        assert!(err.contains("has no split \"test\""), "{err}");
    }

    #[test]
    fn several_declared_configs_without_a_default_are_refused_by_name() {
        let readme = README.replace("  default: true\n", "");
        let dir = folder(FILES, Some(&readme));
        let err = names(dir.path(), None, "train", &[]).unwrap_err().to_string();
        assert!(
            err.contains("several configs and no default") && err.contains("\"fr\""),
            "{err}"
        );
        // A config without data_files is found by layout under its data_dir.
        let dir = folder(
            FILES,
            Some("---\nconfigs:\n- config_name: fr\n  data_dir: data/fr\n---\n"),
        );
        assert_eq!(names(dir.path(), None, "train", &[]).unwrap(), ["data/fr/train.jsonl"]);
        let broken = folder(FILES, Some("---\nconfigs:\n- data_files: x\n---\n"));
        let err = names(broken.path(), None, "train", &[]).unwrap_err().to_string();
        assert!(err.contains("README.md") && err.contains("no config_name"), "{err}");
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_repos_configs_and_splits_are_listed_as_runs_read_them() {
        let names = strings(&[FILES, &["README.md", ".gitattributes"]].concat());
        let listed = list_configs(&names, Some(README)).unwrap();
        let en = ConfigSplits {
            name: "en".into(),
            default: true,
            splits: strings(&["train", "test"]),
        };
        let fr = ConfigSplits {
            name: "fr".into(),
            default: false,
            splits: strings(&["train"]),
        };
        assert_eq!(listed, [en, fr]);
        // By layout: one config per top-level folder, splits by file name.
        let names = strings(&[
            "en/train-0.parquet",
            "en/test-0.parquet",
            "fr/train-0.parquet",
            "notes.txt",
        ]);
        let listed = list_configs(&names, Some("# no header\n")).unwrap();
        let summary: Vec<(String, bool, Vec<String>)> =
            listed.into_iter().map(|c| (c.name, c.default, c.splits)).collect();
        assert_eq!(
            summary,
            [
                ("en".into(), false, strings(&["train", "test"])),
                ("fr".into(), false, strings(&["train"])),
            ]
        );
        // Loose files: one default config; every file is train when none names a split.
        let listed = list_configs(&strings(&["data/a.jsonl", "data/b.jsonl"]), None).unwrap();
        assert_eq!(
            listed,
            [ConfigSplits {
                name: "default".into(),
                default: true,
                splits: strings(&["train"]),
            }]
        );
        let err = list_configs(&names, Some("---\nconfigs:\n- data_files: x\n---\n")).unwrap_err();
        assert!(err.to_string().contains("no config_name"), "{err}");
    }

    #[test]
    fn the_runs_file_globs_narrow_what_is_read() {
        // Without declared configs: every train file, unless `files` names some.
        let dir = folder(FILES, Some("# no header\n"));
        let d = dir.path();
        assert_eq!(names(d, None, "train", &[]).unwrap().len(), 3);
        assert_eq!(
            names(d, None, "train", &["data/en/*"]).unwrap(),
            ["data/en/train-00000.jsonl", "data/en/train-00001.jsonl"]
        );
        let err = names(d, None, "train", &["data/de/*"]).unwrap_err().to_string();
        assert!(err.contains("none of its 5 data files matches"), "{err}");
        // With declared configs too.
        let dir = folder(FILES, Some(README));
        assert_eq!(
            names(dir.path(), None, "train", &["**/*-00001.jsonl"]).unwrap(),
            ["data/en/train-00001.jsonl"]
        );
    }

    /// From a listing, a download takes what a run of the config would read from any of its splits, and the
    /// same selection as [`split_files`] on the downloaded folder.
    #[test]
    fn a_download_takes_one_configs_files_from_the_listing() {
        let listing = strings(&[FILES, &["README.md", ".hidden/en.jsonl", "notes.txt"]].concat());
        let of = |config: Option<&str>, split: Option<&str>, files: &[&str]| {
            let files = strings(files);
            config_names("org/ds", &listing, Some(README), (config, split), &files)
        };
        let en = [
            "data/en/test.jsonl",
            "data/en/train-00000.jsonl",
            "data/en/train-00001.jsonl",
        ];
        assert_eq!(of(None, None, &[]).unwrap(), en, "the default config, both splits");
        assert_eq!(of(Some("en"), Some("test"), &[]).unwrap(), en);
        assert_eq!(
            of(Some("fr"), None, &[]).unwrap(),
            ["data/fr/extra.jsonl", "data/fr/train.jsonl"]
        );
        assert_eq!(of(Some("fr"), None, &["**/extra*"]).unwrap(), ["data/fr/extra.jsonl"]);
        let err = of(Some("de"), None, &[]).unwrap_err().to_string();
        assert!(err.contains("org/ds") && err.contains("has no config \"de\""), "{err}");
        let err = of(Some("fr"), Some("test"), &[]).unwrap_err().to_string();
        assert!(
            err.contains("has no split \"test\""),
            "the run's own split refused early: {err}"
        );
        // By layout (no declared configs): a folder is a config; what split_files reads once downloaded.
        let files = ["en/train-0.jsonl", "en/test-0.jsonl", "fr/train-0.jsonl"];
        let layout = config_names("org/ds", &strings(&files), None, (Some("en"), None), &[]).unwrap();
        assert_eq!(layout, ["en/test-0.jsonl", "en/train-0.jsonl"]);
        let dir = folder(&files, None);
        for split in ["train", "test"] {
            let read = names(dir.path(), Some("en"), split, &[]).unwrap();
            assert!(
                read.len() == 1 && layout.contains(&read[0]),
                "{read:?} within {layout:?}"
            );
        }
    }
}
