//! The kernel files' cubins for a start: those the disk cache holds are read,
//! the rest compiled side by side. A first start on a machine compiles every
//! file with NVRTC — ~3 minutes of one core here, the qmma file alone ~2 of
//! them — and used to sit silent for that long; now the files compile on as
//! many threads as there are cores (NVRTC's guide allows concurrent calls on
//! distinct programs, and each file is a program of its own), largest
//! first, so the start takes about as long as the largest file, and stderr
//! says what is happening (a progress bar on a terminal, one line elsewhere).

use crate::compile::{source_text, write_cache_file, Source};
use crate::cubin::{cubin_file_name, cubin_for_uncached, is_elf};
use crate::CudaError;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// At most this many files compile at once: NVRTC takes up to ~1.4 GB for
/// the largest, and a few threads already put the largest file's time on
/// the critical path.
const MAX_COMPILE_THREADS: usize = 6;

/// Each compile thread's stack.
const COMPILE_STACK_BYTES: usize = 64 << 20;

/// A file's cubin, or why there is none.
type Cubin = Result<Vec<u8>, CudaError>;

/// Each of `sources`' cubins for `sm_{arch}`: from `dir` where it holds one
/// (named by [`cubin_file_name`] under `versions`), else compiled and, with
/// a `dir`, written there. One result per source, in order; a file that does
/// not compile is that file's error (the caller falls back to PTX).
pub(crate) fn cubins_into(dir: Option<&Path>, sources: &[&Source], arch: u32, versions: &str) -> Vec<Cubin> {
    let path_of = |s: &Source| dir.map(|d| d.join(cubin_file_name(s, arch, versions)));
    let mut results: Vec<Option<Result<Vec<u8>, CudaError>>> =
        sources.iter().map(|s| path_of(s).and_then(|p| std::fs::read(p).ok()).filter(|b| is_elf(b)).map(Ok)).collect();
    let mut missing: Vec<usize> = (0..sources.len()).filter(|&i| results[i].is_none()).collect();
    if missing.is_empty() {
        return results.into_iter().map(|r| r.expect("every cubin was read")).collect();
    }
    // SAFETY: only tries to load the library (cudarc panics on a call into a
    // library that is not there).
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        for &i in &missing {
            results[i] = Some(Err(CudaError::Unavailable(format!(
                "{}.cu has no cached cubin and NVRTC (libnvrtc) was not found to compile it",
                sources[i].name
            ))));
        }
        return results.into_iter().map(|r| r.expect("every result was set")).collect();
    }
    // Largest first: the longest compile starts at once.
    missing.sort_by_cached_key(|&i| std::cmp::Reverse(source_text(sources[i]).len()));
    let progress = Progress::start(&missing.iter().map(|&i| sources[i].name).collect::<Vec<_>>(), arch, dir);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_COMPILE_THREADS);
    let next = AtomicUsize::new(0);
    let compiled: Vec<Mutex<Option<Cubin>>> = missing.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads.min(missing.len()) {
            let work = || loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = missing.get(k) else { break };
                let result = cubin_for_uncached(sources[i], arch);
                if let (Ok(cubin), Some(path)) = (&result, path_of(sources[i])) {
                    write_cache_file(&path, cubin);
                }
                progress.finished(sources[i].name);
                *compiled[k].lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
            };
            // NVRTC ran on the main thread's 8 MiB before; its front end
            // recurses with the templates, so the workers get room too.
            let spawned = std::thread::Builder::new().stack_size(COMPILE_STACK_BYTES).spawn_scoped(scope, work);
            if spawned.is_err() {
                break;
            }
        }
    });
    for (k, &i) in missing.iter().enumerate() {
        // A file no thread took (none could be started) compiles here.
        let result = compiled[k].lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_else(|| {
            let result = cubin_for_uncached(sources[i], arch);
            if let (Ok(cubin), Some(path)) = (&result, path_of(sources[i])) {
                write_cache_file(&path, cubin);
            }
            progress.finished(sources[i].name);
            result
        });
        results[i] = Some(result);
    }
    progress.done();
    results.into_iter().map(|r| r.expect("every missing file was compiled")).collect()
}

