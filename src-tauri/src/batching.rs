//! Event sink that forwards library events to the web view in batches, at most about ten sends a second: a training
//! run makes dozens of steps a second on a small model, and every one must reach the loss curve, but one IPC message
//! per step would flood the web view. Events that end or change a phase are sent at once.

use freezetune_core::events::{DownloadEvent, EventSink, TrainEvent};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Whether an event must be delivered without waiting for the next batch.
pub trait Urgency {
    fn urgent(&self) -> bool;
}

impl Urgency for TrainEvent {
    fn urgent(&self) -> bool {
        !matches!(self, TrainEvent::Step { .. })
    }
}

impl Urgency for DownloadEvent {
    fn urgent(&self) -> bool {
        !matches!(self, DownloadEvent::Progress { .. })
    }
}

pub struct Batching<E, F: Fn(Vec<E>)> {
    send: F,
    state: Mutex<(Vec<E>, Option<Instant>)>,
}

impl<E, F: Fn(Vec<E>)> Batching<E, F> {
    pub fn new(send: F) -> Self {
        Batching {
            send,
            state: Mutex::new((Vec::new(), None)),
        }
    }

    /// Sends whatever is still buffered (call when the task ends).
    pub fn flush(&self) {
        let mut state = self.state.lock().expect("batch lock");
        if !state.0.is_empty() {
            (self.send)(std::mem::take(&mut state.0));
            state.1 = Some(Instant::now());
        }
    }
}

impl<E: Urgency + Send, F: Fn(Vec<E>) + Send + Sync> EventSink<E> for Batching<E, F> {
    fn emit(&self, event: E) {
        let mut state = self.state.lock().expect("batch lock");
        let urgent = event.urgent();
        state.0.push(event);
        let due = state.1.is_none_or(|last| last.elapsed() >= MIN_INTERVAL);
        if urgent || due {
            (self.send)(std::mem::take(&mut state.0));
            state.1 = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn step(step: u64) -> TrainEvent {
        TrainEvent::Step {
            step,
            epoch: 0.0,
            loss: 1.0,
            lr: 0.1,
            grad_norm: 1.0,
            tokens: 1,
            tokens_per_second: 1.0,
            elapsed_s: 0.0,
            loss_scale: None,
            skipped: false,
        }
    }

    #[test]
    fn fast_steps_are_batched_and_none_is_lost() {
        let sent: Arc<Mutex<Vec<Vec<TrainEvent>>>> = Arc::default();
        let s = sent.clone();
        let sink = Batching::new(move |batch| s.lock().unwrap().push(batch));
        for i in 1..=500 {
            sink.emit(step(i));
        }
        sink.emit(TrainEvent::Finished {
            step: 500,
            final_dir: "f".into(),
        });
        let batches = sent.lock().unwrap();
        // 500 steps in far less than 100 ms: the first goes at once, the rest wait for the final event.
        assert!(batches.len() <= 3, "{} sends", batches.len());
        let all: Vec<&TrainEvent> = batches.iter().flatten().collect();
        assert_eq!(all.len(), 501);
        assert!(matches!(all.last(), Some(TrainEvent::Finished { .. })));
    }

    #[test]
    fn a_slow_stream_is_sent_event_by_event_and_flush_empties_the_buffer() {
        let sent: Arc<Mutex<Vec<Vec<TrainEvent>>>> = Arc::default();
        let s = sent.clone();
        let sink = Batching::new(move |batch| s.lock().unwrap().push(batch));
        sink.emit(step(1));
        sink.emit(step(2));
        std::thread::sleep(MIN_INTERVAL + Duration::from_millis(5));
        sink.emit(step(3));
        sink.emit(step(4));
        sink.flush();
        let sizes: Vec<usize> = sent.lock().unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1, 2, 1]);
    }
}
