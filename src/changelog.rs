//! The state changelog's record format: the whole state of one lead, as written to the compacted
//! state topic (key: the lead id, UTF-8; no value: a tombstone) and read back on restore.
//!
//! Binary and little-endian, because a restore of 10M leads must parse ~10M records in seconds.
//! Versioned by its first byte; a later release keeps reading every version it ever wrote.
//! Columns are stored by *name* (group names, rule ids, attribute names), not by position, so a
//! changed model (rules added, reordered or removed) restores what still applies: state of a
//! group or limited rule that no longer exists is dropped, new ones start empty, and fit points
//! are recomputed from the stored attributes under the current model.
//!
//! Version 2 (written now):
//!
//! ```text
//! u8   version (2)
//! i64  tau_ms                       the lead's clock
//! i64  last_transition_at_ms        i64::MIN: none yet
//! u32  transitions                  the `n` of the last transition id
//! u8   flags                        1 qualified, 2 has ungrouped, 4 has fixed, 8 has attributes
//! f64  ungrouped                    if flag 2
//! f64  fixed                        if flag 4
//! u16  groups, each: str name, f64 total at tau
//! u16  limits, each: str rule id, u64 window index, u16 matches in it
//! u16  attributes (if flag 8), each: str name, u8 tag (0 absent, 1 string, 2 number, 3 bool,
//!      4 array or object, 5 integer), then u32 length + UTF-8 bytes | f64 | u8 | i64
//! u32  event ids, each: u64 hash, i64 clock (the lead's clock after that event)
//! u32  first segment, u32 next segment: the lead's other remembered ids are in its segment
//!      records with sequence numbers first..next (none when equal)
//! ```
//!
//! Version 1 (the first releases) is the same up to the event ids, which are followed by a u8 of
//! id-bucket bits `b` (absent in the very first release: 0): when `b > 0`, the lead's ids are
//! in `2^b` bucket records instead, by the top `b` bits of the id hash, under the key `lead id,
//! 0xFF, b, bucket (u16 big-endian)`. They are still read; the lead's next record replaces them
//! (the buckets are deleted).
//!
//! `str` is a u16 length and UTF-8 bytes. Event ids are stored as the engine's 64-bit hash of
//! the id (see `engine::event_id_hash`; a test pins its values, so a dependency upgrade cannot
//! silently change it and forget every remembered id).
//!
//! **Segment records.** A lead remembers every event id of the dedup window (a day by default):
//! hundreds for an engaged lead, tens of thousands for a bot. Written inside its record they
//! would be rewritten whole at every commit that changes the lead (at 50k events/s over 10k
//! leads, that was four times the input's bytes), and a busy lead's record would grow past the
//! broker's `max.message.bytes`. So a lead's record holds at most [`INLINE_IDS`] ids while it has
//! no segments; once it has more, they are *sealed* into a segment record, written once, under
//! the key `lead id, 0xFF, 0x00, sequence number (u32 big-endian)` (0xFF never occurs in UTF-8,
//! so the key cannot be a lead id; same partition as the lead), and from then on the record
//! holds only the ids remembered since the last seal, sealed again once there are
//! [`SEGMENT_IDS`] of them. So each id is written in a record at most [`SEGMENT_IDS`] times and
//! in one segment once. Segments are sealed in clock order; a segment is deleted (a tombstone)
//! once its newest id has left the dedup window, and all of them when the lead is forgotten.
//! A reader takes a lead's ids from the segments its record names, so leftovers of an earlier
//! life of the lead never count. A segment's (and a version 1 bucket's) value:
//!
//! ```text
//! u8   version (1)
//! u32  event ids, each: u64 hash, i64 clock
//! ```

use crate::model::Number;

/// Current version of the lead record format.
pub const VERSION: u8 = 2;

/// Version of the id lists of segment (and bucket) records.
pub const ID_LIST_VERSION: u8 = 1;

/// Most ids a lead's record holds while the lead has no segments; more are sealed into one.
pub const INLINE_IDS: usize = 16;

/// Ids remembered since the last seal at which a lead's commit seals them into a segment.
pub const SEGMENT_IDS: usize = 16;

