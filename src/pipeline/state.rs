//! What the pipeline thread and the HTTP side share: one engine per assigned input partition,
//! the offsets processed and committed, and the latest transitions for the status page.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rdkafka::TopicPartitionList;

use crate::engine::{Applied, Engine, Totals, Transition};
use crate::event::LeadEvent;
use crate::http::{distribution, Health, InstanceStatus, LeadAnswer, RecentTransition, StatusReport, StatusSource};
use crate::metrics::{count_into, score_bounds, ScoreSnapshot, ScoreSource};
use crate::model::Model;
use crate::time::format_rfc3339_ms;

use super::{offset_list, wall_ms};

/// State of one assigned input partition.
struct Partition {
    engine: Engine,
    /// Offset after the last record processed (what a commit would store).
    next_offset: Option<i64>,
    /// What was last committed.
    committed: Option<i64>,
}

/// State shared between the pipeline thread and the HTTP handlers.
pub struct Shared {
    model: Arc<Model>,
    health: Arc<Health>,
    partitions: Mutex<BTreeMap<(String, i32), Partition>>,
    latest: Mutex<VecDeque<RecentTransition>>,
    events: AtomicU64,
    rejected: AtomicU64,
    transitions: AtomicU64,
    /// Records behind the high watermark over owned partitions; -1 before the first statistics.
    lag: AtomicI64,
}

const LATEST: usize = StatusReport::LATEST_TRANSITIONS;

/// The state of one partition, found without allocating a key: this runs once per record, and an
/// instance owns a handful of partitions, so a scan beats building a `(String, i32)`.
fn partition_mut<'a>(
    parts: &'a mut BTreeMap<(String, i32), Partition>,
    topic: &str,
    partition: i32,
) -> Option<&'a mut Partition> {
    parts.iter_mut().find(|((t, p), _)| *p == partition && t == topic).map(|(_, part)| part)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind, never a broken invariant that
    // later readers could trip on (engines are only mutated through whole method calls).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub fn new(model: Arc<Model>, health: Arc<Health>) -> Arc<Shared> {
        Arc::new(Shared {
            model,
            health,
            partitions: Mutex::new(BTreeMap::new()),
            latest: Mutex::new(VecDeque::with_capacity(LATEST)),
            events: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            transitions: AtomicU64::new(0),
            lag: AtomicI64::new(-1),
        })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Starts an empty engine for each newly assigned partition. Returns how many were added.
    pub(crate) fn add_partitions(&self, tpl: &TopicPartitionList) -> usize {
        let mut parts = lock(&self.partitions);
        let mut added = 0;
        for e in tpl.elements() {
            parts.entry((e.topic().to_owned(), e.partition())).or_insert_with(|| {
                added += 1;
                Partition { engine: Engine::new(Arc::clone(&self.model)), next_offset: None, committed: None }
            });
        }
        added
    }

    /// Drops the state of revoked partitions. Returns how many were dropped.
    pub(crate) fn drop_partitions(&self, tpl: &TopicPartitionList) -> usize {
        let mut parts = lock(&self.partitions);
        tpl.elements().iter().filter(|e| parts.remove(&(e.topic().to_owned(), e.partition())).is_some()).count()
    }

    /// Is this input partition assigned here?
    pub fn owns(&self, topic: &str, partition: i32) -> bool {
        partition_mut(&mut lock(&self.partitions), topic, partition).is_some()
    }

    pub(crate) fn set_lag(&self, lag: i64) {
        self.lag.store(lag, Ordering::Relaxed);
    }

    /// Partitions owned now.
    pub fn assigned(&self) -> usize {
        lock(&self.partitions).len()
    }

    /// Applies an event to its partition's engine, first moving that engine's clock to `now`.
    /// `None` when the partition is not assigned here.
    pub(crate) fn apply(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        ev: &LeadEvent<'_>,
        now: i64,
        out: &mut impl FnMut(Transition),
    ) -> Option<Applied> {
        let mut parts = lock(&self.partitions);
        let part = partition_mut(&mut parts, topic, partition)?;
        part.engine.advance(now, out);
        let applied = part.engine.apply(ev, out);
        part.next_offset = Some(offset + 1);
        match applied {
            Applied::Accepted => self.events.fetch_add(1, Ordering::Relaxed),
            Applied::Duplicate => self.rejected.fetch_add(1, Ordering::Relaxed),
        };
        Some(applied)
    }

    /// Marks a record as processed without applying it (a rejected record).
    pub(crate) fn processed(&self, topic: &str, partition: i32, offset: i64) {
        if let Some(part) = partition_mut(&mut lock(&self.partitions), topic, partition) {
            part.next_offset = Some(offset + 1);
        }
    }

    pub(crate) fn count_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Fires the crossings due by `now` in every partition.
    pub(crate) fn advance_all(&self, now: i64, out: &mut impl FnMut(Transition)) {
        for part in lock(&self.partitions).values_mut() {
            part.engine.advance(now, out);
        }
    }

    /// Offsets processed but not committed yet, for all partitions or only those in `only`.
    pub(crate) fn offsets_to_commit(&self, only: Option<&TopicPartitionList>) -> TopicPartitionList {
        let parts = lock(&self.partitions);
        offset_list(parts.iter().filter_map(|((topic, partition), p)| {
            let next = p.next_offset?;
            if p.committed == Some(next) {
                return None;
            }
            if let Some(only) = only {
                only.find_partition(topic, *partition)?;
            }
            Some((topic.clone(), *partition, next))
        }))
    }

    /// Records a successful commit.
    pub(crate) fn committed(&self, tpl: &TopicPartitionList) {
        let mut parts = lock(&self.partitions);
        for e in tpl.elements() {
            if let (Some(p), rdkafka::Offset::Offset(o)) =
                (parts.get_mut(&(e.topic().to_owned(), e.partition())), e.offset())
            {
                p.committed = Some(o);
            }
        }
    }

    pub(crate) fn record_transition(&self, t: &Transition) {
        self.transitions.fetch_add(1, Ordering::Relaxed);
        let mut latest = lock(&self.latest);
        if latest.len() == LATEST {
            latest.pop_back();
        }
        // Newest first, as the status page lists them.
        latest.push_front(RecentTransition {
            at: format_rfc3339_ms(t.at_ms),
            lead_id: t.lead_id.clone(),
            kind: t.kind.event_type().to_owned(),
            score: t.score,
        });
    }

    /// Totals over every partition at `now`, with the cumulative distribution over `bounds`.
    pub fn snapshot_at(&self, now: i64, bounds: &[f64]) -> ScoreSnapshot {
        let parts = lock(&self.partitions);
        let mut cumulative = vec![0u64; bounds.len()];
        let mut totals = Totals::default();
        for p in parts.values() {
            let t = p.engine.totals_with(now, |s| count_into(bounds, &mut cumulative, s));
            totals.leads += t.leads;
            totals.qualified += t.qualified;
            totals.score_sum += t.score_sum;
        }
        ScoreSnapshot { totals, cumulative }
    }

    /// A lead's current view as JSON, from whichever partition holds it.
    pub fn lead_json(&self, lead_id: &str, now: i64) -> Option<serde_json::Value> {
        let parts = lock(&self.partitions);
        let view = parts.values().find_map(|p| p.engine.lead(lead_id, now))?;
        Some(crate::http::lead_json(&self.model, &view, now))
    }
}

