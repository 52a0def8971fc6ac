//! Blocking work (training, generation, dataset previews, downloads) on a thread of its own with a large stack.
//! Tokio's blocking threads have 2 MiB stacks; chat-template rendering and the decoder's forward pass in a debug
//! build need more, and overflowing a stack aborts the whole app (WebDriver saw "page crash"), so work that renders
//! templates or runs the model never runs on them.

use crate::error::{IpcError, IpcResult};

const STACK_BYTES: usize = 64 << 20;

/// Runs `f` on a new thread named `name` and waits for it without blocking the async runtime.
pub async fn run<T, F>(name: &str, f: F) -> IpcResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> IpcResult<T> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("freezetune-{name}"))
        .stack_size(STACK_BYTES)
        .spawn(move || {
            // The receiver is gone only if the command itself was dropped; nobody is left to tell.
            let _ = tx.send(f());
        })
        .map_err(|e| IpcError::new("app", format!("cannot start a {name} thread: {e}")))?;
    rx.await.map_err(|_| {
        IpcError::new(
            "app",
            format!("the {name} thread ended without an answer (it panicked); see the log"),
        )
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_recursion_fits_and_panics_become_errors() {
        fn depth(n: u64) -> u64 {
            // A 4 KiB frame the optimiser cannot drop.
            let pad = std::hint::black_box([n; 512]);
            if n == 0 {
                0
            } else {
                1 + depth(n - 1) + (pad[511] - n)
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        // ~4 KiB a frame x 4000 frames = 16 MiB: far past a 2 MiB stack.
        assert_eq!(rt.block_on(run("test", || Ok(depth(4000)))).unwrap(), 4000);
        let err = rt.block_on(run::<(), _>("test", || panic!("boom"))).unwrap_err();
        assert!(err.message.contains("panicked"), "{}", err.message);
    }
}
