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
//! String bodies are scanned sixteen bytes at a time with SSE2 on x86_64 (eight bytes at a time
//! with word tricks elsewhere): the one `unsafe` block is that unaligned load.
//!
//! The event scan ([`scan_event`]) is the decoder's one pass over a record. Besides validating,
//! it matches the keys of the event's fields as whole words when they are written the usual
//! way (`"lead_id":`), hands string fields over as their bodies, and records the spans of the
//! top-level members of `properties` in a small inline [`MemberIndex`], so that the engine's
//! lookups compare a few keys instead of scanning the object again.
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

/// A raw value span: a member's value in a [`MemberIndex`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawValue<'a> {
    /// The exact text of the value (a string includes its quotes).
    pub text: &'a str,
    /// The value is a string with at least one escape.
    pub escaped: bool,
}

impl<'a> RawValue<'a> {
    /// The value is `null`.
    #[inline]
    pub fn is_null(&self) -> bool {
        self.text == "null"
    }

    /// The kind of the value.
    #[inline]
    pub fn kind(&self) -> Option<Kind> {
        kind(self.text)
    }

    /// If the value is a string: its unescaped text (borrowed when it has no escape), or
    /// [`LoneSurrogate`]. `None` for other kinds.
    #[inline]
    pub fn string(&self) -> Option<Result<Cow<'a, str>, LoneSurrogate>> {
        let body = string_body(self.text)?;
        Some(if self.escaped { unescape(body) } else { Ok(Cow::Borrowed(body)) })
    }
}

/// The values of the top-level fields an event decoder needs. `None`: the key is absent. A
/// repeated key keeps its last occurrence. Keys are compared after unescaping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventFields<'a> {
    pub lead_id: Option<FieldValue<'a>>,
    pub event_type: Option<FieldValue<'a>>,
    pub timestamp: Option<FieldValue<'a>>,
    pub event_id: Option<FieldValue<'a>>,
    pub properties: Option<FieldValue<'a>>,
    /// The members of `properties`, recorded while it was validated, relative to the start of its
    /// text. Not [complete](MemberIndex::is_complete) when `properties` is absent or not an
    /// object, or when its members do not fit.
    pub properties_index: MemberIndex,
}

/// The value of a top-level field, as [`scan_event`] found it: a string comes as its body, so the
/// decoder checks no quote and slices nothing again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValue<'a> {
    /// A string: its body (between the quotes), still escaped when `escaped`.
    String { body: &'a str, escaped: bool },
    /// Any other value: its raw text (`null`, `12`, `{"a":1}`, ...).
    Other(&'a str),
}

/// How many members of an object a [`MemberIndex`] holds inline. Events seldom have more
/// top-level properties than this; an object with more is looked into by scanning it again.
pub const INDEXED_MEMBERS: usize = 8;

/// The spans of the top-level members of one validated object, in document order (repeated keys
/// included), so that a lookup compares a few known keys instead of scanning the object again.
///
/// Offsets are `u16`, relative to the start of the text the index was built over: an object
/// whose last member ends further than 65,535 bytes in, or with more than [`INDEXED_MEMBERS`]
/// members, gets an index that is not complete, and its users fall back to scanning. That keeps
/// the index small (it travels by value inside every decoded event) and never allocates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemberIndex {
    /// Every member of the object is in `spans[..len]`.
    complete: bool,
    len: u8,
    /// Bit `k`: the key of member `k` has an escape.
    escaped_keys: u8,
    /// Bit `k`: the value of member `k` is a string with an escape.
    escaped_values: u8,
    spans: [MemberSpan; INDEXED_MEMBERS],
}

/// One member: the key body (between its quotes) is `key..key_end`, the raw value
/// `value..value_end`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct MemberSpan {
    key: u16,
    key_end: u16,
    value: u16,
    value_end: u16,
}

/// One member of an indexed object, as [`MemberIndex::members`] yields it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member<'a> {
    /// The key body, still escaped when `key_escaped`.
    pub key: &'a str,
    pub key_escaped: bool,
    /// The raw value span; a string with an escape when `value.escaped`.
    pub value: RawValue<'a>,
}

impl MemberIndex {
    /// The index of an object with no members yet, to be filled by [`MemberIndex::push`].
    const EMPTY: MemberIndex = MemberIndex {
        complete: true,
        len: 0,
        escaped_keys: 0,
        escaped_values: 0,
        spans: [MemberSpan::ZERO; INDEXED_MEMBERS],
    };

    /// Does the index hold every member of its object? When not, it must not be used.
    #[inline]
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Records a member whose offsets are absolute in the document; `base` is where the indexed
    /// text starts. A member that does not fit makes the index incomplete for good.
    #[inline(always)]
    fn push(&mut self, base: usize, k: &Key, value_end: usize, value_escaped: bool) {
        let n = self.len as usize;
        // The value ends last, so if its offset fits in a u16, the others do too.
        let end = u16::try_from(value_end.wrapping_sub(base)).ok();
        match (self.spans.get_mut(n), end) {
            (Some(span), Some(value_end)) if self.complete => {
                *span = MemberSpan {
                    key: (k.start - base) as u16,
                    key_end: (k.end - base) as u16,
                    value: (k.value - base) as u16,
                    value_end,
                };
                self.escaped_keys |= u8::from(k.escaped) << n;
                self.escaped_values |= u8::from(value_escaped) << n;
                self.len += 1;
            }
            _ => self.complete = false,
        }
    }

