//! The state changelog round trip: an engine restored from the changelog an engine wrote behaves
//! exactly as the engine that wrote it. Same transitions afterwards (to the byte), same state
//! of every lead, whatever point of the stream the restore happens at, and whether the log was
//! compacted or read whole.

use std::collections::BTreeMap;
use std::sync::Arc;

use leadscore::changelog::{assemble, decode_record, encode_record, parse_key, Key, INLINE_IDS, SEGMENT_IDS};
use leadscore::engine::{Applied, Engine, Transition};
use leadscore::event::{decode, DecodeOptions};
use leadscore::generate::{GenerateOptions, Generator};
use leadscore::model::Model;
use leadscore::transition::write_json;

/// The example model with a short half-life, `forget_after` and dedup window, so that over the
/// generated minutes decay crosses thresholds, leads are forgotten and come back, and remembered
/// ids leave the window.
fn model() -> Arc<Model> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/model.toml")).expect("model");
    for key in ["half_life = \"14d\"", "forget_after = \"180d\"", "dedup_window = \"1d\""] {
        assert!(text.contains(key), "{key}");
    }
    let text = text
        .replace("half_life = \"14d\"", "half_life = \"20m\"")
        .replace("forget_after = \"180d\"", "forget_after = \"1h\"")
        .replace("dedup_window = \"1d\"", "dedup_window = \"5m\"");
    Arc::new(Model::from_toml(&text).expect("valid model"))
}

/// Generated lines: 600 leads, 20 events per second of event time over 20k events (~17 min),
/// with duplicates, late events and malformed lines.
fn lines(seed: u64) -> Vec<Vec<u8>> {
    let opts = GenerateOptions { leads: 600, seed, rate_per_s: 20.0, ..GenerateOptions::default() };
    let mut g = Generator::new(opts);
    (0..20_000)
        .map(|_| {
            let mut l = Vec::new();
            g.next_record(&mut l);
            l
        })
        .collect()
}

/// Drives an engine the way `replay` does; collects transitions as JSON.
fn step(engine: &mut Engine, line: &[u8], out: &mut Vec<String>) {
    let Ok(ev) = decode(line, &DecodeOptions::default()) else { return };
    let model = Arc::clone(engine.model());
    let mut emit = |t: Transition| {
        let mut buf = Vec::new();
        write_json(&mut buf, &model, &t);
        out.push(String::from_utf8(buf).expect("UTF-8"));
    };
    let _: Applied = engine.apply_in_event_time(&ev, &mut emit);
}

/// Every lead's exported state, by id.
fn states(engine: &Engine) -> BTreeMap<String, leadscore::changelog::LeadRecord> {
    engine.lead_ids().map(|id| (id.to_owned(), engine.export_lead(id).expect("tracked lead exports"))).collect()
}

