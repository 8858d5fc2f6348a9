//! The hub client against a local HTTP server that mimics the Hugging Face
//! endpoints (revision API, resolve with ETag/HEAD, Range requests).
#![cfg(feature = "download")]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use chatglm_weights::hub::{resolve_with, HubOptions};
use chatglm_weights::Checkpoint;
use common::layout_dir;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Requests seen by the server: (method, path, range header).
type Log = Arc<Mutex<Vec<(String, String, Option<String>)>>>;

fn etag(name: &str) -> String {
    format!("etag-{}", name.replace('.', "-"))
}

fn serve(files: BTreeMap<String, Vec<u8>>) -> (String, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Log = Arc::default();
    let seen = Arc::clone(&log);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let mut range = None;
            let mut auth = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("range: bytes=") {
                    range = v.trim().trim_end_matches('-').parse::<usize>().ok();
                }
                if lower.starts_with("authorization:") {
                    auth = Some(line.trim().to_string());
                }
            }
            let mut parts = request.split_whitespace();
            let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
            seen.lock().unwrap().push((method.clone(), path.clone(), range.map(|r| r.to_string())));
            assert_eq!(auth.as_deref(), Some("Authorization: Bearer hf_test"));

            let (status, headers, body): (&str, String, Vec<u8>) = if path == "/api/models/THUDM/tiny/revision/main" {
                let siblings: Vec<_> = files.keys().map(|f| serde_json::json!({ "rfilename": f })).collect();
                let body = serde_json::json!({ "sha": COMMIT, "siblings": siblings }).to_string().into_bytes();
                ("200 OK", String::new(), body)
            } else if let Some(file) = path.strip_prefix(&format!("/THUDM/tiny/resolve/{COMMIT}/")) {
                match files.get(file) {
                    Some(data) => {
                        let tag = format!("ETag: \"{}\"\r\n", etag(file));
                        match range {
                            Some(start) if method == "GET" => (
                                "206 Partial Content",
                                format!("{tag}Content-Range: bytes {start}-{}/{}\r\n", data.len() - 1, data.len()),
                                data[start..].to_vec(),
                            ),
                            _ => ("200 OK", tag, data.clone()),
                        }
                    }
                    None => ("404 Not Found", String::new(), Vec::new()),
                }
            } else {
                ("404 Not Found", String::new(), Vec::new())
            };
            let head =
                format!("HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes());
            if method != "HEAD" {
                let _ = stream.write_all(&body);
            }
        }
    });
    (format!("http://{addr}"), log)
}

#[test]
fn downloads_resumes_and_lays_out_the_cache() {
    let src = layout_dir("safetensors-sharded-f16");
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        files.insert(entry.file_name().to_string_lossy().into_owned(), std::fs::read(entry.path()).unwrap());
    }
    files.insert("README.md".into(), b"not needed".to_vec());
    let shard = "model-00001-of-00002.safetensors";
    let shard_bytes = files[shard].clone();
    let (endpoint, log) = serve(files);

    let cache = tempfile::tempdir().unwrap();
    // An interrupted earlier download of the first shard.
    let blobs = cache.path().join("models--THUDM--tiny/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(format!("{}.incomplete", etag(shard))), &shard_bytes[..1000]).unwrap();

    let opts = HubOptions {
        cache_dir: cache.path().to_path_buf(),
        endpoint,
        token: Some("hf_test".into()),
        offline: false,
        progress: false,
    };
    let dir = resolve_with("THUDM/tiny", &opts).unwrap();
    assert!(dir.ends_with(format!("models--THUDM--tiny/snapshots/{COMMIT}")));
    let ckpt = Checkpoint::open(&dir).unwrap();
    ckpt.validate_shapes().unwrap();
    assert!(ckpt.tokenizer_path.is_some());
    assert!(std::fs::symlink_metadata(dir.join(shard)).unwrap().file_type().is_symlink());
    assert!(!dir.join("README.md").exists());
    let refs = std::fs::read_to_string(cache.path().join("models--THUDM--tiny/refs/main")).unwrap();
    assert_eq!(refs, COMMIT);

    let requests = log.lock().unwrap().clone();
    let resumed = requests.iter().any(|(m, p, r)| m == "GET" && p.ends_with(shard) && r.as_deref() == Some("1000"));
    assert!(resumed, "{requests:?}");

    // Now cached: offline resolution finds the same snapshot.
    let offline = HubOptions { offline: true, ..opts.clone() };
    assert_eq!(resolve_with("THUDM/tiny", &offline).unwrap(), dir);

    // Unknown repo: a clear 404.
    let err = resolve_with("THUDM/nothing", &opts).unwrap_err().to_string();
    assert!(err.contains("not found"), "{err}");
}