    /// The raw value of member `n`, whose span is `s`, over `text`.
    #[inline(always)]
    fn value<'a>(&self, text: &'a str, n: usize, s: &MemberSpan) -> RawValue<'a> {
        RawValue {
            text: text.get(usize::from(s.value)..usize::from(s.value_end)).unwrap_or_default(),
            escaped: self.escaped_values >> n & 1 == 1,
        }
    }

    /// The members, in document order, over `text`: the text the index was built over (a
    /// different text yields garbage spans, clipped, never a panic). `None` when the index is not
    /// complete.
    #[inline]
    pub fn members<'a>(self, text: &'a str) -> Option<impl DoubleEndedIterator<Item = Member<'a>> + 'a> {
        if !self.complete {
            return None;
        }
        let spans = self.spans;
        Some(spans.into_iter().take(self.len.into()).enumerate().map(move |(n, s)| Member {
            key: text.get(usize::from(s.key)..usize::from(s.key_end)).unwrap_or_default(),
            key_escaped: self.escaped_keys >> n & 1 == 1,
            value: self.value(text, n, &s),
        }))
    }

    /// The raw value of the last member named `name` (keys compared after unescaping, as
    /// [`lookup`] does). `None` when the index is not complete; `Some(None)` when there is no
    /// such member.
    #[inline]
    pub fn get<'a>(&self, text: &'a str, name: &str) -> Option<Option<RawValue<'a>>> {
        if !self.complete {
            return None;
        }
        let spans = self.spans.get(..usize::from(self.len)).unwrap_or_default();
        // Backwards: the last occurrence of a repeated key wins. Unescaped keys are compared
        // as bytes, and only when the lengths agree.
        for (n, s) in spans.iter().enumerate().rev() {
            let key = usize::from(s.key)..usize::from(s.key_end);
            let hit = if self.escaped_keys >> n & 1 == 1 {
                text.get(key).is_some_and(|raw| key_eq(raw, name))
            } else {
                key.len() == name.len() && text.as_bytes().get(key) == Some(name.as_bytes())
            };
            if hit {
                return Some(Some(self.value(text, n, s)));
            }
        }
        Some(None)
    }
}

