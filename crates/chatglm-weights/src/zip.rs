//! Just enough of the zip format to read `torch.save` archives: the central
//! directory (with zip64 extensions, needed for files > 4 GiB) and the
//! local headers, for *stored* (uncompressed) entries only, which is what
//! torch writes. Entry data is returned as byte ranges of the file so the
//! caller can slice its memory map without copying.
//!
//! Layouts follow PKWARE APPNOTE.TXT §4.3; all integers little-endian.

use std::ops::Range;
use std::path::Path;

use crate::WeightsError;

const EOCD_SIG: u32 = 0x0605_4b50;
const EOCD_LEN: usize = 22;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_LOCATOR_LEN: usize = 20;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;
const ZIP64_EXTRA_ID: u16 = 0x0001;
/// End-of-central-directory record plus the longest possible comment.
const MAX_EOCD_SEARCH: usize = EOCD_LEN + u16::MAX as usize;

/// One stored entry: its name and where its bytes are in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipEntry {
    /// Path inside the archive, e.g. `archive/data/0`.
    pub name: String,
    /// Absolute byte range of the (uncompressed) data in the file.
    pub data: Range<usize>,
}

/// Bounds-checked little-endian reader over a byte slice.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn slice(&self, at: usize, len: usize) -> Option<&'a [u8]> {
        self.bytes.get(at..at.checked_add(len)?)
    }
    fn u16(&self, at: usize) -> Option<u16> {
        Some(u16::from_le_bytes(self.slice(at, 2)?.try_into().ok()?))
    }
    fn u32(&self, at: usize) -> Option<u32> {
        Some(u32::from_le_bytes(self.slice(at, 4)?.try_into().ok()?))
    }
    fn u64(&self, at: usize) -> Option<u64> {
        Some(u64::from_le_bytes(self.slice(at, 8)?.try_into().ok()?))
    }
}

/// Lists the entries of the zip archive `bytes` (the whole file).
pub fn read_entries(bytes: &[u8], path: &Path) -> Result<Vec<ZipEntry>, WeightsError> {
    let bad = |message: String| WeightsError::Zip { path: path.to_path_buf(), message };
    let r = Reader { bytes };
    let search_from = bytes.len().saturating_sub(MAX_EOCD_SEARCH);
    let eocd = (search_from..=bytes.len().saturating_sub(EOCD_LEN))
        .rev()
        .find(|&at| r.u32(at) == Some(EOCD_SIG))
        .ok_or_else(|| bad("no end-of-central-directory record (not a zip archive, or truncated)".into()))?;
    let field = |v: Option<u32>| v.ok_or_else(|| bad("end-of-central-directory record is truncated".into()));
    let mut n_entries = u64::from(field(r.u16(eocd + 10).map(u32::from))?);
    let mut cd_size = u64::from(field(r.u32(eocd + 12))?);
    let mut cd_offset = u64::from(field(r.u32(eocd + 16))?);

    let needs_zip64 = n_entries == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF;
    if needs_zip64 {
        let locator = eocd
            .checked_sub(ZIP64_LOCATOR_LEN)
            .filter(|&at| r.u32(at) == Some(ZIP64_LOCATOR_SIG))
            .ok_or_else(|| bad("zip64 sizes announced but no zip64 locator found".into()))?;
        let z64 = r
            .u64(locator + 8)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| bad("zip64 locator is truncated".into()))?;
        if r.u32(z64) != Some(ZIP64_EOCD_SIG) {
            return Err(bad(format!("zip64 end-of-central-directory record not found at offset {z64}")));
        }
        let get = |at| r.u64(z64 + at).ok_or_else(|| bad("zip64 end-of-central-directory record is truncated".into()));
        n_entries = get(32)?;
        cd_size = get(40)?;
        cd_offset = get(48)?;
    }

    let cd_start =
        usize::try_from(cd_offset).map_err(|_| bad(format!("central directory offset {cd_offset} too large")))?;
    let cd_len = usize::try_from(cd_size).map_err(|_| bad(format!("central directory size {cd_size} too large")))?;
    if cd_start.checked_add(cd_len).is_none_or(|end| end > bytes.len()) {
        return Err(bad(format!(
            "central directory [{cd_offset}, +{cd_size}) runs past the end of the {}-byte file: truncated?",
            bytes.len()
        )));
    }
    // Each central record is at least 46 bytes: bound the count by the size.
    if n_entries > (cd_size / 46) + 1 {
        return Err(bad(format!("{n_entries} entries cannot fit in a {cd_size}-byte central directory")));
    }

    let mut entries = Vec::with_capacity(n_entries as usize);
    let mut at = cd_start;
    for i in 0..n_entries {
        entries.push(read_central_entry(&r, &mut at).map_err(|m| bad(format!("central entry {i}: {m}")))?);
    }
    Ok(entries)
}

