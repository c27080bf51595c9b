//! A validating, borrowing JSON scanner for the per-event hot path.
//!
//! Strict RFC 8259 over text that is already valid UTF-8: objects, arrays, strings (escapes
//! validated, raw control characters rejected), numbers in the exact JSON grammar (no leading
//! zeros, no `+`, no `.5`, no `NaN` / `Infinity`), `true` / `false` / `null`, whitespace limited to
//! space, tab, line feed and carriage return, nothing but whitespace after the top-level value,
//! and at most [`MAX_DEPTH`] nested arrays and objects.
//!
//! Nothing is built: the scanner returns *raw spans*, `&str` slices of the input that hold the
//! exact text of a value (a string span includes its quotes). Strings are unescaped on demand
//! ([`unescape`], [`unescape_lossy`]), borrowing when they have no escape. Containers are skipped
//! with an explicit bit stack, never by recursion, and no input makes any function here panic.
//!
//! Lone surrogate escapes (`"\uD800"`) are *syntactically* valid here, as in most parsers that
//! keep strings as text; [`unescape`] reports them and [`unescape_lossy`] replaces them by U+FFFD,
//! so the caller decides where they matter.

use std::borrow::Cow;

/// The deepest nesting of arrays and objects accepted: 128 nested containers are valid, 129 are
/// not (the top-level container counts as one).
pub const MAX_DEPTH: usize = 128;

/// A document is not valid JSON. `offset` is the byte offset where scanning stopped; it never
/// carries payload text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntaxError {
    pub offset: usize,
}

/// A string holds a `\uXXXX` escape of a UTF-16 surrogate that is not part of a valid
/// high + low pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoneSurrogate;

/// The raw spans of the top-level fields an event decoder needs. `None`: the key is absent. A
/// repeated key keeps its last occurrence. Keys are compared after unescaping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventFields<'a> {
    pub lead_id: Option<&'a str>,
    pub event_type: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub event_id: Option<&'a str>,
    pub properties: Option<&'a str>,
}

/// The outcome of [`scan_event`] on a valid document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Document<'a> {
    /// The top-level value is an object; its known fields.
    Object(EventFields<'a>),
    /// The top-level value is valid JSON but not an object.
    NotObject,
}

/// The kind of a raw value span, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Object,
    Array,
    String,
    Number,
    Bool,
    Null,
}

/// `true` for the bytes that stop the fast scan of a string body: `"`, `\` and controls.
static STRING_STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

