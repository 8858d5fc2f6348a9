//! Opening a GPU: library checks, context, stream, kernels, cuBLAS.

use crate::blas::Blas;
use crate::blas_lt::BlasLt;
use crate::compile::{ptx_for, SOURCES};
use crate::graph::{Launch, Recorder};
use crate::CudaError;
use cudarc::driver::{
    sys, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig, ValidAsZeroBits,
};
use std::collections::HashMap;
use std::sync::Arc;

/// What a device is.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    pub total_bytes: usize,
    pub multiprocessors: usize,
    /// Driver version as the driver reports it (e.g. 13000).
    pub driver_version: i32,
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cuda:{} {} (sm_{}{}, {} SMs, {:.1} GiB)",
            self.ordinal,
            self.name,
            self.compute_capability.0,
            self.compute_capability.1,
            self.multiprocessors,
            self.total_bytes as f64 / (1u64 << 30) as f64
        )
    }
}

/// Off: measured on the H200 (bench/RESULTS.md, runs 17–18), prefetching
/// 8 KiB of every row slows a decode step by 8% (the lines compete with the
/// kernel ahead, itself streaming), and prefetching only behind the
/// attention changes nothing measurable.
const DEFAULT_GEMV_PREFETCH: usize = 0;

/// Checks that a library can be loaded before cudarc touches it (cudarc
/// panics on a missing library).
fn require_library(present: bool, what: &str) -> Result<(), CudaError> {
    if present {
        Ok(())
    } else {
        Err(CudaError::Unavailable(format!(
            "the CUDA {what} library was not found (install the NVIDIA driver and CUDA 13 libraries, or add their folder to LD_LIBRARY_PATH)"
        )))
    }
}

/// Checks for the driver library and returns the number of CUDA devices.
pub fn device_count() -> Result<usize, CudaError> {
    // SAFETY: only tries to dlopen the driver library.
    require_library(unsafe { sys::is_culib_present() }, "driver (libcuda)")?;
    let n = CudaContext::device_count().map_err(|e| match e.0 {
        sys::CUresult::CUDA_ERROR_NO_DEVICE => CudaError::Unavailable("no CUDA device was found".into()),
        _ => CudaError::call("cuDeviceGetCount", e),
    })?;
    Ok(n.max(0) as usize)
}

/// Devices that can run kernels: [`device_count`] after checking that the
/// run-time compiler and BLAS libraries load too.
pub fn usable_device_count() -> Result<usize, CudaError> {
    let n = device_count()?;
    // SAFETY: only tries to dlopen a library, calls nothing in it.
    let nvrtc = unsafe { cudarc::nvrtc::sys::is_culib_present() };
    // SAFETY: as above.
    let cublas = unsafe { cudarc::cublas::sys::is_culib_present() };
    // SAFETY: as above.
    let cublaslt = unsafe { cudarc::cublaslt::sys::is_culib_present() };
    require_library(nvrtc, "run-time compiler (libnvrtc)")?;
    require_library(cublas, "BLAS (libcublas)")?;
    require_library(cublaslt, "BLAS (libcublasLt)")?;
    Ok(n)
}

/// When one-token 8-row mat-vec products take the kernels held to 5 blocks
/// per SM (91 registers) instead of gemv8's 4 (128 registers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemvLean {
    Never = 0,
    /// Where that makes the grid one wave and gemv8's is not (the 6B QKV product).
    ByShape = 1,
    /// Always (tests).
    Always = 2,
}

