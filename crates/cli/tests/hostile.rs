//! Hostile and broken inputs through the CLI, each run under a 4 GiB address-space limit and a time limit: a clear
//! error (exit 1, a message naming the field), never a panic, a signal, a hang or a multi-GiB allocation.
//! GGUF files are crafted from a sound export of the reference llama (metadata and tensor table rewritten, or
//! header bytes patched); model folders from the reference llama with config.json edited.

use candle_core::quantized::gguf_file::{Content, Value as G};
use freezetune_gguf::format::{bytes_for, Meta, TensorEntry, Writer};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ADDRESS_SPACE_KIB: u64 = 4 << 20;
const TIME_LIMIT: Duration = Duration::from_secs(120);

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(name)
}

/// Runs the CLI under the limits and returns its exit status, stdout and stderr; asserts no signal and no panic.
fn run_limited(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {ADDRESS_SPACE_KIB} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_freezetune"))
        .args(args)
        .env(
            "FREEZETUNE_CONFIG_DIR",
            std::env::temp_dir().join("freezetune-hostile-cfg"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Both pipes drain on threads, so a chatty child never blocks on a full pipe while we wait.
    let mut stdout_pipe = child.stdout.take().unwrap();
    let mut stderr_pipe = child.stderr.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut s = String::new();
        stdout_pipe.read_to_string(&mut s).unwrap();
        s
    });
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        stderr_pipe.read_to_string(&mut s).unwrap();
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            panic!("{args:?} ran past {TIME_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (stdout.join().unwrap(), stderr.join().unwrap());
    assert_eq!(status.signal(), None, "{args:?} was killed by a signal: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    (status, out, err)
}

/// Runs the CLI under the limits; asserts exit 1, no signal, no panic, and that stderr names `field`.
fn refused(args: &[&str], field: &str) {
    let (status, _, err) = run_limited(args);
    assert_eq!(status.code(), Some(1), "{args:?} should fail with exit 1: {err}");
    assert!(err.contains(field), "{args:?}: the error should name {field:?}: {err}");
}

/// A GGUF file's metadata and tensors, to be rewritten with edits.
struct Gguf {
    meta: Vec<(String, Meta)>,
    tensors: Vec<(TensorEntry, Vec<u8>)>,
}

fn meta_of(v: &G) -> Meta {
    match v {
        G::U32(x) => Meta::U32(*x),
        G::I32(x) => Meta::I32(*x),
        G::F32(x) => Meta::F32(*x),
        G::Bool(x) => Meta::Bool(*x),
        G::String(s) => Meta::Str(s.clone()),
        G::Array(items) => match items.first() {
            Some(G::F32(_)) => Meta::F32s(items.iter().map(|i| i.to_f32().unwrap()).collect()),
            Some(G::I32(_)) => Meta::I32s(items.iter().map(|i| i.to_i32().unwrap()).collect()),
            _ => Meta::Strs(items.iter().map(|i| i.to_string().unwrap().clone()).collect()),
        },
        other => panic!("the exporter writes no {other:?}"),
    }
}

fn read_gguf(path: &Path) -> Gguf {
    let mut f = std::fs::File::open(path).unwrap();
    let c = Content::read(&mut f).unwrap();
    let meta = c.metadata.iter().map(|(k, v)| (k.clone(), meta_of(v))).collect();
    let tensors = c
        .tensor_infos
        .iter()
        .map(|(name, info)| {
            let shape = info.shape.dims().to_vec();
            let mut bytes = vec![0u8; bytes_for(info.ggml_dtype, shape.iter().product())];
            f.seek(SeekFrom::Start(c.tensor_data_offset + info.offset)).unwrap();
            f.read_exact(&mut bytes).unwrap();
            let entry = TensorEntry {
                name: name.clone(),
                shape,
                dtype: info.ggml_dtype,
            };
            (entry, bytes)
        })
        .collect();
    Gguf { meta, tensors }
}

fn write_gguf(path: &Path, g: &Gguf) {
    let entries: Vec<TensorEntry> = g.tensors.iter().map(|(e, _)| e.clone()).collect();
    let mut w = Writer::start(std::fs::File::create(path).unwrap(), &g.meta, &entries).unwrap();
    for (e, bytes) in &g.tensors {
        w.tensor(e, bytes).unwrap();
    }
    w.finish().unwrap();
}

fn set(g: &mut Gguf, key: &str, value: Meta) {
    g.meta.retain(|(k, _)| k != key);
    g.meta.push((key.into(), value));
}

/// Overwrites tensor `name`'s dimensions in the header (GGUF order: fastest-varying first), keeping their count.
fn patch_dims(bytes: &mut [u8], name: &str, dims: &[u64]) {
    let mut pattern = (name.len() as u64).to_le_bytes().to_vec();
    pattern.extend(name.as_bytes());
    let at = bytes
        .windows(pattern.len())
        .position(|w| w == pattern)
        .expect("tensor name in header")
        + pattern.len();
    assert_eq!(
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize,
        dims.len()
    );
    for (i, d) in dims.iter().enumerate() {
        let p = at + 4 + 8 * i;
        bytes[p..p + 8].copy_from_slice(&d.to_le_bytes());
    }
}

/// A sound f32 GGUF of the reference llama, written by the CLI.
fn sound_gguf(dir: &Path) -> PathBuf {
    let file = dir.join("sound.gguf");
    let out = Command::new(env!("CARGO_BIN_EXE_freezetune"))
        .args([
            "export-gguf",
            fixture("llama").to_str().unwrap(),
            "-o",
            file.to_str().unwrap(),
            "--type",
            "f32",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    file
}

#[test]
fn crafted_gguf_files_are_refused_by_field() {
    let tmp = tempfile::tempdir().unwrap();
    let sound = sound_gguf(tmp.path());
    let case = |name: &str, edit: &dyn Fn(&mut Gguf)| {
        let mut g = read_gguf(&sound);
        edit(&mut g);
        let path = tmp.path().join(format!("{name}.gguf"));
        write_gguf(&path, &g);
        path
    };
    let import = |file: &Path, field: &str| {
        let out = file.with_extension("out");
        refused(
            &["import-gguf", file.to_str().unwrap(), "-o", out.to_str().unwrap()],
            field,
        );
        assert!(!out.exists(), "a refused import writes nothing");
    };
    import(
        &case("align0", &|g| set(g, "general.alignment", Meta::U32(0))),
        "general.alignment",
    );
    import(
        &case("align24", &|g| set(g, "general.alignment", Meta::U32(24))),
        "general.alignment",
    );
    import(
        &case("heads0", &|g| set(g, "llama.attention.head_count", Meta::U32(0))),
        "llama.attention.head_count",
    );
    import(
        &case("kv3", &|g| set(g, "llama.attention.head_count_kv", Meta::U32(3))),
        "llama.attention.head_count_kv",
    );
    import(
        &case("blocks", &|g| set(g, "llama.block_count", Meta::U32(4_000_000_000))),
        "llama.block_count",
    );
    import(
        &case("embd0", &|g| set(g, "llama.embedding_length", Meta::U32(0))),
        "llama.embedding_length",
    );
    import(
        &case("types", &|g| {
            let Some((_, Meta::I32s(types))) = g.meta.iter_mut().find(|(k, _)| k == "tokenizer.ggml.token_type") else {
                panic!("the export has token types")
            };
            types.pop();
        }),
        "tokenizer.ggml.token_type",
    );
    import(
        &case("dup", &|g| {
            let first = g.tensors[0].clone();
            g.tensors.push((first.0.clone(), first.1.clone()));
        }),
        "appears twice",
    );
    // Header bytes patched after writing: dimensions the writer would not produce.
    let patched = |name: &str, tensor: &str, dims: &[u64]| {
        let mut bytes = std::fs::read(&sound).unwrap();
        patch_dims(&mut bytes, tensor, dims);
        let path = tmp.path().join(format!("{name}.gguf"));
        std::fs::write(&path, bytes).unwrap();
        path
    };
    import(
        &patched("overflow", "blk.0.attn_q.weight", &[u64::MAX, u64::MAX]),
        "blk.0.attn_q.weight",
    );
    import(&patched("zero", "blk.0.attn_q.weight", &[64, 0]), "dimension of 0");
    // blk.0.attn_k is (32 rows, 64 columns); stored as (64 rows, 32 columns) it has the same size, the wrong shape.
    import(
        &patched("shape", "blk.0.attn_k.weight", &[32, 64]),
        "blk.0.attn_k.weight",
    );
    import(&patched("past", "blk.0.attn_q.weight", &[64, 4096]), "past the end");
}

/// What the desktop app sees: `import-gguf --events jsonl` (how the app's worker runs it) reports a crafted file's
/// refusal as one JSON error line naming the field, and a sound file's import as progress then an `imported` event.
#[test]
fn import_events_report_refusals_and_success_as_json_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let sound = sound_gguf(tmp.path());
    let mut g = read_gguf(&sound);
    set(&mut g, "general.alignment", Meta::U32(0));
    let hostile = tmp.path().join("align0.gguf");
    write_gguf(&hostile, &g);

    let out = tmp.path().join("hostile-out");
    let (status, stdout, err) = run_limited(&[
        "import-gguf",
        hostile.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--events",
        "jsonl",
    ]);
    assert_eq!(status.code(), Some(1), "{stdout}{err}");
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    let message = last["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("general.alignment"), "{last}");
    assert_eq!(last["error"]["kind"], "bad_input", "{last}");
    assert!(!out.exists(), "a refused import writes nothing");

    let out = tmp.path().join("sound-out");
    let (status, stdout, err) = run_limited(&[
        "import-gguf",
        sound.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--events",
        "jsonl",
    ]);
    assert_eq!(status.code(), Some(0), "{stdout}{err}");
    let events: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(events.iter().any(|e| e["event"] == "progress"), "{stdout}");
    let last = events.last().unwrap();
    assert_eq!(last["event"], "imported", "{stdout}");
    assert_eq!(last["architecture"], "llama", "{stdout}");
    assert!(out.join("config.json").exists());
}

/// A copy of the reference llama with config.json changed by `edit`.
fn llama_variant(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(fixture("llama")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, config.to_string()).unwrap();
    dir.to_path_buf()
}

#[test]
fn broken_model_folders_are_refused_by_field() {
    let tmp = tempfile::tempdir().unwrap();
    let huge = llama_variant(&tmp.path().join("huge"), |c| {
        c["num_hidden_layers"] = 1_000_000_000u64.into()
    });
    let huge = huge.to_str().unwrap();
    refused(&["inspect", huge], "num_hidden_layers");
    refused(&["plan", huge, "--top", "1"], "num_hidden_layers");
    refused(
        &["generate", huge, "--prompt", "hi", "--max-new-tokens", "1"],
        "num_hidden_layers",
    );
    let no_heads = llama_variant(&tmp.path().join("heads"), |c| c["num_attention_heads"] = 0.into());
    refused(
        &["plan", no_heads.to_str().unwrap(), "--top", "1"],
        "num_attention_heads",
    );
    let negative = llama_variant(&tmp.path().join("negative"), |c| c["hidden_size"] = (-64).into());
    refused(&["inspect", negative.to_str().unwrap()], "hidden_size");
    let small_vocab = llama_variant(&tmp.path().join("vocab"), |c| c["vocab_size"] = 100.into());
    refused(
        &[
            "generate",
            small_vocab.to_str().unwrap(),
            "--prompt",
            "hi",
            "--max-new-tokens",
            "1",
        ],
        "model.embed_tokens.weight",
    );
}

#[test]
fn broken_datasets_are_refused_by_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cases: [(&str, &[u8], &str, &str); 3] = [
        ("bytes", b"{\"text\": \"ok\"}\n\xff\xfe bad\n", "text", "bytes.jsonl:2"),
        (
            "ids",
            b"{\"input_ids\": [1, 2, 99999999999], \"labels\": [1, 2, 3]}\n",
            "tokenized",
            "99999999999",
        ),
        ("types", b"{\"text\": 5}\n", "text", "types.jsonl:1"),
    ];
    for (name, data, format, want) in cases {
        std::fs::write(dir.join(format!("{name}.jsonl")), data).unwrap();
        let config = format!(
            "[model]\npath = {:?}\n[freeze]\ntop = 1\n[data]\ntrain = \"{name}.jsonl\"\nformat = \"{format}\"\n\
             [output]\ndir = \"runs/{name}\"\n",
            fixture("llama")
        );
        let toml = dir.join(format!("{name}.toml"));
        std::fs::write(&toml, config).unwrap();
        // Preview reads only the rows it shows (a multi-GB file previews at once): two reach every bad row here.
        refused(&["data", "preview", toml.to_str().unwrap(), "-n", "2"], want);
    }
}
