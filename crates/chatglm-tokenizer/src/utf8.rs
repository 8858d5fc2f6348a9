//! SentencePiece's UTF-8 rules for byte-fallback pieces.
//!
//! When decoding, a run of byte pieces is consumed one character at a time:
//! a structurally valid character is emitted as is, otherwise one byte becomes
//! U+FFFD and decoding resumes at the next byte (`string_util::DecodeUTF8`).
//! So an incomplete 3-byte sequence yields one U+FFFD *per byte*, unlike
//! Python's `bytes.decode(errors="replace")`.

/// U+FFFD REPLACEMENT CHARACTER.
pub(crate) const REPLACEMENT: char = '\u{FFFD}';

#[inline]
fn is_trail(b: u8) -> bool {
    b & 0xC0 == 0x80
}

#[inline]
fn is_valid_codepoint(cp: u32) -> bool {
    cp < 0xD800 || (0xE000..=0x10FFFF).contains(&cp)
}

/// Decodes one character at the start of `bytes` like SentencePiece's
/// `DecodeUTF8`: `Some((char, length))` if valid, `None` if the first byte
/// must become U+FFFD.
pub(crate) fn decode_char(bytes: &[u8]) -> Option<(char, usize)> {
    let b0 = *bytes.first()?;
    let (cp, len) = if b0 < 0x80 {
        (u32::from(b0), 1)
    } else if bytes.len() >= 2 && b0 & 0xE0 == 0xC0 {
        let cp = (u32::from(b0 & 0x1F) << 6) | u32::from(bytes[1] & 0x3F);
        if !(is_trail(bytes[1]) && cp >= 0x80) {
            return None;
        }
        (cp, 2)
    } else if bytes.len() >= 3 && b0 & 0xF0 == 0xE0 {
        let cp = (u32::from(b0 & 0x0F) << 12) | (u32::from(bytes[1] & 0x3F) << 6) | u32::from(bytes[2] & 0x3F);
        if !(is_trail(bytes[1]) && is_trail(bytes[2]) && cp >= 0x800) {
            return None;
        }
        (cp, 3)
    } else if bytes.len() >= 4 && b0 & 0xF8 == 0xF0 {
        let cp = (u32::from(b0 & 0x07) << 18)
            | (u32::from(bytes[1] & 0x3F) << 12)
            | (u32::from(bytes[2] & 0x3F) << 6)
            | u32::from(bytes[3] & 0x3F);
        if !(is_trail(bytes[1]) && is_trail(bytes[2]) && is_trail(bytes[3]) && cp >= 0x10000) {
            return None;
        }
        (cp, 4)
    } else {
        return None;
    };
    if !is_valid_codepoint(cp) {
        return None;
    }
    char::from_u32(cp).map(|c| (c, len))
}

/// Appends the decoding of a complete run of byte pieces to `out`.
pub(crate) fn decode_byte_run(bytes: &[u8], out: &mut String) {
    let mut rest = bytes;
    while !rest.is_empty() {
        match decode_char(rest) {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push(REPLACEMENT);
                rest = &rest[1..];
            }
        }
    }
}

/// Whether more bytes could still turn `bytes` (which [`decode_char`] rejects)
/// into one valid character: it is a proper prefix of a valid sequence.
pub(crate) fn is_incomplete_prefix(bytes: &[u8]) -> bool {
    let Some(&b0) = bytes.first() else {
        return false;
    };
    let needed = match b0 {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return false,
    };
    if bytes.len() >= needed {
        return false;
    }
    if bytes.len() == 1 {
        return true; // every lead byte above has valid continuations
    }
    // With the second byte known, completing with 0x80 (zero payload) gives
    // the smallest code point with this prefix; the remaining validity bounds
    // (0x800, 0x10000, the surrogates, 0x110000) are multiples of 64 given the
    // first two bytes, so if this completion is invalid, all are.
    let mut completed = [0x80u8; 4];
    completed[..bytes.len()].copy_from_slice(bytes);
    decode_char(&completed[..needed]).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_std_on_all_short_sequences() {
        // Every 1..=2-byte sequence, and 3/4-byte sequences over the boundary bytes.
        let interesting: Vec<u8> = vec![
            0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xED, 0xEE, 0xEF,
            0xF0, 0xF1, 0xF4, 0xF5, 0xF7, 0xF8, 0xFF,
        ];
        for &a in &interesting {
            for &b in &interesting {
                for &c in &interesting {
                    for &d in &interesting {
                        let seq = [a, b, c, d];
                        let ours = decode_char(&seq);
                        let std =
                            (1..=4).find_map(|n| std::str::from_utf8(&seq[..n]).ok().map(|s| (s.chars().next(), n)));
                        let expected = std.and_then(|(c, n)| c.map(|c| (c, n)));
                        assert_eq!(ours, expected, "{seq:02X?}");
                    }
                }
            }
        }
    }

    #[test]
    fn incomplete_sequences() {
        assert!(is_incomplete_prefix(&[0xE4]));
        assert!(is_incomplete_prefix(&[0xE0]));
        assert!(is_incomplete_prefix(&[0xF0]));
        assert!(is_incomplete_prefix(&[0xF4]));
        assert!(is_incomplete_prefix(&[0xE4, 0xB8]));
        assert!(!is_incomplete_prefix(&[0xE4, 0x41]));
        assert!(!is_incomplete_prefix(&[0xE0, 0x80])); // overlong
        assert!(!is_incomplete_prefix(&[0xED, 0xA0])); // surrogate
        assert!(is_incomplete_prefix(&[0xF0, 0x9F, 0x98]));
        assert!(!is_incomplete_prefix(&[0xF4, 0x90])); // > U+10FFFF
        assert!(!is_incomplete_prefix(&[0xC1]));
        assert!(!is_incomplete_prefix(&[0x80]));
        let mut s = String::new();
        decode_byte_run(&[0xE4, 0xB8, 0x41, 0xE4, 0xB8, 0xAD], &mut s);
        assert_eq!(s, "\u{FFFD}\u{FFFD}A中");
    }
}