/// One GPU with its stream, compiled kernels and cuBLAS handle. All work is
/// queued on one non-default stream (graph capture needs one).
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    pub(crate) blas: Blas,
    /// cuBLASLt with per-shape plans (`CHATGLM_CUBLASLT=0`: cuBLAS only).
    pub(crate) blas_lt: Option<BlasLt>,
    kernels: HashMap<String, CudaFunction>,
    info: DeviceInfo,
    /// Programmatic dependent launch (sm_90 and newer; `CHATGLM_CUDA_PDL=0` turns it off).
    pdl: bool,
    /// Resident blocks per SM of the 4-row, 8-row and lean 8-row mat-vec kernels.
    pub(crate) gemv_blocks_per_sm: [usize; 3],
    /// Resident blocks per SM by (kernel, dynamic shared memory), as asked.
    occupancy: std::sync::Mutex<HashMap<(String, u32), usize>>,
    /// 0: choose the mat-vec variant by shape; 4 or 8: always that one
    /// (`CHATGLM_GEMV_ROWS`, for measurements).
    pub(crate) gemv_force_rows: std::sync::atomic::AtomicUsize,
    /// One-token 8-row products whose grid one wave of the kernels held to
    /// 5 blocks per SM holds, and one of gemv8 does not, take those
    /// (`CHATGLM_GEMV_LEAN=0` turns it off, for measurements).
    pub(crate) gemv_lean: std::sync::atomic::AtomicU8,
    /// Bytes of each weight row a mat-vec block starts towards L2 before
    /// waiting for the kernel ahead (`CHATGLM_GEMV_PREFETCH`, for measurements).
    pub(crate) gemv_prefetch: std::sync::atomic::AtomicUsize,
    /// Queued launches and captured graphs (graph.rs).
    pub(crate) recorder: std::sync::Mutex<Recorder>,
    /// `CHATGLM_CUDA_GRAPHS=0` turns graph replay off (launches one by one).
    pub(crate) graphs_enabled: std::sync::atomic::AtomicBool,
    /// Steps of 9..=64 tokens on the grouped quantized products (`CHATGLM_QMMA_GROUPED=0`: qmma's own;
    /// 32 int4 sequences 5,602–5,627 against 4,395 tok/s, bench/RESULTS.md run 87).
    pub(crate) grouped_products: std::sync::atomic::AtomicBool,
    /// The residual and QKV products of 17–32-token f16 steps take the qmmx
    /// module's kernels (`quant_group::grouped_kernel_name`; off: the qmma module's).
    pub(crate) qmmx_residual: std::sync::atomic::AtomicBool,
    /// The grouped products' partial sums and counters, allocated by the first step that needs them.
    pub(crate) group_scratch: std::sync::Mutex<Option<crate::quant_group::GroupScratch>>,
    /// One-token products stream through shared memory (`quant_stream`).
    pub(crate) one_token_stream: std::sync::atomic::AtomicBool,
    /// Recorded steps link their chained kernels through counters (chain.rs).
    pub(crate) chain_sync: std::sync::atomic::AtomicBool,
    pub(crate) chain: std::sync::Mutex<crate::chain::Chain>,
    /// Counters of the fused MLP blocks (mlp_stream.rs), allocated once.
    pub(crate) mlp_counters: std::sync::Mutex<Option<CudaSlice<i32>>>,
    pub(crate) mlp_launches: std::sync::atomic::AtomicU64,
    /// Blocks the short decode attention takes a (token, group) (ops.rs,
    /// `decode_short_subs`).
    pub(crate) decode_short_subs: std::sync::atomic::AtomicUsize,
    /// Its warps a block (`decode_short_warps`).
    pub(crate) decode_short_warps: std::sync::atomic::AtomicUsize,
    /// Dynamic shared memory quantize_x's launches ask for (bytes).
    pub(crate) quantize_x_smem: u32,
}

/// The module of `source`: from its cubin (SASS for `sm_{arch}`, no driver
/// JIT; `cubin` is what [`crate::prebuild::cubins_into`] gave, `None` where
/// cubins are off), else from PTX, which also serves when NVRTC cannot build
/// a cubin or the driver refuses one.
fn load_source_module(
    ctx: &Arc<CudaContext>,
    source: &crate::compile::Source,
    cubin: Option<Result<Vec<u8>, CudaError>>,
    arch: u32,
    versions: &str,
) -> Result<Arc<cudarc::driver::CudaModule>, CudaError> {
    if let Some(cubin) = cubin {
        match cubin {
            Ok(cubin) => match ctx.load_module(cudarc::nvrtc::Ptx::from_binary(cubin)) {
                Ok(module) => return Ok(module),
                Err(e) => {
                    tracing::warn!("{}.cu: the driver refused its sm_{arch} cubin ({e}); loading PTX", source.name)
                }
            },
            Err(e) => tracing::warn!("{}.cu: no sm_{arch} cubin ({e}); loading PTX", source.name),
        }
    }
    let ptx = ptx_for(source, arch, versions)?;
    ctx.load_module(ptx).map_err(|e| CudaError::call(format!("cuModuleLoadData({}.cu)", source.name), e))
}