#[inline]
fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    #[inline]
    fn new(b: &'a [u8]) -> Self {
        Scanner { b, i: 0 }
    }

    #[inline]
    fn err<T>(&self) -> Result<T, SyntaxError> {
        Err(SyntaxError { offset: self.i })
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn skip_ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if !is_ws(c) {
                break;
            }
            self.i += 1;
        }
    }

    #[inline]
    fn expect(&mut self, c: u8) -> Result<(), SyntaxError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            self.err()
        }
    }

    /// Scans a string body; `self.i` is just after the opening quote and ends just after the
    /// closing one. Returns whether the string has an escape.
    #[inline]
    fn string_body(&mut self) -> Result<bool, SyntaxError> {
        let b = self.b;
        let mut i = self.i;
        let mut escaped = false;
        loop {
            // Eight bytes at a time while none of them can stop the scan.
            while let Some(chunk) = b.get(i..i + 8) {
                let w = u64::from_le_bytes([
                    chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7],
                ]);
                if has_string_stop(w) {
                    break;
                }
                i += 8;
            }
            while let Some(&c) = b.get(i) {
                if STRING_STOP[c as usize] {
                    break;
                }
                i += 1;
            }
            match b.get(i) {
                Some(b'"') => {
                    self.i = i + 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    match b.get(i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                        Some(b'u') => match b.get(i + 2..i + 6) {
                            Some(h) if h.iter().all(u8::is_ascii_hexdigit) => i += 6,
                            _ => {
                                self.i = i;
                                return self.err();
                            }
                        },
                        _ => {
                            self.i = i;
                            return self.err();
                        }
                    }
                }
                _ => {
                    // End of input or a raw control character.
                    self.i = i;
                    return self.err();
                }
            }
        }
    }

    /// Scans a number in the exact JSON grammar; `self.i` is at its first byte.
    #[inline]
    fn number(&mut self) -> Result<(), SyntaxError> {
        let b = self.b;
        let mut i = self.i;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                i += 1;
                while matches!(b.get(i), Some(b'0'..=b'9')) {
                    i += 1;
                }
            }
            _ => {
                self.i = i;
                return self.err();
            }
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            if !matches!(b.get(i), Some(b'0'..=b'9')) {
                self.i = i;
                return self.err();
            }
            while matches!(b.get(i), Some(b'0'..=b'9')) {
                i += 1;
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if !matches!(b.get(i), Some(b'0'..=b'9')) {
                self.i = i;
                return self.err();
            }
            while matches!(b.get(i), Some(b'0'..=b'9')) {
                i += 1;
            }
        }
        self.i = i;
        Ok(())
    }

    #[inline]
    fn literal(&mut self, lit: &[u8]) -> Result<(), SyntaxError> {
        if self.b.get(self.i..self.i + lit.len()) == Some(lit) {
            self.i += lit.len();
            Ok(())
        } else {
            self.err()
        }
    }

    /// Scans an object key and the `:` after it (with the whitespace around it); `self.i` is at
    /// the opening quote. Returns the key's raw body span and whether it has escapes.
    #[inline]
    fn key(&mut self) -> Result<(usize, usize, bool), SyntaxError> {
        self.expect(b'"')?;
        let start = self.i;
        let escaped = self.string_body()?;
        let end = self.i - 1;
        self.skip_ws();
        self.expect(b':')?;
        self.skip_ws();
        Ok((start, end, escaped))
    }

    /// Skips one value starting at `self.i` (no leading whitespace), inside `outer` containers.
    /// Iterative: a bit stack records, for each open container, whether it is an object.
    fn value(&mut self, outer: usize) -> Result<(), SyntaxError> {
        let mut stack: u128 = 0;
        let mut depth: usize = 0;
        loop {
            // A value is expected at self.i.
            match self.peek() {
                Some(c @ (b'{' | b'[')) => {
                    if outer + depth >= MAX_DEPTH {
                        return self.err();
                    }
                    self.i += 1;
                    self.skip_ws();
                    let is_obj = c == b'{';
                    let close = if is_obj { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.i += 1;
                    } else {
                        if is_obj {
                            stack |= 1u128 << depth;
                            depth += 1;
                            self.key()?;
                        } else {
                            stack &= !(1u128 << depth);
                            depth += 1;
                        }
                        continue;
                    }
                }
                Some(b'"') => {
                    self.i += 1;
                    self.string_body()?;
                }
                Some(b'-' | b'0'..=b'9') => self.number()?,
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                _ => return self.err(),
            }
            // After a value: close containers until one continues with `,`.
            loop {
                if depth == 0 {
                    return Ok(());
                }
                self.skip_ws();
                let in_obj = (stack >> (depth - 1)) & 1 == 1;
                match self.peek() {
                    Some(b',') => {
                        self.i += 1;
                        self.skip_ws();
                        if in_obj {
                            self.key()?;
                        }
                        break;
                    }
                    Some(b'}') if in_obj => {
                        self.i += 1;
                        depth -= 1;
                    }
                    Some(b']') if !in_obj => {
                        self.i += 1;
                        depth -= 1;
                    }
                    _ => return self.err(),
                }
            }
        }
    }

    /// After the top-level value: only whitespace may follow.
    #[inline]
    fn end(&mut self) -> Result<(), SyntaxError> {
        self.skip_ws();
        if self.i == self.b.len() {
            Ok(())
        } else {
            self.err()
        }
    }
}

/// Does any byte of `w` equal `"` or `\`, or fall below 0x20?
#[inline]
fn has_string_stop(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    #[inline]
    fn zero_byte(x: u64) -> u64 {
        x.wrapping_sub(ONES) & !x & HIGH
    }
    // Bytes < 0x20: (b - 0x20) borrows into the high bit, unless b >= 0x80 already set it.
    let lt = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    (zero_byte(w ^ (ONES * u64::from(b'"'))) | zero_byte(w ^ (ONES * u64::from(b'\\'))) | lt) != 0
}

/// Validates a whole JSON document.
pub fn validate(src: &str) -> Result<(), SyntaxError> {
    let mut s = Scanner::new(src.as_bytes());
    s.skip_ws();
    s.value(0)?;
    s.end()
}

