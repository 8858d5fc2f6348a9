//! A small Hugging Face hub client (blocking, ureq): revision → commit and
//! file list via `/api/models/{repo}/revision/{rev}`, files via
//! `/{repo}/resolve/{commit}/{file}`, stored as the Python library does:
//! `blobs/<etag>` (downloaded as `blobs/<etag>.incomplete`, resumed with a
//! `Range` request after an interruption) and `snapshots/<commit>/<file>`
//! symlinks, plus `refs/<revision>` holding the commit.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{HubOptions, RepoSpec, AUX_FILES};
use crate::index::ShardIndex;

const ATTEMPTS: usize = 4;

#[derive(Deserialize)]
struct RepoInfo {
    sha: String,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
}

struct Client<'a> {
    opts: &'a HubOptions,
    agent: ureq::Agent,
    /// Same settings but no redirects, to read the hub's own headers.
    agent_no_redirect: ureq::Agent,
}

impl Client<'_> {
    fn request(&self, agent: &ureq::Agent, method: &str, url: &str) -> ureq::Request {
        let req = agent.request(method, url).set("User-Agent", concat!("chatglm-rs/", env!("CARGO_PKG_VERSION")));
        match &self.opts.token {
            Some(t) => req.set("Authorization", &format!("Bearer {t}")),
            None => req,
        }
    }
}

fn describe(url: &str, e: ureq::Error) -> String {
    match e {
        ureq::Error::Status(401 | 403, _) => {
            format!("{url}: access denied (gated or private repo? set HF_TOKEN to a token with access)")
        }
        ureq::Error::Status(404, _) => format!("{url}: not found (check the repo id and revision)"),
        ureq::Error::Status(code, _) => format!("{url}: HTTP {code}"),
        ureq::Error::Transport(t) => {
            format!("{url}: {t} (no network? set HF_ENDPOINT for a mirror, or HF_HUB_OFFLINE=1 to use the cache)")
        }
    }
}

/// Downloads what the engine needs of `repo` and returns its snapshot folder.
pub(super) fn snapshot(repo: &RepoSpec, opts: &HubOptions) -> Result<PathBuf, String> {
    let build = |redirects| {
        ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(20))
            .timeout_read(Duration::from_secs(60))
            .redirects(redirects)
            .build()
    };
    let client = Client { opts, agent: build(5), agent_no_redirect: build(0) };
    let url = format!("{}/api/models/{}/revision/{}", opts.endpoint, repo.repo_id, repo.revision.replace('/', "%2F"));
    let body = client
        .request(&client.agent, "GET", &url)
        .call()
        .map_err(|e| describe(&url, e))?
        .into_string()
        .map_err(|e| format!("{url}: {e}"))?;
    let info: RepoInfo = serde_json::from_str(&body).map_err(|e| format!("{url}: unexpected answer: {e}"))?;
    if info.sha.len() != 40 || !info.sha.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("{url}: unexpected commit id {:?}", info.sha));
    }

    let folder = repo.cache_folder(&opts.cache_dir);
    let snapshot = folder.join("snapshots").join(&info.sha);
    fs::create_dir_all(&snapshot).map_err(|e| format!("{}: {e}", snapshot.display()))?;
    if info.sha != repo.revision {
        let ref_path = folder.join("refs").join(&repo.revision);
        if let Some(parent) = ref_path.parent() {
            fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        fs::write(&ref_path, &info.sha).map_err(|e| format!("{}: {e}", ref_path.display()))?;
    }

    let listed: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let has = |f: &str| listed.contains(&f);
    if !has("config.json") {
        return Err(format!("{} at {} has no config.json", repo.repo_id, info.sha));
    }
    for file in AUX_FILES.into_iter().filter(|f| has(f)) {
        fetch(&client, repo, &info.sha, &folder, file)?;
    }
    let weights =
        ["model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin"]
            .into_iter()
            .find(|f| has(f))
            .ok_or_else(|| format!("{} has no safetensors or pytorch_model*.bin weights", repo.repo_id))?;
    let path = fetch(&client, repo, &info.sha, &folder, weights)?;
    if weights.ends_with(".index.json") {
        let index = ShardIndex::from_file(&path).map_err(|e| e.to_string())?;
        for shard in index.shards() {
            fetch(&client, repo, &info.sha, &folder, shard)?;
        }
    }
    Ok(snapshot)
}

