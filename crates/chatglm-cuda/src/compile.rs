//! Run-time compilation of the embedded `.cu` sources with NVRTC, cached on
//! disk by (source, architecture, driver, NVRTC) so a second start loads
//! instead of compiling: SASS for the device's architecture (`cubin.rs`, the
//! default), or PTX with `CHATGLM_KERNEL_FORMAT=ptx` (the driver then caches
//! its own PTX → SASS step).

use crate::CudaError;
use cudarc::nvrtc::{CompileOptions, Ptx};
use std::path::PathBuf;

const COMMON: &str = include_str!("kernels/common.cuh");

/// One kernel file.
pub(crate) struct Source {
    pub name: &'static str,
    pub text: &'static str,
    /// Lowest compute capability (major × 10 + minor) it compiles for.
    pub min_arch: u32,
    /// The `extern "C"` kernels it defines (macro instantiations included).
    pub kernels: fn() -> Vec<String>,
}

fn elementwise_kernels() -> Vec<String> {
    let mut k: Vec<String> = [
        "rms_norm",
        "copy_f32",
        "kv_prefix_rows",
        "add_inplace",
        "add_bias",
        "swiglu",
        "gather_rows",
        "to_f16",
        "to_bf16",
        "argmax_rows",
        "stage_step",
        "chain_reset",
    ]
    .map(String::from)
    .into();
    k.extend(["rms_norm_h1", "rms_norm_h2", "swiglu_h1", "swiglu_h2", "swiglu_hh1", "swiglu_hh2"].map(String::from));
    for t in 0..3 {
        k.push(format!("embed_{t}"));
        k.push(format!("fill_random_{t}"));
    }
    k.extend((0..5).map(|b| format!("embed_ggml_{b}")));
    k
}

fn gemv_kernels() -> Vec<String> {
    let mut k = Vec::new();
    for t in 0..3 {
        for mode in 0..3 {
            for nt in 1..=crate::ops::GEMV_MAX_TOKENS {
                k.push(format!("gemv_{t}_{nt}_{mode}"));
                k.push(format!("gemv8_{t}_{nt}_{mode}"));
            }
            k.push(format!("gemv_scalar_{t}_{mode}"));
        }
        for nt in 1..=crate::ops::GEMV_MAX_TOKENS {
            k.push(format!("gemv_qkv_{t}_{nt}"));
            k.push(format!("gemv8_qkv_{t}_{nt}"));
        }
    }
    for t in 1..3 {
        k.extend((0..3).map(|mode| format!("gemv8l_{t}_1_{mode}")));
        k.push(format!("gemv8l_qkv_{t}_1"));
    }
    k
}

fn qmma_kernels() -> Vec<String> {
    let mut k: Vec<String> = ["quantize_x", "fill_bytes", "fill_u16"].map(String::from).into();
    for f in 0..4 {
        k.push(format!("qdequant_{f}"));
        for mode in 0..4 {
            k.push(format!("qmma_{f}_1_{mode}_1"));
            k.push(format!("qmma_{f}_1_{mode}_2"));
            for nt8 in [1, 2, 4, 8] {
                k.push(format!("qmma_{f}_{nt8}_{mode}_0"));
            }
            for nt8 in [2, 4, 8] {
                k.push(format!("qmmg_{f}_{nt8}_{mode}"));
                k.push(format!("qmmh_{f}_{nt8}_{mode}"));
            }
            k.push(format!("qmv_{f}_{mode}"));
        }
        k.push(format!("mlps_{f}"));
    }
    k
}

fn attention_kernels() -> Vec<String> {
    let mut k: Vec<String> =
        ["rope_kv_0", "rope_kv_1", "rope_kv_2", "attn_split_0", "attn_split_1", "attn_split_2", "attn_combine"]
            .map(String::from)
            .into();
    k.extend([1, 2, 4, 8, 16].map(|hg| format!("attn_decode_{hg}")));
    k.extend([1, 2, 4, 8, 16].map(|hg| format!("attn_decode_q8_{hg}")));
    k
}