#[test]
fn a_restored_engine_continues_exactly_like_the_original() {
    let model = model();
    let lines = lines(7);
    // The reference: one engine through the whole stream.
    let mut reference = Engine::with_changelog(Arc::clone(&model));
    let mut expected = Vec::new();
    let mut expected_at = Vec::new(); // transitions emitted before each line
    for l in &lines {
        expected_at.push(expected.len());
        step(&mut reference, l, &mut expected);
    }
    assert!(expected.len() > 100, "the stream makes transitions: {}", expected.len());
    assert!(expected.iter().any(|t| t.contains("\"trigger\":null")), "and decay-driven ones");

    for &split in &[1usize, 777, 5_000, 13_131, 19_999] {
        // The writer: processes up to `split`, draining its changelog every 50 lines (a commit).
        let mut writer = Engine::with_changelog(Arc::clone(&model));
        let mut log: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut ignored = Vec::new();
        for (i, l) in lines[..split].iter().enumerate() {
            step(&mut writer, l, &mut ignored);
            if i % 50 == 49 {
                let from = log.len();
                writer.drain_changelog(|k, v| log.push((k.to_vec(), v.map(<[u8]>::to_vec))));
                // The engine writes records straight from its state: each must be exactly the
                // encoding of the state it exports, but for the ids, which the record holds only
                // in part when the lead has segments; and a record holds few.
                for (k, v) in &log[from..] {
                    let (Ok(Key::Lead(id)), Some(v)) = (parse_key(k), v) else { continue };
                    let got = decode_record(v).expect("decodes");
                    let mut want = writer.export_lead(id).expect("a lead with a record is tracked");
                    let (first, next) = got.id_segments;
                    if first < next {
                        assert!(got.event_ids.len() < SEGMENT_IDS, "{id}: {} open ids", got.event_ids.len());
                        assert!(got.event_ids.iter().all(|e| want.event_ids.contains(e)), "{id}: open ids are its ids");
                        want.event_ids = got.event_ids.clone();
                        want.id_segments = got.id_segments;
                    } else {
                        assert!(got.event_ids.len() <= INLINE_IDS, "{id}: {} inline ids", got.event_ids.len());
                    }
                    let mut expected = Vec::new();
                    encode_record(&want, &mut expected);
                    assert_eq!(v, &expected, "record of {id}");
                }
            }
        }
        writer.drain_changelog(|k, v| log.push((k.to_vec(), v.map(<[u8]>::to_vec))));
        assert_eq!(writer.changed_leads(), 0);
        assert!(log.iter().any(|(_, v)| v.is_none()) || split < 13_000, "forget_after writes tombstones");
        if split > 5_000 {
            let segments = |deleted: bool| {
                log.iter()
                    .filter(|(k, v)| matches!(parse_key(k), Ok(Key::Segment { .. })) && v.is_none() == deleted)
                    .count()
            };
            assert!(segments(false) > 10, "busy leads seal their ids in segments");
            if split > 13_000 {
                assert!(segments(true) > 0, "segments that left the dedup window are deleted");
            }
        }
        // What a reader of the topic rebuilds (the last record per key, segments merged) is the
        // writer's state.
        let assembled =
            assemble(log.iter().map(|(k, v)| (&k[..], v.as_deref())), model.dedup_window_ms).expect("reads");
        assert_eq!(assembled, states(&writer), "split {split}: the log's state differs from the writer's");

        // Compacted: the last record per key, tombstones dropped.
        let mut compacted: BTreeMap<&[u8], &Vec<u8>> = BTreeMap::new();
        for (k, v) in &log {
            match v {
                Some(v) => compacted.insert(k, v),
                None => compacted.remove(&k[..]),
            };
        }
        let watermark = writer.clock();
        let restored_whole = {
            let mut e = Engine::with_changelog(Arc::clone(&model));
            for (k, v) in &log {
                e.restore(k, v.as_deref()).expect("valid record");
            }
            assert!(e.finish_restore().is_empty());
            e
        };
        let restored_compacted = {
            let mut e = Engine::with_changelog(Arc::clone(&model));
            for (k, v) in &compacted {
                e.restore(k, Some(v)).expect("valid record");
            }
            assert!(e.finish_restore().is_empty());
            e
        };
        for mut restored in [restored_whole, restored_compacted] {
            // The watermark moves to where the writer's was: nothing is due that it had not fired.
            let mut early = Vec::new();
            restored.advance(watermark, &mut |t| early.push(t));
            assert!(early.is_empty(), "split {split}: {} crossings fired again after restore", early.len());
            assert_eq!(states(&restored), states(&writer), "split {split}: restored state differs");
            let mut got = Vec::new();
            for l in &lines[split..] {
                step(&mut restored, l, &mut got);
            }
            assert_eq!(got, expected[expected_at[split]..], "split {split}: transitions after the restore differ");
            assert_eq!(states(&restored), states(&reference), "split {split}: final state differs");
        }
    }
}

