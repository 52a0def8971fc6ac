//! `fuzz`: structure-aware fuzzing of the files FreezeTune reads (GGUF, safetensors, config.json, tokenizer.json,
//! chat templates, datasets) on stable Rust. Each target first replays `fuzz/regressions/<target>/` (inputs that
//! once failed), then mutates its seeds for the time given. A panic saves its input to `fuzz/crashes/` and the
//! run fails; an execution that runs past 10 s is a hang (the input is left in the path printed at start, as it
//! is for an abort, which a memory limit such as `ulimit -v` turns an unbounded allocation into).
//!
//!   fuzz [--seconds N] [--seed N] [TARGET ...]     targets: gguf safetensors config tokenizer template dataset
//!                                                  parquet arrow

mod mutate;
mod targets;

use mutate::Rng;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const HANG: Duration = Duration::from_secs(10);

/// The message and location of the last panic.
static LAST_PANIC: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

struct Args {
    seconds: u64,
    seed: u64,
    only: Vec<String>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        seconds: 10,
        seed: SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64,
        only: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| -> anyhow::Result<u64> {
            Ok(it
                .next()
                .ok_or_else(|| anyhow::anyhow!("{name} needs a number"))?
                .parse()?)
        };
        match arg.as_str() {
            "--seconds" => a.seconds = value("--seconds")?,
            "--seed" => a.seed = value("--seed")?,
            name => a.only.push(name.to_string()),
        }
    }
    Ok(a)
}

fn repo_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// Runs one input; false when it panicked (the input is then saved to `fuzz/crashes/`).
fn execute(t: &targets::Target, input: &[u8], last: &Path, started: &AtomicU64) -> bool {
    std::fs::write(last, input).expect("the last-input file");
    started.store(now_ms(), Ordering::SeqCst);
    let ok = catch_unwind(AssertUnwindSafe(|| (t.run)(input))).is_ok();
    started.store(0, Ordering::SeqCst);
    if !ok {
        let dir = repo_dir("crashes");
        std::fs::create_dir_all(&dir).expect("fuzz/crashes");
        let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        let path = dir.join(format!("{}-{hash:016x}", t.name));
        std::fs::write(&path, input).expect("a crash file");
        let why = LAST_PANIC.lock().map(|m| m.replace('\n', " ")).unwrap_or_default();
        eprintln!("{}: PANIC ({why}), input saved to {}", t.name, path.display());
    }
    ok
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1)
}

/// Aborts the process when an execution runs past [`HANG`] (its input stays in the last-input file).
fn watchdog(started: Arc<AtomicU64>, last: Arc<std::sync::Mutex<PathBuf>>) {
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(200));
        let t = started.load(Ordering::SeqCst);
        if t != 0 && now_ms().saturating_sub(t) > HANG.as_millis() as u64 {
            let path = last.lock().map(|p| p.display().to_string()).unwrap_or_default();
            eprintln!("HANG: one execution ran past {HANG:?}; its input is {path}");
            std::process::exit(2);
        }
    });
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    let scratch = tempfile::tempdir()?;
    let targets = targets::all(scratch.path())?;
    // Panics are caught and reported per input, with where they happened; the default hook's backtraces would
    // drown the summary.
    std::panic::set_hook(Box::new(|info| {
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = info.to_string();
    }));
    let started = Arc::new(AtomicU64::new(0));
    let last_path = Arc::new(std::sync::Mutex::new(PathBuf::new()));
    watchdog(started.clone(), last_path.clone());
    let mut failures = 0;
    println!("fuzz: seed {}, {} s per target", a.seed, a.seconds);
    for t in targets
        .iter()
        .filter(|t| a.only.is_empty() || a.only.iter().any(|o| o == t.name))
    {
        let last = std::env::temp_dir().join(format!("freezetune-fuzz-last-{}", t.name));
        *last_path.lock().expect("path") = last.clone();
        let mut crashes = 0;
        let regressions = repo_dir("regressions").join(t.name);
        let mut replayed = 0;
        if let Ok(entries) = std::fs::read_dir(&regressions) {
            for e in entries.flatten().filter(|e| e.path().is_file()) {
                replayed += 1;
                crashes += usize::from(!execute(t, &std::fs::read(e.path())?, &last, &started));
            }
        }
        let mut rng = Rng::new(a.seed ^ t.name.len() as u64);
        let deadline = Instant::now() + Duration::from_secs(a.seconds);
        let mut executions = 0u64;
        while Instant::now() < deadline {
            let seed = &t.seeds[rng.below(t.seeds.len())];
            let input = if executions == 0 {
                seed.clone()
            } else {
                (t.mutate)(&mut rng, seed)
            };
            crashes += usize::from(!execute(t, &input, &last, &started));
            executions += 1;
        }
        println!(
            "{:12} {executions:>7} executions, {replayed} regressions replayed, {crashes} crashes (an abort leaves its \
             input in {})",
            t.name,
            last.display()
        );
        failures += crashes;
    }
    anyhow::ensure!(failures == 0, "{failures} inputs panicked; they are in fuzz/crashes/");
    Ok(())
}
