//! One worker process speaking `--events jsonl`: every stdout line is one JSON event (or `{"error": {kind,
//! message}}` when the command fails); stderr is the worker's log. A `stop` line on its stdin asks it to checkpoint
//! and stop. What it printed last is kept, so a worker that dies (out of memory, a crash, a signal) is reported
//! with its own last words.

use crate::error::IpcError;
use serde::de::DeserializeOwned;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Lines of stderr (and stray stdout) kept for the report of a worker that died.
const TAIL_LINES: usize = 12;

/// Asks a running worker to stop; safe to call before the worker has started (it is told as soon as it has).
#[derive(Default)]
pub struct StopSignal {
    requested: AtomicBool,
    stdin: Mutex<Option<ChildStdin>>,
}

impl StopSignal {
    pub fn stop(&self) {
        self.requested.store(true, Ordering::SeqCst);
        if let Some(stdin) = self.stdin.lock().expect("stdin lock").as_mut() {
            // A worker that already exited has closed its end; nothing is left to stop.
            let _ = stdin.write_all(b"stop\n").and_then(|_| stdin.flush());
        }
    }

    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    fn attach(&self, stdin: ChildStdin) {
        *self.stdin.lock().expect("stdin lock") = Some(stdin);
        if self.requested.load(Ordering::SeqCst) {
            self.stop();
        }
    }
}

/// How a worker ended.
#[derive(Debug)]
pub struct WorkerEnd {
    pub status: ExitStatus,
    /// The error the worker reported itself, with its kind.
    pub error: Option<IpcError>,
    /// Its last lines of stderr and of stdout that were not events.
    pub tail: Vec<String>,
}

impl WorkerEnd {
    /// The worker's own error, or else what killed it, with its last output.
    pub fn failure(&self, what: &str) -> IpcError {
        if let Some(e) = &self.error {
            return e.clone();
        }
        let mut message = format!("the {what} {}", describe_exit(&self.status));
        if !self.tail.is_empty() {
            message.push_str(&format!("; its last output: {}", self.tail.join(" | ")));
        }
        IpcError::new("worker_died", message)
    }
}

/// Runs `cmd` to its end, handing each event line to `on_event`; `stop` is wired to the worker's stdin. Returns
/// an error only when the worker cannot be started at all.
pub fn run<E: DeserializeOwned>(
    mut cmd: Command,
    stop: &StopSignal,
    mut on_event: impl FnMut(E),
) -> Result<WorkerEnd, IpcError> {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .spawn()
        .map_err(|e| IpcError::new("worker_missing", format!("cannot start the worker {program}: {e}")))?;
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let stderr = child.stderr.take().expect("stderr is piped");
    let stderr_tail = tail.clone();
    let stderr_reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            tracing::debug!(target: "worker", "{line}");
            keep(&stderr_tail, line);
        }
    });
    stop.attach(child.stdin.take().expect("stdin is piped"));
    let mut error = None;
    let stdout = child.stdout.take().expect("stdout is piped");
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        match parse_line::<E>(&line) {
            Line::Event(event) => on_event(event),
            Line::Error(e) => error = Some(e),
            Line::Other => keep(&tail, line),
        }
    }
    let status = child
        .wait()
        .map_err(|e| IpcError::new("worker", format!("lost the worker {program}: {e}")))?;
    let _ = stderr_reader.join();
    // Drop the pipe so a late stop() does not write into a reused descriptor's process.
    stop.stdin.lock().expect("stdin lock").take();
    let tail = tail.lock().expect("tail lock").drain(..).collect();
    Ok(WorkerEnd { status, error, tail })
}

enum Line<E> {
    Event(E),
    Error(IpcError),
    Other,
}

fn parse_line<E: DeserializeOwned>(line: &str) -> Line<E> {
    #[derive(serde::Deserialize)]
    struct ErrorLine {
        error: ErrorBody,
    }
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        kind: String,
        message: String,
    }
    if let Ok(event) = serde_json::from_str::<E>(line) {
        return Line::Event(event);
    }
    match serde_json::from_str::<ErrorLine>(line) {
        Ok(e) => Line::Error(IpcError::new(&e.error.kind, e.error.message)),
        Err(_) => Line::Other,
    }
}

fn keep(tail: &Mutex<VecDeque<String>>, line: String) {
    let line = line.trim();
    if line.is_empty() {
        return;
    }
    let mut tail = tail.lock().expect("tail lock");
    if tail.len() == TAIL_LINES {
        tail.pop_front();
    }
    tail.push_back(line.to_string());
}

/// "exited with code 3", "was killed by signal 9 (SIGKILL: ...)".
pub fn describe_exit(status: &ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            let why = match signal {
                9 => " (SIGKILL: killed from outside, often by the system when memory ran out)",
                6 => " (SIGABRT: it aborted)",
                11 => " (SIGSEGV: it crashed)",
                7 => " (SIGBUS: a mapped file changed or the disk is full)",
                15 => " (SIGTERM: asked to end)",
                _ => "",
            };
            return format!("was killed by signal {signal}{why}");
        }
    }
    format!("ended ({status})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use freezetune_core::events::TrainEvent;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[test]
    fn events_errors_and_stray_lines_are_told_apart() {
        let script = r#"echo '{"event":"eval","step":3,"eval_loss":1.5}'; echo 'not json'; echo oops >&2;
            echo '{"error":{"kind":"bad_config","message":"no data"}}'; exit 1"#;
        let mut events = Vec::new();
        let end = run::<TrainEvent>(sh(script), &StopSignal::default(), |e| events.push(e)).unwrap();
        assert_eq!(events.len(), 1);
        assert!(matches!(events[0], TrainEvent::Eval { step: 3, .. }));
        assert_eq!(end.status.code(), Some(1));
        assert_eq!(end.failure("worker").kind, "bad_config");
        assert!(end.tail.contains(&"not json".to_string()) && end.tail.contains(&"oops".to_string()));
    }

    #[test]
    fn a_killed_worker_is_reported_with_its_last_words() {
        let end = run::<TrainEvent>(
            sh("echo 'loading weights' >&2; kill -9 $$"),
            &StopSignal::default(),
            |_| {},
        )
        .unwrap();
        let e = end.failure("training worker");
        assert_eq!(e.kind, "worker_died");
        assert!(
            e.message.contains("signal 9") && e.message.contains("loading weights"),
            "{}",
            e.message
        );
    }

    #[test]
    fn stop_reaches_the_worker_even_when_asked_before_it_started() {
        let stop = StopSignal::default();
        stop.stop();
        let end = run::<TrainEvent>(sh("read line; test \"$line\" = stop"), &stop, |_| {}).unwrap();
        assert!(end.status.success(), "{:?}", end);
    }

    #[test]
    fn a_missing_binary_is_named() {
        let e = run::<TrainEvent>(Command::new("/nonexistent/freezetune"), &StopSignal::default(), |_| {}).unwrap_err();
        assert!(e.message.contains("/nonexistent/freezetune"), "{}", e.message);
    }

    #[test]
    fn the_tail_keeps_the_last_lines() {
        let script = "for i in $(seq 30); do echo line$i >&2; done; exit 2";
        let end = run::<TrainEvent>(sh(script), &StopSignal::default(), |_| {}).unwrap();
        assert_eq!(end.tail.len(), TAIL_LINES);
        assert_eq!(end.tail.last().unwrap(), "line30");
        assert!(end.failure("worker").message.contains("exited with code 2"));
    }
}
