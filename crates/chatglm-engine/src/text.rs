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
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        Self { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect() }
    }

    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    /// Byte index where the earliest stop string starts in `text`, if any.
    pub fn find(&self, text: &str) -> Option<usize> {
        self.stops.iter().filter_map(|s| text.find(s.as_str())).min()
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
