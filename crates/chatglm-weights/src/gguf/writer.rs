//! Streaming GGUF writer. The header (metadata and every tensor's offset)
//! is written first, since each tensor's size follows from its dtype and
//! shape; the data then follows tensor by tensor, in any number of pieces,
//! each tensor padded to the alignment. Nothing is buffered beyond the
//! `Write` the caller passes (use a `BufWriter`).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::value::{GgufArray, GgufValue};
use super::{align_up, ggml_type_of, DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION, MAX_DIMS};
use crate::{DType, WeightsError};

/// A tensor to be written: GGUF name, dtype and PyTorch-order shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorSpec {
    /// The GGUF name (`blk.0.ffn_up.weight`).
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dimensions, outermost first (written reversed, as `ne`).
    pub shape: Vec<usize>,
}

impl GgufTensorSpec {
    /// Bytes of the tensor's data; `None` if the shape overflows or its rows
    /// are not whole blocks.
    pub fn n_bytes(&self) -> Option<usize> {
        let n = self.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
        let row = self.shape.last().copied().unwrap_or(1);
        if row % self.dtype.block_elements() != 0 {
            return None;
        }
        self.dtype.size_in_bytes(n)
    }
}

/// The planned layout: header bytes, then each tensor's (offset, size).
struct Layout {
    alignment: usize,
    header: Vec<u8>,
    sizes: Vec<usize>,
    data_bytes: u64,
}

fn layout(path: &Path, metadata: &[(String, GgufValue)], tensors: &[GgufTensorSpec]) -> Result<Layout, WeightsError> {
    let bad = |message: String| WeightsError::Gguf { path: path.to_path_buf(), message };
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, GgufValue::U32(a))) if a.is_power_of_two() => *a as usize,
        Some((_, v)) => return Err(bad(format!("general.alignment must be a u32 power of two, got {v}"))),
    };
    let mut header = Vec::new();
    header.extend_from_slice(&GGUF_MAGIC);
    header.extend_from_slice(&GGUF_VERSION.to_le_bytes());
    header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    let mut seen = std::collections::HashSet::new();
    for (key, value) in metadata {
        if !seen.insert(key.as_str()) {
            return Err(bad(format!("metadata key {key} given twice")));
        }
        put_string(&mut header, key);
        header.extend_from_slice(&(value.value_type() as u32).to_le_bytes());
        put_value(&mut header, value);
    }
    let mut sizes = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    let mut names = std::collections::HashSet::new();
    for t in tensors {
        if !names.insert(t.name.as_str()) {
            return Err(bad(format!("tensor {} given twice", t.name)));
        }
        if t.shape.len() > MAX_DIMS {
            return Err(bad(format!("tensor {}: shape {:?} has more than {MAX_DIMS} dimensions", t.name, t.shape)));
        }
        let n_bytes = t.n_bytes().ok_or_else(|| {
            bad(format!(
                "tensor {}: {} {:?} overflows or its rows are not whole {}-element blocks",
                t.name,
                t.dtype,
                t.shape,
                t.dtype.block_elements()
            ))
        })?;
        put_string(&mut header, &t.name);
        header.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for &d in t.shape.iter().rev() {
            header.extend_from_slice(&(d as u64).to_le_bytes());
        }
        header.extend_from_slice(&ggml_type_of(t.dtype).to_le_bytes());
        header.extend_from_slice(&offset.to_le_bytes());
        sizes.push(n_bytes);
        offset = align_up(offset + n_bytes as u64, alignment as u64)
            .ok_or_else(|| bad("the data section overflows".into()))?;
    }
    Ok(Layout { alignment, header, sizes, data_bytes: offset })
}

/// The size in bytes of the GGUF file these metadata and tensors make.
pub fn gguf_file_size(metadata: &[(String, GgufValue)], tensors: &[GgufTensorSpec]) -> Result<u64, WeightsError> {
    let l = layout(Path::new("<size>"), metadata, tensors)?;
    let header = align_up(l.header.len() as u64, l.alignment as u64).unwrap_or(u64::MAX);
    Ok(header.saturating_add(l.data_bytes))
}

