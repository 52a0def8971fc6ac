//! A fake Hugging Face Hub for tests, served on 127.0.0.1 by the test process itself, so FreezeTune's real download
//! code runs against real HTTP. It speaks the parts of the Hub's protocol a download uses:
//!
//! - `GET /api/models/{repo}/revision/{rev}` — repo info: `sha` (commit) and `siblings` with sizes and LFS sha256
//!   (`/api/datasets/...` and `/datasets/{repo}/resolve/...` for dataset repos);
//! - `GET|HEAD /{repo}/resolve/{rev}/{file}` — small files are served directly with `ETag` = git blob sha1; LFS files
//!   answer `302` to `/cdn/{sha256}` with `X-Linked-Etag`, `X-Linked-Size` and `X-Repo-Commit`, as the Hub does;
//! - `GET /cdn/{sha256}` — the LFS object, with `Range` support;
//! - `GET /api/models?search=…&limit=…` (and `/api/datasets?…`) — search by name, most downloaded first, with
//!   `downloads`, `likes`, `gated`, and for models the `config` (`model_type`, `architectures`) and the
//!   `safetensors` parameter total, as the Hub's `expand[]` fields give them;
//! - errors as the Hub sends them: 401 for a gated repo without the right token, 404 with `X-Error-Code`
//!   `RepoNotFound` / `RevisionNotFound` / `EntryNotFound`.
//!
//! Faults can be injected per file: a connection dropped mid-body, error statuses, a corrupted body, a slow file.

use sha1::Digest as _;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone)]
pub struct FakeFile {
    pub name: String,
    pub data: Arc<Vec<u8>>,
    /// Stored in LFS (served through the CDN redirect, etag = sha256).
    pub lfs: bool,
    sha256: String,
    git_sha1: String,
}

impl FakeFile {
    /// Checksums are computed once here, so serving a request costs what it costs a real server.
    pub fn new(name: &str, data: Vec<u8>) -> FakeFile {
        let lfs = name.ends_with(".safetensors") || data.len() > 10 * 1024 * 1024;
        let sha256 = hex(&sha2::Sha256::digest(&data));
        let mut h = sha1::Sha1::new();
        h.update(format!("blob {}\0", data.len()).as_bytes());
        h.update(&data);
        let git_sha1 = hex(&h.finalize());
        FakeFile {
            name: name.to_string(),
            data: Arc::new(data),
            lfs,
            sha256,
            git_sha1,
        }
    }

    pub fn sha256(&self) -> String {
        self.sha256.clone()
    }

    /// Git's blob id: sha1 of `"blob {len}\0"` + content, the etag the Hub gives non-LFS files.
    pub fn git_sha1(&self) -> String {
        self.git_sha1.clone()
    }

    fn etag(&self) -> String {
        if self.lfs {
            self.sha256()
        } else {
            self.git_sha1()
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone)]
pub struct FakeRepo {
    pub id: String,
    pub commit: String,
    pub files: Vec<FakeFile>,
    /// When set, every request must carry `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Extra sibling names listed by the repo info but not served (e.g. a hostile `../x`).
    pub extra_siblings: Vec<String>,
    /// A dataset repo: served under `/api/datasets/` and `/datasets/<repo>/resolve/`.
    pub dataset: bool,
    /// What search results say about it.
    pub downloads: u64,
    pub likes: u64,
}

impl FakeRepo {
    pub fn new(id: &str, files: Vec<FakeFile>) -> FakeRepo {
        let commit = hex(&sha1::Sha1::digest(id.as_bytes()));
        FakeRepo {
            id: id.to_string(),
            commit,
            files,
            token: None,
            extra_siblings: Vec::new(),
            dataset: false,
            downloads: 0,
            likes: 0,
        }
    }

    /// A dataset repo of `files` (names may hold folders: `data/train-00000-of-00001.parquet`).
    pub fn dataset(id: &str, files: Vec<FakeFile>) -> FakeRepo {
        FakeRepo {
            dataset: true,
            ..FakeRepo::new(id, files)
        }
    }

    /// Every regular file under `dir`, named by its path relative to `dir` (`data/train-00000.parquet`).
    pub fn from_tree(id: &str, dir: &Path) -> FakeRepo {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<FakeFile>) {
            let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
            entries.sort();
            for p in entries {
                if p.is_dir() {
                    walk(root, &p, out);
                } else {
                    let rel = p.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
                    out.push(FakeFile::new(&rel, std::fs::read(&p).unwrap()));
                }
            }
        }
        let mut files = Vec::new();
        walk(dir, dir, &mut files);
        FakeRepo::new(id, files)
    }

