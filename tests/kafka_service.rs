//! The service on a real Kafka broker (issue 3, "Tests (on the real broker)").
//!
//! Every test has its own topics and consumer group ([`common::unique`]), so they run in
//! parallel: `cargo test --test kafka_service -- --test-threads=2`. The broker is
//! `KAFKA_BOOTSTRAP`, else the repo's local Kafka (`scripts/kafka start`, shared between test
//! binaries).
//!
//! Event times are near the wall clock, because `run` decides decay-driven crossings and
//! `future_timestamp` by the wall clock. Where a test compares `run` with `replay`, the model's
//! half-life is 3650 days and it has no `forget_after`, so that over the seconds a test lasts no
//! score decays across a threshold and the two clocks (wall clock, watermark) give the same
//! transitions; `replay` is still given `--until` = the wall clock at comparison time so that a
//! crossing due right after an event (a score left exactly on a threshold) fires in both.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use leadscore::generate::{GenerateOptions, Generator};
use leadscore::model::Model;
use leadscore::replay::{replay, ReplayOptions, Summary};
use leadscore::time::format_rfc3339_ms;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Helpers

/// `count` generated JSON lines.
fn generate_lines(opts: GenerateOptions, count: usize) -> Vec<Vec<u8>> {
    let mut gen = Generator::new(opts);
    (0..count)
        .map(|_| {
            let mut buf = Vec::new();
            gen.next_record(&mut buf);
            buf
        })
        .collect()
}

/// Realistic traffic near now: no malformed records (the dead-letter test covers those), a few
/// duplicates and late events, some events without `event_id`.
fn near_now(seed: u64, leads: u64, start_ms: i64, rate_per_s: f64) -> GenerateOptions {
    GenerateOptions {
        leads,
        seed,
        start_ms,
        rate_per_s,
        skew: 1.2,
        malformed_share: 0.0,
        duplicate_share: 0.01,
        late_share: 0.01,
        event_id_share: 0.9,
        round_robin: false,
    }
}

/// `leadscore replay` of `lines` (in order) with `--until until_ms`: the transition lines and the
/// summary.
fn replay_lines<'a>(
    model: &Arc<Model>,
    lines: impl IntoIterator<Item = &'a Vec<u8>>,
    until_ms: i64,
) -> (Vec<String>, Summary) {
    let mut input = Vec::new();
    for l in lines {
        input.extend_from_slice(l);
        input.push(b'\n');
    }
    let mut out = Vec::new();
    let opts = ReplayOptions { until_ms: Some(until_ms), ..ReplayOptions::default() };
    let summary = replay(Arc::clone(model), &mut &input[..], &mut out, opts).expect("replay");
    let text = String::from_utf8(out).expect("UTF-8 replay output");
    (text.lines().map(str::to_owned).collect(), summary)
}

/// Multiset difference `a - b`, for readable failure messages.
fn missing_from<'a>(a: &'a [String], b: &[String]) -> Vec<&'a str> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in b {
        *counts.entry(s.as_str()).or_default() += 1;
    }
    a.iter()
        .filter(|s| match counts.get_mut(s.as_str()) {
            Some(c) if *c > 0 => {
                *c -= 1;
                false
            }
            _ => true,
        })
        .map(String::as_str)
        .collect()
}

fn preview(items: &[&str]) -> String {
    items.iter().take(5).map(|s| format!("\n  {s}")).collect()
}

