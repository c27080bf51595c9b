//! `leadscore replay`: the engine over JSON lines, in event time (spec sections 4 and 6).
//!
//! The clock is the watermark: the greatest accepted event time so far. Before an accepted event
//! that moves it, crossings and removals due up to the new watermark fire; after each event, those
//! it set up in the past fire at once. Memory grows with leads, not with input: lines are read
//! one at a time into a reused buffer, and a line over `max_event_bytes` is skipped without being
//! held whole.

use std::io::{self, Read, Write};
use std::ops::Range;
use std::sync::Arc;

use serde::Serialize;

use crate::engine::{Applied, Engine, Transition};
use crate::event::{decode, DecodeOptions, RejectReason};
use crate::model::Model;
use crate::time::format_rfc3339_ms;
use crate::transition::write_json;

/// Lines decoded and prefetched together (see [`Engine::prefetch`]).
const BATCH: usize = 64;
/// Events decoded between requesting a lead's index entry and its core.
const CORE_LAG: usize = 4;
/// Events applied between requesting a lead's id, row and remembered ids and applying it.
const LEAD_AHEAD: usize = 4;

/// Options of a replay.
#[derive(Debug, Clone, Copy)]
pub struct ReplayOptions {
    /// Lines longer than this are rejected as `too_large`.
    pub max_event_bytes: usize,
    /// Final watermark (epoch ms); never moves it backwards. `None`: the last event's time.
    pub until_ms: Option<i64>,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions { max_event_bytes: DecodeOptions::default().max_event_bytes, until_ms: None }
    }
}

/// The summary of spec section 6.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub model: String,
    pub model_version: String,
    /// Non-blank lines read.
    pub lines: u64,
    /// Accepted events.
    pub events: u64,
    /// Rejected lines by reason, duplicates included; every reason is listed.
    pub rejected: std::collections::BTreeMap<&'static str, u64>,
    /// Leads in state at the end.
    pub leads: usize,
    /// Leads qualified at the end.
    pub qualified: usize,
    /// Transitions written.
    pub transitions: u64,
    /// Mean score of tracked leads at the final watermark (0 with no leads).
    pub average_score: f64,
    /// The final watermark, RFC 3339 (`--until` when later); `null` when no event was accepted
    /// and no `--until` was given.
    pub at: Option<String>,
    /// Events that scored each rule's points (matched, within its limit), by rule id: which
    /// rules a backtested model leans on.
    pub rule_matches: std::collections::BTreeMap<String, u64>,
}

/// JSON lines read into one buffer a batch at a time and decoded where they are (no copy per
/// line). A line longer than the buffer (which holds at least `max_event_bytes + 2`) is over the
/// limit anyway: it is skipped without being held, and counted as `too_large`.
struct Lines {
    buf: Vec<u8>,
    /// Unread data is `buf[start..end]`.
    start: usize,
    end: usize,
    eof: bool,
    /// Inside a line longer than the buffer: dropping bytes until its newline.
    skipping: bool,
}

impl Lines {
    fn new(max_event_bytes: usize) -> Lines {
        let len = (max_event_bytes + 2).max(1 << 20);
        Lines { buf: vec![0; len], start: 0, end: 0, eof: false, skipping: false }
    }

    /// Every byte read and every line handed out.
    fn done(&self) -> bool {
        self.eof && self.start == self.end && !self.skipping
    }

