//! A lead's whole state in and out of the engine, for the state changelog: what changed goes
//! out as [`LeadRecord`]s (and tombstones), and a restore puts records back.
//!
//! A restored lead behaves exactly as the lead that was written: same totals to the bit, same
//! limits, attributes, remembered event ids and transition count; its next decay-driven crossing
//! is recomputed from that state (it is a function of it), so scheduled crossings survive too.

use super::{Attr, Engine, IdSegments, COL_GROUPS, COL_UNGROUPED, NO_WINDOW};
use crate::changelog::{
    bucket_key, encode_ids, encode_record, parse_key, segment_key, visit_ids, visit_record, AttrRef, AttrValue,
    ChangelogError, Key, LeadRecord, Part, INLINE_IDS, SEGMENT_IDS, SEGMENT_MAX_IDS,
};

impl Attr {
    fn to_record(&self) -> AttrValue {
        self.borrowed().to_owned_value()
    }

    /// The value as the changelog's borrowed form.
    pub(super) fn borrowed(&self) -> AttrRef<'_> {
        match self {
            Attr::Str(s) => AttrRef::Str(s),
            Attr::Num(n) => AttrRef::Num(*n),
            Attr::Bool(b) => AttrRef::Bool(*b),
            Attr::Composite => AttrRef::Composite,
        }
    }

    fn from_ref(v: AttrRef<'_>) -> Attr {
        match v {
            AttrRef::Str(s) => Attr::Str(s.into()),
            AttrRef::Num(n) => Attr::Num(n),
            AttrRef::Bool(b) => Attr::Bool(b),
            AttrRef::Composite => Attr::Composite,
        }
    }
}

impl Engine {
    /// The 64-bit hash under which an event id is remembered (and stored in the changelog).
    pub fn event_id_hash(&self, event_id: &str) -> u64 {
        use std::hash::BuildHasher;
        self.event_id_hasher.hash_one(event_id.as_bytes())
    }

    /// Leads changed (or removed) since the last [`Engine::drain_changelog`].
    pub fn changed_leads(&self) -> usize {
        self.journal.as_ref().map_or(0, |j| j.dirty.len() + j.removed.len())
    }

    /// Hands every change since the last call to `out`, as state-topic records: `(key,
    /// Some(value))` for a lead whose state changed (after the segment records it sealed, see
    /// [`crate::changelog`]), `(key, None)` for what `forget_after` removed (the lead and its
    /// segments) or what no longer exists (segments whose ids left the dedup window). Removals
    /// come first, so a lead removed and back within one drain ends with its new state. Nothing
    /// on an engine built without [`Engine::with_changelog`].
    pub fn drain_changelog(&mut self, mut out: impl FnMut(&[u8], Option<&[u8]>)) {
        let Some(journal) = self.journal.as_mut() else { return };
        let removed = std::mem::take(&mut journal.removed);
        let dirty = std::mem::take(&mut journal.dirty);
        let mut buf = std::mem::take(&mut journal.buf);
        let mut ids = std::mem::take(&mut journal.ids);
        let mut key = std::mem::take(&mut journal.key);
        for g in &removed {
            delete_records(&g.lead, g.record, g.legacy_bits, g.segments, &mut key, &mut out);
        }
        for (i, &slot) in dirty.iter().enumerate() {
            // The changed leads are spread over the whole state: request each lead's core, then
            // its row, id and event ids, some leads ahead (as `Engine::prefetch` does).
            if let Some(&ahead) = dirty.get(i + 16) {
                self.store.prefetch_slot(ahead);
            }
            if let Some(&ahead) = dirty.get(i + 8) {
                self.store.prefetch_lead(ahead, None);
            }
            let core = &mut self.store.cores[slot as usize];
            if !core.live() || !core.dirty() {
                continue;
            }
            core.set_dirty(false);
            let tau = core.tau;
            let id = self.store.id(slot);
            if self.expired(slot) {
                // Removed with its id records (the sweep gives the memory back later).
                let segments = self.id_segments.remove(&slot).map_or((0, 0), |s| (s.first, s.next()));
                let legacy_bits = self.legacy_buckets.remove(&slot).unwrap_or(0);
                delete_records(id, true, legacy_bits, segments, &mut key, &mut out);
                continue;
            }
            if let Some(bits) = self.legacy_buckets.remove(&slot) {
                // Its ids go into this record or new segments, below.
                delete_records(id, false, bits, (0, 0), &mut key, &mut out);
            }
            let oldest = tau.saturating_sub(self.model.dedup_window_ms);
            ids.clear();
            if let Some(s) = self.id_segments.get_mut(&slot) {
                // Segments whose newest id has left the window can make no duplicate.
                while s.newest.front().is_some_and(|&c| c < oldest) {
                    segment_key(id, s.first, &mut key);
                    out(&key, None);
                    s.first += 1;
                    s.newest.pop_front();
                }
                s.open.retain(|&(_, c)| c >= oldest);
                if s.open.len() >= SEGMENT_IDS {
                    let open = std::mem::take(&mut s.open);
                    seal(id, &open, s, &mut key, &mut buf, &mut out);
                    s.open = open;
                    s.open.clear();
                }
                if s.newest.is_empty() {
                    // Nothing sealed is left in the window: a lead without segments again (its
                    // live ids are all open ones), whose next segment is number 0.
                    self.id_segments.remove(&slot);
                }
            }
            let segments = match self.id_segments.get(&slot) {
                Some(s) => {
                    ids.extend_from_slice(&s.open);
                    (s.first, s.next())
                }
                None => {
                    ids.extend(self.store.ids_entries(slot).filter(|e| e[1] >= oldest).map(|e| (e[0] as u64, e[1])));
                    if ids.len() > INLINE_IDS {
                        // Too many for its record: all sealed, in clock order (so that segments
                        // leave the window oldest first).
                        ids.sort_unstable_by_key(|&(h, c)| (c, h));
                        let mut s = IdSegments::default();
                        seal(id, &ids, &mut s, &mut key, &mut buf, &mut out);
                        ids.clear();
                        let range = (s.first, s.next());
                        self.id_segments.insert(slot, s);
                        range
                    } else {
                        ids.sort_unstable();
                        (0, 0)
                    }
                }
            };
            buf.clear();
            self.encode_slot(slot, &mut buf, &ids, segments);
            out(self.store.id(slot).as_bytes(), Some(&buf));
        }
        let journal = self.journal.as_mut().expect("journal");
        // Keep the allocations for the next drain.
        journal.removed = removed;
        journal.removed.clear();
        journal.dirty = dirty;
        journal.dirty.clear();
        journal.buf = buf;
        journal.ids = ids;
        journal.key = key;
    }

