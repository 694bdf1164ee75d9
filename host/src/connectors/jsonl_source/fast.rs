//! A fast path for the lines nearly every file is made of: one flat object whose
//! values are strings without escapes, non-negative numbers written plainly,
//! `true`, `false` or `null`.
//!
//! It reads such a line into the cells directly, a byte at a time with no
//! deserializer in between. On anything else (an escape, a negative number, an
//! exponent, a nested value, invalid UTF-8, any syntax error) it gives up and the
//! line goes through `serde_json`, so every error message, every dead letter and
//! every unusual value is exactly what `serde_json` makes of it. Where the fast path
//! accepts a line it yields the cells `serde_json` would: a float is computed as
//! `serde_json` computes it (the digits as an integer, divided by an exact power of
//! ten), and a property test checks the two agree.

use std::borrow::Cow;

use super::{Cell, FieldSpec, KeySeed, remember_key};

/// Powers of ten that are exact in an `f64`, as `serde_json` divides by them.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Fills `cells` from `line` and returns true, or returns false (cells then hold
/// partial results the caller must reset) when the line needs `serde_json`.
/// `hints` are the field indices the key positions named on the previous line.
pub(super) fn record<'a>(
    line: &'a [u8],
    fields: &[FieldSpec],
    cells: &mut [Cell<'a>],
    hints: &mut Vec<Option<usize>>,
) -> bool {
    let Ok(text) = std::str::from_utf8(line) else {
        return false;
    };
    let mut p = Parser {
        text,
        bytes: line,
        at: 0,
    };
    p.skip_ws();
    if !p.eat(b'{') {
        return false;
    }
    p.skip_ws();
    if p.eat(b'}') {
        return p.at_end();
    }
    let mut position = 0;
    loop {
        // Lines of one file repeat their keys in the same order: the key the
        // previous line had here is checked in place first, which skips scanning
        // it as a string and searching the fields for it.
        let hint = hints.get(position).copied().flatten();
        let field = match hint.filter(|&i| p.key_is(&fields[i].name)) {
            Some(i) => Some(i),
            None => {
                let Some(key) = p.string() else {
                    return false;
                };
                KeySeed::at(fields, hints, position).find(key)
            }
        };
        p.skip_ws();
        if !p.eat(b':') {
            return false;
        }
        p.skip_ws();
        let Some(value) = p.value() else {
            return false;
        };
        remember_key(hints, position, field);
        position += 1;
        if let Some(i) = field {
            cells[i] = value;
        }
        p.skip_ws();
        if p.eat(b',') {
            p.skip_ws();
            continue;
        }
        return p.eat(b'}') && p.at_end();
    }
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        self.at += usize::from(hit);
        hit
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.at += 1;
        }
    }

    fn at_end(&mut self) -> bool {
        self.skip_ws();
        self.at == self.bytes.len()
    }

    /// A string without escapes or control characters, borrowed from the line.
    fn string(&mut self) -> Option<&'a str> {
        if !self.eat(b'"') {
            return None;
        }
        let start = self.at;
        let len = self.bytes[start..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if self.bytes[start + len] != b'"' {
            return None;
        }
        self.at = start + len + 1;
        // Both ends are ASCII quotes, so they are character boundaries.
        self.text.get(start..start + len)
    }

    /// Whether the next token is the string `name`, written without escapes; if
    /// so, moves past it. Exactly what [`Parser::string`] would read as `name`:
    /// a name holding a quote, a backslash or a control character is written
    /// escaped, so it never matches here (the line is valid UTF-8 already).
    fn key_is(&mut self, name: &str) -> bool {
        let name = name.as_bytes();
        let start = self.at + 1;
        let end = start + name.len();
        let hit = self.peek() == Some(b'"')
            && self.bytes.get(end) == Some(&b'"')
            && self.bytes[start..end]
                .iter()
                .zip(name)
                .all(|(&b, &n)| b == n && n != b'"' && n != b'\\' && n >= 0x20);
        if hit {
            self.at = end + 1;
        }
        hit
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        let hit = self.bytes[self.at..].starts_with(word);
        self.at += if hit { word.len() } else { 0 };
        hit
    }

    fn value(&mut self) -> Option<Cell<'a>> {
        match self.peek()? {
            b'"' => self.string().map(|s| Cell::Str(Cow::Borrowed(s))),
            b'n' => self.literal(b"null").then_some(Cell::Null),
            b't' => self.literal(b"true").then_some(Cell::Bool(true)),
            b'f' => self.literal(b"false").then_some(Cell::Bool(false)),
            b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// A non-negative number without an exponent and with at most 18 digits: an
    /// integer, or digits with a fraction, computed as `serde_json` computes it.
    fn number(&mut self) -> Option<Cell<'a>> {
        let mut significand: u64 = 0;
        let mut digits = 0;
        let first = self.peek()?;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            significand = significand * 10 + u64::from(c - b'0');
            digits += 1;
            self.at += 1;
            if digits > 18 {
                return None;
            }
        }
        // JSON allows one leading zero only.
        if first == b'0' && digits > 1 {
            return None;
        }
        let mut fraction = 0;
        if self.eat(b'.') {
            while let Some(c @ b'0'..=b'9') = self.peek() {
                significand = significand * 10 + u64::from(c - b'0');
                digits += 1;
                fraction += 1;
                self.at += 1;
                if digits > 18 || fraction >= POW10.len() {
                    return None;
                }
            }
            if fraction == 0 {
                return None;
            }
        }
        // An exponent, or anything glued to the number, is `serde_json`'s to judge.
        if matches!(
            self.peek(),
            Some(b'e' | b'E' | b'.' | b'-' | b'+' | b'0'..=b'9')
        ) {
            return None;
        }
        Some(if fraction == 0 {
            // At most 18 digits: within i64.
            Cell::Int(significand as i64)
        } else {
            Cell::Float(significand as f64 / POW10[fraction])
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::record_by_serde;
    use super::*;
    use crate::node::config::FieldType;

    fn fields() -> Vec<FieldSpec> {
        ["user_id", "ts", "price", "event", "label"]
            .iter()
            .map(|name| FieldSpec {
                name: (*name).to_owned(),
                data_type: FieldType::Utf8,
                required: false,
                min: None,
                max: None,
            })
            .collect()
    }

    /// What the `serde_json` path makes of a line, or `None` if it rejects it.
    fn by_serde<'a>(line: &'a [u8], fields: &[FieldSpec]) -> Option<Vec<Cell<'a>>> {
        let mut cells = vec![Cell::Missing; fields.len()];
        record_by_serde(line, fields, &mut cells, &mut Vec::new())
            .ok()
            .map(|()| cells)
    }

    fn by_fast<'a>(line: &'a [u8], fields: &[FieldSpec]) -> Option<Vec<Cell<'a>>> {
        let mut cells = vec![Cell::Missing; fields.len()];
        record(line, fields, &mut cells, &mut Vec::new()).then_some(cells)
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9 ]{0,6}".prop_map(|s| format!("\"{s}\"")),
            Just("\"a\\\"b\"".to_owned()),
            Just("\"ü→\"".to_owned()),
            (0u64..1_000_000_000).prop_map(|n| n.to_string()),
            (0u64..100_000, 0u32..4).prop_map(|(n, k)| format!(
                "{}.{:0w$}",
                n,
                n % 1000,
                w = k as usize
            )),
            "-?[0-9]{1,21}(\\.[0-9]{0,24})?([eE][+-]?[0-9]{1,3})?",
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("false".to_owned()),
            Just("[1, 2]".to_owned()),
            Just("{\"x\": 1}".to_owned()),
        ]
    }

    fn line() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("user_id"),
            Just("ts"),
            Just("price"),
            Just("event"),
            Just("label"),
            Just("other")
        ];
        (
            proptest::collection::vec((key, value(), " ?", " ?"), 0..7),
            0usize..200,
            any::<u8>(),
            any::<bool>(),
        )
            .prop_map(|(members, cut, junk, corrupt)| {
                let body: Vec<String> = members
                    .iter()
                    .map(|(k, v, a, b)| format!("\"{k}\"{a}:{b}{v}"))
                    .collect();
                let mut text = format!("{{{}}}", body.join(","));
                if corrupt {
                    // Truncate, or splice in a byte: most such lines are invalid.
                    let at = cut % (text.len() + 1);
                    if !text.is_char_boundary(at) {
                        return text;
                    }
                    if junk % 2 == 0 {
                        text.truncate(at);
                    } else {
                        text.insert(at, char::from(junk % 128));
                    }
                }
                text
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever the fast path accepts, `serde_json` accepts with the same cells.
        #[test]
        fn the_fast_path_agrees_with_serde_json(text in line()) {
            let fields = fields();
            if let Some(fast) = by_fast(text.as_bytes(), &fields) {
                prop_assert_eq!(Some(fast), by_serde(text.as_bytes(), &fields), "{}", text);
            }
        }
    }

    #[test]
    fn plain_lines_take_the_fast_path_and_unusual_ones_do_not() {
        let fields = fields();
        let plain = br#"{"user_id": "u1", "ts": 1700000000000, "price": 12.5, "event": null, "label": true}"#;
        let cells = by_fast(plain, &fields).expect("a plain line is read by the fast path");
        assert_eq!(cells[0], Cell::Str(Cow::Borrowed("u1")));
        assert_eq!(cells[1], Cell::Int(1_700_000_000_000));
        assert_eq!(cells[2], Cell::Float(12.5));
        assert_eq!(cells[3], Cell::Null);
        assert_eq!(cells[4], Cell::Bool(true));
        for unusual in [
            &br#"{"price": -1.5}"#[..],
            br#"{"price": 1e3}"#,
            br#"{"user_id": "a\"b"}"#,
            br#"{"x": [1]}"#,
            br#"{"price": 01}"#,
            br#"{"price": 1.}"#,
            br#"{"ts": 12345678901234567890}"#,
            br#"{"user_id": "u1""#,
            br#"[1]"#,
            b"{\"user_id\": \"\xff\"}",
        ] {
            assert_eq!(
                by_fast(unusual, &fields),
                None,
                "{}",
                String::from_utf8_lossy(unusual)
            );
        }
    }
}
