//! Looking at the Hub before downloading: search (the Hub's `/api/models` and `/api/datasets` with `search=`), a
//! repo's file listing, and small reads of single files or byte ranges: config.json, a dataset's README, and the
//! safetensors headers of a checkpoint (its first bytes, through range requests), which is all the freeze planner
//! and the fit check need. Nothing here writes to the cache.

use crate::cache::RepoKind;
use crate::download::{DownloadRequest, Downloader};
use crate::error::{HubError, Result};
use crate::select::RemoteFile;
use crate::transfer::{check_status, fatal_of};
use freezetune_core::files::INDEX_FILE;
use freezetune_core::RemoteShard;
use reqwest::header::{AUTHORIZATION, LOCATION, RANGE};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One search result, with what the Hub's listing says about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchHit {
    pub id: String,
    pub downloads: u64,
    pub likes: u64,
    /// Access must be requested (the Hub's `gated`: "auto" or "manual").
    pub gated: bool,
    pub last_modified: Option<String>,
    /// From the listing's reduced config (models only).
    pub model_type: Option<String>,
    pub architecture: Option<String>,
    /// Parameters the repo's safetensors hold, as the Hub counts them (models only).
    pub params: Option<u64>,
}

/// A repo's commit and files, as its info lists them (sizes included).
#[derive(Debug, Clone)]
pub struct RepoListing {
    pub commit: String,
    pub files: Vec<RemoteFile>,
}

impl RepoListing {
    pub fn size_of(&self, name: &str) -> Option<u64> {
        self.files.iter().find(|f| f.name == name).and_then(RemoteFile::size)
    }

    /// Every file's name, as the Hub lists it.
    pub fn names(&self) -> Vec<String> {
        self.files.iter().map(|f| f.name.clone()).collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.files.iter().any(|f| f.name == name)
    }
}

/// A checkpoint as the Hub holds it, read without its weights.
#[derive(Debug, Clone)]
pub struct RemoteCheckpoint {
    pub listing: RepoListing,
    pub config: Value,
    pub shards: Vec<RemoteShard>,
}

/// The most a search may return: the Hub pages at 1000, and a picker shows a screenful.
const MAX_RESULTS: usize = 100;
/// Small files read whole (config.json, README.md, the shard index): larger ones are refused, not read.
const MAX_SMALL_FILE: u64 = 16 << 20;

#[derive(Deserialize)]
struct RawHit {
    id: String,
    #[serde(default)]
    downloads: u64,
    #[serde(default)]
    likes: u64,
    #[serde(default)]
    gated: Value,
    #[serde(default, rename = "lastModified")]
    last_modified: Option<String>,
    #[serde(default)]
    config: Option<Value>,
    #[serde(default)]
    safetensors: Option<Value>,
}

impl From<RawHit> for SearchHit {
    fn from(raw: RawHit) -> SearchHit {
        let config = raw.config.unwrap_or(Value::Null);
        SearchHit {
            id: raw.id,
            downloads: raw.downloads,
            likes: raw.likes,
            gated: matches!(&raw.gated, Value::String(_) | Value::Bool(true)),
            last_modified: raw.last_modified,
            model_type: config["model_type"].as_str().map(str::to_string),
            architecture: config["architectures"][0].as_str().map(str::to_string),
            params: raw.safetensors.and_then(|s| s["total"].as_u64()),
        }
    }
}

impl Downloader {
    /// Repos whose name contains `text`, most downloaded first (at most `limit`, capped at 100).
    pub async fn search(&self, kind: RepoKind, text: &str, limit: usize) -> Result<Vec<SearchHit>> {
        let endpoint = &self.settings().endpoint;
        let url = format!("{endpoint}/api/{}", kind.api_segment());
        let mut query: Vec<(&str, String)> = vec![
            ("search", text.trim().to_string()),
            ("sort", "downloads".into()),
            ("direction", "-1".into()),
            ("limit", limit.clamp(1, MAX_RESULTS).to_string()),
        ];
        let fields: &[&str] = match kind {
            RepoKind::Model => &["downloads", "likes", "gated", "lastModified", "config", "safetensors"],
            RepoKind::Dataset => &["downloads", "likes", "gated", "lastModified"],
        };
        query.extend(fields.iter().map(|f| ("expand[]", f.to_string())));
        let resp = self
            .authorized(self.client().get(&url).query(&query), &url)
            .send()
            .await
            .map_err(|e| self.network(e))?;
        check_status(resp.status(), resp.headers(), "", "", &url, endpoint).map_err(|f| fatal_of(f, &url))?;
        let hits: Vec<RawHit> = resp.json().await.map_err(|e| HubError::Protocol {
            url,
            reason: format!("bad search answer: {e}"),
        })?;
        Ok(hits.into_iter().map(SearchHit::from).collect())
    }