    /// Every regular file of `dir` (not recursive).
    pub fn from_dir(id: &str, dir: &Path) -> FakeRepo {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        entries.sort();
        let files = entries
            .iter()
            .map(|p| FakeFile::new(&p.file_name().unwrap().to_string_lossy(), std::fs::read(p).unwrap()))
            .collect();
        FakeRepo::new(id, files)
    }

    fn file(&self, name: &str) -> Option<&FakeFile> {
        self.files.iter().find(|f| f.name == name)
    }
}

/// A fault injected into the serving of one file's bytes.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Send the full headers, then only `after` bytes of the body, then close the connection; `times` times.
    DropAfter { file: String, after: u64, times: u32 },
    /// Answer with `status` instead of the file, `times` times.
    Status { file: String, status: u16, times: u32 },
    /// Serve the file with one byte changed (headers still claim the true checksum).
    Corrupt { file: String },
    /// Serve the file at about `bytes_per_sec`.
    Slow { file: String, bytes_per_sec: u64 },
}

impl Fault {
    fn file(&self) -> &str {
        match self {
            Fault::DropAfter { file, .. }
            | Fault::Status { file, .. }
            | Fault::Corrupt { file }
            | Fault::Slow { file, .. } => file,
        }
    }
}

/// One request as the fake Hub saw it.
#[derive(Clone, Debug)]
pub struct RequestLog {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub authorized: bool,
}

struct State {
    repos: Vec<FakeRepo>,
    faults: Mutex<Vec<Fault>>,
    log: Mutex<Vec<RequestLog>>,
    body_bytes: AtomicU64,
    stop: AtomicBool,
}

pub struct FakeHub {
    url: String,
    state: Arc<State>,
}

impl FakeHub {
    pub fn start(repos: Vec<FakeRepo>) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State {
            repos,
            faults: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            body_bytes: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let s = state.clone();
        let base = url.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (s, base) = (s.clone(), base.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &s, &base);
                });
            }
        });
        FakeHub { url, state }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn add_fault(&self, fault: Fault) {
        self.state.faults.lock().unwrap().push(fault);
    }

    pub fn clear_faults(&self) {
        self.state.faults.lock().unwrap().clear();
    }

    pub fn requests(&self) -> Vec<RequestLog> {
        self.state.log.lock().unwrap().clone()
    }

    /// Body bytes sent so far, over all responses.
    pub fn body_bytes(&self) -> u64 {
        self.state.body_bytes.load(Ordering::Relaxed)
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
    }
}

struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
}

fn read_request(stream: &TcpStream) -> std::io::Result<Option<Request>> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = HashMap::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Ok(Some(Request { method, path, headers }))
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Body,
}

enum Body {
    Empty,
    Text(String),
    File { file: FakeFile, start: u64, end: u64 },
}

fn error(status: u16, code: &str, message: &str) -> Response {
    Response {
        status,
        headers: vec![
            ("X-Error-Code".into(), code.into()),
            ("Content-Type".into(), "application/json".into()),
        ],
        body: Body::Text(serde_json::json!({ "error": message }).to_string()),
    }
}

fn serve(mut stream: TcpStream, state: &State, base: &str) -> std::io::Result<()> {
    let Some(req) = read_request(&stream)? else {
        return Ok(());
    };
    let (path, query) = req.path.split_once('?').unwrap_or((&req.path, ""));
    let (path, query) = (path.to_string(), query.to_string());
    let range = req.headers.get("range").cloned();
    let auth = req.headers.get("authorization").cloned();
    let mut response = match path.as_str() {
        "/api/models" => search(state, false, &query),
        "/api/datasets" => search(state, true, &query),
        _ => route(state, base, &req.method, &path, range.as_deref(), auth.as_deref()),
    };
    state.log.lock().unwrap().push(RequestLog {
        method: req.method.clone(),
        path: path.clone(),
        range,
        authorized: auth.is_some(),
    });
    let file_name = match &response.body {
        Body::File { file, .. } => Some(file.name.clone()),
        _ => None,
    };
    let fault = file_name.as_ref().and_then(|name| take_fault(state, name));
    if let Some(Fault::Status { status, .. }) = &fault {
        response = error(*status, "Injected", "injected failure");
    }
    write_response(&mut stream, state, &req.method, response, fault)
}

/// The active fault for `file`, counting down the ones that fire a limited number of times.
fn take_fault(state: &State, file: &str) -> Option<Fault> {
    let mut faults = state.faults.lock().unwrap();
    let i = faults.iter().position(|f| f.file() == file)?;
    let fault = faults[i].clone();
    match &mut faults[i] {
        Fault::DropAfter { times, .. } | Fault::Status { times, .. } => {
            *times -= 1;
            if *times == 0 {
                faults.remove(i);
            }
        }
        _ => {}
    }
    Some(fault)
}