    /// The changelog record of a lead, byte for byte `encode_record` of its exported state
    /// with `ids` in it and its other ids in segments `segments`, written straight from the
    /// engine's state: a commit writes one per lead changed in the interval, so it must not
    /// allocate.
    fn encode_slot(&self, slot: u32, out: &mut Vec<u8>, ids: &[(u64, i64)], segments: (u32, u32)) {
        use crate::changelog::{
            count16, put_attr, put_str, HAS_ATTRIBUTES, HAS_FIXED, HAS_UNGROUPED, QUALIFIED, VERSION,
        };
        let core = &self.store.cores[slot as usize];
        let (mask, _) = self.store.row(slot);
        let has = |col: usize| mask & (1 << col) != 0;
        let model = &self.model;
        let attrs = match self.attrs.get(slot as usize) {
            Some(Some(a)) => Some(a),
            _ => None,
        };
        out.push(VERSION);
        out.extend_from_slice(&core.tau.to_le_bytes());
        out.extend_from_slice(&core.last_at.to_le_bytes());
        out.extend_from_slice(&core.transitions.to_le_bytes());
        let mut flags = 0;
        if core.qualified() {
            flags |= QUALIFIED;
        }
        if has(COL_UNGROUPED) {
            flags |= HAS_UNGROUPED;
        }
        if has(self.col_fixed) {
            flags |= HAS_FIXED;
        }
        if attrs.is_some() {
            flags |= HAS_ATTRIBUTES;
        }
        out.push(flags);
        for col in [COL_UNGROUPED, self.col_fixed] {
            if has(col) {
                out.extend_from_slice(&self.store.get(slot, col, 0).to_le_bytes());
            }
        }
        let groups = (0..self.n_groups).filter(|&g| has(COL_GROUPS + g));
        out.extend_from_slice(&count16(groups.clone().count()));
        for g in groups {
            put_str(out, &model.groups[g].name);
            out.extend_from_slice(&self.store.get(slot, COL_GROUPS + g, 0).to_le_bytes());
        }
        let limits = (0..model.rules.len()).filter(|&r| self.limit_col[r] != usize::MAX && has(self.limit_col[r]));
        out.extend_from_slice(&count16(limits.clone().count()));
        for r in limits {
            let packed = self.store.get(slot, self.limit_col[r], NO_WINDOW);
            put_str(out, &model.rules[r].id);
            out.extend_from_slice(&(packed >> 16).to_le_bytes());
            out.extend_from_slice(&((packed & 0xffff) as u16).to_le_bytes());
        }
        if let Some(attrs) = attrs {
            out.extend_from_slice(&count16(attrs.len()));
            for (name, value) in self.attr_names.iter().zip(attrs.iter()) {
                put_str(out, name);
                put_attr(out, value.as_ref().map(Attr::borrowed));
            }
        }
        out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
        for (hash, clock) in ids {
            out.extend_from_slice(&hash.to_le_bytes());
            out.extend_from_slice(&clock.to_le_bytes());
        }
        out.extend_from_slice(&segments.0.to_le_bytes());
        out.extend_from_slice(&segments.1.to_le_bytes());
    }