    /// The commit `req` resolves to and the repo's files with their sizes.
    pub async fn listing(&self, req: &DownloadRequest) -> Result<RepoListing> {
        let info = self.repo_info(req).await?;
        crate::select::check_name(&info.sha).map_err(|_| HubError::Protocol {
            url: req.repo.clone(),
            reason: format!("bad commit {:?}", info.sha),
        })?;
        Ok(RepoListing {
            commit: info.sha,
            files: info.siblings,
        })
    }

    /// A dataset repo's listing and its README's text (None without one): what a picker lists its configs from,
    /// and what a download narrowed to one config reads before fetching (`freezetune_data::config_names`).
    pub async fn dataset_card(&self, req: &DownloadRequest) -> Result<(RepoListing, Option<String>)> {
        let listing = self.listing(req).await?;
        let readme = match listing.has("README.md") {
            true => Some(self.read_small(req, &listing, "README.md").await?),
            false => None,
        };
        let readme = readme.map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
        Ok((listing, readme))
    }

    /// `name` at `commit`, whole; refused when the listing says it is larger than `MAX_SMALL_FILE`.
    pub async fn read_small(&self, req: &DownloadRequest, listing: &RepoListing, name: &str) -> Result<Vec<u8>> {
        if let Some(size) = listing.size_of(name).filter(|&s| s > MAX_SMALL_FILE) {
            return Err(HubError::Protocol {
                url: format!("{}/{name}", req.repo),
                reason: format!("is {size} bytes, more than the {MAX_SMALL_FILE} read before a download"),
            });
        }
        self.read_range(req, &listing.commit, name, None).await
    }

