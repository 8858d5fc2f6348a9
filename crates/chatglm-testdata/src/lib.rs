//! Where the golden test data is, for every test crate: `$CHATGLM_TESTDATA`
//! if set, else the repository's `testdata/` folder (a byte-identical copy of
//! the data the official Python code produced; see `testdata/README.md`).
//! A missing folder or file fails the test with a message naming it, never a
//! silent skip.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

/// The golden data folder (it holds `README.md`, `dev/`, `chatglm2-tokenizer/`).
pub fn dir() -> PathBuf {
    let dir = match std::env::var_os("CHATGLM_TESTDATA") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata"),
    };
    assert!(
        dir.join("README.md").is_file(),
        "golden test data not found at {} (it is the repository's testdata/ folder; CHATGLM_TESTDATA=<folder> points elsewhere)",
        dir.display()
    );
    dir
}

/// `rel` inside [`dir`], which must exist.
pub fn path(rel: &str) -> PathBuf {
    let p = dir().join(rel);
    assert!(p.exists(), "golden test data file missing: {}", p.display());
    p
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_repository_holds_the_data() {
        assert!(super::path("dev/golden/forward.json").is_file());
        assert!(super::path("chatglm2-tokenizer/tokenizer.model").is_file());
    }
}
