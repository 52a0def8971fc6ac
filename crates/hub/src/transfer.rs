//! One file from the Hub into the cache: resolve its etag and size, transfer it with HTTP range requests (resuming a
//! partial `blobs/<etag>.incomplete`), retry transient failures with backoff, verify size and checksum, and only
//! then move it into `blobs/` and link it from the snapshot. Cancellation stops between chunks and keeps the partial.

use crate::cache::HubCache;
use crate::error::{HubError, Result};
use crate::progress::ProgressTracker;
use crate::settings::HubSettings;
use crate::sink::{BlobWriter, HashKind};
use freezetune_core::events::DownloadEvent;
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_RANGE, ETAG, LOCATION, RANGE};
use reqwest::{Client, StatusCode};
use std::io::Read;
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub(crate) struct Transfer<'a> {
    pub settings: &'a HubSettings,
    pub client: &'a Client,
    pub cache: &'a HubCache,
    pub progress: &'a ProgressTracker<'a>,
    pub cancel: &'a CancellationToken,
    pub repo: &'a str,
    pub kind: crate::cache::RepoKind,
    pub commit: &'a str,
}

/// What the Hub says about a file before its bytes are fetched.
struct Meta {
    etag: String,
    size: u64,
    /// Where the bytes are (the CDN for LFS files).
    data_url: String,
}

/// A failure worth retrying (the connection, a 5xx, a timeout) or not.
pub(crate) enum Failure {
    Transient(String),
    Fatal(HubError),
}

impl From<HubError> for Failure {
    fn from(e: HubError) -> Self {
        Failure::Fatal(e)
    }
}

/// Outcome of one file: bytes fetched now, and bytes reused from an earlier partial download.
pub(crate) struct FileResult {
    pub fetched: u64,
    pub resumed: u64,
}

