//! What the pipeline thread and the HTTP side share: one engine per task, the offsets processed
//! and committed per input partition, and the latest transitions for the status page.
//!
//! Each task's engine has a lock of its own: the pipeline holds one for a run of records of
//! that partition, and a scrape walks the engines one at a time, so a scrape over millions of
//! leads holds up one partition for a fraction of its walk instead of the whole pipeline.
//!
//! A *task* is a partition number, as in Kafka Streams: partition `p` of every input topic and
//! partition `p` of the state changelog. Producers key records by lead id with one partitioner,
//! so a lead's events sit in the same partition number of every input topic, and the range
//! assignor hands the same partition numbers of equally partitioned topics to one member; one
//! engine per task therefore sees all of a lead's events, and its changelog partition is `p`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rdkafka::TopicPartitionList;

use crate::engine::{Engine, Totals, Transition};
use crate::http::{distribution, Health, InstanceStatus, LeadAnswer, RecentTransition, StatusReport, StatusSource};
use crate::metrics::{count_into, score_bounds, ScoreSnapshot, ScoreSource};
use crate::model::Model;
use crate::time::format_rfc3339_ms;

use super::{offset_list, wall_ms};

/// Position in one assigned input partition.
struct Input {
    /// Offset after the last record processed (what a commit would store).
    next_offset: Option<i64>,
    /// What was last committed.
    committed: Option<i64>,
}

/// A task's engine, locked on its own.
pub(crate) type TaskEngine = Arc<Mutex<Engine>>;

/// Engines by task (partition number), positions by input partition.
#[derive(Default)]
struct Tasks {
    engines: BTreeMap<i32, TaskEngine>,
    inputs: BTreeMap<(String, i32), Input>,
}

/// State shared between the pipeline thread and the HTTP handlers.
pub struct Shared {
    model: Arc<Model>,
    health: Arc<Health>,
    partitions: Mutex<Tasks>,
    /// Who owns other partitions, and this instance's advertised URL (`run` only).
    owners: std::sync::OnceLock<(super::owners::Owners, String)>,
    /// Partitions of the input (0 until known): which partition a lead belongs to.
    partition_count: std::sync::atomic::AtomicUsize,
    /// Engines keep a changelog journal (exactly-once).
    changelog: std::sync::atomic::AtomicBool,
    latest: Mutex<VecDeque<RecentTransition>>,
    events: AtomicU64,
    rejected: AtomicU64,
    transitions: AtomicU64,
    /// Records behind the high watermark over owned partitions; -1 before the first statistics.
    lag: AtomicI64,
    /// This instance's name (its `transactional_id`: stable per instance) and the input topics
    /// (`run` only).
    identity: std::sync::OnceLock<(String, Vec<String>)>,
    /// The average score over the last hour, sampled at most every [`HISTORY_STEP_MS`], for the
    /// status page's trend.
    history: Mutex<VecDeque<(i64, f64)>>,
}

/// Spacing of the average-score samples kept for the status page.
const HISTORY_STEP_MS: i64 = 10_000;
/// How far back the samples go.
const HISTORY_MS: i64 = 3_600_000;

const LATEST: usize = StatusReport::LATEST_TRANSITIONS;