/// Ensures `snapshots/<commit>/<file>` exists, downloading its blob if needed.
fn fetch(client: &Client<'_>, repo: &RepoSpec, commit: &str, folder: &Path, file: &str) -> Result<PathBuf, String> {
    let target = folder.join("snapshots").join(commit).join(file);
    if target.is_file() {
        return Ok(target);
    }
    let url = format!("{}/{}/resolve/{commit}/{file}", client.opts.endpoint, repo.repo_id);
    let head = client.request(&client.agent_no_redirect, "HEAD", &url).call().map_err(|e| describe(&url, e))?;
    // LFS files answer with a redirect carrying X-Linked-Etag (the sha256);
    // small files with a plain ETag (the git blob id).
    let etag = head
        .header("x-linked-etag")
        .or_else(|| head.header("etag"))
        .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string())
        .filter(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .ok_or_else(|| format!("{url}: the server sent no usable ETag"))?;
    let size: Option<u64> =
        head.header("x-linked-size").or_else(|| head.header("content-length")).and_then(|s| s.parse().ok());

    let blobs = folder.join("blobs");
    fs::create_dir_all(&blobs).map_err(|e| format!("{}: {e}", blobs.display()))?;
    let blob = blobs.join(&etag);
    if !blob.is_file() {
        let partial = blobs.join(format!("{etag}.incomplete"));
        let mut last_err = String::new();
        let mut done = false;
        for _ in 0..ATTEMPTS {
            match download_resuming(client, &url, &partial, size, file) {
                Ok(()) => {
                    done = true;
                    break;
                }
                Err(e) => last_err = e,
            }
        }
        if !done {
            return Err(format!("{last_err} (partial download kept in {}; run again to resume)", partial.display()));
        }
        fs::rename(&partial, &blob).map_err(|e| format!("{}: {e}", blob.display()))?;
    }
    link(&blob, &target, file)?;
    Ok(target)
}

/// Appends the rest of `url` to `partial`, starting at its current length.
fn download_resuming(
    client: &Client<'_>,
    url: &str,
    partial: &Path,
    size: Option<u64>,
    label: &str,
) -> Result<(), String> {
    let have = fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
    if size.is_some_and(|s| have == s) {
        return Ok(());
    }
    let mut req = client.request(&client.agent, "GET", url);
    if have > 0 {
        req = req.set("Range", &format!("bytes={have}-"));
    }
    let resp = req.call().map_err(|e| describe(url, e))?;
    let resumed = resp.status() == 206;
    let mut out = OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(partial)
        .map_err(|e| format!("{}: {e}", partial.display()))?;
    let start = if resumed { have } else { 0 };
    let bar = progress_bar(client.opts.progress, size, start, label);
    let mut reader = resp.into_reader();
    let mut buf = vec![0u8; 1 << 20];
    let mut written = start;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("{url}: download interrupted after {written} bytes: {e}")),
        };
        out.write_all(buf.get(..n).unwrap_or_default()).map_err(|e| format!("{}: {e}", partial.display()))?;
        written += n as u64;
        bar.set_position(written);
    }
    out.flush().map_err(|e| format!("{}: {e}", partial.display()))?;
    bar.finish_and_clear();
    match size {
        Some(s) if s != written => Err(format!("{url}: got {written} of {s} bytes")),
        _ => Ok(()),
    }
}

fn progress_bar(show: bool, size: Option<u64>, start: u64, label: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(size.unwrap_or(0));
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg:30} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(label.to_string());
    bar.set_position(start);
    bar
}

/// Points `target` at `blob` with a relative symlink (as huggingface_hub
/// does), falling back to a copy where symlinks are not allowed.
fn link(blob: &Path, target: &Path, file: &str) -> Result<(), String> {
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    // snapshots/<commit>/<file>: two levels plus one per folder in `file`.
    let depth = 2 + file.matches('/').count();
    let mut relative = PathBuf::new();
    for _ in 0..depth {
        relative.push("..");
    }
    relative.push("blobs");
    if let Some(name) = blob.file_name() {
        relative.push(name);
    }
    #[cfg(unix)]
    let linked = std::os::unix::fs::symlink(&relative, target).is_ok();
    #[cfg(not(unix))]
    let linked = false;
    if !linked {
        let mut src = File::open(blob).map_err(|e| format!("{}: {e}", blob.display()))?;
        let mut dst = File::create(target).map_err(|e| format!("{}: {e}", target.display()))?;
        io::copy(&mut src, &mut dst).map_err(|e| format!("{}: {e}", target.display()))?;
    }
    Ok(())
}
