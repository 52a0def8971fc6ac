//! Atomic file writes: a reader never sees half a file, and a crash never leaves one where a good file was.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What to do when the destination already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overwrite {
    Allow,
    Refuse,
}

/// Writes `bytes` to `path` through a temporary file in the same folder, synced, then renamed into place.
/// With `Overwrite::Refuse` an existing file is never replaced, even by a racing writer (the final step is a
/// hard link, which fails if the name exists). Returns `Ok(false)` when it refused.
pub fn write_atomic(path: &Path, bytes: &[u8], overwrite: Overwrite) -> Result<bool> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        Ok::<_, std::io::Error>(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    let placed = match overwrite {
        Overwrite::Allow => std::fs::rename(&tmp, path).map(|_| true),
        Overwrite::Refuse => match std::fs::hard_link(&tmp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        },
    };
    let _ = std::fs::remove_file(&tmp);
    placed.map_err(|e| Error::io(path, e))
}

fn temp_path(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_to_overwrite_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        assert!(write_atomic(&p, b"one", Overwrite::Refuse).unwrap());
        assert!(!write_atomic(&p, b"two", Overwrite::Refuse).unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        assert!(write_atomic(&p, b"three", Overwrite::Allow).unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"three");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.toml")]);
    }
}
