use anyhow::Result;
use clap::Args;
use freezetune_core::events::DownloadEvent;
use freezetune_hub::{CancellationToken, DownloadOutcome, DownloadRequest, Downloader, HubSettings};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args)]
pub struct DownloadArgs {
    /// Repo id, optionally with a revision: owner/name[@revision].
    pub repo: String,
    /// Fetch files matching these globs instead of the training set (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Skip files matching these globs (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Hub or mirror URL (default: HF_ENDPOINT, else https://huggingface.co).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Files transferred at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Print the outcome as JSON (events are not shown).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &DownloadArgs) -> Result<()> {
    let mut req = DownloadRequest::parse(&args.repo)?;
    req.include = args.include.clone();
    req.exclude = args.exclude.clone();
    let mut settings = HubSettings::from_env();
    if let Some(e) = &args.endpoint {
        settings = settings.with_endpoint(e);
    }
    settings.concurrency = args.concurrency.max(1);
    let outcome = download_with_progress(settings, &req, !args.json)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        println!("{}", outcome.snapshot.display());
    }
    Ok(())
}

/// The snapshot folder of `repo@revision`: from the cache, or downloaded with a progress bar on stderr.
pub fn fetch(repo: &str, revision: Option<&str>) -> Result<std::path::PathBuf> {
    let id = match revision {
        Some(r) => format!("{repo}@{r}"),
        None => repo.to_string(),
    };
    let req = DownloadRequest::parse(&id)?;
    Ok(download_with_progress(HubSettings::from_env(), &req, true)?.snapshot)
}

/// A Hub dataset repo (`owner/name[@revision]`) in the shared cache, fetched now unless cached: the data files of
/// the run's config (every split of it, so an eval set from another split is there too), narrowed by `files`.
/// Another config's files are not fetched: a repo of many subsets would otherwise download them all. Offline,
/// or with the Hub unreachable, the cached snapshot serves if it holds the run's split. Returns its folder.
pub fn fetch_dataset(
    repo: &str,
    (config, split): (Option<&str>, &str),
    files: &[String],
) -> Result<std::path::PathBuf> {
    let mut req = DownloadRequest::parse(repo)?;
    req.kind = freezetune_hub::RepoKind::Dataset;
    req.include = files.to_vec();
    let settings = HubSettings::from_env();
    if settings.offline {
        return cached_dataset(
            settings,
            &req,
            (config, split),
            files,
            "offline (HF_HUB_OFFLINE)".into(),
        );
    }
    let downloader = Downloader::new(settings.clone())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match runtime.block_on(downloader.dataset_card(&req)) {
        Ok((listing, readme)) => {
            let names = listing.names();
            let wanted = freezetune_data::config_names(repo, &names, readme.as_deref(), (config, Some(split)), files)?;
            req.only_files(&wanted, &listing.commit);
            Ok(download_with_progress(settings, &req, true)?.snapshot)
        }
        // Unreachable: the cache, never a download of every config's files once it answers again.
        Err(e @ freezetune_hub::HubError::Network { .. }) => {
            cached_dataset(settings, &req, (config, split), files, e.to_string())
        }
        Err(e) => Err(e.into()),
    }
}

/// `req`'s cached snapshot, when the Hub cannot be asked (`why`): refused, saying why, when there is none or
/// when it does not hold the run's split (a copy fetched for another config).
fn cached_dataset(
    mut settings: HubSettings,
    req: &DownloadRequest,
    (config, split): (Option<&str>, &str),
    files: &[String],
    why: String,
) -> Result<std::path::PathBuf> {
    settings.offline = true;
    let snapshot = download_with_progress(settings, req, false)
        .map_err(|e| anyhow::anyhow!("{why}, and the cache cannot serve instead: {e}"))?
        .snapshot;
    if let Err(e) = freezetune_data::source::split_files(&snapshot, config, split, files) {
        anyhow::bail!(
            "{why}, and the cached copy of {} cannot serve this run (it was fetched for another config or \
             split): {e}",
            req.repo
        );
    }
    Ok(snapshot)
}

/// Runs one download; Ctrl-C cancels it (partial files are kept for the next attempt).
fn download_with_progress(settings: HubSettings, req: &DownloadRequest, show: bool) -> Result<DownloadOutcome> {
    let downloader = Downloader::new(settings)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let cancel = CancellationToken::new();
    let bar = ProgressBar::new(0);
    if !show {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    let b = bar.clone();
    let sink = move |event: DownloadEvent| render(&b, event);
    let outcome = runtime.block_on(async {
        let c = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                c.cancel();
            }
        });
        downloader.download(req, &sink, &cancel).await
    });
    bar.finish_and_clear();
    let outcome = outcome?;
    if show {
        if outcome.from_cache {
            eprintln!("offline: using the cached snapshot");
        } else {
            eprintln!(
                "downloaded {} in {:.1} s ({:.1} MB/s){}",
                crate::render::bytes(outcome.downloaded_bytes),
                outcome.seconds,
                outcome.downloaded_bytes as f64 / outcome.seconds.max(1e-9) / 1e6,
                if outcome.resumed_bytes > 0 {
                    format!(", resumed {}", crate::render::bytes(outcome.resumed_bytes))
                } else {
                    String::new()
                }
            );
        }
    }
    Ok(outcome)
}

fn render(bar: &ProgressBar, event: DownloadEvent) {
    match event {
        DownloadEvent::Resolved {
            repo,
            commit,
            total_bytes,
            files,
            ..
        } => {
            bar.set_length(total_bytes);
            bar.set_position(files.iter().map(|f| f.present).sum());
            bar.println(format!(
                "{repo} @ {}: {} files, {}",
                &commit[..commit.len().min(12)],
                files.len(),
                crate::render::bytes(total_bytes)
            ));
        }
        DownloadEvent::FileStarted { file, resumed_from, .. } if resumed_from > 0 => {
            bar.println(format!("  resuming {file} from {}", crate::render::bytes(resumed_from)));
        }
        DownloadEvent::Progress { done_bytes, file, .. } => {
            bar.set_position(done_bytes);
            bar.set_message(file);
        }
        DownloadEvent::Retrying {
            file,
            attempt,
            wait_ms,
            reason,
        } => {
            bar.println(format!("  retry {attempt} of {file} in {wait_ms} ms: {reason}"));
        }
        DownloadEvent::FileVerified { file, .. } => bar.println(format!("  ✓ {file}")),
        DownloadEvent::Cancelled { partial_bytes } => {
            bar.println(format!(
                "cancelled; {} kept for resuming",
                crate::render::bytes(partial_bytes)
            ));
        }
        _ => {}
    }
}
