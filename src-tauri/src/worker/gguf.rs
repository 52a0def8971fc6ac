//! GGUF export and import in a worker: `freezetune export-gguf` / `import-gguf ... --events jsonl`. A GGUF file
//! comes from anywhere, and its parser is a known attack surface: whatever a crafted file does to the worker (an
//! abort, a crash, memory running out) ends the worker and is reported, while the window and the user's work stay.

use super::process::{self, StopSignal};
use super::Workers;
use crate::error::IpcResult;
use freezetune_gguf::{ExportReport, ExportType, GgufEvent, ImportReport, Progress};
use std::path::Path;
use std::process::Command;

/// One export: the model folder or run `input` written as a GGUF file `output` of type `kind`, with an Ollama
/// Modelfile beside it when `modelfile`; `force` replaces an earlier file.
pub struct ExportJob<'a> {
    pub input: &'a Path,
    pub output: &'a Path,
    pub kind: ExportType,
    pub modelfile: bool,
    pub force: bool,
}

/// Runs `job` in a worker.
pub fn export(
    workers: &Workers,
    job: ExportJob,
    stop: &StopSignal,
    on_progress: &mut dyn FnMut(Progress),
) -> IpcResult<ExportReport> {
    let mut cmd = Command::new(workers.cpu()?);
    cmd.arg("export-gguf")
        .arg(job.input)
        .arg("--output")
        .arg(job.output)
        .arg(format!("--type={}", job.kind.name()));
    if job.modelfile {
        cmd.arg("--modelfile");
    }
    if job.force {
        cmd.arg("--force");
    }
    let report = |event: GgufEvent| match event {
        GgufEvent::Exported(r) => Some(r),
        _ => None,
    };
    run(cmd, stop, on_progress, report, "GGUF export worker")
}

/// Turns the GGUF file `file` into the model folder `output` (which must not exist yet).
pub fn import(
    workers: &Workers,
    file: &Path,
    output: &Path,
    stop: &StopSignal,
    on_progress: &mut dyn FnMut(Progress),
) -> IpcResult<ImportReport> {
    let mut cmd = Command::new(workers.cpu()?);
    cmd.arg("import-gguf").arg(file).arg("--output").arg(output);
    let report = |event: GgufEvent| match event {
        GgufEvent::Imported(r) => Some(r),
        _ => None,
    };
    run(cmd, stop, on_progress, report, "GGUF import worker")
}

/// Runs the worker with `--events jsonl`, passing progress on; the result is the event `report` picks out, when
/// the worker also exits cleanly, else the failure as the worker reported it (`what` names the worker).
fn run<R>(
    mut cmd: Command,
    stop: &StopSignal,
    on_progress: &mut dyn FnMut(Progress),
    report: impl Fn(GgufEvent) -> Option<R>,
    what: &str,
) -> IpcResult<R> {
    cmd.args(["--events", "jsonl"]);
    let mut result = None;
    let end = process::run::<GgufEvent>(cmd, stop, |event| match event {
        GgufEvent::Progress(p) => on_progress(p),
        done => result = result.take().or_else(|| report(done)),
    })?;
    match result {
        Some(r) if end.status.success() => Ok(r),
        _ => Err(end.failure(what)),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in worker: a shell script that prints `lines` and exits with `code` (or kills itself with `signal`).
    /// Each script gets a name of its own: rewriting one that another test's fork still holds open for writing
    /// would fail its exec with "text file busy".
    fn fake_worker(dir: &Path, body: &str) -> Workers {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("freezetune-{n}"));
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Workers { cpu: path, cuda: None }
    }

    #[test]
    fn progress_then_the_report_come_back() {
        let tmp = tempfile::tempdir().unwrap();
        let workers = fake_worker(
            tmp.path(),
            r#"echo '{"event":"progress","done":1,"total":2,"tensor":"a"}'
echo '{"event":"imported","path":"/m","architecture":"llama","dtype":"f16","tensors":2,"source_types":{"q8_0":2},"tokenizer":"bpe","warnings":[]}'"#,
        );
        let mut seen = vec![];
        let report = import(
            &workers,
            Path::new("x.gguf"),
            Path::new("/m"),
            &StopSignal::default(),
            &mut |p| seen.push(p.done),
        )
        .unwrap();
        assert_eq!(seen, vec![1]);
        assert_eq!(report.architecture, "llama");
    }

    #[test]
    fn a_refusal_keeps_its_kind_and_a_crash_is_reported_with_its_last_words() {
        let tmp = tempfile::tempdir().unwrap();
        let refusing = fake_worker(
            tmp.path(),
            r#"echo '{"error":{"kind":"bad_input","message":"x.gguf: general.alignment 0 must be a power of two"}}'; exit 1"#,
        );
        let err = import(
            &refusing,
            Path::new("x.gguf"),
            Path::new("/m"),
            &StopSignal::default(),
            &mut |_| {},
        )
        .unwrap_err();
        assert_eq!(err.kind, "bad_input");
        assert!(err.message.contains("general.alignment"), "{}", err.message);
        let crashing = fake_worker(tmp.path(), "echo 'reading tensors' >&2; kill -SEGV $$");
        let err = import(
            &crashing,
            Path::new("x.gguf"),
            Path::new("/m"),
            &StopSignal::default(),
            &mut |_| {},
        )
        .unwrap_err();
        assert_eq!(err.kind, "worker_died");
        assert!(
            err.message.contains("SIGSEGV") && err.message.contains("reading tensors"),
            "{}",
            err.message
        );
    }
}