/// Most ids in one segment record (64 KiB of them): more sealed at once go into several.
pub const SEGMENT_MAX_IDS: usize = 4096;

/// Most live segments a record may name (2^24: 268M ids in one lead's dedup window).
pub const MAX_LIVE_SEGMENTS: u32 = 1 << 24;

/// Most bucket bits of a version 1 record: 65,536 buckets of a lead.
pub const MAX_BUCKET_BITS: u8 = 16;

/// What a state-topic key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    /// A lead's record.
    Lead(&'a str),
    /// One of a lead's segments of sealed event ids.
    Segment { lead: &'a str, seq: u32 },
    /// One of a lead's `2^bits` event-id buckets (version 1).
    Bucket { lead: &'a str, bits: u8, index: u16 },
}

/// Reads a state-topic key.
pub fn parse_key(key: &[u8]) -> Result<Key<'_>, ChangelogError> {
    fn lead_of(b: &[u8]) -> Result<&str, ChangelogError> {
        match std::str::from_utf8(b) {
            Ok(id) if (1..=256).contains(&id.len()) => Ok(id),
            _ => Err(ChangelogError::BadKey),
        }
    }
    match key.iter().position(|&b| b == 0xFF) {
        None => Ok(Key::Lead(lead_of(key)?)),
        Some(i) => match key[i + 1..] {
            [0, a, b, c, d] => Ok(Key::Segment { lead: lead_of(&key[..i])?, seq: u32::from_be_bytes([a, b, c, d]) }),
            [bits, hi, lo] if (1..=MAX_BUCKET_BITS).contains(&bits) => {
                let index = u16::from_be_bytes([hi, lo]);
                if u32::from(index) >= 1u32 << bits {
                    return Err(ChangelogError::BadKey);
                }
                Ok(Key::Bucket { lead: lead_of(&key[..i])?, bits, index })
            }
            _ => Err(ChangelogError::BadKey),
        },
    }
}

/// Writes the key of a lead's segment.
pub fn segment_key(lead_id: &str, seq: u32, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(lead_id.as_bytes());
    out.push(0xFF);
    out.push(0);
    out.extend_from_slice(&seq.to_be_bytes());
}

/// Writes the key of a lead's bucket (version 1).
pub fn bucket_key(lead_id: &str, bits: u8, index: u16, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(lead_id.as_bytes());
    out.push(0xFF);
    out.push(bits);
    out.extend_from_slice(&index.to_be_bytes());
}

/// The bucket of an id hash among `2^bits`.
pub fn bucket_of(id_hash: u64, bits: u8) -> u16 {
    (id_hash >> (64 - u32::from(bits))) as u16
}

/// Appends a segment (or bucket) record holding `ids`.
pub fn encode_ids(ids: &[(u64, i64)], out: &mut Vec<u8>) {
    out.push(ID_LIST_VERSION);
    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for (hash, clock) in ids {
        out.extend_from_slice(&hash.to_le_bytes());
        out.extend_from_slice(&clock.to_le_bytes());
    }
}

/// Reads a segment (or bucket) record, handing each id to `id`. On an error, `id` may have
/// seen some.
pub fn visit_ids(value: &[u8], mut id: impl FnMut(u64, i64)) -> Result<(), ChangelogError> {
    let mut c = Cursor(value);
    let version = c.u8()?;
    if version != ID_LIST_VERSION {
        return Err(ChangelogError::UnknownVersion(version));
    }
    let n = c.u32()? as usize;
    if c.0.len() != n * 16 {
        return Err(if c.0.len() < n * 16 { ChangelogError::Truncated } else { ChangelogError::TrailingBytes });
    }
    for _ in 0..n {
        id(c.u64()?, c.i64()?);
    }
    Ok(())
}

/// Every lead's state from state-topic records read in log order (what a reader of the topic,
/// compacted or not, rebuilds): the last record of each key wins, tombstones delete, and a lead
/// whose record names segment (or bucket) records gets the ids of those. Ids older than
/// `dedup_window_ms` before the lead's clock are dropped (they can make no duplicate); an id
/// listed twice keeps its newest clock; ids are sorted. For tools and tests; a restore does the
/// same inside the engine.
pub fn assemble<'a>(
    records: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    dedup_window_ms: i64,
) -> Result<std::collections::BTreeMap<String, LeadRecord>, ChangelogError> {
    let mut latest: std::collections::BTreeMap<&[u8], Option<&[u8]>> = std::collections::BTreeMap::new();
    for (k, v) in records {
        latest.insert(k, v);
    }
    let mut leads = std::collections::BTreeMap::new();
    for (&k, v) in &latest {
        if let (Key::Lead(id), Some(v)) = (parse_key(k)?, v) {
            leads.insert(id.to_owned(), decode_record(v)?);
        }
    }
    for (&k, v) in &latest {
        let Some(v) = v else { continue };
        let r = match parse_key(k)? {
            Key::Lead(_) => None,
            Key::Segment { lead, seq } => {
                leads.get_mut(lead).filter(|r| (r.id_segments.0..r.id_segments.1).contains(&seq))
            }
            Key::Bucket { lead, bits, .. } => leads.get_mut(lead).filter(|r| r.id_bucket_bits == bits),
        };
        if let Some(r) = r {
            visit_ids(v, |h, c| r.event_ids.push((h, c)))?;
        }
    }
    for r in leads.values_mut() {
        let oldest = r.tau_ms.saturating_sub(dedup_window_ms);
        r.event_ids.retain(|&(_, c)| c >= oldest);
        // By hash, the newest clock last: the newest of each hash is kept.
        r.event_ids.sort_unstable();
        r.event_ids.reverse();
        r.event_ids.dedup_by_key(|e| e.0);
        r.event_ids.reverse();
        r.id_bucket_bits = 0;
        r.id_segments = (0, 0);
    }
    Ok(leads)
}

