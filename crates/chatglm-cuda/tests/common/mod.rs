//! What the GPU test binaries share.

use chatglm_cuda::Gpu;
use std::sync::Arc;

/// The first GPU, or `None` (the test skips) where none can be used —
/// unless `CHATGLM_REQUIRE_GPU` is set, which makes that a failure.
pub fn gpu() -> Option<Arc<Gpu>> {
    match Gpu::open(0) {
        Ok(g) => Some(g),
        Err(e) => {
            if std::env::var_os("CHATGLM_REQUIRE_GPU").is_some() {
                panic!("CHATGLM_REQUIRE_GPU is set but the GPU cannot be used: {e}");
            }
            eprintln!("skipped: no usable CUDA GPU ({e})");
            None
        }
    }
}
