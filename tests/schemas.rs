//! The JSON Schemas shipped in `schemas/` for downstream teams (spec sections 2 and 5): they are
//! valid draft 2020-12 schemas, every event `decode` accepts validates against the event schema
//! (and records it rejects for a type reason do not), and every transition `replay` emits
//! validates against the transition schema.
//!
//! Formats (`date-time`) are asserted, not just annotated, as a strict consumer would.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use jsonschema::Validator;
use leadscore::event::{decode, DecodeOptions, RejectReason};
use leadscore::model::Model;
use leadscore::replay::{replay, ReplayOptions};
use leadscore::time::parse_rfc3339_ms;
use serde_json::{json, Value};

const EVENT_SCHEMA: &str = "lead-event.schema.json";
const TRANSITION_SCHEMA: &str = "transition.schema.json";

fn repo_file(dir: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join(name)
}

fn read(dir: &str, name: &str) -> String {
    let path = repo_file(dir, name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn load_schema(name: &str) -> Value {
    serde_json::from_str(&read("schemas", name)).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
}

/// The schema checked against the draft 2020-12 meta-schema, then compiled with format
/// assertion on.
fn validator(name: &str) -> Validator {
    let schema = load_schema(name);
    if let Err(e) = jsonschema::draft202012::meta::validate(&schema) {
        panic!("{name} is not a valid draft 2020-12 schema: {e}");
    }
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{name} does not compile: {e}"))
}

fn errors(v: &Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance).map(|e| format!("{}: {e}", e.instance_path())).collect()
}

fn assert_valid(v: &Validator, instance: &Value, what: &str) {
    let errs = errors(v, instance);
    assert!(errs.is_empty(), "{what} should validate: {errs:#?}\n{instance}");
}

fn assert_invalid(v: &Validator, instance: &Value, what: &str) {
    assert!(!v.is_valid(instance), "{what} should not validate:\n{instance}");
}

fn model(name: &str) -> Arc<Model> {
    let path = repo_file("examples", name);
    Arc::new(Model::load(&path).unwrap_or_else(|e| panic!("{}: {e:?}", path.display())))
}

// (a) ---------------------------------------------------------------------------------------

#[test]
fn schemas_are_valid_and_their_examples_validate() {
    for (name, id) in
        [(EVENT_SCHEMA, "urn:leadscore:schema:lead-event:1"), (TRANSITION_SCHEMA, "urn:leadscore:schema:transition:1")]
    {
        let schema = load_schema(name);
        let v = validator(name);
        assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema", "{name}");
        assert_eq!(schema["$id"], id, "{name}");
        for key in ["title", "description"] {
            assert!(schema[key].as_str().is_some_and(|s| !s.is_empty()), "{name}: {key}");
        }
        // More fields may be added: consumers must not reject them.
        assert_eq!(schema["additionalProperties"], true, "{name}");
        let examples = schema["examples"].as_array().unwrap_or_else(|| panic!("{name}: examples"));
        assert!(!examples.is_empty(), "{name}: examples");
        for (i, example) in examples.iter().enumerate() {
            assert_valid(&v, example, &format!("{name} example {i}"));
        }
    }
    // `timestamp` is optional on Kafka (the record timestamp is used), so not required here.
    assert_eq!(load_schema(EVENT_SCHEMA)["required"], json!(["lead_id", "type"]));
}

// (b) ---------------------------------------------------------------------------------------

#[test]
fn every_accepted_example_event_validates() {
    let v = validator(EVENT_SCHEMA);
    let events = read("examples", "events.jsonl");
    let (mut accepted, mut rejected) = (0, 0);
    for (n, line) in events.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        if decode(line.as_bytes(), &DecodeOptions::default()).is_err() {
            rejected += 1;
            continue;
        }
        accepted += 1;
        let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("line {}: {e}", n + 1));
        assert_valid(&v, &value, &format!("examples/events.jsonl line {}", n + 1));
    }
    assert!(accepted > 1000, "examples/events.jsonl: only {accepted} accepted ({rejected} rejected)");
}

