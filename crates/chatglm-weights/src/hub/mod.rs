//! Resolving a model spec to a local checkpoint folder: a path, or a
//! Hugging Face repo `owner/name[@revision]` fetched into (or found in) the
//! standard hub cache, `$HF_HOME/hub/models--owner--name/snapshots/<commit>/`,
//! shared with the Python `huggingface_hub` library.
//!
//! Environment: `HF_HOME` (default `~/.cache/huggingface`), `HF_HUB_CACHE`
//! (default `$HF_HOME/hub`), `HF_ENDPOINT` (mirrors; default
//! `https://huggingface.co`), `HF_TOKEN` (else `$HF_HOME/token`),
//! `HF_HUB_OFFLINE=1` (cache only, no network).
//!
//! Why not the `hf-hub` crate: evaluated (0.5.0, 2026-11-29) against what
//! these tests pin down, it shares the cache layout (blobs, refs, snapshots)
//! and reads `HF_HOME`, `HF_ENDPOINT` and the token file, and it resumes
//! (`.sync.part` files) with a progress trait; but it ignores `HF_TOKEN`,
//! `HF_HUB_CACHE` and `HF_HUB_OFFLINE`, has no offline resolution of a
//! cached snapshot by ref or commit, and leaves partial files under another
//! name than `huggingface_hub`'s `.incomplete`, so a download interrupted in
//! one tool is not resumed by the other. Switching would lose four tested
//! behaviours; this module stays until the crate has them.

#[cfg(feature = "download")]
mod download;

use std::path::{Path, PathBuf};

use crate::index::ShardIndex;
use crate::WeightsError;

/// The files of a model repo that the engine needs besides the weights.
pub const AUX_FILES: [&str; 3] = ["config.json", "tokenizer.model", "tokenizer_config.json"];

/// Where and how to resolve hub specs. [`HubOptions::from_env`] reads the
/// standard Hugging Face environment variables.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// The hub cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`).
    pub cache_dir: PathBuf,
    /// Base URL, without a trailing slash.
    pub endpoint: String,
    /// Bearer token for gated/private repos.
    pub token: Option<String>,
    /// Use only the cache; never touch the network.
    pub offline: bool,
    /// Draw download progress bars on stderr.
    pub progress: bool,
}

impl HubOptions {
    /// Options from `HF_HOME`, `HF_HUB_CACHE`, `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE`.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let home = var("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
            home.join(".cache").join("huggingface")
        });
        let token = var("HF_TOKEN").or_else(|| {
            let t = std::fs::read_to_string(hf_home.join("token")).ok()?;
            Some(t.trim().to_string()).filter(|t| !t.is_empty())
        });
        let offline = var("HF_HUB_OFFLINE")
            .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        Self {
            cache_dir: var("HF_HUB_CACHE").map(PathBuf::from).unwrap_or_else(|| hf_home.join("hub")),
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| "https://huggingface.co".into())
                .trim_end_matches('/')
                .to_string(),
            token,
            offline,
            progress: true,
        }
    }
}

/// A parsed `owner/name[@revision]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoSpec {
    /// `owner/name`.
    pub repo_id: String,
    /// Branch, tag or commit (default `main`).
    pub revision: String,
}