fn route(state: &State, base: &str, method: &str, path: &str, range: Option<&str>, auth: Option<&str>) -> Response {
    if method != "GET" && method != "HEAD" {
        return error(405, "MethodNotAllowed", "method not allowed");
    }
    if let Some(sha) = path.strip_prefix("/cdn/") {
        let file = state
            .repos
            .iter()
            .flat_map(|r| r.files.iter())
            .find(|f| f.lfs && f.sha256() == sha);
        return match file {
            Some(f) => file_response(f, range, Vec::new()),
            None => error(404, "EntryNotFound", "no such object"),
        };
    }
    let (api, dataset, rest) = if let Some(rest) = path.strip_prefix("/api/models/") {
        (true, false, rest)
    } else if let Some(rest) = path.strip_prefix("/api/datasets/") {
        (true, true, rest)
    } else if let Some(rest) = path.strip_prefix("/datasets/") {
        (false, true, rest)
    } else {
        (false, false, path.trim_start_matches('/'))
    };
    let found = state
        .repos
        .iter()
        .find(|r| r.dataset == dataset && rest.starts_with(&format!("{}/", r.id)));
    let Some(repo) = found else {
        return error(404, "RepoNotFound", "Repository not found");
    };
    if let Some(token) = &repo.token {
        if auth != Some(&format!("Bearer {token}")) {
            return error(
                401,
                "GatedRepo",
                "Access to this model is restricted. You must have access and be authenticated.",
            );
        }
    }
    let rest = &rest[repo.id.len() + 1..];
    if api {
        let Some(rev) = rest.strip_prefix("revision/") else {
            return error(404, "EntryNotFound", "unknown api path");
        };
        if rev != "main" && rev != repo.commit {
            return error(404, "RevisionNotFound", &format!("Invalid rev id: {rev}"));
        }
        let mut siblings: Vec<serde_json::Value> = repo
            .files
            .iter()
            .map(|f| {
                let mut s = serde_json::json!({"rfilename": f.name, "size": f.data.len(), "blobId": f.git_sha1()});
                if f.lfs {
                    s["lfs"] = serde_json::json!({"sha256": f.sha256(), "size": f.data.len(), "pointerSize": 134});
                }
                s
            })
            .collect();
        siblings.extend(
            repo.extra_siblings
                .iter()
                .map(|n| serde_json::json!({"rfilename": n, "size": 10})),
        );
        let body = serde_json::json!({"id": repo.id, "sha": repo.commit, "siblings": siblings});
        return Response {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: Body::Text(body.to_string()),
        };
    }
    let Some(rest) = rest.strip_prefix("resolve/") else {
        return error(404, "EntryNotFound", "unknown path");
    };
    let (rev, name) = rest.split_once('/').unwrap_or((rest, ""));
    if rev != "main" && rev != repo.commit {
        return error(404, "RevisionNotFound", &format!("Invalid rev id: {rev}"));
    }
    let Some(file) = repo.file(name) else {
        return error(404, "EntryNotFound", &format!("{name} does not exist on \"{rev}\""));
    };
    let commit = ("X-Repo-Commit".to_string(), repo.commit.clone());
    if file.lfs {
        return Response {
            status: 302,
            headers: vec![
                // Another origin, as the Hub's CDN is: `localhost` instead of `127.0.0.1`.
                (
                    "Location".into(),
                    format!("{}/cdn/{}", base.replace("127.0.0.1", "localhost"), file.sha256()),
                ),
                ("X-Linked-Etag".into(), format!("\"{}\"", file.sha256())),
                ("X-Linked-Size".into(), file.data.len().to_string()),
                ("ETag".into(), format!("\"{}\"", file.git_sha1())),
                commit,
            ],
            body: Body::Empty,
        };
    }
    file_response(file, range, vec![commit])
}

/// The Hub's search: repos of the kind whose id contains `search` (any case), most downloaded first.
fn search(state: &State, dataset: bool, query: &str) -> Response {
    let param = |key: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| percent_decode(v))
    };
    let text = param("search").unwrap_or_default().to_lowercase();
    let limit: usize = param("limit").and_then(|l| l.parse().ok()).unwrap_or(1000);
    let mut found: Vec<&FakeRepo> = state
        .repos
        .iter()
        .filter(|r| r.dataset == dataset && r.id.to_lowercase().contains(&text))
        .collect();
    found.sort_by(|a, b| b.downloads.cmp(&a.downloads).then(a.id.cmp(&b.id)));
    let hits: Vec<serde_json::Value> = found.into_iter().take(limit).map(hit).collect();
    Response {
        status: 200,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: Body::Text(serde_json::Value::Array(hits).to_string()),
    }
}

