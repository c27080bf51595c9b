//! Criterion benchmarks of the per-event decode path: `event::decode` on typical records, and
//! `Properties::get` and `Properties::for_each_entry` on a decoded event (the engine's lookups).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use leadscore::event::{decode, DecodeOptions};

const SAMPLE: &str = r#"{"lead_id":"lead-1234567","type":"website_visit","timestamp":"2026-12-03T10:15:00.123Z","event_id":"e-99887766","properties":{"path":"/pricing","utm":{"source":"google"}}}"#;
const ESCAPED: &str = r#"{"lead_id":"lead-\u0031234567","type":"website_visit","timestamp":"2026-12-03T10:15:00.123Z","event_id":"e-\"99887766\"","properties":{"path":"\/pricing","utm":{"source":"goo\u00e9gle"}}}"#;
const INT_TS: &str = r#"{"lead_id":"lead-1234567","type":"website_visit","timestamp":1796292900123,"event_id":"e-99887766","properties":{"path":"/pricing","utm":{"source":"google"}}}"#;
/// The sample with whitespace around every token: no key takes the compact-key fast path, and
/// the timestamp (an offset) takes the general RFC 3339 parser.
const SPACED: &str = r#"{ "lead_id" : "lead-1234567", "type" : "website_visit", "timestamp" : "2026-12-03T11:15:00.123+01:00", "event_id" : "e-99887766", "properties" : { "path" : "/pricing", "utm" : { "source" : "google" } } }"#;
const PROFILE: &str = r#"{"lead_id":"lead-1234567","type":"profile_update","timestamp":"2026-12-03T10:15:00.123Z","event_id":"e-99887767","properties":{"job_title":"VP Sales","company_size":800,"country":"DE"}}"#;

fn bench_decode(c: &mut Criterion) {
    let opts = DecodeOptions::default();
    let mut group = c.benchmark_group("decode");
    for (name, rec) in [
        ("sample", SAMPLE),
        ("escaped", ESCAPED),
        ("integer_timestamp", INT_TS),
        ("spaced", SPACED),
        ("profile", PROFILE),
    ] {
        group.throughput(Throughput::Bytes(rec.len() as u64));
        group.bench_function(name, |b| b.iter(|| decode(black_box(rec.as_bytes()), &opts).is_ok()));
    }
    // Reference point on the same machine: serde_json validating and skipping the sample.
    group.throughput(Throughput::Bytes(SAMPLE.len() as u64));
    group.bench_function("serde_json_ignored_any_reference", |b| {
        b.iter(|| serde_json::from_str::<serde::de::IgnoredAny>(black_box(SAMPLE)).is_ok())
    });
    group.finish();

    let ev = decode(SAMPLE.as_bytes(), &opts).expect("sample is valid");
    let props = ev.properties.expect("sample has properties");
    // Paths as the engine holds them.
    let one = vec!["path".to_string()];
    let two = vec!["utm".to_string(), "source".to_string()];
    c.bench_function("properties_get_one_level", |b| b.iter(|| black_box(props).get(black_box(&one))));
    c.bench_function("properties_get_two_levels", |b| b.iter(|| black_box(props).get(black_box(&two))));
    let profile = decode(PROFILE.as_bytes(), &opts).expect("profile is valid");
    let attrs = profile.properties.expect("profile has properties");
    c.bench_function("properties_for_each_entry", |b| {
        b.iter(|| {
            let mut n = 0;
            black_box(attrs).for_each_entry(|k, v| n += k.len() + usize::from(v.is_some()));
            n
        })
    });
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);