    /// The next lines (without their newline), at most `max` of them, as ranges of
    /// [`Lines::data`]. Reads more input only when no complete line is left. Returns how many
    /// over-long lines it skipped.
    fn next_batch(&mut self, input: &mut impl Read, ranges: &mut Vec<Range<usize>>, max: usize) -> io::Result<u64> {
        ranges.clear();
        let mut skipped = 0;
        loop {
            while ranges.len() < max && self.start < self.end {
                let rest = &self.buf[self.start..self.end];
                match memchr::memchr(b'\n', rest) {
                    Some(i) => {
                        if self.skipping {
                            self.skipping = false;
                            skipped += 1;
                        } else {
                            // A CRLF line ends before its '\r': the record is what is before
                            // the line break, and max_event_bytes counts the record.
                            let end = self.start + i;
                            let end = if i > 0 && self.buf[end - 1] == b'\r' { end - 1 } else { end };
                            ranges.push(self.start..end);
                        }
                        self.start += i + 1;
                    }
                    None => break,
                }
            }
            if !ranges.is_empty() || self.done() {
                return Ok(skipped);
            }
            if self.eof {
                // The last line, without a newline.
                if self.skipping {
                    self.skipping = false;
                    skipped += 1;
                } else {
                    ranges.push(self.start..self.end);
                }
                self.start = self.end;
                return Ok(skipped);
            }
            // No complete line left: keep the partial one at the front and read more.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.end == self.buf.len() {
                // A partial line fills the whole buffer: far over the limit.
                self.skipping = true;
                self.end = 0;
            }
            let n = loop {
                match input.read(&mut self.buf[self.end..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            if n == 0 {
                self.eof = true;
            }
            self.end += n;
        }
    }

    fn data(&self) -> &[u8] {
        &self.buf
    }
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r'))
}

/// Where transitions go: JSON lines to the output; the first write error is kept and ends the
/// replay after the current event.
struct Sink<'a, W: Write> {
    out: &'a mut W,
    model: &'a Model,
    json: Vec<u8>,
    transitions: u64,
    error: Option<io::Error>,
}

impl<W: Write> Sink<'_, W> {
    fn emit(&mut self, t: Transition) {
        self.transitions += 1;
        self.json.clear();
        write_json(&mut self.json, self.model, &t);
        self.json.push(b'\n');
        if self.error.is_none() {
            if let Err(e) = self.out.write_all(&self.json) {
                self.error = Some(e);
            }
        }
    }
}

