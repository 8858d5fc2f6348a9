//! A minimal protobuf wire-format reader and writer.
//!
//! Only what `tokenizer.model` needs: varints, 32/64-bit fixed values and
//! length-delimited fields, plus skipping of anything unknown (groups
//! included). Every read is bounds-checked; problems are reported with the
//! absolute byte offset and the message being decoded.

use crate::TokenizerError;

/// Nesting limit for (deprecated) groups when skipping unknown fields.
const MAX_GROUP_DEPTH: usize = 64;

/// The payload of one field, as found on the wire.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WireValue<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 1 (its value is never needed).
    Fixed64,
    /// Wire type 2: the bytes and their absolute offset in the file.
    Bytes(&'a [u8], usize),
    /// Wire type 5.
    Fixed32(u32),
    /// Wire types 3/4: a skipped group (its contents are ignored).
    Group,
}

impl WireValue<'_> {
    fn wire_name(&self) -> &'static str {
        match self {
            Self::Varint(_) => "varint",
            Self::Fixed64 => "fixed64",
            Self::Bytes(..) => "length-delimited",
            Self::Fixed32(_) => "fixed32",
            Self::Group => "group",
        }
    }
}

/// One decoded field: its number, payload and the absolute offset of its key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Field<'a> {
    pub number: u32,
    pub value: WireValue<'a>,
    pub offset: usize,
}

/// Iterates over the fields of one message.
pub(crate) struct MessageReader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Absolute offset of `buf[0]` in the original input.
    base: usize,
    message: &'static str,
}

impl<'a> MessageReader<'a> {
    /// Reads a message occupying all of `buf`, which starts at absolute `base`.
    pub fn new(buf: &'a [u8], base: usize, message: &'static str) -> Self {
        Self { buf, pos: 0, base, message }
    }

    /// An error at absolute offset `offset` in this message.
    pub fn error(&self, offset: usize, problem: impl Into<String>) -> TokenizerError {
        TokenizerError::Protobuf { offset, message: self.message, problem: problem.into() }
    }

