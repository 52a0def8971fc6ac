//! Shared progress of one download: byte counters over all files, speed and ETA, and a throttle so a UI receives
//! about ten progress events a second however fast the bytes arrive.

use freezetune_core::events::{DownloadEvent, EventSink};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const EMIT_EVERY: Duration = Duration::from_millis(100);

pub(crate) struct ProgressTracker<'a> {
    sink: &'a dyn EventSink<DownloadEvent>,
    total: u64,
    start: Instant,
    state: Mutex<State>,
}

struct State {
    done: u64,
    transferred: u64,
    last_emit: Option<Instant>,
}

impl<'a> ProgressTracker<'a> {
    pub fn new(sink: &'a dyn EventSink<DownloadEvent>, total: u64, already_present: u64) -> Self {
        ProgressTracker {
            sink,
            total,
            start: Instant::now(),
            state: Mutex::new(State {
                done: already_present,
                transferred: 0,
                last_emit: None,
            }),
        }
    }

    pub fn emit(&self, event: DownloadEvent) {
        self.sink.emit(event);
    }

    /// Counts `delta` new bytes of `file` (negative after a restart from zero) and maybe emits a progress event.
    pub fn advance(&self, file: &str, file_bytes: u64, file_size: u64, delta: i64) {
        let mut s = self.state.lock().expect("progress lock");
        s.done = s.done.saturating_add_signed(delta);
        if delta > 0 {
            s.transferred += delta as u64;
        }
        let now = Instant::now();
        let due = s.last_emit.is_none_or(|t| now.duration_since(t) >= EMIT_EVERY) || file_bytes == file_size;
        if !due {
            return;
        }
        s.last_emit = Some(now);
        let secs = self.start.elapsed().as_secs_f64().max(1e-6);
        let speed = s.transferred as f64 / secs;
        let eta = (speed > 0.0).then(|| self.total.saturating_sub(s.done) as f64 / speed);
        let event = DownloadEvent::Progress {
            file: file.to_string(),
            file_bytes,
            file_size,
            done_bytes: s.done,
            total_bytes: self.total,
            bytes_per_second: speed,
            eta_seconds: eta,
        };
        drop(s);
        self.sink.emit(event);
    }

    pub fn transferred(&self) -> u64 {
        self.state.lock().expect("progress lock").transferred
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}
