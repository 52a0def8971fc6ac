//! `data preview` of a 2 GB Parquet file: the time to the first rendered examples and the process's peak resident
//! set, printed. The file is written once by pyarrow (the bench venv, `$FREEZETUNE_BENCH_VENV`) in row groups of
//! 100,000 rows (about 130 MB of text each, as large as the Hub's own Parquet conversions make them), so a reader
//! that loaded a row group, let alone the file, would show it here. Usage: `bench-data-preview [GB]` (default 2).

use freezetune_core::run_config::DataFormat;
use freezetune_train::data::{preview, DataOptions};
use freezetune_train::template::ChatFormatter;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[path = "rss.rs"]
mod rss;
#[path = "venv.rs"]
mod venv;

const WRITER: &str = r#"
import os, sys, numpy as np, pyarrow as pa, pyarrow.parquet as pq
path, target = sys.argv[1], float(sys.argv[2]) * 1e9
rng = np.random.default_rng(0)
words = np.array(["alpha", "beta", "gamma", "delta", "tokens", "layer", "frozen", "train", "model", "data"])
schema = pa.schema([("instruction", pa.string()), ("input", pa.string()), ("output", pa.string())])
n, rows = 0, 100000
with pq.ParquetWriter(path, schema, compression="snappy") as w:
    while os.path.getsize(path) < target:
        text = lambda k: [" ".join(words[rng.integers(0, 10, k)]) + f" #{n + i}" for i in range(rows)]
        w.write_table(pa.table({"instruction": text(20), "input": text(5), "output": text(150)}, schema=schema))
        n += rows
print(n)
"#;

fn main() -> anyhow::Result<()> {
    let gb: f64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2.0);
    let dir = PathBuf::from(
        std::env::var("FREEZETUNE_BENCH_DATA").unwrap_or_else(|_| "/var/tmp/freezetune-bench-data".into()),
    );
    std::fs::create_dir_all(&dir)?;
    let file = dir.join(format!("preview-{gb}g.parquet"));
    if !file.exists() {
        write_file(&file, gb)?;
    }
    let size = std::fs::metadata(&file)?.len();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/llama");
    let formatter = ChatFormatter::load(&model)?;
    let options = DataOptions {
        format: DataFormat::Auto,
        cutoff_len: 1024,
        vocab_size: usize::MAX,
        train_on_prompt: false,
        formatter: Some(&formatter),
    };
    let start = Instant::now();
    let (format, items) = preview(&file, &options, 5)?;
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "data preview of {} ({:.2} GB parquet, row groups of 100,000 rows): {} {format:?} examples in {seconds:.3} s, \
         peak RSS {:.1} MB",
        file.display(),
        size as f64 / 1e9,
        items.len(),
        rss::peak_rss_bytes() as f64 / 1e6
    );
    Ok(())
}

fn write_file(file: &Path, gb: f64) -> anyhow::Result<()> {
    let python = venv::python_with("pyarrow, numpy", &["pyarrow", "numpy"])?;
    eprintln!("writing {} with pyarrow ({gb} GB, once)", file.display());
    let partial = file.with_extension("partial");
    let status = std::process::Command::new(&python)
        .args(["-c", WRITER, partial.to_str().unwrap_or_default(), &gb.to_string()])
        .status()
        .map_err(|e| anyhow::anyhow!("{}: {e}", python.display()))?;
    anyhow::ensure!(status.success(), "pyarrow could not write {}", partial.display());
    std::fs::rename(&partial, file)?;
    Ok(())
}
