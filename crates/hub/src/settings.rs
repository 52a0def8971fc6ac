//! Where the Hub is, who we are, and where the cache lives — read the way `huggingface_hub` reads them, so models
//! downloaded by Python tools are found here and the other way round.

use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// An access token. Its `Debug` never shows the value; use [`Token::expose`] only to build the request header.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(value: impl Into<String>) -> Option<Token> {
        let v = value.into().trim().to_string();
        (!v.is_empty()).then_some(Token(v))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

#[derive(Debug, Clone)]
pub struct HubSettings {
    /// Base URL of the Hub or a mirror (`HF_ENDPOINT`), without a trailing slash.
    pub endpoint: String,
    pub token: Option<Token>,
    /// The hub cache: `models--owner--name/{blobs,snapshots,refs}` live here.
    pub cache_dir: PathBuf,
    /// `HF_HUB_OFFLINE`: resolve from the cache only, never touch the network.
    pub offline: bool,
    /// Files transferred at once.
    pub concurrency: usize,
    /// Retries of a transient failure (reset connection, 5xx, timeout) per file.
    pub max_retries: u32,
    /// First backoff; doubles each retry (capped at 10 s) plus jitter.
    pub retry_base: Duration,
    /// A connection that sends nothing for this long is treated as failed (and retried).
    pub read_timeout: Duration,
    /// fsync each file before it enters the cache. Off by default, as in `huggingface_hub`: a file is verified
    /// before the rename that publishes it, which is safe against crashes of the process; only a power loss in the
    /// seconds after a download could leave a bad blob. On loopback, fsync halves throughput.
    pub sync_files: bool,
}

impl HubSettings {
    /// Whether `url` is on the configured Hub (scheme, host and port equal, under the endpoint's path): only
    /// then is the token sent. A prefix test would pass `https://huggingface.co.evil.example/...`.
    pub fn is_endpoint_url(&self, url: &str) -> bool {
        let (Ok(u), Ok(e)) = (reqwest::Url::parse(url), reqwest::Url::parse(&self.endpoint)) else {
            return false;
        };
        u.scheme() == e.scheme()
            && u.host_str() == e.host_str()
            && u.port_or_known_default() == e.port_or_known_default()
            && {
                let base = e.path().trim_end_matches('/');
                u.path() == base || u.path().starts_with(&format!("{base}/"))
            }
    }

    /// Settings from the environment: `HF_ENDPOINT`, `HF_TOKEN` / `HF_TOKEN_PATH` / `$HF_HOME/token` / keyring,
    /// `HF_HUB_CACHE` / `HF_HOME`, `HF_HUB_OFFLINE`.
    pub fn from_env() -> HubSettings {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        HubSettings {
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
                .trim_end_matches('/')
                .to_string(),
            token: token_from_env(),
            cache_dir: hub_cache_dir(),
            offline: var("HF_HUB_OFFLINE")
                .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")),
            concurrency: 4,
            max_retries: 5,
            retry_base: Duration::from_millis(500),
            read_timeout: Duration::from_secs(60),
            sync_files: false,
        }
    }

    pub fn with_endpoint(mut self, endpoint: &str) -> Self {
        self.endpoint = endpoint.trim_end_matches('/').to_string();
        self
    }

    pub fn with_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = dir.into();
        self
    }

    pub fn with_token(mut self, token: Option<Token>) -> Self {
        self.token = token;
        self
    }
}

/// `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
pub fn hf_home() -> PathBuf {
    if let Some(home) = std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home);
    }
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("huggingface");
    }
    dirs::home_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache")
        .join("huggingface")
}

/// `HF_HUB_CACHE` (or the older `HUGGINGFACE_HUB_CACHE`), else `<hf_home>/hub`.
pub fn hub_cache_dir() -> PathBuf {
    for key in ["HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"] {
        if let Some(dir) = std::env::var_os(key).filter(|v| !v.is_empty()) {
            return PathBuf::from(dir);
        }
    }
    hf_home().join("hub")
}

/// The token from `HF_TOKEN`, the token file or the OS keyring (see [`crate::token::find_token`]).
pub fn token_from_env() -> Option<Token> {
    crate::token::find_token(&crate::token::OsKeyring).map(|(t, _)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_debug_is_redacted() {
        let t = Token::new("hf_secret").unwrap();
        assert_eq!(format!("{t:?}"), "Token(***)");
        let s = HubSettings::from_env().with_token(Some(t));
        assert!(!format!("{s:?}").contains("hf_secret"));
        assert!(Token::new("  ").is_none());
    }
}

#[cfg(test)]
mod origin_tests {
    use super::*;

    #[test]
    fn the_token_goes_only_to_the_endpoints_own_origin() {
        let s = HubSettings::from_env().with_endpoint("https://huggingface.co");
        assert!(s.is_endpoint_url("https://huggingface.co/api/models/a/b"));
        assert!(!s.is_endpoint_url("https://huggingface.co.evil.example/api/models/a/b"));
        assert!(!s.is_endpoint_url("http://huggingface.co/api"));
        assert!(!s.is_endpoint_url("https://cdn-lfs.huggingface.co/x"));
        let mirror = HubSettings::from_env().with_endpoint("http://127.0.0.1:8080/hf");
        assert!(mirror.is_endpoint_url("http://127.0.0.1:8080/hf/api/models"));
        assert!(!mirror.is_endpoint_url("http://127.0.0.1:8081/hf/api/models"));
        assert!(!mirror.is_endpoint_url("http://127.0.0.1:8080/other"));
    }
}
