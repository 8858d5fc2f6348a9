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

/// A JSON file of the dev model's golden outputs (`dev/golden/<name>`).
pub fn golden(name: &str) -> serde_json::Value {
    let p = path(&format!("dev/golden/{name}"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", p.display()))
}

/// A JSON array of numbers as f32.
pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().expect("a JSON array").iter().map(|x| x.as_f64().expect("a number") as f32).collect()
}

/// A JSON array of token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("a JSON array").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
}

/// A JSON chat history: `[[query, response], …]`.
pub fn history(v: &serde_json::Value) -> Vec<(String, String)> {
    v.as_array()
        .expect("a JSON array")
        .iter()
        .map(|p| (p[0].as_str().expect("a query").to_string(), p[1].as_str().expect("a response").to_string()))
        .collect()
}

/// Largest absolute difference; a NaN on either side counts as infinite.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| if x.is_nan() || y.is_nan() { f32::INFINITY } else { (x - y).abs() })
        .fold(0.0, f32::max)
}

/// Index of the largest value (the first of equals).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_repository_holds_the_data() {
        assert!(super::path("dev/golden/forward.json").is_file());
        assert!(super::path("chatglm2-tokenizer/tokenizer.model").is_file());
    }
}
