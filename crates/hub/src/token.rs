//! Where the Hub token comes from, in order: `HF_TOKEN`, the token file `huggingface-cli login` writes
//! (`HF_TOKEN_PATH`, else `<hf_home>/token`), then the OS keyring (macOS Keychain, the Secret Service on Linux),
//! where FreezeTune stores a token the user gives it. The value never appears in logs, errors or `Debug` output.

use crate::error::{HubError, Result};
use crate::settings::{hf_home, Token};
use std::path::PathBuf;

/// Keyring entry FreezeTune uses.
pub const KEYRING_SERVICE: &str = "freezetune";
pub const KEYRING_USER: &str = "huggingface-token";

/// Where a token was found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "source", content = "detail")]
pub enum TokenSource {
    Env,
    File(PathBuf),
    Keyring,
}

/// A place tokens can be kept: the OS keyring in the app and CLI, memory in tests.
pub trait SecretStore: Send + Sync {
    fn get(&self) -> Result<Option<String>>;
    fn set(&self, value: &str) -> Result<()>;
    fn delete(&self) -> Result<bool>;
}

/// The OS keyring.
pub struct OsKeyring;

#[cfg(any(target_os = "linux", target_os = "macos"))]
impl OsKeyring {
    fn entry() -> Result<keyring::Entry> {
        keyring::Entry::new(KEYRING_SERVICE, KEYRING_USER).map_err(keyring_error)
    }
}

#[cfg(any(target_os = "linux", target_os = "macos"))]
fn keyring_error(e: keyring::Error) -> HubError {
    HubError::Keyring { reason: e.to_string() }
}

#[cfg(any(target_os = "linux", target_os = "macos"))]
impl SecretStore for OsKeyring {
    fn get(&self) -> Result<Option<String>> {
        match Self::entry()?.get_password() {
            Ok(v) => Ok(Some(v)),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(e) => Err(keyring_error(e)),
        }
    }

    fn set(&self, value: &str) -> Result<()> {
        Self::entry()?.set_password(value).map_err(keyring_error)
    }

    fn delete(&self) -> Result<bool> {
        match Self::entry()?.delete_credential() {
            Ok(()) => Ok(true),
            Err(keyring::Error::NoEntry) => Ok(false),
            Err(e) => Err(keyring_error(e)),
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
impl SecretStore for OsKeyring {
    fn get(&self) -> Result<Option<String>> {
        Ok(None)
    }
    fn set(&self, _: &str) -> Result<()> {
        Err(HubError::Keyring {
            reason: "no OS keyring support on this platform; use HF_TOKEN".into(),
        })
    }
    fn delete(&self) -> Result<bool> {
        Ok(false)
    }
}

/// The token to use and where it came from. A keyring that cannot be reached (no Secret Service running, as on a
/// headless server) counts as empty.
pub fn find_token(keyring: &dyn SecretStore) -> Option<(Token, TokenSource)> {
    if let Some(t) = std::env::var("HF_TOKEN").ok().and_then(Token::new) {
        return Some((t, TokenSource::Env));
    }
    let path = token_file();
    if let Some(t) = std::fs::read_to_string(&path).ok().and_then(Token::new) {
        return Some((t, TokenSource::File(path)));
    }
    match keyring.get() {
        Ok(v) => v.and_then(Token::new).map(|t| (t, TokenSource::Keyring)),
        Err(e) => {
            tracing::debug!(%e, "keyring unavailable");
            None
        }
    }
}

/// `HF_TOKEN_PATH`, else `<hf_home>/token`.
pub fn token_file() -> PathBuf {
    std::env::var_os("HF_TOKEN_PATH")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| hf_home().join("token"))
}

/// Stores a token the user typed in the keyring, after a basic shape check.
pub fn store_token(keyring: &dyn SecretStore, value: &str) -> Result<()> {
    let v = value.trim();
    if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(HubError::Keyring {
            reason: "that is not a token (empty, or it contains spaces)".into(),
        });
    }
    keyring.set(v)
}