pub(crate) const QUALIFIED: u8 = 1;
pub(crate) const HAS_UNGROUPED: u8 = 2;
pub(crate) const HAS_FIXED: u8 = 4;
pub(crate) const HAS_ATTRIBUTES: u8 = 8;

/// A profile attribute value (only attributes that fit rules read are kept).
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    /// A number: an integer (tag 5) or a float (tag 2), so integers compare exactly after a
    /// restore too.
    Num(Number),
    Bool(bool),
    /// An array or object: only `exists` holds on it.
    Composite,
}

impl AttrValue {
    /// The value, borrowed.
    pub fn borrowed(&self) -> AttrRef<'_> {
        match self {
            AttrValue::Str(s) => AttrRef::Str(s),
            AttrValue::Num(n) => AttrRef::Num(*n),
            AttrValue::Bool(b) => AttrRef::Bool(*b),
            AttrValue::Composite => AttrRef::Composite,
        }
    }
}

/// The whole state of one lead.
#[derive(Debug, Clone, PartialEq)]
pub struct LeadRecord {
    /// The lead's clock `τ`: the greatest accepted event time.
    pub tau_ms: i64,
    /// `at` of the lead's last transition.
    pub last_transition_at_ms: Option<i64>,
    /// Transitions since the lead entered state.
    pub transitions: u32,
    pub qualified: bool,
    /// The ungrouped decaying total at `τ` (absent: never scored).
    pub ungrouped: Option<f64>,
    /// Points of rules that never decay (absent: none scored).
    pub fixed: Option<f64>,
    /// Group totals at `τ`, in the model's group order, only those the lead has.
    pub groups: Vec<(String, f64)>,
    /// Limited rules' state: rule id, newest window index, matches in that window.
    pub limits: Vec<(String, u64, u16)>,
    /// Profile attributes read by fit rules (`None`: no `profile_update` merged yet); a `None`
    /// value is an attribute known to be absent.
    pub attributes: Option<Vec<(String, Option<AttrValue>)>>,
    /// Remembered event ids in the record: hash and the lead's clock after that event.
    pub event_ids: Vec<(u64, i64)>,
    /// `(first, next)`: the lead's other remembered ids are in its segment records `first..next`
    /// ([`assemble`] merges them); `(0, 0)`: none.
    pub id_segments: (u32, u32),
    /// Version 1 only (0 in what is written now): `b > 0`: the lead's ids are in its `2^b`
    /// bucket records.
    pub id_bucket_bits: u8,
}

