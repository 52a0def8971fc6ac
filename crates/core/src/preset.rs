//! Presets: saved run setups, one TOML file each, in `<config dir>/presets/` (`FREEZETUNE_CONFIG_DIR` overrides the
//! config dir). Files carry a schema version. A corrupt or newer file is reported with its path and left untouched;
//! the other presets still load. Writes are atomic and never replace a file unless asked to.

use crate::error::{Error, Result};
use crate::fsutil::{write_atomic, Overwrite};
use crate::quant::QuantizeFrozen;
use crate::run_config::{DataSection, ModelSection, OutputSection, RunConfig, RuntimeSection, TrainingSection};
use crate::spec::FreezeSpec;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const PRESET_SCHEMA_VERSION: u32 = 1;
pub const CONFIG_DIR_ENV: &str = "FREEZETUNE_CONFIG_DIR";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub schema_version: u32,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelRef>,
    pub freeze: FreezeSpec,
    /// The rest of a run, when the preset was saved from one (`preset save NAME --config RUN.toml`): with these a
    /// preset alone is enough for `freezetune train --preset NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputSection>,
}

impl Preset {
    pub fn new(name: &str, model: Option<ModelRef>, freeze: FreezeSpec) -> Preset {
        Preset {
            schema_version: PRESET_SCHEMA_VERSION,
            name: name.to_string(),
            description: None,
            model,
            freeze,
            data: None,
            training: None,
            runtime: None,
            output: None,
        }
    }

    /// A preset holding a whole run.
    pub fn from_run(name: &str, run: &RunConfig) -> Preset {
        let path = &run.model.path;
        let model = ModelRef {
            path: (!path.as_os_str().is_empty()).then(|| path.clone()),
            repo: run.model.repo.clone(),
            revision: run.model.revision.clone(),
            dtype: Some(run.model.dtype.clone()),
            quantize_frozen: Some(run.model.quantize_frozen).filter(|q| *q != QuantizeFrozen::None),
        };
        Preset {
            data: Some(run.data.clone()),
            training: Some(run.training.clone()),
            runtime: Some(run.runtime.clone()),
            output: Some(run.output.clone()),
            ..Preset::new(name, Some(model), run.freeze.clone())
        }
    }

    /// The run this preset describes, on the model folder `model_dir` (its own path, or a resolved Hub snapshot).
    pub fn to_run(&self, model_dir: PathBuf) -> Result<RunConfig> {
        let missing = |what: &str| Error::Preset {
            kind: "preset_incomplete",
            path: None,
            message: format!(
                "preset {:?} has no [{what}] section, so it cannot run on its own; save it with --config RUN.toml, \
                 or pass --config",
                self.name
            ),
        };
        let run = RunConfig {
            model: ModelSection {
                path: model_dir,
                repo: self.model.as_ref().and_then(|m| m.repo.clone()),
                revision: self.model.as_ref().and_then(|m| m.revision.clone()),
                dtype: self
                    .model
                    .as_ref()
                    .and_then(|m| m.dtype.clone())
                    .unwrap_or_else(|| "auto".into()),
                quantize_frozen: self.model.as_ref().and_then(|m| m.quantize_frozen).unwrap_or_default(),
            },
            freeze: self.freeze.clone(),
            data: self.data.clone().ok_or_else(|| missing("data"))?,
            training: self.training.clone().unwrap_or_default(),
            runtime: self.runtime.clone().unwrap_or_default(),
            output: self.output.clone().ok_or_else(|| missing("output"))?,
            resolved: None,
        };
        run.check().map_err(|message| Error::Preset {
            kind: "preset_corrupt",
            path: None,
            message,
        })?;
        Ok(run)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a preset always serialises")
    }

    /// Parses a preset file's text; `path` is only used in error messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Preset> {
        let bad = |kind: &'static str, message: String| Error::Preset {
            kind,
            path: Some(path.to_path_buf()),
            message: format!("{}: {message}", path.display()),
        };
        let table: toml::Table =
            toml::from_str(text).map_err(|e| bad("preset_corrupt", format!("not valid TOML: {e}")))?;
        match table.get("schema_version").and_then(toml::Value::as_integer) {
            None => return Err(bad("preset_corrupt", "no schema_version; this is not a FreezeTune preset".into())),
            Some(v) if v > PRESET_SCHEMA_VERSION as i64 => {
                return Err(bad(
                    "preset_too_new",
                    format!("written by a newer FreezeTune (schema {v}, this one reads up to {PRESET_SCHEMA_VERSION}); left untouched"),
                ))
            }
            Some(_) => {}
        }
        let preset: Preset = table
            .try_into()
            .map_err(|e: toml::de::Error| bad("preset_corrupt", e.to_string()))?;
        preset
            .freeze
            .check_mode()
            .map_err(|e| bad("preset_corrupt", e.to_string()))?;
        Ok(preset)
    }
}