impl MemberSpan {
    const ZERO: MemberSpan = MemberSpan { key: 0, key_end: 0, value: 0, value_end: 0 };
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

/// `true` for the bytes that stop the scan of a string body: `"`, `\` and controls.
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

// The scanner: free functions over the document bytes and a position, returning the position
// after what they scanned (or the offset of the error).

type Scan = Result<usize, SyntaxError>;

#[inline(always)]
fn err<T>(offset: usize) -> Result<T, SyntaxError> {
    Err(SyntaxError { offset })
}

/// The byte at `i`, or 0 past the end. A NUL byte is never valid where the scanner reads a byte
/// outside a string, and is a control character (invalid raw) inside one, so the end of the
/// input and a NUL byte stop every scan loop alike, and callers need no separate end test.
#[inline(always)]
fn at(b: &[u8], i: usize) -> u8 {
    b.get(i).copied().unwrap_or(0)
}

/// The sixteen bytes at `i`, if there are sixteen.
#[inline(always)]
fn chunk16(b: &[u8], i: usize) -> Option<&[u8; 16]> {
    b.get(i..)?.first_chunk()
}

/// The eight bytes at `i`, if there are eight.
#[inline(always)]
fn chunk8(b: &[u8], i: usize) -> Option<&[u8; 8]> {
    b.get(i..)?.first_chunk()
}

#[inline(always)]
fn is_ws(c: u8) -> bool {
    c <= b' ' && matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

/// Skips whitespace from `i`.
#[inline(always)]
fn ws(b: &[u8], mut i: usize) -> usize {
    while is_ws(at(b, i)) {
        i += 1;
    }
    i
}

/// The first byte at or after `i` that is not whitespace, and its position (0 at the end).
/// One read when there is no whitespace, as in compact JSON, where `ws` followed by a read of
/// the byte would take two.
#[inline(always)]
fn peek(b: &[u8], i: usize) -> (usize, u8) {
    match at(b, i) {
        c if c > b' ' => (i, c),
        _ => {
            let j = ws(b, i);
            (j, at(b, j))
        }
    }
}

/// A mask with the high bit set in each byte of `w` (little-endian) that is `"`, `\` or below
/// 0x20. Bits above the lowest set one may be spurious (borrows); the lowest one is exact.
#[inline(always)]
fn string_stop_mask(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    #[inline(always)]
    fn zero_byte(x: u64) -> u64 {
        x.wrapping_sub(ONES) & !x & HIGH
    }
    // Bytes < 0x20: (b - 0x20) borrows into the high bit, unless b >= 0x80 already set it.
    let lt = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    zero_byte(w ^ (ONES * u64::from(b'"'))) | zero_byte(w ^ (ONES * u64::from(b'\\'))) | lt
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };

    /// Bit `k` of the first mask set: byte `k` of `chunk` is `"`, `\` or below 0x20; of the
    /// second: byte `k` is `"`.
    #[inline(always)]
    pub(super) fn string_stop_masks(chunk: &[u8; 16]) -> (u32, u32) {
        // SAFETY: SSE2 is part of the x86_64 baseline, and the unaligned load reads exactly the
        // sixteen bytes of `chunk`.
        unsafe {
            let v = _mm_loadu_si128(chunk.as_ptr().cast());
            let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
            // Unsigned v <= 0x1f exactly when min(v, 0x1f) == v.
            let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
            let stops = _mm_or_si128(_mm_or_si128(quote, backslash), control);
            (_mm_movemask_epi8(stops) as u32, _mm_movemask_epi8(quote) as u32)
        }
    }
}

/// Scans a string body from `i` (just after the opening quote) to just after the closing quote;
/// sets `escaped` if it has an escape.
#[inline(always)]
fn string(b: &[u8], mut i: usize, escaped: &mut bool) -> Scan {
    loop {
        // Sixteen bytes at a time with SSE2 while there are sixteen. The masks also tell which
        // stop was found, so the common case (the closing quote in the first chunk) reads no
        // byte twice.
        #[cfg(target_arch = "x86_64")]
        while let Some(chunk) = chunk16(b, i) {
            let (stops, quotes) = sse2::string_stop_masks(chunk);
            if stops == 0 {
                i += 16;
                continue;
            }
            let k = stops.trailing_zeros();
            if quotes >> k & 1 == 1 {
                return Ok(i + k as usize + 1);
            }
            i += k as usize;
            break;
        }
        i = string_tail(b, i);
        match at(b, i) {
            b'"' => return Ok(i + 1),
            b'\\' => {
                *escaped = true;
                i = escape(b, i)?;
            }
            // A raw control character, or the end.
            _ => return err(i),
        }
    }
}

/// The first `"`, `\` or control character at or after `i`, or the end, eight bytes at a time
/// then one: for the last fifteen bytes of the input (for all of it without SSE2).
#[inline(always)]
fn string_tail(b: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = chunk8(b, i) {
        let m = string_stop_mask(u64::from_le_bytes(*chunk));
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && !STRING_STOP[at(b, i) as usize] {
        i += 1;
    }
    i
}

/// Validates the escape at `i` (a backslash); returns the position after it.
#[cold]
fn escape(b: &[u8], i: usize) -> Scan {
    match at(b, i + 1) {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Ok(i + 2),
        b'u' if (i + 2..i + 6).all(|k| at(b, k).is_ascii_hexdigit()) => Ok(i + 6),
        _ => err(i),
    }
}

#[inline(always)]
fn digits(b: &[u8], mut i: usize) -> usize {
    while at(b, i).is_ascii_digit() {
        i += 1;
    }
    i
}

/// Scans a number in the exact JSON grammar from its first byte.
#[inline(always)]
fn number(b: &[u8], mut i: usize) -> Scan {
    if at(b, i) == b'-' {
        i += 1;
    }
    match at(b, i) {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits(b, i + 1),
        _ => return err(i),
    }
    if at(b, i) == b'.' {
        i += 1;
        if !at(b, i).is_ascii_digit() {
            return err(i);
        }
        i = digits(b, i + 1);
    }
    if matches!(at(b, i), b'e' | b'E') {
        i += 1;
        if matches!(at(b, i), b'+' | b'-') {
            i += 1;
        }
        if !at(b, i).is_ascii_digit() {
            return err(i);
        }
        i = digits(b, i + 1);
    }
    Ok(i)
}

#[inline]
fn literal(b: &[u8], i: usize, lit: &[u8]) -> Scan {
    if b.get(i..i + lit.len()) == Some(lit) {
        Ok(i + lit.len())
    } else {
        err(i)
    }
}

/// An object key and the `:` after it, as scanned by [`key`].
#[derive(Clone, Copy)]
struct Key {
    /// The key body is `start..end` (between the quotes).
    start: usize,
    end: usize,
    /// The key has an escape.
    escaped: bool,
    /// Where the member's value starts.
    value: usize,
}

/// Scans an object key at `i` (its opening quote), the `:` and the whitespace around it.
#[inline(always)]
fn key(b: &[u8], i: usize) -> Result<Key, SyntaxError> {
    if at(b, i) != b'"' {
        return err(i);
    }
    let mut escaped = false;
    let after = string(b, i + 1, &mut escaped)?;
    let (j, c) = peek(b, after);
    if c != b':' {
        return err(j);
    }
    Ok(Key { start: i + 1, end: after - 1, escaped, value: peek(b, j + 1).0 })
}

/// Skips the value of an object member at `i` (inside one container): scalars inline, the
/// common case, containers through [`value`]. Sets `escaped` for a string with escapes.
#[inline(always)]
fn member_value(b: &[u8], i: usize, escaped: &mut bool) -> Scan {
    match at(b, i) {
        b'"' => string(b, i + 1, escaped),
        b'-' | b'0'..=b'9' => number(b, i),
        _ => value(b, i, 1),
    }
}

/// Scans the object at `i` (its `{`, inside no container), calling `f(key, value_end,
/// value_escaped)` for each member in order; returns the position after the closing `}`.
#[inline(always)]
fn object(b: &[u8], i: usize, mut f: impl FnMut(Key, usize, bool)) -> Scan {
    if at(b, i) != b'{' {
        return err(i);
    }
    let (mut i, c) = peek(b, i + 1);
    if c == b'}' {
        return Ok(i + 1);
    }
    loop {
        let k = key(b, i)?;
        let mut escaped = false;
        let value_end = member_value(b, k.value, &mut escaped)?;
        f(k, value_end, escaped);
        let (j, c) = peek(b, value_end);
        match c {
            b',' => i = peek(b, j + 1).0,
            b'}' => return Ok(j + 1),
            _ => return err(j),
        }
    }
}

/// Skips one value at `i` (no leading whitespace) inside `outer` containers. Iterative: a bit
/// stack records, for each open container, whether it is an object (bit 0: the innermost; at
/// most [`MAX_DEPTH`] bits).
fn value(b: &[u8], mut i: usize, outer: usize) -> Scan {
    let mut stack: u128 = 0;
    let mut depth: usize = 0;
    let mut in_obj = false;
    loop {
        // A value is expected at i.
        match at(b, i) {
            b'"' => i = string(b, i + 1, &mut false)?,
            b'-' | b'0'..=b'9' => i = number(b, i)?,
            open @ (b'{' | b'[') => {
                if outer + depth >= MAX_DEPTH {
                    return err(i);
                }
                let (j, c) = peek(b, i + 1);
                i = j;
                // `}` and `]` are two past `{` and `[`.
                if c == open + 2 {
                    i += 1;
                } else {
                    in_obj = open == b'{';
                    stack = (stack << 1) | u128::from(in_obj);
                    depth += 1;
                    if in_obj {
                        i = key(b, i)?.value;
                    }
                    continue;
                }
            }
            b't' => i = literal(b, i, b"true")?,
            b'f' => i = literal(b, i, b"false")?,
            b'n' => i = literal(b, i, b"null")?,
            _ => return err(i),
        }
        // After a value: close containers until one continues with `,`.
        loop {
            if depth == 0 {
                return Ok(i);
            }
            let (j, c) = peek(b, i);
            i = j;
            match c {
                b',' => {
                    i = peek(b, i + 1).0;
                    if in_obj {
                        i = key(b, i)?.value;
                    }
                    break;
                }
                b'}' if in_obj => {}
                b']' if !in_obj => {}
                _ => return err(i),
            }
            i += 1;
            depth -= 1;
            stack >>= 1;
            in_obj = stack & 1 == 1;
        }
    }
}

/// After the top-level value at `i`: only whitespace may follow.
#[inline]
fn end(b: &[u8], i: usize) -> Result<(), SyntaxError> {
    let i = ws(b, i);
    if i == b.len() {
        Ok(())
    } else {
        err(i)
    }
}

/// Validates a whole JSON document.
pub fn validate(src: &str) -> Result<(), SyntaxError> {
    let b = src.as_bytes();
    let i = value(b, ws(b, 0), 0)?;
    end(b, i)
}

/// Validates a whole document in one pass and, when its top-level value is an object, returns
/// the values of `lead_id`, `type`, `timestamp`, `event_id` and `properties` (last occurrence of
/// a repeated key wins; keys compared after unescaping), and the index of the members of
/// `properties` when it is an object.
pub fn scan_event(src: &str) -> Result<Document<'_>, SyntaxError> {
    let mut f = EventFields::default();
    Ok(if scan_event_into(src, &mut f)? { Document::Object(f) } else { Document::NotObject })
}

/// [`scan_event`] into fields the caller owns (which must start out empty, as
/// `EventFields::default()`): `Ok(true)` for an object, whose fields are in `f`; `Ok(false)` for
/// valid JSON that is not an object. The decoder's entry point: the fields, with their member
/// index, are written where the decoder reads them instead of being moved out in a result.
#[inline]
pub fn scan_event_into<'a>(src: &'a str, f: &mut EventFields<'a>) -> Result<bool, SyntaxError> {
    let b = src.as_bytes();
    let (i, c) = peek(b, 0);
    if c != b'{' {
        let e = value(b, i, 0)?;
        end(b, e)?;
        return Ok(false);
    }
    let (mut i, c) = peek(b, i + 1);
    if c == b'}' {
        end(b, i + 1)?;
        return Ok(true);
    }
    // The members of the top-level object, written out rather than through `object` so that the
    // value of `properties` can be indexed as it is validated.
    let mut expect = Slot::LeadId;
    loop {
        let (slot, after_colon) = match compact_field_key(b, i, expect) {
            Some((slot, after)) => (Some(slot), after),
            None => {
                let k = key(b, i)?;
                let slot = match field_slot(b.get(k.start..k.end).unwrap_or_default()) {
                    None if k.escaped => field_slot_escaped(src.get(k.start..k.end).unwrap_or_default()),
                    slot => slot,
                };
                (slot, k.value)
            }
        };
        let (value_start, c) = peek(b, after_colon);
        let mut escaped = false;
        let value_end = match c {
            b'"' => string(b, value_start + 1, &mut escaped)?,
            b'-' | b'0'..=b'9' => number(b, value_start)?,
            b'{' if slot == Some(Slot::Properties) => {
                // Inside the top-level object: one container.
                f.properties_index = MemberIndex::EMPTY;
                indexed_object(b, value_start, value_start, 1, &mut f.properties_index)?
            }
            _ => value(b, value_start, 1)?,
        };
        if let Some(slot) = slot {
            let v = if c == b'"' {
                src.get(value_start + 1..value_end - 1).map(|body| FieldValue::String { body, escaped })
            } else {
                src.get(value_start..value_end).map(FieldValue::Other)
            };
            match slot {
                Slot::LeadId => f.lead_id = v,
                Slot::Type => f.event_type = v,
                Slot::Timestamp => f.timestamp = v,
                Slot::EventId => f.event_id = v,
                Slot::Properties => {
                    // An earlier `properties` object's index must not outlive it.
                    if c != b'{' {
                        f.properties_index = MemberIndex::default();
                    }
                    f.properties = v;
                }
            }
            expect = slot.next();
        }
        let (j, c) = peek(b, value_end);
        match c {
            b',' => i = peek(b, j + 1).0,
            b'}' => {
                end(b, j + 1)?;
                return Ok(true);
            }
            _ => return err(j),
        }
    }
}