/// What stderr shows while files compile.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    left: Mutex<Vec<&'static str>>,
}

impl Progress {
    fn start(names: &[&'static str], arch: u32, dir: Option<&Path>) -> Self {
        let kept = dir.map_or_else(
            || "no cache folder: every start compiles".to_string(),
            |d| format!("kept in {} for later starts", d.display()),
        );
        let what = format!("compiling GPU kernels for sm_{arch} with NVRTC ({kept})");
        let bar = if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(names.len() as u64).with_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {prefix}\n  {pos}/{len} files [{elapsed}] {wide_msg}",
                )
                .expect("invariant: static template"),
            );
            bar.set_prefix(what);
            bar.set_message(names.join(", "));
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            Some(bar)
        } else {
            eprintln!("{what}: {} files, a few minutes", names.len());
            None
        };
        Self { bar, started: Instant::now(), left: Mutex::new(names.to_vec()) }
    }

    fn finished(&self, name: &str) {
        let mut left = self.left.lock().unwrap_or_else(|e| e.into_inner());
        left.retain(|n| *n != name);
        if let Some(bar) = &self.bar {
            bar.inc(1);
            bar.set_message(left.join(", "));
        }
    }

    fn done(&self) {
        match &self.bar {
            Some(bar) => bar.finish_and_clear(),
            None => eprintln!("compiled the GPU kernels in {:.0} s", self.started.elapsed().as_secs_f64()),
        }
        tracing::info!(seconds = self.started.elapsed().as_secs_f64(), "compiled the kernel files the cache lacked");
    }
}

impl Drop for Progress {
    /// A bar is never left drawn, even on a path that skips `done`.
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            if !bar.is_finished() {
                bar.finish_and_clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::SOURCES;

    fn source(name: &str) -> &'static Source {
        SOURCES.iter().find(|s| s.name == name).expect("a kernel file")
    }

    #[test]
    fn cached_cubins_are_read_not_compiled() {
        // Any ELF image under the file's name is taken as it is: no NVRTC
        // needed, so this runs everywhere.
        let dir = tempfile::tempdir().unwrap();
        let versions = crate::compile::cache_versions(13000, "13.0");
        let sources = [source("sample"), source("flash"), source("elementwise")];
        for (k, s) in sources.iter().enumerate() {
            std::fs::write(dir.path().join(cubin_file_name(s, 90, &versions)), format!("\x7fELF marker {k}")).unwrap();
        }
        let got = cubins_into(Some(dir.path()), &sources, 90, &versions);
        for (k, r) in got.into_iter().enumerate() {
            assert_eq!(r.expect("a cache hit"), format!("\x7fELF marker {k}").into_bytes());
        }
    }

    #[test]
    fn missing_cubins_compile_side_by_side_and_are_cached() {
        // SAFETY: only tries to load the library.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            eprintln!("skipped: no libnvrtc on this machine");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let versions = crate::compile::cache_versions(13000, "13.0");
        let sources = [source("sample"), source("flash"), source("decode_mma")];
        // One hit among the misses: it must come back untouched.
        let hit = dir.path().join(cubin_file_name(sources[1], 90, &versions));
        std::fs::write(&hit, b"\x7fELF cached").unwrap();
        // A torn file is no cubin: compiled again and replaced.
        std::fs::write(dir.path().join(cubin_file_name(sources[2], 90, &versions)), b"torn").unwrap();
        let got = cubins_into(Some(dir.path()), &sources, 90, &versions);
        let got: Vec<Vec<u8>> = got.into_iter().map(|r| r.expect("a cubin")).collect();
        assert_eq!(got[1], b"\x7fELF cached");
        for k in [0, 2] {
            assert!(is_elf(&got[k]) && got[k].len() > 1024);
            let written = std::fs::read(dir.path().join(cubin_file_name(sources[k], 90, &versions))).unwrap();
            assert_eq!(written, got[k], "the compiled cubin is cached");
        }
    }
}