fn flash_kernels() -> Vec<String> {
    crate::ops::FLASH_KERNELS.map(String::from).into()
}

fn sample_kernels() -> Vec<String> {
    vec!["sample_rows".into()]
}

fn qmmx_kernels() -> Vec<String> {
    (0..4).flat_map(|f| (1..4).map(move |mode| format!("qmmx_{f}_4_{mode}"))).collect()
}

fn embed_cached_kernels() -> Vec<String> {
    let mut k: Vec<String> = (0..3).map(|t| format!("embed_cached_{t}")).collect();
    k.extend((0..5).map(|b| format!("embed_ggml_cached_{b}")));
    k
}

fn decode_mma_kernels() -> Vec<String> {
    vec!["attn_decode_mma16".into(), "attn_decode_mma16_w4".into(), crate::ops::DECODE_SHORT_KERNEL.into()]
}

pub(crate) const SOURCES: &[Source] = &[
    Source {
        name: "elementwise",
        text: include_str!("kernels/elementwise.cu"),
        min_arch: 0,
        kernels: elementwise_kernels,
    },
    Source {
        name: "gemv",
        text: concat!(include_str!("kernels/gemv_epilogue.cuh"), include_str!("kernels/gemv.cu")),
        min_arch: 0,
        kernels: gemv_kernels,
    },
    // mma.sync m16n8k32 on 8-bit integers needs Ampere or newer.
    Source {
        name: "qmma",
        text: concat!(
            include_str!("kernels/mma.cuh"),
            include_str!("kernels/gemv_epilogue.cuh"),
            include_str!("kernels/qmma.cu"),
            include_str!("kernels/qmma_group.cu"),
            include_str!("kernels/qmv.cu"),
            include_str!("kernels/mlp_stream.cu")
        ),
        min_arch: 80,
        kernels: qmma_kernels,
    },
    Source {
        name: "attention",
        text: concat!(include_str!("kernels/decode.cuh"), include_str!("kernels/attention.cu")),
        min_arch: 0,
        kernels: attention_kernels,
    },
    Source { name: "sample", text: include_str!("kernels/sample.cu"), min_arch: 0, kernels: sample_kernels },
    // mma.sync m16n8k16 with f16 inputs needs Ampere or newer.
    Source {
        name: "flash",
        text: concat!(include_str!("kernels/mma.cuh"), include_str!("kernels/flash.cu")),
        min_arch: 80,
        kernels: flash_kernels,
    },
    Source {
        name: "decode_mma",
        text: concat!(
            include_str!("kernels/mma.cuh"),
            include_str!("kernels/decode.cuh"),
            include_str!("kernels/decode_mma.cu"),
            include_str!("kernels/decode_short.cu")
        ),
        min_arch: 80,
        kernels: decode_mma_kernels,
    },
    // Last: the lookup orders place a module's kernels after those listed
    // before it, so this one's code moves no other kernel (kernels/qmmx.cuh).
    Source {
        name: "qmmx",
        text: concat!(
            include_str!("kernels/qmmx.cuh"),
            include_str!("kernels/mma.cuh"),
            include_str!("kernels/gemv_epilogue.cuh"),
            include_str!("kernels/qmma.cu"),
            include_str!("kernels/qmma_group.cu")
        ),
        min_arch: 80,
        kernels: qmmx_kernels,
    },
    // After it, the embedding gathers through a device row cache: elementwise.cu
    // again (only these kernels are looked up here) and the cached forms, so
    // that neither the elementwise module nor any code placed before this one
    // changes (kernels/embed_cached.cu).
    Source {
        name: "embed_cached",
        text: concat!(include_str!("kernels/elementwise.cu"), include_str!("kernels/embed_cached.cu")),
        min_arch: 0,
        kernels: embed_cached_kernels,
    },
];

/// Whether a kernel runs in every single-sequence decode step (the one-token
/// quantized products and mat-vecs): [`load_order`] places them apart from
/// the rest (by default last within their module).
fn decode_hot(name: &str) -> bool {
    let p: Vec<&str> = name.split('_').collect();
    matches!(p.as_slice(), ["qmma", _, "1", _, "1" | "2"]) || name.starts_with("qmv_") || name.starts_with("mlps_")
}