/// Why a changelog record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangelogError {
    #[error("state record of unknown version {0} (written by a newer release?)")]
    UnknownVersion(u8),
    #[error("state record truncated")]
    Truncated,
    #[error("state record has trailing bytes")]
    TrailingBytes,
    #[error("state record has a name that is not UTF-8")]
    InvalidUtf8,
    #[error("state record has an unknown attribute tag {0}")]
    BadTag(u8),
    #[error("state record key is not a valid lead id")]
    BadKey,
    #[error("state record names segments first..next with first > next, or too many")]
    BadSegments,
}

impl ChangelogError {
    /// Stable code for logs and metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            ChangelogError::UnknownVersion(_) => "unknown_version",
            ChangelogError::Truncated => "truncated",
            ChangelogError::TrailingBytes => "trailing_bytes",
            ChangelogError::InvalidUtf8 => "invalid_utf8",
            ChangelogError::BadTag(_) => "bad_tag",
            ChangelogError::BadKey => "bad_key",
            ChangelogError::BadSegments => "bad_segments",
        }
    }
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    // Names come from the model; ids and values from events (at most 64 KiB by max_event_bytes
    // for values, which get a u32 length).
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..len as usize]);
}

/// An attribute number: tag 5 and the integer, or tag 2 and the float.
pub(crate) fn put_number(out: &mut Vec<u8>, n: Number) {
    match n {
        Number::Int(i) => {
            out.push(5);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Number::Float(f) => {
            out.push(2);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
    }
}

/// An attribute value as a record holds it: a tag, then the value (a string with its length),
/// so that a run of values reads back unambiguously. The one encoder of attribute values: the
/// engine writes its records with it, and keys its restore's fit memo by it.
pub(crate) fn put_attr(out: &mut Vec<u8>, value: Option<AttrRef<'_>>) {
    match value {
        None => out.push(0),
        Some(AttrRef::Str(s)) => {
            out.push(1);
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        Some(AttrRef::Num(n)) => put_number(out, n),
        Some(AttrRef::Bool(b)) => {
            out.push(3);
            out.push(u8::from(b));
        }
        Some(AttrRef::Composite) => out.push(4),
    }
}

pub(crate) fn count16(n: usize) -> [u8; 2] {
    u16::try_from(n).expect("at most 64 columns or attributes").to_le_bytes()
}

/// Appends the encoding of `r` to `out` (version 2; `r.id_bucket_bits` must be 0).
pub fn encode_record(r: &LeadRecord, out: &mut Vec<u8>) {
    out.push(VERSION);
    out.extend_from_slice(&r.tau_ms.to_le_bytes());
    out.extend_from_slice(&r.last_transition_at_ms.unwrap_or(i64::MIN).to_le_bytes());
    out.extend_from_slice(&r.transitions.to_le_bytes());
    let mut flags = 0;
    if r.qualified {
        flags |= QUALIFIED;
    }
    if r.ungrouped.is_some() {
        flags |= HAS_UNGROUPED;
    }
    if r.fixed.is_some() {
        flags |= HAS_FIXED;
    }
    if r.attributes.is_some() {
        flags |= HAS_ATTRIBUTES;
    }
    out.push(flags);
    for v in [r.ungrouped, r.fixed].into_iter().flatten() {
        out.extend_from_slice(&v.to_bits().to_le_bytes());
    }
    out.extend_from_slice(&count16(r.groups.len()));
    for (name, total) in &r.groups {
        put_str(out, name);
        out.extend_from_slice(&total.to_bits().to_le_bytes());
    }
    out.extend_from_slice(&count16(r.limits.len()));
    for (id, window, count) in &r.limits {
        put_str(out, id);
        out.extend_from_slice(&window.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
    }
    if let Some(attrs) = &r.attributes {
        out.extend_from_slice(&count16(attrs.len()));
        for (name, value) in attrs {
            put_str(out, name);
            put_attr(out, value.as_ref().map(AttrValue::borrowed));
        }
    }
    out.extend_from_slice(&(r.event_ids.len() as u32).to_le_bytes());
    for (hash, clock) in &r.event_ids {
        out.extend_from_slice(&hash.to_le_bytes());
        out.extend_from_slice(&clock.to_le_bytes());
    }
    debug_assert_eq!(r.id_bucket_bits, 0, "version 2 has no buckets");
    out.extend_from_slice(&r.id_segments.0.to_le_bytes());
    out.extend_from_slice(&r.id_segments.1.to_le_bytes());
}

/// A bounds-checked reader over a record.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ChangelogError> {
        if self.0.len() < n {
            return Err(ChangelogError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ChangelogError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn u8(&mut self) -> Result<u8, ChangelogError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, ChangelogError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, ChangelogError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, ChangelogError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, ChangelogError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn f64(&mut self) -> Result<f64, ChangelogError> {
        Ok(f64::from_bits(self.u64()?))
    }

    fn text(&mut self, len: usize) -> Result<&'a str, ChangelogError> {
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| ChangelogError::InvalidUtf8)
    }

    fn str(&mut self) -> Result<&'a str, ChangelogError> {
        let len = self.u16()? as usize;
        self.text(len)
    }
}

/// The fixed part of a record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Header {
    pub tau_ms: i64,
    pub last_transition_at_ms: Option<i64>,
    pub transitions: u32,
    pub qualified: bool,
    pub ungrouped: Option<f64>,
    pub fixed: Option<f64>,
    /// Whether the record carries attributes (a `profile_update` was merged).
    pub has_attributes: bool,
    /// The lead's other ids are in its segment records `first..next`.
    pub id_segments: (u32, u32),
    /// Version 1: the lead's ids are in `2^bits` bucket records (0: in this record).
    pub id_bucket_bits: u8,
}

/// An attribute value borrowed from a record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttrRef<'a> {
    Str(&'a str),
    Num(Number),
    Bool(bool),
    Composite,
}

impl AttrRef<'_> {
    pub fn to_owned_value(self) -> AttrValue {
        match self {
            AttrRef::Str(s) => AttrValue::Str(s.to_owned()),
            AttrRef::Num(n) => AttrValue::Num(n),
            AttrRef::Bool(b) => AttrValue::Bool(b),
            AttrRef::Composite => AttrValue::Composite,
        }
    }
}

