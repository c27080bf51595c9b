//! Wire format out: one transition as the JSON object of spec section 5.
//!
//! Written by hand into a reused buffer (field order fixed, numbers by `ryu` through
//! `serde_json`'s formatter, so `60.0` stays `60.0`); strings are escaped by `serde_json`.

use crate::engine::Transition;
use crate::model::Model;
use crate::time::write_rfc3339_ms;

fn write_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

fn write_f64(out: &mut Vec<u8>, v: f64) {
    serde_json::to_writer(&mut *out, &v).expect("writing to a Vec cannot fail");
}

/// Writes the items separated by commas.
fn write_list<T>(out: &mut Vec<u8>, items: impl Iterator<Item = T>, mut write: impl FnMut(&mut Vec<u8>, T)) {
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(out, item);
    }
}

/// Appends the JSON of `t` (no trailing newline) to `out`.
///
/// `id` is `<lead_id>:<model>:<n>`, stable across restarts and replays.
pub fn write_json(out: &mut Vec<u8>, model: &Model, t: &Transition) {
    out.extend_from_slice(b"{\"id\":");
    let mut id = String::with_capacity(t.lead_id.len() + model.name.len() + 8);
    id.push_str(&t.lead_id);
    id.push(':');
    id.push_str(&model.name);
    id.push(':');
    id.push_str(itoa::Buffer::new().format(t.n));
    write_str(out, &id);
    out.extend_from_slice(b",\"type\":\"");
    out.extend_from_slice(t.kind.event_type().as_bytes());
    out.extend_from_slice(b"\",\"lead_id\":");
    write_str(out, &t.lead_id);
    out.extend_from_slice(b",\"model\":");
    write_str(out, &model.name);
    out.extend_from_slice(b",\"model_version\":");
    write_str(out, &model.version);
    out.extend_from_slice(b",\"score\":");
    write_f64(out, t.score);
    out.extend_from_slice(b",\"threshold\":");
    write_f64(out, t.threshold);
    out.extend_from_slice(b",\"at\":\"");
    write_rfc3339_ms(out, t.at_ms);
    out.extend_from_slice(b"\",\"trigger\":");
    match &t.trigger {
        None => out.extend_from_slice(b"null"),
        Some(trigger) => {
            out.extend_from_slice(b"{\"event_id\":");
            match &trigger.event_id {
                Some(id) => write_str(out, id),
                None => out.extend_from_slice(b"null"),
            }
            out.extend_from_slice(b",\"type\":");
            write_str(out, &trigger.event_type);
            out.push(b'}');
        }
    }
    let b = &t.breakdown;
    out.extend_from_slice(b",\"breakdown\":{\"fit\":");
    write_f64(out, b.fit);
    out.extend_from_slice(b",\"fixed\":");
    write_f64(out, b.fixed);
    out.extend_from_slice(b",\"engagement\":");
    write_f64(out, b.engagement);
    out.extend_from_slice(b",\"groups\":{");
    write_list(out, model.groups.iter().zip(&b.groups), |out, (group, v)| {
        write_str(out, &group.name);
        out.push(b':');
        write_f64(out, *v);
    });
    out.extend_from_slice(b"},\"fit_rules\":[");
    write_list(out, b.fit_rules.iter(), |out, &f| write_str(out, &model.fits[f].id));
    // The rules the trigger scored (none for a decay-driven transition).
    out.extend_from_slice(b"],\"rules\":[");
    let rules = t.trigger.as_ref().map_or(&[][..], |trigger| &trigger.rules[..]);
    write_list(out, rules.iter(), |out, &r| write_str(out, &model.rules[r].id));
    out.extend_from_slice(b"]}}");
}

/// [`write_json`] into a new `String`.
pub fn to_json(model: &Model, t: &Transition) -> String {
    let mut out = Vec::with_capacity(256);
    write_json(&mut out, model, t);
    String::from_utf8(out).expect("JSON output is UTF-8")
}