#[test]
fn records_carry_remembered_event_ids_so_duplicates_stay_duplicates() {
    let model = model();
    let lines = lines(11);
    let mut writer = Engine::with_changelog(Arc::clone(&model));
    let mut ignored = Vec::new();
    for l in &lines[..10_000] {
        step(&mut writer, l, &mut ignored);
    }
    let mut log = Vec::new();
    writer.drain_changelog(|k, v| log.push((k.to_vec(), v.map(<[u8]>::to_vec))));
    let mut restored = Engine::with_changelog(Arc::clone(&model));
    for (k, v) in &log {
        restored.restore(k, v.as_deref()).expect("valid record");
    }
    assert!(restored.finish_restore().is_empty());
    // Every accepted line replayed again is a duplicate in both engines, or in neither.
    let mut both = 0;
    for l in &lines[9_000..10_000] {
        let Ok(ev) = decode(l, &DecodeOptions::default()) else { continue };
        let (a, b) = (writer.is_duplicate(&ev), restored.is_duplicate(&ev));
        assert_eq!(a, b, "duplicate check differs after restore");
        both += usize::from(a);
    }
    assert!(both > 500, "most recent events are remembered: {both}");
    let with_ids = log
        .iter()
        .filter(|(k, _)| matches!(parse_key(k), Ok(Key::Lead(_))))
        .filter_map(|(_, v)| v.as_deref())
        .map(|v| decode_record(v).expect("decodes"));
    assert!(with_ids.filter(|r| !r.event_ids.is_empty()).count() > 100);
}

/// Event ids are stored as hashes; if a dependency upgrade changed the hash, every remembered id
/// in every changelog would silently stop matching.
#[test]
fn the_event_id_hash_is_pinned() {
    let e = Engine::new(model());
    let got = [e.event_id_hash(""), e.event_id_hash("e-123"), e.event_id_hash("00000000-0000-4000-8000-000000000000")];
    assert_eq!(got, PINNED_EVENT_ID_HASHES, "the changelog's event id hash changed: bump the record version");
}

const PINNED_EVENT_ID_HASHES: [u64; 3] = [18148511379775684293, 17067596826278101849, 16567872265678359905];

/// The point of segments: a busy lead's remembered ids are written about once each, not with
/// every commit that changes the lead; its records stay small; segments that left the dedup
/// window are deleted; and what a reader rebuilds is still the lead's state.
#[test]
fn a_busy_leads_ids_are_written_about_once() {
    let model = model(); // dedup window 5 min
    let mut writer = Engine::with_changelog(Arc::clone(&model));
    let mut log: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    let mut ignored = Vec::new();
    let events = 2_000; // one a second: 33 min, about 300 ids in the window at any time
    for i in 0..events {
        let line = format!(
            r#"{{"lead_id":"bot","type":"website_visit","timestamp":{},"event_id":"e-{i}"}}"#,
            1_764_000_000_000i64 + i * 1000
        );
        step(&mut writer, line.as_bytes(), &mut ignored);
        if i % 3 == 2 {
            writer.drain_changelog(|k, v| log.push((k.to_vec(), v.map(<[u8]>::to_vec))));
        }
    }
    writer.drain_changelog(|k, v| log.push((k.to_vec(), v.map(<[u8]>::to_vec))));
    let (mut in_records, mut in_segments, mut deleted, mut largest) = (0usize, 0usize, 0usize, 0usize);
    for (k, v) in &log {
        match (parse_key(k).expect("a valid key"), v) {
            (Key::Lead(_), Some(v)) => {
                let n = decode_record(v).expect("decodes").event_ids.len();
                in_records += n;
                largest = largest.max(n);
            }
            (Key::Segment { .. }, Some(v)) => {
                leadscore::changelog::visit_ids(v, |_, _| in_segments += 1).expect("decodes");
            }
            (Key::Segment { .. }, None) => deleted += 1,
            other => panic!("unexpected record {other:?}"),
        }
    }
    assert!(largest < SEGMENT_IDS + 3, "a record holds the ids since the last seal: {largest}");
    assert!(in_segments <= events as usize && in_segments + SEGMENT_IDS + 3 > events as usize, "{in_segments}");
    assert!(in_records + in_segments < 6 * events as usize, "ids written {} times", in_records + in_segments);
    assert!(deleted > 50, "segments out of the window are deleted: {deleted}");
    let assembled = assemble(log.iter().map(|(k, v)| (&k[..], v.as_deref())), model.dedup_window_ms).expect("reads");
    assert_eq!(assembled, states(&writer));
    assert!(assembled["bot"].event_ids.len() >= 299, "{}", assembled["bot"].event_ids.len());
}