/// The order kernels are looked up in, with the module each comes from.
/// With the driver's lazy loading a kernel's code is placed in device memory
/// as it is looked up, one after another, so this order is the code's layout —
/// and the layout alone moves batch-1 q4_0 decode by up to 3.5% with the same
/// SASS (bench/RESULTS.md, runs 243–249), only while consecutive kernels
/// overlap under programmatic dependent launch (with `CHATGLM_CUDA_PDL=0`
/// every layout decodes the same, run 249). No model of which layouts are
/// fast was found, so the default is the measured best for the current
/// cubins: since session 38 `hot-last` (within each module, as listed, the
/// decode step's kernels last; 749.4–751.0 tok/s against 742.5–743.7 for
/// session 35–37's `global-2`, runs 263–264, after the wide SwiGLU groups
/// changed the qmma module). `CHATGLM_CUDA_LOAD_ORDER` picks another for
/// measurements: `list` (module by module as listed), `hot` (within each
/// module, the decode step's kernels first), `reverse`, `global` (every
/// decode-step kernel first, as listed), `global-2` and `global-3` (below);
/// any other value: the default, with a warning.
pub(crate) fn load_order(mut named: Vec<(String, usize)>) -> Vec<(String, usize)> {
    let setting = std::env::var("CHATGLM_CUDA_LOAD_ORDER").ok();
    const KNOWN: [&str; 7] = ["list", "hot", "hot-last", "reverse", "global", "global-2", "global-3"];
    let order = match setting.as_deref() {
        Some(v) if !KNOWN.contains(&v) => {
            tracing::warn!("CHATGLM_CUDA_LOAD_ORDER={v:?} is not one of {KNOWN:?}; using hot-last");
            "hot-last"
        }
        Some(v) => v,
        None => "hot-last",
    };
    // Stable sorts: the listed order holds within each class.
    match order {
        "list" => {}
        "hot" => named.sort_by_key(|(n, m)| (*m, !decode_hot(n))),
        // The default (`hot-last`): run 263–264's best for this build's
        // cubins, 749.4–751.0 tok/s against `global-2`'s 742.5–743.7.
        "hot-last" => named.sort_by_key(|(n, m)| (*m, decode_hot(n))),
        "reverse" => named.reverse(),
        "global" => named.sort_by_key(|(n, _)| !decode_hot(n)),
        // `global-3`: `global-2` with the qmma module's cold kernels (the
        // grouped products among them) behind every other module's, so that
        // the step's small kernels in other modules (the attention, argmax,
        // embedding) no longer move with the grouped products' sizes.
        "global-3" => {
            let qmma = named.iter().find(|(n, _)| n.starts_with("qmma_")).map(|(_, m)| *m);
            named.sort_by_key(|(n, m)| {
                let hot = decode_hot(n);
                (!hot, !hot && Some(*m) == qmma, !n.ends_with("_2"))
            })
        }
        // `global-2` (the default from session 35 to 38): every kernel named
        // `…_2` (the one-token products' fast form, and the third variant of
        // the others) ahead of the rest of its class. Which placements are
        // fast is not understood: keeping the cold kernels in list order behind
        // the decode step's decoded 738 tok/s where this order's 743–746 (runs
        // 245–248) with session 35's cubins.
        _ => named.sort_by_key(|(n, _)| (!decode_hot(n), !n.ends_with("_2"))),
    }
    // The qmmx module, then the cached embedding gathers, last under every
    // order: their code moves no other kernel.
    named.sort_by_key(|(n, _)| (n.contains("_cached_"), n.starts_with("qmmx_")));
    // `CHATGLM_CUDA_QMMX_ORDER` (placement experiments for batched decode;
    // the qmmx module is behind every kernel a one-token step runs, so its
    // order moves none of them): `swiglu-first` (each format's SwiGLU product,
    // `…_2`, ahead of the others: the qmmx order `global-2` gives), `step`
    // (the products in the order a layer runs them, mode by mode over the
    // formats: QKV, dense and 4h→h, SwiGLU; the default since run 350: +0.45%
    // at 32 sequences), `list` (as listed), or the modes named in an order of
    // one's own (`3,2,1`), optionally format by format (`format:3,1,2`).
    let qmmx_order = std::env::var("CHATGLM_CUDA_QMMX_ORDER").ok();
    let qmmx_at = named.iter().position(|(n, _)| n.starts_with("qmmx_"));
    if let Some(at) = qmmx_at {
        let end = named[at..].iter().position(|(n, _)| !n.starts_with("qmmx_")).map_or(named.len(), |k| at + k);
        named[at..end].sort_by_key(|(n, _)| qmmx_rank(qmmx_order.as_deref(), n));
    }
    // `CHATGLM_CUDA_GROUPED_LAST=1`: the grouped products (`qmmg_`, `qmmh_`)
    // behind every other kernel, so that their code's size moves no other
    // kernel (the one-token products sit behind them under `hot-last`, and
    // 7-pair groups moved batch-1 decode 0.4–0.7% with the same SASS).
    if std::env::var("CHATGLM_CUDA_GROUPED_LAST").is_ok_and(|v| v == "1") {
        named.sort_by_key(|(n, _)| n.starts_with("qmmg_") || n.starts_with("qmmh_") || n.starts_with("qmmx_"));
    }
    // `CHATGLM_CUDA_LOAD_FIRST=a,b,…`: these kernels before all others, in
    // this order (placement experiments).
    if let Ok(first) = std::env::var("CHATGLM_CUDA_LOAD_FIRST") {
        let first: Vec<&str> = first.split(',').map(str::trim).collect();
        named.sort_by_key(|(n, _)| first.iter().position(|f| f == n).unwrap_or(first.len()));
    }
    named
}

