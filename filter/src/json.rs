//! A strict, minimal JSON reader for `pluginConfig`: one top-level object
//! whose members are returned in order. Nested values are validated but only
//! their kind is kept (no config field takes one).
//!
//! Why not serde_json: it made up 63 KB of a 210 KB module (float
//! formatting and parsing, error machinery), and every worker of every
//! sidecar loads the module. This reader is a few KB, allocates only member
//! names and strings, never formats or parses a float, and reports errors
//! with the byte offset.

use std::fmt;

/// Deepest nesting accepted; bounds recursion on hostile input.
const MAX_DEPTH: usize = 32;

/// A member value. Numbers keep their source text (exact, no float rounding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Number(&'a str),
    String(String),
    Array,
    Object,
}

impl Value<'_> {
    /// The JSON type name, for "expected X, got Y" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array => "an array",
            Value::Object => "an object",
        }
    }
}

/// A syntax error at a byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub offset: usize,
    pub expected: &'static str,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid JSON at byte {}: expected {}",
            self.offset, self.expected
        )
    }
}

impl std::error::Error for SyntaxError {}

/// Parses `input` as exactly one JSON object; returns its members in order
/// (duplicates included: the caller decides).
pub fn parse_object(input: &[u8]) -> Result<Vec<(String, Value<'_>)>, SyntaxError> {
    // Validate UTF-8 once, so string slices below are always valid.
    let text = std::str::from_utf8(input).map_err(|e| SyntaxError {
        offset: e.valid_up_to(),
        expected: "UTF-8 text",
    })?;
    let mut p = Parser { text, pos: 0 };
    p.skip_ws();
    if p.peek() != Some(b'{') {
        return Err(p.error("an object `{`"));
    }
    let mut members = Vec::new();
    p.object(0, Some(&mut members))?;
    p.skip_ws();
    if p.pos != text.len() {
        return Err(p.error("end of input"));
    }
    Ok(members)
}