/// Checks the section-5 envelope of transition records read from the output topic: key = lead
/// id; `id` = `<lead>:<model>:<n>` with `n` counting 1, 2, ... per lead in order of `at`, types
/// alternating from `lead_qualified`; the breakdown adds up to the score.
fn check_envelopes(records: &[Received], model: &Model) {
    let mut by_lead: BTreeMap<String, Vec<(u64, i64, Value)>> = BTreeMap::new();
    for r in records {
        let v = r.json();
        let lead = v["lead_id"].as_str().expect("lead_id").to_owned();
        assert_eq!(r.key_str(), Some(lead.as_str()), "record key must be the lead id: {}", r.text());
        assert_eq!(v["model"], model.name.as_str());
        assert_eq!(v["model_version"], model.version.as_str());
        let id = v["id"].as_str().expect("id");
        let prefix = format!("{lead}:{}:", model.name);
        let n: u64 = id.strip_prefix(&prefix).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("bad id {id}"));
        let at = leadscore::time::parse_rfc3339_ms(v["at"].as_str().expect("at")).expect("RFC 3339 at");
        let b = &v["breakdown"];
        let parts = b["fit"].as_f64().unwrap() + b["fixed"].as_f64().unwrap() + b["engagement"].as_f64().unwrap();
        let score = v["score"].as_f64().expect("score");
        assert!((parts - score).abs() <= 1e-9 * score.abs().max(1.0), "breakdown does not add up: {}", r.text());
        by_lead.entry(lead).or_default().push((n, at, v));
    }
    for (lead, mut ts) in by_lead {
        ts.sort_by_key(|(n, _, _)| *n);
        for (i, (n, at, v)) in ts.iter().enumerate() {
            assert_eq!(*n, i as u64 + 1, "lead {lead}: transition numbers are not 1..=k");
            let kind = if n % 2 == 1 { "lead_qualified" } else { "lead_disqualified" };
            assert_eq!(v["type"], kind, "lead {lead}: transition {n}");
            if i > 0 {
                assert!(*at >= ts[i - 1].1, "lead {lead}: transitions go back in time");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. End to end equals replay

/// Events produced to a 3-partition input give on the output topic exactly the transition
/// records (byte for byte: ids, scores, `at`, triggers, breakdowns) that `replay` gives for the
/// same lines, and the service's counters agree with replay's summary.
#[test]
fn end_to_end_equals_replay() {
    let model_text = long_half_life_model_text();
    let mut run = start_service(ServiceSpec { model_toml: &model_text, input_partitions: 3, tweak: &|_| {} });
    run.wait_ready(3, Duration::from_secs(30));

    let lines = generate_lines(near_now(7, 300, now_ms() - 10_000, 10_000.0), 4000);
    produce_lines(&run.input, &lines, lead_key);
    let (expected, summary) = replay_lines(&run.model, &lines, now_ms());
    assert!(expected.len() >= 20, "the input should cause transitions; got {}", expected.len());
    assert!(summary.rejected["duplicate"] > 0, "the input should hold duplicates: {summary:?}");

    let mut out = Reader::new(&run.output);
    let complete = out.poll_until(Duration::from_secs(60), |r| r.len() >= expected.len());
    let extra = out.drain_for(Duration::from_millis(500));
    let got: Vec<String> = out.records.iter().map(|r| r.text().to_owned()).collect();
    let (missing, unexpected) = (missing_from(&expected, &got), missing_from(&got, &expected));
    assert!(
        complete && extra == 0 && missing.is_empty() && unexpected.is_empty(),
        "output differs from replay: {} expected, {} read; missing {}:{}\nunexpected {}:{}",
        expected.len(),
        got.len(),
        missing.len(),
        preview(&missing),
        unexpected.len(),
        preview(&unexpected)
    );
    check_envelopes(&out.records, &run.model);
    let decay_driven = out.records.iter().filter(|r| r.json()["trigger"].is_null()).count();
    let without_event_id = out.records.iter().filter(|r| r.json()["trigger"]["event_id"].is_null()).count();
    eprintln!(
        "end_to_end: {} transitions ({decay_driven} decay-driven, {without_event_id} without event id)",
        got.len()
    );

    // The service's view agrees with replay's summary.
    assert!(wait_until(Duration::from_secs(10), || {
        sum_of(&run.metrics(), "leadscore_events_total") == summary.events as f64
    }));
    let m = run.metrics();
    assert_eq!(
        sample(&m, "leadscore_events_rejected_total", &[("reason", "duplicate")]),
        summary.rejected["duplicate"] as f64
    );
    assert_eq!(sample(&m, "leadscore_tracked_leads", &[]), summary.leads as f64);
    assert_eq!(sample(&m, "leadscore_qualified_leads", &[]), summary.qualified as f64);
    assert_eq!(sum_of(&m, "leadscore_transitions_total"), summary.transitions as f64);
    let avg = sample(&m, "leadscore_average_score", &[]);
    assert!((avg - summary.average_score).abs() <= 1e-6 * summary.average_score.abs().max(1.0), "{avg} vs {summary:?}");
    // Scored matches by rule id, as replay counts them (published every 100 ms: waited for).
    assert!(summary.rule_matches.values().any(|&n| n > 0), "{summary:?}");
    assert!(wait_until(Duration::from_secs(10), || {
        let m = run.metrics();
        summary
            .rule_matches
            .iter()
            .all(|(rule, &n)| sample(&m, "leadscore_rule_matches_total", &[("rule", rule)]) == n as f64)
    }));
    run.shutdown();
}

// ---------------------------------------------------------------------------------------------
// 2. Decay-driven disqualification on time

const DECAY_MODEL: &str = r#"
name = "decay"
version = "t2"

[score]
qualify_at = 10.0
disqualify_below = 5.0
half_life = "2s"

[[rule]]
id = "hit"
event = "hit"
points = 20.0
"#;

/// One event of 20 points at τ = now: `lead_qualified` at τ; then the score halves every 2 s and
/// reaches 5 = 20·2^(-2) at exactly τ + 2·h = τ + 4000 ms, when `lead_disqualified` must be
/// published with `trigger` null, `score` 5 and `at` = τ + 4000 ms, and no later than 2 s after
/// that (the issue asks for "at most a second late"; 2 s leaves room for a loaded 2-core machine;
/// on an idle machine it arrives within ~0.1 s, which the test prints).
#[test]
fn decay_driven_disqualification_on_time() {
    decay_driven_disqualification(100);
}

/// The same with `commit_interval_ms` = 30000 (allowed: 1..=60000). Crossings must still fire from
/// the wall clock within about a second: they have their own tick, independent of commits (a
/// regression test: they once fired only at commit ticks).
#[test]
fn decay_driven_disqualification_on_time_with_slow_commits() {
    decay_driven_disqualification(30_000);
}

fn decay_driven_disqualification(commit_interval_ms: u64) {
    let mut run = start_service(ServiceSpec {
        model_toml: DECAY_MODEL,
        input_partitions: 1,
        tweak: &|c| c.kafka.commit_interval_ms = commit_interval_ms,
    });
    run.wait_ready(1, Duration::from_secs(30));
    let mut out = Reader::new(&run.output);

    let tau = now_ms();
    let event = format!(r#"{{"lead_id":"decay-lead","type":"hit","timestamp":{tau},"event_id":"e-1"}}"#);
    produce(&run.input, &[Rec::new(Some("decay-lead"), event)]);
    let crossing = tau + 4000;
    // Until 3 s after the crossing time (the bound below is 2 s).
    let until = Duration::from_millis((crossing + 3000 - now_ms()).max(0) as u64);
    assert!(
        out.poll_until(until, |r| r.len() >= 2),
        "no lead_disqualified within 3 s of the crossing time; got {:?}",
        out.records.iter().map(Received::text).collect::<Vec<_>>()
    );
    assert_eq!(out.drain_for(Duration::from_millis(200)), 0, "more than two transitions");

    let q = out.records[0].json();
    assert_eq!(q["id"], "decay-lead:decay:1");
    assert_eq!(q["type"], "lead_qualified");
    assert_eq!(q["at"], format_rfc3339_ms(tau).as_str());
    assert_eq!(q["score"].as_f64(), Some(20.0));
    assert_eq!(q["threshold"].as_f64(), Some(10.0));
    assert_eq!(q["trigger"]["event_id"], "e-1");
    assert_eq!(q["trigger"]["type"], "hit");

    let d = out.records[1].json();
    assert_eq!(out.records[1].key_str(), Some("decay-lead"));
    assert_eq!(d["id"], "decay-lead:decay:2");
    assert_eq!(d["type"], "lead_disqualified");
    assert!(d["trigger"].is_null(), "{d}");
    assert_eq!(d["at"], format_rfc3339_ms(crossing).as_str(), "exact crossing time τ + 2·half_life");
    assert_eq!(d["score"].as_f64(), Some(5.0));
    assert_eq!(d["threshold"].as_f64(), Some(5.0));
    assert_eq!(d["breakdown"]["engagement"].as_f64(), Some(5.0));

    let late = out.records[1].received_ms - crossing;
    eprintln!("decay-driven disqualification read {late} ms after its crossing time");
    assert!(late >= 0, "published {} ms before the crossing time", -late);
    assert!(late <= 2000, "published {late} ms after the crossing time (bound 2000 ms)");

    let (status, body) = run.get("/leads/decay-lead");
    assert_eq!(status, 200, "{body}");
    let lead: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(lead["qualified"], false);
    assert!(lead["score"].as_f64().unwrap() < 5.0);
    run.shutdown();
}

/// A crossing that is already due when the event that sets it up is applied (a catch-up of old
/// records) fires right after that event, before the next record of the same poll batch is
/// checked: spec section 4, "right after the event that set it up if that time has already
/// passed". Both records are on the topic before the service starts, so they arrive together.
/// (A regression test: the next record's check once pre-empted the crossing, disqualifying at its
/// own time with itself as the trigger.)
#[test]
fn a_crossing_already_due_fires_before_the_next_record_of_the_batch() {
    let input = unique("in-old");
    create_topics(&[(input.as_str(), 1)]);
    let tau = now_ms() - 60_000;
    let hit = format!(r#"{{"lead_id":"old-lead","type":"hit","timestamp":{tau},"event_id":"e-1"}}"#);
    let later = tau + 30_000;
    let other = format!(r#"{{"lead_id":"old-lead","type":"page_view","timestamp":{later},"event_id":"e-2"}}"#);
    produce(&input, &[Rec::new(Some("old-lead"), hit), Rec::new(Some("old-lead"), other)]);
    let topic = input.clone();
    let mut run = start_service(ServiceSpec {
        model_toml: DECAY_MODEL,
        input_partitions: 0,
        tweak: &move |c| c.kafka.input_topics = vec![topic.clone()],
    });
    run.input = input;
    run.wait_ready(1, Duration::from_secs(30));
    let mut out = Reader::new(&run.output);
    assert!(out.poll_until(Duration::from_secs(20), |r| r.len() >= 2), "fewer than two transitions");
    assert_eq!(out.drain_for(Duration::from_millis(500)), 0, "more than two transitions");
    let q = out.records[0].json();
    assert_eq!(q["type"], "lead_qualified");
    assert_eq!(q["at"], format_rfc3339_ms(tau).as_str());
    let d = out.records[1].json();
    assert_eq!(d["type"], "lead_disqualified");
    assert_eq!(d["at"], format_rfc3339_ms(tau + 4000).as_str(), "the crossing, not the next record's time");
    assert!(d["trigger"].is_null(), "{d}");
    assert_eq!(d["score"].as_f64(), Some(5.0));
    run.shutdown();
}

// ---------------------------------------------------------------------------------------------
// 3. Dead letters

const HIT_MODEL: &str = r#"
name = "dlq"
version = "t3"

[score]
qualify_at = 10.0
half_life = "3650d"

[[rule]]
id = "hit"
event = "hit"
points = 20.0
"#;

/// One record per rejection reason, interleaved with valid events: each bad record is on the
/// dead-letter topic exactly once, bytes, key and timestamp unchanged, with the five headers of
/// spec section 2 (source offsets as delivered) and the producer's own headers after them; the
/// duplicate is counted but not dead-lettered; the counters agree; valid events after all of them
/// were processed.
#[test]
fn dead_letters() {
    let mut run = start_service(ServiceSpec {
        model_toml: HIT_MODEL,
        input_partitions: 1,
        tweak: &|c| c.input.max_event_bytes = 256,
    });
    run.wait_ready(1, Duration::from_secs(30));
    let t = now_ms() - 5_000;
    let valid = |lead: &str, ty: &str, id: &str, ts: i64| {
        format!(r#"{{"lead_id":"{lead}","type":"{ty}","timestamp":{ts},"event_id":"{id}"}}"#).into_bytes()
    };
    // (reason, payload). Every bad payload carries "SECRET", which no error message may quote.
    let bad: Vec<(&str, Vec<u8>)> = vec![
        (
            "too_large",
            format!(
                r#"{{"lead_id":"dl-big","type":"hit","timestamp":{t},"properties":{{"pad":"SECRET{}"}}}}"#,
                "x".repeat(300)
            )
            .into_bytes(),
        ),
        ("invalid_utf8", b"{\"lead_id\":\"SECRET\xff\xfe\",\"type\":\"hit\",\"timestamp\":1}".to_vec()),
        ("invalid_json", br#"{"lead_id":"SECRET","type": hit}"#.to_vec()),
        ("not_an_object", br#"["SECRET",1]"#.to_vec()),
        ("missing_field", format!(r#"{{"lead_id":"SECRET","timestamp":{t}}}"#).into_bytes()),
        ("invalid_field", format!(r#"{{"lead_id":"SECRET","type":42,"timestamp":{t}}}"#).into_bytes()),
        ("invalid_timestamp", br#"{"lead_id":"SECRET","type":"hit","timestamp":"SECRET-yesterday"}"#.to_vec()),
        (
            "future_timestamp",
            format!(r#"{{"lead_id":"SECRET","type":"hit","timestamp":{}}}"#, now_ms() + 3_600_000).into_bytes(),
        ),
    ];
    let first = valid("dl-a", "hit", "e-1", t);
    let mut records = vec![Rec::new(Some("dl-a"), first.clone()).at(t)];
    for (i, (reason, payload)) in bad.iter().enumerate() {
        let key = format!("bad-{reason}");
        let mut rec = Rec::new(Some(&key), payload.clone()).at(t + 10 + i as i64);
        if *reason == "invalid_json" {
            rec = rec.header("x-trace", b"trace-1");
        }
        records.push(rec);
        // A valid event of a type no rule scores after each bad record.
        records.push(Rec::new(Some("dl-v"), valid("dl-v", "noop", &format!("v-{i}"), t + 100 + i as i64)).at(t));
    }
    // The same event_id for the same lead again: a duplicate.
    records.push(Rec::new(Some("dl-a"), first.clone()).at(t));
    // After all of them: a scoring event (a transition), and one without `timestamp` (takes the
    // Kafka record's timestamp).
    records.push(Rec::new(Some("dl-c"), valid("dl-c", "hit", "e-3", t + 500)).at(t));
    let fallback_ts = t + 1234;
    records.push(Rec::new(Some("dl-c"), br#"{"lead_id":"dl-c","type":"noop"}"#.to_vec()).at(fallback_ts));
    let delivered = produce(&run.input, &records);

    let mut dlq = Reader::new(&run.dlq);
    let mut out = Reader::new(&run.output);
    assert!(
        out.poll_until(Duration::from_secs(30), |r| r.iter().any(|r| r.key_str() == Some("dl-c"))),
        "the valid event after the bad records was not processed: {:?}",
        out.records
    );
    assert!(dlq.poll_until(Duration::from_secs(30), |r| r.len() >= bad.len()), "dead letters: {:?}", dlq.records);
    dlq.drain_for(Duration::from_millis(300));
    out.drain_for(Duration::from_millis(100));
    assert_eq!(dlq.records.len(), bad.len(), "each bad record exactly once, the duplicate never: {:?}", dlq.records);
    let ids: BTreeSet<String> = out.records.iter().map(|r| r.json()["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, BTreeSet::from(["dl-a:dlq:1".to_owned(), "dl-c:dlq:1".to_owned()]));

    for (i, (reason, payload)) in bad.iter().enumerate() {
        let key = format!("bad-{reason}");
        let hits: Vec<&Received> = dlq.records.iter().filter(|r| r.key_str() == Some(key.as_str())).collect();
        assert_eq!(hits.len(), 1, "{reason}: dead letters {hits:?}");
        let d = hits[0];
        let src_index = 1 + 2 * i;
        let (partition, offset) = delivered[src_index];
        assert_eq!(&d.payload, payload, "{reason}: bytes changed");
        assert_eq!(d.timestamp_ms, Some(t + 10 + i as i64), "{reason}: record timestamp");
        assert_eq!(d.header("leadscore.error.reason"), [*reason]);
        let message = d.header("leadscore.error.message");
        assert_eq!(message.len(), 1, "{reason}");
        assert!(!message[0].is_empty() && !message[0].contains("SECRET"), "{reason}: message {:?}", message[0]);
        assert_eq!(d.header("leadscore.source.topic"), [run.input.as_str()], "{reason}");
        assert_eq!(d.header("leadscore.source.partition"), [partition.to_string().as_str()], "{reason}");
        assert_eq!(d.header("leadscore.source.offset"), [offset.to_string().as_str()], "{reason}");
        if *reason == "invalid_json" {
            assert_eq!(d.header("x-trace"), ["trace-1"], "the producer's headers travel along");
        }
    }
    assert!(dlq.records.iter().all(|r| r.payload != first), "the duplicate was dead-lettered");

    // Every record was processed (the last one too).
    let processed = || sample(&run.metrics(), "leadscore_event_processing_seconds_count", &[]);
    assert!(wait_until(Duration::from_secs(10), || processed() == records.len() as f64), "{}", processed());
    let m = run.metrics();
    for (reason, _) in &bad {
        assert_eq!(sample(&m, "leadscore_events_rejected_total", &[("reason", reason)]), 1.0, "{reason}");
    }
    assert_eq!(sample(&m, "leadscore_events_rejected_total", &[("reason", "duplicate")]), 1.0);
    assert_eq!(sample(&m, "leadscore_events_total", &[("type", "hit")]), 2.0);
    assert_eq!(sample(&m, "leadscore_events_total", &[("type", "other")]), bad.len() as f64 + 1.0);

    // The valid events between the bad ones were applied: dl-v's clock is its last event, and
    // dl-c's is the record timestamp of its event without `timestamp`.
    let lead = |id: &str| -> Value { serde_json::from_str(&run.get(&format!("/leads/{id}")).1).unwrap() };
    assert_eq!(lead("dl-v")["clock"], format_rfc3339_ms(t + 100 + bad.len() as i64 - 1).as_str());
    assert_eq!(lead("dl-c")["clock"], format_rfc3339_ms(fallback_ts).as_str());
    assert_eq!(run.get("/leads/dl-big").0, 404);
    run.shutdown();
}

// ---------------------------------------------------------------------------------------------
// 4. /metrics

/// Every required metric of spec section 8 with its type, on a fresh service and after traffic;
/// the score gauges equal the engine's at scrape time; no label value is a lead id.
#[test]
fn metrics_exposition() {
    let model_text = example_model_text();
    let mut run = start_service(ServiceSpec { model_toml: &model_text, input_partitions: 2, tweak: &|_| {} });
    let required = [
        ("leadscore_average_score", "gauge"),
        ("leadscore_score_sum", "gauge"),
        ("leadscore_tracked_leads", "gauge"),
        ("leadscore_qualified_leads", "gauge"),
        ("leadscore_leads_by_score", "gauge"),
        ("leadscore_events_total", "counter"),
        ("leadscore_events_rejected_total", "counter"),
        ("leadscore_transitions_total", "counter"),
        ("leadscore_event_processing_seconds", "histogram"),
        ("leadscore_transition_latency_seconds", "histogram"),
    ];
    let check_required = |text: &str| {
        for (name, kind) in required {
            assert!(text.contains(&format!("\n# TYPE {name} {kind}\n")), "{name} ({kind}) missing:\n{text}");
            let samples = parse_metrics(text);
            let series = if kind == "histogram" { format!("{name}_count") } else { name.to_owned() };
            assert!(samples.iter().any(|s| s.name == series), "{name}: no sample");
        }
    };
    let (status, fresh) = run.get("/metrics");
    assert_eq!(status, 200);
    check_required(&format!("\n{fresh}"));
    run.wait_ready(2, Duration::from_secs(30));

    let mut opts = near_now(11, 200, now_ms() - 60_000, 1000.0);
    opts.malformed_share = 0.05;
    let lines = generate_lines(opts, 800);
    produce_lines(&run.input, &lines, lead_key);
    // Every record counted once: accepted, duplicate or rejected.
    let counted = |m: &[Sample]| sum_of(m, "leadscore_events_total") + sum_of(m, "leadscore_events_rejected_total");
    assert!(
        wait_until(Duration::from_secs(30), || counted(&run.metrics()) == lines.len() as f64),
        "records counted: {} of {}",
        counted(&run.metrics()),
        lines.len()
    );
    // Deliveries are acknowledged asynchronously: wait until each transition has its latency.
    assert!(wait_until(Duration::from_secs(10), || {
        let m = run.metrics();
        sample(&m, "leadscore_transition_latency_seconds_count", &[]) == sum_of(&m, "leadscore_transitions_total")
    }));

    let (_, text) = run.get("/metrics");
    let after = now_ms();
    check_required(&format!("\n{text}"));
    let m = parse_metrics(&text);
    let bounds = leadscore::metrics::score_bounds(&run.model);
    let snap = run.svc().shared.snapshot_at(after, &bounds);
    let avg = sample(&m, "leadscore_average_score", &[("model", "default")]);
    let engine_avg = snap.totals.average();
    assert!(snap.totals.leads > 50, "{:?}", snap.totals);
    assert!((avg - engine_avg).abs() <= 1e-6 * engine_avg.abs().max(1e-9), "average {avg} vs engine {engine_avg}");
    let sum = sample(&m, "leadscore_score_sum", &[("model", "default")]);
    assert!((sum - snap.totals.score_sum).abs() <= 1e-6 * snap.totals.score_sum.abs().max(1.0));
    assert_eq!(sample(&m, "leadscore_tracked_leads", &[]), snap.totals.leads as f64);
    assert_eq!(sample(&m, "leadscore_qualified_leads", &[]), snap.totals.qualified as f64);
    assert_eq!(sample(&m, "leadscore_leads_by_score", &[("le", "+Inf")]), snap.totals.leads as f64);
    for (bound, count) in bounds.iter().zip(&snap.cumulative) {
        let le = if bound.fract() == 0.0 { format!("{}", *bound as i64) } else { bound.to_string() };
        assert_eq!(sample(&m, "leadscore_leads_by_score", &[("le", &le)]), *count as f64, "le={le}");
    }
    assert_eq!(sample(&m, "leadscore_event_processing_seconds_count", &[]), lines.len() as f64);
    let (_, status) = run.get("/api/status");
    let status: Value = serde_json::from_str(&status).unwrap();
    let status_avg = status["average_score"].as_f64().unwrap();
    assert!((status_avg - engine_avg).abs() <= 1e-6 * engine_avg.abs().max(1e-9), "/api/status {status_avg}");

    // Labels: bounded values only.
    let lead_ids: BTreeSet<String> = lines.iter().filter_map(|l| lead_key(l)).collect();
    assert!(lead_ids.len() > 50);
    let reasons: BTreeSet<&str> = leadscore::event::RejectReason::ALL.iter().map(|r| r.code()).collect();
    let mut types: BTreeSet<&str> = run.model.rules.iter().map(|r| r.event.as_str()).collect();
    types.extend(["profile_update", "other"]);
    for s in m.iter().filter(|s| s.name.starts_with("leadscore_")) {
        for (k, v) in &s.labels {
            assert!(!lead_ids.contains(v) && !v.contains("lead-"), "{} label {k}={v} carries a lead id", s.name);
        }
        match s.name.as_str() {
            "leadscore_events_total" => assert!(types.contains(s.labels["type"].as_str()), "{s:?}"),
            "leadscore_events_rejected_total" => assert!(reasons.contains(s.labels["reason"].as_str()), "{s:?}"),
            "leadscore_transitions_total" => {
                assert!(["qualified", "disqualified"].contains(&s.labels["kind"].as_str()), "{s:?}");
                assert_eq!(s.labels["model"], "default");
            }
            _ => {}
        }
    }
    assert!(sum_of(&m, "leadscore_events_rejected_total") > 0.0);
    run.shutdown();
}

// ---------------------------------------------------------------------------------------------
// 5. /readyz

/// 503 while no partition is assigned (the input topic does not exist yet), 200 once the topic
/// exists and its partitions are assigned, 503 as soon as shutdown begins, and never 200 again.
#[test]
fn readyz_follows_assignment_and_shutdown() {
    let mut run = start_service(ServiceSpec {
        model_toml: HIT_MODEL,
        input_partitions: 0,
        // Notice the new topic within half a second (librdkafka's default is 5 minutes).
        tweak: &|c| {
            c.kafka.librdkafka.insert("topic.metadata.refresh.interval.ms".into(), "500".into());
        },
    });
    assert_eq!(run.get("/healthz").0, 200);
    assert_eq!(run.get("/readyz").0, 503);
    // Still not ready a second later: nothing to be assigned.
    assert!(!wait_until(Duration::from_secs(1), || run.get("/readyz").0 != 503), "ready without partitions");
    assert_eq!(run.svc().shared.assigned(), 0);

    create_topics(&[(&run.input, 2)]);
    run.wait_ready(2, Duration::from_secs(30));

    // Shutdown begins (what Service::shutdown does first): 503 while the pipeline still runs.
    let health = Arc::clone(&run.svc().health);
    health.set_stopping();
    let (status, body) = run.get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert_eq!(run.get("/healthz").0, 200, "alive while draining");

    // The rest of the shutdown, on another thread: every answer until the server stops is 503.
    let service = run.service.take().unwrap();
    let stopper = std::thread::spawn(move || service.shutdown());
    let mut answers = Vec::new();
    while !stopper.is_finished() {
        if let Ok((s, _)) = http_get(run.addr, "/readyz") {
            answers.push(s);
        }
    }
    stopper.join().unwrap().expect("graceful shutdown");
    assert!(answers.iter().all(|&s| s == 503), "{answers:?}");
    // Stopped: the listener is closed (or, at the latest, still draining).
    assert!(http_get(run.addr, "/readyz").map_or(true, |(s, _)| s == 503));
}

// ---------------------------------------------------------------------------------------------
// 6. SIGTERM mid-stream, then restart

/// What a SIGTERM-and-restart run produced.
struct Restarted {
    model: Arc<Model>,
    lines: Vec<Vec<u8>>,
    output: Vec<String>,
    until_ms: i64,
}

/// Streams generated events to a 3-partition topic while `leadscore run` consumes them; sends
/// SIGTERM mid-stream (after the service committed some offsets, while the producer is still
/// going), checks exit status 0, restarts the binary once the stream is complete, and waits until
/// the group's committed offsets reach the end of every partition.
fn sigterm_mid_stream_then_restart() -> Restarted {
    let (input, output, dlq, group) = (unique("in"), unique("out"), unique("dlq"), unique("group"));
    create_topics(&[(&input, 3), (&output, 1), (&dlq, 1)]);
    let model_text = long_half_life_model_text();
    let model = Arc::new(parse_model(&model_text));
    let model_path = model_file(&model_text);
    let lines = generate_lines(near_now(23, 400, now_ms() - 30_000, 1000.0), 6000);
    let total = lines.len();

    let mut first = Bin::start(bootstrap(), &group, &input, &output, &dlq, model_path.path());
    // The stream: chunks of 100, paced; after the first chunk it waits until the service has
    // committed something, so SIGTERM surely lands while records are still coming.
    let produced = Arc::new(AtomicUsize::new(0));
    let go_on = Arc::new(AtomicBool::new(false));
    let producer = {
        let (lines, input, produced, go_on) = (lines.clone(), input.clone(), Arc::clone(&produced), Arc::clone(&go_on));
        std::thread::spawn(move || {
            let producer = TestProducer::new();
            for (i, chunk) in lines.chunks(100).enumerate() {
                if i == 1 {
                    assert!(
                        wait_until(Duration::from_secs(60), || go_on.load(Ordering::Relaxed)),
                        "service never started"
                    );
                }
                producer.send_lines(&input, chunk, lead_key);
                produced.fetch_add(chunk.len(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(25)); // pacing of the stream, not a wait
            }
        })
    };
    let committed_sum = |group: &str| committed_offsets(group, &input).iter().map(|o| o.unwrap_or(0)).sum::<i64>();
    assert!(
        wait_until(Duration::from_secs(60), || committed_sum(&group) > 0),
        "first instance committed nothing; log:\n{}",
        first.log()
    );
    go_on.store(true, Ordering::Relaxed);
    assert!(wait_until(Duration::from_secs(60), || committed_sum(&group) >= 1000), "log:\n{}", first.log());
    let status = first.terminate(Duration::from_secs(20));
    let at_sigterm = produced.load(Ordering::Relaxed);
    assert!(status.success(), "exit status {status} after SIGTERM; log:\n{}", first.log());
    assert!(at_sigterm < total, "SIGTERM after the stream ended: not mid-stream");
    assert!(first.log().contains("shutting down"), "log:\n{}", first.log());
    let committed_at_restart = committed_offsets(&group, &input);
    eprintln!("SIGTERM after {at_sigterm} of {total} records produced; committed {committed_at_restart:?}");

    producer.join().expect("producer thread");
    let mut second = Bin::start(bootstrap(), &group, &input, &output, &dlq, model_path.path());
    let ends = end_offsets(&input);
    assert_eq!(ends.iter().sum::<i64>(), total as i64);
    assert!(
        wait_until(Duration::from_secs(60), || committed_offsets(&group, &input)
            .iter()
            .zip(&ends)
            .all(|(c, e)| *c == Some(*e))),
        "committed offsets {:?} never reached the end {ends:?}; log:\n{}",
        committed_offsets(&group, &input),
        second.log()
    );
    let until_ms = now_ms();
    // Offsets are committed after the producer flushed: everything is on the output topic now.
    let output_records = read_to_end(&output, Duration::from_secs(30));
    let status = second.terminate(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}; log:\n{}", second.log());
    assert_eq!(end_offsets(&dlq), [0], "no bad records were sent");
    check_envelopes_loose(&output_records, &model);
    Restarted { model, lines, output: output_records.iter().map(|r| r.text().to_owned()).collect(), until_ms }
}

/// Keys are lead ids and ids have the `<lead>:<model>:<n>` form (numbering can repeat after a
/// restart under at-least-once, so it is not checked here).
fn check_envelopes_loose(records: &[Received], model: &Model) {
    for r in records {
        let v = r.json();
        let lead = v["lead_id"].as_str().unwrap();
        assert_eq!(r.key_str(), Some(lead));
        let id = v["id"].as_str().unwrap();
        assert!(id.strip_prefix(&format!("{lead}:{}:", model.name)).is_some_and(|n| n.parse::<u64>().is_ok()), "{id}");
    }
}

/// SIGTERM mid-stream, then restart: nothing is lost. Every transition of an uninterrupted
/// replay of the input is on the output at least once across SIGTERM and restart (lead state
/// is restored from the changelog), and nothing else is.
#[test]
fn sigterm_mid_stream_then_restart_keeps_every_replay_transition() {
    let r = sigterm_mid_stream_then_restart();
    let (full, _) = replay_lines(&r.model, &r.lines, r.until_ms);
    let got: BTreeSet<&String> = r.output.iter().collect();
    let missing: Vec<&str> = full.iter().filter(|s| !got.contains(s)).map(String::as_str).collect();
    assert!(full.len() >= 20, "the stream should cause transitions");
    assert!(missing.is_empty(), "{} of {} replay transitions missing:{}", missing.len(), full.len(), preview(&missing));
    let unexpected = missing_from(&r.output, &full);
    assert!(unexpected.is_empty(), "{} records not in the replay:{}", unexpected.len(), preview(&unexpected));
}
