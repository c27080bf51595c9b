//! Criterion benchmarks of the engine: applying decoded events, and decode + apply together.
//!
//! Input: records from the synthetic generator over 100k leads (the example model), so lookups
//! miss the cache as they would in production.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use leadscore::engine::Engine;
use leadscore::event::{decode, DecodeOptions};
use leadscore::generate::{GenerateOptions, Generator};
use leadscore::model::Model;

fn records(n: usize) -> Vec<Vec<u8>> {
    let mut gen = Generator::new(GenerateOptions { leads: 100_000, malformed_share: 0.0, ..Default::default() });
    (0..n)
        .map(|_| {
            let mut v = Vec::new();
            gen.next_record(&mut v);
            v
        })
        .collect()
}

fn model() -> Arc<Model> {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/model.toml")).unwrap();
    Arc::new(Model::from_toml(&src).expect("example model is valid"))
}

fn bench_apply(c: &mut Criterion) {
    let model = model();
    let recs = records(200_000);
    let opts = DecodeOptions::default();
    let events: Vec<_> = recs.iter().filter_map(|r| decode(r, &opts).ok()).collect();
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.sample_size(10);
    group.bench_function("apply_200k_events_100k_leads", |b| {
        b.iter_batched(
            || Engine::new(Arc::clone(&model)),
            |mut engine| {
                let mut n = 0usize;
                for ev in &events {
                    engine.apply(ev, &mut |_| n += 1);
                }
                (engine, n)
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.bench_function("decode_and_apply_200k_records", |b| {
        b.iter_batched(
            || Engine::new(Arc::clone(&model)),
            |mut engine| {
                let mut n = 0usize;
                for r in &recs {
                    if let Ok(ev) = decode(r, &opts) {
                        engine.apply(&ev, &mut |_| n += 1);
                    }
                }
                (engine, n)
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_apply);
criterion_main!(benches);