/// A qmmx kernel's place under `CHATGLM_CUDA_QMMX_ORDER` (lower first).
fn qmmx_rank(order: Option<&str>, name: &str) -> (usize, usize) {
    let mut parts = name.strip_prefix("qmmx_").unwrap_or(name).split('_');
    let format: usize = parts.next().and_then(|f| f.parse().ok()).unwrap_or(0);
    let mode = parts.nth(1).unwrap_or("");
    let by_modes = |modes: &str| modes.split(',').position(|m| m.trim() == mode).unwrap_or(usize::MAX);
    match order {
        Some("swiglu-first") => (0, usize::from(mode != "2")),
        Some("list") => (0, 0),
        Some(o) if o.starts_with("format:") => (format, by_modes(&o["format:".len()..])),
        Some(o) if o.contains(',') => (0, by_modes(o)),
        // The default, `step`: run 350, 32 int4 sequences 12,056–12,058 tok/s
        // against 11,987–12,005 as listed, batch 1 unchanged.
        _ => (0, by_modes("3,1,2")),
    }
}

/// Where compiled PTX is kept: `CHATGLM_KERNEL_CACHE`, else the user cache
/// folder; `None` when neither can be found (compile every time).
pub(crate) fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CHATGLM_KERNEL_CACHE") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("chatglm-rs").join("kernels"))
}

/// The name NVRTC knows architecture `arch` (major × 10 + minor) by: the
/// architecture-specific `90a` for sm_90 (taken for the warpgroup-mma
/// experiments of sessions 33–34, no longer in the sources, and kept: every
/// measured code placement is of sm_90a cubins) — such code loads on sm_90
/// devices alone, which is all a cache entry for arch 90 serves.
pub(crate) fn arch_name(arch: u32) -> String {
    if arch == 90 {
        "90a".into()
    } else {
        arch.to_string()
    }
}

/// FNV-1a: a stable cache key (std's hasher may change between releases).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        for &b in *part {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// PTX for `source`, from the disk cache or freshly compiled for `arch`
/// (major × 10 + minor). `versions` identifies the driver and NVRTC.
pub(crate) fn ptx_for(source: &Source, arch: u32, versions: &str) -> Result<Ptx, CudaError> {
    let cached = cache_dir().map(|d| d.join(cache_file_name(source, arch, versions)));
    if let Some(path) = &cached {
        if let Ok(ptx) = std::fs::read_to_string(path) {
            tracing::debug!(file = %path.display(), "kernel cache hit");
            return Ok(Ptx::from_src(ptx));
        }
    }
    let ptx = ptx_for_uncached(source, arch)?;
    if let Some(path) = &cached {
        write_cache_file(path, ptx.to_src().as_bytes());
    }
    Ok(ptx)
}