/// One search result as the Hub's `expand[]` fields write it.
fn hit(repo: &FakeRepo) -> serde_json::Value {
    let gated = if repo.token.is_some() {
        serde_json::json!("manual")
    } else {
        serde_json::json!(false)
    };
    let mut hit = serde_json::json!({
        "id": repo.id, "downloads": repo.downloads, "likes": repo.likes, "gated": gated,
        "lastModified": "2026-11-30T12:00:00.000Z",
    });
    if repo.dataset {
        return hit;
    }
    if let Some(config) = repo
        .file("config.json")
        .and_then(|f| serde_json::from_slice::<serde_json::Value>(&f.data).ok())
    {
        hit["config"] =
            serde_json::json!({"model_type": config["model_type"], "architectures": config["architectures"]});
    }
    let params: u64 = repo
        .files
        .iter()
        .filter(|f| f.name.ends_with(".safetensors"))
        .map(|f| safetensors_params(&f.data))
        .sum();
    if params > 0 {
        hit["safetensors"] = serde_json::json!({"total": params});
    }
    hit
}

/// The parameter count a safetensors file's header gives (0 when it does not parse).
fn safetensors_params(data: &[u8]) -> u64 {
    let Some(len) = data
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    else {
        return 0;
    };
    let Some(header) = data
        .get(8..8 + len)
        .and_then(|h| serde_json::from_slice::<serde_json::Value>(h).ok())
    else {
        return 0;
    };
    let Some(map) = header.as_object() else { return 0 };
    map.values()
        .filter_map(|t| t["shape"].as_array())
        .map(|shape| shape.iter().map(|d| d.as_u64().unwrap_or(0)).product::<u64>())
        .sum()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn file_response(file: &FakeFile, range: Option<&str>, mut headers: Vec<(String, String)>) -> Response {
    let total = file.data.len() as u64;
    headers.push(("ETag".into(), format!("\"{}\"", file.etag())));
    headers.push(("Accept-Ranges".into(), "bytes".into()));
    let Some(spec) = range.and_then(|r| r.strip_prefix("bytes=")) else {
        return Response {
            status: 200,
            headers,
            body: Body::File {
                file: file.clone(),
                start: 0,
                end: total,
            },
        };
    };
    let (a, b) = spec.split_once('-').unwrap_or((spec, ""));
    let start: u64 = a.parse().unwrap_or(0);
    let end: u64 = if b.is_empty() {
        total
    } else {
        b.parse::<u64>().map(|e| e + 1).unwrap_or(total).min(total)
    };
    if start >= total || start >= end {
        headers.push(("Content-Range".into(), format!("bytes */{total}")));
        return Response {
            status: 416,
            headers,
            body: Body::Empty,
        };
    }
    headers.push(("Content-Range".into(), format!("bytes {start}-{}/{total}", end - 1)));
    Response {
        status: 206,
        headers,
        body: Body::File {
            file: file.clone(),
            start,
            end,
        },
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn write_response(
    stream: &mut TcpStream,
    state: &State,
    method: &str,
    r: Response,
    fault: Option<Fault>,
) -> std::io::Result<()> {
    let len = match &r.body {
        Body::Empty => 0,
        Body::Text(t) => t.len() as u64,
        Body::File { start, end, .. } => end - start,
    };
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: {len}\r\nConnection: close\r\n",
        r.status,
        reason(r.status)
    );
    for (k, v) in &r.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if method == "HEAD" {
        return Ok(());
    }
    match r.body {
        Body::Empty => {}
        Body::Text(t) => stream.write_all(t.as_bytes())?,
        Body::File { file, start, end } => {
            let mut data = &file.data[start as usize..end as usize];
            let corrupted;
            if matches!(fault, Some(Fault::Corrupt { .. })) && !data.is_empty() {
                let mut copy = data.to_vec();
                let mid = copy.len() / 2;
                copy[mid] ^= 0xff;
                corrupted = copy;
                data = &corrupted;
            }
            match fault {
                Some(Fault::DropAfter { after, .. }) => {
                    let n = (after as usize).min(data.len());
                    stream.write_all(&data[..n])?;
                    state.body_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    stream.flush()?;
                    let _ = stream.shutdown(Shutdown::Both);
                    return Ok(());
                }
                Some(Fault::Slow { bytes_per_sec, .. }) => {
                    let chunk = (bytes_per_sec / 20).max(1) as usize;
                    for piece in data.chunks(chunk) {
                        stream.write_all(piece)?;
                        state.body_bytes.fetch_add(piece.len() as u64, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                _ => {
                    for piece in data.chunks(1 << 20) {
                        stream.write_all(piece)?;
                        state.body_bytes.fetch_add(piece.len() as u64, Ordering::Relaxed);
                    }
                }
            }
        }
    }
    stream.flush()?;
    // Drain anything the client still sends so the close is clean.
    let _ = stream.shutdown(Shutdown::Write);
    let mut sink = [0u8; 256];
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    let _ = stream.read(&mut sink);
    Ok(())
}
