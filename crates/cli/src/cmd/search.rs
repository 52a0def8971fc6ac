//! `freezetune search`: the Hub's models or datasets by name, most downloaded first. Each model row says, before any
//! download, whether this build trains its architecture and whether the default plan (its last two layers) fits
//! the device, from its config.json and safetensors headers (a few KB per shard, read with range requests).

use anyhow::Result;
use clap::Args;
use freezetune_core::fit::DeviceMemory;
use freezetune_hub::{DownloadRequest, Downloader, HubSettings, RepoKind, SearchHit};
use freezetune_train::remote::{check_remote_model, RemoteModelCheck};
use serde::Serialize;

#[derive(Args)]
pub struct SearchArgs {
    /// Text the repo id contains.
    pub query: String,
    /// Search datasets instead of models.
    #[arg(long)]
    pub datasets: bool,
    /// Rows to show (at most 100).
    #[arg(long, default_value_t = 10)]
    pub limit: usize,
    /// The device the fit check counts against, as `freezetune devices` names it.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub fit: String,
    /// Count against this much memory instead (GiB).
    #[arg(long, value_name = "GIB")]
    pub fit_memory: Option<f64>,
    /// List only: no per-model check.
    #[arg(long)]
    pub no_check: bool,
    /// Hub or mirror URL (default: HF_ENDPOINT, else https://huggingface.co).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    #[arg(long)]
    pub json: bool,
}

/// One row: the hit and, for models, its check (or why the check could not be made).
#[derive(Serialize)]
struct Row {
    #[serde(flatten)]
    hit: SearchHit,
    #[serde(skip_serializing_if = "Option::is_none")]
    check: Option<RemoteModelCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    check_error: Option<String>,
}

/// Rows whose model is checked at once (the app's search does the same).
const CHECKS_AT_ONCE: usize = 4;

pub fn run(args: &SearchArgs) -> Result<()> {
    let mut settings = HubSettings::from_env();
    if let Some(e) = &args.endpoint {
        settings = settings.with_endpoint(e);
    }
    let downloader = Downloader::new(settings)?;
    let kind = if args.datasets {
        RepoKind::Dataset
    } else {
        RepoKind::Model
    };
    let device = match args.fit_memory {
        Some(gib) => (
            DeviceMemory {
                name: format!("{gib} GiB"),
                available_bytes: (gib * 1024f64.powi(3)) as u64,
            },
            false,
        ),
        None => super::plan::device_memory(&args.fit)?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let rows = runtime.block_on(async {
        use futures_util::stream::{self, StreamExt};
        let hits = downloader.search(kind, &args.query, args.limit).await?;
        // Each check is a few small range requests, mostly waiting on the Hub: CHECKS_AT_ONCE rows at a time,
        // answered in the search's order.
        let rows = stream::iter(hits)
            .map(|hit| async {
                let checked = if args.datasets || args.no_check {
                    None
                } else {
                    Some(check(&downloader, &hit.id, &device).await)
                };
                let (check, check_error) = match checked {
                    Some(Ok(c)) => (Some(c), None),
                    Some(Err(e)) => (None, Some(format!("{e:#}"))),
                    None => (None, None),
                };
                Row {
                    hit,
                    check,
                    check_error,
                }
            })
            .buffered(CHECKS_AT_ONCE)
            .collect::<Vec<_>>()
            .await;
        anyhow::Ok(rows)
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", table(&rows, args.datasets));
    }
    Ok(())
}

async fn check(downloader: &Downloader, repo: &str, device: &(DeviceMemory, bool)) -> Result<RemoteModelCheck> {
    let remote = downloader.remote_checkpoint(&DownloadRequest::parse(repo)?).await?;
    Ok(check_remote_model(
        repo,
        remote.config,
        &remote.shards,
        &device.0,
        device.1,
    )?)
}

fn table(rows: &[Row], datasets: bool) -> String {
    use crate::render::count;
    if rows.is_empty() {
        return "no repo matches\n".into();
    }
    let mut out = String::new();
    for r in rows {
        let h = &r.hit;
        let gated = if h.gated { "  gated (needs a token)" } else { "" };
        out += &format!(
            "{}  {} downloads, {} likes{gated}\n",
            h.id,
            count(h.downloads),
            count(h.likes)
        );
        if datasets {
            continue;
        }
        match (&r.check, &r.check_error) {
            (Some(c), _) => {
                let trains = match &c.training_unsupported {
                    None => "trains here".to_string(),
                    Some(why) => format!("does not train here: {why}"),
                };
                let fits = if c.fit.fits { "fits" } else { "does not fit" };
                out += &format!(
                    "    {} ({} layers, {} params, {}): {trains}; the last 2 layers {fits} {} ({} of {})\n",
                    c.architecture,
                    c.num_layers,
                    count(c.total_params),
                    crate::render::bytes(c.weight_bytes),
                    c.fit.device,
                    crate::render::bytes(c.fit.need_bytes),
                    crate::render::bytes(c.fit.available_bytes),
                );
            }
            (None, Some(e)) => out += &format!("    not checked: {e}\n"),
            (None, None) => {}
        }
    }
    out
}