/// One variable part of a record, borrowed from it, in record order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Part<'a> {
    Group(&'a str, f64),
    Limit(&'a str, u64, u16),
    Attribute(&'a str, Option<AttrRef<'a>>),
    EventId(u64, i64),
}

/// Reads a record without allocating: returns its header and hands each variable part to
/// `part`, in order. On an error, `part` may have seen a prefix of the parts.
pub fn visit_record<'a>(value: &'a [u8], mut part: impl FnMut(Part<'a>)) -> Result<Header, ChangelogError> {
    let mut c = Cursor(value);
    let version = c.u8()?;
    if version != 1 && version != VERSION {
        return Err(ChangelogError::UnknownVersion(version));
    }
    let tau_ms = c.i64()?;
    let last = c.i64()?;
    let transitions = c.u32()?;
    let flags = c.u8()?;
    let ungrouped = if flags & HAS_UNGROUPED != 0 { Some(c.f64()?) } else { None };
    let fixed = if flags & HAS_FIXED != 0 { Some(c.f64()?) } else { None };
    for _ in 0..c.u16()? {
        part(Part::Group(c.str()?, c.f64()?));
    }
    for _ in 0..c.u16()? {
        part(Part::Limit(c.str()?, c.u64()?, c.u16()?));
    }
    let has_attributes = flags & HAS_ATTRIBUTES != 0;
    if has_attributes {
        for _ in 0..c.u16()? {
            let name = c.str()?;
            let value = match c.u8()? {
                0 => None,
                1 => {
                    let len = c.u32()? as usize;
                    Some(AttrRef::Str(c.text(len)?))
                }
                2 => Some(AttrRef::Num(Number::Float(c.f64()?))),
                5 => Some(AttrRef::Num(Number::Int(c.i64()?))),
                3 => Some(AttrRef::Bool(c.u8()? != 0)),
                4 => Some(AttrRef::Composite),
                tag => return Err(ChangelogError::BadTag(tag)),
            };
            part(Part::Attribute(name, value));
        }
    }
    for _ in 0..c.u32()? {
        part(Part::EventId(c.u64()?, c.i64()?));
    }
    let (mut id_segments, mut id_bucket_bits) = ((0, 0), 0);
    if version == 1 {
        // Records written before buckets existed end here: all their ids are inline.
        id_bucket_bits = if c.0.is_empty() { 0 } else { c.u8()? };
        if id_bucket_bits > MAX_BUCKET_BITS {
            return Err(ChangelogError::BadTag(id_bucket_bits));
        }
    } else {
        id_segments = (c.u32()?, c.u32()?);
        // A lead has at most one segment per SEGMENT_IDS ids of a dedup window: far fewer than
        // this bound, which keeps a damaged record from making a restore allocate gigabytes.
        if id_segments.0 > id_segments.1 || id_segments.1 - id_segments.0 > MAX_LIVE_SEGMENTS {
            return Err(ChangelogError::BadSegments);
        }
    }
    if !c.0.is_empty() {
        return Err(ChangelogError::TrailingBytes);
    }
    Ok(Header {
        tau_ms,
        last_transition_at_ms: (last != i64::MIN).then_some(last),
        transitions,
        qualified: flags & QUALIFIED != 0,
        ungrouped,
        fixed,
        has_attributes,
        id_segments,
        id_bucket_bits,
    })
}

/// Reads a record written by any version of [`encode_record`].
pub fn decode_record(value: &[u8]) -> Result<LeadRecord, ChangelogError> {
    let (mut groups, mut limits, mut attrs, mut event_ids) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let h = visit_record(value, |p| match p {
        Part::Group(name, total) => groups.push((name.to_owned(), total)),
        Part::Limit(id, window, count) => limits.push((id.to_owned(), window, count)),
        Part::Attribute(name, v) => attrs.push((name.to_owned(), v.map(AttrRef::to_owned_value))),
        Part::EventId(hash, clock) => event_ids.push((hash, clock)),
    })?;
    Ok(LeadRecord {
        tau_ms: h.tau_ms,
        last_transition_at_ms: h.last_transition_at_ms,
        transitions: h.transitions,
        qualified: h.qualified,
        ungrouped: h.ungrouped,
        fixed: h.fixed,
        groups,
        limits,
        attributes: h.has_attributes.then_some(attrs),
        event_ids,
        id_segments: h.id_segments,
        id_bucket_bits: h.id_bucket_bits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LeadRecord {
        LeadRecord {
            tau_ms: 1_764_000_000_123,
            last_transition_at_ms: Some(1_764_000_000_000),
            transitions: 3,
            qualified: true,
            ungrouped: Some(-0.0),
            fixed: None,
            groups: vec![("web".into(), 12.5), ("email".into(), f64::MIN_POSITIVE)],
            limits: vec![("pricing_page".into(), 490_000, 3)],
            attributes: Some(vec![
                ("job_title".into(), Some(AttrValue::Str("VP Sales – EMEA".into()))),
                ("company_size".into(), Some(AttrValue::Num(Number::Int(250)))),
                ("score".into(), Some(AttrValue::Num(Number::Float(-0.5)))),
                ("verified".into(), Some(AttrValue::Bool(true))),
                ("tags".into(), Some(AttrValue::Composite)),
                ("country".into(), None),
            ]),
            event_ids: vec![(1, 5), (u64::MAX, i64::MAX)],
            id_segments: (3, 7),
            id_bucket_bits: 0,
        }
    }

    /// A version 1 record of `r` (what the first releases wrote), with `bits` bucket bits, or
    /// without that last byte (the very first release).
    fn encode_v1(r: &LeadRecord, bits: Option<u8>) -> Vec<u8> {
        let mut v = Vec::new();
        encode_record(&LeadRecord { id_segments: (0, 0), ..r.clone() }, &mut v);
        v[0] = 1;
        v.truncate(v.len() - 8);
        v.extend(bits);
        v
    }

    #[test]
    fn round_trips_to_the_bit() {
        let r = sample();
        let mut buf = Vec::new();
        encode_record(&r, &mut buf);
        assert_eq!(buf[0], VERSION);
        let back = decode_record(&buf).expect("decodes");
        assert_eq!(back, r);
        // PartialEq on f64 says -0.0 == 0.0; the bits must survive too.
        assert_eq!(back.ungrouped.map(f64::to_bits), Some((-0.0f64).to_bits()));
        let minimal = LeadRecord {
            tau_ms: 0,
            last_transition_at_ms: None,
            transitions: 0,
            qualified: false,
            ungrouped: None,
            fixed: None,
            groups: vec![],
            limits: vec![],
            attributes: None,
            event_ids: vec![],
            id_segments: (0, 0),
            id_bucket_bits: 0,
        };
        buf.clear();
        encode_record(&minimal, &mut buf);
        assert_eq!(buf.len(), 1 + 8 + 8 + 4 + 1 + 2 + 2 + 4 + 8);
        assert_eq!(decode_record(&buf), Ok(minimal));
    }

    #[test]
    fn version_1_records_still_read() {
        let r = LeadRecord { id_segments: (0, 0), ..sample() };
        assert_eq!(decode_record(&encode_v1(&r, None)), Ok(r.clone()), "the first release: no bucket byte");
        assert_eq!(decode_record(&encode_v1(&r, Some(0))), Ok(r.clone()));
        let bucketed = LeadRecord { id_bucket_bits: 5, ..r.clone() };
        assert_eq!(decode_record(&encode_v1(&r, Some(5))), Ok(bucketed));
        assert_eq!(decode_record(&encode_v1(&r, Some(17))), Err(ChangelogError::BadTag(17)));
    }

    #[test]
    fn keys_segments_and_buckets() {
        let mut k = Vec::new();
        segment_key("lead-7", 0x0102_0304, &mut k);
        assert_eq!(k, b"lead-7\xff\x00\x01\x02\x03\x04");
        assert_eq!(parse_key(&k), Ok(Key::Segment { lead: "lead-7", seq: 0x0102_0304 }));
        bucket_key("lead-7", 4, 11, &mut k);
        assert_eq!(parse_key(&k), Ok(Key::Bucket { lead: "lead-7", bits: 4, index: 11 }));
        assert_eq!(parse_key(b"lead-7"), Ok(Key::Lead("lead-7")));
        // A lead id may hold any UTF-8, NUL included; 0xFF is never in it.
        assert_eq!(parse_key("a\0\u{ff}b".as_bytes()), Ok(Key::Lead("a\0\u{ff}b")));
        bucket_key("x", 4, 16, &mut k);
        assert_eq!(parse_key(&k), Err(ChangelogError::BadKey), "bucket 16 of 2^4");
        for bad in [
            &b""[..],
            b"\xff\x01\x00\x00",
            b"a\xff\x00\x00\x00",
            b"a\xff\x11\x00\x00",
            b"a\xff\x01\x00",
            b"\xff\x00\x00\x00\x00\x01",
            b"a\xff\x00\x00\x00\x00\x01\x02",
            b"a\xff\x00\x00\x00\x01",
        ] {
            assert_eq!(parse_key(bad), Err(ChangelogError::BadKey), "{bad:?}");
        }
        assert_eq!(bucket_of(u64::MAX, 3), 7);
        assert_eq!(bucket_of(1 << 60, 3), 0);
        let ids = [(1u64, 10i64), (2, 20)];
        let mut v = Vec::new();
        encode_ids(&ids, &mut v);
        let mut back = Vec::new();
        visit_ids(&v, |h, c| back.push((h, c))).unwrap();
        assert_eq!(back, ids);
        for len in 0..v.len() {
            assert!(visit_ids(&v[..len], |_, _| {}).is_err());
        }
    }

    /// A reader takes a lead's ids from the segments (or version 1 buckets) its latest record
    /// names, after tombstones; an id in two of them keeps its newest clock.
    #[test]
    fn assemble_merges_the_named_segments_and_buckets() {
        let mut rec = sample();
        rec.event_ids = vec![(5, rec.tau_ms)];
        rec.id_segments = (1, 3);
        let t = rec.tau_ms;
        let (mut main, mut s0, mut s1, mut s2, mut s3) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        encode_record(&rec, &mut main);
        encode_ids(&[(7, t - 5)], &mut s0); // before `first`: not the lead's any more
        encode_ids(&[(3, t - 10), (5, t - 10), (u64::MAX - 1, 0)], &mut s1);
        encode_ids(&[(3, t - 1), (u64::MAX, t - 1)], &mut s2);
        encode_ids(&[(99, t)], &mut s3); // from `next` on: a leftover
        let key = |lead: &str, seq: u32| {
            let mut k = Vec::new();
            segment_key(lead, seq, &mut k);
            k
        };
        let (k0, k1, k2, k3, k_gone) = (key("l", 0), key("l", 1), key("l", 2), key("l", 3), key("gone", 0));
        let records: Vec<(&[u8], Option<&[u8]>)> = vec![
            (&k2, Some(&s0)),
            (b"l", Some(&main)),
            (&k0, Some(&s0)),
            (&k1, Some(&s1)),
            (&k2, Some(&s2)),
            (&k3, Some(&s3)),
            (&k_gone, Some(&s1)),
            (b"gone", Some(&main)),
            (b"gone", None),
        ];
        let leads = assemble(records, 1000).unwrap();
        assert_eq!(leads.keys().collect::<Vec<_>>(), ["l"]);
        let l = &leads["l"];
        assert_eq!((l.id_segments, l.id_bucket_bits), ((0, 0), 0));
        // Segment 2's latest value; the id older than the window is out; 3 keeps its newest.
        assert_eq!(l.event_ids, [(3, t - 1), (5, t), (u64::MAX, t - 1)]);

        // Version 1: the buckets of the record's bits, not those of another.
        let v1 = LeadRecord { event_ids: vec![], ..rec.clone() };
        let main = encode_v1(&v1, Some(1));
        let (mut b0, mut b1, mut kb0, mut kb1, mut k_stale) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        encode_ids(&[(3, t)], &mut b0);
        encode_ids(&[(u64::MAX, t - 1)], &mut b1);
        bucket_key("l", 1, 0, &mut kb0);
        bucket_key("l", 1, 1, &mut kb1);
        bucket_key("l", 2, 0, &mut k_stale);
        let records: Vec<(&[u8], Option<&[u8]>)> =
            vec![(&kb1, Some(&b0)), (b"l", Some(&main)), (&kb0, Some(&b0)), (&kb1, Some(&b1)), (&k_stale, Some(&s3))];
        let leads = assemble(records, 1000).unwrap();
        assert_eq!(leads["l"].event_ids, [(3, t), (u64::MAX, t - 1)]);
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let mut buf = Vec::new();
        encode_record(&sample(), &mut buf);
        for len in 0..buf.len() {
            assert!(decode_record(&buf[..len]).is_err(), "prefix of {len} bytes");
        }
        let mut longer = buf.clone();
        longer.push(0);
        assert_eq!(decode_record(&longer), Err(ChangelogError::TrailingBytes));
        let mut newer = buf.clone();
        newer[0] = 3;
        assert_eq!(decode_record(&newer), Err(ChangelogError::UnknownVersion(3)));
        for bad in [(7, 3), (0, u32::MAX)] {
            let mut v = Vec::new();
            encode_record(&LeadRecord { id_segments: bad, ..sample() }, &mut v);
            assert_eq!(decode_record(&v), Err(ChangelogError::BadSegments), "{bad:?}");
        }
        // Any byte flipped: an error or some record, never a panic.
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 0xff;
            let _ = decode_record(&b);
        }
    }
}
