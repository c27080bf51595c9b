//! The state changelog round trip: an engine restored from the changelog an engine wrote behaves
//! exactly as the engine that wrote it. Same transitions afterwards (to the byte), same state
//! of every lead, whatever point of the stream the restore happens at, and whether the log was
//! compacted or read whole.

use std::collections::BTreeMap;
use std::sync::Arc;

use leadscore::changelog::{assemble, decode_record, encode_record, parse_key, Key};
use leadscore::engine::{Applied, Engine, Transition};
use leadscore::event::{decode, DecodeOptions};
use leadscore::generate::{GenerateOptions, Generator};
use leadscore::model::Model;
use leadscore::transition::write_json;

/// The example model with a short half-life and `forget_after`, so that over the generated hours
/// decay crosses thresholds and leads are forgotten and come back.
fn model() -> Arc<Model> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/model.toml")).expect("model");
    assert!(text.contains("half_life = \"14d\"") && text.contains("forget_after = \"180d\""));
    let text = text
        .replace("half_life = \"14d\"", "half_life = \"20m\"")
        .replace("forget_after = \"180d\"", "forget_after = \"1h\"");
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
                // The engine writes records straight from its state: they must be exactly the
                // encoding of the state it exports (its ids in its buckets when it has many).
                for (k, v) in &log[from..] {
                    let (Ok(Key::Lead(id)), Some(v)) = (parse_key(k), v) else { continue };
                    let mut want = writer.export_lead(id).expect("a lead with a record is tracked");
                    let bits = decode_record(v).expect("decodes").id_bucket_bits;
                    if bits > 0 {
                        want.event_ids.clear();
                        want.id_bucket_bits = bits;
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
            assert!(
                log.iter().any(|(k, _)| matches!(parse_key(k), Ok(Key::Bucket { .. }))),
                "busy leads keep their ids in buckets"
            );
        }
        // What a reader of the topic rebuilds (the last record per key, buckets merged) is the
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