    /// A lead's whole state, as its changelog record holds it; `None` for a lead not in state.
    pub fn export_lead(&self, lead_id: &str) -> Option<LeadRecord> {
        self.find(lead_id).map(|slot| self.export_slot(slot))
    }

    fn export_slot(&self, slot: u32) -> LeadRecord {
        let core = &self.store.cores[slot as usize];
        let (mask, _) = self.store.row(slot);
        let has = |col: usize| mask & (1 << col) != 0;
        let model = &self.model;
        let groups = (0..self.n_groups)
            .filter(|&g| has(COL_GROUPS + g))
            .map(|g| (model.groups[g].name.clone(), self.f(slot, COL_GROUPS + g)))
            .collect();
        let limits = (0..model.rules.len())
            .filter(|&r| self.limit_col[r] != usize::MAX && has(self.limit_col[r]))
            .map(|r| {
                let packed = self.store.get(slot, self.limit_col[r], NO_WINDOW);
                (model.rules[r].id.clone(), packed >> 16, (packed & 0xffff) as u16)
            })
            .collect();
        let attributes = match self.attrs.get(slot as usize) {
            Some(Some(attrs)) => Some(
                self.attr_names
                    .iter()
                    .zip(attrs.iter())
                    .map(|(name, v)| (name.clone(), v.as_ref().map(Attr::to_record)))
                    .collect(),
            ),
            _ => None,
        };
        let oldest = core.tau.saturating_sub(model.dedup_window_ms);
        let mut event_ids: Vec<(u64, i64)> =
            self.store.ids_entries(slot).filter(|e| e[1] >= oldest).map(|e| (e[0] as u64, e[1])).collect();
        event_ids.sort_unstable();
        LeadRecord {
            tau_ms: core.tau,
            last_transition_at_ms: (core.last_at != i64::MIN).then_some(core.last_at),
            transitions: core.transitions,
            qualified: core.qualified(),
            ungrouped: has(COL_UNGROUPED).then(|| self.f(slot, COL_UNGROUPED)),
            fixed: has(self.col_fixed).then(|| self.f(slot, self.col_fixed)),
            groups,
            limits,
            attributes,
            event_ids,
            id_segments: (0, 0),
            id_bucket_bits: 0,
        }
    }

    /// Applies one changelog record during a restore: `Some(value)` sets the lead's whole state
    /// (replacing any it had), `None` (a tombstone) removes the lead. Records are applied in log
    /// order, so the last one for a lead wins, as compaction would have it. A damaged record is
    /// an error and changes nothing.
    pub fn restore(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), ChangelogError> {
        match parse_key(key)? {
            Key::Lead(lead_id) => match value {
                Some(v) => self.import_record(lead_id, v),
                None => {
                    self.forget_lead(lead_id);
                    Ok(())
                }
            },
            Key::Segment { .. } | Key::Bucket { .. } => {
                // Applied once every record is read (`finish_restore`): a lead's record names
                // which segments (or buckets) hold its ids, and the log may hold either first.
                self.restore_buckets.insert(key.into(), value.map(Into::into));
                Ok(())
            }
        }
    }