/// Exact value of a JSON number if it is a whole number in `u64` range
/// (`16`, `16.0`, `1.6e1` all qualify; `-1`, `1.5`, `1e30` do not).
pub fn whole_u64(number: &str) -> Option<u64> {
    let (negative, rest) = match number.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, number),
    };
    let (mantissa, exp) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i32>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = int.bytes().chain(frac.bytes());
    let mut exp10 = i64::from(exp) - frac.len() as i64;
    // Significant digits without trailing zeros (each one moves to exp10).
    let mut sig: Vec<u8> = digits.skip_while(|d| *d == b'0').collect();
    while sig.last() == Some(&b'0') {
        sig.pop();
        exp10 += 1;
    }
    if sig.is_empty() {
        return Some(0);
    }
    if negative || exp10 < 0 {
        return None;
    }
    let mut value: u64 = 0;
    for d in sig {
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    for _ in 0..exp10 {
        value = value.checked_mul(10)?;
    }
    Some(value)
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

type Members<'a, 'm> = Option<&'m mut Vec<(String, Value<'a>)>>;

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn error(&self, expected: &'static str) -> SyntaxError {
        SyntaxError {
            offset: self.pos,
            expected,
        }
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, byte: u8, expected: &'static str) -> Result<(), SyntaxError> {
        self.skip_ws();
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(expected))
        }
    }

    /// `{ ... }` at the cursor; members are collected only at the top level.
    fn object(&mut self, depth: usize, mut out: Members<'a, '_>) -> Result<(), SyntaxError> {
        if depth >= MAX_DEPTH {
            return Err(self.error("less nesting"));
        }
        self.pos += 1; // `{`
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.error("a member name string"));
            }
            let key = self.string()?;
            self.eat(b':', "`:`")?;
            let value = self.value(depth + 1)?;
            if let Some(out) = out.as_deref_mut() {
                out.push((key, value));
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.error("`,` or `}`")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<(), SyntaxError> {
        if depth >= MAX_DEPTH {
            return Err(self.error("less nesting"));
        }
        self.pos += 1; // `[`
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.value(depth + 1)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.error("`,` or `]`")),
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>, SyntaxError> {
        self.skip_ws();
        match self.peek() {
            Some(b'{') => self.object(depth, None).map(|()| Value::Object),
            Some(b'[') => self.array(depth).map(|()| Value::Array),
            Some(b'"') => self.string().map(Value::String),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number().map(Value::Number),
            _ => Err(self.error("a value")),
        }
    }

    fn literal(&mut self, word: &'static str, value: Value<'a>) -> Result<Value<'a>, SyntaxError> {
        if self.text[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.error("true, false or null"))
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<&'a str, SyntaxError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let int_start = self.pos;
        let int_digits = self.digits();
        if int_digits == 0 || (int_digits > 1 && self.text.as_bytes()[int_start] == b'0') {
            self.pos = int_start;
            return Err(self.error("a number without leading zeros"));
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.error("a digit after `.`"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.error("a digit in the exponent"));
            }
        }
        Ok(&self.text[start..self.pos])
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let hex = self
            .text
            .get(self.pos..self.pos + 4)
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| self.error("4 hex digits after \\u"))?;
        self.pos += 4;
        u32::from_str_radix(hex, 16).map_err(|_| self.error("4 hex digits after \\u"))
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        self.pos += 1; // opening quote
        let mut out = String::new();
        loop {
            let run_start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            // Stops only at ASCII bytes, so this is a char boundary.
            out.push_str(&self.text[run_start..self.pos]);
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let escaped = match self.peek() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            self.pos += 1;
                            let c = self.unicode_escape()?;
                            out.push(c);
                            continue;
                        }
                        _ => return Err(self.error("a valid escape")),
                    };
                    self.pos += 1;
                    out.push(escaped);
                }
                Some(_) => return Err(self.error("no control characters in strings")),
                None => return Err(self.error("a closing `\"`")),
            }
        }
    }

    /// After `\u`: one code point, joining UTF-16 surrogate pairs.
    fn unicode_escape(&mut self) -> Result<char, SyntaxError> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if !self.text[self.pos..].starts_with("\\u") {
                    return Err(self.error("a low surrogate \\uDC00-\\uDFFF"));
                }
                self.pos += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(self.error("a low surrogate \\uDC00-\\uDFFF"));
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(self.error("a high surrogate first")),
            code => code,
        };
        char::from_u32(code).ok_or_else(|| self.error("a valid code point"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_members_in_order() {
        let input =
            br#" { "a" : 1, "b":true,"c":false, "d":null, "e":"x\"y\\z\/\n\u00e9\ud83d\ude00",
            "f":[1,[2,{}],"s"], "g":{"h":{"i":[]}}, "a":-0.5e+3 } "#;
        let members = parse_object(input).expect("valid");
        let expected: Vec<(String, Value<'_>)> = vec![
            ("a".into(), Value::Number("1")),
            ("b".into(), Value::Bool(true)),
            ("c".into(), Value::Bool(false)),
            ("d".into(), Value::Null),
            ("e".into(), Value::String("x\"y\\z/\né😀".into())),
            ("f".into(), Value::Array),
            ("g".into(), Value::Object),
            ("a".into(), Value::Number("-0.5e+3")),
        ];
        assert_eq!(members, expected);
        assert_eq!(parse_object(b"{}"), Ok(vec![]));
        assert_eq!(
            parse_object("{\"p\":\"ünï\"}".as_bytes()),
            Ok(vec![("p".into(), Value::String("ünï".into()))])
        );
    }

    #[test]
    fn syntax_errors_point_at_the_byte() {
        // (input, offset, fragment of `expected`)
        let cases: &[(&[u8], usize, &str)] = &[
            (b"", 0, "an object"),
            (b"[]", 0, "an object"),
            (b"\"x\"", 0, "an object"),
            (b"{", 1, "member name"),
            (b"{\"a\"}", 4, "`:`"),
            (b"{\"a\":}", 5, "a value"),
            (b"{\"a\":1", 6, "`,` or `}`"),
            (b"{\"a\":1,}", 7, "member name"),
            (b"{\"a\":1} x", 8, "end of input"),
            (b"{} {}", 3, "end of input"),
            (b"{\"a\":tru}", 5, "true, false or null"),
            (b"{\"a\":01}", 5, "leading zeros"),
            (b"{\"a\":-}", 6, "leading zeros"),
            (b"{\"a\":1.}", 7, "after `.`"),
            (b"{\"a\":1e}", 7, "exponent"),
            (b"{\"a\":\"x}", 8, "closing"),
            (b"{\"a\":\"\\x\"}", 7, "valid escape"),
            (b"{\"a\":\"\\u12\"}", 8, "hex digits"),
            (b"{\"a\":\"\\ud800\"}", 12, "low surrogate"),
            (b"{\"a\":\"\\udc00\"}", 12, "high surrogate"),
            (b"{\"a\":\"\x01\"}", 6, "control"),
            (b"{\"a\":[1 2]}", 8, "`,` or `]`"),
            (b"{\"a\":\"\xff\"}", 6, "UTF-8"),
            (b"{'a':1}", 1, "member name"),
        ];
        for (input, offset, fragment) in cases {
            let err = parse_object(input).expect_err(&String::from_utf8_lossy(input));
            assert_eq!(
                err.offset,
                *offset,
                "{:?}: {err}",
                String::from_utf8_lossy(input)
            );
            assert!(err.expected.contains(fragment), "{err}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        let err = parse_object(deep.as_bytes()).expect_err("too deep");
        assert_eq!(err.expected, "less nesting");
        let ok = format!("{{\"a\":{}{}}}", "[".repeat(20), "]".repeat(20));
        assert!(parse_object(ok.as_bytes()).is_ok());
    }

    #[test]
    fn whole_numbers_are_exact() {
        let cases: &[(&str, Option<u64>)] = &[
            ("0", Some(0)),
            ("-0", Some(0)),
            ("0.0e5", Some(0)),
            ("16", Some(16)),
            ("16.0", Some(16)),
            ("1.6e1", Some(16)),
            ("1600e-2", Some(16)),
            ("10000", Some(10_000)),
            ("1E4", Some(10_000)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("1e30", None),
            ("1.5", None),
            ("1e-1", None),
            ("-1", None),
            ("-1e3", None),
        ];
        for (text, expected) in cases {
            assert_eq!(whole_u64(text), *expected, "{text}");
        }
    }
}
