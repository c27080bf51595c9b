//! Golden scenarios of spec sections 4 to 6, worked out by hand.
//!
//! Each test is a small model, a few JSON lines, a replay, and the exact transitions and summary
//! the spec gives for them. Every expected number is derived in a comment next to it. Numbers are
//! chosen so the arithmetic is exact in binary floating point (half-lives of 1h and gaps of whole
//! hours: decay factors 0.5, 0.25, ...; points like 16, 32, 64) and asserted with `==`. Where a
//! value cannot be exact (a decay-driven crossing time, the decay factor at it), it is computed
//! here with the spec's formula, `decay(dt) = 2^(-dt/h)`, and the comment says so.
//!
//! Output lines are parsed by a small parser in this file rather than by `serde_json::Value`:
//! serde_json without its `float_roundtrip` feature may read a 17-digit float one ulp off, and the
//! spec's field order (section 5) is lost in a `serde_json::Map`. This parser keeps key order and
//! reads numbers with `str::parse::<f64>`, which is correctly rounded.
//!
//! Time: `T0` is 2026-12-01T00:00:00Z; `H` is one hour in milliseconds.

use std::sync::Arc;

use leadscore::model::Model;
use leadscore::replay::{replay, ReplayOptions, Summary};
use serde_json::{json, Value};

/// 2026-12-01T00:00:00Z in epoch milliseconds (20788 days since 1970-01-01 × 86 400 000).
const T0: i64 = 1_796_083_200_000;
const S: i64 = 1_000;
const M: i64 = 60 * S;
const H: i64 = 60 * M;

const Q: &str = "lead_qualified";
const DQ: &str = "lead_disqualified";

// ---------------------------------------------------------------------------------------------
// A JSON reader that keeps key order and reads numbers exactly.

#[derive(Debug, Clone, PartialEq)]
enum J {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl Reader<'_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> u8 {
        self.ws();
        *self.b.get(self.i).unwrap_or_else(|| panic!("JSON ends early at byte {}", self.i))
    }

    fn expect(&mut self, c: u8) {
        let got = self.peek();
        assert_eq!(got as char, c as char, "JSON: expected {:?} at byte {}", c as char, self.i);
        self.i += 1;
    }

    fn literal(&mut self, word: &str, v: J) -> J {
        assert!(self.b[self.i..].starts_with(word.as_bytes()), "JSON: bad literal at byte {}", self.i);
        self.i += word.len();
        v
    }

    fn string(&mut self) -> String {
        self.expect(b'"');
        let start = self.i - 1;
        while self.b[self.i] != b'"' {
            self.i += if self.b[self.i] == b'\\' { 2 } else { 1 };
        }
        self.i += 1;
        let raw = std::str::from_utf8(&self.b[start..self.i]).expect("UTF-8");
        serde_json::from_str(raw).expect("a JSON string")
    }

    fn value(&mut self) -> J {
        match self.peek() {
            b'{' => {
                self.i += 1;
                let mut fields = Vec::new();
                if self.peek() == b'}' {
                    self.i += 1;
                    return J::Obj(fields);
                }
                loop {
                    let k = self.string();
                    self.expect(b':');
                    fields.push((k, self.value()));
                    match self.peek() {
                        b',' => self.i += 1,
                        b'}' => {
                            self.i += 1;
                            return J::Obj(fields);
                        }
                        c => panic!("JSON: unexpected {:?} at byte {}", c as char, self.i),
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                if self.peek() == b']' {
                    self.i += 1;
                    return J::Arr(items);
                }
                loop {
                    items.push(self.value());
                    match self.peek() {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return J::Arr(items);
                        }
                        c => panic!("JSON: unexpected {:?} at byte {}", c as char, self.i),
                    }
                }
            }
            b'"' => J::Str(self.string()),
            b't' => self.literal("true", J::Bool(true)),
            b'f' => self.literal("false", J::Bool(false)),
            b'n' => self.literal("null", J::Null),
            _ => {
                let start = self.i;
                while self.i < self.b.len() && b"+-0123456789.eE".contains(&self.b[self.i]) {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.b[start..self.i]).expect("UTF-8");
                J::Num(text.parse().unwrap_or_else(|_| panic!("JSON: bad number {text:?}")))
            }
        }
    }
}

fn parse(text: &str) -> J {
    let mut r = Reader { b: text.as_bytes(), i: 0 };
    let v = r.value();
    r.ws();
    assert_eq!(r.i, text.len(), "JSON: trailing bytes in {text:?}");
    v
}

/// The parsed value as a `serde_json::Value` (order dropped; numbers kept bit for bit).
fn to_value(j: &J) -> Value {
    match j {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Num(n) => json!(*n),
        J::Str(s) => Value::String(s.clone()),
        J::Arr(a) => Value::Array(a.iter().map(to_value).collect()),
        J::Obj(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), to_value(v))).collect()),
    }
}

fn keys(j: &J) -> Vec<&str> {
    match j {
        J::Obj(o) => o.iter().map(|(k, _)| k.as_str()).collect(),
        other => panic!("not an object: {other:?}"),
    }
}

fn field<'a>(j: &'a J, name: &str) -> &'a J {
    match j {
        J::Obj(o) => &o.iter().find(|(k, _)| k == name).unwrap_or_else(|| panic!("no field {name}")).1,
        other => panic!("not an object: {other:?}"),
    }
}

