//! Hub resolution without a network: a fake Hugging Face cache in a temp dir.

use std::fs;
use std::path::Path;

use chatglm_weights::hub::{resolve_with, HubOptions};
use chatglm_weights::Checkpoint;

const COMMIT: &str = "7fabe56db91e085c9c027f56f1c654d137bdba40";

fn options(cache: &Path, offline: bool) -> HubOptions {
    HubOptions {
        cache_dir: cache.to_path_buf(),
        // Nothing listens here: any network use fails fast.
        endpoint: "http://127.0.0.1:9".into(),
        token: None,
        offline,
        progress: false,
    }
}

/// Lays out `models--THUDM--chatglm2-6b` as huggingface_hub does: blobs,
/// snapshot symlinks to them, and refs/main.
fn fake_cache(cache: &Path) {
    let src = chatglm_testdata::path("dev/model/safetensors-sharded-f16");
    let repo = cache.join("models--THUDM--chatglm2-6b");
    let snapshot = repo.join("snapshots").join(COMMIT);
    fs::create_dir_all(repo.join("blobs")).unwrap();
    fs::create_dir_all(&snapshot).unwrap();
    fs::create_dir_all(repo.join("refs")).unwrap();
    fs::write(repo.join("refs/main"), COMMIT).unwrap();
    for (i, entry) in fs::read_dir(src).unwrap().enumerate() {
        let entry = entry.unwrap();
        let blob = format!("blob{i:04}");
        fs::copy(entry.path(), repo.join("blobs").join(&blob)).unwrap();
        std::os::unix::fs::symlink(Path::new("../../blobs").join(&blob), snapshot.join(entry.file_name())).unwrap();
    }
}

#[test]
fn offline_resolves_cached_snapshot_by_ref_and_by_commit() {
    let tmp = tempfile::tempdir().unwrap();
    fake_cache(tmp.path());
    let opts = options(tmp.path(), true);
    let dir = resolve_with("THUDM/chatglm2-6b", &opts).unwrap();
    assert!(dir.ends_with(format!("snapshots/{COMMIT}")));
    let ckpt = Checkpoint::open(&dir).unwrap();
    ckpt.validate_shapes().unwrap();
    assert_eq!(resolve_with(&format!("THUDM/chatglm2-6b@{COMMIT}"), &opts).unwrap(), dir);
    // A full commit id that is cached resolves without the network even online.
    assert_eq!(resolve_with(&format!("THUDM/chatglm2-6b@{COMMIT}"), &options(tmp.path(), false)).unwrap(), dir);
    // Online with an unreachable endpoint, a cached ref still resolves.
    assert_eq!(resolve_with("THUDM/chatglm2-6b", &options(tmp.path(), false)).unwrap(), dir);
}

#[test]
fn offline_without_cache_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let err = resolve_with("THUDM/chatglm2-6b@v1.0", &options(tmp.path(), true)).unwrap_err().to_string();
    assert!(
        err.contains("THUDM/chatglm2-6b@v1.0") && err.contains("HF_HUB_OFFLINE") && err.contains("not in the cache"),
        "{err}"
    );
}

#[test]
fn incomplete_snapshot_is_not_used() {
    let tmp = tempfile::tempdir().unwrap();
    fake_cache(tmp.path());
    let snapshot = tmp.path().join("models--THUDM--chatglm2-6b/snapshots").join(COMMIT);
    fs::remove_file(snapshot.join("model-00002-of-00002.safetensors")).unwrap();
    let err = resolve_with("THUDM/chatglm2-6b", &options(tmp.path(), true)).unwrap_err().to_string();
    assert!(err.contains("lacks shard model-00002-of-00002.safetensors"), "{err}");
    // Online, the unreachable endpoint is reported.
    let err = resolve_with("THUDM/chatglm2-6b", &options(tmp.path(), false)).unwrap_err().to_string();
    assert!(err.contains("127.0.0.1:9"), "{err}");
}

#[test]
fn local_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(tmp.path(), true);
    assert_eq!(resolve_with(tmp.path().to_str().unwrap(), &opts).unwrap(), tmp.path());
    let file = tmp.path().join("model.gguf");
    fs::write(&file, b"x").unwrap();
    let err = resolve_with(file.to_str().unwrap(), &opts).unwrap_err().to_string();
    assert!(err.contains("is a file"), "{err}");
    let err = resolve_with("/no/such/dir", &opts).unwrap_err().to_string();
    assert!(err.contains("no such file or folder"), "{err}");
}
