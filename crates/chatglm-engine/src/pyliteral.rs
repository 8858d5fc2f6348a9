//! A parser for the Python literals ChatGLM3 writes in its tool calls
//! (`tool_call(symbol="10111", days=[1, 2], opts={"a": None})`). The
//! official `process_response` `eval`s the model's text; we never evaluate
//! anything: only `tool_call(keyword=literal, …)` or a bare literal is
//! accepted, and everything else is an error naming what was wrong.

use serde_json::{Map, Number, Value};

/// What `eval` of a tool call's text would return, as JSON: the keyword
/// arguments of `tool_call(...)` as an object, or a bare literal.
pub fn parse_tool_call(text: &str) -> Result<Value, String> {
    let mut p = Parser { s: text.as_bytes(), i: 0, text };
    p.ws();
    let value = if p.peek_ident().is_some() && !p.at_keyword_literal() { p.call()? } else { p.literal()? };
    p.ws();
    if p.i < p.s.len() {
        return Err(format!("unexpected text after the expression at byte {}: {:?}", p.i, p.rest(20)));
    }
    Ok(value)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    text: &'a str,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn rest(&self, n: usize) -> String {
        self.text[self.i..].chars().take(n).collect()
    }

    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else if self.i >= self.s.len() {
            Err(format!("'{}' expected, the text ended", c as char))
        } else {
            Err(format!("'{}' expected at byte {}, found {:?}", c as char, self.i, self.rest(10)))
        }
    }

    fn peek_ident(&self) -> Option<&str> {
        let start = self.i;
        let mut end = start;
        while end < self.s.len() && (self.s[end].is_ascii_alphanumeric() || self.s[end] == b'_') {
            end += 1;
        }
        (end > start && !self.s[start].is_ascii_digit()).then(|| &self.text[start..end])
    }

    fn at_keyword_literal(&self) -> bool {
        matches!(self.peek_ident(), Some("True" | "False" | "None"))
    }

    fn ident(&mut self) -> Result<String, String> {
        self.ws();
        let id = self.peek_ident().ok_or_else(|| format!("a name expected at byte {}", self.i))?.to_string();
        self.i += id.len();
        Ok(id)
    }

    /// `tool_call(name=literal, …)`.
    fn call(&mut self) -> Result<Value, String> {
        let name = self.ident()?;
        if name != "tool_call" {
            return Err(format!("name '{name}' is not defined (only tool_call(...) is accepted)"));
        }
        self.expect(b'(')?;
        let mut args = Map::new();
        loop {
            if self.eat(b')') {
                return Ok(Value::Object(args));
            }
            self.ws();
            if self.peek_ident().is_none() || self.at_keyword_literal() || !self.followed_by_equals() {
                return Err("tool_call() takes keyword arguments only".into());
            }
            let key = self.ident()?;
            self.expect(b'=')?;
            let value = self.literal()?;
            if args.insert(key.clone(), value).is_some() {
                return Err(format!("keyword argument repeated: {key}"));
            }
            if !self.eat(b',') {
                self.expect(b')')?;
                return Ok(Value::Object(args));
            }
        }
    }

    fn followed_by_equals(&self) -> bool {
        let Some(id) = self.peek_ident() else { return false };
        let mut j = self.i + id.len();
        while j < self.s.len() && matches!(self.s[j], b' ' | b'\t' | b'\n' | b'\r') {
            j += 1;
        }
        self.s.get(j) == Some(&b'=') && self.s.get(j + 1) != Some(&b'=')
    }

    fn literal(&mut self) -> Result<Value, String> {
        self.ws();
        let Some(&c) = self.s.get(self.i) else { return Err("a value expected, the text ended".into()) };
        match c {
            b'"' | b'\'' => {
                let mut out = self.string()?;
                // Adjacent literals concatenate, as in Python.
                loop {
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b'"' | b'\'') => out.push_str(&self.string()?),
                        _ => return Ok(Value::String(out)),
                    }
                }
            }
            b'[' => {
                self.i += 1;
                Ok(Value::Array(self.items(b']')?))
            }
            b'(' => {
                self.i += 1;
                let start = self.i;
                let items = self.items(b')')?;
                // `(x)` is x; `(x,)` and `()` are tuples (lists in JSON).
                let trailing_comma = self.text[start..self.i - 1].trim_end().ends_with(',');
                if items.len() == 1 && !trailing_comma {
                    Ok(items.into_iter().next().expect("invariant: one item"))
                } else {
                    Ok(Value::Array(items))
                }
            }
            b'{' => {
                self.i += 1;
                self.dict()
            }
            b'-' | b'+' | b'.' | b'0'..=b'9' => self.number(),
            _ => match self.peek_ident() {
                Some("True") => self.word(Value::Bool(true), 4),
                Some("False") => self.word(Value::Bool(false), 5),
                Some("None") => self.word(Value::Null, 4),
                Some(name) => Err(format!("name '{name}' is not defined (only literals are accepted)")),
                None => Err(format!("invalid syntax at byte {}: {:?}", self.i, self.rest(10))),
            },
        }
    }

    fn word(&mut self, v: Value, len: usize) -> Result<Value, String> {
        self.i += len;
        Ok(v)
    }

    /// Comma-separated literals up to `close` (a trailing comma allowed).
    fn items(&mut self, close: u8) -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        loop {
            if self.eat(close) {
                return Ok(out);
            }
            out.push(self.literal()?);
            if !self.eat(b',') {
                self.expect(close)?;
                return Ok(out);
            }
        }
    }

    fn dict(&mut self) -> Result<Value, String> {
        let mut out = Map::new();
        loop {
            if self.eat(b'}') {
                return Ok(Value::Object(out));
            }
            // Keys as json.dumps writes them: strings as they are, others as JSON text.
            let key = match self.literal()? {
                Value::String(s) => s,
                Value::Array(_) | Value::Object(_) => return Err("unhashable dictionary key".into()),
                other => other.to_string(),
            };
            self.expect(b':')?;
            let value = self.literal()?;
            out.insert(key, value);
            if !self.eat(b',') {
                self.expect(b'}')?;
                return Ok(Value::Object(out));
            }
        }
    }

    fn number(&mut self) -> Result<Value, String> {
        let start = self.i;
        if matches!(self.s.get(self.i), Some(b'-' | b'+')) {
            self.i += 1;
        }
        while self.i < self.s.len() && (self.s[self.i].is_ascii_digit() || matches!(self.s[self.i], b'.' | b'_')) {
            self.i += 1;
        }
        if matches!(self.s.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.s.get(self.i), Some(b'-' | b'+')) {
                self.i += 1;
            }
            while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                self.i += 1;
            }
        }
        let text: String = self.text[start..self.i].chars().filter(|&c| c != '_').collect();
        let bad = || format!("invalid number {:?}", &self.text[start..self.i]);
        if !text.contains(['.', 'e', 'E']) {
            if let Ok(v) = text.parse::<i64>() {
                return Ok(Value::Number(v.into()));
            }
        }
        let f: f64 = text.parse().map_err(|_| bad())?;
        Number::from_f64(f).map(Value::Number).ok_or_else(bad)
    }

    fn string(&mut self) -> Result<String, String> {
        let quote = self.s[self.i];
        self.i += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.text[self.i..].chars().next() else {
                return Err("unterminated string literal".into());
            };
            self.i += c.len_utf8();
            match c {
                '\n' => return Err("unterminated string literal (a line break inside)".into()),
                '\\' => {
                    let Some(e) = self.text[self.i..].chars().next() else {
                        return Err("unterminated string literal".into());
                    };
                    self.i += e.len_utf8();
                    match e {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        '0' => out.push('\0'),
                        '\\' | '\'' | '"' => out.push(e),
                        '\n' => {}
                        'x' => out.push(self.hex(2)?),
                        'u' => out.push(self.hex(4)?),
                        'U' => out.push(self.hex(8)?),
                        other => {
                            out.push('\\');
                            out.push(other);
                        }
                    }
                }
                c if c as u32 == quote as u32 => return Ok(out),
                c => out.push(c),
            }
        }
    }

    fn hex(&mut self, n: usize) -> Result<char, String> {
        let digits = self.text.get(self.i..self.i + n).ok_or("truncated escape")?;
        let v = u32::from_str_radix(digits, 16).map_err(|_| format!("bad escape \\{digits}"))?;
        self.i += n;
        char::from_u32(v).ok_or_else(|| format!("escape \\{digits} is not a character"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn literals_and_calls() {
        assert_eq!(parse_tool_call(r#"tool_call(a=1, b="x")"#).unwrap(), json!({"a": 1, "b": "x"}));
        assert_eq!(
            parse_tool_call("tool_call(\n  x=-1.5e3, y=(1,), z=(2), w=[True, None, 'q\\n'],\n)").unwrap(),
            json!({"x": -1500.0, "y": [1], "z": 2, "w": [true, null, "q\n"]})
        );
        assert_eq!(parse_tool_call(r#"{"k": {1: "a"}}"#).unwrap(), json!({"k": {"1": "a"}}));
        assert_eq!(parse_tool_call("tool_call()").unwrap(), json!({}));
        assert_eq!(parse_tool_call(r#"tool_call(s="a" 'b', u="\u4f60")"#).unwrap(), json!({"s": "ab", "u": "你"}));
    }

    #[test]
    fn anything_else_is_an_error_never_evaluated() {
        for bad in [
            "",
            "tool_call(1, 2)",
            "foo(a=1)",
            "tool_call(a=1",
            "tool_call(a=1)\n```",
            "tool_call(a=os.system('x'))",
            "tool_call(a=1+1)",
            "__import__('os')",
            "tool_call(a=1, a=2)",
            "\"unterminated",
        ] {
            assert!(parse_tool_call(bad).is_err(), "{bad:?} parsed");
        }
    }
}