/// Spec section 5: exactly these fields, in this order.
fn assert_field_order(line: &str) {
    let j = parse(line);
    assert_eq!(
        keys(&j),
        ["id", "type", "lead_id", "model", "model_version", "score", "threshold", "at", "trigger", "breakdown"],
        "top-level fields of {line}"
    );
    assert_eq!(
        keys(field(&j, "breakdown")),
        ["fit", "fixed", "engagement", "groups", "fit_rules", "rules"],
        "breakdown fields of {line}"
    );
    match field(&j, "trigger") {
        J::Null => {}
        t => assert_eq!(keys(t), ["event_id", "type"], "trigger fields of {line}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Running a replay and building expectations.

struct Run {
    /// Raw output lines.
    lines: Vec<String>,
    /// Parsed output lines, without `breakdown.rules` (the expectations below are written
    /// without it; `rules` holds it).
    out: Vec<Value>,
    /// Each line's `breakdown.rules`: the rules its trigger scored.
    rules: Vec<Vec<String>>,
    summary: Summary,
}

fn model(src: &str) -> Arc<Model> {
    Arc::new(Model::from_toml(src).unwrap_or_else(|e| panic!("the test model does not compile: {e:#?}")))
}

fn run_bytes(model_src: &str, input: &[u8], until_ms: Option<i64>) -> Run {
    let mut out = Vec::new();
    let opts = ReplayOptions { until_ms, ..ReplayOptions::default() };
    let summary = replay(model(model_src), &mut &input[..], &mut out, opts).expect("replay");
    let text = String::from_utf8(out).expect("output is UTF-8");
    assert!(text.is_empty() || text.ends_with('\n'), "every output line ends with a newline");
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for l in &lines {
        assert_field_order(l);
    }
    let mut out: Vec<Value> = lines.iter().map(|l| to_value(&parse(l))).collect();
    let rules = out
        .iter_mut()
        .map(|t| {
            let rules = t["breakdown"].as_object_mut().and_then(|b| b.remove("rules")).expect("breakdown.rules");
            serde_json::from_value(rules).expect("breakdown.rules is a list of rule ids")
        })
        .collect();
    Run { lines, out, rules, summary }
}

fn run(model_src: &str, events: &[&str], until_ms: Option<i64>) -> Run {
    run_bytes(model_src, events.join("\n").as_bytes(), until_ms)
}

/// One transition as spec section 5 writes it, for the model `golden` version `v1`.
#[allow(clippy::too_many_arguments)]
fn tr(kind: &str, lead: &str, n: u32, at: &str, score: f64, threshold: f64, trigger: Value, breakdown: Value) -> Value {
    json!({
        "id": format!("{lead}:golden:{n}"),
        "type": kind,
        "lead_id": lead,
        "model": "golden",
        "model_version": "v1",
        "score": score,
        "threshold": threshold,
        "at": at,
        "trigger": trigger,
        "breakdown": breakdown,
    })
}

fn trig(event_id: Option<&str>, event_type: &str) -> Value {
    json!({ "event_id": event_id, "type": event_type })
}

fn bd(fit: f64, fixed: f64, engagement: f64, groups: Value, fit_rules: &[&str]) -> Value {
    json!({ "fit": fit, "fixed": fixed, "engagement": engagement, "groups": groups, "fit_rules": fit_rules })
}

fn assert_transitions(run: &Run, expected: &[Value]) {
    let pretty = |v: &[Value]| v.iter().map(|t| format!("  {t}\n")).collect::<String>();
    assert!(run.out == expected, "transitions differ\n got:\n{}\n expected:\n{}", pretty(&run.out), pretty(expected));
}

fn rejected(s: &Summary, reason: &str) -> u64 {
    s.rejected.get(reason).copied().unwrap_or(0)
}

/// `decay(dt) = 2^(-dt/h)` as spec section 4 writes it, for values that are not exact; the base
/// goes through `black_box` so the compiler cannot fold `powf` with another algorithm.
fn decay(dt_ms: i64, half_life_ms: i64) -> f64 {
    std::hint::black_box(2.0f64).powf(-(dt_ms as f64) / half_life_ms as f64)
}

/// The time at which `steady + e·decay(t - tau)` equals `threshold`, rounded up to the
/// millisecond: `tau + h·log2(e / (threshold - steady))`.
fn crossing(tau: i64, half_life_ms: i64, steady: f64, e: f64, threshold: f64) -> i64 {
    (tau as f64 + half_life_ms as f64 * (e / (threshold - steady)).log2()).ceil() as i64
}

// ---------------------------------------------------------------------------------------------
// 1. Decay.

const DECAY_MODEL: &str = r#"
name = "golden"
version = "v1"
[score]
qualify_at = 25.0
disqualify_below = 10.0
half_life = "1h"
[[rule]]
id = "visit"
event = "website_visit"
points = 16.0
"#;

#[test]
fn decay_halves_points_each_half_life_and_scores_at_the_check_time() {
    let events = [
        r#"{"lead_id":"l1","type":"website_visit","timestamp":"2026-12-01T00:00:00Z","event_id":"a"}"#,
        r#"{"lead_id":"l2","type":"website_visit","timestamp":"2026-12-01T00:00:00Z","event_id":"b"}"#,
        r#"{"lead_id":"l1","type":"website_visit","timestamp":"2026-12-01T01:00:00Z","event_id":"c"}"#,
        r#"{"lead_id":"l1","type":"website_visit","timestamp":"2026-12-01T02:00:00Z","event_id":"d"}"#,
    ];
    // l1: t0: E = 16 (< 25).
    //     t0+1h: E = 16·0.5 + 16 = 24 (< 25).
    //     t0+2h: E = 24·0.5 + 16 = 28 >= 25: qualified at t0+2h, score 28.
    // l2: t0: E = 16; never qualifies.
    let r = run(DECAY_MODEL, &events, None);
    let q1 = tr(
        Q,
        "l1",
        1,
        "2026-12-01T02:00:00.000Z",
        28.0,
        25.0,
        trig(Some("d"), "website_visit"),
        bd(0.0, 0.0, 28.0, json!({}), &[]),
    );
    assert_transitions(&r, std::slice::from_ref(&q1));
    // Final watermark t0+2h: l1 = 28, l2 = 16·0.25 = 4; average (28 + 4) / 2 = 16.
    let s = &r.summary;
    assert_eq!((s.events, s.leads, s.qualified, s.transitions), (4, 2, 1, 1));
    assert_eq!(s.average_score, 16.0);
    assert_eq!(s.at.as_deref(), Some("2026-12-01T02:00:00.000Z"));

    // --until t0+3h: l1 = 28·0.5 = 14 (still >= 10: qualified), l2 = 16·0.125 = 2; average 8.
    // l1 sinks to 10 at t0+2h + 1h·log2(28/10) ≈ t0+3.49h, after the until: no new transition.
    let r = run(DECAY_MODEL, &events, Some(T0 + 3 * H));
    assert_transitions(&r, std::slice::from_ref(&q1));
    assert_eq!((r.summary.leads, r.summary.qualified), (2, 1));
    assert_eq!(r.summary.average_score, 8.0);
    assert_eq!(r.summary.at.as_deref(), Some("2026-12-01T03:00:00.000Z"));

    // --until t0+4h: l1 crosses 10 at t0+2h + 3 600 000·log2(2.8) = t0+2h + 5 347 536.58 ms, rounded
    // up: t0+2h+5 347 537 ms = 03:29:07.537 (computed with the formula too). Score = threshold;
    // engagement = 28·decay(5 347 537 ms) (not exact: computed with the spec's formula).
    let c = crossing(T0 + 2 * H, H, 0.0, 28.0, 10.0);
    assert_eq!(c, T0 + 2 * H + 5_347_537);
    let r = run(DECAY_MODEL, &events, Some(T0 + 4 * H));
    let dq = tr(
        DQ,
        "l1",
        2,
        "2026-12-01T03:29:07.537Z",
        10.0,
        10.0,
        Value::Null,
        bd(0.0, 0.0, 28.0 * decay(c - (T0 + 2 * H), H), json!({}), &[]),
    );
    assert_transitions(&r, &[q1, dq]);
    // At t0+4h: l1 = 28·0.25 = 7, l2 = 16/16 = 1; average 4.
    assert_eq!((r.summary.leads, r.summary.qualified, r.summary.transitions), (2, 0, 2));
    assert_eq!(r.summary.average_score, 4.0);
}

// ---------------------------------------------------------------------------------------------
// 2. Caps and floors.

#[test]
fn group_totals_clamp_after_each_rule_then_decay() {
    // `probe` is ungrouped (so uncapped) and large: a lead qualifies when it is applied, and the
    // transition's breakdown shows the group totals at that moment.
    let model_src = r#"
name = "golden"
version = "v1"
[score]
qualify_at = 100.0
disqualify_below = 0.0
half_life = "1h"
[group.web]
cap = 30.0
floor = -20.0
[group.social]
cap = 8.0
[[rule]]
id = "visit"
event = "website_visit"
points = 12.0
group = "web"
[[rule]]
id = "demo_big"
event = "demo_request"
points = 25.0
group = "web"
[[rule]]
id = "demo_cool"
event = "demo_request"
points = -10.0
group = "web"
[[rule]]
id = "spam"
event = "spam_report"
points = -15.0
group = "web"
[[rule]]
id = "like"
event = "social_interaction"
points = 5.0
group = "social"
[[rule]]
id = "probe"
event = "probe"
points = 110.0
"#;
    let ev = |lead: &str, ty: &str, ts: &str| format!(r#"{{"lead_id":"{lead}","type":"{ty}","timestamp":"{ts}"}}"#);
    let t0 = "2026-12-01T00:00:00Z";
    let t1 = "2026-12-01T01:00:00Z";
    let t2 = "2026-12-01T02:00:00Z";
    let events = [
        // cap: web 12, 24, 36 → clamped to 30.
        ev("cap", "website_visit", t0),
        ev("cap", "website_visit", t0),
        ev("cap", "website_visit", t0),
        // order: web 12, 24; demo_request: demo_big 24 + 25 = 49 → 30, then demo_cool 30 - 10 = 20
        // (clamping only at the end of the event would give 24 + 25 - 10 = 39 → 30);
        // social 5, 10 → 8; probe: E = 20 + 8 + 110 = 138 >= 100: qualified at t0.
        ev("order", "website_visit", t0),
        ev("order", "website_visit", t0),
        ev("order", "demo_request", t0),
        ev("order", "social_interaction", t0),
        ev("order", "social_interaction", t0),
        ev("order", "probe", t0),
        // floor: web -15, -30 → -20.
        ev("floor", "spam_report", t0),
        ev("floor", "spam_report", t0),
        // cap at t0+1h: web 30·0.5 = 15; probe: E = 15 + 0 + 110 = 125: qualified at t0+1h
        // (without the cap: 36·0.5 + 110 = 128).
        ev("cap", "probe", t1),
        // floor at t0+1h: web -20·0.5 = -10, spam -10 - 15 = -25 → -20.
        ev("floor", "spam_report", t1),
        // floor at t0+2h: web -20·0.5 = -10; probe: E = -10 + 110 = 100 >= 100: qualified
        // (without the floor: -30, -15 - 15 = -30, -15 + 110 = 95, not qualified).
        ev("floor", "probe", t2),
    ];
    let events: Vec<&str> = events.iter().map(String::as_str).collect();
    let r = run(model_src, &events, None);
    let probe = || trig(None, "probe");
    assert_transitions(
        &r,
        &[
            tr(
                Q,
                "order",
                1,
                "2026-12-01T00:00:00.000Z",
                138.0,
                100.0,
                probe(),
                bd(0.0, 0.0, 138.0, json!({"web": 20.0, "social": 8.0}), &[]),
            ),
            tr(
                Q,
                "cap",
                1,
                "2026-12-01T01:00:00.000Z",
                125.0,
                100.0,
                probe(),
                bd(0.0, 0.0, 125.0, json!({"web": 15.0, "social": 0.0}), &[]),
            ),
            tr(
                Q,
                "floor",
                1,
                "2026-12-01T02:00:00.000Z",
                100.0,
                100.0,
                probe(),
                bd(0.0, 0.0, 100.0, json!({"web": -10.0, "social": 0.0}), &[]),
            ),
        ],
    );
    // Groups are listed in model order.
    let first = parse(&r.lines[0]);
    assert_eq!(keys(field(field(&first, "breakdown"), "groups")), ["web", "social"]);
    // At t0+2h: cap 125·0.5 = 62.5, order 138·0.25 = 34.5, floor 100; sum 197 (exact), / 3.
    let s = &r.summary;
    assert_eq!((s.events, s.leads, s.qualified, s.transitions), (14, 3, 3, 3));
    assert_eq!(s.average_score, 197.0 / 3.0);
}

// ---------------------------------------------------------------------------------------------
// 3. Late events.

#[test]
fn late_events_add_decayed_points_at_the_clock_without_moving_it() {
    let model_src = r#"
name = "golden"
version = "v1"
[score]
qualify_at = 40.0
disqualify_below = 30.0
half_life = "1h"
[[rule]]
id = "visit"
event = "website_visit"
points = 16.0
[[rule]]
id = "signup"
event = "signup"
points = 8.0
decays = false
[[rule]]
id = "demo"
event = "demo_request"
points = 32.0
[[rule]]
id = "unsub"
event = "unsubscribe"
points = -20.0
"#;
    let events = [
        // τ = t0+2h, E = 16; score 16.
        r#"{"lead_id":"l","type":"website_visit","timestamp":"2026-12-01T02:00:00Z","event_id":"l1"}"#,
        // Late, fixed points: in full, fixed = 8; score 24.
        r#"{"lead_id":"l","type":"signup","timestamp":"2026-12-01T00:00:00Z","event_id":"l2"}"#,
        // Late by 2h: 16·decay(2h) = 4 added at τ: E = 20; score 28.
        r#"{"lead_id":"l","type":"website_visit","timestamp":"2026-12-01T00:00:00Z","event_id":"l3"}"#,
        // Late by 1h: 32·0.5 = 16: E = 36; score 8 + 36 = 44 >= 40: qualified at τ = t0+2h
        // (the check is at max(τ, previous at) = t0+2h, not at the event's time).
        r#"{"lead_id":"l","type":"demo_request","timestamp":"2026-12-01T01:00:00Z","event_id":"l4"}"#,
        // At τ itself: no decay (the late events did not move the clock back), E = 36 - 20 = 16;
        // score 8 + 16 = 24 < 30: disqualified at t0+2h. Had the clock moved to t0+1h, this
        // event would first decay E to 18 and give 8 - 2 = 6.
        r#"{"lead_id":"l","type":"unsubscribe","timestamp":"2026-12-01T02:00:00Z","event_id":"l5"}"#,
    ];
    let r = run(model_src, &events, None);
    assert_transitions(
        &r,
        &[
            tr(
                Q,
                "l",
                1,
                "2026-12-01T02:00:00.000Z",
                44.0,
                40.0,
                trig(Some("l4"), "demo_request"),
                bd(0.0, 8.0, 36.0, json!({}), &[]),
            ),
            tr(
                DQ,
                "l",
                2,
                "2026-12-01T02:00:00.000Z",
                24.0,
                30.0,
                trig(Some("l5"), "unsubscribe"),
                bd(0.0, 8.0, 16.0, json!({}), &[]),
            ),
        ],
    );
    let s = &r.summary;
    assert_eq!((s.events, s.leads, s.qualified, s.transitions), (5, 1, 0, 2));
    assert_eq!(s.average_score, 24.0);
    assert_eq!(s.at.as_deref(), Some("2026-12-01T02:00:00.000Z"));
    // (A check at the previous transition's `at` when that is later than τ: see
    // `decay_driven_disqualification_fires_before_the_event_that_passes_it`, lead d's 3rd one.)
}

// ---------------------------------------------------------------------------------------------
// 4. Limits.

#[test]
fn limits_score_count_matches_per_epoch_aligned_window() {
    // Fixed points (decays = false) so each scored match adds exactly 10.
    let model_src = r#"
name = "golden"
version = "v1"
[score]
qualify_at = 40.0
disqualify_below = 0.0
half_life = "1h"
[[rule]]
id = "visit"
event = "website_visit"
points = 10.0
decays = false
limit = { count = 2, per = "1h" }
"#;
    // T0 is a whole number of hours since the epoch, so windows are [T0 + kh, T0 + (k+1)h).
    let events = [
        // w0, 1st: 10.
        r#"{"lead_id":"q","type":"website_visit","timestamp":"2026-12-01T00:10:00Z","event_id":"q1"}"#,
        // w1, 1st and 2nd: 20, 30.
        r#"{"lead_id":"q","type":"website_visit","timestamp":"2026-12-01T01:10:00Z","event_id":"q2"}"#,
        r#"{"lead_id":"q","type":"website_visit","timestamp":"2026-12-01T01:20:00Z","event_id":"q3"}"#,
        // w1, 3rd: 0 (scored, it would qualify here at 40).
        r#"{"lead_id":"q","type":"website_visit","timestamp":"2026-12-01T01:30:00Z","event_id":"q4"}"#,
        // Late, in w0, older than the newest window seen (w1): 0, although w0 had only 1 match.
        r#"{"lead_id":"q","type":"website_visit","timestamp":"2026-12-01T00:20:00Z","event_id":"q5"}"#,
        // Another lead has its own count: 10.
        r#"{"lead_id":"r","type":"website_visit","timestamp":"2026-12-01T01:40:00Z","event_id":"r1"}"#,
        // w2 starts at exactly t0+2h: 40 >= 40: qualified at t0+2h.
        r#"{"lead_id":"q","type":"website_visit","timestamp":"2026-12-01T02:00:00Z","event_id":"q6"}"#,
        // w2 ends at t0+3h - 1ms: 2nd scores (50), 3rd does not.
        r#"{"lead_id":"q","type":"website_visit","timestamp":"2026-12-01T02:59:59.999Z","event_id":"q7"}"#,
        r#"{"lead_id":"q","type":"website_visit","timestamp":"2026-12-01T02:59:59.999Z","event_id":"q8"}"#,
        // w3: 60.
        r#"{"lead_id":"q","type":"website_visit","timestamp":"2026-12-01T03:00:00Z","event_id":"q9"}"#,
    ];
    let r = run(model_src, &events, None);
    assert_transitions(
        &r,
        &[tr(
            Q,
            "q",
            1,
            "2026-12-01T02:00:00.000Z",
            40.0,
            40.0,
            trig(Some("q6"), "website_visit"),
            bd(0.0, 40.0, 0.0, json!({}), &[]),
        )],
    );
    // q = 60, r = 10: average 35.
    let s = &r.summary;
    assert_eq!((s.events, s.leads, s.qualified, s.transitions), (10, 2, 1, 1));
    assert_eq!(s.average_score, 35.0);
    assert_eq!(s.at.as_deref(), Some("2026-12-01T03:00:00.000Z"));
}

#[test]
fn the_breakdown_names_the_rules_the_trigger_scored() {
    let model_src = r#"
name = "golden"
version = "v1"
[score]
qualify_at = 25.0
disqualify_below = 5.0
half_life = "1h"
[[rule]]
id = "visit"
event = "website_visit"
points = 10.0
decays = false
limit = { count = 1, per = "1h" }
[[rule]]
id = "pricing"
event = "website_visit"
when = { "properties.path" = { prefix = "/pricing" } }
points = 10.0
decays = false
[[rule]]
id = "unsub"
event = "unsubscribe"
points = -40.0
"#;
    let events = [
        // visit 10, pricing 10: 20 < 25.
        r#"{"lead_id":"a","type":"website_visit","timestamp":"2026-12-01T00:00:00Z","properties":{"path":"/pricing/x"}}"#,
        // visit is past its limit (scores 0, not named), pricing 10: 30 >= 25, qualified.
        r#"{"lead_id":"a","type":"website_visit","timestamp":"2026-12-01T00:01:00Z","properties":{"path":"/pricing"}}"#,
        // -40: -10 < 5, disqualified.
        r#"{"lead_id":"a","type":"unsubscribe","timestamp":"2026-12-01T00:02:00Z"}"#,
    ];
    // The -40 wears off: 30 - 40·2^(-dt/1h) = 25 at dt = 3h exactly: qualified by decay alone.
    let r = run(model_src, &events, Some(T0 + 4 * H));
    let kinds: Vec<(&str, &str)> =
        r.out.iter().map(|t| (t["type"].as_str().expect("type"), t["at"].as_str().expect("at"))).collect();
    assert_eq!(
        kinds,
        [(Q, "2026-12-01T00:01:00.000Z"), (DQ, "2026-12-01T00:02:00.000Z"), (Q, "2026-12-01T03:02:00.000Z")]
    );
    assert_eq!(r.rules, [vec!["pricing".to_string()], vec!["unsub".to_string()], vec![]]);
    // The summary counts the scored matches of each rule.
    let counts: Vec<(&str, u64)> = r.summary.rule_matches.iter().map(|(k, &v)| (k.as_str(), v)).collect();
    assert_eq!(counts, [("pricing", 2), ("unsub", 1), ("visit", 1)]);
}

// ---------------------------------------------------------------------------------------------
// 5. Hysteresis.

#[test]
fn hysteresis_qualify_at_60_disqualify_below_45() {
    // Fixed points, so only events move the score.
    let model_src = r#"
name = "golden"
version = "v1"
[score]
qualify_at = 60.0
disqualify_below = 45.0
half_life = "1h"
[[rule]]
id = "demo"
event = "demo_request"
points = 30.0
decays = false
[[rule]]
id = "complaint"
event = "complaint"
points = -15.0
decays = false
[[rule]]
id = "webinar"
event = "webinar_registration"
points = 15.0
decays = false
"#;
    let events = [
        // 30.
        r#"{"lead_id":"h","type":"demo_request","timestamp":"2026-12-01T00:00:00Z","event_id":"h1"}"#,
        // 60 >= 60: qualified.
        r#"{"lead_id":"h","type":"demo_request","timestamp":"2026-12-01T01:00:00Z","event_id":"h2"}"#,
        // 45: not < 45, stays qualified.
        r#"{"lead_id":"h","type":"complaint","timestamp":"2026-12-01T02:00:00Z","event_id":"h3"}"#,
        // 60: already qualified, nothing.
        r#"{"lead_id":"h","type":"webinar_registration","timestamp":"2026-12-01T03:00:00Z","event_id":"h4"}"#,
        // 45: stays.
        r#"{"lead_id":"h","type":"complaint","timestamp":"2026-12-01T04:00:00Z","event_id":"h5"}"#,
        // 30 < 45: disqualified.
        r#"{"lead_id":"h","type":"complaint","timestamp":"2026-12-01T05:00:00Z","event_id":"h6"}"#,
        // 45: between the thresholds, not qualified: stays disqualified.
        r#"{"lead_id":"h","type":"webinar_registration","timestamp":"2026-12-01T06:00:00Z","event_id":"h7"}"#,
        // 60 >= 60: qualified again.
        r#"{"lead_id":"h","type":"webinar_registration","timestamp":"2026-12-01T07:00:00Z","event_id":"h8"}"#,
    ];
    let r = run(model_src, &events, None);
    assert_transitions(
        &r,
        &[
            tr(
                Q,
                "h",
                1,
                "2026-12-01T01:00:00.000Z",
                60.0,
                60.0,
                trig(Some("h2"), "demo_request"),
                bd(0.0, 60.0, 0.0, json!({}), &[]),
            ),
            tr(
                DQ,
                "h",
                2,
                "2026-12-01T05:00:00.000Z",
                30.0,
                45.0,
                trig(Some("h6"), "complaint"),
                bd(0.0, 30.0, 0.0, json!({}), &[]),
            ),
            tr(
                Q,
                "h",
                3,
                "2026-12-01T07:00:00.000Z",
                60.0,
                60.0,
                trig(Some("h8"), "webinar_registration"),
                bd(0.0, 60.0, 0.0, json!({}), &[]),
            ),
        ],
    );
    assert_eq!((r.summary.qualified, r.summary.transitions), (1, 3));
    assert_eq!(r.summary.average_score, 60.0);
}

// ---------------------------------------------------------------------------------------------
// 6. Decay-driven disqualification.

const CROSSING_MODEL: &str = r#"
name = "golden"
version = "v1"
[score]
qualify_at = 60.0
disqualify_below = 45.0
half_life = "1h"
[[rule]]
id = "trial"
event = "trial_activation"
points = 48.0
[[rule]]
id = "demo"
event = "demo_request"
points = 64.0
[[fit]]
id = "senior"
attribute = "job_title"
matches = '(?i)\bvp\b'
points = 20.0
"#;

const CROSSING_EVENTS: [&str; 4] = [
    r#"{"lead_id":"d","type":"profile_update","timestamp":"2026-12-01T00:00:00Z","event_id":"d1","properties":{"job_title":"VP Sales"}}"#,
    r#"{"lead_id":"d","type":"trial_activation","timestamp":"2026-12-01T00:00:00Z","event_id":"d2"}"#,
    r#"{"lead_id":"x","type":"demo_request","timestamp":"2026-12-01T01:00:00Z","event_id":"x1"}"#,
    r#"{"lead_id":"d","type":"demo_request","timestamp":"2026-11-30T23:00:00Z","event_id":"d3"}"#,
];

/// The transitions of `CROSSING_EVENTS` with no `--until`, derived in the test below.
fn crossing_transitions() -> Vec<Value> {
    // d: fit 20 (job_title "VP Sales"); t0: E = 48; score 68 >= 60: qualified at t0.
    let d1 = tr(
        Q,
        "d",
        1,
        "2026-12-01T00:00:00.000Z",
        68.0,
        60.0,
        trig(Some("d2"), "trial_activation"),
        bd(20.0, 0.0, 48.0, json!({}), &["senior"]),
    );
    // d sinks to 45 when 20 + 48·2^(-dt/1h) = 45: dt = 1h·log2(48/25) = 3 387 982.72 ms, rounded
    // up: t0 + 3 387 983 ms = 00:56:27.983. The event at t0+1h moves the watermark past it, so d's
    // disqualification comes out before x's qualification. Score = the threshold, 45; trigger null;
    // engagement = 48·decay(3 387 983 ms) (not exact: the spec's formula).
    let c = crossing(T0, H, 20.0, 48.0, 45.0);
    assert_eq!(c, T0 + 3_387_983);
    let d2 = tr(
        DQ,
        "d",
        2,
        "2026-12-01T00:56:27.983Z",
        45.0,
        45.0,
        Value::Null,
        bd(20.0, 0.0, 48.0 * decay(c - T0, H), json!({}), &["senior"]),
    );
    // x: t0+1h: E = 64 >= 60: qualified at t0+1h.
    let x1 = tr(
        Q,
        "x",
        1,
        "2026-12-01T01:00:00.000Z",
        64.0,
        60.0,
        trig(Some("x1"), "demo_request"),
        bd(0.0, 0.0, 64.0, json!({}), &[]),
    );
    // d, late by 1h (t0-1h < τ = t0): 64·0.5 = 32 added at τ: E = 80. Check at
    // a = max(τ = t0, previous at = 00:56:27.983) = 00:56:27.983: score 20 + 80·decay(c - t0)
    // ≈ 61.67 >= 60: qualified at the previous transition's time, not at τ (not exact: formula).
    let d3_e = 80.0 * decay(c - T0, H);
    let d3 = tr(
        Q,
        "d",
        3,
        "2026-12-01T00:56:27.983Z",
        20.0 + d3_e,
        60.0,
        trig(Some("d3"), "demo_request"),
        bd(20.0, 0.0, d3_e, json!({}), &["senior"]),
    );
    vec![d1, d2, x1, d3]
}

#[test]
fn decay_driven_disqualification_fires_before_the_event_that_passes_it() {
    let r = run(CROSSING_MODEL, &CROSSING_EVENTS, None);
    assert_transitions(&r, &crossing_transitions());
    // The final watermark stays at t0+1h (the last accepted event, d3, is older: never backwards).
    // d = 20 + 80·0.5 = 60 (qualified), x = 64 (qualified); average 62.
    let s = &r.summary;
    assert_eq!((s.events, s.leads, s.qualified, s.transitions), (4, 2, 2, 4));
    assert_eq!(s.average_score, 62.0);
    assert_eq!(s.at.as_deref(), Some("2026-12-01T01:00:00.000Z"));
}

#[test]
fn decay_driven_disqualifications_fire_at_the_end_with_until() {
    let r = run(CROSSING_MODEL, &CROSSING_EVENTS, Some(T0 + 3 * H));
    // x (τ = t0+1h, E = 64) sinks to 45 at t0+1h + 1h·log2(64/45) = t0+1h + 1 829 328.85 ms,
    // rounded up: 01:30:29.329. d (τ = t0, E = 80, fit 20) at t0 + 1h·log2(80/25) =
    // t0 + 6 041 058.86 ms, rounded up: 01:40:41.059. In order of time: x, then d. Engagements
    // are computed with the spec's formula (not exact).
    let cx = crossing(T0 + H, H, 0.0, 64.0, 45.0);
    assert_eq!(cx, T0 + H + 1_829_329);
    let cd = crossing(T0, H, 20.0, 80.0, 45.0);
    assert_eq!(cd, T0 + 6_041_059);
    let mut expected = crossing_transitions();
    expected.push(tr(
        DQ,
        "x",
        2,
        "2026-12-01T01:30:29.329Z",
        45.0,
        45.0,
        Value::Null,
        bd(0.0, 0.0, 64.0 * decay(cx - (T0 + H), H), json!({}), &[]),
    ));
    expected.push(tr(
        DQ,
        "d",
        4,
        "2026-12-01T01:40:41.059Z",
        45.0,
        45.0,
        Value::Null,
        bd(20.0, 0.0, 80.0 * decay(cd - T0, H), json!({}), &["senior"]),
    ));
    assert_transitions(&r, &expected);
    // At t0+3h: d = 20 + 80/8 = 30, x = 64/4 = 16; average 23.
    let s = &r.summary;
    assert_eq!((s.events, s.leads, s.qualified, s.transitions), (4, 2, 0, 6));
    assert_eq!(s.average_score, 23.0);
    assert_eq!(s.at.as_deref(), Some("2026-12-01T03:00:00.000Z"));
}

// ---------------------------------------------------------------------------------------------
// 7. A negative score wearing off into qualification.

#[test]
fn negative_engagement_wears_off_into_qualification() {
    let model_src = r#"
name = "golden"
version = "v1"
[score]
qualify_at = 60.0
disqualify_below = 50.0
half_life = "1h"
[[rule]]
id = "unsubscribe"
event = "unsubscribe"
points = -40.0
[[rule]]
id = "demo"
event = "demo_request"
points = 64.0
[[fit]]
id = "company_size"
attribute = "employees"
between = [100, 10000]
points = 70.0
"#;
    let events = [
        // n: fit 70 >= 60: qualified at t0.
        r#"{"lead_id":"n","type":"profile_update","timestamp":"2026-12-01T00:00:00Z","event_id":"n1","properties":{"employees":500}}"#,
        // n: E = -40; score 30 < 50: disqualified at t0.
        r#"{"lead_id":"n","type":"unsubscribe","timestamp":"2026-12-01T00:00:00Z","event_id":"n2"}"#,
        // M: the same, so both cross at the same time.
        r#"{"lead_id":"M","type":"profile_update","timestamp":"2026-12-01T00:00:00Z","event_id":"m1","properties":{"employees":500}}"#,
        r#"{"lead_id":"M","type":"unsubscribe","timestamp":"2026-12-01T00:00:00Z","event_id":"m2"}"#,
        // 70 - 40·2^(-dt/1h) = 60 at 2^(-dt/1h) = 1/4: dt = 2h exactly (log2(4) = 2): both
        // qualify at t0+2h with score 60, engagement -40·0.25 = -10. The event at exactly t0+2h
        // moves the watermark to that time, so they come out before it; same time: by lead id,
        // bytewise, "M" (0x4D) before "n" (0x6E), although n was set up first.
        r#"{"lead_id":"y","type":"demo_request","timestamp":"2026-12-01T02:00:00Z","event_id":"y1"}"#,
    ];
    assert_eq!(crossing(T0, H, 70.0, -40.0, 60.0), T0 + 2 * H);
    let r = run(model_src, &events, None);
    let size = &["company_size"];
    assert_transitions(
        &r,
        &[
            tr(
                Q,
                "n",
                1,
                "2026-12-01T00:00:00.000Z",
                70.0,
                60.0,
                trig(Some("n1"), "profile_update"),
                bd(70.0, 0.0, 0.0, json!({}), size),
            ),
            tr(
                DQ,
                "n",
                2,
                "2026-12-01T00:00:00.000Z",
                30.0,
                50.0,
                trig(Some("n2"), "unsubscribe"),
                bd(70.0, 0.0, -40.0, json!({}), size),
            ),
            tr(
                Q,
                "M",
                1,
                "2026-12-01T00:00:00.000Z",
                70.0,
                60.0,
                trig(Some("m1"), "profile_update"),
                bd(70.0, 0.0, 0.0, json!({}), size),
            ),
            tr(
                DQ,
                "M",
                2,
                "2026-12-01T00:00:00.000Z",
                30.0,
                50.0,
                trig(Some("m2"), "unsubscribe"),
                bd(70.0, 0.0, -40.0, json!({}), size),
            ),
            tr(Q, "M", 3, "2026-12-01T02:00:00.000Z", 60.0, 60.0, Value::Null, bd(70.0, 0.0, -10.0, json!({}), size)),
            tr(Q, "n", 3, "2026-12-01T02:00:00.000Z", 60.0, 60.0, Value::Null, bd(70.0, 0.0, -10.0, json!({}), size)),
            // y: E = 64, no fit: qualified at t0+2h.
            tr(
                Q,
                "y",
                1,
                "2026-12-01T02:00:00.000Z",
                64.0,
                60.0,
                trig(Some("y1"), "demo_request"),
                bd(0.0, 0.0, 64.0, json!({}), &[]),
            ),
        ],
    );
    // At t0+2h: n = M = 60, y = 64; average 184 / 3.
    let s = &r.summary;
    assert_eq!((s.events, s.leads, s.qualified, s.transitions), (5, 3, 3, 7));
    assert_eq!(s.average_score, 184.0 / 3.0);
}

// ---------------------------------------------------------------------------------------------
// 8. forget_after.

#[test]
fn forgotten_leads_are_dropped_and_come_back_afresh() {
    let model_src = r#"
name = "golden"
version = "v1"
[score]
qualify_at = 10.0
half_life = "1h"
forget_after = "2h"
[[rule]]
id = "demo"
event = "demo_request"
points = 16.0
decays = false
"#;
    let events = [
        // f: fixed 16 >= 10: qualified at t0 (f:golden:1).
        r#"{"lead_id":"f","type":"demo_request","timestamp":"2026-12-01T00:00:00Z","event_id":"f1"}"#,
        // g: a type no rule scores: tracked, score 0.
        r#"{"lead_id":"g","type":"login","timestamp":"2026-12-01T01:00:00Z","event_id":"g1"}"#,
        // Watermark t0+2h: exactly 2h past f's τ, not more: f stays.
        r#"{"lead_id":"g","type":"login","timestamp":"2026-12-01T02:00:00Z","event_id":"g2"}"#,
        // Watermark t0+2h+1ms: more than 2h past f's τ: f is dropped.
        r#"{"lead_id":"g","type":"login","timestamp":"2026-12-01T02:00:00.001Z","event_id":"g3"}"#,
        // f comes back: a new lead, 16 (not 32), ids restart at 1, and even the event id it had
        // is forgotten (the dedup window is 1d: the old lead would have called it a duplicate).
        r#"{"lead_id":"f","type":"demo_request","timestamp":"2026-12-01T03:00:00Z","event_id":"f1"}"#,
    ];
    let f1 =
        |at: &str| tr(Q, "f", 1, at, 16.0, 10.0, trig(Some("f1"), "demo_request"), bd(0.0, 16.0, 0.0, json!({}), &[]));

    // Up to g2 (watermark t0+2h): f (16) and g (0): 2 leads, average 8.
    let r = run(model_src, &events[..3], None);
    assert_eq!((r.summary.leads, r.summary.qualified), (2, 1));
    assert_eq!(r.summary.average_score, 8.0);
    // Up to g3 (watermark t0+2h+1ms): f is gone; g alone, score 0.
    let r = run(model_src, &events[..4], None);
    assert_eq!((r.summary.leads, r.summary.qualified), (1, 0));
    assert_eq!(r.summary.average_score, 0.0);
    assert_eq!(r.summary.at.as_deref(), Some("2026-12-01T02:00:00.001Z"));

    let r = run(model_src, &events, None);
    assert_transitions(&r, &[f1("2026-12-01T00:00:00.000Z"), f1("2026-12-01T03:00:00.000Z")]);
    let s = &r.summary;
    assert_eq!((s.events, s.leads, s.qualified, s.transitions), (5, 2, 1, 2));
    assert_eq!(rejected(s, "duplicate"), 0);
    assert_eq!(s.average_score, 8.0);

    // --until t0+5h: g (τ = t0+2h+1ms) is 2h59m59.999s old: gone; f (τ = t0+3h) exactly 2h: stays.
    let r = run(model_src, &events, Some(T0 + 5 * H));
    assert_eq!((r.summary.leads, r.summary.qualified), (1, 1));
    assert_eq!(r.summary.average_score, 16.0);
    // --until t0+5h+1ms: f goes too; no leads, average 0.
    let r = run(model_src, &events, Some(T0 + 5 * H + 1));
    assert_eq!((r.summary.leads, r.summary.qualified, r.summary.transitions), (0, 0, 2));
    assert_eq!(r.summary.average_score, 0.0);
    assert_eq!(r.summary.at.as_deref(), Some("2026-12-01T05:00:00.001Z"));
}

// ---------------------------------------------------------------------------------------------
// 9. Dedup.

#[test]
fn duplicates_inside_the_window_change_nothing() {
    // Event type `tK` scores 2^(K-1) fixed points, so a lead's final score is the sum of the
    // powers of two of exactly the events that were accepted.
    let mut model_src = String::from(
        r#"
name = "golden"
version = "v1"
[score]
qualify_at = 1000.0
half_life = "1h"
dedup_window = "1h"
"#,
    );
    for k in 1..=7 {
        let points = f64::from(1u32 << (k - 1));
        model_src += &format!("[[rule]]\nid = \"r{k}\"\nevent = \"t{k}\"\npoints = {points:?}\ndecays = false\n");
    }
    let events = [
        // 1: a = 1; e-1 remembered with τ = t0.
        r#"{"lead_id":"a","type":"t1","timestamp":"2026-12-01T00:00:00Z","event_id":"e-1"}"#,
        // 2: duplicate (t0 >= τ - 1h); only the event id counts, not the type.
        r#"{"lead_id":"a","type":"t2","timestamp":"2026-12-01T00:00:00Z","event_id":"e-1"}"#,
        // 3: a += 4; τ = t0+1h; e-2 remembered with t0+1h.
        r#"{"lead_id":"a","type":"t3","timestamp":"2026-12-01T01:00:00Z","event_id":"e-2"}"#,
        // 4: e-1 at t0 >= τ - 1h = t0 ("no older than"): duplicate, whatever its own timestamp.
        r#"{"lead_id":"a","type":"t4","timestamp":"2026-12-01T00:10:00Z","event_id":"e-1"}"#,
        // 5: a += 16; τ = t0+1h+1ms.
        r#"{"lead_id":"a","type":"t5","timestamp":"2026-12-01T01:00:00.001Z","event_id":"e-3"}"#,
        // 6: e-1 at t0 < τ - 1h = t0+1ms: outside the window, accepted again (late, fixed): a += 32.
        r#"{"lead_id":"a","type":"t6","timestamp":"2026-12-01T00:00:00Z","event_id":"e-1"}"#,
        // 7: e-2 at t0+1h >= τ - 1h = t0+1ms, τ as before this event: duplicate (the check comes
        // before the clock moves: at t0+2h+1ms it would be outside). It moves no watermark.
        r#"{"lead_id":"a","type":"t7","timestamp":"2026-12-01T02:00:00.001Z","event_id":"e-2"}"#,
        // Another lead may use the same event id: b = 1.
        r#"{"lead_id":"b","type":"t1","timestamp":"2026-12-01T00:00:00Z","event_id":"e-1"}"#,
        // Events without an id (absent or null) are never duplicates: b += 2, b += 4.
        r#"{"lead_id":"b","type":"t2","timestamp":"2026-12-01T00:00:00Z"}"#,
        r#"{"lead_id":"b","type":"t3","timestamp":"2026-12-01T00:00:00Z","event_id":null}"#,
    ];
    let r = run(&model_src, &events, None);
    assert_transitions(&r, &[]);
    let s = &r.summary;
    assert_eq!((s.events, s.leads, s.transitions), (7, 2, 0));
    assert_eq!(rejected(s, "duplicate"), 3);
    assert_eq!(s.rejected.values().sum::<u64>(), 3, "{:?}", s.rejected);
    // a = 1 + 4 + 16 + 32 = 53 (events 1, 3, 5, 6), b = 1 + 2 + 4 = 7: average 30.
    assert_eq!(s.average_score, 30.0);
    assert_eq!(s.at.as_deref(), Some("2026-12-01T01:00:00.001Z"));
}

// ---------------------------------------------------------------------------------------------
// 10. Fit rules and profile_update.

#[test]
fn profile_updates_merge_attributes_and_reevaluate_fit_rules() {
    let model_src = r#"
name = "golden"
version = "v1"
[score]
qualify_at = 50.0
disqualify_below = 30.0
half_life = "1h"
[[rule]]
id = "form_fill"
event = "profile_update"
when = { "properties.source" = "form" }
points = 4.0
[[rule]]
id = "visit"
event = "website_visit"
points = 64.0
[[fit]]
id = "senior"
attribute = "job_title"
matches = '(?i)\b(vp|head|director)\b'
points = 30.0
[[fit]]
id = "big_company"
attribute = "employees"
between = [200, 5000]
points = 20.0
[[fit]]
id = "has_phone"
attribute = "phone"
exists = true
points = 5.0
[[fit]]
id = "anonymous"
attribute = "email"
exists = false
points = -10.0
"#;
    let events = [
        // fit: senior 30 + big_company 20 (email present: anonymous fails) = 50; the update also
        // matches form_fill (source = form): E = 4. Score 54 >= 50: qualified at t0.
        r#"{"lead_id":"p","type":"profile_update","timestamp":"2026-12-01T00:00:00Z","event_id":"p1","properties":{"job_title":"VP Marketing","employees":1000,"email":"p@example.com","source":"form"}}"#,
        // job_title removed (null), phone added, employees and email kept: fit = 20 + 5 = 25;
        // E = 4·0.5 = 2 (no source: form_fill does not match). Score 27 < 30: disqualified.
        r#"{"lead_id":"p","type":"profile_update","timestamp":"2026-12-01T01:00:00Z","event_id":"p2","properties":{"job_title":null,"phone":"+1 555 0100"}}"#,
        // senior again; employees now a string: `between` holds on numbers only. fit = 30 + 5 = 35;
        // E = 1; score 36 < 50: nothing.
        r#"{"lead_id":"p","type":"profile_update","timestamp":"2026-12-01T02:00:00Z","event_id":"p3","properties":{"job_title":"Head of Sales","employees":"1000"}}"#,
        // employees 250: fit = 30 + 20 + 5 = 55; E = 0.5; score 55.5 >= 50: qualified.
        r#"{"lead_id":"p","type":"profile_update","timestamp":"2026-12-01T03:00:00Z","event_id":"p4","properties":{"employees":250}}"#,
        // A lead with no profile: `exists = false` holds on the absent email: fit -10; E = 64;
        // score 54 >= 50: qualified.
        r#"{"lead_id":"anon","type":"website_visit","timestamp":"2026-12-01T03:00:00Z","event_id":"w1"}"#,
    ];
    let r = run(model_src, &events, None);
    let pu = |id: &str| trig(Some(id), "profile_update");
    assert_transitions(
        &r,
        &[
            tr(
                Q,
                "p",
                1,
                "2026-12-01T00:00:00.000Z",
                54.0,
                50.0,
                pu("p1"),
                bd(50.0, 0.0, 4.0, json!({}), &["senior", "big_company"]),
            ),
            tr(
                DQ,
                "p",
                2,
                "2026-12-01T01:00:00.000Z",
                27.0,
                30.0,
                pu("p2"),
                bd(25.0, 0.0, 2.0, json!({}), &["big_company", "has_phone"]),
            ),
            tr(
                Q,
                "p",
                3,
                "2026-12-01T03:00:00.000Z",
                55.5,
                50.0,
                pu("p4"),
                bd(55.0, 0.0, 0.5, json!({}), &["senior", "big_company", "has_phone"]),
            ),
            tr(
                Q,
                "anon",
                1,
                "2026-12-01T03:00:00.000Z",
                54.0,
                50.0,
                trig(Some("w1"), "website_visit"),
                bd(-10.0, 0.0, 64.0, json!({}), &["anonymous"]),
            ),
        ],
    );
    // At t0+3h: p = 55.5, anon = 54; average 54.75.
    let s = &r.summary;
    assert_eq!((s.events, s.leads, s.qualified, s.transitions), (5, 2, 2, 4));
    assert_eq!(s.average_score, 54.75);
}

// ---------------------------------------------------------------------------------------------
// 11. Transition ids and the output format.

#[test]
fn transition_ids_count_per_lead_and_the_record_has_the_spec_fields_in_order() {
    // disqualify_below defaults to qualify_at.
    let model_src = r#"
name = "golden"
version = "v1"
[score]
qualify_at = 10.0
half_life = "1h"
[group.web]
cap = 50.0
[[rule]]
id = "click"
event = "click"
group = "web"
points = 4.0
[[rule]]
id = "up"
event = "up"
points = 20.0
decays = false
[[rule]]
id = "down"
event = "down"
points = -20.0
decays = false
[[fit]]
id = "titled"
attribute = "job_title"
exists = true
points = 5.0
"#;
    let events = [
        // a: fit 5; web 4; fixed 20: score 29 >= 10: a:1 at t0.
        r#"{"lead_id":"a","type":"profile_update","timestamp":"2026-12-01T00:00:00Z","event_id":"a0","properties":{"job_title":"CEO"}}"#,
        r#"{"lead_id":"a","type":"click","timestamp":"2026-12-01T00:00:00Z","event_id":"a1"}"#,
        r#"{"lead_id":"a","type":"up","timestamp":"2026-12-01T00:00:00Z","event_id":"a2"}"#,
        // An integer lead id is its decimal string; no event_id: the trigger's is null. 42:1.
        r#"{"lead_id":42,"type":"up","timestamp":1796083200000}"#,
        // 42: 0 < 10: 42:2 at 02:00:01.2349+02:00 = 00:00:01.234Z (finer digits truncated).
        r#"{"lead_id":42,"type":"down","timestamp":"2026-12-01T02:00:01.2349+02:00","event_id":"b1"}"#,
        // a: web 4·0.5 = 2, fixed 0: score 5 + 2 = 7 < 10: a:2 at t0+1h.
        r#"{"lead_id":"a","type":"down","timestamp":"2026-12-01T01:00:00Z","event_id":"a3"}"#,
        // a: web 1, fixed 20: score 26: a:3 at t0+2h.
        r#"{"lead_id":"a","type":"up","timestamp":"2026-12-01T02:00:00Z","event_id":"a4"}"#,
    ];
    let r = run(model_src, &events, None);
    let ids: Vec<&str> = r.out.iter().map(|t| t["id"].as_str().expect("id")).collect();
    assert_eq!(ids, ["a:golden:1", "42:golden:1", "42:golden:2", "a:golden:2", "a:golden:3"]);
    // The whole first record, byte for byte, in the style of the spec's example.
    assert_eq!(
        r.lines[0],
        r#"{"id":"a:golden:1","type":"lead_qualified","lead_id":"a","model":"golden","model_version":"v1","score":29.0,"threshold":10.0,"at":"2026-12-01T00:00:00.000Z","trigger":{"event_id":"a2","type":"up"},"breakdown":{"fit":5.0,"fixed":20.0,"engagement":4.0,"groups":{"web":4.0},"fit_rules":["titled"],"rules":["up"]}}"#
    );
    let titled = &["titled"];
    assert_transitions(
        &r,
        &[
            tr(
                Q,
                "a",
                1,
                "2026-12-01T00:00:00.000Z",
                29.0,
                10.0,
                trig(Some("a2"), "up"),
                bd(5.0, 20.0, 4.0, json!({"web": 4.0}), titled),
            ),
            tr(
                Q,
                "42",
                1,
                "2026-12-01T00:00:00.000Z",
                20.0,
                10.0,
                trig(None, "up"),
                bd(0.0, 20.0, 0.0, json!({"web": 0.0}), &[]),
            ),
            tr(
                DQ,
                "42",
                2,
                "2026-12-01T00:00:01.234Z",
                0.0,
                10.0,
                trig(Some("b1"), "down"),
                bd(0.0, 0.0, 0.0, json!({"web": 0.0}), &[]),
            ),
            tr(
                DQ,
                "a",
                2,
                "2026-12-01T01:00:00.000Z",
                7.0,
                10.0,
                trig(Some("a3"), "down"),
                bd(5.0, 0.0, 2.0, json!({"web": 2.0}), titled),
            ),
            tr(
                Q,
                "a",
                3,
                "2026-12-01T02:00:00.000Z",
                26.0,
                10.0,
                trig(Some("a4"), "up"),
                bd(5.0, 20.0, 1.0, json!({"web": 1.0}), titled),
            ),
        ],
    );
    // At t0+2h: a = 26, 42 = 0; average 13.
    let s = &r.summary;
    assert_eq!((s.events, s.leads, s.qualified, s.transitions), (7, 2, 1, 5));
    assert_eq!(s.average_score, 13.0);
}

// ---------------------------------------------------------------------------------------------
// 12. Bad lines.

#[test]
fn bad_and_blank_lines_are_counted_and_skipped() {
    let model_src = r#"
name = "golden"
version = "v1"
[score]
qualify_at = 50.0
half_life = "1h"
[[rule]]
id = "visit"
event = "visit"
points = 30.0
decays = false
"#;
    let ts = r#""timestamp":"2026-12-01T00:00:00Z""#;
    let too_large =
        format!(r#"{{"lead_id":"a","type":"visit",{ts},"properties":{{"blob":"{}"}}}}"#, "x".repeat(70_000));
    let long_id = format!(r#"{{"lead_id":"{}","type":"visit",{ts}}}"#, "x".repeat(257));
    let lines: Vec<(Vec<u8>, &str)> = vec![
        (b"".to_vec(), "blank"),
        (format!(r#"{{"lead_id":"a","type":"visit",{ts}"#).into_bytes(), "invalid_json"),
        (b"not json at all".to_vec(), "invalid_json"),
        (br#"{"lead_id":"a","type":"visit","timestamp":NaN}"#.to_vec(), "invalid_json"),
        (b"   ".to_vec(), "blank"),
        (br#"["lead_id","a"]"#.to_vec(), "not_an_object"),
        (br#""just a string""#.to_vec(), "not_an_object"),
        // Valid, with null optional fields and an unknown field: a = 30.
        (format!(r#"{{"lead_id":"a","type":"visit",{ts},"event_id":null,"properties":null,"extra":{{"x":[1,2]}}}}"#).into_bytes(), "ok"),
        (format!(r#"{{"type":"visit",{ts}}}"#).into_bytes(), "missing_field"),
        (br#"{"lead_id":"a","type":"visit","timestamp":null}"#.to_vec(), "missing_field"),
        // Missing timestamp wins over the wrongly typed lead_id.
        (br#"{"lead_id":true,"type":"visit"}"#.to_vec(), "missing_field"),
        (b"\t".to_vec(), "blank"),
        (format!(r#"{{"lead_id":"a","type":"",{ts}}}"#).into_bytes(), "invalid_field"),
        (format!(r#"{{"lead_id":"a","type":"visit",{ts},"event_id":7}}"#).into_bytes(), "invalid_field"),
        (format!(r#"{{"lead_id":"a","type":"visit",{ts},"properties":[1]}}"#).into_bytes(), "invalid_field"),
        (long_id.into_bytes(), "invalid_field"),
        (br#"{"lead_id":"a","type":"visit","timestamp":"2026-02-30T00:00:00Z"}"#.to_vec(), "invalid_timestamp"),
        (br#"{"lead_id":"a","type":"visit","timestamp":-1}"#.to_vec(), "invalid_timestamp"),
        (b"{\"lead_id\":\"\xff\",\"type\":\"visit\",\"timestamp\":0}".to_vec(), "invalid_utf8"),
        (too_large.into_bytes(), "too_large"),
        (b"\r".to_vec(), "blank"),
        // Valid, epoch milliseconds, CRLF line end: a = 60 >= 50: qualified at t0.
        (br#"{"lead_id":"a","type":"visit","timestamp":1796083200000,"event_id":"v2"}"#.iter().chain(b"\r").copied().collect(), "ok"),
        (br#"{"lead_id":"a","type":"visit","timestamp":1796083200000,"event_id":"v2"}"#.to_vec(), "duplicate"),
    ];
    let mut input = Vec::new();
    for (l, _) in &lines {
        input.extend_from_slice(l);
        input.push(b'\n');
    }
    let r = run_bytes(model_src, &input, None);
    assert_transitions(
        &r,
        &[tr(
            Q,
            "a",
            1,
            "2026-12-01T00:00:00.000Z",
            60.0,
            50.0,
            trig(Some("v2"), "visit"),
            bd(0.0, 60.0, 0.0, json!({}), &[]),
        )],
    );
    let s = &r.summary;
    let mut failures = Vec::new();
    for reason in [
        "too_large",
        "invalid_utf8",
        "invalid_json",
        "not_an_object",
        "missing_field",
        "invalid_field",
        "invalid_timestamp",
        "future_timestamp",
        "duplicate",
    ] {
        let expected = lines.iter().filter(|(_, r)| *r == reason).count() as u64;
        if rejected(s, reason) != expected {
            failures.push(format!("{reason}: got {}, expected {expected}", rejected(s, reason)));
        }
    }
    assert!(failures.is_empty(), "rejected counts: {failures:?}; summary {:?}", s.rejected);
    assert_eq!(s.rejected.values().sum::<u64>(), 17);
    assert_eq!((s.events, s.leads, s.qualified, s.transitions), (2, 1, 1, 1));
    assert_eq!(s.average_score, 60.0);
}

// ---------------------------------------------------------------------------------------------
// The binary, end to end.

#[test]
fn binary_replay_and_check() {
    use std::process::Command;
    let bin = env!("CARGO_BIN_EXE_leadscore");
    let dir = tempfile::tempdir().expect("tempdir");
    let model_path = dir.path().join("model.toml");
    let events_path = dir.path().join("events.jsonl");
    let summary_path = dir.path().join("summary.json");
    std::fs::write(&model_path, CROSSING_MODEL).unwrap();
    std::fs::write(&events_path, CROSSING_EVENTS.join("\n") + "\n").unwrap();

    let out = Command::new(bin)
        .arg("replay")
        .arg("--model")
        .arg(&model_path)
        .args(["--until", "2026-12-01T03:00:00Z"])
        .arg("--summary")
        .arg(&summary_path)
        .arg(&events_path)
        .output()
        .expect("run leadscore replay");
    assert!(out.status.success(), "replay failed: {}", String::from_utf8_lossy(&out.stderr));
    // Same transitions, byte for byte, as the library replay of the same input (checked against
    // the hand-derived values in `decay_driven_disqualifications_fire_at_the_end_with_until`).
    let lib = run(CROSSING_MODEL, &CROSSING_EVENTS, Some(T0 + 3 * H));
    let stdout = String::from_utf8(out.stdout).expect("UTF-8");
    assert_eq!(stdout.lines().collect::<Vec<_>>(), lib.lines);
    assert_eq!(lib.lines.len(), 6);
    let summary = to_value(&parse(&std::fs::read_to_string(&summary_path).expect("summary written")));
    assert_eq!(summary["events"], json!(4.0));
    assert_eq!(summary["leads"], json!(2.0));
    assert_eq!(summary["qualified"], json!(0.0));
    assert_eq!(summary["transitions"], json!(6.0));
    assert_eq!(summary["average_score"], json!(23.0));
    assert_eq!(summary["at"], json!("2026-12-01T03:00:00.000Z"));
    assert!(summary["rejected"].is_object(), "rejected is an object of reason to count: {summary}");

    // `check` on a good model: success.
    let ok = Command::new(bin).arg("check").arg("--model").arg(&model_path).output().expect("run check");
    assert!(ok.status.success(), "check of a valid model failed: {}", String::from_utf8_lossy(&ok.stdout));

    // `check` on a bad model: every error, each with its line, on stdout; non-zero exit.
    let bad = r#"name = "bad"
version = "1"
[score]
qualify_at = 40.0
disqualify_below = 50.0
half_life = "1h"
colour = "red"

[[rule]]
id = "r1"
event = "visit"
points = 5.0
group = "nope"

[[fit]]
id = "r1"
attribute = "title"
matches = "(unclosed"
points = 1.0
"#;
    // Line 5: disqualify_below > qualify_at; 7: unknown key; 13: unknown group;
    // 16: duplicate id (ids are unique across rules and fit rules); 18: bad regex.
    let bad_path = dir.path().join("bad.toml");
    std::fs::write(&bad_path, bad).unwrap();
    let out = Command::new(bin).arg("check").arg("--model").arg(&bad_path).output().expect("run check");
    assert!(!out.status.success(), "check of an invalid model succeeded");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8");
    let prefix = format!("{}:", bad_path.display());
    let mut error_lines: Vec<usize> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|rest| {
            rest.split(':').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no line number in {rest:?}"))
        })
        .collect();
    error_lines.sort_unstable();
    error_lines.dedup();
    assert_eq!(error_lines, [5, 7, 13, 16, 18], "check output:\n{stdout}");
}

// ---------------------------------------------------------------------------------------------
// A decay-driven crossing within rounding of a whole millisecond.

#[test]
fn a_decay_driven_crossing_is_at_the_first_millisecond_the_score_has_reached_the_threshold() {
    // Found by an independent model of the spec: with τ near today's epoch milliseconds,
    // `ceil(τ + h·log2(E / (threshold - steady)))` rounds τ + x at the scale of τ and gives
    // .786, where the score is still above 45; the next event at .786 would qualify the lead
    // again at the same `at`. The crossing is .787: the first millisecond at which the score
    // has sunk to the threshold.
    let model_src = r#"
name = "golden"
version = "v1"
[score]
qualify_at = 45.0
half_life = "1s"
[[rule]]
id = "fx"
event = "go"
points = 7.5
decays = false
[[rule]]
id = "eng"
event = "go"
points = 42.01459875773209
"#;
    let (tau, e) = (1_701_394_443_622i64, 42.01459875773209);
    let score = |t: i64| 7.5 + e * decay(t - tau, 1000);
    assert!(score(tau + 164) > 45.0 && score(tau + 165) < 45.0, "the crossing is between .786 and .787");
    assert_eq!(crossing(tau, 1000, 7.5, e, 45.0), tau + 164, "the closed form in f64 is a millisecond early");
    let events = [
        r#"{"lead_id":"L","type":"go","timestamp":1701394443622}"#,
        r#"{"lead_id":"L","type":"noop","timestamp":1701394443786,"event_id":"n1"}"#,
    ];
    let r = run(model_src, &events, Some(tau + 10_000));
    assert_transitions(
        &r,
        &[
            tr(Q, "L", 1, "2023-12-01T01:34:03.622Z", 7.5 + e, 45.0, trig(None, "go"), bd(0.0, 7.5, e, json!({}), &[])),
            tr(
                DQ,
                "L",
                2,
                "2023-12-01T01:34:03.787Z",
                45.0,
                45.0,
                Value::Null,
                bd(0.0, 7.5, e * decay(165, 1000), json!({}), &[]),
            ),
        ],
    );
}