#[test]
fn edge_case_events_decode_accepts_validate() {
    let v = validator(EVENT_SCHEMA);
    let max_id = "x".repeat(256);
    let max_type = "t".repeat(64);
    let max_event_id = "e".repeat(128);
    let cases = [
        json!({"lead_id": 42, "type": "login", "timestamp": 0}),
        json!({"lead_id": -7, "type": "login", "timestamp": 253_402_300_799_999_i64}),
        json!({"lead_id": "l", "type": "login", "timestamp": "2026-12-03T11:15:00.123456+01:00"}),
        json!({"lead_id": "l", "type": "login", "timestamp": "2026-12-03t10:15:00z"}),
        json!({"lead_id": "l", "type": "login", "timestamp": "9999-12-31T23:59:59.999Z"}),
        json!({"lead_id": "l", "type": "login", "timestamp": "1970-01-01T00:00:00Z"}),
        json!({"lead_id": "l", "type": "login", "timestamp": 1, "event_id": null, "properties": null}),
        json!({"lead_id": "l", "type": "profile_update", "timestamp": 1, "properties": {"job_title": "VP", "phone": null}}),
        json!({"lead_id": "l", "type": "not_in_the_model", "timestamp": 1, "source": "crm", "extra": [1, {"a": null}]}),
        json!({"lead_id": max_id, "type": max_type, "timestamp": 1, "event_id": max_event_id, "properties": {}}),
        json!({"lead_id": "l\u{e9}", "type": "login", "timestamp": 1}),
    ];
    for case in &cases {
        let text = case.to_string();
        if let Err(r) = decode(text.as_bytes(), &DecodeOptions::default()) {
            panic!("decode rejects {text}: {r:?}");
        }
        assert_valid(&v, case, "an event decode accepts");
    }
    // No `timestamp`: accepted on Kafka (the record timestamp is used), so valid here too.
    let kafka = DecodeOptions { fallback_timestamp_ms: Some(1_796_292_900_123), ..DecodeOptions::default() };
    let no_ts = json!({"lead_id": "l", "type": "login", "event_id": "e-1"});
    assert!(decode(no_ts.to_string().as_bytes(), &kafka).is_ok());
    assert_eq!(
        decode(no_ts.to_string().as_bytes(), &DecodeOptions::default()).unwrap_err().reason,
        RejectReason::MissingField
    );
    assert_valid(&v, &no_ts, "an event without timestamp");
}

#[test]
fn events_decode_rejects_for_a_type_reason_do_not_validate() {
    use RejectReason::{InvalidField, InvalidTimestamp, MissingField, NotAnObject};
    let v = validator(EVENT_SCHEMA);
    let base = || json!({"lead_id": "lead-1", "type": "login", "timestamp": "2026-12-03T10:15:00.000Z"});
    let with = |key: &str, value: Value| {
        let mut e = base();
        e[key] = value;
        e
    };
    let without = |key: &str| {
        let mut e = base();
        e.as_object_mut().unwrap().remove(key);
        e
    };
    let cases = [
        (with("lead_id", json!(true)), InvalidField),
        (with("lead_id", json!("")), InvalidField),
        (with("lead_id", json!("x".repeat(257))), InvalidField),
        (with("lead_id", json!(1.5)), InvalidField),
        (with("lead_id", json!(["l"])), InvalidField),
        (with("lead_id", json!({"id": "l"})), InvalidField),
        (with("lead_id", Value::Null), MissingField),
        (without("lead_id"), MissingField),
        (with("type", json!(5)), InvalidField),
        (with("type", json!("")), InvalidField),
        (with("type", json!("t".repeat(65))), InvalidField),
        (with("type", Value::Null), MissingField),
        (without("type"), MissingField),
        (with("event_id", json!(7)), InvalidField),
        (with("event_id", json!("")), InvalidField),
        (with("event_id", json!("e".repeat(129))), InvalidField),
        (with("event_id", json!(false)), InvalidField),
        (with("properties", json!("x")), InvalidField),
        (with("properties", json!([])), InvalidField),
        (with("properties", json!(3)), InvalidField),
        (with("timestamp", json!(true)), InvalidTimestamp),
        (with("timestamp", json!("yesterday")), InvalidTimestamp),
        (with("timestamp", json!("2026-12-03 10:15:00Z")), InvalidTimestamp),
        (with("timestamp", json!("2026-12-03T10:15:00")), InvalidTimestamp),
        (with("timestamp", json!("2026-02-30T10:15:00Z")), InvalidTimestamp),
        (with("timestamp", json!(-1)), InvalidTimestamp),
        (with("timestamp", json!(253_402_300_800_000_i64)), InvalidTimestamp),
        (with("timestamp", json!(1.5)), InvalidTimestamp),
        (with("timestamp", json!({"ms": 1})), InvalidTimestamp),
        (json!(["lead-1", "login"]), NotAnObject),
        (json!("lead-1"), NotAnObject),
    ];
    for (case, reason) in &cases {
        let text = case.to_string();
        match decode(text.as_bytes(), &DecodeOptions::default()) {
            Ok(e) => panic!("decode accepts {text}: {e:?}"),
            Err(r) => assert_eq!(r.reason, *reason, "{text}"),
        }
        assert_invalid(&v, case, &format!("an event decode rejects as {}", reason.code()));
    }

    // Documented gap: lengths count characters in JSON Schema, UTF-8 bytes in the service.
    let wide = with("lead_id", json!("\u{e9}".repeat(200)));
    assert_eq!(decode(wide.to_string().as_bytes(), &DecodeOptions::default()).unwrap_err().reason, InvalidField);
    assert_valid(&v, &wide, "a 200-character, 400-byte lead_id (schema counts characters)");
}

