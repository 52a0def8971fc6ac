//! Downloads against the fake Hub on 127.0.0.1: the default file set, sharded checkpoints, resume after a dropped
//! connection, retries after 5xx, gated repos and tokens, missing repos and revisions, checksum mismatches, cancel
//! and resume, hostile names, pickle-only repos, offline resolution, and the cache listing.

use freezetune_core::events::DownloadEvent;
use freezetune_core::synth::{write_checkpoint, Family, SynthSpec};
use freezetune_core::ModelLayout;
use freezetune_fakehub::{FakeFile, FakeHub, FakeRepo, Fault};
use freezetune_hub::{CancellationToken, DownloadRequest, Downloader, HubSettings, Token};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WEIGHTS: &str = "model.safetensors";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name)
}

fn llama_repo(id: &str) -> FakeRepo {
    let mut repo = FakeRepo::from_dir(id, &fixture("llama"));
    repo.files.push(FakeFile::new("README.md", b"# tiny llama\n".to_vec()));
    repo.files.push(FakeFile::new("pytorch_model.bin", vec![7u8; 1000]));
    repo
}

fn sharded_repo(id: &str) -> FakeRepo {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = SynthSpec::tiny(Family::Llama, 4);
    spec.shards = 3;
    write_checkpoint(dir.path(), &spec).unwrap();
    let mut repo = FakeRepo::from_dir(id, dir.path());
    repo.files
        .push(FakeFile::new("consolidated.safetensors", vec![0u8; 64]));
    repo
}

fn hub() -> FakeHub {
    let mut gated = llama_repo("meta/gated");
    gated.token = Some("hf_right_token".into());
    let mut evil = llama_repo("evil/names");
    evil.extra_siblings.push("../../outside.json".into());
    let pickle = FakeRepo::new(
        "old/pickle",
        vec![
            FakeFile::new("config.json", std::fs::read(fixture("llama/config.json")).unwrap()),
            FakeFile::new("pytorch_model.bin", vec![1u8; 100]),
        ],
    );
    FakeHub::start(vec![
        llama_repo("tiny/llama"),
        sharded_repo("tiny/sharded"),
        gated,
        evil,
        pickle,
    ])
}

fn settings(hub: &FakeHub, cache: &Path) -> HubSettings {
    let mut s = HubSettings::from_env()
        .with_endpoint(hub.url())
        .with_cache_dir(cache)
        .with_token(None);
    s.offline = false;
    s.max_retries = 3;
    s.retry_base = Duration::from_millis(10);
    s.read_timeout = Duration::from_secs(5);
    s
}

type Events = Arc<Mutex<Vec<DownloadEvent>>>;

async fn download(
    s: &HubSettings,
    repo: &str,
) -> (
    freezetune_hub::Result<freezetune_hub::DownloadOutcome>,
    Vec<DownloadEvent>,
) {
    let events: Events = Arc::default();
    let e = events.clone();
    let sink = move |ev: DownloadEvent| e.lock().unwrap().push(ev);
    let d = Downloader::new(s.clone()).unwrap();
    let r = d
        .download(&DownloadRequest::parse(repo).unwrap(), &sink, &CancellationToken::new())
        .await;
    let ev = events.lock().unwrap().clone();
    (r, ev)
}

