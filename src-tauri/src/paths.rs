//! Where the app keeps its files, and which paths the web view may name. The UI can only point the backend at the
//! app's own folders (demo, runs, presets, the Hub cache) or at paths the user picked in a native dialog, which the
//! backend records here; anything else is refused, so a compromised page cannot read or write elsewhere.

use crate::error::{IpcError, IpcResult};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// `FREEZETUNE_DATA_DIR` overrides the data folder (tests use it); presets honour `FREEZETUNE_CONFIG_DIR` as the CLI
/// does, so both see the same files.
pub const DATA_DIR_ENV: &str = "FREEZETUNE_DATA_DIR";

#[derive(Debug, Clone)]
pub struct AppPaths {
    pub data_dir: PathBuf,
    pub demo_dir: PathBuf,
    pub runs_dir: PathBuf,
    pub presets_dir: PathBuf,
    pub hub_cache: PathBuf,
}

impl AppPaths {
    pub fn from_env() -> IpcResult<AppPaths> {
        let data_dir = match std::env::var_os(DATA_DIR_ENV) {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => dirs::data_dir().map(|d| d.join("freezetune")).ok_or_else(|| {
                IpcError::new(
                    "no_data_dir",
                    format!("cannot find the OS data folder; set {DATA_DIR_ENV}"),
                )
            })?,
        };
        let presets = freezetune_core::preset::PresetStore::open_default()?;
        Ok(AppPaths::under(
            data_dir,
            presets.dir().to_path_buf(),
            freezetune_hub::settings::hub_cache_dir(),
        ))
    }

    pub fn under(data_dir: PathBuf, presets_dir: PathBuf, hub_cache: PathBuf) -> AppPaths {
        // Canonical (symlinks resolved) so that comparisons with checked paths, which are canonical, hold when a
        // folder is reached through a link (HF_HOME on a data disk, say).
        let (data_dir, presets_dir, hub_cache) = (normalize(&data_dir), normalize(&presets_dir), normalize(&hub_cache));
        AppPaths {
            demo_dir: data_dir.join("demo"),
            runs_dir: data_dir.join("runs"),
            data_dir,
            presets_dir,
            hub_cache,
        }
    }
}

/// Roots the backend accepts paths under.
#[derive(Debug, Default)]
pub struct Access {
    roots: Mutex<Vec<PathBuf>>,
}

impl Access {
    pub fn new(paths: &AppPaths) -> Access {
        let access = Access::default();
        for root in [&paths.data_dir, &paths.presets_dir, &paths.hub_cache] {
            access.allow(root);
        }
        access
    }

    /// Accepts `path` and everything under it from now on.
    pub fn allow(&self, path: &Path) {
        // An empty or relative path would be a prefix of everything (or of the working folder): never a root.
        if !path.is_absolute() {
            return;
        }
        let path = normalize(path);
        let mut roots = self.roots.lock().expect("access lock");
        if !roots.contains(&path) {
            roots.push(path);
        }
    }

    /// `text` as a path, if it lies under an allowed root.
    pub fn check(&self, text: &str) -> IpcResult<PathBuf> {
        if text.trim().is_empty() {
            return Err(IpcError::new("bad_path", "no path given"));
        }
        let raw = Path::new(text);
        // `..` is refused outright: a path whose folders do not exist yet cannot be canonicalised, and
        // `<root>/missing/../../elsewhere` would otherwise pass a prefix test and be created by whoever writes it.
        if !raw.is_absolute() || raw.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(IpcError::new(
                "bad_path",
                format!("{text} must be an absolute path without `..`; choose it with the Browse button"),
            ));
        }
        let path = normalize(raw);
        let roots = self.roots.lock().expect("access lock");
        if roots.iter().any(|root| path.starts_with(root)) {
            Ok(path)
        } else {
            Err(IpcError::new(
                "path_not_allowed",
                format!(
                    "{} is outside the app's folders and was not picked in a dialog; choose it with the Browse button",
                    path.display()
                ),
            ))
        }
    }
}

/// The canonical path when it exists (symlinks resolved, so `..` cannot escape a root); else the canonical parent
/// joined with the file name, for files about to be written.
fn normalize(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) if name != ".." => normalize(parent).join(name),
        _ => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_under_allowed_roots_pass() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(data.join("runs")).unwrap();
        std::fs::create_dir_all(tmp.path().join("elsewhere")).unwrap();
        let paths = AppPaths::under(data.clone(), tmp.path().join("presets"), tmp.path().join("hub"));
        let access = Access::new(&paths);
        assert!(access.check(data.join("runs").to_str().unwrap()).is_ok());
        assert!(access.check(data.join("runs/new-run").to_str().unwrap()).is_ok());
        let outside = tmp.path().join("elsewhere/file");
        // An empty or relative path (a run whose data is [[data.datasets]] has an empty `train`) is never a root:
        // as a prefix it would let everything through.
        access.allow(Path::new(""));
        access.allow(Path::new("relative"));
        let err = access.check(outside.to_str().unwrap()).unwrap_err();
        assert_eq!(err.kind, "path_not_allowed");
        assert!(err.message.contains("elsewhere"), "{}", err.message);
        access.allow(&tmp.path().join("elsewhere"));
        assert!(access.check(outside.to_str().unwrap()).is_ok());
        assert_eq!(access.check(" ").unwrap_err().kind, "bad_path");
        assert_eq!(access.check("relative/path").unwrap_err().kind, "bad_path");
    }

    #[test]
    fn dot_dot_never_passes_even_through_folders_that_do_not_exist() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let access = Access::new(&AppPaths::under(data.clone(), data.join("p"), data.join("h")));
        for escape in ["runs/../../elsewhere", "missing/../../../etc/autostart", "runs/.."] {
            let err = access.check(data.join(escape).to_str().unwrap()).unwrap_err();
            assert_eq!(err.kind, "bad_path", "{escape}");
        }
        assert!(!data.join("missing").exists());
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_out_of_a_root_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(tmp.path().join("secret")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), data.join("link")).unwrap();
        let access = Access::new(&AppPaths::under(data.clone(), data.join("p"), data.join("h")));
        assert!(access.check(data.join("link").to_str().unwrap()).is_err());
    }
}