/// Validates a whole document in one pass and, when its top-level value is an object, returns
/// the raw value spans of `lead_id`, `type`, `timestamp`, `event_id` and `properties` (last
/// occurrence of a repeated key wins; keys compared after unescaping).
pub fn scan_event(src: &str) -> Result<Document<'_>, SyntaxError> {
    let mut s = Scanner::new(src.as_bytes());
    s.skip_ws();
    if s.peek() != Some(b'{') {
        s.value(0)?;
        s.end()?;
        return Ok(Document::NotObject);
    }
    s.i += 1;
    let mut f = EventFields::default();
    s.skip_ws();
    if s.peek() == Some(b'}') {
        s.i += 1;
    } else {
        loop {
            let (ks, ke, escaped) = s.key()?;
            let vs = s.i;
            // Scalars inline (the common case); containers through the generic skipper.
            match s.peek() {
                Some(b'"') => {
                    s.i += 1;
                    s.string_body()?;
                }
                Some(b'-' | b'0'..=b'9') => s.number()?,
                _ => s.value(1)?,
            }
            let value = src.get(vs..s.i);
            let key = src.get(ks..ke).unwrap_or_default();
            let slot = if escaped { field_slot_escaped(key) } else { field_slot(key) };
            match slot {
                Some(0) => f.lead_id = value,
                Some(1) => f.event_type = value,
                Some(2) => f.timestamp = value,
                Some(3) => f.event_id = value,
                Some(4) => f.properties = value,
                _ => {}
            }
            s.skip_ws();
            match s.peek() {
                Some(b',') => {
                    s.i += 1;
                    s.skip_ws();
                }
                Some(b'}') => {
                    s.i += 1;
                    break;
                }
                _ => return s.err(),
            }
        }
    }
    s.end()?;
    Ok(Document::Object(f))
}

const EVENT_KEYS: [&str; 5] = ["lead_id", "type", "timestamp", "event_id", "properties"];

#[inline]
fn field_slot(key: &str) -> Option<usize> {
    match key.as_bytes() {
        b"lead_id" => Some(0),
        b"type" => Some(1),
        b"timestamp" => Some(2),
        b"event_id" => Some(3),
        b"properties" => Some(4),
        _ => None,
    }
}

#[cold]
fn field_slot_escaped(key: &str) -> Option<usize> {
    // Unescaping never lengthens a key; `properties` is the longest name.
    if key.len() < 4 {
        return None;
    }
    let k = unescape(key).ok()?;
    EVENT_KEYS.iter().position(|n| *n == k)
}

/// The kind of a raw value span (`None` for an empty or invalid span).
#[inline]
pub fn kind(raw: &str) -> Option<Kind> {
    Some(match raw.as_bytes().first()? {
        b'{' => Kind::Object,
        b'[' => Kind::Array,
        b'"' => Kind::String,
        b'-' | b'0'..=b'9' => Kind::Number,
        b't' | b'f' => Kind::Bool,
        b'n' => Kind::Null,
        _ => return None,
    })
}

/// The body (between the quotes, still escaped) of a raw string span; `None` if `raw` is not a
/// string span.
#[inline]
pub fn string_body(raw: &str) -> Option<&str> {
    let b = raw.as_bytes();
    if b.len() >= 2 && b[0] == b'"' && b[b.len() - 1] == b'"' {
        raw.get(1..raw.len() - 1)
    } else {
        None
    }
}

/// Is this raw number span an integer (no fraction, no exponent)?
#[inline]
pub fn is_integer(raw: &str) -> bool {
    let b = raw.as_bytes();
    let digits = b.strip_prefix(b"-").unwrap_or(b);
    !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
}

/// The first backslash; short strings (ids, types, keys) without memchr's dispatch cost.
#[inline]
fn find_backslash(b: &[u8]) -> Option<usize> {
    if b.len() <= 32 {
        b.iter().position(|&c| c == b'\\')
    } else {
        memchr::memchr(b'\\', b)
    }
}

/// Unescapes a string body (the text between the quotes of a valid JSON string). Borrows when
/// there is no escape. A lone surrogate escape is an error.
#[inline]
pub fn unescape(body: &str) -> Result<Cow<'_, str>, LoneSurrogate> {
    match find_backslash(body.as_bytes()) {
        None => Ok(Cow::Borrowed(body)),
        Some(first) => unescape_slow(body, first, false).map(Cow::Owned),
    }
}