/// Scans the object at `start` (its `{`) inside `outer` containers, like [`value`] would, and
/// records its members in `index` with offsets relative to `base`.
#[inline(always)]
fn indexed_object(b: &[u8], start: usize, base: usize, outer: usize, index: &mut MemberIndex) -> Scan {
    if outer >= MAX_DEPTH {
        return err(start);
    }
    let (mut i, c) = peek(b, start + 1);
    if c == b'}' {
        return Ok(i + 1);
    }
    loop {
        let k = key(b, i)?;
        let mut escaped = false;
        let value_end = match at(b, k.value) {
            b'"' => string(b, k.value + 1, &mut escaped)?,
            b'-' | b'0'..=b'9' => number(b, k.value)?,
            b'{' => flat_object(b, k.value, outer + 1)?,
            _ => value(b, k.value, outer + 1)?,
        };
        index.push(base, &k, value_end, escaped);
        let (j, c) = peek(b, value_end);
        match c {
            b',' => i = peek(b, j + 1).0,
            b'}' => return Ok(j + 1),
            _ => return err(j),
        }
    }
}

/// Skips the object at `start` (its `{`) inside `outer` containers whose members are mostly
/// scalars (`"utm":{"source":"google"}`): scalars inline, containers through [`value`]. The
/// same validation as [`value`], without its container stack for the common flat case.
#[inline(always)]
fn flat_object(b: &[u8], start: usize, outer: usize) -> Scan {
    if outer >= MAX_DEPTH {
        return err(start);
    }
    let (mut i, c) = peek(b, start + 1);
    if c == b'}' {
        return Ok(i + 1);
    }
    loop {
        let k = key(b, i)?;
        let value_end = match at(b, k.value) {
            b'"' => string(b, k.value + 1, &mut false)?,
            b'-' | b'0'..=b'9' => number(b, k.value)?,
            _ => value(b, k.value, outer + 1)?,
        };
        let (j, c) = peek(b, value_end);
        match c {
            b',' => i = peek(b, j + 1).0,
            b'}' => return Ok(j + 1),
            _ => return err(j),
        }
    }
}

