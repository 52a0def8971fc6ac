//! Where downloaded bytes go: appended to the partial file as they arrive (a page-cache write, microseconds per
//! chunk, so it stays on the receiving task), while a hasher thread digests them, so the transfer and the checksum
//! run at the same time and the file is never read back to verify it.

use bytes::Bytes;
use sha2::Digest as _;
use std::io::{Read, Write};
use std::path::Path;
use std::thread::JoinHandle;
use tokio::sync::mpsc;

/// The checksum an etag stands for: sha256 for LFS objects (64 hex), git's blob sha1 for small files (40 hex).
#[derive(Clone, Copy)]
pub(crate) enum HashKind {
    Sha256,
    GitSha1 { size: u64 },
    Unknown,
}

impl HashKind {
    pub fn for_etag(etag: &str, size: u64) -> HashKind {
        match etag.len() {
            64 => HashKind::Sha256,
            40 => HashKind::GitSha1 { size },
            _ => HashKind::Unknown,
        }
    }
}

enum Hasher {
    Sha256(sha2::Sha256),
    Sha1(sha1::Sha1),
}

impl Hasher {
    fn new(kind: HashKind) -> Option<Hasher> {
        match kind {
            HashKind::Sha256 => Some(Hasher::Sha256(sha2::Sha256::new())),
            HashKind::GitSha1 { size } => {
                let mut h = sha1::Sha1::new();
                h.update(format!("blob {size}\0").as_bytes());
                Some(Hasher::Sha1(h))
            }
            HashKind::Unknown => None,
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha1(h) => h.update(data),
        }
    }

    fn hex(self) -> String {
        let bytes: Vec<u8> = match self {
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha1(h) => h.finalize().to_vec(),
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

const QUEUE: usize = 64;

pub(crate) struct BlobWriter {
    file: std::fs::File,
    to_hash: Option<mpsc::Sender<Bytes>>,
    hasher: Option<JoinHandle<std::io::Result<String>>>,
}

impl BlobWriter {
    /// Starts writing at byte `have` of `partial` (truncating it when `have` is 0); the hasher first reads the
    /// `have` bytes already there.
    pub fn start(partial: &Path, have: u64, kind: HashKind) -> std::io::Result<BlobWriter> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(have == 0)
            .append(have > 0)
            .open(partial)?;
        let (to_hash, hasher) = match Hasher::new(kind) {
            None => (None, None),
            Some(mut h) => {
                let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
                let path = partial.to_path_buf();
                let handle = std::thread::spawn(move || {
                    if have > 0 {
                        let mut f = std::fs::File::open(&path)?.take(have);
                        let mut buf = vec![0u8; 1 << 20];
                        loop {
                            let n = f.read(&mut buf)?;
                            if n == 0 {
                                break;
                            }
                            h.update(&buf[..n]);
                        }
                    }
                    while let Some(chunk) = rx.blocking_recv() {
                        h.update(&chunk);
                    }
                    Ok(h.hex())
                });
                (Some(tx), Some(handle))
            }
        };
        Ok(BlobWriter { file, to_hash, hasher })
    }

    /// Appends a chunk and queues it for the hasher.
    pub async fn write(&mut self, chunk: Bytes) -> std::io::Result<()> {
        self.file.write_all(&chunk)?;
        if let Some(tx) = &self.to_hash {
            tx.send(chunk)
                .await
                .map_err(|_| std::io::Error::other("hasher thread stopped"))?;
        }
        Ok(())
    }

    /// Flushes everything written. With `complete`, returns the digest (and, with `sync`, makes the file durable).
    pub async fn finish(self, complete: bool, sync: bool) -> std::io::Result<Option<String>> {
        let BlobWriter {
            mut file,
            to_hash,
            hasher,
        } = self;
        file.flush()?;
        drop(to_hash);
        if !complete {
            return Ok(None);
        }
        tokio::task::spawn_blocking(move || {
            if sync {
                file.sync_all()?;
            }
            match hasher {
                Some(h) => Ok(Some(
                    h.join()
                        .map_err(|_| std::io::Error::other("hasher thread panicked"))??,
                )),
                None => Ok(None),
            }
        })
        .await
        .map_err(std::io::Error::other)?
    }
}
