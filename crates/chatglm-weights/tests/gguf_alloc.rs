//! A GGUF header's counts are claims: parsing a crafted file never reserves
//! more memory than the file could fill. The allocator of this test binary
//! counts the bytes requested while the header of a truncated file is parsed.

use chatglm_weights::gguf::parse_gguf_bytes;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only records request sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: as for `GlobalAlloc::realloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// GGUF v3 with one metadata pair: a string array claiming `n` elements,
/// followed by `body` bytes.
fn crafted(n: u64, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes()); // tensors
    b.extend_from_slice(&1u64.to_le_bytes()); // metadata pairs
    let key = b"tokenizer.ggml.tokens";
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(&9u32.to_le_bytes()); // array
    b.extend_from_slice(&8u32.to_le_bytes()); // of strings
    b.extend_from_slice(&n.to_le_bytes());
    b.extend_from_slice(body);
    b
}

#[test]
fn a_claimed_string_table_is_not_reserved_ahead() {
    // 4 MiB of file: 512K length prefixes of 8 bytes would pass the count
    // check, but the strings stop after 10 real ones.
    let mut body = Vec::new();
    for _ in 0..10 {
        body.extend_from_slice(&1u64.to_le_bytes());
        body.push(b'a');
    }
    body.resize(4 << 20, 0xff); // then lengths of 2^64 - 1: truncated
    let file = crafted(512 * 1024, &body);
    LARGEST.store(0, Ordering::Relaxed);
    let err = parse_gguf_bytes(&file).unwrap_err();
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(err.to_string().contains("tokenizer.ggml.tokens") || !err.to_string().is_empty());
    // Before: 512K × 24-byte Strings = 12 MiB reserved up front (3× the file).
    assert!(largest < 1 << 20, "largest single allocation {largest} bytes for a {} byte file", file.len());
}
