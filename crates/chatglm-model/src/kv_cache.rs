//! One sequence's keys and values, per layer, on the CPU.

use crate::ModelError;
use chatglm_cpu::dot::BlockQ8_0;
use chatglm_weights::quant::QuantBlock;
use half::f16;

/// Element type of the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvDType {
    /// Exact; used with f32 weights (golden tests compare to 1e-4).
    F32,
    /// Half the memory (28 KiB per token for ChatGLM2-6B); the default for
    /// f16/bf16/quantized weights.
    F16,
    /// q8_0 blocks of 32 values (8.5 bits per value: 15 KiB per token for
    /// ChatGLM2-6B, 476 MiB for the full 32K context). Needs a head size that
    /// is a multiple of 32.
    Q8_0,
}

impl KvDType {
    pub fn name(&self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
        }
    }

    /// Bytes per cached value (keys or values).
    pub fn bytes_per_value(&self) -> f64 {
        match self {
            Self::F32 => 4.0,
            Self::F16 => 2.0,
            Self::Q8_0 => 34.0 / 32.0,
        }
    }
}

impl std::str::FromStr for KvDType {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "q8_0" => Ok(Self::Q8_0),
            other => Err(ModelError::UnknownKvDType(other.to_string())),
        }
    }
}

/// Keys or values of one layer: `(len, n_groups, head_dim)` row-major.
pub(crate) enum KvStore {
    F32(Vec<f32>),
    F16(Vec<f16>),
    /// One block per 32 values.
    Q8_0(Vec<BlockQ8_0>),
}

impl KvStore {
    fn new(dtype: KvDType) -> Self {
        match dtype {
            KvDType::F32 => Self::F32(Vec::new()),
            KvDType::F16 => Self::F16(Vec::new()),
            KvDType::Q8_0 => Self::Q8_0(Vec::new()),
        }
    }

    /// Resizes to hold `n` values.
    pub(crate) fn resize(&mut self, n: usize) {
        // Grow in steps so a long dialogue does not reallocate every token,
        // without the 2× over-allocation of Vec's doubling on large caches.
        fn grow<T: bytemuck::Zeroable + Copy>(v: &mut Vec<T>, n: usize) {
            if n > v.capacity() {
                let step = (v.capacity() / 4).max(4096);
                // Growing in place (large blocks are remapped, not copied),
                // then asking for huge pages: attention streams the cache.
                v.reserve_exact((n - v.len()).max(step));
                chatglm_cpu::memory::advise_huge(v);
            }
            v.resize(n, T::zeroed());
        }
        match self {
            Self::F32(v) => grow(v, n),
            Self::F16(v) => grow(v, n),
            Self::Q8_0(v) => grow(v, n.div_ceil(32)),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Self::F32(v) => v.capacity() * 4,
            Self::F16(v) => v.capacity() * 2,
            Self::Q8_0(v) => v.capacity() * std::mem::size_of::<BlockQ8_0>(),
        }
    }
}

/// A KV block handed out by the engine's allocator (ids 0.. of the blocks a
/// backend provided with [`crate::Backend::provide_kv_blocks`]).
pub type KvBlockId = u32;