// (c) ---------------------------------------------------------------------------------------

/// Counts of the transitions checked.
#[derive(Debug, Default)]
struct Checked {
    lines: usize,
    triggered: usize,
    triggered_without_event_id: usize,
    decay: usize,
    qualified: usize,
    disqualified: usize,
}

/// Replays `input` and validates every output line against the transition schema.
fn check_replay(v: &Validator, model: &Arc<Model>, input: &str, until_ms: Option<i64>, checked: &mut Checked) {
    let mut out = Vec::new();
    let opts = ReplayOptions { until_ms, ..ReplayOptions::default() };
    let summary = replay(Arc::clone(model), &mut input.as_bytes(), &mut out, opts).expect("replay");
    let out = String::from_utf8(out).expect("transitions are UTF-8");
    let mut lines = 0u64;
    for line in out.lines() {
        lines += 1;
        let t: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_valid(v, &t, "an emitted transition");
        checked.lines += 1;
        match &t["trigger"] {
            Value::Null => checked.decay += 1,
            trigger => {
                checked.triggered += 1;
                if trigger["event_id"].is_null() {
                    checked.triggered_without_event_id += 1;
                }
            }
        }
        match t["type"].as_str() {
            Some("lead_qualified") => checked.qualified += 1,
            _ => checked.disqualified += 1,
        }
    }
    assert_eq!(lines, summary.transitions, "one line per transition");
}

#[test]
fn every_replayed_transition_validates() {
    let v = validator(TRANSITION_SCHEMA);
    let events = read("examples", "events.jsonl");
    // The same events without `event_id`: triggers with a null `event_id`.
    let anonymous: String = events
        .lines()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(mut o)) => {
                o.remove("event_id");
                format!("{}\n", Value::Object(o))
            }
            _ => format!("{line}\n"),
        })
        .collect();
    // Far past the last event (2026-10-29): qualified leads decay below the line, with no event.
    let later = parse_rfc3339_ms("2027-06-01T00:00:00Z").expect("valid time");
    let mut checked = Checked::default();
    for model_file in ["model.toml", "model-nofit.toml"] {
        let m = model(model_file);
        for until in [None, Some(later)] {
            check_replay(&v, &m, &events, until, &mut checked);
        }
        check_replay(&v, &m, &anonymous, Some(later), &mut checked);
    }
    assert!(checked.triggered > 0, "no transition with a trigger was checked: {checked:?}");
    assert!(checked.triggered_without_event_id > 0, "no trigger with a null event_id was checked: {checked:?}");
    assert!(checked.decay > 0, "no decay-driven transition (trigger null) was checked: {checked:?}");
    assert!(checked.qualified > 0 && checked.disqualified > 0, "both kinds: {checked:?}");
}

// (d) ---------------------------------------------------------------------------------------