/// The field named by the member key at `i` when it is written the common way: `"name":`, no
/// escape, no whitespace before the colon. Returns the field and the position after the colon.
/// `None` means only "not in this form": the caller scans the key in full.
///
/// This skips the string scan of the five keys that nearly every event has: a match of all the
/// bytes of `"lead_id":` proves what the scan would find (a key `lead_id` without escapes that
/// ends at the second quote, followed by the colon). The sixteen bytes at `i` are compared, as
/// two little-endian words, first with the key expected next in the usual order (`lead_id`,
/// `type`, `timestamp`, `event_id`, `properties`), then with the others.
#[inline(always)]
fn compact_field_key(b: &[u8], i: usize, expect: Slot) -> Option<(Slot, usize)> {
    let chunk = chunk16(b, i)?;
    let (w0, w1) = chunk.split_at(8);
    let w0 = u64::from_le_bytes(w0.try_into().ok()?);
    let w1 = u64::from_le_bytes(w1.try_into().ok()?);
    // A `match` with constant arms, so that each compare takes its words as immediates.
    let is = |slot: Slot| match slot {
        Slot::LeadId => key_is::<{ Slot::LeadId as usize }>(w0, w1),
        Slot::Type => key_is::<{ Slot::Type as usize }>(w0, w1),
        Slot::Timestamp => key_is::<{ Slot::Timestamp as usize }>(w0, w1),
        Slot::EventId => key_is::<{ Slot::EventId as usize }>(w0, w1),
        Slot::Properties => key_is::<{ Slot::Properties as usize }>(w0, w1),
    };
    let slot = if is(expect) { expect } else { Slot::ALL.into_iter().find(|&s| s != expect && is(s))? };
    Some((slot, i + KEY_PATTERNS[slot as usize].4))
}

/// Do the words `w0`, `w1` start with `"name":` of field number `S`?
#[inline(always)]
fn key_is<const S: usize>(w0: u64, w1: u64) -> bool {
    let (p0, m0, p1, m1, _) = const { KEY_PATTERNS[S] };
    w0 & m0 == p0 && w1 & m1 == p1
}

