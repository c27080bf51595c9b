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
//! Version 1:
//!
//! ```text
//! u8   version (1)
//! i64  tau_ms                       the lead's clock
//! i64  last_transition_at_ms        i64::MIN: none yet
//! u32  transitions                  the `n` of the last transition id
//! u8   flags                        1 qualified, 2 has ungrouped, 4 has fixed, 8 has attributes
//! f64  ungrouped                    if flag 2
//! f64  fixed                        if flag 4
//! u16  groups, each: str name, f64 total at tau
//! u16  limits, each: str rule id, u64 window index, u16 matches in it
//! u16  attributes (if flag 8), each: str name, u8 tag (0 absent, 1 string, 2 number, 3 bool,
//!      4 array or object), then u32 length + UTF-8 bytes | f64 | u8
//! u32  event ids, each: u64 hash, i64 clock (the lead's clock after that event)
//! ```
//!
//! `str` is a u16 length and UTF-8 bytes. Event ids are stored as the engine's 64-bit hash of
//! the id (see `engine::event_id_hash`; a test pins its values, so a dependency upgrade cannot
//! silently change it and forget every remembered id).

/// Current version of the record format.
pub const VERSION: u8 = 1;

pub(crate) const QUALIFIED: u8 = 1;
pub(crate) const HAS_UNGROUPED: u8 = 2;
pub(crate) const HAS_FIXED: u8 = 4;
pub(crate) const HAS_ATTRIBUTES: u8 = 8;

/// A profile attribute value (only attributes that fit rules read are kept).
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Num(f64),
    Bool(bool),
    /// An array or object: only `exists` holds on it.
    Composite,
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
    /// Remembered event ids: hash and the lead's clock after that event, sorted, only those
    /// still inside the dedup window.
    pub event_ids: Vec<(u64, i64)>,
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

pub(crate) fn count16(n: usize) -> [u8; 2] {
    u16::try_from(n).expect("at most 64 columns or attributes").to_le_bytes()
}

/// Appends the encoding of `r` to `out`.
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
            match value {
                None => out.push(0),
                Some(AttrValue::Str(s)) => {
                    out.push(1);
                    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
                Some(AttrValue::Num(n)) => {
                    out.push(2);
                    out.extend_from_slice(&n.to_bits().to_le_bytes());
                }
                Some(AttrValue::Bool(b)) => {
                    out.push(3);
                    out.push(u8::from(*b));
                }
                Some(AttrValue::Composite) => out.push(4),
            }
        }
    }
    out.extend_from_slice(&(r.event_ids.len() as u32).to_le_bytes());
    for (hash, clock) in &r.event_ids {
        out.extend_from_slice(&hash.to_le_bytes());
        out.extend_from_slice(&clock.to_le_bytes());
    }
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
}

/// An attribute value borrowed from a record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttrRef<'a> {
    Str(&'a str),
    Num(f64),
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
    if version != VERSION {
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
                2 => Some(AttrRef::Num(c.f64()?)),
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
                ("company_size".into(), Some(AttrValue::Num(250.0))),
                ("verified".into(), Some(AttrValue::Bool(true))),
                ("tags".into(), Some(AttrValue::Composite)),
                ("country".into(), None),
            ]),
            event_ids: vec![(1, 5), (u64::MAX, i64::MAX)],
        }
    }

    #[test]
    fn round_trips_to_the_bit() {
        let r = sample();
        let mut buf = Vec::new();
        encode_record(&r, &mut buf);
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
        };
        buf.clear();
        encode_record(&minimal, &mut buf);
        assert_eq!(buf.len(), 1 + 8 + 8 + 4 + 1 + 2 + 2 + 4);
        assert_eq!(decode_record(&buf), Ok(minimal));
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
        newer[0] = 2;
        assert_eq!(decode_record(&newer), Err(ChangelogError::UnknownVersion(2)));
        // Any byte flipped: an error or some record, never a panic.
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 0xff;
            let _ = decode_record(&b);
        }
    }
}
