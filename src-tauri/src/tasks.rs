//! Long tasks (downloads, training runs) by task id, so the UI can cancel one. The UI names the task when it starts
//! it; the backend keeps the cancel handle until the task ends.

use crate::error::{IpcError, IpcResult};
use crate::worker::process::StopSignal;
use freezetune_hub::CancellationToken;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub enum CancelHandle {
    Download(CancellationToken),
    /// A worker (training: told to checkpoint and stop; the layer probe and GGUF export / import: told to stop).
    Worker(Arc<StopSignal>),
}

impl CancelHandle {
    fn cancel(&self) {
        match self {
            CancelHandle::Download(token) => token.cancel(),
            CancelHandle::Worker(stop) => stop.stop(),
        }
    }
}

#[derive(Default)]
pub struct Tasks {
    running: Mutex<HashMap<String, CancelHandle>>,
}

/// Removes its task from the map when dropped, however the task ends.
pub struct TaskGuard<'a> {
    tasks: &'a Tasks,
    id: String,
}

impl Drop for TaskGuard<'_> {
    fn drop(&mut self) {
        self.tasks.running.lock().expect("tasks lock").remove(&self.id);
    }
}

impl Tasks {
    pub fn start(&self, id: &str, handle: CancelHandle) -> IpcResult<TaskGuard<'_>> {
        let mut running = self.running.lock().expect("tasks lock");
        if id.is_empty() || running.contains_key(id) {
            return Err(IpcError::new(
                "bad_task_id",
                format!("task id {id:?} is empty or already running"),
            ));
        }
        running.insert(id.to_string(), handle);
        Ok(TaskGuard {
            tasks: self,
            id: id.to_string(),
        })
    }

    /// Cancels the task; false when no task has that id (it may have just finished).
    pub fn cancel(&self, id: &str) -> bool {
        match self.running.lock().expect("tasks lock").get(id) {
            Some(handle) => {
                handle.cancel();
                true
            }
            None => false,
        }
    }

    /// Stops every training run (each saves a checkpoint); true when there was one.
    pub fn cancel_workers(&self) -> bool {
        let running = self.running.lock().expect("tasks lock");
        let mut any = false;
        for handle in running.values().filter(|h| matches!(h, CancelHandle::Worker(_))) {
            handle.cancel();
            any = true;
        }
        any
    }

    pub fn any_worker(&self) -> bool {
        let running = self.running.lock().expect("tasks lock");
        running.values().any(|h| matches!(h, CancelHandle::Worker(_)))
    }

    pub fn is_running(&self, id: &str) -> bool {
        self.running.lock().expect("tasks lock").contains_key(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_reaches_the_task_and_the_guard_cleans_up() {
        let tasks = Tasks::default();
        let flag = Arc::new(StopSignal::default());
        {
            let _guard = tasks.start("run-1", CancelHandle::Worker(flag.clone())).unwrap();
            assert!(tasks.start("run-1", CancelHandle::Worker(flag.clone())).is_err());
            assert!(tasks.cancel("run-1"));
            assert!(flag.requested());
        }
        assert!(!tasks.is_running("run-1"));
        assert!(!tasks.cancel("run-1"));
        let token = CancellationToken::new();
        let _g = tasks.start("dl", CancelHandle::Download(token.clone())).unwrap();
        tasks.cancel("dl");
        assert!(token.is_cancelled());
    }

    #[test]
    fn closing_the_app_stops_training_runs_only() {
        let tasks = Tasks::default();
        assert!(!tasks.cancel_workers());
        let token = CancellationToken::new();
        let _dl = tasks.start("dl", CancelHandle::Download(token.clone())).unwrap();
        assert!(!tasks.any_worker());
        let flag = Arc::new(StopSignal::default());
        {
            let _run = tasks.start("run", CancelHandle::Worker(flag.clone())).unwrap();
            assert!(tasks.any_worker());
            assert!(tasks.cancel_workers());
            assert!(flag.requested());
            assert!(!token.is_cancelled());
        }
        assert!(!tasks.any_worker());
    }
}
