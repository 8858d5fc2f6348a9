//! CUDA kernels for ChatGLM.rs.
//!
//! Principal types: [`Gpu`] (one device: context, stream, NVRTC-compiled
//! kernels, cuBLAS) and the launch functions in [`ops`] (mat-vec, cuBLAS
//! products, RMSNorm, RoPE + paged-KV append, split-context and tensor-core
//! attention). What comes in: raw device addresses and shapes, checked on the
//! host before each launch. What goes out: results in device memory.
//!
//! The libraries are loaded at run time (`cudarc` with dynamic loading), so
//! every build runs on machines without CUDA; [`Gpu::open`] says in one
//! sentence what is missing. Kernels are CUDA C sources embedded in the
//! binary (`src/kernels/*.cu`), compiled by NVRTC for the device present and
//! cached on disk.

// Kernel launches take their shapes as separate arguments, as the kernels do.
#![allow(clippy::too_many_arguments)]

mod blas;
mod blas_lt;
mod chain;
mod compile;
mod cubin;
mod device;
mod error;
mod graph;
mod host;
mod mlp_stream;
pub mod ops;
mod prebuild;
pub mod quant;
mod quant_group;
mod quant_stream;

pub use compile::{compile_all, write_kernel_cache};
pub use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
pub use device::{device_count, device_ptr, usable_device_count, DeviceInfo, GemvLean, Gpu};
pub use error::CudaError;
pub use graph::{GraphStats, MAX_GRAPHS};
pub use host::{HostBuffer, MappedHost, StagingBuffer};
pub use mlp_stream::MlpBlock;
pub use ops::{
    argmax_scratch_ints, argmax_slices, sample_row_words, AttentionDims, AttentionWork, DType, EmbedRowCache, GemvMode,
    GgmlBlock, KvFormat, RopeArgs, SplitPlan, EMBED_CACHE_MAX_ROWS, SAMPLE_ROW_WORDS,
};