/// Writes a cache entry whole or not at all (a temporary file renamed); a
/// cache that cannot be written only costs the next start a compile.
pub(crate) fn write_cache_file(path: &std::path::Path, bytes: &[u8]) {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = path
        .parent()
        .map(std::fs::create_dir_all)
        .transpose()
        .and_then(|_| std::fs::write(&tmp, bytes))
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        tracing::debug!(error = %e, "kernel cache not written");
    }
}

/// The cache file of `source`'s PTX for `arch` under `versions`.
fn cache_file_name(source: &Source, arch: u32, versions: &str) -> String {
    cache_file_name_for(source, &format!("--gpu-architecture=compute_{}", arch_name(arch)), versions, "ptx")
}

/// The cache file of `source` compiled with `arch_flag` under `versions`,
/// with `extension`.
pub(crate) fn cache_file_name_for(source: &Source, arch_flag: &str, versions: &str, extension: &str) -> String {
    let text = source_text(source);
    let key = fnv1a(&[text.as_bytes(), arch_flag.as_bytes(), versions.as_bytes()]);
    format!("{}-{key:016x}.{extension}", source.name)
}

/// The driver and NVRTC a cache entry was compiled under (part of its key).
pub(crate) fn cache_versions(driver_version: i32, nvrtc: &str) -> String {
    format!("driver {driver_version} nvrtc {nvrtc}")
}