impl Gpu {
    /// Opens device `ordinal`: checks the driver, NVRTC and cuBLAS libraries,
    /// creates the context and stream, and compiles (or loads cached) kernels.
    pub fn open(ordinal: usize) -> Result<Arc<Self>, CudaError> {
        let count = usable_device_count()?;
        if ordinal >= count {
            return Err(CudaError::Unavailable(format!(
                "there is no CUDA device {ordinal} ({count} device{} found)",
                if count == 1 { "" } else { "s" }
            )));
        }
        let ctx =
            CudaContext::new(ordinal).map_err(|e| CudaError::call(format!("cuCtxCreate(device {ordinal})"), e))?;
        // SAFETY: called before any allocation. cudarc's per-buffer events
        // would make every launch wait on events and break graph capture; this
        // crate orders all work on one stream instead.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| CudaError::call("cuStreamCreate", e))?;
        keep_pool_memory(&ctx)?;

        let cc =
            ctx.compute_capability().map_err(|e| CudaError::call("cuDeviceGetAttribute(compute capability)", e))?;
        let mut driver_version = 0i32;
        // SAFETY: writes one int.
        unsafe { sys::cuDriverGetVersion(&mut driver_version) }
            .result()
            .map_err(|e| CudaError::call("cuDriverGetVersion", e))?;
        let info = DeviceInfo {
            ordinal,
            name: ctx.name().map_err(|e| CudaError::call("cuDeviceGetName", e))?,
            compute_capability: cc,
            total_bytes: ctx.total_mem().map_err(|e| CudaError::call("cuDeviceTotalMem", e))?,
            multiprocessors: ctx
                .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .map_err(|e| CudaError::call("cuDeviceGetAttribute(multiprocessors)", e))?
                as usize,
            driver_version,
        };
        if cc.0 < 7 {
            return Err(CudaError::Unavailable(format!(
                "{} has compute capability {}.{}; ChatGLM.rs needs 7.0 (Volta) or newer",
                info.name, cc.0, cc.1
            )));
        }
        let arch = (cc.0 * 10 + cc.1) as u32;
        let nvrtc = nvrtc_version();
        let versions = crate::compile::cache_versions(driver_version, &nvrtc);
        tracing::info!(%versions, "kernel cache key");
        let sources: Vec<&crate::compile::Source> = SOURCES.iter().filter(|s| arch >= s.min_arch).collect();
        let mut cubins: Vec<Option<Result<Vec<u8>, CudaError>>> = if crate::cubin::cubins_enabled() {
            let dir = crate::compile::cache_dir();
            crate::prebuild::cubins_into(dir.as_deref(), &sources, arch, &versions).into_iter().map(Some).collect()
        } else {
            sources.iter().map(|_| None).collect()
        };
        let (mut modules, mut named) = (Vec::new(), Vec::new());
        for (source, cubin) in sources.iter().zip(cubins.drain(..)) {
            named.extend((source.kernels)().into_iter().map(|name| (name, modules.len())));
            modules.push(load_source_module(&ctx, source, cubin, arch, &versions)?);
        }
        // The driver places each kernel's code as it is looked up (lazy
        // loading), so this order is the code's layout in device memory.
        let mut kernels = HashMap::new();
        for (name, module) in crate::compile::load_order(named) {
            let f = modules[module]
                .load_function(&name)
                .map_err(|e| CudaError::call(format!("cuModuleGetFunction({name})"), e))?;
            kernels.insert(name, f);
        }
        // The flash kernels' two-stage tiles need more than the default 48 KiB
        // of shared memory; a device that cannot give it runs attention
        // without the flash kernels.
        for name in crate::ops::FLASH_KERNELS {
            if let Some(f) = kernels.get(name) {
                let wanted = crate::ops::FLASH_SMEM_BYTES as i32;
                let attr = sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
                if let Err(e) = f.set_attribute(attr, wanted) {
                    tracing::warn!("{name} off: {wanted} bytes of shared memory unavailable ({e})");
                    kernels.remove(name);
                }
            }
        }
        // The short-context decode attention merges its 8 warps through 65 KiB
        // of shared memory; without it, the tensor-core kernel runs every step.
        if let Some(f) = kernels.get(crate::ops::DECODE_SHORT_KERNEL) {
            let wanted = crate::ops::DECODE_SHORT_SMEM as i32;
            let attr = sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
            if let Err(e) = f.set_attribute(attr, wanted) {
                tracing::warn!(
                    "{} off: {wanted} bytes of shared memory unavailable ({e})",
                    crate::ops::DECODE_SHORT_KERNEL
                );
                kernels.remove(crate::ops::DECODE_SHORT_KERNEL);
            }
        }
        // The grouped and the streamed quantized products stage weights (and
        // activations) in shared memory; without the shared memory they ask
        // for, qmma's own run.
        let mut unavailable = Vec::new();
        // They, quantize_x (the kernel before each grouped one) and the decode
        // attention (before the dense product) ask for the whole carveout as
        // shared memory, so a block launched early (PDL) beside a running one
        // never needs its SM reconfigured (`CHATGLM_QMMG_CARVEOUT=0`: the
        // driver's choice; `=all`: every kernel, for measurements).
        let carveout_setting = std::env::var("CHATGLM_QMMG_CARVEOUT").unwrap_or_default();
        let carveout = carveout_setting != "0";
        let one_token_stream = std::env::var("CHATGLM_QMV").is_ok_and(|v| v == "1");
        for (name, f) in kernels.iter() {
            let staged = crate::quant_group::group_smem_of(name)
                .or_else(|| crate::quant_stream::stream_smem_of(name))
                .or_else(|| crate::mlp_stream::mlp_stream_smem_of(name));
            if let Some(wanted) = staged {
                let attr = sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
                if let Err(e) = f.set_attribute(attr, wanted as i32) {
                    tracing::warn!("{name} off: {wanted} bytes of shared memory unavailable ({e})");
                    unavailable.push(name.clone());
                }
            }
            // (The attention only where the streamed products follow it: beside
            // qmma's own, which leave the carveout to the driver, it made batch-1
            // int4 decode 15% slower, run 89.)
            let chained =
                staged.is_some() || name == "quantize_x" || (one_token_stream && name.starts_with("attn_decode"));
            if carveout && (chained || carveout_setting == "all") {
                let attr = sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT;
                if let Err(e) = f.set_attribute(attr, 100) {
                    tracing::warn!("{name}: no shared-memory carveout preference ({e})");
                }
            }
        }
        for name in unavailable.drain(..) {
            kernels.remove(&name);
        }
        // quantize_x's shared memory (quant::quantize_x_smem), where the device
        // gives it; without, its blocks may share SMs.
        let mut qx_smem = crate::quant::quantize_x_smem();
        if let (true, Some(f)) = (qx_smem > 48 << 10, kernels.get("quantize_x")) {
            let attr = sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
            if let Err(e) = f.set_attribute(attr, qx_smem as i32) {
                tracing::debug!("quantize_x: {qx_smem} bytes of shared memory unavailable ({e}); none asked for");
                qx_smem = 0;
            }
        }
        // Quantized products that stage their activations (a measurement
        // variant) take more than the default 48 KiB.
        if crate::quant::qmma_stages_x() {
            let wanted = crate::quant::QMMA_STAGE_SMEM_MAX as i32;
            let attr = sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
            for (name, f) in kernels.iter().filter(|(n, _)| n.starts_with("qmma_") && n.ends_with("_0")) {
                f.set_attribute(attr, wanted).map_err(|e| CudaError::call(format!("shared memory of {name}"), e))?;
            }
        }
        let blas = Blas::new(&stream)?;
        let blas_lt = if std::env::var("CHATGLM_CUBLASLT").is_ok_and(|v| v == "0") {
            None
        } else {
            match BlasLt::new(&stream) {
                Ok(lt) => Some(lt),
                Err(e) => {
                    tracing::warn!("cuBLASLt unavailable, using cuBLAS: {e}");
                    None
                }
            }
        };
        let pdl = cc.0 >= 9 && std::env::var("CHATGLM_CUDA_PDL").map_or(true, |v| v != "0");
        let occupancy = |name: &str| {
            kernels
                .get(name)
                .and_then(|f| f.occupancy_max_active_blocks_per_multiprocessor(128, 0, None).ok())
                .map_or(1, |b| (b as usize).max(1))
        };
        let gemv_blocks_per_sm = [occupancy("gemv_1_1_0"), occupancy("gemv8_1_1_0"), occupancy("gemv8l_1_1_0")];
        let force = std::env::var("CHATGLM_GEMV_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(Arc::new(Self {
            ctx,
            stream,
            blas,
            blas_lt,
            kernels,
            info,
            pdl,
            gemv_blocks_per_sm,
            occupancy: std::sync::Mutex::new(HashMap::new()),
            gemv_force_rows: std::sync::atomic::AtomicUsize::new(force),
            gemv_lean: (if std::env::var("CHATGLM_GEMV_LEAN").is_ok_and(|v| v == "0") {
                GemvLean::Never
            } else {
                GemvLean::ByShape
            } as u8)
                .into(),
            gemv_prefetch: std::env::var("CHATGLM_GEMV_PREFETCH")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_GEMV_PREFETCH)
                .into(),

            recorder: Default::default(),
            graphs_enabled: std::env::var("CHATGLM_CUDA_GRAPHS").map_or(true, |v| v != "0").into(),
            grouped_products: (!std::env::var("CHATGLM_QMMA_GROUPED").is_ok_and(|v| v == "0")).into(),
            qmmx_residual: true.into(),
            group_scratch: Default::default(),
            one_token_stream: one_token_stream.into(),
            chain_sync: (crate::chain::chain_sync_requested() && pdl).into(),
            chain: Default::default(),
            mlp_counters: Default::default(),
            mlp_launches: Default::default(),
            decode_short_subs: crate::ops::decode_short_subs().into(),
            decode_short_warps: crate::ops::decode_short_warps().into(),
            quantize_x_smem: qx_smem,
        }))
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub(crate) fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Binds the context to the calling thread (needed before library calls
    /// from a thread that has not used this GPU yet).
    pub fn bind(&self) -> Result<(), CudaError> {
        self.ctx.bind_to_thread().map_err(|e| CudaError::call("cuCtxSetCurrent", e))
    }

    /// Device memory held for library scratch space (cuBLASLt's workspace).
    pub fn workspace_bytes(&self) -> usize {
        let grouped = self.group_scratch.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map_or(0, |s| s.bytes());
        self.blas_lt.as_ref().map_or(0, |lt| lt.workspace_bytes()) + grouped
    }

    /// `(free, total)` device memory in bytes.
    pub fn memory(&self) -> Result<(usize, usize), CudaError> {
        self.ctx.mem_get_info().map_err(|e| CudaError::call("cuMemGetInfo", e))
    }

    /// Sets how many bytes of each weight row a mat-vec block prefetches
    /// towards L2 before the kernel ahead of it finishes (0: none), for
    /// measurements.
    pub fn set_gemv_prefetch(&self, bytes: usize) {
        self.gemv_prefetch.store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Forces the 4- or 8-row mat-vec (0: by shape), for measurements.
    pub fn force_gemv_rows(&self, rows: usize) {
        self.gemv_force_rows.store(rows, std::sync::atomic::Ordering::Relaxed);
    }

    /// When one-token 8-row products use the kernels held to 5 blocks per
    /// SM (default: [`GemvLean::ByShape`]), for tests and measurements.
    pub fn set_gemv_lean(&self, lean: GemvLean) {
        self.gemv_lean.store(lean as u8, std::sync::atomic::Ordering::Relaxed);
    }

    /// Blocks of `threads` threads and `smem` bytes of dynamic shared memory
    /// of kernel `name` that fit on one multiprocessor at once (≥ 1).
    pub(crate) fn blocks_per_sm(&self, name: &str, threads: u32, smem: u32) -> usize {
        let mut cache = self.occupancy.lock().unwrap_or_else(|e| e.into_inner());
        *cache.entry((name.to_string(), smem)).or_insert_with(|| {
            self.kernels
                .get(name)
                .and_then(|f| f.occupancy_max_active_blocks_per_multiprocessor(threads, smem as usize, None).ok())
                .map_or(1, |b| (b as usize).max(1))
        })
    }

    /// Whether kernel `name` was compiled for this device.
    pub fn has_kernel(&self, name: &str) -> bool {
        self.kernels.contains_key(name)
    }

    pub(crate) fn kernel(&self, name: &str) -> Result<&CudaFunction, CudaError> {
        self.kernels.get(name).ok_or_else(|| CudaError::invalid(name, "this kernel is not available on this device"))
    }

    /// `n` elements of device memory, contents unspecified.
    pub fn alloc<T: DeviceRepr>(&self, n: usize, what: &str) -> Result<CudaSlice<T>, CudaError> {
        self.flush_recorded(false)?;
        let bytes = n.max(1) * std::mem::size_of::<T>();
        // SAFETY: the memory is only read after being written by a kernel or a copy.
        unsafe { self.stream.alloc::<T>(n.max(1)) }.map_err(|e| self.oom_or(e, what, bytes))
    }

    /// `n` zeroed elements.
    pub fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        n: usize,
        what: &str,
    ) -> Result<CudaSlice<T>, CudaError> {
        self.flush_recorded(false)?;
        let bytes = n.max(1) * std::mem::size_of::<T>();
        self.stream.alloc_zeros::<T>(n.max(1)).map_err(|e| self.oom_or(e, what, bytes))
    }

    fn oom_or(&self, e: cudarc::driver::DriverError, what: &str, bytes: usize) -> CudaError {
        if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            let (free, total) = self.memory().unwrap_or((0, 0));
            CudaError::OutOfMemory { what: what.into(), bytes, free, total }
        } else {
            CudaError::call(format!("cuMemAlloc({what}, {bytes} bytes)"), e)
        }
    }

    /// Copies `src` to the start of `dst` (which must be at least as long).
    pub fn upload<T: DeviceRepr>(&self, src: &[T], dst: &mut CudaSlice<T>, what: &str) -> Result<(), CudaError> {
        if src.len() > dst.len() {
            return Err(CudaError::invalid(
                format!("upload {what}"),
                format!("{} elements into a buffer of {}", src.len(), dst.len()),
            ));
        }
        self.flush_recorded(false)?;
        let mut view = dst.slice_mut(..src.len());
        self.stream.memcpy_htod(src, &mut view).map_err(|e| CudaError::call(format!("cuMemcpyHtoDAsync({what})"), e))
    }

    /// A new device buffer holding `src`.
    pub fn upload_new<T: DeviceRepr>(&self, src: &[T], what: &str) -> Result<CudaSlice<T>, CudaError> {
        let mut dst = self.alloc::<T>(src.len(), what)?;
        self.upload(src, &mut dst, what)?;
        Ok(dst)
    }

    /// Copies the first `out.len()` elements of `src` to the host (waits for
    /// the stream).
    pub fn download<T: DeviceRepr>(&self, src: &CudaSlice<T>, out: &mut [T], what: &str) -> Result<(), CudaError> {
        if out.len() > src.len() {
            return Err(CudaError::invalid(
                format!("download {what}"),
                format!("{} elements from a buffer of {}", out.len(), src.len()),
            ));
        }
        self.flush_recorded(false)?;
        let view = src.slice(..out.len());
        self.stream.memcpy_dtoh(&view, out).map_err(|e| CudaError::call(format!("cuMemcpyDtoHAsync({what})"), e))?;
        self.synchronize()
    }

    /// Waits for all queued work; reports asynchronous kernel faults.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.flush_recorded(false)?;
        self.stream.synchronize().map_err(|e| CudaError::call("cuStreamSynchronize", e))
    }

    /// Launches `f` on the stream (or queues it while recording: graph.rs),
    /// with programmatic dependent launch where the device has it (every
    /// kernel of this crate waits for its predecessor's results with
    /// `griddepcontrol.wait`).
    pub(crate) fn launch(
        &self,
        f: &CudaFunction,
        args: Args,
        kernel: &str,
        cfg: LaunchConfig,
    ) -> Result<(), CudaError> {
        self.break_chain();
        self.launch_unbroken(f, args, kernel, cfg)
    }

    /// Whether launches use programmatic dependent launch.
    pub(crate) fn pdl_enabled(&self) -> bool {
        self.pdl
    }

    /// [`Self::launch`] for a kernel that keeps the chain (chain.rs).
    pub(crate) fn launch_unbroken(
        &self,
        f: &CudaFunction,
        args: Args,
        kernel: &str,
        cfg: LaunchConfig,
    ) -> Result<(), CudaError> {
        let launch = Launch { func: f.cu_function(), args, cfg, kernel: kernel.to_string() };
        match self.record(crate::graph::Op::Kernel(launch)) {
            Some(crate::graph::Op::Kernel(l)) => self.launch_raw(&l),
            _ => Ok(()),
        }
    }

    pub(crate) fn launch_raw(&self, l: &Launch) -> Result<(), CudaError> {
        let cfg = l.cfg;
        let fail = |message: String| CudaError::Launch {
            kernel: l.kernel.clone(),
            grid: cfg.grid_dim,
            block: cfg.block_dim.0,
            shared_bytes: cfg.shared_mem_bytes,
            message,
        };
        self.bind().map_err(|e| fail(e.to_string()))?;
        let mut attr = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value: sys::CUlaunchAttributeValue { programmaticStreamSerializationAllowed: 1 },
        };
        let config = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: u32::from(self.pdl),
        };
        let mut params = l.args.pointers();
        // SAFETY: callers check every pointer and size argument against the
        // buffers they describe before building `args`; `params` points into
        // `l.args`, which outlives the call (the driver only reads through
        // them); the attribute outlives the call.
        unsafe { sys::cuLaunchKernelEx(&config, l.func, params.as_mut_ptr(), std::ptr::null_mut()) }
            .result()
            .map_err(|e| fail(format!("{e:?}")))
    }
}