/// Where the model of a preset comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    /// A local checkpoint folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// A Hugging Face Hub repo id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The run's `model.dtype`, for presets saved from a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// The run's `model.quantize_frozen`, for presets saved from a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize_frozen: Option<QuantizeFrozen>,
}

/// One file in the presets folder: its preset, or why it could not be read.
#[derive(Debug)]
pub struct PresetEntry {
    pub name: String,
    pub path: PathBuf,
    pub preset: Result<Preset>,
}

#[derive(Debug, Clone)]
pub struct PresetStore {
    dir: PathBuf,
}

impl PresetStore {
    /// The store in `$FREEZETUNE_CONFIG_DIR/presets`, else in the OS config dir (`~/.config/freezetune/presets`).
    pub fn open_default() -> Result<PresetStore> {
        let base = match std::env::var_os(CONFIG_DIR_ENV) {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => dirs::config_dir()
                .map(|d| d.join("freezetune"))
                .ok_or_else(|| Error::Preset {
                    kind: "no_config_dir",
                    path: None,
                    message: format!("cannot find the OS config folder; set {CONFIG_DIR_ENV}"),
                })?,
        };
        Ok(PresetStore::at(base.join("presets")))
    }

    pub fn at(dir: impl Into<PathBuf>) -> PresetStore {
        PresetStore { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path_of(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        Ok(self.dir.join(format!("{name}.toml")))
    }

    /// Every `*.toml` in the folder, sorted by name; unreadable ones carry their error.
    pub fn list(&self) -> Result<Vec<PresetEntry>> {
        let read = match std::fs::read_dir(&self.dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&self.dir, e)),
        };
        let mut entries: Vec<PresetEntry> = read
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
            .map(|path| {
                let name = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let preset = read_preset(&path).map(|mut p| {
                    p.name = name.clone();
                    p
                });
                PresetEntry { name, path, preset }
            })
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    pub fn load(&self, name: &str) -> Result<Preset> {
        let path = self.path_of(name)?;
        if !path.is_file() {
            return Err(self.not_found(name));
        }
        let mut preset = read_preset(&path)?;
        preset.name = name.to_string();
        Ok(preset)
    }

    /// Saves `preset` under its name; an existing preset of that name is replaced only with `force`.
    pub fn save(&self, preset: &Preset, force: bool) -> Result<PathBuf> {
        let path = self.path_of(&preset.name)?;
        let mode = if force { Overwrite::Allow } else { Overwrite::Refuse };
        if !write_atomic(&path, preset.to_toml().as_bytes(), mode)? {
            return Err(Error::Preset {
                kind: "preset_exists",
                path: Some(path.clone()),
                message: format!(
                    "a preset named {:?} already exists ({}); use --force to replace it",
                    preset.name,
                    path.display()
                ),
            });
        }
        Ok(path)
    }

    pub fn delete(&self, name: &str) -> Result<PathBuf> {
        let path = self.path_of(name)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(self.not_found(name)),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    pub fn rename(&self, from: &str, to: &str) -> Result<PathBuf> {
        let mut preset = self.load(from)?;
        preset.name = to.to_string();
        let path = self.save(&preset, false)?;
        self.delete(from)?;
        Ok(path)
    }

    /// Writes preset `name` to `file` (refusing to replace an existing file unless `force`).
    pub fn export(&self, name: &str, file: &Path, force: bool) -> Result<()> {
        let preset = self.load(name)?;
        let mode = if force { Overwrite::Allow } else { Overwrite::Refuse };
        if !write_atomic(file, preset.to_toml().as_bytes(), mode)? {
            return Err(Error::Preset {
                kind: "file_exists",
                path: Some(file.to_path_buf()),
                message: format!("{} already exists; use --force to replace it", file.display()),
            });
        }
        Ok(())
    }

    /// Reads a preset file from anywhere and saves it in the store, under `name` or its own name.
    pub fn import(&self, file: &Path, name: Option<&str>, force: bool) -> Result<Preset> {
        let mut preset = read_preset(file)?;
        if let Some(name) = name {
            preset.name = name.to_string();
        }
        self.save(&preset, force)?;
        Ok(preset)
    }

    fn not_found(&self, name: &str) -> Error {
        Error::Preset {
            kind: "preset_not_found",
            path: None,
            message: format!(
                "no preset named {name:?} in {}; `freezetune preset list` shows the saved ones",
                self.dir.display()
            ),
        }
    }
}

fn read_preset(path: &Path) -> Result<Preset> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Preset::from_toml(&text, path)
}

/// Preset names become file names: letters, digits, space, `_`, `-`, `.`; not starting with `.`; at most 64.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', ' '])
        && !name.ends_with(' ')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::Preset {
            kind: "bad_preset_name",
            path: None,
            message: format!(
                "{name:?} is not a valid preset name: use 1-64 letters, digits, spaces, '_', '-' or '.', not starting with '.'"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FreezeSpec {
        FreezeSpec {
            layers: Some("1,3".into()),
            modules: vec!["mlp".into()],
            ..Default::default()
        }
    }

    #[test]
    fn save_list_load_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = PresetStore::at(dir.path().join("presets"));
        assert!(store.list().unwrap().is_empty());
        let p = Preset::new(
            "my run",
            Some(ModelRef {
                path: Some("/m".into()),
                repo: None,
                revision: None,
                dtype: None,
                quantize_frozen: None,
            }),
            spec(),
        );
        store.save(&p, false).unwrap();
        let err = store.save(&p, false).unwrap_err();
        assert_eq!(err.kind(), "preset_exists");
        assert!(err.to_string().contains("--force"));
        store.save(&p, true).unwrap();
        assert_eq!(store.load("my run").unwrap(), p);
        store.rename("my run", "other").unwrap();
        assert_eq!(
            store
                .list()
                .unwrap()
                .iter()
                .map(|e| e.name.as_str())
                .collect::<Vec<_>>(),
            vec!["other"]
        );
        store.delete("other").unwrap();
        assert_eq!(store.delete("other").unwrap_err().kind(), "preset_not_found");
    }

    #[test]
    fn corrupt_and_newer_files_are_reported_and_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let store = PresetStore::at(dir.path());
        store.save(&Preset::new("good", None, spec()), false).unwrap();
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "schema_version = 1\nname = \"bad\"\n[freeze\n").unwrap();
        let newer = dir.path().join("newer.toml");
        std::fs::write(&newer, "schema_version = 9\nname = \"newer\"\nfuture = true\n").unwrap();
        let entries = store.list().unwrap();
        assert_eq!(entries.len(), 3);
        let by = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
        assert!(by("good").preset.is_ok());
        let e = by("bad").preset.as_ref().unwrap_err();
        assert_eq!(e.kind(), "preset_corrupt");
        assert!(e.to_string().contains("bad.toml"));
        let e = by("newer").preset.as_ref().unwrap_err();
        assert_eq!(e.kind(), "preset_too_new");
        assert!(e.to_string().contains("newer FreezeTune"));
        assert_eq!(
            std::fs::read_to_string(&bad).unwrap(),
            "schema_version = 1\nname = \"bad\"\n[freeze\n"
        );
        assert_eq!(
            std::fs::read_to_string(&newer).unwrap(),
            "schema_version = 9\nname = \"newer\"\nfuture = true\n"
        );
    }

    #[test]
    fn names_are_checked() {
        for bad in ["", "../x", ".hidden", "a/b", "x\0", &"a".repeat(65)] {
            assert_eq!(check_name(bad).unwrap_err().kind(), "bad_preset_name", "{bad:?}");
        }
        check_name("Top 2 + mlp").unwrap_err();
        check_name("top-2_mlp.v1").unwrap();
    }

    #[test]
    fn export_import_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = PresetStore::at(dir.path().join("a"));
        store.save(&Preset::new("x", None, spec()), false).unwrap();
        let file = dir.path().join("x.toml");
        store.export("x", &file, false).unwrap();
        assert_eq!(store.export("x", &file, false).unwrap_err().kind(), "file_exists");
        let other = PresetStore::at(dir.path().join("b"));
        let p = other.import(&file, Some("y"), false).unwrap();
        assert_eq!(other.load("y").unwrap().freeze, p.freeze);
    }

    #[test]
    fn a_preset_can_hold_a_whole_run() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("run.toml");
        std::fs::write(&p, "[model]\npath = \"m\"\n[freeze]\ntop = 2\n[data]\ntrain = \"d.jsonl\"\n[training]\nmax_steps = 7\n[output]\ndir = \"out\"\n").unwrap();
        let run = RunConfig::read(&p).unwrap();
        let store = PresetStore::at(dir.path().join("presets"));
        store.save(&Preset::from_run("full", &run), false).unwrap();
        let back = store.load("full").unwrap();
        let again = back.to_run(back.model.clone().unwrap().path.unwrap()).unwrap();
        assert_eq!(again, run);
        let bare = Preset::new("bare", None, spec());
        assert_eq!(bare.to_run(PathBuf::from("m")).unwrap_err().kind(), "preset_incomplete");
    }
}
