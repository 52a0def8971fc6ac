use anyhow::{bail, Result};
use clap::Subcommand;
use freezetune_hub::token::{find_token, store_token, token_file, OsKeyring, SecretStore, TokenSource};
use std::io::BufRead;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Store a Hugging Face token in the OS keyring; reads it from standard input (it never goes on the command line).
    Set,
    /// Remove the token from the OS keyring.
    Clear,
    /// Say where the token comes from (HF_TOKEN, the token file or the keyring), without showing it.
    Status,
}

pub fn run(command: &TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Set => {
            eprintln!("paste the token (from https://huggingface.co/settings/tokens) and press Enter:");
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            store_token(&OsKeyring, &line)?;
            eprintln!("stored in the OS keyring");
        }
        TokenCommand::Clear => {
            if OsKeyring.delete()? {
                eprintln!("removed the token from the OS keyring");
            } else {
                eprintln!("the OS keyring held no FreezeTune token");
            }
        }
        TokenCommand::Status => match find_token(&OsKeyring) {
            Some((_, TokenSource::Env)) => println!("token: from the HF_TOKEN environment variable"),
            Some((_, TokenSource::File(p))) => println!("token: from the file {}", p.display()),
            Some((_, TokenSource::Keyring)) => println!("token: from the OS keyring"),
            None => bail!(
                "no token: set HF_TOKEN, run `freezetune token set`, or write it to {}",
                token_file().display()
            ),
        },
    }
    Ok(())
}
