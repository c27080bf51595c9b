//! Wire format in: bytes of one record into a [`LeadEvent`], or a [`Rejection`] with a reason.
//!
//! Decoding borrows from the input wherever it can (strings without escapes are never copied),
//! because it runs once per consumed record. `properties` stay as validated raw JSON text and
//! are only looked into along the paths the model's conditions name.

use std::borrow::Cow;

use crate::model::Value;

/// Why a record was rejected; the `code()` is the metric label and the dead-letter header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    TooLarge,
    InvalidUtf8,
    InvalidJson,
    NotAnObject,
    MissingField,
    InvalidField,
    InvalidTimestamp,
    FutureTimestamp,
    Duplicate,
}

impl RejectReason {
    /// Every reason, in the order of precedence of spec section 2.
    pub const ALL: [RejectReason; 9] = [
        RejectReason::TooLarge,
        RejectReason::InvalidUtf8,
        RejectReason::InvalidJson,
        RejectReason::NotAnObject,
        RejectReason::MissingField,
        RejectReason::InvalidField,
        RejectReason::InvalidTimestamp,
        RejectReason::FutureTimestamp,
        RejectReason::Duplicate,
    ];

    /// Stable code: metric label value, dead-letter header value, summary key.
    pub fn code(self) -> &'static str {
        match self {
            RejectReason::TooLarge => "too_large",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::NotAnObject => "not_an_object",
            RejectReason::MissingField => "missing_field",
            RejectReason::InvalidField => "invalid_field",
            RejectReason::InvalidTimestamp => "invalid_timestamp",
            RejectReason::FutureTimestamp => "future_timestamp",
            RejectReason::Duplicate => "duplicate",
        }
    }

    /// Position in [`RejectReason::ALL`], for counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A rejected record: the reason and a message that never contains payload values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    /// Human-readable, payload-free (`"field lead_id: expected a string or an integer"`).
    pub message: &'static str,
}

/// One accepted lead activity event.
#[derive(Debug, Clone, PartialEq)]
pub struct LeadEvent<'a> {
    /// `lead_id`, an integer taken as its decimal string. 1..=256 bytes.
    pub lead_id: Cow<'a, str>,
    /// `type`. 1..=64 bytes.
    pub event_type: Cow<'a, str>,
    /// Event time, UTC epoch milliseconds, within `time::MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS`.
    pub timestamp_ms: i64,
    /// `event_id`, 1..=128 bytes; `None` when absent or null.
    pub event_id: Option<Cow<'a, str>>,
    /// `properties`; `None` when absent or null.
    pub properties: Option<Properties<'a>>,
}

/// The `properties` object of an event, kept as validated JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Properties<'a> {
    raw: &'a str,
}

/// How to decode: limits and, in `run`, the record's timestamp and the wall clock.
#[derive(Debug, Clone, Copy)]
pub struct DecodeOptions {
    /// Records longer than this are `too_large`.
    pub max_event_bytes: usize,
    /// Used when `timestamp` is absent (`run`: the Kafka record timestamp). `None`: a missing
    /// timestamp is `missing_field` (`replay`).
    pub fallback_timestamp_ms: Option<i64>,
    /// Events later than this are `future_timestamp` (`run`: wall clock + `max_future_skew`).
    /// `None`: no check (`replay`).
    pub latest_timestamp_ms: Option<i64>,
}

impl Default for DecodeOptions {
    /// The `replay` defaults: 64 KiB, timestamp required, no future check.
    fn default() -> Self {
        DecodeOptions { max_event_bytes: 64 * 1024, fallback_timestamp_ms: None, latest_timestamp_ms: None }
    }
}