impl ScoreSource for Shared {
    fn snapshot(&self, bounds: &[f64]) -> ScoreSnapshot {
        self.snapshot_at(wall_ms(), bounds)
    }
}

impl StatusSource for Shared {
    fn lead(&self, lead_id: &str) -> LeadAnswer {
        match self.lead_json(lead_id, wall_ms()) {
            Some(v) => LeadAnswer::Found(v),
            None => LeadAnswer::NotFound,
        }
    }

    fn status(&self) -> serde_json::Value {
        let now = wall_ms();
        let bounds = score_bounds(&self.model);
        let snap = self.snapshot_at(now, &bounds);
        let latest = lock(&self.latest).iter().cloned().collect();
        let lag = self.lag.load(Ordering::Relaxed);
        let report = StatusReport {
            model: self.model.name.clone(),
            model_version: self.model.version.clone(),
            now: format_rfc3339_ms(now),
            qualify_at: self.model.qualify_at,
            disqualify_below: self.model.disqualify_below,
            average_score: snap.totals.average(),
            tracked_leads: snap.totals.leads as u64,
            qualified_leads: snap.totals.qualified as u64,
            events_total: self.events.load(Ordering::Relaxed),
            rejected_total: self.rejected.load(Ordering::Relaxed),
            transitions_total: self.transitions.load(Ordering::Relaxed),
            distribution: distribution(&bounds, &snap.cumulative, snap.totals.leads as u64),
            latest_transitions: latest,
            instance: InstanceStatus {
                id: String::new(),
                ready: self.health.is_ready(),
                assigned_partitions: self.assigned() as u64,
                lag: lag.max(0) as u64,
            },
        };
        let mut v = report.to_value();
        if lag < 0 {
            // Unknown until librdkafka's first statistics: the page shows a dash, not a zero.
            v["instance"]["lag"] = serde_json::Value::Null;
        }
        v
    }
}