/// Compiles every kernel file for `sm_{arch}` (SASS) and `compute_{arch}`
/// (PTX) here (no driver or device needed) into `dir` under the names a GPU
/// machine whose driver and NVRTC
/// give `versions` (as [`cache_versions`] writes them, e.g. "driver 13000
/// nvrtc 13.0") looks for: pointing `CHATGLM_KERNEL_CACHE` there spares it
/// the compile. Returns the files written (not those already there).
/// `formats`: which forms to write, `"cubin"`, `"ptx"` or both (`"cubin,ptx"`;
/// two processes with one each share a machine's cores).
pub fn write_kernel_cache(
    dir: &std::path::Path,
    arch: u32,
    versions: &str,
    formats: &str,
) -> Result<Vec<PathBuf>, CudaError> {
    let wants = |f: &str| formats.split(',').any(|v| v.trim() == f);
    if !wants("cubin") && !wants("ptx") {
        return Err(CudaError::invalid("kernel cache", format!("formats {formats:?}: expected cubin, ptx or both")));
    }
    // SAFETY: only tries to load the library (cudarc panics on a call into
    // a library that is not there).
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::Unavailable("NVRTC (libnvrtc) was not found to compile the kernels".into()));
    }
    std::fs::create_dir_all(dir).map_err(|e| CudaError::invalid("kernel cache", format!("{}: {e}", dir.display())))?;
    // Fail before minutes of compiling, with the system's reason, where the
    // folder takes no files.
    let probe = dir.join(format!(".write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| CudaError::invalid("kernel cache", format!("{}: {e}", dir.display())))?;
    let mut written = Vec::new();
    let write = |path: PathBuf, bytes: &[u8], written: &mut Vec<PathBuf>| {
        std::fs::write(&path, bytes)
            .map_err(|e| CudaError::invalid("kernel cache", format!("{}: {e}", path.display())))?;
        written.push(path);
        Ok::<(), CudaError>(())
    };
    let sources: Vec<&Source> = SOURCES.iter().filter(|s| arch >= s.min_arch).collect();
    // The machine loads the SASS (no driver JIT) and keeps the PTX for the
    // case its driver refuses that. A file already there is this text's (the
    // name is its key): a variant's pass compiles only the files its defines
    // change, side by side.
    if wants("cubin") {
        let cubin_path = |s: &Source| dir.join(crate::cubin::cubin_file_name(s, arch, versions));
        let holds_cubin = |p: &std::path::Path| std::fs::read(p).is_ok_and(|b| crate::cubin::is_elf(&b));
        let before: Vec<bool> = sources.iter().map(|s| holds_cubin(&cubin_path(s))).collect();
        let cubins = crate::prebuild::cubins_into(Some(dir), &sources, arch, versions);
        for ((source, cubin), existed) in sources.iter().zip(cubins).zip(before) {
            cubin?;
            let path = cubin_path(source);
            if !holds_cubin(&path) {
                return Err(CudaError::invalid("kernel cache", format!("{}: could not be written", path.display())));
            }
            if !existed {
                written.push(path);
            }
        }
    }
    for source in sources {
        let ptx_path = dir.join(cache_file_name(source, arch, versions));
        if wants("ptx") && !ptx_path.exists() {
            let ptx = ptx_for_uncached(source, arch)?;
            write(ptx_path, ptx.to_src().as_bytes(), &mut written)?;
        }
    }
    Ok(written)
}

/// The text NVRTC compiles: the shared header, the file, and first those of
/// `CHATGLM_NVRTC_DEFINES` ("NAME=VALUE …", for measurements of kernel
/// variants) that the file names (so only those files compile again; the
/// defines are part of the cache key since they are part of the text).
pub(crate) fn source_text(source: &Source) -> String {
    source_text_with(source, &std::env::var("CHATGLM_NVRTC_DEFINES").unwrap_or_default())
}

/// The items of a `CHATGLM_NVRTC_DEFINES` value ("NAME=VALUE", separated by
/// spaces or commas), as the compiler and the host both read them.
pub(crate) fn define_items(defines: &str) -> impl Iterator<Item = &str> {
    defines.split([' ', ',']).filter(|d| !d.is_empty())
}

/// [`source_text`] with the defines given ("NAME=VALUE …").
fn source_text_with(source: &Source, defines: &str) -> String {
    let defines: String = define_items(defines)
        .filter(|d| source.text.contains(d.split('=').next().unwrap_or(d)))
        .map(|d| format!("#define {}\n", d.replacen('=', " ", 1)))
        .collect();
    format!("{defines}{COMMON}\n{}", source.text)
}

fn ptx_for_uncached(source: &Source, arch: u32) -> Result<Ptx, CudaError> {
    let text = source_text(source);
    let arch_flag = format!("--gpu-architecture=compute_{}", arch_name(arch));
    let started = std::time::Instant::now();
    let options = CompileOptions {
        // Exact arithmetic (golden tests compare to 1e-4): no fast math, IEEE
        // division and square roots.
        prec_div: Some(true),
        prec_sqrt: Some(true),
        ftz: Some(false),
        options: vec![arch_flag, "--std=c++17".into()],
        name: Some(format!("{}.cu", source.name)),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(&text, options).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => CudaError::Compile {
            file: source.name.into(),
            arch: format!("compute_{}", arch_name(arch)),
            log: log.to_string_lossy().into_owned(),
        },
        other => CudaError::call(format!("nvrtcCompileProgram({}.cu)", source.name), other),
    })?;
    tracing::info!(file = source.name, ms = started.elapsed().as_millis() as u64, "compiled kernels with NVRTC");
    Ok(ptx)
}

