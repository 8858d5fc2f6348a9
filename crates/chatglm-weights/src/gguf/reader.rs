//! GGUF reader: parses and checks the header of a mapped file; tensors are
//! windows of the mapping (nothing is copied).
//!
//! Every count and length is checked against the bytes that remain before
//! anything is allocated, so a corrupt or hostile file costs an error, never
//! a huge allocation or a panic: counts of metadata pairs, tensors and array
//! elements times their minimum encoded size, string lengths, `n_dims` ≤ 4,
//! element counts that overflow, known ggml types only, rows that are whole
//! quant blocks, tensor offsets aligned and inside the data section, no two
//! tensors overlapping, no duplicate keys or names.

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use super::value::{GgufArray, GgufValue, GgufValueType};
use super::{align_up, dtype_of_ggml_type, ggml_type_name, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};
use crate::mapped::map_file;
use crate::{DType, Tensor, TensorData, WeightsError};

/// Arrays nested deeper than this are refused (GGUF writers never nest more than once).
const MAX_ARRAY_DEPTH: usize = 4;

/// One tensor's entry in the tensor table, checked against the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
    /// The GGUF tensor name (`blk.0.attn_qkv.weight`).
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dimensions in PyTorch order (outermost first): `ne` reversed.
    pub shape: Vec<usize>,
    /// Offset from the start of the data section, as stored.
    pub offset: u64,
    /// Absolute byte range in the file.
    pub file_range: Range<usize>,
}

impl GgufTensorInfo {
    /// GGUF's `ne`: the dimensions innermost first.
    pub fn ne(&self) -> Vec<usize> {
        self.shape.iter().rev().copied().collect()
    }
}

/// Everything before the data section: version, metadata, tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufHeader {
    /// 2 or 3.
    pub version: u32,
    /// `general.alignment`, or 32.
    pub alignment: usize,
    /// Metadata in file order.
    pub metadata: Vec<(String, GgufValue)>,
    /// Tensor table in file order.
    pub tensors: Vec<GgufTensorInfo>,
    /// Absolute offset of the data section.
    pub data_offset: usize,
}

impl GgufHeader {
    /// The value of a metadata key.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The tensor-table entry called `name`.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// Parses and checks the header of a complete GGUF file held in `bytes`.
/// The entry point for fuzzing; never panics.
pub fn parse_gguf_bytes(bytes: &[u8]) -> Result<GgufHeader, WeightsError> {
    parse_header(bytes, Path::new("<memory>"))
}

/// A memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    header: GgufHeader,
    map: Arc<Mmap>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.header.version)
            .field("metadata", &self.header.metadata.len())
            .field("tensors", &self.header.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Maps `path` and checks its header and tensor table.
    pub fn open(path: &Path) -> Result<Self, WeightsError> {
        let map = Arc::new(map_file(path)?);
        let header = parse_header(&map, path)?;
        Ok(Self { path: path.to_path_buf(), header, map })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Version, metadata and tensor table.
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    /// The value of a metadata key.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.header.get(key)
    }

    /// File size in bytes.
    pub fn file_size(&self) -> usize {
        self.map.len()
    }

    /// The tensor called `name` (its GGUF name), as a window of the mapping.
    pub fn tensor(&self, name: &str) -> Result<Tensor, WeightsError> {
        let info = self.header.tensor_info(name).ok_or_else(|| WeightsError::Gguf {
            path: self.path.clone(),
            message: format!("tensor {name} not found"),
        })?;
        self.tensor_from_info(info, name.to_string())
    }

    /// The tensor of a table entry, named `name` (e.g. its official state-dict name).
    pub fn tensor_from_info(&self, info: &GgufTensorInfo, name: String) -> Result<Tensor, WeightsError> {
        let data =
            TensorData::from_mmap(&self.map, info.file_range.clone()).ok_or_else(|| WeightsError::BadTensor {
                path: self.path.clone(),
                tensor: info.name.clone(),
                message: format!("byte range {:?} outside the file", info.file_range),
            })?;
        Ok(Tensor { name, dtype: info.dtype, shape: info.shape.clone(), data })
    }
}

