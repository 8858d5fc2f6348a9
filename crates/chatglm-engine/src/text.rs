//! Text post-processing: the official `process_response` and stop strings.

/// Python's `str.isspace`: Unicode White_Space plus the ASCII information
/// separators U+001C..U+001F, which Python also strips.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The official `process_response`: `strip()`, then `[[训练时间]]` → `2023年`.
pub fn process_response(text: &str) -> String {
    text.trim_matches(is_python_space).replace("[[训练时间]]", "2023年")
}

/// Finds stop strings in streamed text and holds back what might be the start of one.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Bytes of the longest stop string.
    max_len: usize,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        let stops: Vec<String> = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        let max_len = stops.iter().map(String::len).max().unwrap_or(0);
        Self { stops, max_len }
    }

    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    /// Byte index where the earliest stop string starts in `text`, if any.
    pub fn find(&self, text: &str) -> Option<usize> {
        self.stops.iter().filter_map(|s| text.find(s.as_str())).min()
    }

    /// As [`Self::find`] for text that was searched before up to byte
    /// `new_from`: only a match ending in the new bytes can be new, so only
    /// the tail that could hold one is scanned (per token, a cost bounded by
    /// the stop strings, not by the length of the reply).
    pub fn find_new(&self, text: &str, new_from: usize) -> Option<usize> {
        if self.stops.is_empty() {
            return None;
        }
        let mut start = new_from.saturating_sub(self.max_len.saturating_sub(1)).min(text.len());
        while !text.is_char_boundary(start) {
            start -= 1;
        }
        self.find(&text[start..]).map(|at| start + at)
    }

    /// Length of the longest suffix of `text` that is a proper prefix of a
    /// stop string (it must not be emitted yet); always on a char boundary.
    pub fn holdback(&self, text: &str) -> usize {
        let mut best = 0;
        for stop in &self.stops {
            for (i, _) in stop.char_indices().skip(1) {
                if i > best && text.ends_with(&stop[..i]) {
                    best = i;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_search_finds_what_a_full_search_finds() {
        let stops: Vec<String> = ["ab", "你好", "xyz!", "b"].iter().map(|s| s.to_string()).collect();
        let m = StopMatcher::new(&stops);
        // Grow texts piece by piece (pieces of 1–3 chars, some CJK) and compare
        // the incremental search with a full one at every step.
        let pieces = ["a", "x", "你", "好", "y", "z", "!", "b", "ab", "q", "你好", "zz"];
        for seed in 0..200u32 {
            let mut s = seed.wrapping_mul(2_654_435_761) | 1;
            let mut text = String::new();
            let mut found_incremental = None;
            for _ in 0..24 {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                let before = text.len();
                text.push_str(pieces[(s as usize) % pieces.len()]);
                if found_incremental.is_none() {
                    found_incremental = m.find_new(&text, before);
                }
                if found_incremental.is_some() {
                    break;
                }
            }
            assert_eq!(found_incremental, m.find(&text), "{text:?}");
        }
    }

    #[test]
    fn process_response_strips_and_replaces() {
        assert_eq!(process_response("  \n你好[[训练时间]]\t "), "你好2023年");
        assert_eq!(process_response("\u{1c}x\u{3000}"), "x");
        assert_eq!(process_response(""), "");
    }

    #[test]
    fn stop_matcher_finds_and_holds_back() {
        let m = StopMatcher::new(&["</end>".to_string(), "问：".to_string()]);
        assert_eq!(m.find("abc</end>x"), Some(3));
        assert_eq!(m.find("abc"), None);
        assert_eq!(m.holdback("abc</e"), 3);
        assert_eq!(m.holdback("abc问"), "问".len());
        assert_eq!(m.holdback("abc"), 0);
    }
}