/// For each field, in [`Slot`] order: `"name":` as the two little-endian words of sixteen bytes,
/// the masks of the bytes that count, and its length (word 0, mask 0, word 1, mask 1, length).
const KEY_PATTERNS: [(u64, u64, u64, u64, usize); 5] = {
    const fn pattern(name: &str) -> (u64, u64, u64, u64, usize) {
        let name = name.as_bytes();
        let n = name.len() + 3;
        let mut bytes = [0u8; 16];
        bytes[0] = b'"';
        let mut k = 0;
        while k < name.len() {
            bytes[k + 1] = name[k];
            k += 1;
        }
        bytes[n - 2] = b'"';
        bytes[n - 1] = b':';
        let (mut w0, mut m0, mut w1, mut m1) = (0u64, 0u64, 0u64, 0u64);
        let mut k = 16;
        while k > 0 {
            k -= 1;
            let m = if k < n { 0xff } else { 0 };
            if k < 8 {
                w0 = w0 << 8 | bytes[k] as u64;
                m0 = m0 << 8 | m;
            } else {
                w1 = w1 << 8 | bytes[k] as u64;
                m1 = m1 << 8 | m;
            }
        }
        (w0, m0, w1, m1, n)
    }
    [pattern("lead_id"), pattern("type"), pattern("timestamp"), pattern("event_id"), pattern("properties")]
};

/// Validates `text` as one JSON object (whitespace around it allowed) and indexes its members,
/// offsets relative to the start of `text`. Not valid or not an object: an index that is not
/// complete.
pub fn index_object(text: &str) -> MemberIndex {
    let b = text.as_bytes();
    let start = ws(b, 0);
    if b.get(start) != Some(&b'{') {
        return MemberIndex::default();
    }
    let mut index = MemberIndex::EMPTY;
    match indexed_object(b, start, 0, 0, &mut index).and_then(|e| end(b, e)) {
        Ok(()) => index,
        Err(_) => MemberIndex::default(),
    }
}

/// The top-level fields of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    LeadId,
    Type,
    Timestamp,
    EventId,
    Properties,
}

impl Slot {
    /// In the usual order of the fields.
    const ALL: [Slot; 5] = [Slot::LeadId, Slot::Type, Slot::Timestamp, Slot::EventId, Slot::Properties];

    fn name(self) -> &'static str {
        match self {
            Slot::LeadId => "lead_id",
            Slot::Type => "type",
            Slot::Timestamp => "timestamp",
            Slot::EventId => "event_id",
            Slot::Properties => "properties",
        }
    }

    /// The field usually written after this one.
    #[inline(always)]
    fn next(self) -> Slot {
        match self {
            Slot::LeadId => Slot::Type,
            Slot::Type => Slot::Timestamp,
            Slot::Timestamp => Slot::EventId,
            Slot::EventId | Slot::Properties => Slot::Properties,
        }
    }
}

/// The field an unescaped key names. The names have distinct lengths, so one length test picks
/// the only candidate and one fixed-size compare (a load or two, no `memcmp` call) settles it.
#[inline(always)]
fn field_slot(key: &[u8]) -> Option<Slot> {
    match key.len() {
        7 if key == b"lead_id" => Some(Slot::LeadId),
        4 if key == b"type" => Some(Slot::Type),
        9 if key == b"timestamp" => Some(Slot::Timestamp),
        8 if key == b"event_id" => Some(Slot::EventId),
        10 if key == b"properties" => Some(Slot::Properties),
        _ => None,
    }
}

#[cold]
fn field_slot_escaped(key: &str) -> Option<Slot> {
    // Unescaping never lengthens a key; `properties` is the longest name.
    if key.len() < 4 {
        return None;
    }
    let k = unescape(key).ok()?;
    Slot::ALL.into_iter().find(|s| s.name() == k)
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
        let b = self.src.as_bytes();
        let mut i = ws(b, self.i);
        match self.state {
            EntriesState::Done => return Ok(None),
            EntriesState::Start => {
                if b.get(i) != Some(&b'{') {
                    return Ok(None);
                }
                i = ws(b, i + 1);
            }
            EntriesState::Next => {
                if b.get(i) != Some(&b',') {
                    return Ok(None);
                }
                i = ws(b, i + 1);
            }
        }
        let k = key(b, i)?;
        let ve = member_value(b, k.value, &mut false)?;
        self.i = ve;
        self.state = EntriesState::Next;
        match (self.src.get(k.start..k.end), self.src.get(k.value..ve)) {
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
    for name in path {
        cur = member(cur, name.as_ref())?;
    }
    Some(cur)
}

/// The raw value of the last member named `name` of the object `obj` (no leading
/// whitespace); `None` if it has none or is not an object.
fn member<'a>(obj: &'a str, name: &str) -> Option<&'a str> {
    let b = obj.as_bytes();
    let mut found = None;
    // A syntax error (never on validated text) ends the search with what was found so far.
    let _ = object(b, 0, |k, end, _| {
        let kb = b.get(k.start..k.end).unwrap_or_default();
        let hit = if k.escaped {
            // Unescaping never lengthens text.
            kb.len() >= name.len() && obj.get(k.start..k.end).is_some_and(|raw| unescape_lossy(raw) == name)
        } else {
            kb == name.as_bytes()
        };
        if hit {
            found = Some((k.value, end));
        }
    });
    let (vs, ve) = found?;
    obj.get(vs..ve)
}