/// The raw device address of a buffer (kernels take plain pointers).
pub fn device_ptr<T>(buf: &CudaSlice<T>) -> u64 {
    buf.device_ptr(buf.stream()).0
}

/// Keeps freed stream-ordered memory in the pool: by default the driver
/// returns it to the OS at every synchronisation, so a step that frees and
/// allocates would pay for fresh mappings each time.
fn keep_pool_memory(ctx: &Arc<CudaContext>) -> Result<(), CudaError> {
    if !ctx.has_async_alloc() {
        return Ok(());
    }
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold = u64::MAX;
    // SAFETY: writes the pool handle; then sets one attribute from a u64.
    unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device())
            .result()
            .map_err(|e| CudaError::call("cuDeviceGetDefaultMemPool", e))?;
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
        .result()
        .map_err(|e| CudaError::call("cuMemPoolSetAttribute(release threshold)", e))?;
    }
    Ok(())
}

fn nvrtc_version() -> String {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: writes two ints; the library was checked before.
    let ok = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if ok == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        format!("{major}.{minor}")
    } else {
        "unknown".into()
    }
}

/// Kernel arguments, each held in 8-byte slots (pointers, i64, and 4-byte
/// i32/f32 in the low bytes: the driver copies each parameter's size from
/// its slot, and this is little-endian x86-64/aarch64); a struct parameter
/// takes consecutive slots laid out as its C definition.
#[derive(Default)]
pub(crate) struct Args {
    slots: Vec<u64>,
    /// First slot of each parameter.
    starts: Vec<usize>,
}

