//! Download throughput from the fake Hub on loopback, next to `curl` fetching the same bytes, and how resume
//! behaves after a connection dropped halfway.
//!
//! Run: `cargo run --release -p freezetune-bench --bin bench-download [-- SIZE_MIB]` (needs `curl` and `openssl`).

use anyhow::{bail, Result};
use freezetune_core::events::NullSink;
use freezetune_fakehub::{FakeFile, FakeHub, FakeRepo, Fault};
use freezetune_hub::{CancellationToken, DownloadRequest, Downloader, HubSettings};
use std::time::{Duration, Instant};

fn main() -> Result<()> {
    let mib: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let size = mib << 20;
    // Incompressible, deterministic bytes.
    let mut data = vec![0u8; size];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let config = br#"{"architectures":["LlamaForCausalLM"],"num_hidden_layers":1}"#.to_vec();
    let weights = FakeFile::new("model.safetensors", data);
    let sha = weights.sha256();
    let hub = FakeHub::start(vec![FakeRepo::new(
        "bench/big",
        vec![FakeFile::new("config.json", config), weights],
    )]);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let work = tempfile_dir()?;
    println!("file: {mib} MiB, fake Hub at {}", hub.url());

    let mut ours = Vec::new();
    let mut curls = Vec::new();
    let mut verified_curls = Vec::new();
    // Alternate which goes first, and flush dirty pages before each timed run, so neither pays for the other's
    // writeback.
    for round in 0..4 {
        for ours_turn in [round % 2 == 0, round % 2 != 0] {
            settle();
            if ours_turn {
                let cache = work.join(format!("cache-{round}"));
                let settings = HubSettings::from_env()
                    .with_endpoint(hub.url())
                    .with_cache_dir(&cache)
                    .with_token(None);
                let downloader = Downloader::new(settings)?;
                let t = Instant::now();
                runtime.block_on(downloader.download(
                    &DownloadRequest::parse("bench/big")?,
                    &NullSink,
                    &CancellationToken::new(),
                ))?;
                ours.push(t.elapsed());
                std::fs::remove_dir_all(&cache)?;
            } else {
                let out = work.join("curl.bin");
                let t = Instant::now();
                let status = std::process::Command::new("curl")
                    .args(["-s", "-L", "-o"])
                    .arg(&out)
                    .arg(format!("{}/bench/big/resolve/main/model.safetensors", hub.url()))
                    .status()?;
                curls.push(t.elapsed());
                if !status.success() || std::fs::metadata(&out)?.len() != size as u64 {
                    bail!("curl failed");
                }
                // The same work FreezeTune does on top: checking the sha256 (OpenSSL uses the CPU's SHA instructions,
                // as FreezeTune's sha2 does; coreutils' sha256sum does not and would be 5x slower).
                let sum = std::process::Command::new("openssl")
                    .args(["dgst", "-sha256", "-r"])
                    .arg(&out)
                    .output()?;
                verified_curls.push(t.elapsed());
                if !String::from_utf8_lossy(&sum.stdout).starts_with(&sha) {
                    bail!("curl's file has the wrong sha256");
                }
                std::fs::remove_file(&out)?;
            }
        }
    }
    let best = |v: &[Duration]| v.iter().min().copied().unwrap_or_default();
    let mbps = |d: Duration| size as f64 / d.as_secs_f64() / 1e6;
    let (o, c) = (best(&ours), best(&curls));
    println!(
        "freezetune download (incl. sha256 verify): best of 4 {:.2} s = {:.0} MB/s  (runs: {:?})",
        o.as_secs_f64(),
        mbps(o),
        ours
    );
    println!(
        "curl -L -o FILE:                           best of 4 {:.2} s = {:.0} MB/s  (runs: {:?})",
        c.as_secs_f64(),
        mbps(c),
        curls
    );
    let v = best(&verified_curls);
    println!(
        "curl -L -o FILE && openssl dgst -sha256:  best of 4 {:.2} s = {:.0} MB/s",
        v.as_secs_f64(),
        mbps(v)
    );
    println!(
        "freezetune / curl throughput: {:.0}%",
        100.0 * c.as_secs_f64() / o.as_secs_f64()
    );
    println!(
        "freezetune / (curl + openssl sha256) throughput: {:.0}%",
        100.0 * v.as_secs_f64() / o.as_secs_f64()
    );

    // Resume: the connection drops at half the file; count what crosses the wire.
    hub.add_fault(Fault::DropAfter {
        file: "model.safetensors".into(),
        after: (size / 2) as u64,
        times: 1,
    });
    let cache = work.join("cache-resume");
    let mut settings = HubSettings::from_env()
        .with_endpoint(hub.url())
        .with_cache_dir(&cache)
        .with_token(None);
    settings.retry_base = Duration::from_millis(50);
    let before = hub.body_bytes();
    let t = Instant::now();
    let out = runtime.block_on(Downloader::new(settings)?.download(
        &DownloadRequest::parse("bench/big")?,
        &NullSink,
        &CancellationToken::new(),
    ))?;
    let sent = hub.body_bytes() - before;
    println!(
        "resume after a drop at 50%: {:.2} s, {} bytes sent for a {} byte file ({:.3}x), verified sha256 {}",
        t.elapsed().as_secs_f64(),
        sent,
        size,
        sent as f64 / size as f64,
        &sha[..16]
    );
    assert!(out.snapshot.join("model.safetensors").exists());
    std::fs::remove_dir_all(&work)?;
    Ok(())
}

fn settle() {
    let _ = std::process::Command::new("sync").status();
    std::thread::sleep(Duration::from_millis(500));
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("freezetune-bench-dl-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