/// The position of one input partition, found without allocating a key: this runs once per
/// record, and an instance owns a handful of partitions, so a scan beats building a `(String, i32)`.
fn input_mut<'a>(inputs: &'a mut BTreeMap<(String, i32), Input>, topic: &str, partition: i32) -> Option<&'a mut Input> {
    inputs.iter_mut().find(|((t, p), _)| *p == partition && t == topic).map(|(_, i)| i)
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
            partitions: Mutex::new(Tasks::default()),
            changelog: std::sync::atomic::AtomicBool::new(false),
            partition_count: std::sync::atomic::AtomicUsize::new(0),
            owners: std::sync::OnceLock::new(),
            latest: Mutex::new(VecDeque::with_capacity(LATEST)),
            events: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            transitions: AtomicU64::new(0),
            lag: AtomicI64::new(-1),
            identity: std::sync::OnceLock::new(),
            history: Mutex::new(VecDeque::new()),
        })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub(crate) fn set_owners(&self, owners: super::owners::Owners, advertise: String) {
        let _ = self.owners.set((owners, advertise));
    }

    /// Where a lead not in state here would be: `Elsewhere` when its partition
    /// (`murmur2(lead_id) % partitions`) is assigned to another member of the group.
    fn locate(&self, lead_id: &str) -> LeadAnswer {
        let (Some(n), Some((owners, me))) = (self.partition_count(), self.owners.get()) else {
            return LeadAnswer::NotFound;
        };
        let p = crate::partition::lead_partition(lead_id, n);
        if lock(&self.partitions).engines.contains_key(&p) {
            return LeadAnswer::NotFound;
        }
        match owners.owner_of(p) {
            Some(url) if url != *me => {
                LeadAnswer::Elsewhere { owner: url.clone(), url: crate::http::lead_url(&url, lead_id) }
            }
            _ => LeadAnswer::NotFound,
        }
    }

    pub(crate) fn set_identity(&self, instance: String, input_topics: Vec<String>) {
        let _ = self.identity.set((instance, input_topics));
    }

    /// Keeps a sample of the average score for the trend (at most one per [`HISTORY_STEP_MS`]).
    fn sample_average(&self, now: i64, totals: &Totals) {
        if totals.leads == 0 {
            // No lead (starting, or restoring): 0 would read as the average falling to zero.
            return;
        }
        let average = totals.average();
        let mut h = lock(&self.history);
        if h.back().is_some_and(|&(t, _)| now - t < HISTORY_STEP_MS && now >= t) {
            return;
        }
        h.push_back((now, average));
        while h.front().is_some_and(|&(t, _)| t < now - HISTORY_MS) {
            h.pop_front();
        }
    }

    /// Takes a sample of the average score if the last is older than [`HISTORY_STEP_MS`] (the
    /// service calls this every few seconds, so the trend exists before anyone looks).
    pub fn sample_history(&self) {
        let now = wall_ms();
        if lock(&self.history).back().is_some_and(|&(t, _)| now - t < HISTORY_STEP_MS && now >= t) {
            return;
        }
        let snap = self.snapshot_at(now, &[]);
        self.sample_average(now, &snap.totals);
    }

    pub(crate) fn set_partition_count(&self, n: usize) {
        self.partition_count.store(n, Ordering::Relaxed);
    }

    /// Partitions of the input, once known.
    pub fn partition_count(&self) -> Option<usize> {
        Some(self.partition_count.load(Ordering::Relaxed)).filter(|&n| n > 0)
    }

    /// Engines from now on keep a changelog journal (exactly-once).
    pub(crate) fn keep_changelog(&self) {
        self.changelog.store(true, Ordering::Relaxed);
    }

    /// An empty engine for a task.
    pub(crate) fn new_engine(&self) -> Engine {
        if self.changelog.load(Ordering::Relaxed) {
            Engine::with_changelog(Arc::clone(&self.model))
        } else {
            Engine::new(Arc::clone(&self.model))
        }
    }

    /// Takes on newly assigned input partitions, with an empty engine for each new task.
    /// Returns the task numbers that were new.
    pub(crate) fn add_partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        let mut tasks = lock(&self.partitions);
        let mut added = Vec::new();
        for e in tpl.elements() {
            tasks
                .inputs
                .entry((e.topic().to_owned(), e.partition()))
                .or_insert(Input { next_offset: None, committed: None });
            if let std::collections::btree_map::Entry::Vacant(v) = tasks.engines.entry(e.partition()) {
                v.insert(Arc::new(Mutex::new(self.new_engine())));
                added.push(e.partition());
            }
        }
        added
    }

    /// Puts a restored engine in place of a task's engine (if the task is still assigned).
    pub(crate) fn set_engine(&self, task: i32, engine: Engine) {
        let slot = lock(&self.partitions).engines.get(&task).cloned();
        if let Some(e) = slot {
            *lock(&e) = engine;
        }
    }

    /// The engine of a task, if it is assigned.
    pub(crate) fn engine(&self, task: i32) -> Option<TaskEngine> {
        lock(&self.partitions).engines.get(&task).cloned()
    }

    /// Every assigned task's engine (the list is copied, so no engine is locked meanwhile).
    fn engines(&self) -> Vec<TaskEngine> {
        lock(&self.partitions).engines.values().cloned().collect()
    }

    /// Assigned tasks.
    pub(crate) fn tasks(&self) -> Vec<i32> {
        lock(&self.partitions).engines.keys().copied().collect()
    }

    /// Assigned input partitions.
    pub(crate) fn inputs(&self) -> TopicPartitionList {
        let tasks = lock(&self.partitions);
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in tasks.inputs.keys() {
            tpl.add_partition(topic, *partition);
        }
        tpl
    }

    /// Drops the positions of revoked partitions, and the engines of tasks with no input
    /// partition left. Returns how many input partitions were dropped.
    pub(crate) fn drop_partitions(&self, tpl: &TopicPartitionList) -> usize {
        let mut tasks = lock(&self.partitions);
        let dropped = tpl
            .elements()
            .iter()
            .filter(|e| tasks.inputs.remove(&(e.topic().to_owned(), e.partition())).is_some())
            .count();
        let Tasks { engines, inputs } = &mut *tasks;
        engines.retain(|task, _| inputs.keys().any(|(_, p)| p == task));
        dropped
    }

    /// After an aborted transaction: every input continues from `positions` (the committed
    /// offsets), nothing processed since.
    pub(crate) fn rewound(&self, positions: &[(String, i32, Option<i64>)]) {
        let mut tasks = lock(&self.partitions);
        for (topic, partition, committed) in positions {
            if let Some(i) = input_mut(&mut tasks.inputs, topic, *partition) {
                i.next_offset = *committed;
                i.committed = *committed;
            }
        }
    }

    /// Is this input partition assigned here?
    pub fn owns(&self, topic: &str, partition: i32) -> bool {
        input_mut(&mut lock(&self.partitions).inputs, topic, partition).is_some()
    }

    /// Hands every task's changelog changes to `out` (task, lead id, record or tombstone).
    pub(crate) fn drain_changelog(&self, mut out: impl FnMut(i32, &[u8], Option<&[u8]>)) {
        let engines: Vec<(i32, TaskEngine)> =
            lock(&self.partitions).engines.iter().map(|(&t, e)| (t, Arc::clone(e))).collect();
        for (task, engine) in engines {
            lock(&engine).drain_changelog(|id, v| out(task, id, v));
        }
    }

    /// Leads changed since the last drain, over all tasks.
    pub(crate) fn changed_leads(&self) -> usize {
        self.engines().iter().map(|e| lock(e).changed_leads()).sum()
    }

    pub(crate) fn set_lag(&self, lag: i64) {
        self.lag.store(lag, Ordering::Relaxed);
    }

    /// Input partitions owned now (of the input topics; the repartition topic's, assigned
    /// beside them, are not counted).
    pub fn assigned(&self) -> usize {
        let tasks = lock(&self.partitions);
        match self.identity.get() {
            Some((_, inputs)) => tasks.inputs.keys().filter(|(t, _)| inputs.contains(t)).count(),
            None => tasks.inputs.len(),
        }
    }

    /// Records that everything before `next_offset` of an input partition is processed.
    pub(crate) fn set_position(&self, topic: &str, partition: i32, next_offset: i64) {
        if let Some(input) = input_mut(&mut lock(&self.partitions).inputs, topic, partition) {
            input.next_offset = Some(next_offset);
        }
    }

    /// Adds a batch's counts to the status page's totals.
    pub(crate) fn count(&self, events: u64, rejected: u64) {
        self.events.fetch_add(events, Ordering::Relaxed);
        self.rejected.fetch_add(rejected, Ordering::Relaxed);
    }

    /// Fires the crossings due by `now` in every partition.
    pub(crate) fn advance_all(&self, now: i64, out: &mut impl FnMut(Transition)) {
        for engine in self.engines() {
            lock(&engine).advance(now, out);
        }
    }

    /// Offsets processed but not committed yet, for all partitions or only those in `only`.
    pub(crate) fn offsets_to_commit(&self, only: Option<&TopicPartitionList>) -> TopicPartitionList {
        let tasks = lock(&self.partitions);
        offset_list(tasks.inputs.iter().filter_map(|((topic, partition), p)| {
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
        let mut tasks = lock(&self.partitions);
        for e in tpl.elements() {
            if let (Some(p), rdkafka::Offset::Offset(o)) =
                (tasks.inputs.get_mut(&(e.topic().to_owned(), e.partition())), e.offset())
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
        let mut cumulative = vec![0u64; bounds.len()];
        let mut totals = Totals::default();
        for engine in self.engines() {
            let t = lock(&engine).totals_with(now, |s| count_into(bounds, &mut cumulative, s));
            totals.leads += t.leads;
            totals.qualified += t.qualified;
            totals.score_sum += t.score_sum;
        }
        ScoreSnapshot { totals, cumulative }
    }

    /// A lead's current view as JSON, from whichever partition holds it.
    pub fn lead_json(&self, lead_id: &str, now: i64) -> Option<serde_json::Value> {
        let view = self.engines().iter().find_map(|e| lock(e).lead(lead_id, now))?;
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
            None => self.locate(lead_id),
        }
    }

    fn status(&self) -> serde_json::Value {
        let now = wall_ms();
        let bounds = score_bounds(&self.model);
        let snap = self.snapshot_at(now, &bounds);
        self.sample_average(now, &snap.totals);
        let latest = lock(&self.latest).iter().cloned().collect();
        let average_history = lock(&self.history).iter().map(|&(t, v)| (t, v)).collect();
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
            average_history,
            instance: InstanceStatus {
                id: self.identity.get().map(|(id, _)| id.clone()).unwrap_or_default(),
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