impl RepoSpec {
    /// Parses `owner/name` or `owner/name@revision`; `None` if `spec` is not of that form.
    pub fn parse(spec: &str) -> Option<Self> {
        let (repo_id, revision) = match spec.split_once('@') {
            Some((r, rev)) => (r, rev),
            None => (spec, "main"),
        };
        let (owner, name) = repo_id.split_once('/')?;
        let part_ok = |s: &str| {
            !s.is_empty()
                && !s.starts_with(['.', '-'])
                && !s.contains("..")
                && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        let revision_ok = !revision.is_empty()
            && !revision.starts_with('/')
            && !revision.split('/').any(|p| p.is_empty() || p == "." || p == "..")
            && revision.chars().all(|c| c.is_ascii_graphic() && c != '\\');
        (part_ok(owner) && part_ok(name) && revision_ok)
            .then(|| Self { repo_id: repo_id.to_string(), revision: revision.to_string() })
    }

    /// The repo's folder in the cache: `models--owner--name`.
    pub fn cache_folder(&self, cache_dir: &Path) -> PathBuf {
        cache_dir.join(format!("models--{}", self.repo_id.replace('/', "--")))
    }

    fn is_commit(&self) -> bool {
        self.revision.len() == 40 && self.revision.chars().all(|c| c.is_ascii_hexdigit())
    }
}

/// Resolves `spec` with options from the environment; see [`resolve_with`].
pub fn resolve(spec: &str) -> Result<PathBuf, WeightsError> {
    resolve_with(spec, &HubOptions::from_env())
}

/// Resolves a model spec to a checkpoint folder:
/// * an existing folder → itself;
/// * an existing file → an error (single-file formats come later);
/// * `owner/name[@revision]` → the cached snapshot, downloading what is
///   missing (config, tokenizer, weights: safetensors preferred) unless offline.
pub fn resolve_with(spec: &str, opts: &HubOptions) -> Result<PathBuf, WeightsError> {
    let err = |message: String| WeightsError::Hub { spec: spec.to_string(), message };
    let as_path = Path::new(spec);
    if as_path.is_dir() {
        return Ok(as_path.to_path_buf());
    }
    if as_path.exists() {
        return Err(err(
            "this is a file; pass the folder that holds config.json, tokenizer.model and the weights".into()
        ));
    }
    let repo_part = spec.split('@').next().unwrap_or_default();
    let looks_like_path = spec.starts_with(['/', '.', '~']) || repo_part.matches('/').count() != 1;
    let repo = match RepoSpec::parse(spec) {
        Some(r) if !looks_like_path => r,
        _ => {
            return Err(err(
                "no such file or folder, and not a Hugging Face repo id of the form owner/name[@revision]".into()
            ))
        }
    };

    let cached = cached_snapshot(&repo, &opts.cache_dir);
    if opts.offline {
        return cached
            .map_err(|why| err(format!("HF_HUB_OFFLINE is set and {why}; unset HF_HUB_OFFLINE to download it")));
    }
    if repo.is_commit() {
        if let Ok(dir) = cached {
            return Ok(dir);
        }
    }
    download_snapshot(&repo, opts, spec)
}

#[cfg(feature = "download")]
fn download_snapshot(repo: &RepoSpec, opts: &HubOptions, spec: &str) -> Result<PathBuf, WeightsError> {
    download::snapshot(repo, opts).or_else(|e| {
        // Like huggingface_hub: if the hub cannot be reached, a complete
        // cached snapshot of the same revision is good enough.
        cached_snapshot(repo, &opts.cache_dir).map_err(|_| WeightsError::Hub { spec: spec.to_string(), message: e })
    })
}

#[cfg(not(feature = "download"))]
fn download_snapshot(repo: &RepoSpec, opts: &HubOptions, spec: &str) -> Result<PathBuf, WeightsError> {
    cached_snapshot(repo, &opts.cache_dir).map_err(|why| WeightsError::Hub {
        spec: spec.to_string(),
        message: format!("{why}, and this build has no `download` feature"),
    })
}

/// The cached snapshot of `repo`, if complete (config.json and all weight
/// files present). `Err` says what is missing.
pub fn cached_snapshot(repo: &RepoSpec, cache_dir: &Path) -> Result<PathBuf, String> {
    let folder = repo.cache_folder(cache_dir);
    let commit = if repo.is_commit() {
        repo.revision.clone()
    } else {
        let ref_path = folder.join("refs").join(&repo.revision);
        let commit = std::fs::read_to_string(&ref_path).map_err(|_| {
            format!(
                "revision {} of {} is not in the cache ({} not found)",
                repo.revision,
                repo.repo_id,
                ref_path.display()
            )
        })?;
        commit.trim().to_string()
    };
    if commit.is_empty() || commit.contains(['/', '\\']) || commit == ".." {
        return Err(format!("cache ref for {} is corrupt ({commit:?})", repo.revision));
    }
    let snapshot = folder.join("snapshots").join(&commit);
    snapshot_complete(&snapshot).map(|()| snapshot)
}

/// Checks that a folder holds config.json and a complete set of weights.
fn snapshot_complete(dir: &Path) -> Result<(), String> {
    if !dir.join("config.json").is_file() {
        return Err(format!("{} has no config.json", dir.display()));
    }
    for (single, index) in
        [("model.safetensors", "model.safetensors.index.json"), ("pytorch_model.bin", "pytorch_model.bin.index.json")]
    {
        if dir.join(single).is_file() {
            return Ok(());
        }
        let index_path = dir.join(index);
        if index_path.is_file() {
            let index = ShardIndex::from_file(&index_path).map_err(|e| e.to_string())?;
            return match index.shards().into_iter().find(|s| !dir.join(s).is_file()) {
                Some(missing) => Err(format!("{} lacks shard {missing}", dir.display())),
                None => Ok(()),
            };
        }
    }
    Err(format!("{} has no weights", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        let r = RepoSpec::parse("THUDM/chatglm2-6b@v1.0").unwrap();
        assert_eq!(r.repo_id, "THUDM/chatglm2-6b");
        assert_eq!(r.revision, "v1.0");
        assert_eq!(RepoSpec::parse("THUDM/chatglm2-6b").unwrap().revision, "main");
        assert!(RepoSpec::parse("THUDM/../x").is_none());
        assert!(RepoSpec::parse("a/b@../../etc").is_none());
        assert!(RepoSpec::parse("noslash").is_none());
        assert_eq!(r.cache_folder(Path::new("/c")), PathBuf::from("/c/models--THUDM--chatglm2-6b"));
    }
}
