//! An allow-listed reader for the pickle streams (`data.pkl`) that
//! `torch.save` writes for a state dict. It interprets the opcodes as data,
//! never calls anything: the only "callables" it knows are the handful of
//! torch/collections globals that rebuild tensors and dicts, and a stream
//! naming any other global (`posix.system`, `builtins.eval`, ...) is refused
//! with [`WeightsError::UnsafePickle`] at the `GLOBAL` opcode.
//!
//! Opcodes are those of protocol 2 that torch emits (plus the few protocol
//! 3/4 ones a newer pickler may use). Containers are shared immutably
//! (`Rc`); the rare mutation after memoization is copy-on-write, which is
//! not Python's aliasing semantics but is exact for state dicts. Nesting
//! depth and copy work are bounded so hostile input cannot exhaust the
//! stack or the CPU.

use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use crate::{DType, WeightsError};

/// Deepest container nesting accepted (a state dict needs about 4).
const MAX_DEPTH: usize = 64;
/// Elements copied by copy-on-write before giving up.
const MAX_COPY_WORK: usize = 1 << 22;

/// A tensor as the pickle describes it: a view of a storage that lives in
/// the archive entry `data/<storage_key>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRecord {
    /// State-dict key.
    pub name: String,
    /// Name of the storage's archive entry under `data/`.
    pub storage_key: String,
    /// Element type of the storage.
    pub dtype: DType,
    /// Elements in the whole storage.
    pub storage_elements: usize,
    /// First element of this tensor within the storage.
    pub offset_elements: usize,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Strides in elements.
    pub stride: Vec<usize>,
}

/// The allow-listed globals.
#[derive(Debug, Clone, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    /// A torch storage class; `Err(class)` for dtypes we do not read.
    Storage(Result<DType, String>),
}

#[derive(Debug, Clone, PartialEq)]
struct Storage {
    key: String,
    dtype: Result<DType, String>,
    n_elements: usize,
}

#[derive(Debug, Clone, PartialEq)]
struct TensorView {
    storage: Rc<Storage>,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Rc<Vec<Value>>, usize),
    List(Rc<Vec<Value>>, usize),
    Dict(Rc<Vec<(Value, Value)>>, usize),
    Global(Global),
    Storage(Rc<Storage>),
    Tensor(Rc<TensorView>),
}

impl Value {
    /// Nesting depth (containers store theirs; leaves are 0).
    fn depth(&self) -> usize {
        match self {
            Value::Tuple(_, d) | Value::List(_, d) | Value::Dict(_, d) => *d,
            _ => 0,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(..) => "tuple",
            Value::List(..) => "list",
            Value::Dict(..) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
}

/// Stack entries: values, and the MARK sentinel.
enum Slot {
    Mark,
    Value(Value),
}

/// Reads a `torch.save`d state dict from a `data.pkl` stream. Never panics,
/// never executes anything. The entry point for fuzzing.
pub fn read_state_dict(bytes: &[u8]) -> Result<Vec<TensorRecord>, WeightsError> {
    read_state_dict_at(bytes, Path::new("<memory>"))
}

/// [`read_state_dict`], naming `path` in errors.
pub(crate) fn read_state_dict_at(bytes: &[u8], path: &Path) -> Result<Vec<TensorRecord>, WeightsError> {
    let root = Machine::new(bytes, path).run()?;
    state_dict_records(root, path)
}

struct Machine<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
    stack: Vec<Slot>,
    memo: HashMap<u32, Value>,
    copy_work: usize,
}

impl<'a> Machine<'a> {
    fn new(bytes: &'a [u8], path: &'a Path) -> Self {
        Self { bytes, pos: 0, path, stack: Vec::new(), memo: HashMap::new(), copy_work: 0 }
    }

