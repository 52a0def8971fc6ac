//! The benchmarks' Python: one virtual environment (`$FREEZETUNE_BENCH_VENV`, default
//! /var/tmp/freezetune-bench-venv, outside the clone) that each bench fills with what it needs on first use.

use std::path::{Path, PathBuf};

/// The bench venv's folder.
pub fn dir() -> PathBuf {
    std::env::var_os("FREEZETUNE_BENCH_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/freezetune-bench-venv"))
}

/// The bench venv's Python, where `import {modules}` works: if it does not, the venv is created (if missing) and
/// `packages` are pip-installed into it.
pub fn python_with(modules: &str, packages: &[&str]) -> anyhow::Result<PathBuf> {
    let venv = dir();
    let python = venv.join("bin/python");
    let ready = |p: &Path| {
        std::process::Command::new(p)
            .args(["-c", &format!("import {modules}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !ready(&python) {
        eprintln!(
            "installing {} into {} (first run only)",
            packages.join(", "),
            venv.display()
        );
        let created = python.exists()
            || std::process::Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()?
                .success();
        let installed = created
            && std::process::Command::new(&python)
                .args(["-m", "pip", "install", "-q"])
                .args(packages)
                .status()?
                .success();
        anyhow::ensure!(
            installed && ready(&python),
            "could not install {} into {}",
            packages.join(", "),
            venv.display()
        );
    }
    Ok(python)
}