/// Writes one GGUF file: [`new`](Self::new) writes the header, then
/// [`write_data`](Self::write_data) the tensors' bytes in order, then
/// [`finish`](Self::finish) checks that every tensor was completed.
pub struct GgufWriter<W: Write> {
    out: W,
    path: PathBuf,
    alignment: usize,
    tensors: Vec<GgufTensorSpec>,
    sizes: Vec<usize>,
    /// Index of the tensor being written.
    current: usize,
    /// Bytes of it written so far.
    written: usize,
}

impl<W: Write> GgufWriter<W> {
    /// Writes the header (metadata, tensor table, padding). `path` names the
    /// file in errors. `general.alignment`, if among `metadata`, sets the alignment.
    pub fn new(
        mut out: W,
        path: &Path,
        metadata: &[(String, GgufValue)],
        tensors: Vec<GgufTensorSpec>,
    ) -> Result<Self, WeightsError> {
        let l = layout(path, metadata, &tensors)?;
        let io = |e| WeightsError::Io { path: path.to_path_buf(), source: e };
        out.write_all(&l.header).map_err(io)?;
        let pad = align_up(l.header.len() as u64, l.alignment as u64).unwrap_or(0) as usize - l.header.len();
        out.write_all(&vec![0u8; pad]).map_err(io)?;
        Ok(Self {
            out,
            path: path.to_path_buf(),
            alignment: l.alignment,
            tensors,
            sizes: l.sizes,
            current: 0,
            written: 0,
        })
    }

    /// The tensor the next bytes belong to (`None` when all are written).
    pub fn next_tensor(&self) -> Option<&GgufTensorSpec> {
        self.tensors.get(self.current)
    }

    fn io(&self, e: std::io::Error) -> WeightsError {
        WeightsError::Io { path: self.path.clone(), source: e }
    }

    fn bad(&self, message: String) -> WeightsError {
        WeightsError::Gguf { path: self.path.clone(), message }
    }

    /// Appends bytes to the current tensor, moving to the next once it is
    /// complete. Bytes may not span two tensors.
    pub fn write_data(&mut self, bytes: &[u8]) -> Result<(), WeightsError> {
        let (Some(t), Some(&size)) = (self.tensors.get(self.current), self.sizes.get(self.current)) else {
            return Err(self.bad(format!("{} bytes written after the last tensor", bytes.len())));
        };
        if self.written + bytes.len() > size {
            return Err(self.bad(format!(
                "tensor {}: {} bytes written but {} {:?} takes {size}",
                t.name,
                self.written + bytes.len(),
                t.dtype,
                t.shape
            )));
        }
        self.out.write_all(bytes).map_err(|e| self.io(e))?;
        self.written += bytes.len();
        if self.written == size {
            let pad = (self.alignment - size % self.alignment) % self.alignment;
            self.out.write_all(&vec![0u8; pad]).map_err(|e| self.io(e))?;
            self.current += 1;
            self.written = 0;
        }
        Ok(())
    }

    /// Writes a whole tensor, checking that `name` is the one expected next.
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<(), WeightsError> {
        match self.next_tensor() {
            Some(t) if t.name == name && self.written == 0 => {}
            Some(t) => return Err(self.bad(format!("tensor {name} written while {} was expected", t.name))),
            None => return Err(self.bad(format!("tensor {name} written after the last tensor"))),
        }
        if self.sizes.get(self.current) == Some(&0) {
            // Zero-size tensors complete without data.
            self.current += 1;
            return Ok(());
        }
        self.write_data(bytes)
    }

