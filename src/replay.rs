//! `leadscore replay`: the engine over JSON lines, in event time (spec sections 4 and 6).
//!
//! The clock is the watermark: the greatest accepted event time so far. Before an accepted event
//! that moves it, crossings and removals due up to the new watermark fire; after each event, those
//! it set up in the past fire at once. Memory grows with leads, not with input: lines are read
//! one at a time into a reused buffer, and a line over `max_event_bytes` is skipped without being
//! held whole.

use std::io::{self, BufRead, Write};
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
    /// The final watermark, RFC 3339; `null` when no event was accepted.
    pub at: Option<String>,
}

/// Reads one line into `buf` (without the newline), keeping at most `max + 1` bytes of it.
/// Returns `None` at end of input, else the line's full length.
fn read_line_bounded(input: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<Option<usize>> {
    buf.clear();
    let mut len = 0usize;
    let mut any = false;
    loop {
        let chunk = input.fill_buf()?;
        if chunk.is_empty() {
            return Ok(any.then_some(len));
        }
        any = true;
        let (part, done) = match memchr::memchr(b'\n', chunk) {
            Some(i) => (&chunk[..i], Some(i + 1)),
            None => (chunk, None),
        };
        let keep = (max + 1).saturating_sub(buf.len()).min(part.len());
        buf.extend_from_slice(&part[..keep]);
        len += part.len();
        let consumed = done.unwrap_or(chunk.len());
        input.consume(consumed);
        if done.is_some() {
            return Ok(Some(len));
        }
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
    input: &mut impl BufRead,
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
    let mut lines: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(1024)).collect();
    let (mut hashes, mut slots) = (Vec::with_capacity(BATCH), Vec::with_capacity(BATCH));
    let mut eof = false;
    while !eof {
        let mut n = 0;
        while n < BATCH {
            let Some(len) = read_line_bounded(input, &mut lines[n], opts.max_event_bytes)? else {
                eof = true;
                break;
            };
            if len <= lines[n].len() && is_blank(&lines[n]) {
                continue;
            }
            n += 1;
        }
        lines_read += n as u64;
        // Decoding is the time the prefetched lines need to arrive: each event's index entry is
        // requested as soon as it is decoded, and its core `CORE_LAG` events later.
        let mut batch = Vec::with_capacity(n);
        hashes.clear();
        slots.clear();
        for line in &lines[..n] {
            // A line cut at max + 1 bytes is still over the limit: decode reports too_large.
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_lines() {
        let data = b"abc\n\nxxxxxxxxxx\nlast";
        let mut input = io::BufReader::with_capacity(4, &data[..]);
        let mut buf = Vec::new();
        assert_eq!(read_line_bounded(&mut input, &mut buf, 5).unwrap(), Some(3));
        assert_eq!(buf, b"abc");
        assert_eq!(read_line_bounded(&mut input, &mut buf, 5).unwrap(), Some(0));
        assert_eq!(read_line_bounded(&mut input, &mut buf, 5).unwrap(), Some(10));
        assert_eq!(buf.len(), 6, "keeps max + 1 bytes of a long line");
        assert_eq!(read_line_bounded(&mut input, &mut buf, 5).unwrap(), Some(4));
        assert_eq!(buf, b"last");
        assert_eq!(read_line_bounded(&mut input, &mut buf, 5).unwrap(), None);
    }
}