#[test]
fn invalid_transitions_do_not_validate() {
    let v = validator(TRANSITION_SCHEMA);
    let base = || {
        json!({
            "id": "lead-42:default:1", "type": "lead_qualified", "lead_id": "lead-42",
            "model": "default", "model_version": "2026-12-01", "score": 63.25, "threshold": 60.0,
            "at": "2026-12-03T10:15:00.000Z",
            "trigger": {"event_id": "e-123", "type": "trial_activation"},
            "breakdown": {"fit": 15.0, "fixed": 0.0, "engagement": 48.25, "groups": {"web": 8.25},
                          "fit_rules": ["senior_title"]}
        })
    };
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut t = base();
        f(&mut t);
        t
    };
    assert_valid(&v, &base(), "the spec's example transition");
    // Fields may be added, at the top level and in the breakdown.
    assert_valid(&v, &edit(&|t| t["partition"] = json!(3)), "an added top-level field");
    assert_valid(&v, &edit(&|t| t["breakdown"]["late"] = json!(1.0)), "an added breakdown field");
    assert_valid(&v, &edit(&|t| t["trigger"] = Value::Null), "a decay-driven transition");
    assert_valid(&v, &edit(&|t| t["trigger"]["event_id"] = Value::Null), "a trigger without event_id");
    assert_valid(&v, &edit(&|t| t["id"] = json!("a:b:c:model:12")), "an id whose lead_id has colons");

    let cases: [(&str, Value); 28] = [
        ("at without milliseconds", edit(&|t| t["at"] = json!("2026-12-03T10:15:00Z"))),
        ("at with microseconds", edit(&|t| t["at"] = json!("2026-12-03T10:15:00.000000Z"))),
        ("at with an offset", edit(&|t| t["at"] = json!("2026-12-03T10:15:00.000+00:00"))),
        ("at in lower case", edit(&|t| t["at"] = json!("2026-12-03t10:15:00.000z"))),
        ("at on a day that does not exist", edit(&|t| t["at"] = json!("2026-02-30T10:15:00.000Z"))),
        ("at as epoch ms", edit(&|t| t["at"] = json!(1_796_292_900_000_i64))),
        ("an unknown type", edit(&|t| t["type"] = json!("lead_scored"))),
        ("id with n = 0", edit(&|t| t["id"] = json!("lead-42:default:0"))),
        ("id with a leading zero", edit(&|t| t["id"] = json!("lead-42:default:01"))),
        ("id without n", edit(&|t| t["id"] = json!("lead-42:default"))),
        ("an empty lead_id", edit(&|t| t["lead_id"] = json!(""))),
        ("an integer lead_id", edit(&|t| t["lead_id"] = json!(42))),
        ("score as a string", edit(&|t| t["score"] = json!("63.25"))),
        ("threshold null", edit(&|t| t["threshold"] = Value::Null)),
        ("model_version as a number", edit(&|t| t["model_version"] = json!(20261201))),
        ("trigger as a string", edit(&|t| t["trigger"] = json!("trial_activation"))),
        ("trigger without event_id", edit(&|t| t["trigger"] = json!({"type": "login"}))),
        ("trigger without type", edit(&|t| t["trigger"] = json!({"event_id": "e-1"}))),
        ("trigger with an extra field", edit(&|t| t["trigger"]["lead_id"] = json!("lead-42"))),
        ("trigger event_id as a number", edit(&|t| t["trigger"]["event_id"] = json!(123))),
        ("breakdown null", edit(&|t| t["breakdown"] = Value::Null)),
        ("breakdown without fit_rules", edit(&|t| remove(&mut t["breakdown"], "fit_rules"))),
        ("breakdown fit as a string", edit(&|t| t["breakdown"]["fit"] = json!("15"))),
        ("a group total as a string", edit(&|t| t["breakdown"]["groups"]["web"] = json!("8.25"))),
        ("groups as an array", edit(&|t| t["breakdown"]["groups"] = json!([8.25]))),
        ("fit_rules with a number", edit(&|t| t["breakdown"]["fit_rules"] = json!([1]))),
        ("no trigger", edit(&|t| remove(t, "trigger"))),
        ("no at", edit(&|t| remove(t, "at"))),
    ];
    for (what, case) in &cases {
        assert_invalid(&v, case, what);
    }
    for field in ["id", "type", "lead_id", "model", "model_version", "score", "threshold", "breakdown"] {
        assert_invalid(&v, &edit(&|t| remove(t, field)), &format!("a transition without {field}"));
    }
}

fn remove(value: &mut Value, key: &str) {
    value.as_object_mut().expect("an object").remove(key);
}