    /// Bytes `range` (inclusive, as HTTP writes it) of `name` at `commit`, or the whole file; follows the Hub's
    /// redirect to its CDN (without the token) and refuses more than `MAX_SMALL_FILE` bytes.
    pub async fn read_range(
        &self,
        req: &DownloadRequest,
        commit: &str,
        name: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Vec<u8>> {
        crate::select::check_name(name)?;
        let endpoint = &self.settings().endpoint;
        let mut url = format!(
            "{endpoint}/{}{}/resolve/{commit}/{name}",
            req.kind.url_prefix(),
            req.repo
        );
        for _ in 0..4 {
            let mut get = self.authorized(self.client().get(&url), &url);
            if let Some((start, end)) = range {
                get = get.header(RANGE, format!("bytes={start}-{end}"));
            }
            let resp = get.send().await.map_err(|e| self.network(e))?;
            let status = resp.status();
            check_status(status, resp.headers(), &req.repo, name, &url, endpoint).map_err(|f| fatal_of(f, &url))?;
            if status.is_redirection() {
                let loc = resp.headers().get(LOCATION).and_then(|v| v.to_str().ok());
                let next = loc.and_then(|l| reqwest::Url::parse(&url).ok()?.join(l).ok());
                url = next
                    .ok_or_else(|| HubError::Protocol {
                        url: url.clone(),
                        reason: "a redirect without a usable Location".into(),
                    })?
                    .to_string();
                continue;
            }
            if resp.content_length().is_some_and(|n| n > MAX_SMALL_FILE) {
                return Err(HubError::Protocol {
                    url,
                    reason: format!("answers more than the {MAX_SMALL_FILE} bytes read before a download"),
                });
            }
            // Chunk by chunk, stopping at the cap: a server that sends no length cannot make this read unbounded.
            let mut bytes = Vec::new();
            let mut resp = resp;
            while let Some(chunk) = resp.chunk().await.map_err(|e| self.network(e))? {
                bytes.extend_from_slice(&chunk);
                if bytes.len() as u64 > MAX_SMALL_FILE {
                    break;
                }
            }
            let wanted = range.map(|(s, e)| e - s + 1);
            if wanted.is_some_and(|w| bytes.len() as u64 != w) || bytes.len() as u64 > MAX_SMALL_FILE {
                return Err(HubError::Protocol {
                    url,
                    reason: format!("answered {} bytes for the range {range:?}", bytes.len()),
                });
            }
            return Ok(bytes);
        }
        Err(HubError::Protocol {
            url,
            reason: "too many redirects".into(),
        })
    }

    /// config.json and the safetensors headers of the checkpoint `req` names (its index's shards, else its
    /// `*.safetensors` files at the top level), read with range requests: two per shard, a few KB each.
    pub async fn remote_checkpoint(&self, req: &DownloadRequest) -> Result<RemoteCheckpoint> {
        let listing = self.listing(req).await?;
        let config = self.read_small(req, &listing, "config.json").await?;
        let config: Value = serde_json::from_slice(&config).map_err(|e| HubError::Protocol {
            url: format!("{}/config.json", req.repo),
            reason: format!("is not JSON: {e}"),
        })?;
        let shard_names = self.shard_names(req, &listing).await?;
        let mut shards = Vec::new();
        for name in shard_names {
            let size = listing.size_of(&name).ok_or_else(|| HubError::Index {
                file: INDEX_FILE.into(),
                reason: format!("names shard {name}, which the repo does not list with a size"),
            })?;
            shards.push(self.remote_shard(req, &listing.commit, &name, size).await?);
        }
        Ok(RemoteCheckpoint {
            listing,
            config,
            shards,
        })
    }

    async fn shard_names(&self, req: &DownloadRequest, listing: &RepoListing) -> Result<Vec<String>> {
        if listing.has(INDEX_FILE) {
            let index = self.read_small(req, listing, INDEX_FILE).await?;
            let index: Value = serde_json::from_slice(&index).map_err(|e| HubError::Index {
                file: INDEX_FILE.into(),
                reason: format!("is not JSON: {e}"),
            })?;
            let map = index["weight_map"].as_object().ok_or_else(|| HubError::Index {
                file: INDEX_FILE.into(),
                reason: "has no weight_map object".into(),
            })?;
            let mut names: Vec<String> = map.values().filter_map(Value::as_str).map(str::to_string).collect();
            names.sort();
            names.dedup();
            return Ok(names);
        }
        Ok(listing
            .files
            .iter()
            .filter(|f| f.name.ends_with(".safetensors") && !f.name.contains('/'))
            .map(|f| f.name.clone())
            .collect())
    }

    async fn remote_shard(&self, req: &DownloadRequest, commit: &str, name: &str, size: u64) -> Result<RemoteShard> {
        let bad = |reason: String| HubError::Protocol {
            url: format!("{}/{name}", req.repo),
            reason,
        };
        if size < 8 {
            return Err(bad(format!("is {size} bytes, too short for a safetensors header")));
        }
        let len = self.read_range(req, commit, name, Some((0, 7))).await?;
        let header_len = u64::from_le_bytes(len.try_into().map_err(|_| bad("no 8-byte header length".into()))?);
        freezetune_core::safetensors::check_header_len(header_len, size).map_err(bad)?;
        let header = match header_len {
            0 => Vec::new(),
            n => self.read_range(req, commit, name, Some((8, 8 + n - 1))).await?,
        };
        Ok(RemoteShard {
            name: name.to_string(),
            size,
            header,
        })
    }

    /// The token goes to the Hub (or mirror) only, never to a CDN it redirects to.
    fn authorized(&self, req: reqwest::RequestBuilder, url: &str) -> reqwest::RequestBuilder {
        match &self.settings().token {
            Some(t) if self.settings().is_endpoint_url(url) => {
                req.header(AUTHORIZATION, format!("Bearer {}", t.expose()))
            }
            _ => req,
        }
    }

    fn network(&self, e: reqwest::Error) -> HubError {
        HubError::Network {
            endpoint: self.settings().endpoint.clone(),
            reason: e.to_string(),
            cached: Vec::new(),
        }
    }
}