/// [`unescape`], replacing each lone surrogate escape by U+FFFD.
#[inline]
pub fn unescape_lossy(body: &str) -> Cow<'_, str> {
    match find_backslash(body.as_bytes()) {
        None => Cow::Borrowed(body),
        Some(first) => Cow::Owned(unescape_slow(body, first, true).unwrap_or_default()),
    }
}

fn hex4(b: &[u8], at: usize) -> Option<u32> {
    let h = b.get(at..at + 4)?;
    let mut v = 0u32;
    for &c in h {
        v = v * 16 + (c as char).to_digit(16)?;
    }
    Some(v)
}

/// Unescapes from the first backslash at `first`. Escapes that are not valid JSON (never seen
/// on validated text) are kept verbatim.
#[cold]
fn unescape_slow(body: &str, first: usize, lossy: bool) -> Result<String, LoneSurrogate> {
    let b = body.as_bytes();
    let mut out = String::with_capacity(body.len());
    let mut from = 0; // start of the pending verbatim run (always a char boundary)
    let mut i = first;
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        out.push_str(body.get(from..i).unwrap_or_default());
        let (ch, len) = match b.get(i + 1) {
            Some(b'"') => ('"', 2),
            Some(b'\\') => ('\\', 2),
            Some(b'/') => ('/', 2),
            Some(b'b') => ('\u{8}', 2),
            Some(b'f') => ('\u{c}', 2),
            Some(b'n') => ('\n', 2),
            Some(b'r') => ('\r', 2),
            Some(b't') => ('\t', 2),
            Some(b'u') => match hex4(b, i + 2) {
                Some(hi @ 0xD800..=0xDBFF) => {
                    let lo =
                        if b.get(i + 6) == Some(&b'\\') && b.get(i + 7) == Some(&b'u') { hex4(b, i + 8) } else { None };
                    match lo {
                        Some(lo @ 0xDC00..=0xDFFF) => {
                            let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                            (char::from_u32(c).unwrap_or('\u{FFFD}'), 12)
                        }
                        _ if lossy => ('\u{FFFD}', 6),
                        _ => return Err(LoneSurrogate),
                    }
                }
                Some(0xDC00..=0xDFFF) if lossy => ('\u{FFFD}', 6),
                Some(0xDC00..=0xDFFF) => return Err(LoneSurrogate),
                Some(c) => (char::from_u32(c).unwrap_or('\u{FFFD}'), 6),
                None => ('\\', 1),
            },
            _ => ('\\', 1),
        };
        out.push(ch);
        i += len;
        from = i;
    }
    out.push_str(body.get(from..).unwrap_or_default());
    Ok(out)
}

/// Does the escaped key body `raw` unescape (lossily) to `name`?
#[inline]
pub fn key_eq(raw: &str, name: &str) -> bool {
    if find_backslash(raw.as_bytes()).is_none() {
        raw == name
    } else {
        // Unescaping never lengthens text.
        raw.len() >= name.len() && unescape_lossy(raw) == name
    }
}

/// Iterator over the top-level `(key body, raw value)` pairs of a raw object span, in document
/// order. Key bodies are still escaped (see [`unescape_lossy`], [`key_eq`]). Stops at the first
/// syntax error (never on validated text).
#[derive(Debug, Clone)]
pub struct Entries<'a> {
    src: &'a str,
    i: usize,
    state: EntriesState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntriesState {
    Start,
    Next,
    Done,
}

/// The entries of a raw object span (leading and trailing whitespace allowed). Not an object:
/// no entries.
pub fn entries(object: &str) -> Entries<'_> {
    Entries { src: object, i: 0, state: EntriesState::Start }
}

impl<'a> Entries<'a> {
    fn step(&mut self) -> Result<Option<(&'a str, &'a str)>, SyntaxError> {
        let mut s = Scanner { b: self.src.as_bytes(), i: self.i };
        match self.state {
            EntriesState::Done => return Ok(None),
            EntriesState::Start => {
                s.skip_ws();
                s.expect(b'{')?;
                s.skip_ws();
                if s.peek() == Some(b'}') {
                    return Ok(None);
                }
            }
            EntriesState::Next => {
                s.skip_ws();
                match s.peek() {
                    Some(b',') => {
                        s.i += 1;
                        s.skip_ws();
                    }
                    _ => return Ok(None),
                }
            }
        }
        let (ks, ke, _) = s.key()?;
        let vs = s.i;
        s.value(1)?;
        self.i = s.i;
        self.state = EntriesState::Next;
        match (self.src.get(ks..ke), self.src.get(vs..s.i)) {
            (Some(k), Some(v)) => Ok(Some((k, v))),
            _ => Ok(None),
        }
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        match self.step() {
            Ok(Some(kv)) => Some(kv),
            _ => {
                self.state = EntriesState::Done;
                None
            }
        }
    }
}