    fn err(&self, message: impl std::fmt::Display) -> WeightsError {
        WeightsError::Pickle { path: self.path.to_path_buf(), message: format!("at byte {}: {message}", self.pos) }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WeightsError> {
        let bytes = self.bytes;
        let out = self
            .pos
            .checked_add(n)
            .and_then(|end| bytes.get(self.pos..end))
            .ok_or_else(|| self.err(format!("stream ends inside an argument ({n} bytes needed)")))?;
        self.pos += n;
        Ok(out)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], WeightsError> {
        let s = self.take(N)?;
        s.try_into().map_err(|_| self.err("short read"))
    }

    fn u8(&mut self) -> Result<u8, WeightsError> {
        Ok(self.take_array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, WeightsError> {
        Ok(u16::from_le_bytes(self.take_array()?))
    }
    fn u32(&mut self) -> Result<u32, WeightsError> {
        Ok(u32::from_le_bytes(self.take_array()?))
    }

    fn line(&mut self) -> Result<&'a str, WeightsError> {
        let rest = self.bytes.get(self.pos..).unwrap_or_default();
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.err("GLOBAL argument is not newline-terminated"))?;
        let line = self.take(n + 1)?;
        std::str::from_utf8(&line[..n]).map_err(|_| self.err("GLOBAL argument is not UTF-8"))
    }

    fn utf8(&mut self, n: usize) -> Result<Value, WeightsError> {
        let raw = self.take(n)?;
        let s = std::str::from_utf8(raw).map_err(|_| self.err("string is not valid UTF-8"))?;
        Ok(Value::Str(Rc::from(s)))
    }

    fn push(&mut self, v: Value) {
        self.stack.push(Slot::Value(v));
    }

    fn pop(&mut self) -> Result<Value, WeightsError> {
        match self.stack.pop() {
            Some(Slot::Value(v)) => Ok(v),
            Some(Slot::Mark) => Err(self.err("expected a value, found MARK")),
            None => Err(self.err("stack underflow")),
        }
    }

    fn top_mut(&mut self) -> Result<&mut Value, WeightsError> {
        match self.stack.last_mut() {
            Some(Slot::Value(v)) => Ok(v),
            _ => Err(WeightsError::Pickle {
                path: self.path.to_path_buf(),
                message: format!("at byte {}: expected a value on the stack", self.pos),
            }),
        }
    }

    /// Pops everything down to (and including) the topmost MARK.
    fn pop_mark(&mut self) -> Result<Vec<Value>, WeightsError> {
        let mark =
            self.stack.iter().rposition(|s| matches!(s, Slot::Mark)).ok_or_else(|| self.err("no MARK on the stack"))?;
        let items = self
            .stack
            .split_off(mark + 1)
            .into_iter()
            .filter_map(|s| match s {
                Slot::Value(v) => Some(v),
                Slot::Mark => None,
            })
            .collect();
        self.stack.pop();
        Ok(items)
    }

    fn container_depth(&self, items: impl Iterator<Item = usize>) -> Result<usize, WeightsError> {
        let depth = items.max().unwrap_or(0) + 1;
        if depth > MAX_DEPTH {
            return Err(self.err(format!("containers nested deeper than {MAX_DEPTH}")));
        }
        Ok(depth)
    }

    fn tuple(&self, items: Vec<Value>) -> Result<Value, WeightsError> {
        let depth = self.container_depth(items.iter().map(Value::depth))?;
        Ok(Value::Tuple(Rc::new(items), depth))
    }

    fn charge_copy(&mut self, n: usize) -> Result<(), WeightsError> {
        self.copy_work = self.copy_work.saturating_add(n);
        if self.copy_work > MAX_COPY_WORK {
            return Err(self.err("too much copying of shared containers"));
        }
        Ok(())
    }

    /// Appends to the list on top of the stack.
    fn extend_list(&mut self, items: Vec<Value>) -> Result<(), WeightsError> {
        let extra_depth = self.container_depth(items.iter().map(Value::depth))?;
        let (shared, len) = match self.top_mut()? {
            Value::List(list, _) => (Rc::strong_count(list) > 1, list.len()),
            other => {
                let kind = other.kind();
                return Err(self.err(format!("APPEND(S) on a {kind}, expected a list")));
            }
        };
        if shared {
            self.charge_copy(len)?;
        }
        if let Value::List(list, depth) = self.top_mut()? {
            Rc::make_mut(list).extend(items);
            *depth = (*depth).max(extra_depth);
        }
        Ok(())
    }

    /// Sets key/value pairs on the dict on top of the stack.
    fn extend_dict(&mut self, items: Vec<Value>) -> Result<(), WeightsError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err("SETITEMS with an odd number of values"));
        }
        let extra_depth = self.container_depth(items.iter().map(Value::depth))?;
        let (shared, len) = match self.top_mut()? {
            Value::Dict(dict, _) => (Rc::strong_count(dict) > 1, dict.len()),
            other => {
                let kind = other.kind();
                return Err(self.err(format!("SETITEM(S) on a {kind}, expected a dict")));
            }
        };
        if shared {
            self.charge_copy(len)?;
        }
        if let Value::Dict(dict, depth) = self.top_mut()? {
            let dict = Rc::make_mut(dict);
            let mut it = items.into_iter();
            // Duplicate keys are resolved (last wins) in `state_dict_records`.
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                dict.push((k, v));
            }
            *depth = (*depth).max(extra_depth);
        }
        Ok(())
    }

    fn global(&self, module: &str, name: &str) -> Result<Value, WeightsError> {
        let g = match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch", class) if class.ends_with("Storage") && class.chars().all(|c| c.is_ascii_alphanumeric()) => {
                Global::Storage(DType::from_torch_storage(class).ok_or_else(|| format!("torch.{class}")))
            }
            _ => {
                return Err(WeightsError::UnsafePickle {
                    path: self.path.to_path_buf(),
                    global: format!("{module}.{name}"),
                })
            }
        };
        Ok(Value::Global(g))
    }

    fn int(&self, v: &Value, what: &str) -> Result<usize, WeightsError> {
        match v {
            Value::Int(i) => usize::try_from(*i).map_err(|_| self.err(format!("{what} is negative ({i})"))),
            Value::Bool(b) => Ok(usize::from(*b)),
            other => Err(self.err(format!("{what} must be an int, found {}", other.kind()))),
        }
    }

    fn int_tuple(&self, v: &Value, what: &str) -> Result<Vec<usize>, WeightsError> {
        match v {
            Value::Tuple(items, _) | Value::List(items, _) => items.iter().map(|i| self.int(i, what)).collect(),
            other => Err(self.err(format!("{what} must be a tuple of ints, found {}", other.kind()))),
        }
    }

    /// BINPERSID: `('storage', storage_class, key, location, n_elements)`.
    fn persistent_load(&self, pid: Value) -> Result<Value, WeightsError> {
        let Value::Tuple(items, _) = &pid else {
            return Err(self.err(format!("persistent id must be a tuple, found {}", pid.kind())));
        };
        match items.as_slice() {
            [Value::Str(tag), Value::Global(Global::Storage(dtype)), Value::Str(key), _location, n]
                if &**tag == "storage" =>
            {
                Ok(Value::Storage(Rc::new(Storage {
                    key: key.to_string(),
                    dtype: dtype.clone(),
                    n_elements: self.int(n, "storage size")?,
                })))
            }
            _ => Err(self.err("persistent id is not ('storage', <torch storage class>, key, location, size)")),
        }
    }

    fn reduce(&self, callable: Value, args: Value) -> Result<Value, WeightsError> {
        let Value::Tuple(args, _) = args else {
            return Err(self.err(format!("REDUCE arguments must be a tuple, found {}", args.kind())));
        };
        match callable {
            Value::Global(Global::OrderedDict) => {
                if !args.is_empty() {
                    return Err(self.err("OrderedDict called with arguments"));
                }
                Ok(Value::Dict(Rc::new(Vec::new()), 1))
            }
            Value::Global(Global::RebuildTensor) => match args.as_slice() {
                // (storage, storage_offset, size, stride, ...requires_grad, hooks, metadata)
                [Value::Storage(storage), offset, size, stride, ..] => {
                    let shape = self.int_tuple(size, "tensor size")?;
                    let stride = self.int_tuple(stride, "tensor stride")?;
                    if shape.len() != stride.len() {
                        return Err(self.err(format!("size {shape:?} and stride {stride:?} differ in rank")));
                    }
                    Ok(Value::Tensor(Rc::new(TensorView {
                        storage: Rc::clone(storage),
                        offset: self.int(offset, "storage offset")?,
                        shape,
                        stride,
                    })))
                }
                _ => Err(self.err("_rebuild_tensor_v2 expects (storage, offset, size, stride, ...)")),
            },
            Value::Global(Global::RebuildParameter) => match args.as_slice() {
                [t @ Value::Tensor(_), ..] => Ok(t.clone()),
                _ => Err(self.err("_rebuild_parameter expects (tensor, requires_grad, hooks)")),
            },
            Value::Global(Global::Storage(_)) => Err(self.err("storage classes cannot be called directly")),
            other => Err(self.err(format!("REDUCE on a {}, expected an allow-listed global", other.kind()))),
        }
    }

    fn run(mut self) -> Result<Value, WeightsError> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(self.err(format!("unknown pickle protocol {proto}")));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: length of the next frame, a hint only
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Slot::Mark),
                b'}' => self.push(Value::Dict(Rc::new(Vec::new()), 1)),
                b']' => self.push(Value::List(Rc::new(Vec::new()), 1)),
                b')' => self.push(Value::Tuple(Rc::new(Vec::new()), 1)),
                b't' => {
                    let items = self.pop_mark()?;
                    let t = self.tuple(items)?;
                    self.push(t);
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = (0..n).map(|_| self.pop()).collect::<Result<Vec<_>, _>>()?;
                    items.reverse();
                    let t = self.tuple(items)?;
                    self.push(t);
                }
                b'q' => {
                    let i = self.u8()?;
                    self.memoize(u32::from(i))?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memoize(i)?;
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len()).map_err(|_| self.err("memo overflow"))?;
                    self.memoize(i)?;
                }
                b'h' | b'j' => {
                    let i = if op == b'h' { u32::from(self.u8()?) } else { self.u32()? };
                    let v = self.memo.get(&i).cloned().ok_or_else(|| self.err(format!("memo key {i} unset")))?;
                    self.push(v);
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.take_array()?);
                    self.push(Value::Int(i64::from(v)));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(i64::from(v)));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(i64::from(v)));
                }
                0x8a => {
                    let n = usize::from(self.u8()?);
                    if n > 8 {
                        return Err(self.err(format!("LONG1 of {n} bytes; only 64-bit integers are supported")));
                    }
                    let raw = self.take(n)?;
                    let mut buf = if raw.last().is_some_and(|&b| b & 0x80 != 0) { [0xFF; 8] } else { [0; 8] };
                    buf[..n].copy_from_slice(raw);
                    self.push(Value::Int(i64::from_le_bytes(buf)));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take_array()?);
                    self.push(Value::Float(v));
                }
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = self.utf8(n)?;
                    self.push(s);
                }
                0x8c => {
                    let n = usize::from(self.u8()?);
                    let s = self.utf8(n)?;
                    self.push(s);
                }
                b'U' | b'T' | b'C' | b'B' => {
                    let n = if op == b'U' || op == b'C' { usize::from(self.u8()?) } else { self.u32()? as usize };
                    let raw = self.take(n)?;
                    self.push(Value::Bytes(Rc::from(raw)));
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(module, name)?;
                    self.push(g);
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (&module, &name) else {
                        return Err(self.err("STACK_GLOBAL needs two strings"));
                    };
                    let g = self.global(module, name)?;
                    self.push(g);
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.push(v);
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.push(v);
                }
                b'b' => {
                    // BUILD: object state (an OrderedDict's `_metadata`, a
                    // parameter's attributes). Not needed for the tensors.
                    self.pop()?;
                    self.top_mut()?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.extend_dict(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.extend_dict(items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.extend_list(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend_list(items)?;
                }
                b'0' => {
                    self.stack.pop().ok_or_else(|| self.err("POP on an empty stack"))?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top_mut()?.clone();
                    self.push(v);
                }
                other => {
                    return Err(
                        self.err(format!("opcode 0x{other:02x} is not supported (not used by torch.save state dicts)"))
                    )
                }
            }
        }
    }

    fn memoize(&mut self, i: u32) -> Result<(), WeightsError> {
        let v = self.top_mut()?.clone();
        self.memo.insert(i, v);
        Ok(())
    }
}