fn sha256_of(path: &Path) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_what_training_needs_into_the_standard_cache() {
    let hub = hub();
    let cache = tempfile::tempdir().unwrap();
    let s = settings(&hub, cache.path());
    let (r, events) = download(&s, "tiny/llama").await;
    let out = r.unwrap();
    let mut files = out.files.clone();
    files.sort();
    assert_eq!(
        files,
        [
            "chat_template.jinja",
            "config.json",
            "generation_config.json",
            WEIGHTS,
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );
    let repo_dir = cache.path().join("models--tiny--llama");
    assert_eq!(out.snapshot, repo_dir.join("snapshots").join(&out.commit));
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(), out.commit);
    let link = out.snapshot.join(WEIGHTS);
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
    let sha = sha256_of(&fixture("llama").join(WEIGHTS));
    assert_eq!(
        std::fs::canonicalize(&link).unwrap(),
        std::fs::canonicalize(repo_dir.join("blobs").join(&sha)).unwrap()
    );
    assert_eq!(ModelLayout::inspect(&out.snapshot).unwrap().num_layers, 4);
    assert!(matches!(events.first(), Some(DownloadEvent::Resolved { .. })));
    assert!(matches!(events.last(), Some(DownloadEvent::Finished { .. })));
    let verified = events
        .iter()
        .filter(|e| matches!(e, DownloadEvent::FileVerified { .. }))
        .count();
    assert_eq!(verified, 6);
    assert!(hub
        .requests()
        .iter()
        .all(|r| !r.path.contains("README") && !r.path.contains(".bin")));

    // A second download is served from the cache: no body bytes move.
    let before = hub.body_bytes();
    let again = download(&s, "tiny/llama").await.0.unwrap();
    assert_eq!(again.downloaded_bytes, 0);
    assert!(hub.body_bytes() - before < 100, "only the 1-byte metadata probes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_checkpoints_fetch_only_the_indexed_shards() {
    let hub = hub();
    let cache = tempfile::tempdir().unwrap();
    let out = download(&settings(&hub, cache.path()), "tiny/sharded").await.0.unwrap();
    assert!(out.files.iter().all(|f| f != "consolidated.safetensors"));
    assert_eq!(out.files.iter().filter(|f| f.ends_with(".safetensors")).count(), 3);
    let layout = ModelLayout::inspect(&out.snapshot).unwrap();
    assert_eq!(layout.files.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_resumes_with_a_range_request() {
    let hub = hub();
    hub.add_fault(Fault::DropAfter {
        file: WEIGHTS.into(),
        after: 300_000,
        times: 1,
    });
    let cache = tempfile::tempdir().unwrap();
    let (r, events) = download(&settings(&hub, cache.path()), "tiny/llama").await;
    let out = r.unwrap();
    assert!(events
        .iter()
        .any(|e| matches!(e, DownloadEvent::Retrying { file, .. } if file == WEIGHTS)));
    let ranged: Vec<_> = hub
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/cdn/") && r.range.as_deref() == Some("bytes=300000-"))
        .collect();
    assert_eq!(ranged.len(), 1, "resumed from byte 300000: {:?}", hub.requests());
    assert_eq!(
        sha256_of(&out.snapshot.join(WEIGHTS)),
        sha256_of(&fixture("llama").join(WEIGHTS))
    );
    let size = std::fs::metadata(fixture("llama").join(WEIGHTS)).unwrap().len();
    assert!(
        hub.body_bytes() < size + 300_000 + 100_000,
        "no second full transfer ({} bytes sent)",
        hub.body_bytes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_with_backoff() {
    let hub = hub();
    hub.add_fault(Fault::Status {
        file: "config.json".into(),
        status: 500,
        times: 2,
    });
    hub.add_fault(Fault::Status {
        file: WEIGHTS.into(),
        status: 503,
        times: 1,
    });
    let cache = tempfile::tempdir().unwrap();
    let (r, events) = download(&settings(&hub, cache.path()), "tiny/llama").await;
    r.unwrap();
    let retries = events
        .iter()
        .filter(|e| matches!(e, DownloadEvent::Retrying { .. }))
        .count();
    assert_eq!(retries, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gated_repos_need_the_right_token_which_never_leaks() {
    let hub = hub();
    let cache = tempfile::tempdir().unwrap();
    let s = settings(&hub, cache.path());
    let e = download(&s, "meta/gated").await.0.unwrap_err();
    assert_eq!(e.kind(), "gated");
    let msg = e.to_string();
    assert!(
        msg.contains("accept its license")
            && msg.contains(&format!("{}/meta/gated", hub.url()))
            && msg.contains("HF_TOKEN"),
        "{msg}"
    );
    let wrong = s.clone().with_token(Token::new("hf_wrong_secret"));
    let e = download(&wrong, "meta/gated").await.0.unwrap_err();
    assert!(!e.to_string().contains("hf_wrong_secret") && !format!("{e:?}").contains("hf_wrong_secret"));
    let right = s.with_token(Token::new("hf_right_token"));
    download(&right, "meta/gated").await.0.unwrap();
    assert!(
        hub.requests()
            .iter()
            .filter(|r| r.path.starts_with("/cdn/"))
            .all(|r| !r.authorized),
        "no token to the CDN"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_repos_and_revisions() {
    let hub = hub();
    let cache = tempfile::tempdir().unwrap();
    let s = settings(&hub, cache.path());
    let e = download(&s, "nobody/nothing").await.0.unwrap_err();
    assert_eq!(e.kind(), "repo_not_found");
    assert!(e.to_string().contains("nobody/nothing"));
    let e = download(&s, "tiny/llama@v9").await.0.unwrap_err();
    assert_eq!(e.kind(), "revision_not_found");
    assert!(e.to_string().contains("\"v9\""), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_checksum_never_reaches_the_snapshot() {
    let hub = hub();
    hub.add_fault(Fault::Corrupt { file: WEIGHTS.into() });
    let cache = tempfile::tempdir().unwrap();
    let e = download(&settings(&hub, cache.path()), "tiny/llama")
        .await
        .0
        .unwrap_err();
    assert_eq!(e.kind(), "checksum_mismatch");
    assert!(
        e.to_string().contains(WEIGHTS) && e.to_string().contains("deleted"),
        "{e}"
    );
    let repo_dir = cache.path().join("models--tiny--llama");
    let blobs: Vec<String> = std::fs::read_dir(repo_dir.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    // Other files may have been stopped mid-way (their partials are kept); the corrupt one is gone entirely.
    let sha = sha256_of(&fixture("llama").join(WEIGHTS));
    assert!(!blobs.iter().any(|b| b.starts_with(&sha)), "{blobs:?}");
    assert!(
        !repo_dir.join("refs/main").exists(),
        "a failed download does not publish a ref"
    );
    // The snapshot folder exists only if another file finished before the failure stopped the download.
    for snap in std::fs::read_dir(repo_dir.join("snapshots")).into_iter().flatten() {
        assert!(!snap.unwrap().path().join(WEIGHTS).exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_keeps_the_partial_file_and_the_next_download_resumes_it() {
    let hub = hub();
    hub.add_fault(Fault::Slow {
        file: WEIGHTS.into(),
        bytes_per_sec: 400_000,
    });
    let cache = tempfile::tempdir().unwrap();
    let s = settings(&hub, cache.path());
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let sink = move |ev: DownloadEvent| {
        if let DownloadEvent::Progress { file, file_bytes, .. } = &ev {
            if file == WEIGHTS && *file_bytes > 150_000 {
                c.cancel();
            }
        }
    };
    let d = Downloader::new(s.clone()).unwrap();
    let started = std::time::Instant::now();
    let e = d
        .download(&DownloadRequest::parse("tiny/llama").unwrap(), &sink, &cancel)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "cancelled");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stops promptly: {:?}",
        started.elapsed()
    );
    let sha = sha256_of(&fixture("llama").join(WEIGHTS));
    let partial = cache
        .path()
        .join("models--tiny--llama/blobs")
        .join(format!("{sha}.incomplete"));
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(kept > 150_000, "kept {kept} bytes");

    hub.clear_faults();
    let out = download(&s, "tiny/llama").await.0.unwrap();
    assert_eq!(out.resumed_bytes, kept);
    assert!(hub
        .requests()
        .iter()
        .any(|r| r.range.as_deref() == Some(format!("bytes={kept}-").as_str())));
    assert_eq!(sha256_of(&out.snapshot.join(WEIGHTS)), sha);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_and_pickle_only_repos_are_refused() {
    let hub = hub();
    let cache = tempfile::tempdir().unwrap();
    let s = settings(&hub, cache.path());
    let e = download(&s, "evil/names").await.0.unwrap_err();
    assert_eq!(e.kind(), "unsafe_file_name");
    assert!(
        !cache.path().join("outside.json").exists() && !cache.path().parent().unwrap().join("outside.json").exists()
    );
    let e = download(&s, "old/pickle").await.0.unwrap_err();
    assert_eq!(e.kind(), "no_safetensors");
    assert!(e.to_string().contains("pytorch_model.bin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_resolves_from_the_cache_without_a_request() {
    let hub = hub();
    let cache = tempfile::tempdir().unwrap();
    let s = settings(&hub, cache.path());
    let first = download(&s, "tiny/llama").await.0.unwrap();
    let mut offline = s.clone();
    offline.offline = true;
    let n = hub.requests().len();
    let out = download(&offline, "tiny/llama").await.0.unwrap();
    assert!(out.from_cache);
    assert_eq!(out.snapshot, first.snapshot);
    assert_eq!(
        download(&offline, &format!("tiny/llama@{}", first.commit))
            .await
            .0
            .unwrap()
            .snapshot,
        first.snapshot
    );
    assert_eq!(hub.requests().len(), n, "no request while offline");
    let e = download(&offline, "tiny/sharded").await.0.unwrap_err();
    assert_eq!(e.kind(), "offline");
    assert!(e.to_string().contains("tiny/llama"), "offers the cached models: {e}");

    // The Hub unreachable: a cached repo still resolves, another one gets an error naming the cached ones.
    let dead = s.clone().with_endpoint("http://127.0.0.1:9");
    assert!(download(&dead, "tiny/llama").await.0.unwrap().from_cache);
    let e = download(&dead, "tiny/sharded").await.0.unwrap_err();
    assert_eq!(e.kind(), "network");
    assert!(e.to_string().contains("tiny/llama"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_lists_and_removes_models() {
    let hub = hub();
    let cache = tempfile::tempdir().unwrap();
    let s = settings(&hub, cache.path());
    download(&s, "tiny/llama").await.0.unwrap();
    download(&s, "tiny/sharded").await.0.unwrap();
    let d = Downloader::new(s).unwrap();
    let list = d.cache().list();
    let ids: Vec<&str> = list.iter().map(|m| m.repo.as_str()).collect();
    assert_eq!(ids, ["tiny/llama", "tiny/sharded"]);
    assert_eq!(list[0].architecture.as_deref(), Some("LlamaForCausalLM"));
    assert_eq!(list[0].num_layers, Some(4));
    assert!(list[0].size_bytes > 800_000);
    let freed = d.cache().remove("tiny/llama").unwrap();
    assert_eq!(freed, list[0].size_bytes);
    assert_eq!(d.cache().list().len(), 1);
    assert_eq!(d.cache().remove("tiny/llama").unwrap_err().kind(), "not_cached");
}