/// Compiles every kernel file for `compute_{arch}` with NVRTC alone (no
/// driver or device needed): `(file name, PTX)` pairs. Lets a machine without
/// a GPU check the sources (and feed the PTX to `ptxas` for a resource report).
pub fn compile_all(arch: u32) -> Result<Vec<(&'static str, String)>, CudaError> {
    // SAFETY: only tries to dlopen the library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::Unavailable("the CUDA run-time compiler library (libnvrtc) was not found".into()));
    }
    SOURCES.iter().filter(|s| arch >= s.min_arch).map(|s| Ok((s.name, ptx_for_uncached(s, arch)?.to_src()))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qmmx_orders_rank_the_products() {
        let names = ["qmmx_0_4_1", "qmmx_0_4_2", "qmmx_0_4_3"];
        let sorted = |order| {
            let mut v = names.to_vec();
            v.sort_by_key(|n| qmmx_rank(order, n));
            v
        };
        assert_eq!(sorted(Some("list")), names);
        assert_eq!(sorted(Some("swiglu-first")), ["qmmx_0_4_2", "qmmx_0_4_1", "qmmx_0_4_3"]);
        assert_eq!(sorted(Some("step")), ["qmmx_0_4_3", "qmmx_0_4_1", "qmmx_0_4_2"]);
        assert_eq!(sorted(None), sorted(Some("step")), "step is the default");
        assert_eq!(sorted(Some("2,3,1")), ["qmmx_0_4_2", "qmmx_0_4_3", "qmmx_0_4_1"]);
        let all = qmmx_kernels();
        let mut by_format = all.clone();
        by_format.sort_by_key(|n| qmmx_rank(Some("format:3,1,2"), n));
        assert_eq!(by_format[..4], ["qmmx_0_4_3", "qmmx_0_4_1", "qmmx_0_4_2", "qmmx_1_4_3"]);
        let mut step = all;
        step.sort_by_key(|n| qmmx_rank(None, n));
        assert_eq!(step[..5], ["qmmx_0_4_3", "qmmx_1_4_3", "qmmx_2_4_3", "qmmx_3_4_3", "qmmx_0_4_1"]);
    }

    #[test]
    fn decode_hot_names_the_one_token_products() {
        for hot in ["qmma_0_1_3_2", "qmma_2_1_0_1", "qmv_1_3", "mlps_0"] {
            assert!(decode_hot(hot), "{hot}");
        }
        for cold in ["qmma_0_2_1_0", "qmma_0_1_1_0", "qmmg_0_2_1", "quantize_x", "qdequant_0"] {
            assert!(!decode_hot(cold), "{cold}");
        }
        let named: Vec<(String, usize)> = qmma_kernels().into_iter().map(|n| (n, 0)).collect();
        let hot = named.iter().filter(|(n, _)| decode_hot(n)).count();
        // The default (`hot-last`): within the module the decode-step
        // kernels after the rest, each class as listed.
        let ordered = load_order(named.clone());
        assert_eq!(ordered.len(), named.len());
        let cold = ordered.iter().take_while(|(n, _)| !decode_hot(n)).count();
        assert_eq!(cold + hot, named.len());
        let listed_hot: Vec<_> = named.iter().filter(|(n, _)| decode_hot(n)).collect();
        assert!(ordered[cold..].iter().eq(listed_hot.into_iter()));
    }

    #[test]
    fn the_qmmx_module_and_then_the_cached_gathers_are_looked_up_last() {
        let named: Vec<(String, usize)> =
            SOURCES.iter().enumerate().flat_map(|(m, s)| (s.kernels)().into_iter().map(move |n| (n, m))).collect();
        let ordered = load_order(named.clone());
        let cached = embed_cached_kernels().len();
        let qmmx = qmmx_kernels().len();
        let n = ordered.len();
        assert!(ordered[n - cached..].iter().all(|(k, _)| k.contains("_cached_")));
        assert!(ordered[n - cached - qmmx..n - cached].iter().all(|(k, _)| k.starts_with("qmmx_")));
        // Everything else in the order it had without them.
        let rest: Vec<_> = named.iter().filter(|(k, _)| !k.contains("_cached_")).cloned().collect();
        assert_eq!(load_order(rest), ordered[..n - cached].to_vec());
    }

    #[test]
    fn cache_keys_change_with_every_part() {
        let a = fnv1a(&[b"src", b"compute_90", b"v1"]);
        assert_ne!(a, fnv1a(&[b"src", b"compute_80", b"v1"]));
        assert_ne!(a, fnv1a(&[b"src", b"compute_90", b"v2"]));
        assert_ne!(a, fnv1a(&[b"sr", b"ccompute_90", b"v1"]));
        assert_eq!(a, fnv1a(&[b"src", b"compute_90", b"v1"]));
    }

    #[test]
    fn variant_defines_reach_only_the_files_that_name_them() {
        let gemv = SOURCES.iter().find(|s| s.name == "gemv").unwrap();
        let flash = SOURCES.iter().find(|s| s.name == "flash").unwrap();
        let defines = "GEMV_PINGPONG=1, QMMA_PINGPONG=1";
        let text = source_text_with(gemv, defines);
        assert!(text.starts_with("#define GEMV_PINGPONG 1\n"), "{}", &text[..60]);
        assert!(!text.contains("#define QMMA_PINGPONG"));
        // A file naming neither compiles as without defines (the same cache entry).
        assert_eq!(source_text_with(flash, defines), source_text_with(flash, ""));
    }

    #[test]
    fn cache_files_are_named_by_source_arch_and_versions() {
        // A cache written on another machine is found exactly when the GPU
        // machine's driver and NVRTC give the same versions string.
        let s = &SOURCES[0];
        let v = cache_versions(13000, "13.0");
        assert_eq!(v, "driver 13000 nvrtc 13.0");
        let name = cache_file_name(s, 90, &v);
        assert!(name.starts_with(&format!("{}-", s.name)) && name.ends_with(".ptx"), "{name}");
        assert_eq!(name, cache_file_name(s, 90, &cache_versions(13000, "13.0")));
        assert_ne!(name, cache_file_name(s, 90, &cache_versions(13010, "13.0")));
        assert_ne!(name, cache_file_name(s, 80, &v));
    }

    #[test]
    fn every_kernel_a_source_defines_is_listed() {
        // A kernel missing from its file's list compiles but cannot be
        // launched ("not available on this device"), found only on a GPU.
        for s in SOURCES {
            let listed = (s.kernels)();
            for def in s.text.split("extern \"C\" __global__").skip(1) {
                // `void name(` or `void __launch_bounds__(…) name(`, with any
                // line breaks between.
                let mut rest = def.trim_start().trim_start_matches('\\').trim_start();
                rest = rest.strip_prefix("void").unwrap_or(rest).trim_start();
                if let Some(r) = rest.strip_prefix("__launch_bounds__") {
                    rest = r.split_once(')').map_or(r, |(_, after)| after);
                }
                let name = rest
                    .trim_start_matches(|c: char| c.is_whitespace() || c == '\\')
                    .split('(')
                    .next()
                    .unwrap_or("")
                    .trim();
                // Macro bodies (names built with ##, or a macro parameter in
                // capitals) are checked the other way round.
                let parameter = name.chars().all(|c| c.is_ascii_uppercase() || c == '_');
                if name.contains("##")
                    || parameter
                    || name.is_empty()
                    || !name.chars().all(|c| c.is_alphanumeric() || c == '_')
                {
                    continue;
                }
                // The qmmx module compiles qmma.cu's files for their device
                // functions; of its kernels it launches only its own.
                if s.name == "qmmx" && !name.starts_with("qmmx_") {
                    continue;
                }
                // So does the embed_cached module with elementwise.cu's.
                if s.name == "embed_cached" && !name.contains("_cached_") {
                    continue;
                }
                assert!(listed.iter().any(|l| l == name), "{name} (in {}.cu) is not in its kernel list", s.name);
            }
        }
    }

    #[test]
    fn every_listed_kernel_is_defined_in_its_source() {
        for s in SOURCES {
            for name in (s.kernels)() {
                // Macro instantiations: the name's stem must be defined by a macro or directly.
                // (`gemv_##T##_##NT…`: every numeric part trimmed; `attn_decode_q8_##HG`: the last.)
                let all_numbers = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '_');
                let last_number = match name.rsplit_once('_') {
                    Some((stem, n)) if n.chars().all(|c| c.is_ascii_digit()) => stem,
                    _ => name.as_str(),
                };
                assert!(
                    s.text.contains(&format!(" {name}("))
                        || s.text.contains(&format!("{all_numbers}_##"))
                        || s.text.contains(&format!("{last_number}_##")),
                    "{name} is not defined in {}.cu",
                    s.name
                );
            }
        }
    }
}
