//! Which decode attention a step runs: the short-context kernel (one block
//! per token and group, `chatglm_cuda::Gpu::attention_decode_short`) for
//! steps whose longest context is at most a limit, else the split
//! tensor-core kernel.

use super::CudaBackend;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};

/// Longest context (cache rows, this step's token included) up to which a
/// step takes the short-context kernel by default.
pub(super) const DEFAULT_SHORT_LIMIT: usize = 512;

/// The setting and a count of launches (for tests).
pub(super) struct ShortAttention {
    limit: AtomicUsize,
    launches: AtomicU64,
}

impl ShortAttention {
    /// From `CHATGLM_DECODE_SHORT` (the limit; 0: never), else the default.
    pub(super) fn from_env() -> Self {
        Self::new(parse_limit(std::env::var("CHATGLM_DECODE_SHORT").ok().as_deref()))
    }

    fn new(limit: usize) -> Self {
        Self { limit: limit.into(), launches: 0.into() }
    }

    /// Whether a step whose longest context is `longest` rows takes it.
    pub(super) fn takes(&self, longest: usize) -> bool {
        longest <= self.limit.load(Relaxed)
    }

    pub(super) fn launched(&self) {
        self.launches.fetch_add(1, Relaxed);
    }
}

/// The limit a `CHATGLM_DECODE_SHORT` value sets: a count of keys, else
/// (with a warning naming the value) the default.
fn parse_limit(value: Option<&str>) -> usize {
    match value.map(str::trim) {
        None | Some("") => DEFAULT_SHORT_LIMIT,
        Some(v) => v.parse().unwrap_or_else(|_| {
            tracing::warn!("CHATGLM_DECODE_SHORT={v:?} is not a count of keys; using {DEFAULT_SHORT_LIMIT}");
            DEFAULT_SHORT_LIMIT
        }),
    }
}

impl CudaBackend {
    /// Decode steps whose longest context is at most `limit` rows run the
    /// short-context attention kernel (0: none; `usize::MAX`: every one it
    /// supports).
    pub fn set_short_attention(&self, limit: usize) {
        self.short_attention.limit.store(limit, Relaxed);
    }

    /// The short-context kernel's blocks a (token, group) of a one-token
    /// step (1, 2, 4, 8 or 16) and warps a block (4 or 8)
    /// (`chatglm_cuda::Gpu::set_decode_short_blocks`; the same outputs).
    pub fn set_short_attention_blocks(&self, subs: usize, warps: usize) -> Result<(), chatglm_cuda::CudaError> {
        self.gpu.set_decode_short_blocks(subs, warps)
    }

    /// Short-context attention launches (or graph recordings) so far.
    pub fn short_attention_launches(&self) -> u64 {
        self.short_attention.launches.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_is_a_count_of_keys_or_the_default() {
        assert_eq!(parse_limit(None), DEFAULT_SHORT_LIMIT);
        assert_eq!(parse_limit(Some(" ")), DEFAULT_SHORT_LIMIT);
        assert_eq!(parse_limit(Some("0")), 0);
        assert_eq!(parse_limit(Some(" 1024 ")), 1024);
        assert_eq!(parse_limit(Some("-1")), DEFAULT_SHORT_LIMIT);
        assert_eq!(parse_limit(Some("many")), DEFAULT_SHORT_LIMIT);
    }

    #[test]
    fn the_limit_includes_its_own_length() {
        let s = ShortAttention::new(512);
        assert!(s.takes(1) && s.takes(512) && !s.takes(513));
        assert!(!ShortAttention::new(0).takes(1));
        assert!(ShortAttention::new(usize::MAX).takes(usize::MAX));
    }
}