/// A bounds-checked little-endian reader over the file's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn bad(&self, message: String) -> WeightsError {
        WeightsError::Gguf { path: self.path.to_path_buf(), message }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8], WeightsError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            self.bad(format!(
                "truncated: {} at byte {} needs {n} bytes, the file has {} left",
                what(),
                self.pos,
                self.remaining()
            ))
        })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], WeightsError> {
        let b = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, WeightsError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, WeightsError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items of at least `min_size` bytes each, checked against what remains.
    fn count(&mut self, min_size: usize, what: &dyn Fn() -> String) -> Result<usize, WeightsError> {
        let at = self.pos;
        let n = self.u64(what)?;
        let fits = usize::try_from(n).ok().filter(|&n| n.checked_mul(min_size).is_some_and(|b| b <= self.remaining()));
        fits.ok_or_else(|| {
            self.bad(format!(
                "{} at byte {at} is {n}, but the {} bytes left can hold at most {} (each needs at least {min_size} bytes)",
                what(),
                self.remaining(),
                self.remaining() / min_size.max(1)
            ))
        })
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, WeightsError> {
        let at = self.pos;
        let len = self.u64(&|| format!("length of {}", what()))?;
        let Some(len) = usize::try_from(len).ok().filter(|&l| l <= self.remaining()) else {
            return Err(self.bad(format!(
                "{}: string length {len} at byte {at} exceeds the {} bytes left in the file",
                what(),
                self.remaining()
            )));
        };
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| self.bad(format!("{}: string at byte {at} is not UTF-8: {e}", what())))
    }

    fn value(&mut self, ty: GgufValueType, key: &str, depth: usize) -> Result<GgufValue, WeightsError> {
        let what = || format!("value of {key}");
        Ok(match ty {
            GgufValueType::U8 => GgufValue::U8(self.array::<1>(&what)?[0]),
            GgufValueType::I8 => GgufValue::I8(i8::from_le_bytes(self.array(&what)?)),
            GgufValueType::U16 => GgufValue::U16(u16::from_le_bytes(self.array(&what)?)),
            GgufValueType::I16 => GgufValue::I16(i16::from_le_bytes(self.array(&what)?)),
            GgufValueType::U32 => GgufValue::U32(self.u32(&what)?),
            GgufValueType::I32 => GgufValue::I32(i32::from_le_bytes(self.array(&what)?)),
            GgufValueType::F32 => GgufValue::F32(f32::from_le_bytes(self.array(&what)?)),
            GgufValueType::U64 => GgufValue::U64(self.u64(&what)?),
            GgufValueType::I64 => GgufValue::I64(i64::from_le_bytes(self.array(&what)?)),
            GgufValueType::F64 => GgufValue::F64(f64::from_le_bytes(self.array(&what)?)),
            GgufValueType::Bool => {
                let at = self.pos;
                match self.array::<1>(&what)?[0] {
                    0 => GgufValue::Bool(false),
                    1 => GgufValue::Bool(true),
                    b => return Err(self.bad(format!("{key}: boolean at byte {at} is {b}, expected 0 or 1"))),
                }
            }
            GgufValueType::String => GgufValue::String(self.string(&what)?),
            GgufValueType::Array => GgufValue::Array(self.array_value(key, depth)?),
        })
    }

    fn array_value(&mut self, key: &str, depth: usize) -> Result<GgufArray, WeightsError> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.bad(format!("{key}: arrays nested more than {MAX_ARRAY_DEPTH} deep")));
        }
        let at = self.pos;
        let tag = self.u32(&|| format!("array element type of {key}"))?;
        let ty = GgufValueType::from_u32(tag)
            .ok_or_else(|| self.bad(format!("{key}: unknown array element type {tag} at byte {at} (known: 0..=12)")))?;
        let n = self.count(ty.min_size(), &|| format!("element count of array {key}"))?;
        let what = || format!("element of array {key}");
        Ok(match ty {
            GgufValueType::U8 => GgufArray::U8(self.take(n, &what)?.to_vec()),
            GgufValueType::I8 => GgufArray::I8(self.take(n, &what)?.iter().map(|&b| b as i8).collect()),
            GgufValueType::U16 => GgufArray::U16(repeat(n, || Ok(u16::from_le_bytes(self.array(&what)?)))?),
            GgufValueType::I16 => GgufArray::I16(repeat(n, || Ok(i16::from_le_bytes(self.array(&what)?)))?),
            GgufValueType::U32 => GgufArray::U32(repeat(n, || self.u32(&what))?),
            GgufValueType::I32 => GgufArray::I32(repeat(n, || Ok(i32::from_le_bytes(self.array(&what)?)))?),
            GgufValueType::F32 => GgufArray::F32(repeat(n, || Ok(f32::from_le_bytes(self.array(&what)?)))?),
            GgufValueType::U64 => GgufArray::U64(repeat(n, || self.u64(&what))?),
            GgufValueType::I64 => GgufArray::I64(repeat(n, || Ok(i64::from_le_bytes(self.array(&what)?)))?),
            GgufValueType::F64 => GgufArray::F64(repeat(n, || Ok(f64::from_le_bytes(self.array(&what)?)))?),
            GgufValueType::Bool => GgufArray::Bool(repeat(n, || {
                Ok(self.value(GgufValueType::Bool, key, depth)?.as_bool().unwrap_or_default())
            })?),
            GgufValueType::String => GgufArray::String(repeat(n, || self.string(&what))?),
            GgufValueType::Array => GgufArray::Array(repeat(n, || self.array_value(key, depth + 1))?),
        })
    }
}

