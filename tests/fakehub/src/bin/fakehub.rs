//! The fake Hub as a process, for tests outside Rust (the desktop app's WebDriver tests). Serves folders as repos on
//! 127.0.0.1, prints its URL on the first line of stdout, and serves until it is killed.
//!
//! fakehub --repo owner/name=DIR [--repo ...] [--dataset owner/name=DIR] [--gated owner/name=TOKEN]
//!         [--downloads owner/name=N] [--slow FILE=BYTES_PER_SECOND]
//!
//! `--dataset` serves a folder and its subfolders as a dataset repo; `--downloads` sets what search sorts by.

use freezetune_fakehub::{FakeHub, FakeRepo, Fault};
use std::io::Write;
use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut repos: Vec<FakeRepo> = Vec::new();
    let mut faults = Vec::new();
    let pair = |flag: &str, value: Option<&String>| -> (String, String) {
        let v = value.unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let (a, b) = v
            .split_once('=')
            .unwrap_or_else(|| usage(&format!("{flag} {v}: expected A=B")));
        (a.to_string(), b.to_string())
    };
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1);
        match args[i].as_str() {
            "--repo" => {
                let (id, dir) = pair("--repo", value);
                repos.push(FakeRepo::from_dir(&id, Path::new(&dir)));
            }
            "--dataset" => {
                let (id, dir) = pair("--dataset", value);
                let mut repo = FakeRepo::from_tree(&id, Path::new(&dir));
                repo.dataset = true;
                repos.push(repo);
            }
            "--gated" => {
                let (id, token) = pair("--gated", value);
                find(&mut repos, "--gated", &id).token = Some(token);
            }
            "--downloads" => {
                let (id, n) = pair("--downloads", value);
                let n = n
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("--downloads {id}={n}: not a number")));
                find(&mut repos, "--downloads", &id).downloads = n;
            }
            "--slow" => {
                let (file, rate) = pair("--slow", value);
                let bytes_per_sec = rate
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("--slow {file}={rate}: not a number")));
                faults.push(Fault::Slow { file, bytes_per_sec });
            }
            other => usage(&format!("unknown argument {other}")),
        }
        i += 2;
    }
    let hub = FakeHub::start(repos);
    for fault in faults {
        hub.add_fault(fault);
    }
    println!("{}", hub.url());
    std::io::stdout().flush().expect("stdout");
    // Serves until killed.
    loop {
        std::thread::park();
    }
}

fn find<'a>(repos: &'a mut [FakeRepo], flag: &str, id: &str) -> &'a mut FakeRepo {
    repos
        .iter_mut()
        .find(|r| r.id == id)
        .unwrap_or_else(|| usage(&format!("{flag} {id}: no such --repo or --dataset (give it first)")))
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "fakehub: {problem}\nusage: fakehub --repo owner/name=DIR [--dataset owner/name=DIR] [--gated owner/name=TOKEN] \
         [--downloads owner/name=N] [--slow FILE=BYTES_PER_SECOND]"
    );
    std::process::exit(2)
}