    /// Ends a restore: gives each lead the ids of the segments (or version 1 buckets) its
    /// record names (ids the window no longer covers are dropped; an id in two keeps its
    /// newest clock). Returns the segment and bucket records that could not be read (each
    /// skipped).
    pub fn finish_restore(&mut self) -> Vec<ChangelogError> {
        self.fit_memo = Default::default();
        let mut damaged = Vec::new();
        let mut ids = Vec::new();
        for (key, value) in std::mem::take(&mut self.restore_buckets) {
            let Some(value) = value else { continue };
            // The lead, and the segment's place among its segments.
            let (slot, segment) = match parse_key(&key) {
                Ok(Key::Bucket { lead, bits, .. }) => {
                    match self.store.find(lead).filter(|s| self.legacy_buckets.get(s) == Some(&bits)) {
                        Some(slot) => (slot, None),
                        None => continue, // a lead gone since, or a bucket of an older layout
                    }
                }
                Ok(Key::Segment { lead, seq }) => {
                    let found = self.store.find(lead).and_then(|slot| {
                        let s = self.id_segments.get(&slot)?;
                        (s.first..s.next()).contains(&seq).then_some((slot, Some((seq - s.first) as usize)))
                    });
                    match found {
                        Some(f) => f,
                        None => continue, // a lead gone since, or a segment deleted from its list
                    }
                }
                _ => continue,
            };
            ids.clear();
            if let Err(e) = visit_ids(&value, |h, c| ids.push((h, c))) {
                damaged.push(e);
                continue;
            }
            let oldest = self.store.cores[slot as usize].tau.saturating_sub(self.model.dedup_window_ms);
            for &(h, c) in ids.iter().filter(|&&(_, c)| c >= oldest) {
                if self.store.ids_get(slot, h).is_none_or(|had| had < c) {
                    self.store.ids_remember(slot, h, c, oldest);
                }
            }
            if let (Some(i), Some(s)) = (segment, self.id_segments.get_mut(&slot)) {
                s.newest[i] = ids.iter().map(|&(_, c)| c).max().unwrap_or(i64::MIN);
            }
        }
        damaged
    }

    /// Starts loading the lead index entry a restore of this key will look at (see
    /// [`Engine::prefetch`]): a restore reads records of leads spread over the whole state.
    pub fn prefetch_key(&self, key: &[u8]) {
        // The bytes' hash is the id's: no UTF-8 check for a hint (the key is checked when the
        // record is applied; a segment key's prefetch is only wasted).
        self.store.prefetch_index(self.store.hash_bytes(key));
    }

    /// Room for `additional` more leads (a restore knows roughly how many records come).
    pub fn reserve(&mut self, additional: usize) {
        self.store.reserve(additional);
    }

    /// Removes a lead from state (a tombstone read during a restore).
    fn forget_lead(&mut self, lead_id: &str) {
        if let Some(slot) = self.store.find(lead_id) {
            self.id_segments.remove(&slot);
            self.legacy_buckets.remove(&slot);
            if let Some(a) = self.attrs.get_mut(slot as usize) {
                *a = None;
            }
            self.store.remove(slot);
        }
    }

    /// Sets a lead's whole state from a record. Columns the current model does not have (a
    /// group or limited rule since removed) are dropped; fit points are recomputed from the
    /// attributes under the current model. Not journaled: the record is already in the log.
    /// `r` must hold all the lead's ids itself (`id_segments` empty), as [`Engine::export_lead`]
    /// and [`crate::changelog::assemble`] give them: segments are only read by a restore.
    pub fn import_lead(&mut self, lead_id: &str, r: &LeadRecord) {
        assert_eq!(r.id_segments.0, r.id_segments.1, "import_lead takes a record with its ids inline");
        let mut buf = Vec::new();
        encode_record(r, &mut buf);
        self.import_record(lead_id, &buf).expect("an encoded record decodes");
    }