/// A value that can be a kernel argument.
pub(crate) trait ArgValue {
    fn slot(&self) -> u64;
}

impl ArgValue for u64 {
    fn slot(&self) -> u64 {
        *self
    }
}

impl ArgValue for i64 {
    fn slot(&self) -> u64 {
        *self as u64
    }
}

impl ArgValue for i32 {
    fn slot(&self) -> u64 {
        *self as u32 as u64
    }
}

impl ArgValue for f32 {
    fn slot(&self) -> u64 {
        self.to_bits() as u64
    }
}

impl Args {
    pub(crate) fn arg(&mut self, v: &impl ArgValue) -> &mut Self {
        self.starts.push(self.slots.len());
        self.slots.push(v.slot());
        self
    }

    /// A struct parameter of 8-byte-aligned fields, already packed into slots.
    pub(crate) fn arg_struct(&mut self, slots: &[u64]) -> &mut Self {
        self.starts.push(self.slots.len());
        self.slots.extend_from_slice(slots);
        self
    }

    /// The argument values, for comparing launches.
    pub(crate) fn values(&self) -> &[u64] {
        &self.slots
    }

    /// Pointers to each parameter's first slot, as cuLaunchKernelEx takes
    /// them (it only reads through them).
    pub(crate) fn pointers(&self) -> Vec<*mut std::ffi::c_void> {
        self.starts.iter().map(|&i| (&self.slots[i] as *const u64).cast_mut().cast()).collect()
    }
}

#[cfg(target_endian = "big")]
compile_error!("kernel argument slots assume a little-endian host");
