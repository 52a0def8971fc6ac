//! Where the token comes from, in order. This test sets process environment variables, so it lives alone in its
//! own test binary: in the crate's unit tests, `setenv` here raced with C libraries reading the environment on
//! other test threads and crashed the run now and then (SIGSEGV, about 1 run in 30).

use freezetune_hub::error::{HubError, Result};
use freezetune_hub::token::{find_token, store_token, SecretStore, TokenSource};
use std::sync::Mutex;

#[derive(Default)]
struct Memory(Mutex<Option<String>>);

impl SecretStore for Memory {
    fn get(&self) -> Result<Option<String>> {
        Ok(self.0.lock().unwrap().clone())
    }
    fn set(&self, value: &str) -> Result<()> {
        *self.0.lock().unwrap() = Some(value.into());
        Ok(())
    }
    fn delete(&self) -> Result<bool> {
        Ok(self.0.lock().unwrap().take().is_some())
    }
}

struct Broken;

impl SecretStore for Broken {
    fn get(&self) -> Result<Option<String>> {
        Err(HubError::Keyring {
            reason: "no secret service".into(),
        })
    }
    fn set(&self, _: &str) -> Result<()> {
        unreachable!()
    }
    fn delete(&self) -> Result<bool> {
        unreachable!()
    }
}

#[test]
fn env_then_file_then_keyring() {
    let home = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HOME", home.path());
    std::env::remove_var("HF_TOKEN_PATH");
    std::env::remove_var("HF_TOKEN");
    let store = Memory::default();
    assert!(find_token(&store).is_none());
    assert!(find_token(&Broken).is_none(), "an unreachable keyring is not an error");
    store_token(&store, " hf_keyring ").unwrap();
    assert_eq!(store_token(&store, "two words").unwrap_err().kind(), "keyring");
    let (t, src) = find_token(&store).unwrap();
    assert_eq!((t.expose(), src), ("hf_keyring", TokenSource::Keyring));
    std::fs::write(home.path().join("token"), "hf_file\n").unwrap();
    let (t, src) = find_token(&store).unwrap();
    assert_eq!(
        (t.expose(), src),
        ("hf_file", TokenSource::File(home.path().join("token")))
    );
    std::env::set_var("HF_TOKEN", "hf_env");
    assert_eq!(find_token(&store).unwrap().1, TokenSource::Env);
    std::env::remove_var("HF_TOKEN");
    assert!(store.delete().unwrap());
}