#[cfg(test)]
pub(crate) mod tests {
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
        let string = |body| Some(FieldValue::String { body, escaped: false });
        assert_eq!(f.lead_id, string("l1"));
        assert_eq!(f.event_type, string("t"));
        assert_eq!(f.timestamp, Some(FieldValue::Other("1")));
        assert_eq!(f.event_id, Some(FieldValue::Other("null")));
        assert_eq!(f.properties, Some(FieldValue::Other("{\"a\":1}")));
        assert!(f.properties_index.is_complete());
        // Last occurrence wins; escaped keys match after unescaping.
        let src = r#"{"lead_id":"a","lead\u005fid":"b","\u0074ype":"c\n","event_id":"\ud800"}"#;
        let Ok(Document::Object(f)) = scan_event(src) else { panic!() };
        assert_eq!(f.lead_id, string("b"));
        assert_eq!(f.event_type, Some(FieldValue::String { body: "c\\n", escaped: true }));
        assert_eq!(f.event_id, Some(FieldValue::String { body: "\\ud800", escaped: true }));
        assert_eq!(f.timestamp, None);
        assert!(!f.properties_index.is_complete());
        // The usual keys in an unusual order, with whitespace, or repeated: the same fields.
        let src = " { \"properties\" : { } , \"event_id\":\"e\",\"timestamp\" :2,\"type\":\"t\",\"lead_id\":\"l\" , \"type\":\"u\"}";
        let Ok(Document::Object(f)) = scan_event(src) else { panic!() };
        assert_eq!((f.lead_id, f.event_type, f.event_id), (string("l"), string("u"), string("e")));
        assert_eq!((f.timestamp, f.properties), (Some(FieldValue::Other("2")), Some(FieldValue::Other("{ }"))));
        // A later `properties` that is not an object leaves no index behind.
        let Ok(Document::Object(f)) = scan_event(r#"{"properties":{"a":1},"properties":[1]}"#) else { panic!() };
        assert_eq!(f.properties, Some(FieldValue::Other("[1]")));
        assert!(!f.properties_index.is_complete());
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
        let keys: Vec<_> = entries(o).collect();
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
        let is_stop = |c: u8| c < 0x20 || c == b'"' || c == b'\\';
        for c in 0u8..=255 {
            for pos in 0..8 {
                for fill in [b'a', 0xC3, 0x80, 0xFF, 0x20, 0x7F] {
                    let mut w = [fill; 8];
                    w[pos] = c;
                    let m = string_stop_mask(u64::from_le_bytes(w));
                    let first = w.iter().position(|&b| is_stop(b));
                    let got = (m != 0).then(|| (m.trailing_zeros() / 8) as usize);
                    assert_eq!(got, first, "{c:#x} at {pos} in {fill:#x}");
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        for c in 0u8..=255 {
            for pos in 0..16 {
                let mut w = [b'a'; 16];
                w[pos] = c;
                let expect = if is_stop(c) { 1u32 << pos } else { 0 };
                let (stops, quotes) = sse2::string_stop_masks(&w);
                assert_eq!(stops, expect, "{c:#x} at {pos}");
                assert_eq!(quotes, if c == b'"' { 1u32 << pos } else { 0 }, "{c:#x} at {pos}");
            }
        }
        // Several stops: the first one wins (borrows may flag bytes above it).
        for w in [*b"ab\\\x01\"\x00cd", *b"\x00\x00\x00\x00\x00\x00\x00\x00", *b"\x1f\"\\xxxxx"] {
            let m = string_stop_mask(u64::from_le_bytes(w));
            assert_eq!((m.trailing_zeros() / 8) as usize, w.iter().position(|&b| is_stop(b)).unwrap());
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

    #[test]
    fn member_index() {
        let o = r#"{"path":"/pricing","utm":{"source":"google"},"k\u00e9y":"v\"w","path":"/p2","n":-1.5e3}"#;
        let index = index_object(o);
        assert!(index.is_complete());
        let members: Vec<_> =
            index.members(o).unwrap().map(|m| (m.key, m.key_escaped, m.value.text, m.value.escaped)).collect();
        assert_eq!(
            members,
            vec![
                ("path", false, "\"/pricing\"", false),
                ("utm", false, r#"{"source":"google"}"#, false),
                (r"k\u00e9y", true, r#""v\"w""#, true),
                ("path", false, "\"/p2\"", false),
                ("n", false, "-1.5e3", false),
            ]
        );
        let text = |name| index.get(o, name).map(|v| v.map(|v| v.text));
        assert_eq!(text("path"), Some(Some("\"/p2\"")));
        assert_eq!(text("kéy"), Some(Some(r#""v\"w""#)));
        assert_eq!(text("utm"), Some(Some(r#"{"source":"google"}"#)));
        assert_eq!(text("pat"), Some(None));
        assert_eq!(text("k\\u00e9y"), Some(None));
        // Offsets count from the start of the text, whitespace included.
        let o = " { \"a\" : 1 , \"b\":[ ] } ";
        assert_eq!(index_object(o).get(o, "b").map(|v| v.map(|v| v.text)), Some(Some("[ ]")));
        assert_eq!(index_object("{}").members("{}").map(|m| m.count()), Some(0));
        // As many members as fit, one more, and offsets beyond a u16.
        let members =
            |n: usize| format!("{{{}}}", (0..n).map(|k| format!("\"k{k}\":{k}")).collect::<Vec<_>>().join(","));
        assert!(index_object(&members(INDEXED_MEMBERS)).is_complete());
        assert!(!index_object(&members(INDEXED_MEMBERS + 1)).is_complete());
        let long = format!("{{\"a\":1,\"b\":\"{}\"}}", "x".repeat(65_530));
        assert!(!index_object(&long).is_complete());
        assert_eq!(index_object(&long).get(&long, "a"), None);
        assert!(index_object(&long).members(&long).is_none());
        // Not one valid object: no index.
        for bad in ["", "[1]", "{", "{\"a\":1,}", "{} x", "{\"a\":1}{", "{\"a\"}", " 1 "] {
            assert!(!index_object(bad).is_complete(), "{bad:?}");
        }
        // The event scan's index of `properties` is the index of its text.
        let src = r#"{"lead_id":"l","properties":{"a":"x\ny","b":{"c":[1,{"d":2}]},"a":null}}"#;
        let Ok(Document::Object(f)) = scan_event(src) else { panic!() };
        let Some(FieldValue::Other(props)) = f.properties else { panic!() };
        assert_eq!(f.properties_index, index_object(props));
        assert!(f.properties_index.is_complete());
    }

    /// An object as text, keys possibly repeated, escaped or pretty-printed; `serde_json::Map`
    /// would drop the repeated keys, so it is written by hand.
    pub(crate) fn arb_object_text() -> impl Strategy<Value = String> {
        let key = prop_oneof!["[ab]{1,2}", "[a-z\u{e9}\"\\\\]{0,3}", Just("path".to_string())];
        let member = (key, arb_json(), any::<bool>());
        (prop::collection::vec(member, 0..12), any::<bool>()).prop_map(|(members, spaced)| {
            let (colon, comma) = if spaced { (" : ", " ,\n ") } else { (":", ",") };
            let body: Vec<String> = members
                .into_iter()
                .map(|(k, v, escape)| {
                    let mut k = serde_json::to_string(&k).unwrap();
                    if escape {
                        k = k.replacen('a', "\\u0061", 1);
                    }
                    format!("{k}{colon}{v}")
                })
                .collect();
            if spaced {
                format!(" {{ {} }} ", body.join(comma))
            } else {
                format!("{{{}}}", body.join(comma))
            }
        })
    }

    /// An event's members, each `(field, raw value)`: the five known fields, a key that is
    /// almost one of them, and an unknown one; in any order, possibly repeated.
    fn arb_event_members() -> impl Strategy<Value = Vec<(usize, String)>> {
        let value = prop_oneof![
            "\"[a-z0-9\\-]{0,8}\"",
            Just("\"2026-12-03T10:15:00.123Z\"".to_string()),
            Just("\"a\\\"b\\u00e9\"".to_string()),
            Just("\"\\uD800\"".to_string()),
            Just("null".to_string()),
            Just("-0".to_string()),
            Just("1796292900123".to_string()),
            Just("true".to_string()),
            Just("[1,{\"a\":[]}]".to_string()),
            arb_object_text(),
        ];
        prop::collection::vec((0usize..7, value), 0..9)
    }

    const EVENT_NAMES: [&str; 7] = ["lead_id", "type", "timestamp", "event_id", "properties", "lead_i", "utm"];

    proptest! {
        // Large objects (up to a dozen members of nested values): fewer cases.
        #![proptest_config(ProptestConfig::with_cases(600))]

        /// The index holds exactly what scanning the text finds: the members in order, and for
        /// each name the last member of that name.
        #[test]
        fn index_agrees_with_scanning(text in arb_object_text()) {
            let index = index_object(&text);
            let entries: Vec<(&str, &str)> = entries(&text).collect();
            prop_assert_eq!(index.is_complete(), entries.len() <= INDEXED_MEMBERS, "{:?}", text);
            if let Some(members) = index.members(&text) {
                let members: Vec<_> = members.collect();
                prop_assert_eq!(members.iter().map(|m| (m.key, m.value.text)).collect::<Vec<_>>(), entries.clone());
                for m in &members {
                    prop_assert_eq!(m.key_escaped, m.key.contains('\\'));
                    prop_assert_eq!(m.value.escaped, m.value.text.starts_with('"') && m.value.text.contains('\\'));
                }
                let mut names: Vec<String> = entries.iter().map(|(k, _)| unescape_lossy(k).into_owned()).collect();
                names.extend(["zz".to_string(), String::new()]);
                for name in &names {
                    let found = index.get(&text, name).unwrap().map(|v| v.text);
                    prop_assert_eq!(found, lookup(&text, &[name.as_str()]), "{:?} in {:?}", name, text);
                }
            }
            // The same object as an event's `properties`.
            let event = format!("{{\"properties\":{}}}", text.trim());
            if let Ok(Document::Object(f)) = scan_event(&event) {
                prop_assert_eq!(f.properties_index, index_object(text.trim()));
            }
        }

    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Keys written the common way (compared as words) and any other way (scanned, then
        /// matched after unescaping) give the same fields, in any order.
        #[test]
        fn key_forms_agree(members in arb_event_members(), spaced in any::<bool>(), escaped in any::<bool>()) {
            let render = |compact: bool| {
                let body: Vec<String> = members
                    .iter()
                    .map(|(k, v)| {
                        let name = EVENT_NAMES[*k];
                        if compact {
                            format!("\"{name}\":{v}")
                        } else {
                            // Escape the first letter or put whitespace before the colon.
                            let key = if escaped { format!("\\u{:04x}{}", name.as_bytes()[0], &name[1..]) } else { name.to_string() };
                            if spaced || !escaped { format!("\"{key}\" :\t{v}") } else { format!("\"{key}\":{v}") }
                        }
                    })
                    .collect();
                format!("{{{}}}", body.join(","))
            };
            let (compact, other) = (render(true), render(false));
            prop_assert_eq!(scan_event(&compact), scan_event(&other), "{:?} / {:?}", compact, other);
        }


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