    /// Reads a record in one pass into scratch (the row by column, attributes, event ids), then
    /// sets the lead's whole state from it, the row stored once: a damaged record changes
    /// nothing, and a restore of millions of leads does no more than it must per record.
    fn import_record(&mut self, lead_id: &str, value: &[u8]) -> Result<(), ChangelogError> {
        let mut row = [0u64; 64];
        let mut mask = 0u64;
        let with_fits = !self.model.fits.is_empty();
        let n_attrs = self.attr_names.len();
        let mut attrs: Option<Box<[Option<Attr>]>> = None;
        let mut ids = std::mem::take(&mut self.import_ids);
        ids.clear();
        let names = &self.names;
        let header = visit_record(value, |part| match part {
            Part::Group(name, total) => {
                if let Some(&col) = names.group_col.get(name) {
                    row[col] = total.to_bits();
                    mask |= 1 << col;
                }
            }
            Part::Limit(id, window, count) => {
                if let Some(&col) = names.limit_col.get(id) {
                    row[col] = window << 16 | u64::from(count);
                    mask |= 1 << col;
                }
            }
            Part::Attribute(name, v) => {
                if let (true, Some(&i)) = (with_fits, names.attr.get(name)) {
                    attrs.get_or_insert_with(|| vec![None; n_attrs].into_boxed_slice())[i] = v.map(Attr::from_ref);
                }
            }
            Part::EventId(id_hash, clock) => ids.push([id_hash as i64, clock]),
        });
        let h = match header {
            Ok(h) => h,
            Err(e) => {
                self.import_ids = ids;
                return Err(e);
            }
        };
        if with_fits && h.has_attributes && attrs.is_none() {
            attrs = Some(vec![None; n_attrs].into_boxed_slice());
        }
        if let Some(v) = h.ungrouped {
            row[COL_UNGROUPED] = v.to_bits();
            mask |= 1 << COL_UNGROUPED;
        }
        if let Some(v) = h.fixed {
            row[self.col_fixed] = v.to_bits();
            mask |= 1 << self.col_fixed;
        }
        let (slot, new) = self.store.find_or_insert(lead_id, h.tau_ms);
        if !new {
            self.store.reset(slot, h.tau_ms);
        }
        // Its other ids come from its segments (or buckets), at `finish_restore`.
        if h.id_bucket_bits > 0 {
            self.legacy_buckets.insert(slot, h.id_bucket_bits);
        } else {
            self.legacy_buckets.remove(&slot);
        }
        self.id_segments.remove(&slot);
        {
            let core = &mut self.store.cores[slot as usize];
            core.last_at = h.last_transition_at_ms.unwrap_or(i64::MIN);
            core.transitions = h.transitions;
            core.set_qualified(h.qualified);
            core.set_dirty(false);
        }
        if with_fits {
            if self.attrs.len() <= slot as usize {
                self.attrs.resize_with(slot as usize + 1, || None);
            }
            let fit = self.fit_sum_memo(attrs.as_deref());
            if fit != 0.0 {
                row[self.col_fit] = fit.to_bits();
                mask |= 1 << self.col_fit;
            }
            self.attrs[slot as usize] = attrs;
        }
        // The scheduled crossing is a function of the state: recomputed, not stored.
        let due = self.crossing_due_of(slot, self.steady_of(mask, &row), self.engagement_of(mask, &row));
        if let Some(due) = self.push_timer(slot, due, false, 0) {
            row[self.col_timer] = due as u64;
            mask |= 1 << self.col_timer;
        }
        self.store.store_row(slot, mask, &row);
        // Only ids the window still covers; a damaged record could list one twice, and the
        // table wants distinct ones (the newest).
        let oldest = h.tau_ms.saturating_sub(self.model.dedup_window_ms);
        ids.retain(|e| e[1] >= oldest);
        let (first, next) = h.id_segments;
        if first < next {
            // The record's ids are those remembered since the last seal: still open.
            let mut open: Vec<(u64, i64)> = ids.iter().map(|e| (e[0] as u64, e[1])).collect();
            open.sort_by_key(|&(_, c)| c);
            let newest = std::iter::repeat_n(i64::MIN, (next - first) as usize).collect();
            self.id_segments.insert(slot, IdSegments { first, newest, open });
        }
        ids.sort_unstable_by(|a, b| a[0].cmp(&b[0]).then(b[1].cmp(&a[1])));
        ids.dedup_by_key(|e| e[0]);
        self.store.ids_build(slot, &ids);
        self.import_ids = ids;
        Ok(())
    }
}

/// Writes `ids` (in clock order) as the lead's next segments, at most [`SEGMENT_MAX_IDS`] each.
fn seal(
    lead_id: &str,
    ids: &[(u64, i64)],
    s: &mut IdSegments,
    key: &mut Vec<u8>,
    buf: &mut Vec<u8>,
    out: &mut impl FnMut(&[u8], Option<&[u8]>),
) {
    for chunk in ids.chunks(SEGMENT_MAX_IDS) {
        segment_key(lead_id, s.next(), key);
        buf.clear();
        encode_ids(chunk, buf);
        out(key, Some(buf));
        s.newest.push_back(chunk.iter().map(|&(_, c)| c).max().unwrap_or(i64::MIN));
    }
}

/// Tombstones for a lead's record (if `record`), its version 1 buckets (`legacy_bits` > 0) and
/// its segments `first..next`.
fn delete_records(
    lead_id: &str,
    record: bool,
    legacy_bits: u8,
    (first, next): (u32, u32),
    key: &mut Vec<u8>,
    out: &mut impl FnMut(&[u8], Option<&[u8]>),
) {
    if record {
        out(lead_id.as_bytes(), None);
    }
    if legacy_bits > 0 {
        for index in 0..(1u32 << legacy_bits) {
            bucket_key(lead_id, legacy_bits, index as u16, key);
            out(key, None);
        }
    }
    for seq in first..next {
        segment_key(lead_id, seq, key);
        out(key, None);
    }
}