/// Turns the unpickled root (a dict of name → tensor) into records.
fn state_dict_records(root: Value, path: &Path) -> Result<Vec<TensorRecord>, WeightsError> {
    let bad = |message: String| WeightsError::Pickle { path: path.to_path_buf(), message };
    let Value::Dict(items, _) = root else {
        return Err(bad(format!("the pickle holds a {}, expected a state dict", root.kind())));
    };
    let mut out: Vec<TensorRecord> = Vec::with_capacity(items.len());
    let mut index_of: HashMap<Rc<str>, usize> = HashMap::new();
    for (k, v) in items.iter() {
        let Value::Str(name) = k else {
            return Err(bad(format!("state-dict key is a {}, expected a string", k.kind())));
        };
        let Value::Tensor(t) = v else {
            return Err(bad(format!("state-dict entry {name} is a {}, expected a tensor", v.kind())));
        };
        let dtype = t.storage.dtype.clone().map_err(|class| WeightsError::UnsupportedDtype {
            path: path.to_path_buf(),
            tensor: name.to_string(),
            dtype: class,
        })?;
        let record = TensorRecord {
            name: name.to_string(),
            storage_key: t.storage.key.clone(),
            dtype,
            storage_elements: t.storage.n_elements,
            offset_elements: t.offset,
            shape: t.shape.clone(),
            stride: t.stride.clone(),
        };
        // As in Python, a repeated key replaces the earlier value.
        match index_of.get(name) {
            Some(&i) => out[i] = record,
            None => {
                index_of.insert(Rc::clone(name), out.len());
                out.push(record);
            }
        }
    }
    Ok(out)
}