    /// Checks that every tensor is complete, flushes, and returns the writer.
    pub fn finish(mut self) -> Result<W, WeightsError> {
        while self.sizes.get(self.current) == Some(&0) {
            self.current += 1;
        }
        if let Some(t) = self.tensors.get(self.current) {
            return Err(self.bad(format!(
                "finished with tensor {} incomplete ({} of {} bytes) and {} more not written",
                t.name,
                self.written,
                self.sizes[self.current],
                self.tensors.len() - self.current - 1
            )));
        }
        self.out.flush().map_err(|e| self.io(e))?;
        Ok(self.out)
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(u8::from(*x)),
        GgufValue::String(s) => put_string(out, s),
        GgufValue::Array(a) => put_array(out, a),
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

fn put_array(out: &mut Vec<u8>, a: &GgufArray) {
    out.extend_from_slice(&(a.element_type() as u32).to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    match a {
        GgufArray::U8(v) => out.extend_from_slice(v),
        GgufArray::I8(v) => out.extend(v.iter().map(|&x| x as u8)),
        GgufArray::U16(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        GgufArray::I16(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        GgufArray::U32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        GgufArray::I32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        GgufArray::F32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        GgufArray::Bool(v) => out.extend(v.iter().map(|&x| u8::from(x))),
        GgufArray::String(v) => v.iter().for_each(|s| put_string(out, s)),
        GgufArray::Array(v) => v.iter().for_each(|a| put_array(out, a)),
        GgufArray::U64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        GgufArray::I64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        GgufArray::F64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::parse_gguf_bytes;

    #[test]
    fn writes_what_the_reader_reads() {
        let metadata = vec![
            ("general.architecture".to_string(), GgufValue::String("chatglm".into())),
            ("a.u8s".to_string(), GgufValue::Array(GgufArray::U8(vec![1, 2, 3]))),
            ("a.nested".to_string(), GgufValue::Array(GgufArray::Array(vec![GgufArray::String(vec!["x".into()])]))),
            ("a.f".to_string(), GgufValue::F32(1.5)),
            ("a.b".to_string(), GgufValue::Bool(true)),
        ];
        let tensors = vec![
            GgufTensorSpec { name: "w".into(), dtype: DType::F32, shape: vec![2, 3] },
            GgufTensorSpec { name: "q".into(), dtype: DType::Q8_0, shape: vec![1, 32] },
        ];
        let mut w = GgufWriter::new(Vec::new(), Path::new("t.gguf"), &metadata, tensors.clone()).unwrap();
        w.write_data(&[1u8; 12]).unwrap();
        w.write_data(&[2u8; 12]).unwrap();
        assert!(w.write_tensor("w", &[0; 4]).is_err(), "w is complete, q is next");
        w.write_tensor("q", &[3u8; 34]).unwrap();
        assert!(w.write_data(&[0]).is_err());
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() as u64, gguf_file_size(&metadata, &tensors).unwrap());
        let h = parse_gguf_bytes(&bytes).unwrap();
        assert_eq!(h.metadata, metadata);
        assert_eq!(h.tensors[0].shape, vec![2, 3]);
        assert_eq!(h.tensors[0].ne(), vec![3, 2]);
        assert_eq!(&bytes[h.tensors[0].file_range.clone()], &[[1u8; 12], [2u8; 12]].concat()[..]);
        assert_eq!(h.tensors[1].file_range.start % 32, 0);
        assert_eq!(&bytes[h.tensors[1].file_range.clone()], &[3u8; 34][..]);
    }

    #[test]
    fn incomplete_or_bad_plans_are_errors() {
        let t = vec![GgufTensorSpec { name: "w".into(), dtype: DType::F16, shape: vec![4] }];
        let mut w = GgufWriter::new(Vec::new(), Path::new("t.gguf"), &[], t).unwrap();
        w.write_data(&[0; 4]).unwrap();
        assert!(w.write_data(&[0; 6]).is_err());
        assert!(w.finish().unwrap_err().to_string().contains("incomplete"));
        let q = vec![GgufTensorSpec { name: "q".into(), dtype: DType::Q4_0, shape: vec![2, 16] }];
        assert!(GgufWriter::new(Vec::new(), Path::new("t.gguf"), &[], q).is_err());
    }
}
