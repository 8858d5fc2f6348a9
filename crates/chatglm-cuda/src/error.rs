//! Errors of the CUDA layer: each names the call or kernel that failed and,
//! for launches, the launch shape.

/// A failure of the GPU layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CudaError {
    /// No usable driver, library or device; the message is one sentence for the user.
    #[error("{0}")]
    Unavailable(String),
    /// A driver, NVRTC or cuBLAS call returned an error.
    #[error("CUDA call {call} failed: {message}")]
    Call { call: String, message: String },
    /// A kernel launch failed.
    #[error("CUDA kernel {kernel} (grid {grid:?}, block {block}, {shared_bytes} B shared memory) failed: {message}")]
    Launch { kernel: String, grid: (u32, u32, u32), block: u32, shared_bytes: u32, message: String },
    /// NVRTC rejected a kernel source (a bug in this crate).
    #[error("NVRTC could not compile {file}.cu for {arch}: {log}")]
    Compile { file: String, arch: String, log: String },
    /// A host-side check before a launch failed (shapes, sizes).
    #[error("{op}: {message}")]
    Invalid { op: String, message: String },
    /// Device memory ran out.
    #[error("out of GPU memory: {what} needs {bytes} bytes ({free} bytes free of {total})")]
    OutOfMemory { what: String, bytes: usize, free: usize, total: usize },
}

impl CudaError {
    pub(crate) fn call(call: impl Into<String>, e: impl std::fmt::Debug) -> Self {
        Self::Call { call: call.into(), message: format!("{e:?}") }
    }

    pub(crate) fn invalid(op: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { op: op.into(), message: message.into() }
    }
}
