//! Kernels compiled by NVRTC straight to SASS (`--gpu-architecture=sm_XX`,
//! a cubin) and cached, so that loading a module needs no driver JIT: PTX
//! of the quantized products (23 MB) took the H200's driver ~110 s to
//! compile at the first load on a fresh machine (bench/RESULTS.md, run 93),
//! on every start whose driver cache did not hold it. PTX stays the
//! fallback: a cubin that cannot be built or loaded costs a PTX load, never
//! a failure. The default since an H200 run loaded the shipped cubins in
//! 1 s where PTX took ~110 s, and passed every GPU suite on them
//! (bench/RESULTS.md, run 94); `CHATGLM_KERNEL_FORMAT=ptx` loads PTX.

use crate::compile::{cache_file_name_for, source_text, Source};
use crate::CudaError;
use cudarc::nvrtc::{result, sys};
use std::ffi::CString;

/// Whether modules load from cubins (the default) or from PTX
/// (`CHATGLM_KERNEL_FORMAT=ptx`), read once.
pub(crate) fn cubins_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("CHATGLM_KERNEL_FORMAT").map_or(true, |v| v != "ptx"))
}

/// The cache file of `source`'s cubin for `sm_{arch}` under `versions`.
pub(crate) fn cubin_file_name(source: &Source, arch: u32, versions: &str) -> String {
    cache_file_name_for(source, &arch_flag(arch), versions, "cubin")
}

fn arch_flag(arch: u32) -> String {
    format!("--gpu-architecture=sm_{}", crate::compile::arch_name(arch))
}

/// A cubin is an ELF image: anything else in the cache (a torn or foreign
/// file) is compiled again rather than handed to the driver.
pub(crate) fn is_elf(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x7fELF")
}

/// NVRTC's program handle, destroyed on every path out.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by create_program and destroyed only here.
        let _ = unsafe { result::destroy_program(self.0) };
    }
}

/// Compiles `source` for `sm_{arch}` with the options of the PTX path (exact
/// arithmetic: no flush to zero, IEEE division and square roots).
pub(crate) fn cubin_for_uncached(source: &Source, arch: u32) -> Result<Vec<u8>, CudaError> {
    let call = |what: &str, e: result::NvrtcError| CudaError::call(format!("{what}({}.cu)", source.name), e);
    let text = CString::new(source_text(source)).map_err(|_| CudaError::invalid(source.name, "NUL in the source"))?;
    let name = CString::new(format!("{}.cu", source.name)).map_err(|_| CudaError::invalid(source.name, "NUL"))?;
    let started = std::time::Instant::now();
    let program = Program(result::create_program(&text, Some(&name)).map_err(|e| call("nvrtcCreateProgram", e))?);
    let options = ["--ftz=false", "--prec-sqrt=true", "--prec-div=true", &arch_flag(arch), "--std=c++17"];
    // SAFETY: `program` is live until dropped at the end of this function.
    if let Err(e) = unsafe { result::compile_program(program.0, &options) } {
        // SAFETY: as above.
        let log = unsafe { result::get_program_log(program.0) }.unwrap_or_default();
        let log: Vec<u8> = log.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        if log.is_empty() {
            return Err(call("nvrtcCompileProgram", e));
        }
        return Err(CudaError::Compile {
            file: source.name.into(),
            arch: format!("sm_{}", crate::compile::arch_name(arch)),
            log: String::from_utf8_lossy(&log).into_owned(),
        });
    }
    let mut size = 0usize;
    // SAFETY: the program compiled; `size` receives the image's length.
    unsafe { sys::nvrtcGetCUBINSize(program.0, &mut size) }.result().map_err(|e| call("nvrtcGetCUBINSize", e))?;
    let mut cubin = vec![0u8; size];
    // SAFETY: `cubin` holds the `size` bytes NVRTC writes.
    unsafe { sys::nvrtcGetCUBIN(program.0, cubin.as_mut_ptr().cast()) }
        .result()
        .map_err(|e| call("nvrtcGetCUBIN", e))?;
    if !is_elf(&cubin) {
        return Err(CudaError::invalid(source.name, "NVRTC returned no cubin"));
    }
    tracing::info!(
        file = source.name,
        ms = started.elapsed().as_millis() as u64,
        "compiled kernels to SASS with NVRTC"
    );
    Ok(cubin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::SOURCES;

    #[test]
    fn cubins_have_their_own_cache_entries() {
        let s = &SOURCES[0];
        let v = crate::compile::cache_versions(13000, "13.0");
        let cubin = cubin_file_name(s, 90, &v);
        assert!(cubin.ends_with(".cubin"), "{cubin}");
        assert_ne!(
            cubin.replace(".cubin", ""),
            crate::compile::cache_file_name_for(s, "--gpu-architecture=compute_90", &v, "")
        );
        assert_ne!(cubin, cubin_file_name(s, 80, &v));
        assert!(is_elf(b"\x7fELF\x02\x01") && !is_elf(b"// PTX") && !is_elf(b""));
    }

    #[test]
    fn nvrtc_builds_a_cubin_where_it_is_installed() {
        // SAFETY: only tries to dlopen the library.
        if !unsafe { sys::is_culib_present() } {
            eprintln!("skipped: no libnvrtc on this machine");
            return;
        }
        let sample = SOURCES.iter().find(|s| s.name == "sample").expect("sample.cu");
        let cubin = cubin_for_uncached(sample, 90).expect("sm_90 cubin");
        assert!(is_elf(&cubin) && cubin.len() > 1024);
    }
}