/// What the engine needs of a sequence's KV cache, whichever backend holds it.
pub trait KvCacheOps: Send {
    /// Tokens held.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn dtype(&self) -> KvDType;
    /// Forgets everything after the first `n` tokens.
    fn truncate(&mut self, n: usize);
    fn clear(&mut self);
    /// Bytes allocated for keys and values.
    fn allocated_bytes(&self) -> usize;
    /// Fills the cache up to `len` tokens with small pseudo-random values, as
    /// if a dialogue of that length had been processed (benchmarks only).
    fn fill_synthetic(&mut self, len: usize);
    /// Marks `n_new` tokens, written to every layer, as held (called by the
    /// forward pass after the last layer).
    fn advance(&mut self, n_new: usize);
    /// The engine's blocks for this sequence, in position order, covering
    /// every token it holds and the next step's: a paged cache reads and
    /// writes exactly these (the blocks of tokens it holds must be the ones
    /// it was given before). A cache with its own layout (the CPU's
    /// contiguous one) keeps it and ignores the ids.
    fn use_blocks(&mut self, ids: &[KvBlockId]) -> Result<(), ModelError> {
        let _ = ids;
        Ok(())
    }
    /// Makes this (empty) cache hold `src`'s first `n` tokens, copied (the
    /// prefix of another sequence's conversation). `false` where the caches
    /// differ in kind or this backend cannot copy them yet.
    fn copy_prefix_from(&mut self, src: &Self, n: usize) -> bool
    where
        Self: Sized,
    {
        let _ = (src, n);
        false
    }
}

impl KvCacheOps for KvCache {
    fn len(&self) -> usize {
        KvCache::len(self)
    }
    fn is_empty(&self) -> bool {
        KvCache::is_empty(self)
    }
    fn dtype(&self) -> KvDType {
        KvCache::dtype(self)
    }
    fn truncate(&mut self, n: usize) {
        KvCache::truncate(self, n)
    }
    fn clear(&mut self) {
        KvCache::clear(self)
    }
    fn allocated_bytes(&self) -> usize {
        KvCache::allocated_bytes(self)
    }
    fn fill_synthetic(&mut self, len: usize) {
        KvCache::fill_synthetic(self, len)
    }
    fn advance(&mut self, n_new: usize) {
        KvCache::advance(self, n_new)
    }
    fn copy_prefix_from(&mut self, src: &Self, n: usize) -> bool {
        KvCache::copy_prefix_from(self, src, n)
    }
}

/// A sequence's KV cache on the CPU: positions `0..len()` of every layer.
pub struct KvCache {
    dtype: KvDType,
    /// Elements per position: `n_groups · head_dim`.
    kv_width: usize,
    len: usize,
    /// Rows in front of the tokens (P-Tuning v2 prefix keys and values):
    /// token i is row `prefix + i`; `len` does not count them.
    pub(crate) prefix: usize,
    pub(crate) layers: Vec<(KvStore, KvStore)>,
}

impl KvCache {
    pub fn new(n_layers: usize, n_groups: usize, head_dim: usize, dtype: KvDType) -> Self {
        Self {
            dtype,
            kv_width: n_groups * head_dim,
            len: 0,
            prefix: 0,
            layers: (0..n_layers).map(|_| (KvStore::new(dtype), KvStore::new(dtype))).collect(),
        }
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn dtype(&self) -> KvDType {
        self.dtype
    }

    /// Forgets everything after the first `n` tokens.
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Bytes allocated for keys and values.
    pub fn allocated_bytes(&self) -> usize {
        self.layers.iter().map(|(k, v)| k.bytes() + v.bytes()).sum()
    }

    /// Fills the cache up to `len` tokens with small pseudo-random values, as
    /// if a dialogue of that length had been processed. Only for benchmarks
    /// that measure decoding at a given context position.
    pub fn fill_synthetic(&mut self, len: usize) {
        // Benchmarks only: any prefix rows are overwritten too.
        let n = (self.prefix + len) * self.kv_width;
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        };
        for (k, v) in &mut self.layers {
            for store in [k, v] {
                store.resize(n);
                match store {
                    KvStore::F32(d) => d.iter_mut().for_each(|x| *x = next()),
                    KvStore::F16(d) => d.iter_mut().for_each(|x| *x = f16::from_f32(next())),
                    KvStore::Q8_0(d) => d.iter_mut().for_each(|b| {
                        let values: [f32; 32] = std::array::from_fn(|_| next());
                        *b = QuantBlock::quantize(&values);
                    }),
                }
            }
        }
        self.len = len;
    }