/// Follows `path` through nested objects from a raw object span and returns the raw span of the
/// value found (a repeated key: its last occurrence). A missing key or a non-object on the
/// way: `None`. An empty path returns `object` itself (trimmed).
pub fn lookup<'a, S: AsRef<str>>(object: &'a str, path: &[S]) -> Option<&'a str> {
    let mut cur = object.trim_matches(|c: char| c.is_ascii() && is_ws(c as u8));
    for key in path {
        let key = key.as_ref();
        let mut found = None;
        for (k, v) in entries(cur) {
            if key_eq(k, key) {
                found = Some(v);
            }
        }
        cur = found?;
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(s: &str) -> bool {
        validate(s).is_ok()
    }

    #[test]
    fn scalars_and_containers() {
        for good in [
            "0",
            "-0",
            "1",
            "-12",
            "1.5",
            "1e5",
            "1E+5",
            "1.25e-7",
            "0.0",
            "true",
            "false",
            "null",
            "\"\"",
            "\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u00e9\\uD83D\\uDE00\"",
            "\"héllo ☃ 😀\"",
            "[]",
            "{}",
            " \t\r\n[ 1 , 2 ]\n",
            "{\"a\":{\"b\":[1,{\"c\":null}]},\"d\":\"e\"}",
            "{ \"a\" : 1 , \"b\" : [ ] }",
            "\"\\uD800\"",
            "\"\\uDC00x\"",
            "\"\u{7f}\"",
        ] {
            assert!(ok(good), "{good:?}");
        }
        for bad in [
            "",
            " ",
            "01",
            "-01",
            "+1",
            ".5",
            "5.",
            "1e",
            "1e+",
            "-",
            "NaN",
            "-NaN",
            "Infinity",
            "-Infinity",
            "tru",
            "True",
            "nul",
            "nulls",
            "\"abc",
            "\"a\nb\"",
            "\"a\u{1}b\"",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\u12G4\"",
            "\"\\",
            "[1,]",
            "[,1]",
            "[1 2]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{a:1}",
            "{\"a\":}",
            "{'a':1}",
            "[1,2",
            "{\"a\":1",
            "[}",
            "{]",
            "1 2",
            "{} {}",
            "\u{feff}{}",
            "[1]\u{a0}",
            "\u{c}1",
            "/*c*/1",
        ] {
            assert!(!ok(bad), "{bad:?}");
        }
    }

    #[test]
    fn depth_limit() {
        let nest = |n: usize, o: &str, c: &str| o.repeat(n) + &c.repeat(n);
        assert!(ok(&nest(128, "[", "]")));
        assert!(!ok(&nest(129, "[", "]")));
        let objs = |n: usize| "{\"a\":".repeat(n) + "1" + &"}".repeat(n);
        assert!(ok(&objs(128)));
        assert!(!ok(&objs(129)));
        // The top-level object of scan_event counts as one level.
        let ev = |n: usize| format!("{{\"properties\":{}}}", objs(n - 1));
        assert!(matches!(scan_event(&ev(128)), Ok(Document::Object(_))));
        assert!(scan_event(&ev(129)).is_err());
        // Very deep input fails cleanly (no stack overflow).
        assert!(!ok(&"[".repeat(1_000_000)));
        assert!(scan_event(&"{\"a\":".repeat(100_000)).is_err());
    }

    #[test]
    fn event_fields() {
        let src = r#"{"lead_id":"l1","type":"t","timestamp":1,"event_id":null,"properties":{"a":1},"x":[1]}"#;
        let Ok(Document::Object(f)) = scan_event(src) else { panic!() };
        assert_eq!(f.lead_id, Some("\"l1\""));
        assert_eq!(f.event_type, Some("\"t\""));
        assert_eq!(f.timestamp, Some("1"));
        assert_eq!(f.event_id, Some("null"));
        assert_eq!(f.properties, Some("{\"a\":1}"));
        // Last occurrence wins; escaped keys match after unescaping.
        let src = r#"{"lead_id":"a","lead\u005fid":"b","\u0074ype":"c"}"#;
        let Ok(Document::Object(f)) = scan_event(src) else { panic!() };
        assert_eq!(f.lead_id, Some("\"b\""));
        assert_eq!(f.event_type, Some("\"c\""));
        assert_eq!(f.timestamp, None);
        // An escaped key that is not a field name, and one with a lone surrogate.
        let src = r#"{"typ\u0065s":1,"\ud800type":2}"#;
        assert_eq!(scan_event(src), Ok(Document::Object(EventFields::default())));
        assert_eq!(scan_event("[1,2]"), Ok(Document::NotObject));
        assert_eq!(scan_event(" 7 "), Ok(Document::NotObject));
        assert!(scan_event("[1,2").is_err());
        assert!(scan_event("{\"lead_id\":\"a\"} x").is_err());
        assert_eq!(scan_event(" {} "), Ok(Document::Object(EventFields::default())));
    }

    #[test]
    fn unescaping() {
        assert!(matches!(unescape("abc"), Ok(Cow::Borrowed("abc"))));
        assert_eq!(unescape(r#"a\"b\\c\/d\b\f\n\r\t"#).unwrap(), "a\"b\\c/d\u{8}\u{c}\n\r\t");
        assert_eq!(unescape(r"\u00e9\u2603\uD83D\uDE00\u0000").unwrap(), "é☃😀\0");
        assert_eq!(unescape(r"x\ud83d\ude00y").unwrap(), "x😀y");
        for lone in [r"\uD800", r"\uDC00", r"a\uD800b", r"\uD800\u0041", r"\uDBFF\uD800", r"\uDE00\uD83D"] {
            assert_eq!(unescape(lone), Err(LoneSurrogate), "{lone}");
        }
        assert_eq!(unescape_lossy(r"a\uD800b"), "a\u{FFFD}b");
        assert_eq!(unescape_lossy(r"\uD800\u0041"), "\u{FFFD}A");
        assert_eq!(unescape_lossy(r"\uD800\uD83D\uDE00"), "\u{FFFD}😀");
        assert_eq!(unescape_lossy(r"\uDC00"), "\u{FFFD}");
        // Garbage never panics.
        for junk in ["\\", "\\u", "\\u12", "\\q", "é\\", "\\uD800\\u"] {
            let _ = unescape(junk);
            let _ = unescape_lossy(junk);
        }
    }

    #[test]
    fn lookup_and_entries() {
        let o = r#"{"path":"/pricing","utm":{"source":"google","n":[1,{"x":2}]},"k\u00e9y":true,"path":"/p2"}"#;
        assert_eq!(lookup(o, &["path"]), Some("\"/p2\""));
        assert_eq!(lookup(o, &["utm", "source"]), Some("\"google\""));
        assert_eq!(lookup(o, &["utm", "n"]), Some("[1,{\"x\":2}]"));
        assert_eq!(lookup(o, &["utm", "n", "x"]), None);
        assert_eq!(lookup(o, &["path", "x"]), None);
        assert_eq!(lookup(o, &["nope"]), None);
        assert_eq!(lookup(o, &["kéy"]), Some("true"));
        assert_eq!(lookup(o, &[] as &[&str]), Some(o));
        assert_eq!(lookup(" { \"a\" : { \"b\" : 1 } } ", &["a", "b"]), Some("1"));
        let keys: Vec<_> = entries(o).map(|(k, v)| (k, v)).collect();
        assert_eq!(
            keys,
            vec![
                ("path", "\"/pricing\""),
                ("utm", r#"{"source":"google","n":[1,{"x":2}]}"#),
                (r"k\u00e9y", "true"),
                ("path", "\"/p2\""),
            ]
        );
        assert_eq!(entries("{}").count(), 0);
        assert_eq!(entries("[1]").count(), 0);
        assert_eq!(entries("{\"a\":1,").count(), 1);
        assert!(key_eq(r"lead\u005fid", "lead_id"));
        assert!(!key_eq(r"lead\u005fid", "lead\\u005fid"));
        assert!(key_eq("a\\\\b", "a\\b"));
    }

    #[test]
    fn helpers() {
        assert_eq!(kind("{}"), Some(Kind::Object));
        assert_eq!(kind("-1"), Some(Kind::Number));
        assert_eq!(kind(""), None);
        assert!(is_integer("0") && is_integer("-0") && is_integer("123"));
        assert!(!is_integer("1.0") && !is_integer("1e3") && !is_integer("-") && !is_integer("\"1\""));
        assert_eq!(string_body("\"ab\""), Some("ab"));
        assert_eq!(string_body("\""), None);
        assert_eq!(string_body("12"), None);
    }

    #[test]
    fn string_stop_swar() {
        for c in 0u8..=255 {
            for pos in 0..8 {
                let mut w = [b'a'; 8];
                w[pos] = c;
                let expect = c < 0x20 || c == b'"' || c == b'\\';
                assert_eq!(has_string_stop(u64::from_le_bytes(w)), expect, "{c} at {pos}");
                // With high bytes around (UTF-8 continuation bytes).
                let mut w = [0xC3u8; 8];
                w[pos] = c;
                let expect = c < 0x20 || c == b'"' || c == b'\\';
                assert_eq!(has_string_stop(u64::from_le_bytes(w)), expect, "{c} at {pos} (high)");
            }
        }
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
            "\\PC{0,8}".prop_map(serde_json::Value::String),
            "[\\x00-\\x1f\"\\\\a\u{e9}\u{1F600}]{0,4}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
                prop::collection::vec(("[a-z\"\\\\\u{1}]{0,3}", inner), 0..5)
                    .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    #[derive(Debug, Clone)]
    enum Edit {
        Insert(usize, char),
        Delete(usize),
        Replace(usize, char),
    }

    fn arb_edit() -> impl Strategy<Value = Edit> {
        let ch = prop::sample::select(vec![
            '{', '}', '[', ']', ',', ':', '"', '\\', ' ', '\n', '0', '1', '9', '-', '+', '.', 'e', 'E', 't', 'r', 'u',
            'f', 'a', 'l', 's', 'n', 'N', 'I', 'D', '8', 'x', '\u{1}', '\u{7f}', 'é', '😀',
        ]);
        prop_oneof![
            (any::<usize>(), ch.clone()).prop_map(|(i, c)| Edit::Insert(i, c)),
            any::<usize>().prop_map(Edit::Delete),
            (any::<usize>(), ch).prop_map(|(i, c)| Edit::Replace(i, c)),
        ]
    }

    fn apply(s: &str, edits: &[Edit]) -> String {
        let mut chars: Vec<char> = s.chars().collect();
        for e in edits {
            let n = chars.len();
            match *e {
                Edit::Insert(i, c) => chars.insert(i % (n + 1), c),
                Edit::Delete(i) if n > 0 => {
                    chars.remove(i % n);
                }
                Edit::Replace(i, c) if n > 0 => chars[i % n] = c,
                _ => {}
            }
        }
        chars.into_iter().collect()
    }

    /// serde_json's verdict, or `None` where the two parsers legitimately differ (lone
    /// surrogates are text here; serde_json rejects floats out of f64 range).
    fn serde_verdict(s: &str) -> Option<bool> {
        match serde_json::from_str::<serde_json::Value>(s) {
            Ok(_) => Some(true),
            Err(e) => {
                let m = e.to_string();
                if ["surrogate", "hex escape", "number out of range"].iter().any(|p| m.contains(p)) {
                    None
                } else {
                    Some(false)
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn agrees_with_serde_json(v in arb_json(), pretty in any::<bool>(), edits in prop::collection::vec(arb_edit(), 0..4)) {
            let doc = if pretty { serde_json::to_string_pretty(&v).unwrap() } else { v.to_string() };
            prop_assert!(validate(&doc).is_ok(), "valid doc rejected: {doc:?}");
            let mutated = apply(&doc, &edits);
            if let Some(expect) = serde_verdict(&mutated) {
                prop_assert_eq!(validate(&mutated).is_ok(), expect, "{:?}", mutated);
                prop_assert_eq!(scan_event(&mutated).is_ok(), expect, "{:?}", mutated);
            }
        }

        #[test]
        fn never_panics(s in "\\PC{0,64}|[\\[\\]{}\",:0-9.eE+\\- \\\\utrfalsn]{0,64}") {
            let v = validate(&s);
            prop_assert_eq!(scan_event(&s).is_ok(), v.is_ok());
            let _ = lookup(&s, &["a", "b"]);
            let _ = entries(&s).count();
            let _ = unescape(&s);
            let _ = unescape_lossy(&s);
            if let Some(expect) = serde_verdict(&s) {
                prop_assert_eq!(v.is_ok(), expect, "{:?}", s);
            }
        }
    }
}