/// Elements reserved ahead of reading them: a count read from the file is
/// only a claim, so tables grow with what is actually parsed instead of
/// reserving the claimed size (an array of `n` empty strings needs 8 bytes
/// of file each but 24 bytes of `String`).
const MAX_RESERVE: usize = 1024;

/// Calls `read` `n` times (`n` already checked against the bytes left).
fn repeat<T>(n: usize, mut read: impl FnMut() -> Result<T, WeightsError>) -> Result<Vec<T>, WeightsError> {
    let mut out = Vec::with_capacity(n.min(MAX_RESERVE));
    for _ in 0..n {
        out.push(read()?);
    }
    Ok(out)
}

/// Parses the header of `bytes` (the whole file), naming `path` in errors.
pub(crate) fn parse_header(bytes: &[u8], path: &Path) -> Result<GgufHeader, WeightsError> {
    let mut c = Cursor { bytes, pos: 0, path };
    let magic = c.array::<4>(&|| "the magic number".into())?;
    if magic != GGUF_MAGIC {
        return Err(
            c.bad(format!("bad magic {magic:02x?} (expected \"GGUF\" = [47, 47, 55, 46]); is this a GGUF file?"))
        );
    }
    let version = c.u32(&|| "the version".into())?;
    if !(2..=3).contains(&version) {
        return Err(c.bad(format!(
            "unsupported GGUF version {version} (this reader supports versions 2 and 3; \
             re-convert version 1 files with a current llama.cpp)"
        )));
    }
    // The smallest tensor info: empty name (8), n_dims (4), type (4), offset (8).
    let n_tensors = c.count(24, &|| "the tensor count".into())?;
    // The smallest metadata pair: empty key (8), type (4), a one-byte value (1).
    let n_kv = c.count(13, &|| "the metadata count".into())?;

    let mut metadata: Vec<(String, GgufValue)> = Vec::with_capacity(n_kv.min(MAX_RESERVE));
    let mut keys = HashSet::with_capacity(n_kv.min(MAX_RESERVE));
    for i in 0..n_kv {
        let key = c.string(&|| format!("key of metadata pair {i}"))?;
        let at = c.pos;
        let tag = c.u32(&|| format!("value type of {key}"))?;
        let ty = GgufValueType::from_u32(tag)
            .ok_or_else(|| c.bad(format!("{key}: unknown value type {tag} at byte {at} (known: 0..=12)")))?;
        let value = c.value(ty, &key, 0)?;
        if !keys.insert(key.clone()) {
            return Err(c.bad(format!("metadata key {key} appears twice")));
        }
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, GgufValue::U32(a))) if a.is_power_of_two() => *a as usize,
        Some((_, v)) => {
            return Err(c.bad(format!("general.alignment must be a u32 power of two, found {v} ({:?})", v.value_type())))
        }
    };

    struct Raw {
        name: String,
        dtype: DType,
        shape: Vec<usize>,
        n_bytes: usize,
        offset: u64,
    }
    let mut raw = Vec::with_capacity(n_tensors.min(MAX_RESERVE));
    let mut names = HashSet::with_capacity(n_tensors.min(MAX_RESERVE));
    for i in 0..n_tensors {
        let name = c.string(&|| format!("name of tensor {i}"))?;
        let n_dims = c.u32(&|| format!("n_dims of tensor {name}"))?;
        if n_dims as usize > MAX_DIMS {
            return Err(c.bad(format!("tensor {name}: {n_dims} dimensions, at most {MAX_DIMS} are allowed")));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            ne.push(c.u64(&|| format!("dimension {d} of tensor {name}"))?);
        }
        let ty_at = c.pos;
        let ggml_type = c.u32(&|| format!("type of tensor {name}"))?;
        let offset = c.u64(&|| format!("offset of tensor {name}"))?;
        let Some(dtype) = dtype_of_ggml_type(ggml_type) else {
            return Err(c.bad(format!(
                "tensor {name}: unsupported ggml type {} at byte {ty_at} (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1)",
                ggml_type_name(ggml_type)
            )));
        };
        let n_elements = ne.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).filter(|&n| n <= i64::MAX as u64);
        let n_bytes = n_elements.and_then(|n| usize::try_from(n).ok()).and_then(|n| dtype.size_in_bytes(n));
        let Some(n_bytes) = n_bytes else {
            return Err(c.bad(format!("tensor {name}: {dtype} ne {ne:?} is too large or not a whole number of blocks")));
        };
        if dtype.is_quantized() && ne.first().is_some_and(|&d| d % dtype.block_elements() as u64 != 0) {
            return Err(c.bad(format!(
                "tensor {name}: rows of {} elements are not whole {dtype} blocks of {}",
                ne[0],
                dtype.block_elements()
            )));
        }
        if offset % alignment as u64 != 0 {
            return Err(c.bad(format!("tensor {name}: offset {offset} is not a multiple of the alignment {alignment}")));
        }
        if !names.insert(name.clone()) {
            return Err(c.bad(format!("tensor {name} appears twice")));
        }
        // Checked above: every dimension fits in usize because the product does
        // (a zero dimension makes the product 0, so check each too).
        let shape = ne.iter().rev().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect::<Vec<_>>();
        if shape.contains(&usize::MAX) {
            return Err(c.bad(format!("tensor {name}: dimension in {ne:?} does not fit in memory")));
        }
        raw.push(Raw { name, dtype, shape, n_bytes, offset });
    }

    let header_end = c.pos as u64;
    let data_offset = align_up(header_end, alignment as u64)
        .and_then(|d| usize::try_from(d).ok())
        .ok_or_else(|| c.bad("data section offset overflows".into()))?;
    let file_len = bytes.len();
    if data_offset > file_len && !raw.is_empty() {
        return Err(c.bad(format!(
            "truncated: the data section starts at byte {data_offset} but the file is {file_len} bytes"
        )));
    }
    let data_len = file_len.saturating_sub(data_offset);

    let mut tensors = Vec::with_capacity(raw.len());
    for r in raw {
        let end = usize::try_from(r.offset).ok().and_then(|o| o.checked_add(r.n_bytes)).filter(|&e| e <= data_len);
        let Some(end) = end else {
            return Err(c.bad(format!(
                "tensor {}: {} {:?} needs bytes {}..{} of the data section, which has {data_len} (truncated file?)",
                r.name,
                r.dtype,
                r.shape,
                r.offset,
                r.offset as u128 + r.n_bytes as u128
            )));
        };
        let start = r.offset as usize;
        tensors.push(GgufTensorInfo {
            name: r.name,
            dtype: r.dtype,
            shape: r.shape,
            offset: r.offset,
            file_range: data_offset + start..data_offset + end,
        });
    }

    let mut by_start: Vec<&GgufTensorInfo> = tensors.iter().filter(|t| !t.file_range.is_empty()).collect();
    by_start.sort_by_key(|t| t.file_range.start);
    for pair in by_start.windows(2) {
        if let [a, b] = pair {
            if b.file_range.start < a.file_range.end {
                return Err(c.bad(format!("tensors {} and {} overlap", a.name, b.name)));
            }
        }
    }
    Ok(GgufHeader { version, alignment, metadata, tensors, data_offset })
}