/// Replays `input` through a new engine, writing transitions as JSON lines to `out`.
pub fn replay(
    model: Arc<Model>,
    input: &mut impl Read,
    out: &mut impl Write,
    opts: ReplayOptions,
) -> io::Result<Summary> {
    let mut engine = Engine::new(Arc::clone(&model));
    let decode_opts = DecodeOptions { max_event_bytes: opts.max_event_bytes, ..DecodeOptions::default() };
    let mut rejected = [0u64; RejectReason::ALL.len()];
    let (mut lines_read, mut events) = (0u64, 0u64);
    let mut watermark: Option<i64> = None;
    let mut sink = Sink { out, model: &model, json: Vec::with_capacity(1024), transitions: 0, error: None };
    // Lines are read and decoded a batch at a time, and what applying the batch touches is
    // prefetched before the first of them applies (see `Engine::prefetch`): at millions of
    // leads every event misses the cache several times, and this overlaps the misses.
    let mut lines = Lines::new(opts.max_event_bytes);
    let mut ranges = Vec::with_capacity(BATCH);
    let (mut hashes, mut slots) = (Vec::with_capacity(BATCH), Vec::with_capacity(BATCH));
    while !lines.done() {
        let skipped = lines.next_batch(input, &mut ranges, BATCH)?;
        lines_read += skipped;
        rejected[RejectReason::TooLarge.index()] += skipped;
        let data = lines.data();
        // Decoding is the time the prefetched lines need to arrive: each event's index entry is
        // requested as soon as it is decoded, and its core `CORE_LAG` events later.
        let mut batch = Vec::with_capacity(ranges.len());
        hashes.clear();
        slots.clear();
        for r in &ranges {
            let line = &data[r.clone()];
            if is_blank(line) {
                continue;
            }
            lines_read += 1;
            // A line over the limit: decode reports too_large.
            match decode(line, &decode_opts) {
                Ok(ev) => {
                    let h = engine.hashes(&ev);
                    engine.prefetch_index(h);
                    batch.push(ev);
                    hashes.push(h);
                    if hashes.len() > CORE_LAG {
                        slots.push(engine.prefetch_core(hashes[hashes.len() - 1 - CORE_LAG]));
                    }
                }
                Err(rejection) => rejected[rejection.reason.index()] += 1,
            }
        }
        while slots.len() < hashes.len() {
            slots.push(engine.prefetch_core(hashes[slots.len()]));
        }
        // The rest of a lead is requested `LEAD_AHEAD` events before it applies.
        for j in 0..LEAD_AHEAD.min(batch.len()) {
            engine.prefetch_lead(slots[j], hashes[j]);
        }
        for (j, (ev, &h)) in batch.iter().zip(&hashes).enumerate() {
            if let (Some(&slot), Some(&ahead)) = (slots.get(j + LEAD_AHEAD), hashes.get(j + LEAD_AHEAD)) {
                engine.prefetch_lead(slot, ahead);
            }
            match engine.apply_in_event_time_hashed(ev, h, &mut |t| sink.emit(t)) {
                Applied::Accepted => {
                    events += 1;
                    watermark = Some(watermark.map_or(ev.timestamp_ms, |w| w.max(ev.timestamp_ms)));
                }
                Applied::Duplicate => rejected[RejectReason::Duplicate.index()] += 1,
            }
            if let Some(e) = sink.error.take() {
                return Err(e);
            }
        }
    }
    let end = match (watermark, opts.until_ms) {
        (Some(w), Some(u)) => Some(w.max(u)),
        (w, u) => w.or(u),
    };
    if let Some(end) = end {
        engine.advance(end, &mut |t| sink.emit(t));
    }
    if let Some(e) = sink.error.take() {
        return Err(e);
    }
    sink.out.flush()?;
    let transitions = sink.transitions;
    let totals = end.map(|e| engine.totals(e)).unwrap_or_default();
    let mut rule_matches: std::collections::BTreeMap<String, u64> =
        model.rules.iter().map(|r| (r.id.clone(), 0)).collect();
    engine.take_rule_matches(|r, n| *rule_matches.get_mut(&model.rules[r].id).expect("every rule listed") += n);
    Ok(Summary {
        model: model.name.clone(),
        model_version: model.version.clone(),
        lines: lines_read,
        events,
        rejected: RejectReason::ALL.iter().map(|r| (r.code(), rejected[r.index()])).collect(),
        leads: totals.leads,
        qualified: totals.qualified,
        transitions,
        average_score: totals.average(),
        at: end.map(format_rfc3339_ms),
        rule_matches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batches(data: &[u8], max_event_bytes: usize, per_batch: usize) -> (Vec<Vec<String>>, u64) {
        // A reader that hands out 3 bytes at a time, so lines straddle reads.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(buf.len()).min(3);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut lines = Lines::new(max_event_bytes);
        lines.buf.truncate(8); // a tiny buffer: lines longer than it are skipped
        let (mut input, mut ranges, mut out, mut skipped) = (Trickle(data), Vec::new(), Vec::new(), 0);
        while !lines.done() {
            skipped += lines.next_batch(&mut input, &mut ranges, per_batch).unwrap();
            let batch: Vec<String> =
                ranges.iter().map(|r| String::from_utf8(lines.data()[r.clone()].to_vec()).unwrap()).collect();
            if !batch.is_empty() {
                out.push(batch);
            }
        }
        (out, skipped)
    }

    #[test]
    fn lines_in_batches_across_reads() {
        let (out, skipped) = batches(b"abc\n\nxxxxxxxxxxxxxxxx\nde\nlast", 5, 2);
        assert_eq!(skipped, 1, "the 16-byte line is longer than the 8-byte buffer");
        let all: Vec<String> = out.concat();
        assert_eq!(all, ["abc", "", "de", "last"]);
        assert!(out.iter().all(|b| b.len() <= 2));
        let (out, skipped) = batches(b"a\nxxxxxxxxxxxxxxxxxxxx", 5, 10);
        assert_eq!((out.concat(), skipped), (vec!["a".to_owned()], 1), "an over-long last line");
        assert_eq!(batches(b"", 5, 10), (vec![], 0));
        assert_eq!(batches(b"\n", 5, 10).0.concat(), [""]);
        // CRLF line ends: the '\r' is not part of the record (nor of its size).
        assert_eq!(batches(b"abc\r\n\r\nde\r\nlast", 5, 10).0.concat(), ["abc", "", "de", "last"]);
    }
}