    /// Makes this cache hold `src`'s first `n` tokens (and its prefix rows),
    /// copied. `false` (nothing changed) when the two differ in shape, type
    /// or prefix, or `src` holds fewer tokens.
    pub fn copy_prefix_from(&mut self, src: &KvCache, n: usize) -> bool {
        let same = src.dtype == self.dtype
            && src.kv_width == self.kv_width
            && src.prefix == self.prefix
            && src.layers.len() == self.layers.len();
        if !same || n > src.len {
            return false;
        }
        let elems = (self.prefix + n) * self.kv_width;
        for ((dk, dv), (sk, sv)) in self.layers.iter_mut().zip(&src.layers) {
            for (d, s) in [(dk, sk), (dv, sv)] {
                d.resize(elems);
                match (d, s) {
                    (KvStore::F32(d), KvStore::F32(s)) => d[..elems].copy_from_slice(&s[..elems]),
                    (KvStore::F16(d), KvStore::F16(s)) => d[..elems].copy_from_slice(&s[..elems]),
                    (KvStore::Q8_0(d), KvStore::Q8_0(s)) => {
                        // Rows are whole blocks of 32 (the head size is a multiple of 32).
                        let nb = elems.div_ceil(32);
                        d[..nb].copy_from_slice(&s[..nb]);
                    }
                    _ => return false,
                }
            }
        }
        self.len = n;
        true
    }

    /// Makes room for `n_new` more tokens in `layer` (called by the backend).
    pub(crate) fn reserve_layer(&mut self, layer: usize, n_new: usize) {
        let n = (self.prefix + self.len + n_new) * self.kv_width;
        let (k, v) = &mut self.layers[layer];
        k.resize(n);
        v.resize(n);
    }

    /// Marks `n_new` tokens, written to every layer, as held.
    pub fn advance(&mut self, n_new: usize) {
        self.len += n_new;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every stored element of the first `rows` rows, as bits.
    fn rows_bits(c: &KvCache, rows: usize) -> Vec<u64> {
        let n = rows * c.kv_width;
        let mut out = Vec::new();
        for (k, v) in &c.layers {
            for s in [k, v] {
                match s {
                    KvStore::F32(d) => out.extend(d[..n].iter().map(|x| x.to_bits() as u64)),
                    KvStore::F16(d) => out.extend(d[..n].iter().map(|x| x.to_bits() as u64)),
                    KvStore::Q8_0(d) => out.extend(d[..n / 32].iter().flat_map(|b| {
                        std::iter::once(b.d.to_bits() as u64).chain(b.qs.iter().map(|&q| q as u8 as u64))
                    })),
                }
            }
        }
        out
    }

    #[test]
    fn a_prefix_copies_bit_for_bit_and_only_between_like_caches() {
        for dtype in [KvDType::F32, KvDType::F16, KvDType::Q8_0] {
            let mut src = KvCache::new(3, 2, 32, dtype);
            src.prefix = 2;
            src.fill_synthetic(40);
            let mut dst = KvCache::new(3, 2, 32, dtype);
            dst.prefix = 2;
            assert!(dst.copy_prefix_from(&src, 25), "{dtype:?}");
            assert_eq!(dst.len(), 25);
            assert_eq!(rows_bits(&dst, 27), rows_bits(&src, 27), "{dtype:?}: prefix rows and 25 tokens");
            // More tokens than the source holds, another prefix or type: refused, unchanged.
            let mut other = KvCache::new(3, 2, 32, dtype);
            assert!(!other.copy_prefix_from(&src, 25), "{dtype:?}: prefix rows differ");
            assert!(!dst.copy_prefix_from(&src, 41));
            assert_eq!(dst.len(), 25);
        }
        let src = KvCache::new(3, 2, 32, KvDType::F32);
        let mut dst = KvCache::new(3, 2, 32, KvDType::F16);
        assert!(!dst.copy_prefix_from(&src, 0));
    }
}