/// A lead written by a release whose records kept a busy lead's ids in bucket records (format
/// version 1) restores with those ids; its next record replaces the buckets (deleted) with the
/// current layout.
#[test]
fn version_1_bucket_records_restore_and_are_replaced() {
    use leadscore::changelog::{bucket_key, encode_ids, LeadRecord};
    let model = model();
    let mut source = Engine::new(Arc::clone(&model));
    let mut ignored = Vec::new();
    let t0 = 1_764_000_000_000i64;
    for i in 0..40 {
        let line = format!(r#"{{"lead_id":"old","type":"login","timestamp":{},"event_id":"e-{i}"}}"#, t0 + i * 1000);
        step(&mut source, line.as_bytes(), &mut ignored);
    }
    let state = source.export_lead("old").expect("tracked");
    // Version 1: the record without ids and with 1 bucket bit, then its two buckets.
    let mut v1 = Vec::new();
    encode_record(&LeadRecord { event_ids: vec![], ..state.clone() }, &mut v1);
    v1[0] = 1;
    v1.truncate(v1.len() - 8);
    v1.push(1);
    let low: Vec<(u64, i64)> = state.event_ids.iter().copied().filter(|(h, _)| h >> 63 == 0).collect();
    let high: Vec<(u64, i64)> = state.event_ids.iter().copied().filter(|(h, _)| h >> 63 == 1).collect();
    let mut log: Vec<(Vec<u8>, Option<Vec<u8>>)> = vec![(b"old".to_vec(), Some(v1))];
    for (index, ids) in [(0u16, &low), (1, &high)] {
        let (mut k, mut v) = (Vec::new(), Vec::new());
        bucket_key("old", 1, index, &mut k);
        encode_ids(ids, &mut v);
        log.push((k, Some(v)));
    }
    let mut restored = Engine::with_changelog(Arc::clone(&model));
    for (k, v) in &log {
        restored.restore(k, v.as_deref()).expect("a version 1 record reads");
    }
    assert!(restored.finish_restore().is_empty());
    assert_eq!(restored.export_lead("old"), Some(state), "the ids come from the buckets");
    let line = format!(r#"{{"lead_id":"old","type":"login","timestamp":{},"event_id":"e-new"}}"#, t0 + 50_000);
    step(&mut restored, line.as_bytes(), &mut ignored);
    let mut written: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    restored.drain_changelog(|k, v| written.push((k.to_vec(), v.map(<[u8]>::to_vec))));
    let deleted_buckets =
        written.iter().filter(|(k, v)| v.is_none() && matches!(parse_key(k), Ok(Key::Bucket { .. }))).count();
    assert_eq!(deleted_buckets, 2, "both buckets deleted");
    let all: Vec<(Vec<u8>, Option<Vec<u8>>)> = log.into_iter().chain(written).collect();
    let assembled = assemble(all.iter().map(|(k, v)| (&k[..], v.as_deref())), model.dedup_window_ms).expect("reads");
    assert_eq!(assembled["old"], restored.export_lead("old").expect("tracked"));
    assert_eq!(assembled["old"].event_ids.len(), 41);
}