    /// The next field, or `None` at the end of the message.
    pub fn next_field(&mut self) -> Result<Option<Field<'a>>, TokenizerError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let offset = self.base + self.pos;
        let key = self.read_varint()?;
        let (number, wire_type) = self.split_key(key, offset)?;
        let value = match wire_type {
            0 => WireValue::Varint(self.read_varint()?),
            1 => {
                self.read_array::<8>()?;
                WireValue::Fixed64
            }
            2 => {
                let len_offset = self.base + self.pos;
                let len = self.read_varint()?;
                let remaining = self.buf.len() - self.pos;
                let len = usize::try_from(len).ok().filter(|&len| len <= remaining).ok_or_else(|| {
                    self.error(
                        len_offset,
                        format!("field {number} claims {len} bytes but only {remaining} remain (truncated file?)"),
                    )
                })?;
                let start = self.pos;
                self.pos += len;
                WireValue::Bytes(&self.buf[start..start + len], self.base + start)
            }
            3 => {
                self.skip_group(number, offset)?;
                WireValue::Group
            }
            4 => return Err(self.error(offset, format!("unexpected end-group tag for field {number}"))),
            5 => WireValue::Fixed32(u32::from_le_bytes(self.read_array::<4>()?)),
            other => return Err(self.error(offset, format!("field {number} has invalid wire type {other}"))),
        };
        Ok(Some(Field { number, value, offset }))
    }

    fn split_key(&self, key: u64, offset: usize) -> Result<(u32, u8), TokenizerError> {
        let wire_type = (key & 7) as u8;
        let number = key >> 3;
        match u32::try_from(number) {
            Ok(n) if n != 0 && n < (1 << 29) => Ok((n, wire_type)),
            _ => Err(self.error(offset, format!("invalid field number {number}"))),
        }
    }

    /// Skips the body of a group started by field `number` (the start tag is consumed).
    fn skip_group(&mut self, number: u32, offset: usize) -> Result<(), TokenizerError> {
        let mut open = vec![number];
        while let Some(&innermost) = open.last() {
            if open.len() > MAX_GROUP_DEPTH {
                return Err(self.error(offset, "groups nested too deeply"));
            }
            if self.pos >= self.buf.len() {
                return Err(self.error(self.base + self.pos, format!("group {number} is not closed (truncated file?)")));
            }
            let key_offset = self.base + self.pos;
            let key = self.read_varint()?;
            let (n, wire_type) = self.split_key(key, key_offset)?;
            match wire_type {
                0 => {
                    self.read_varint()?;
                }
                1 => {
                    self.read_array::<8>()?;
                }
                2 => {
                    let len = self.read_varint()?;
                    let remaining = (self.buf.len() - self.pos) as u64;
                    if len > remaining {
                        return Err(self.error(key_offset, format!("field {n} inside group overruns the message")));
                    }
                    self.pos += len as usize;
                }
                3 => open.push(n),
                4 if n == innermost => {
                    open.pop();
                }
                4 => {
                    return Err(
                        self.error(key_offset, format!("end-group tag {n} does not match open group {innermost}"))
                    )
                }
                5 => {
                    self.read_array::<4>()?;
                }
                other => return Err(self.error(key_offset, format!("field {n} has invalid wire type {other}"))),
            }
        }
        Ok(())
    }

    fn read_varint(&mut self) -> Result<u64, TokenizerError> {
        let start = self.base + self.pos;
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(self.error(start, "varint runs past the end of the message (truncated file?)"));
            };
            self.pos += 1;
            let bits = u64::from(byte & 0x7f);
            if i == 9 && byte > 1 {
                return Err(self.error(start, "varint does not fit in 64 bits"));
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.error(start, "varint longer than 10 bytes"))
    }

    fn read_array<const N: usize>(&mut self) -> Result<[u8; N], TokenizerError> {
        let start = self.pos;
        let bytes = self.buf.get(start..start + N).and_then(|s| <[u8; N]>::try_from(s).ok()).ok_or_else(|| {
            self.error(
                self.base + start,
                format!("{N}-byte fixed value runs past the end of the message (truncated file?)"),
            )
        })?;
        self.pos += N;
        Ok(bytes)
    }

    fn wrong_type(&self, field: &Field<'_>, name: &str, expected: &str) -> TokenizerError {
        self.error(
            field.offset,
            format!("field {} ({name}) has wire type {}, expected {expected}", field.number, field.value.wire_name()),
        )
    }

    /// The field as a varint-encoded integer (uint64/int64/int32/enum).
    pub fn varint(&self, field: &Field<'_>, name: &str) -> Result<u64, TokenizerError> {
        match field.value {
            WireValue::Varint(v) => Ok(v),
            _ => Err(self.wrong_type(field, name, "varint")),
        }
    }

    /// The field as an `int32` (negative values are sign-extended 10-byte varints).
    pub fn int32(&self, field: &Field<'_>, name: &str) -> Result<i32, TokenizerError> {
        // Truncation to the low 32 bits is what protobuf specifies for int32.
        Ok(self.varint(field, name)? as i32)
    }

    /// The field as a `bool`.
    pub fn bool(&self, field: &Field<'_>, name: &str) -> Result<bool, TokenizerError> {
        Ok(self.varint(field, name)? != 0)
    }

    /// The field as a `float`.
    pub fn float(&self, field: &Field<'_>, name: &str) -> Result<f32, TokenizerError> {
        match field.value {
            WireValue::Fixed32(bits) => Ok(f32::from_bits(bits)),
            _ => Err(self.wrong_type(field, name, "fixed32 (float)")),
        }
    }

    /// The field as raw bytes plus their absolute offset.
    pub fn bytes(&self, field: &Field<'a>, name: &str) -> Result<(&'a [u8], usize), TokenizerError> {
        match field.value {
            WireValue::Bytes(b, offset) => Ok((b, offset)),
            _ => Err(self.wrong_type(field, name, "length-delimited")),
        }
    }

    /// The field as a UTF-8 string.
    pub fn string(&self, field: &Field<'a>, name: &str) -> Result<&'a str, TokenizerError> {
        let (bytes, offset) = self.bytes(field, name)?;
        std::str::from_utf8(bytes).map_err(|e| {
            self.error(offset + e.valid_up_to(), format!("field {} ({name}) is not valid UTF-8", field.number))
        })
    }
}

/// Appends protobuf fields to a byte buffer.
#[derive(Default)]
pub(crate) struct MessageWriter {
    pub buf: Vec<u8>,
}

impl MessageWriter {
    fn put_varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn put_key(&mut self, number: u32, wire_type: u8) {
        self.put_varint((u64::from(number) << 3) | u64::from(wire_type));
    }

    /// A varint field (`int32` values are sign-extended as protobuf requires).
    pub fn varint(&mut self, number: u32, v: u64) {
        self.put_key(number, 0);
        self.put_varint(v);
    }

    /// An `int32` field.
    pub fn int32(&mut self, number: u32, v: i32) {
        self.varint(number, i64::from(v) as u64);
    }

    /// A `bool` field.
    pub fn bool(&mut self, number: u32, v: bool) {
        self.varint(number, u64::from(v));
    }

    /// A `float` field.
    pub fn float(&mut self, number: u32, v: f32) {
        self.put_key(number, 5);
        self.buf.extend_from_slice(&v.to_bits().to_le_bytes());
    }

    /// A length-delimited field (string, bytes or embedded message).
    pub fn bytes(&mut self, number: u32, v: &[u8]) {
        self.put_key(number, 2);
        self.put_varint(v.len() as u64);
        self.buf.extend_from_slice(v);
    }
}