impl Transfer<'_> {
    fn resolve_url(&self, file: &str) -> String {
        format!(
            "{}/{}{}/resolve/{}/{}",
            self.settings.endpoint,
            self.kind.url_prefix(),
            self.repo,
            self.commit,
            file
        )
    }

    fn request(&self, url: &str) -> reqwest::RequestBuilder {
        let req = self.client.get(url);
        // The token goes to the Hub (or mirror) only, never to a CDN it redirects to.
        match &self.settings.token {
            Some(t) if self.settings.is_endpoint_url(url) => {
                req.header(AUTHORIZATION, format!("Bearer {}", t.expose()))
            }
            _ => req,
        }
    }

    /// Downloads `file` (expected `size` / `etag` from the repo listing) into the cache and links it.
    pub async fn fetch(&self, file: &str, listed_size: Option<u64>, listed_etag: Option<&str>) -> Result<FileResult> {
        let mut attempt = 0;
        loop {
            match self.try_fetch(file, listed_size, listed_etag).await {
                Ok(r) => return Ok(r),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient(reason)) => {
                    attempt += 1;
                    if attempt > self.settings.max_retries {
                        return Err(HubError::Protocol {
                            url: self.resolve_url(file),
                            reason: format!("gave up after {attempt} attempts: {reason}"),
                        });
                    }
                    let wait = backoff(self.settings.retry_base, attempt);
                    tracing::warn!(file, attempt, ?wait, %reason, "transient failure, retrying");
                    self.progress.emit(DownloadEvent::Retrying {
                        file: file.to_string(),
                        attempt,
                        wait_ms: wait.as_millis() as u64,
                        reason,
                    });
                    tokio::select! {
                        _ = self.cancel.cancelled() => return Err(HubError::Cancelled),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    async fn try_fetch(
        &self,
        file: &str,
        listed_size: Option<u64>,
        listed_etag: Option<&str>,
    ) -> Result<FileResult, Failure> {
        let meta = self.metadata(file).await?;
        if let Some(size) = listed_size.filter(|s| *s != meta.size) {
            return Err(HubError::Protocol {
                url: self.resolve_url(file),
                reason: format!("the repo lists {size} bytes but the file has {}", meta.size),
            }
            .into());
        }
        if let Some(etag) = listed_etag.filter(|e| *e != meta.etag) {
            return Err(HubError::Protocol {
                url: self.resolve_url(file),
                reason: format!("the repo lists blob {etag} but the file resolves to {}", meta.etag),
            }
            .into());
        }
        let blob = self.cache.blob_path(self.repo, &meta.etag);
        if blob.metadata().is_ok_and(|m| m.len() == meta.size) {
            self.cache.link(self.repo, self.commit, file, &meta.etag)?;
            return Ok(FileResult { fetched: 0, resumed: 0 });
        }
        let partial = self.cache.incomplete_path(self.repo, &meta.etag);
        let parent = partial.parent().expect("blob dir");
        std::fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
        let mut have = partial.metadata().map(|m| m.len()).unwrap_or(0);
        if have > meta.size {
            have = 0;
        }
        let resumed = have;
        self.progress.emit(DownloadEvent::FileStarted {
            file: file.to_string(),
            size: meta.size,
            resumed_from: have,
        });
        let (fetched, digest) = self.stream_into(file, &meta, &partial, have).await?;
        self.verify(file, &meta, &partial, digest)?;
        std::fs::rename(&partial, &blob).map_err(|e| HubError::io(&blob, e))?;
        self.cache.link(self.repo, self.commit, file, &meta.etag)?;
        self.progress
            .emit(DownloadEvent::FileFinished { file: file.to_string() });
        let sha256 = (meta.etag.len() == 64).then(|| meta.etag.clone());
        self.progress.emit(DownloadEvent::FileVerified {
            file: file.to_string(),
            sha256,
        });
        Ok(FileResult { fetched, resumed })
    }

    /// `GET` with `Range: bytes=0-0` and no redirect following: the Hub's own answer carries the commit, the
    /// etag (`X-Linked-Etag` for LFS) and the size (`X-Linked-Size`, or `Content-Range`).
    async fn metadata(&self, file: &str) -> Result<Meta, Failure> {
        let url = self.resolve_url(file);
        let resp = tokio::select! {
            _ = self.cancel.cancelled() => return Err(HubError::Cancelled.into()),
            r = self.request(&url).header(RANGE, "bytes=0-0").send() => r.map_err(|e| transient(&e))?,
        };
        let status = resp.status();
        check_status(status, resp.headers(), self.repo, file, &url, &self.settings.endpoint)?;
        let headers = resp.headers();
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let etag = header("x-linked-etag")
            .or_else(|| header(ETAG.as_str()))
            .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string())
            .ok_or_else(|| HubError::Protocol {
                url: url.clone(),
                reason: "no ETag header".into(),
            })?;
        crate::select::check_name(&etag).map_err(|_| HubError::Protocol {
            url: url.clone(),
            reason: format!("bad etag {etag:?}"),
        })?;
        let size = header("x-linked-size")
            .and_then(|s| s.parse().ok())
            .or_else(|| header(CONTENT_RANGE.as_str()).and_then(|r| r.rsplit('/').next()?.parse().ok()))
            .or_else(|| (status == StatusCode::OK).then(|| resp.content_length()).flatten())
            .ok_or_else(|| HubError::Protocol {
                url: url.clone(),
                reason: "no file size in the response".into(),
            })?;
        let data_url = if status.is_redirection() {
            let loc = header(LOCATION.as_str()).ok_or_else(|| HubError::Protocol {
                url: url.clone(),
                reason: "redirect without Location".into(),
            })?;
            reqwest::Url::parse(&url)
                .and_then(|base| base.join(&loc))
                .map(|u| u.to_string())
                .map_err(|e| HubError::Protocol {
                    url: url.clone(),
                    reason: format!("bad Location {loc:?}: {e}"),
                })?
        } else {
            url
        };
        Ok(Meta { etag, size, data_url })
    }

    /// Appends the missing bytes `[have, size)` to `partial`. Returns the bytes fetched and the file's digest.
    async fn stream_into(
        &self,
        file: &str,
        meta: &Meta,
        partial: &Path,
        mut have: u64,
    ) -> Result<(u64, Option<String>), Failure> {
        let kind = HashKind::for_etag(&meta.etag, meta.size);
        if have == meta.size {
            let digest = match kind {
                HashKind::Sha256 => Some(hash_file::<sha2::Sha256>(partial, None)?),
                HashKind::GitSha1 { size } => Some(hash_file::<sha1::Sha1>(
                    partial,
                    Some(format!("blob {size}\0").as_bytes()),
                )?),
                HashKind::Unknown => None,
            };
            return Ok((0, digest));
        }
        let mut req = self.request(&meta.data_url);
        if have > 0 {
            req = req.header(RANGE, format!("bytes={have}-"));
        }
        let mut resp = tokio::select! {
            _ = self.cancel.cancelled() => return Err(HubError::Cancelled.into()),
            r = req.send() => r.map_err(|e| transient(&e))?,
        };
        let status = resp.status();
        check_status(
            status,
            resp.headers(),
            self.repo,
            file,
            &meta.data_url,
            &self.settings.endpoint,
        )?;
        let start = match status {
            StatusCode::PARTIAL_CONTENT => resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|r| r.strip_prefix("bytes ")?.split('-').next()?.parse::<u64>().ok())
                .unwrap_or(u64::MAX),
            _ => 0,
        };
        if start != have {
            if start != 0 {
                return Err(Failure::Transient(format!(
                    "server answered range start {start}, expected {have}"
                )));
            }
            // The server ignored the range: start over rather than splice mismatched bytes.
            self.progress.advance(file, 0, meta.size, -(have as i64));
            have = 0;
        }
        let mut sink = BlobWriter::start(partial, have, kind).map_err(|e| HubError::io(partial, e))?;
        let mut fetched = 0u64;
        let result = loop {
            // The client's read timeout turns a silent connection into an error here.
            let chunk = tokio::select! {
                _ = self.cancel.cancelled() => break Err(Failure::Fatal(HubError::Cancelled)),
                c = resp.chunk() => c,
            };
            match chunk {
                Err(e) => break Err(transient(&e)),
                Ok(None) => break Ok(()),
                Ok(Some(bytes)) => {
                    let n = bytes.len() as u64;
                    if have + n > meta.size {
                        break Err(Failure::Fatal(HubError::Size {
                            file: file.into(),
                            expected: meta.size,
                            actual: have + n,
                        }));
                    }
                    have += n;
                    fetched += n;
                    self.progress.advance(file, have, meta.size, n as i64);
                    if let Err(e) = sink.write(bytes).await {
                        break Err(Failure::Fatal(HubError::io(partial, e)));
                    }
                }
            }
        };
        let complete = result.is_ok() && have == meta.size;
        let digest = sink
            .finish(complete, self.settings.sync_files)
            .await
            .map_err(|e| HubError::io(partial, e))?;
        result?;
        if have < meta.size {
            return Err(Failure::Transient(format!(
                "connection closed after {have} of {} bytes",
                meta.size
            )));
        }
        Ok((fetched, digest))
    }

    /// Size, then checksum (computed while streaming); a mismatch deletes the partial file.
    fn verify(&self, file: &str, meta: &Meta, partial: &Path, digest: Option<String>) -> Result<()> {
        let fail = |e: HubError| {
            let _ = std::fs::remove_file(partial);
            e
        };
        let actual = partial.metadata().map_err(|e| HubError::io(partial, e))?.len();
        if actual != meta.size {
            return Err(fail(HubError::Size {
                file: file.into(),
                expected: meta.size,
                actual,
            }));
        }
        match digest {
            Some(d) if !d.eq_ignore_ascii_case(&meta.etag) => Err(fail(HubError::Checksum {
                file: file.into(),
                expected: meta.etag.clone(),
                actual: d,
            })),
            _ => Ok(()),
        }
    }
}

fn hash_file<D: sha2::Digest>(path: &Path, prefix: Option<&[u8]>) -> Result<String> {
    let mut h = D::new();
    if let Some(p) = prefix {
        h.update(p);
    }
    let mut f = std::fs::File::open(path).map_err(|e| HubError::io(path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| HubError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn transient(e: &reqwest::Error) -> Failure {
    // reqwest's message names the URL, which never holds the token.
    Failure::Transient(e.to_string())
}

fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1 << attempt.min(6)).min(Duration::from_secs(10));
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0) as u64
        % (base.as_millis() as u64 + 1);
    exp + Duration::from_millis(jitter)
}

/// Maps a Hub status to the error users understand; 5xx, 408 and 429 are transient.
pub(crate) fn check_status(
    status: StatusCode,
    headers: &HeaderMap,
    repo: &str,
    file: &str,
    url: &str,
    endpoint: &str,
) -> Result<(), Failure> {
    if status.is_success() || status.is_redirection() {
        return Ok(());
    }
    let code = headers
        .get("x-error-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let page = format!("{endpoint}/{repo}");
    Err(match status.as_u16() {
        401 => Failure::Fatal(HubError::Gated {
            repo: repo.into(),
            status: 401,
            page,
            hint: "",
        }),
        403 => Failure::Fatal(HubError::Gated {
            repo: repo.into(),
            status: 403,
            page,
            hint: "; your token was sent but has no access to this repo",
        }),
        404 => Failure::Fatal(match code {
            "RevisionNotFound" => HubError::RevisionNotFound {
                repo: repo.into(),
                revision: String::new(),
            },
            "EntryNotFound" => HubError::EntryNotFound {
                repo: repo.into(),
                file: file.into(),
            },
            _ => HubError::RepoNotFound {
                repo: repo.into(),
                endpoint: endpoint.into(),
            },
        }),
        408 | 429 | 500..=599 => Failure::Transient(format!("HTTP {status} from {url}")),
        s => Failure::Fatal(HubError::Http {
            url: url.into(),
            status: s,
            attempts: 1,
            message: status.to_string(),
        }),
    })
}

pub(crate) fn fatal_of(f: Failure, url: &str) -> HubError {
    match f {
        Failure::Fatal(e) => e,
        Failure::Transient(reason) => HubError::Http {
            url: url.into(),
            status: 0,
            attempts: 1,
            message: reason,
        },
    }
}
