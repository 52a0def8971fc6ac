//! Dataset repos against the fake Hub: the Hub's dataset endpoints, Parquet files written by pyarrow in the
//! layout the Hub converts datasets to (`<config>/<split>-NNNNN-of-NNNNN.parquet`, `data/...`), two configs and two
//! splits, a gated repo, a dropped connection, the cache (`datasets--owner--name`, beside the models) and offline use.

use freezetune_data::source::{open_files, split_files};
use freezetune_fakehub::{FakeFile, FakeHub, FakeRepo, Fault};
use freezetune_hub::{CancellationToken, DownloadRequest, Downloader, HubSettings, RepoKind};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn data(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/data")
            .join(name),
    )
    .unwrap()
}

fn expected(name: &str) -> Vec<Value> {
    let all: Value = serde_json::from_slice(&data("expected.json")).unwrap();
    all["files"][name].as_array().unwrap().clone()
}

fn chat_repo(id: &str) -> FakeRepo {
    FakeRepo::dataset(
        id,
        vec![
            FakeFile::new("README.md", b"---\nconfigs:\n- config_name: default\n---\n".to_vec()),
            FakeFile::new(".gitattributes", b"*.parquet filter=lfs\n".to_vec()),
            FakeFile::new("default/train-00000-of-00002.parquet", data("alpaca.parquet")),
            FakeFile::new("default/train-00001-of-00002.parquet", data("messages.parquet")),
            FakeFile::new("default/test-00000-of-00001.parquet", data("sharegpt.parquet")),
            FakeFile::new("chat/train-00000-of-00001.parquet", data("sharegpt.parquet")),
            FakeFile::new("notes.txt", b"not data".to_vec()),
        ],
    )
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

async fn fetch(
    s: &HubSettings,
    repo: &str,
    include: &[&str],
) -> freezetune_hub::Result<freezetune_hub::DownloadOutcome> {
    let mut req = DownloadRequest::parse(repo).unwrap();
    req.kind = RepoKind::Dataset;
    req.include = include.iter().map(|s| s.to_string()).collect();
    Downloader::new(s.clone())
        .unwrap()
        .download(&req, &|_| {}, &CancellationToken::new())
        .await
}

fn rows(files: &[PathBuf]) -> Vec<Value> {
    open_files(files).unwrap().map(|r| r.unwrap().value).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_repo_downloads_into_the_shared_cache_and_reads_by_config_and_split() {
    let hub = FakeHub::start(vec![chat_repo("org/chat")]);
    let cache = tempfile::tempdir().unwrap();
    let s = settings(&hub, cache.path());
    let out = fetch(&s, "org/chat", &[]).await.unwrap();
    assert!(
        out.snapshot
            .starts_with(cache.path().join("datasets--org--chat/snapshots")),
        "{:?}",
        out.snapshot
    );
    let mut files = out.files.clone();
    files.sort();
    assert_eq!(
        files,
        [
            "README.md",
            "chat/train-00000-of-00001.parquet",
            "default/test-00000-of-00001.parquet",
            "default/train-00000-of-00002.parquet",
            "default/train-00001-of-00002.parquet"
        ],
        "data files and the README, not .gitattributes or notes"
    );
    assert!(hub
        .requests()
        .iter()
        .any(|r| r.path.starts_with("/api/datasets/org/chat/revision/main")));
    // The default config's train split is its two shards in order; test and the other config are their own.
    let train = split_files(&out.snapshot, Some("default"), "train", &[]).unwrap();
    let want: Vec<Value> = expected("alpaca.parquet")
        .into_iter()
        .chain(expected("messages.parquet"))
        .collect();
    assert_eq!(rows(&train), want);
    assert_eq!(
        rows(&split_files(&out.snapshot, Some("default"), "test", &[]).unwrap()),
        expected("sharegpt.parquet")
    );
    assert_eq!(
        rows(&split_files(&out.snapshot, Some("chat"), "train", &[]).unwrap()),
        expected("sharegpt.parquet")
    );
    let err = split_files(&out.snapshot, Some("default"), "validation", &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no data files for split \"validation\"") && err.contains("test-00000"),
        "{err}"
    );

    // Cached: offline resolves it without a request; a model of the same name is another cache entry.
    let n = hub.requests().len();
    let mut offline = s.clone();
    offline.offline = true;
    let again = fetch(&offline, "org/chat", &[]).await.unwrap();
    assert!(again.from_cache);
    assert_eq!(again.snapshot, out.snapshot);
    assert_eq!(hub.requests().len(), n);
    let mut model = DownloadRequest::parse("org/chat").unwrap();
    model.kind = RepoKind::Model;
    let e = Downloader::new(offline)
        .unwrap()
        .download(&model, &|_| {}, &CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "offline", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn globs_pick_files_a_drop_resumes_and_a_gated_dataset_needs_its_token() {
    let mut gated = chat_repo("org/gated");
    gated.token = Some("hf_dataset_token".into());
    let hub = FakeHub::start(vec![chat_repo("org/chat"), gated]);
    let cache = tempfile::tempdir().unwrap();
    let s = settings(&hub, cache.path());
    let name = "default/train-00000-of-00002.parquet";
    hub.add_fault(Fault::DropAfter {
        file: name.into(),
        after: 700,
        times: 1,
    });
    let out = fetch(&s, "org/chat", &["default/train-*"]).await.unwrap();
    let mut files = out.files.clone();
    files.sort();
    assert_eq!(files, ["README.md", name, "default/train-00001-of-00002.parquet"]);
    assert!(out.resumed_bytes > 0 || out.downloaded_bytes > 0);
    assert_eq!(
        std::fs::read(out.snapshot.join(name)).unwrap(),
        data("alpaca.parquet"),
        "resumed whole"
    );
    let ranges = hub.requests().iter().filter(|r| r.range.is_some()).count();
    assert!(ranges >= 1, "the dropped file resumed with a range request");

    let e = fetch(&s, "org/gated", &[]).await.unwrap_err();
    assert_eq!(e.kind(), "gated", "{e}");
    let with_token = s.clone().with_token(freezetune_hub::Token::new("hf_dataset_token"));
    fetch(&with_token, "org/gated", &[]).await.unwrap();
}
