//! Criterion benchmarks of the per-event decode path: `event::decode` on typical records and
//! `Properties::get` of a two-level path.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use leadscore::event::{decode, DecodeOptions};

const SAMPLE: &str = r#"{"lead_id":"lead-1234567","type":"website_visit","timestamp":"2026-12-03T10:15:00.123Z","event_id":"e-99887766","properties":{"path":"/pricing","utm":{"source":"google"}}}"#;
const ESCAPED: &str = r#"{"lead_id":"lead-\u0031234567","type":"website_visit","timestamp":"2026-12-03T10:15:00.123Z","event_id":"e-\"99887766\"","properties":{"path":"\/pricing","utm":{"source":"goo\u00e9gle"}}}"#;
const INT_TS: &str = r#"{"lead_id":"lead-1234567","type":"website_visit","timestamp":1796292900123,"event_id":"e-99887766","properties":{"path":"/pricing","utm":{"source":"google"}}}"#;

fn bench_decode(c: &mut Criterion) {
    let opts = DecodeOptions::default();
    let mut group = c.benchmark_group("decode");
    for (name, rec) in [("sample", SAMPLE), ("escaped", ESCAPED), ("integer_timestamp", INT_TS)] {
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
    let path = vec!["utm".to_string(), "source".to_string()];
    c.bench_function("properties_get_two_levels", |b| b.iter(|| black_box(props).get(black_box(&path))));
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);