/// Reads the central-directory record at `*at`, advances `*at` past it, and
/// resolves the entry's data range through its local header.
fn read_central_entry(r: &Reader<'_>, at: &mut usize) -> Result<ZipEntry, String> {
    let start = *at;
    let truncated = || "record is truncated".to_string();
    if r.u32(start) != Some(CENTRAL_SIG) {
        return Err(format!("bad signature at offset {start}"));
    }
    let flags = r.u16(start + 8).ok_or_else(truncated)?;
    let method = r.u16(start + 10).ok_or_else(truncated)?;
    let mut compressed = u64::from(r.u32(start + 20).ok_or_else(truncated)?);
    let mut uncompressed = u64::from(r.u32(start + 24).ok_or_else(truncated)?);
    let name_len = usize::from(r.u16(start + 28).ok_or_else(truncated)?);
    let extra_len = usize::from(r.u16(start + 30).ok_or_else(truncated)?);
    let comment_len = usize::from(r.u16(start + 32).ok_or_else(truncated)?);
    let mut local_offset = u64::from(r.u32(start + 42).ok_or_else(truncated)?);
    let name_bytes = r.slice(start + 46, name_len).ok_or_else(truncated)?;
    let name = String::from_utf8(name_bytes.to_vec()).map_err(|_| "entry name is not UTF-8".to_string())?;
    let extra = r.slice(start + 46 + name_len, extra_len).ok_or_else(truncated)?;
    *at = start + 46 + name_len + extra_len + comment_len;

    // zip64 extra field: the 64-bit values of exactly those fields that are
    // 0xFFFFFFFF above, in the order uncompressed, compressed, offset.
    let xr = Reader { bytes: extra };
    let mut x = 0;
    while let (Some(id), Some(size)) = (xr.u16(x), xr.u16(x + 2)) {
        if id == ZIP64_EXTRA_ID {
            let mut field_at = x + 4;
            for value in [&mut uncompressed, &mut compressed, &mut local_offset] {
                if *value == 0xFFFF_FFFF {
                    *value = xr.u64(field_at).ok_or_else(|| format!("{name}: zip64 extra field is truncated"))?;
                    field_at += 8;
                }
            }
        }
        x += 4 + usize::from(size);
    }

    if flags & 1 != 0 {
        return Err(format!("{name}: encrypted entries are not supported"));
    }
    if method != 0 {
        return Err(format!("{name}: compression method {method}; torch.save writes stored (method 0) entries"));
    }
    if compressed != uncompressed {
        return Err(format!(
            "{name}: stored entry with compressed size {compressed} != uncompressed size {uncompressed}"
        ));
    }
    let local = usize::try_from(local_offset).map_err(|_| format!("{name}: local header offset too large"))?;
    if r.u32(local) != Some(LOCAL_SIG) {
        return Err(format!("{name}: no local header at offset {local_offset}"));
    }
    let local_name_len = usize::from(r.u16(local + 26).ok_or_else(|| format!("{name}: local header truncated"))?);
    let local_extra_len = usize::from(r.u16(local + 28).ok_or_else(|| format!("{name}: local header truncated"))?);
    // torch pads the local extra field so that data is 64-byte aligned; it
    // differs from the central one, so the data offset comes from here.
    let data_start = local + 30 + local_name_len + local_extra_len;
    let len = usize::try_from(uncompressed).map_err(|_| format!("{name}: size {uncompressed} too large"))?;
    let data_end = data_start.checked_add(len).filter(|&end| end <= r.bytes.len()).ok_or_else(|| {
        format!("{name}: {len} data bytes at offset {data_start} run past the end of the file (truncated?)")
    })?;
    Ok(ZipEntry { name, data: data_start..data_end })
}
