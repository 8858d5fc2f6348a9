//! Allocation of the large, streamed buffers (weights, KV cache) on huge pages.
//!
//! Linux's transparent huge pages are often in `madvise` mode (as on the
//! development VM): anonymous memory gets 2 MiB pages only where asked for.
//! Decode streams every weight once per token; on 4 KiB pages that is a TLB
//! miss every 4 KiB and a hardware-prefetch stream that stops at every page
//! boundary. Elsewhere this is a plain `Vec::with_capacity`.

/// Below this size the request is not worth a system call.
const MIN_HUGE_BYTES: usize = 4 << 20;

/// An empty vector with room for `n` elements whose pages the kernel is
/// asked to back with huge pages (the pages are not touched here; the first
/// write into each 2 MiB span allocates it).
pub fn huge_vec<T>(n: usize) -> Vec<T> {
    let v: Vec<T> = Vec::with_capacity(n);
    advise_huge_pages(v.as_ptr().cast::<u8>(), n.saturating_mul(std::mem::size_of::<T>()));
    v
}

/// Asks for huge pages for the rest of `v`'s allocation (pages already
/// touched keep their size).
pub fn advise_huge<T>(v: &Vec<T>) {
    advise_huge_pages(v.as_ptr().cast::<u8>(), v.capacity().saturating_mul(std::mem::size_of::<T>()));
}

/// Copies a slice into a [`huge_vec`].
pub fn huge_copy<T: Copy>(src: &[T]) -> Vec<T> {
    let mut v = huge_vec(src.len());
    v.extend_from_slice(src);
    v
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(ptr: *const u8, len: usize) {
    if len < MIN_HUGE_BYTES {
        return;
    }
    const PAGE: usize = 4096;
    let start = (ptr as usize).div_ceil(PAGE) * PAGE;
    let end = (ptr as usize + len) / PAGE * PAGE;
    if end > start {
        // SAFETY: the range lies inside the vector's own (unused) allocation;
        // MADV_HUGEPAGE only changes how future faults are served. A failure
        // (THP disabled, old kernel) leaves ordinary pages, which is fine.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_ptr: *const u8, _len: usize) {
    let _ = MIN_HUGE_BYTES;
}
