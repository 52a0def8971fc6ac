//! The worker protocol a parent process (the app) drives: `train --events jsonl` writes one serde-tagged
//! `TrainEvent` per stdout line and nothing else there, a `stop` line on stdin checkpoints and stops, errors are
//! one `{"error": ...}` line, the stopped run resumes; `generate --events jsonl` answers with `loaded` and
//! `reply`; `devices --json` lists what can train.

use freezetune_core::events::TrainEvent;
use std::io::{BufRead, BufReader, Lines, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn write_run(dir: &Path, steps: u64) -> PathBuf {
    let rows: Vec<String> = (0..8u64)
        .map(|r| {
            let ids: Vec<u64> = (0..16).map(|i| (i * 7 + r * 13) % 500 + 1).collect();
            serde_json::json!({ "input_ids": ids }).to_string()
        })
        .collect();
    std::fs::write(dir.join("d.jsonl"), rows.join("\n")).unwrap();
    let text = format!(
        "[model]\npath = {:?}\n[freeze]\ntop = 1\n[data]\ntrain = \"d.jsonl\"\nformat = \"tokenized\"\n\
         [training]\nbatch_size = 2\nmax_steps = {steps}\nlearning_rate = 1e-3\n[runtime]\ndevice = \"cpu\"\n\
         [output]\ndir = \"run\"\n",
        fixtures().join("models/llama")
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn freezetune(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_freezetune"));
    c.args(args);
    c
}

fn events(stdout: &[u8]) -> Vec<TrainEvent> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not an event line: {l:?}: {e}")))
        .collect()
}

/// `train --events jsonl` as a parent process runs it: stdin and stdout piped, stdout read line by line.
fn spawn_worker(cfg: &Path) -> (Child, ChildStdin, Lines<BufReader<ChildStdout>>) {
    let mut child = freezetune(&["train", "--config", cfg.to_str().unwrap(), "--events", "jsonl"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, stdin, lines)
}

#[test]
fn every_stdout_line_is_an_event_from_start_to_finish() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_run(dir.path(), 3);
    let out = freezetune(&["train", "--config", cfg.to_str().unwrap(), "--events", "jsonl"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ev = events(&out.stdout);
    match &ev[0] {
        TrainEvent::Started { device, dtype, .. } => {
            // auto: f32 on the CPU, or bf16 matmuls where they are twice f32's rate (AMD's AVX512-BF16, Intel's AMX).
            let auto = freezetune_train::device::compute("auto", &candle_core::Device::Cpu, candle_core::DType::F32);
            assert_eq!((device.as_str(), dtype.as_str()), ("cpu", auto.name()))
        }
        other => panic!("first event {other:?}"),
    }
    let steps: Vec<u64> = ev
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step { step, .. } => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(steps, [1, 2, 3]);
    assert!(
        matches!(ev.last(), Some(TrainEvent::Finished { step: 3, .. })),
        "{ev:?}"
    );
}

#[test]
fn a_stop_line_on_stdin_checkpoints_and_the_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_run(dir.path(), 40);
    let (mut child, mut stdin, mut lines) = spawn_worker(&cfg);
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let e: TrainEvent = serde_json::from_str(&line.unwrap()).unwrap();
        let first_step = matches!(e, TrainEvent::Step { step: 2, .. });
        seen.push(e);
        if first_step {
            writeln!(stdin, "stop").unwrap();
            stdin.flush().unwrap();
            break;
        }
    }
    seen.extend(lines.map(|l| serde_json::from_str::<TrainEvent>(&l.unwrap()).unwrap()));
    assert!(child.wait().unwrap().success(), "a requested stop is a clean exit");
    let Some(TrainEvent::Stopped { step, checkpoint }) = seen.last() else {
        panic!("the stream ends with the stop: {seen:?}")
    };
    assert!(*step < 40 && checkpoint.as_ref().unwrap().join("progress.json").is_file());
    let resumed = freezetune(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--resume",
        "--events",
        "jsonl",
    ])
    .stdin(Stdio::null())
    .output()
    .unwrap();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let ev = events(&resumed.stdout);
    let first = ev.iter().find_map(|e| match e {
        TrainEvent::Step { step, .. } => Some(*step),
        _ => None,
    });
    assert_eq!(first, Some(step + 1), "the resumed run continues after the checkpoint");
}

#[test]
fn a_parent_that_closes_the_pipe_gets_a_checkpoint_and_a_stop() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_run(dir.path(), 400);
    let (mut child, stdin, mut lines) = spawn_worker(&cfg);
    let mut events = lines
        .by_ref()
        .map(|l| serde_json::from_str::<TrainEvent>(&l.unwrap()).unwrap());
    assert!(events.any(|e| matches!(e, TrainEvent::Step { .. })), "a first step");
    drop(stdin);
    let rest: Vec<TrainEvent> = lines.map(|l| serde_json::from_str(&l.unwrap()).unwrap()).collect();
    assert!(child.wait().unwrap().success());
    assert!(
        matches!(
            rest.last(),
            Some(TrainEvent::Stopped {
                checkpoint: Some(_),
                ..
            })
        ),
        "the run stops with a checkpoint when its parent is gone: {rest:?}"
    );
}

#[test]
fn an_error_is_one_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_run(dir.path(), 3);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("device = \"cpu\"", "device = \"cuda:7\"");
    std::fs::write(&cfg, text).unwrap();
    let out = freezetune(&["train", "--config", cfg.to_str().unwrap(), "--events", "jsonl"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let line: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    let msg = line["error"]["message"].as_str().unwrap();
    assert!(msg.contains("cuda:7") || msg.contains("CUDA"), "{msg}");
}

#[test]
fn devices_lists_the_cpu_with_its_memory() {
    let out = freezetune(&["devices", "--json"]).output().unwrap();
    assert!(out.status.success());
    let inv: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cpu = &inv["devices"][0];
    assert_eq!(cpu["id"], "cpu");
    assert!(cpu["total_memory"].as_u64().unwrap_or(1) > 0);
    assert!(inv["notes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n.as_str().unwrap().starts_with("CUDA")));
    let text = freezetune(&["devices"]).output().unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("cpu "));
}

#[test]
fn generate_streams_a_loaded_and_a_reply_event() {
    let model = fixtures().join("models/llama");
    let out = freezetune(&[
        "generate",
        model.to_str().unwrap(),
        "--prompt",
        "Hi",
        "--max-new-tokens",
        "3",
        "--events",
        "jsonl",
    ])
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<freezetune_core::events::GenerateEvent> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        matches!(&lines[0], freezetune_core::events::GenerateEvent::Loaded { device, dtype, .. }
        if device == "cpu" && dtype == "f32")
    );
    assert!(matches!(
        &lines[1],
        freezetune_core::events::GenerateEvent::Reply { .. }
    ));
    assert_eq!(lines.len(), 2);
}
