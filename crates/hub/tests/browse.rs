//! Looking at the Hub before a download, against the fake Hub: search for models and datasets, a checkpoint's
//! layout from config.json and range-read safetensors headers (exactly the layout of the downloaded folder, for a
//! few KB), gated repos, and a dataset repo's configs and splits from its listing and README.

use freezetune_core::synth::{write_checkpoint, Family, SynthSpec};
use freezetune_core::ModelLayout;
use freezetune_fakehub::{FakeFile, FakeHub, FakeRepo};
use freezetune_hub::{DownloadRequest, Downloader, HubError, HubSettings, RepoKind, Token};
use std::path::Path;
use std::time::Duration;

fn checkpoint(dir: &Path, family: Family, layers: usize, shards: usize) {
    let mut spec = SynthSpec::tiny(family, layers);
    spec.shards = shards;
    write_checkpoint(dir, &spec).unwrap();
}

fn model_repo(id: &str, dir: &Path, downloads: u64) -> FakeRepo {
    let mut repo = FakeRepo::from_dir(id, dir);
    repo.downloads = downloads;
    repo
}

fn downloader(hub: &FakeHub, token: Option<&str>) -> Downloader {
    let mut s = HubSettings::from_env()
        .with_endpoint(hub.url())
        .with_cache_dir(tempfile::tempdir().unwrap().keep())
        .with_token(token.and_then(Token::new));
    s.offline = false;
    s.max_retries = 1;
    s.retry_base = Duration::from_millis(10);
    Downloader::new(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_models_and_datasets_by_name_most_downloaded_first() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    checkpoint(a.path(), Family::Llama, 4, 1);
    checkpoint(b.path(), Family::Qwen2, 2, 1);
    let mut gated = model_repo("meta/Tiny-Gated", a.path(), 5);
    gated.token = Some("hf_x".into());
    let data = FakeRepo::dataset("org/tiny-chat", vec![FakeFile::new("train.jsonl", b"{}\n".to_vec())]);
    let hub = FakeHub::start(vec![
        model_repo("acme/tiny-llama", a.path(), 10),
        model_repo("acme/tiny-qwen", b.path(), 300),
        model_repo("acme/other", b.path(), 1000),
        gated,
        data,
    ]);
    let d = downloader(&hub, None);
    let hits = d.search(RepoKind::Model, "TINY", 20).await.unwrap();
    let ids: Vec<&str> = hits.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids, ["acme/tiny-qwen", "acme/tiny-llama", "meta/Tiny-Gated"]);
    let llama = ModelLayout::inspect(a.path()).unwrap();
    assert_eq!(hits[1].model_type.as_deref(), Some("llama"));
    assert_eq!(hits[1].architecture.as_deref(), Some("LlamaForCausalLM"));
    // The Hub counts every stored tensor; the layout folds a tied lm_head, which the tiny llama does not have.
    assert_eq!(hits[1].params, Some(llama.total_params));
    assert!(hits[2].gated && !hits[1].gated);
    assert_eq!(d.search(RepoKind::Model, "tiny", 1).await.unwrap().len(), 1);
    let sets = d.search(RepoKind::Dataset, "chat", 20).await.unwrap();
    assert_eq!(sets.len(), 1);
    assert_eq!(
        (sets[0].id.as_str(), sets[0].model_type.as_deref()),
        ("org/tiny-chat", None)
    );
    let query = hub.requests().into_iter().find(|r| r.path == "/api/models").unwrap();
    assert_eq!(query.method, "GET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_checkpoint_reads_the_same_layout_as_its_download_from_headers_only() {
    let dir = tempfile::tempdir().unwrap();
    checkpoint(dir.path(), Family::Llama, 6, 3);
    let weights: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .map(|p| p.metadata().unwrap().len())
        .sum();
    let mut gated = model_repo("meta/gated", dir.path(), 0);
    gated.token = Some("hf_right".into());
    let hub = FakeHub::start(vec![model_repo("acme/sharded", dir.path(), 0), gated]);
    let req = DownloadRequest::parse("acme/sharded").unwrap();
    let remote = downloader(&hub, None).remote_checkpoint(&req).await.unwrap();
    assert_eq!(remote.shards.len(), 3);
    let layout = ModelLayout::from_headers("acme/sharded", remote.config, &remote.shards).unwrap();
    let local = ModelLayout::inspect(dir.path()).unwrap();
    assert_eq!(layout.layers, local.layers);
    assert_eq!(layout.non_layer_modules, local.non_layer_modules);
    assert_eq!(layout.weight_bytes(), local.weight_bytes());
    // Headers only: every weight request is a range, and far fewer bytes crossed the wire than the weights hold.
    let weight_reads: Vec<_> = hub
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/cdn/"))
        .collect();
    assert_eq!(weight_reads.len(), 6, "two ranges per shard");
    assert!(weight_reads.iter().all(|r| r.range.is_some()));
    assert!(hub.body_bytes() * 4 < weights, "{} of {weights}", hub.body_bytes());

    let req = DownloadRequest::parse("meta/gated").unwrap();
    let err = downloader(&hub, None).remote_checkpoint(&req).await.unwrap_err();
    assert!(matches!(err, HubError::Gated { .. }), "{err}");
    let ok = downloader(&hub, Some("hf_right"))
        .remote_checkpoint(&req)
        .await
        .unwrap();
    assert_eq!(ok.shards.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_repos_configs_and_splits_come_from_its_listing_and_readme() {
    let readme = "---\nconfigs:\n- config_name: en\n  default: true\n  data_files:\n  - split: train\n    path: en/train-*\n  - split: test\n    path: en/test-*\n- config_name: fr\n  data_files: fr/*.jsonl\n---\n";
    let hub = FakeHub::start(vec![FakeRepo::dataset(
        "org/multi",
        vec![
            FakeFile::new("README.md", readme.as_bytes().to_vec()),
            FakeFile::new("en/train-00000.jsonl", b"{\"text\": \"a\"}\n".to_vec()),
            FakeFile::new("en/test-00000.jsonl", b"{\"text\": \"b\"}\n".to_vec()),
            FakeFile::new("fr/all.jsonl", b"{\"text\": \"c\"}\n".to_vec()),
        ],
    )]);
    let mut req = DownloadRequest::parse("org/multi").unwrap();
    req.kind = RepoKind::Dataset;
    let d = downloader(&hub, None);
    let listing = d.listing(&req).await.unwrap();
    let text = d.read_small(&req, &listing, "README.md").await.unwrap();
    let names = listing.names();
    let configs = freezetune_data::list_configs(&names, Some(std::str::from_utf8(&text).unwrap())).unwrap();
    let summary: Vec<(&str, bool, Vec<&str>)> = configs
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                c.default,
                c.splits.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [("en", true, vec!["train", "test"]), ("fr", false, vec!["train"])]
    );
    // The dataset endpoints were used, and nothing entered the cache.
    assert!(hub.requests().iter().all(|r| r.path.contains("datasets/")));
}
