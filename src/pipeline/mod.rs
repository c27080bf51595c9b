//! The Kafka loop: consume, decode, score, publish, commit; rebalances and restores.
//!
//! One thread owns the consumer and drives everything that touches it, because its calls
//! block (commits, transactions, rebalance callbacks, which run inside `poll` on this thread).
//! Records are polled in batches and processed in runs of one partition: a run takes its
//! task's engine lock once, and what the run's events will touch is prefetched before the
//! first applies (see [`Engine::prefetch`]). The engines live per task behind their own locks
//! (see [`state`]), so the HTTP side reads scores between runs without a channel round trip.
//!
//! Every lead's state is also written to the compacted state topic (the changelog), one record
//! per lead changed in a commit interval, and restored from it when a task is assigned, before
//! the task processes anything. How commits work under each guarantee is in [`commit`]:
//!
//! - **exactly_once** (the default), Kafka Streams' `exactly_once_v2` without the JVM: one
//!   transaction per interval; an abortable error aborts it and rolls back (the tasks are
//!   reloaded from the changelog and the input is re-read from the committed offsets), so no
//!   effect of aborted input survives. A fatal error (fenced, or unclassified) stops the
//!   pipeline with an error and the process exits non-zero.
//! - **at_least_once**: offsets are committed only once everything the records before them
//!   caused (transitions, dead letters, forwarded records, changelog records) is acknowledged,
//!   without the loop ever waiting for it. After a crash, records since the last commit are
//!   applied again on top of a changelog that may already hold their effect.

mod commit;
mod owners;
mod restore;
mod state;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::local::{LocalHistogram, LocalIntCounter};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::Producer;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use crate::config::{Config, ProcessingGuarantee};
use crate::engine::{Applied, Engine, EventHashes, Transition, TransitionKind};
use crate::event::{decode, DecodeOptions, LeadEvent, RejectReason, Rejection};
use crate::http::Health;
use crate::metrics::Metrics;
use crate::model::Model;
use crate::transition::write_json;

use commit::{Committed, Committer, Delivery, Destination, Outgoing, OutputProducer, TXN_TIMEOUT};
pub use state::Shared;

/// Errors that stop the pipeline, each with a stable code.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot create a Kafka client: {0}")]
    Client(KafkaError),
    #[error("cannot subscribe to the input topics: {0}")]
    Subscribe(KafkaError),
    #[error("a record could not be delivered ({0} failure(s)); stopping before committing past it")]
    Delivery(u64),
    #[error("flushing the producer failed: {0}")]
    Flush(KafkaError),
    #[error("topics: {0}")]
    Topics(String),
    #[error("restoring state: {0}")]
    Restore(String),
    #[error("transaction failed for good (fenced by a newer instance, or a fatal producer error): {0}")]
    Transaction(KafkaError),
    #[error("rewinding to the last commit failed: {0}")]
    Rewind(KafkaError),
}

impl PipelineError {
    /// Stable code for logs and exit reasons.
    pub fn code(&self) -> &'static str {
        match self {
            PipelineError::Client(_) => "client",
            PipelineError::Subscribe(_) => "subscribe",
            PipelineError::Delivery(_) => "delivery",
            PipelineError::Flush(_) => "flush",
            PipelineError::Topics(_) => "topics",
            PipelineError::Restore(_) => "restore",
            PipelineError::Transaction(_) => "transaction",
            PipelineError::Rewind(_) => "rewind",
        }
    }
}

/// How often due crossings are checked between records (they are also checked before each run
/// of a partition's records), and local metrics published: the bound on how late a
/// decay-driven transition goes out.
const CROSSING_TICK: Duration = Duration::from_millis(100);

/// Records polled and processed together at most: enough to amortize the per-batch work and
/// overlap cache misses, few enough that commits and crossings run on time under load.
const BATCH: usize = 1024;

/// A loop turn (past its wait for records) this long is logged, at most every
/// [`SLOW_TURN_LOG_EVERY`].
const SLOW_TURN: Duration = Duration::from_millis(100);
const SLOW_TURN_LOG_EVERY: Duration = Duration::from_secs(10);

/// Test hook: abort every Nth transaction (see the README's test section).
const ABORT_EVERY_ENV: &str = "LEADSCORE_TEST_ABORT_EVERY";

/// Milliseconds since the epoch, from the wall clock: the clock of decay-driven crossings and
/// `future_timestamp` in `run`.
pub fn wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Rebalance handling, run by librdkafka inside `poll` on the pipeline thread.
pub struct Rebalancing {
    committer: Arc<Committer>,
}

impl ClientContext for Rebalancing {
    /// librdkafka's statistics (every `statistics.interval.ms`): consumer lag per partition.
    ///
    /// The lag is the last stable offset (what a `read_committed` reader can reach) minus the
    /// position (the next offset handed to this process), not librdkafka's `consumer_lag`: that
    /// one counts from the consumer's own committed offset, which transactional commits
    /// (`send_offsets_to_transaction`) never update, so under exactly-once it would freeze at
    /// the offset of the last assignment and grow with every record.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let c = &self.committer;
        let mut total = 0i64;
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // Partition -1 is librdkafka's internal UA partition.
                if *partition < 0 || !c.shared.owns(topic, *partition) {
                    continue;
                }
                let position = if p.app_offset >= 0 { p.app_offset } else { p.committed_offset };
                if p.ls_offset < 0 || position < 0 {
                    continue; // unknown yet
                }
                let lag = (p.ls_offset - position).max(0);
                c.metrics.consumer_lag.with_label_values(&[topic.as_str(), &partition.to_string()]).set(lag);
                total += lag;
            }
        }
        c.shared.set_lag(total);
    }
}

impl ConsumerContext for Rebalancing {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let c = &self.committer;
        c.rebalances.fetch_add(1, Ordering::Relaxed);
        if let Rebalance::Revoke(tpl) = rebalance {
            c.health.set_ready(false);
            let lost = consumer.assignment_lost();
            if lost {
                // Another member may own these partitions already: nothing of ours may commit.
                if c.exactly_once {
                    if let Err(e) = c.abort() {
                        c.fail(e);
                    }
                    c.rewind_needed.store(true, Ordering::Relaxed);
                } else {
                    c.forget_closed_epochs();
                }
            } else {
                // Finish what the revoked partitions caused and commit it, so the next owner
                // starts exactly after it; then drop their state.
                match c.commit_now(consumer) {
                    Ok(Committed::Aborted) => c.rewind_needed.store(true, Ordering::Relaxed),
                    Ok(_) => {}
                    Err(e) => c.fail(e),
                }
            }
            for e in tpl.elements() {
                // Not ours any more: the next owner exports its lag.
                let _ = c.metrics.consumer_lag.remove_label_values(&[e.topic(), &e.partition().to_string()]);
            }
            let dropped = c.shared.drop_partitions(tpl);
            if c.shared.tasks().is_empty() {
                c.rewind_needed.store(false, Ordering::Relaxed);
            }
            info!(partitions = dropped, lost, "partitions revoked");
            c.metrics.assigned_partitions.set(c.shared.assigned() as i64);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let c = &self.committer;
        c.rebalances.fetch_add(1, Ordering::Relaxed);
        match rebalance {
            Rebalance::Assign(tpl) => {
                let added = c.shared.add_partitions(tpl);
                info!(partitions = tpl.count(), new_tasks = ?added, "partitions assigned");
                c.metrics.assigned_partitions.set(c.shared.assigned() as i64);
                // Restore before anything is processed: the records of these partitions are
                // served by `poll`, which waits for this callback to return.
                match restore::restore_tasks(&c.cfg.kafka, &c.shared, &c.metrics, &added) {
                    Ok(engines) => {
                        for (task, engine) in engines {
                            c.shared.set_engine(task, engine);
                        }
                        c.health.set_ready(true);
                    }
                    Err(e) => c.fail(e),
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }
}

/// A running consume-score-publish loop.
pub struct Pipeline {
    consumer: BaseConsumer<Rebalancing>,
    worker: Worker,
}

/// Where records of leads that belong to another partition go.
struct Route {
    partitions: usize,
    /// The repartition topic: records read from it are always scored where they are.
    topic: String,
}

/// Counters and histograms of the hot path, kept locally (no atomic per record) and published
/// to the registry every [`CROSSING_TICK`].
struct LocalMetrics {
    /// `leadscore_events_total` by the index of the type in [`Metrics::known_types`], `other` last.
    events: Vec<LocalIntCounter>,
    /// `leadscore_events_rejected_total` by [`RejectReason::index`].
    rejected: Vec<LocalIntCounter>,
    processing: LocalHistogram,
    dead_letters: LocalIntCounter,
    repartitioned: LocalIntCounter,
    qualified: LocalIntCounter,
    disqualified: LocalIntCounter,
    /// `leadscore_rule_matches_total` by the index of the rule in the model.
    rules: Vec<LocalIntCounter>,
}

impl LocalMetrics {
    fn new(m: &Metrics, model: &Model) -> LocalMetrics {
        let mut events: Vec<LocalIntCounter> =
            m.known_types().iter().map(|t| m.events.with_label_values(&[t.as_str()]).local()).collect();
        events.push(m.events.with_label_values(&["other"]).local());
        let transitions =
            |kind: TransitionKind| m.transitions.with_label_values(&[model.name.as_str(), kind.label()]).local();
        LocalMetrics {
            events,
            rejected: RejectReason::ALL.iter().map(|r| m.rejected.with_label_values(&[r.code()]).local()).collect(),
            processing: m.processing.local(),
            dead_letters: m.dead_letters.local(),
            repartitioned: m.repartitioned.local(),
            qualified: transitions(TransitionKind::Qualified),
            disqualified: transitions(TransitionKind::Disqualified),
            rules: model
                .rules
                .iter()
                .map(|r| m.rule_matches.with_label_values(&[model.name.as_str(), r.id.as_str()]).local())
                .collect(),
        }
    }

    fn flush(&mut self) {
        for c in self.events.iter_mut().chain(self.rejected.iter_mut()).chain(self.rules.iter_mut()) {
            c.flush();
        }
        self.processing.flush();
        for c in [&mut self.dead_letters, &mut self.repartitioned, &mut self.qualified, &mut self.disqualified] {
            c.flush();
        }
    }
}

/// An accepted event of a run, waiting to be applied: the index of its record in the run.
struct Pending<'a> {
    record: usize,
    event: LeadEvent<'a>,
}

/// Everything but the consumer (messages borrow the consumer while they are processed).
struct Worker {
    route: Option<Route>,
    committer: Arc<Committer>,
    shared: Arc<Shared>,
    metrics: Metrics,
    local: LocalMetrics,
    decode: DecodeOptions,
    max_future_skew_ms: i64,
    json: Vec<u8>,
    /// Transitions of the current run, with what their latency is measured from.
    transitions: Vec<(Transition, i64)>,
    hashes: Vec<EventHashes>,
    slots: Vec<u32>,
}

impl Pipeline {
    /// Creates the clients (under exactly-once: initializes transactions, which fences and
    /// aborts whatever a previous instance with the same `transactional_id` left open). Nothing
    /// is consumed until [`Pipeline::run`].
    pub fn new(
        cfg: Config,
        model: Arc<Model>,
        metrics: Metrics,
        health: Arc<Health>,
        shared: Arc<Shared>,
    ) -> Result<Pipeline, PipelineError> {
        let exactly_once = cfg.kafka.processing_guarantee == ProcessingGuarantee::ExactlyOnce;
        shared.keep_changelog();
        let producer_cfg = if exactly_once {
            crate::kafka::transactional_producer_config(&cfg.kafka)
        } else {
            crate::kafka::producer_config(&cfg.kafka)
        };
        let producer: OutputProducer =
            producer_cfg.create_with_context(Delivery::new(metrics.clone())).map_err(PipelineError::Client)?;
        if exactly_once {
            producer.init_transactions(TXN_TIMEOUT).map_err(PipelineError::Transaction)?;
            info!("transactions initialized");
        }
        let abort_every = std::env::var(ABORT_EVERY_ENV).ok().and_then(|v| v.parse::<u64>().ok()).filter(|&n| n > 0);
        if let Some(n) = abort_every {
            warn!(every = n, "test hook {ABORT_EVERY_ENV} set: transactions will be aborted on purpose");
        }
        let committer =
            Arc::new(Committer::new(cfg.clone(), Arc::clone(&shared), producer, metrics.clone(), health, abort_every)?);
        let ctx = Rebalancing { committer: Arc::clone(&committer) };
        // The advertised URL rides in the client id, for `/leads/{id}` lookups by other members.
        let advertise = cfg.http.advertise_url();
        let client_id = format!("{}{advertise}", owners::CLIENT_ID_PREFIX);
        let consumer: BaseConsumer<Rebalancing> = crate::kafka::consumer_config(&cfg.kafka)
            .set("client.id", &client_id)
            .create_with_context(ctx)
            .map_err(PipelineError::Client)?;
        let lookup: BaseConsumer = crate::kafka::admin_config(&cfg.kafka).create().map_err(PipelineError::Client)?;
        shared.set_owners(
            owners::Owners::new(lookup, cfg.kafka.group_id.clone(), cfg.kafka.input_topics[0].clone()),
            advertise,
        );
        shared.set_identity(cfg.kafka.transactional_id(), cfg.kafka.input_topics.clone());
        let decode = DecodeOptions {
            max_event_bytes: cfg.input.max_event_bytes,
            fallback_timestamp_ms: None,
            latest_timestamp_ms: None,
        };
        let max_future_skew_ms = cfg.input.max_future_skew_ms();
        debug_assert!(model.name == shared.model().name);
        let worker = Worker {
            route: None,
            committer,
            shared,
            local: LocalMetrics::new(&metrics, &model),
            metrics,
            decode,
            max_future_skew_ms,
            json: Vec::with_capacity(1024),
            transitions: Vec::new(),
            hashes: Vec::with_capacity(BATCH),
            slots: Vec::with_capacity(BATCH),
        };
        Ok(Pipeline { consumer, worker })
    }

    /// Waits for the input topics (creating the state topic when missing), subscribes, and
    /// consumes until `shutdown` is set, then stops consuming, finishes in-flight work, flushes
    /// the producer and commits. Returns an error (and commits nothing further) when a delivery
    /// failed for good (at-least-once) or a transaction failed for good (exactly-once).
    pub fn run(self, shutdown: Arc<AtomicBool>) -> Result<(), PipelineError> {
        let Pipeline { consumer, mut worker } = self;
        let w = &mut worker;
        let c = Arc::clone(&w.committer);
        let Some(partitions) = restore::wait_for_topics(&c.cfg.kafka, &shutdown)? else {
            return Ok(());
        };
        c.shared.set_partition_count(partitions);
        let repartition_topic = c.cfg.kafka.repartition_topic();
        if c.cfg.kafka.repartition {
            w.route = Some(Route { partitions, topic: repartition_topic.clone() });
        }
        let mut topics: Vec<&str> = c.cfg.kafka.input_topics.iter().map(String::as_str).collect();
        if c.cfg.kafka.repartition {
            topics.push(&repartition_topic);
        }
        consumer.subscribe(&topics).map_err(PipelineError::Subscribe)?;
        let interval = Duration::from_millis(c.cfg.kafka.commit_interval_ms);
        let mut next_commit = Instant::now() + interval;
        // Exactly-once: whether this interval's early changelog batch went out.
        let mut early_changelog = false;
        let mut next_crossings = Instant::now() + CROSSING_TICK;
        info!(
            topics = ?c.cfg.kafka.input_topics,
            group = %c.cfg.kafka.group_id,
            guarantee = c.cfg.kafka.processing_guarantee.as_str(),
            "consuming"
        );
        let mut batch: Vec<BorrowedMessage<'_>> = Vec::with_capacity(BATCH);
        let mut last_slow: Option<Instant> = None;
        while !shutdown.load(Ordering::Relaxed) {
            // A short first wait, never past the next commit or crossing tick, so that they are
            // on time when no record comes (shutdown is noticed within it too); while a
            // transaction commits, 1 ms, so that its end is noticed at once (what was produced
            // meanwhile waits for it, and a transition's latency with it). Then what is already
            // fetched, without waiting, up to a batch.
            let rebalances = c.rebalances.load(Ordering::Relaxed);
            let until_tick = next_commit.min(next_crossings).saturating_duration_since(Instant::now());
            let most = if c.committing() { Duration::from_millis(1) } else { Duration::from_millis(20) };
            let mut timeout = until_tick.min(most);
            while batch.len() < BATCH {
                match consumer.poll(timeout) {
                    Some(Ok(msg)) => batch.push(msg),
                    Some(Err(e)) => {
                        warn!(error = %e, "consumer error");
                        break;
                    }
                    None => break,
                }
                timeout = Duration::ZERO;
            }
            if c.rebalances.load(Ordering::Relaxed) != rebalances {
                // A rebalance ran inside `poll`: records polled before it belong to partitions
                // that were revoked (and maybe assigned again, restored and rewound to the last
                // commit). They are fetched again by their owner; processing them here would
                // apply them twice.
                let stale = batch.len();
                batch.clear();
                debug!(stale, "rebalance while polling: batch dropped");
            }
            let turn = Instant::now();
            let records = batch.len();
            if !batch.is_empty() {
                w.process_batch(&batch);
                batch.clear();
            }
            let processed = turn.elapsed();
            if let Some(e) = c.take_failure() {
                return Err(e);
            }
            if c.rewind_needed.load(Ordering::Relaxed) {
                c.rewind(&consumer)?;
            }
            c.commit_delivered(&consumer)?;
            if c.transaction_done(false)? == Committed::Aborted {
                c.rewind(&consumer)?;
            }
            let now = Instant::now();
            let mut crossings = Duration::ZERO;
            if now >= next_crossings {
                // Decay-driven crossings follow the wall clock, whatever the commit interval.
                w.fire_due_crossings();
                w.local.flush();
                next_crossings = now + CROSSING_TICK;
                crossings = now.elapsed();
            }
            if !early_changelog && now + interval / 2 >= next_commit {
                c.send_changelog_early()?;
                early_changelog = true;
            }
            let mut committing = Duration::ZERO;
            if now >= next_commit {
                early_changelog = false;
                // Paced from the start of the commit, so the commit's own duration does not
                // stretch the interval (and the time output waits to become visible).
                next_commit = now + interval;
                let started = Instant::now();
                if c.commit_tick(&consumer)? == Committed::Aborted {
                    c.rewind(&consumer)?;
                }
                committing = started.elapsed();
            }
            // A turn of the loop that holds up the records behind it for long is worth a line
            // (at most one per interval): it shows in transition latency.
            let took = turn.elapsed();
            if took >= SLOW_TURN && last_slow.is_none_or(|t: Instant| t.elapsed() >= SLOW_TURN_LOG_EVERY) {
                last_slow = Some(Instant::now());
                info!(
                    ms = took.as_millis() as u64,
                    records,
                    processing_ms = processed.as_millis() as u64,
                    crossings_ms = crossings.as_millis() as u64,
                    commit_ms = committing.as_millis() as u64,
                    "slow pipeline turn"
                );
            }
        }
        info!("shutting down: flushing and committing");
        w.fire_due_crossings();
        w.local.flush();
        if let Some(e) = c.take_failure() {
            return Err(e);
        }
        // An abort here loses nothing: the next owner re-reads from the last commit.
        c.commit_now(&consumer)?;
        consumer.unsubscribe();
        Ok(())
    }
}

impl Worker {
    /// Processes polled records in runs of one input partition, in order.
    fn process_batch(&mut self, batch: &[BorrowedMessage<'_>]) {
        let received = Instant::now();
        let now = wall_ms();
        let mut start = 0;
        while start < batch.len() {
            let (topic, partition) = (batch[start].topic(), batch[start].partition());
            let mut end = start + 1;
            while end < batch.len() && batch[end].partition() == partition && batch[end].topic() == topic {
                end += 1;
            }
            let processed = self.process_run(&batch[start..end], topic, partition, now);
            let secs = received.elapsed().as_secs_f64();
            for _ in 0..processed {
                self.local.processing.observe(secs);
            }
            start = end;
        }
    }

    /// Records of one input partition: decoded, rejected ones dead-lettered, misplaced ones
    /// forwarded, the rest applied to the task's engine under one lock, after their lead data
    /// has been prefetched. Returns how many were processed here (not forwarded).
    fn process_run(&mut self, run: &[BorrowedMessage<'_>], topic: &str, partition: i32, now: i64) -> usize {
        let Some(engine) = self.shared.engine(partition).filter(|_| self.shared.owns(topic, partition)) else {
            debug!(topic, partition, "records of a partition not assigned here; skipped");
            return 0;
        };
        let opts = DecodeOptions { latest_timestamp_ms: Some(now + self.max_future_skew_ms), ..self.decode };
        let mut pending: Vec<Pending<'_>> = Vec::with_capacity(run.len());
        let mut rejected = 0u64;
        for (i, msg) in run.iter().enumerate() {
            let opts = DecodeOptions { fallback_timestamp_ms: msg.timestamp().to_millis().filter(|&t| t >= 0), ..opts };
            match decode(msg.payload().unwrap_or(&[]), &opts) {
                Err(rejection) => {
                    self.local.rejected[rejection.reason.index()].inc();
                    rejected += 1;
                    self.dead_letter(msg, &rejection);
                }
                Ok(event) => {
                    if let Some(route) = &self.route {
                        let owner = crate::partition::lead_partition(&event.lead_id, route.partitions);
                        if owner != partition && topic != route.topic {
                            // Not applied here: it is counted where it is applied, when it comes
                            // back from the repartition topic.
                            self.forward(msg, owner, &event.lead_id);
                            continue;
                        }
                    }
                    pending.push(Pending { record: i, event });
                }
            }
        }
        let mut accepted = 0u64;
        if !pending.is_empty() {
            let mut transitions = std::mem::take(&mut self.transitions);
            let mut e = lock(&engine);
            e.advance(now, &mut |t| {
                let at = t.at_ms;
                transitions.push((t, at));
            });
            self.hashes.clear();
            self.hashes.extend(pending.iter().map(|p| e.hashes(&p.event)));
            e.prefetch(&self.hashes, &mut self.slots);
            for (p, &h) in pending.iter().zip(&self.hashes) {
                let since = run[p.record].timestamp().to_millis().unwrap_or(now);
                match e.apply_hashed(&p.event, h, &mut |t| transitions.push((t, since))) {
                    Applied::Accepted => {
                        accepted += 1;
                        let i = self.metrics.type_index(&p.event.event_type);
                        self.local.events[i].inc();
                        // A crossing this event set up that is already due (old records in a
                        // catch-up) fires right after it, before the next record's check can
                        // pre-empt it (spec section 4). A heap peek when nothing is due.
                        e.advance(now, &mut |t| {
                            let at = t.at_ms;
                            transitions.push((t, at));
                        });
                    }
                    Applied::Duplicate => {
                        rejected += 1;
                        self.local.rejected[RejectReason::Duplicate.index()].inc();
                    }
                }
            }
            let rules = &mut self.local.rules;
            e.take_rule_matches(|r, n| rules[r].inc_by(n));
            drop(e);
            for (t, since) in transitions.drain(..) {
                self.publish(&t, since);
            }
            self.transitions = transitions;
        }
        self.shared.count(accepted, rejected);
        if let Some(last) = run.last() {
            self.shared.set_position(topic, partition, last.offset() + 1);
        }
        (accepted + rejected) as usize
    }

    fn fire_due_crossings(&mut self) {
        let mut transitions = std::mem::take(&mut self.transitions);
        self.shared.advance_all(wall_ms(), &mut |t| {
            let at = t.at_ms;
            transitions.push((t, at));
        });
        for (t, at) in transitions.drain(..) {
            self.publish(&t, at);
        }
        self.transitions = transitions;
    }

    /// Sends one transition; `since_ms` is what its delivery latency is measured from.
    fn publish(&mut self, t: &Transition, since_ms: i64) {
        self.json.clear();
        write_json(&mut self.json, self.shared.model(), t);
        match t.kind {
            TransitionKind::Qualified => self.local.qualified.inc(),
            TransitionKind::Disqualified => self.local.disqualified.inc(),
        }
        self.shared.record_transition(t);
        self.committer.produce(Outgoing {
            destination: Destination::Transitions,
            partition: None,
            key: Some(t.lead_id.as_bytes()),
            payload: Some(&self.json),
            headers: None,
            timestamp: None,
            since_ms: Some(since_ms),
        });
    }

    /// Forwards a record, bytes, headers and timestamp unchanged, to its lead's partition of the
    /// repartition topic, keyed by lead id (in the transaction, under exactly-once).
    fn forward(&mut self, msg: &BorrowedMessage<'_>, owner: i32, lead_id: &str) {
        self.local.repartitioned.inc();
        self.committer.produce(Outgoing {
            destination: Destination::Repartition,
            partition: Some(owner),
            key: Some(lead_id.as_bytes()),
            payload: msg.payload(),
            headers: msg.headers().map(|h| h.detach()),
            timestamp: msg.timestamp().to_millis(),
            since_ms: None,
        });
    }

    /// Writes a rejected record, bytes unchanged, to the dead-letter topic with its reason.
    fn dead_letter(&mut self, msg: &BorrowedMessage<'_>, rejection: &Rejection) {
        let partition = msg.partition().to_string();
        let offset = msg.offset().to_string();
        let mut headers = OwnedHeaders::new_with_capacity(5 + msg.headers().map_or(0, |h| h.count()))
            .insert(Header { key: "leadscore.error.reason", value: Some(rejection.reason.code()) })
            .insert(Header { key: "leadscore.error.message", value: Some(rejection.message) })
            .insert(Header { key: "leadscore.source.topic", value: Some(msg.topic()) })
            .insert(Header { key: "leadscore.source.partition", value: Some(partition.as_str()) })
            .insert(Header { key: "leadscore.source.offset", value: Some(offset.as_str()) });
        // The producer's own headers travel along, after ours.
        if let Some(h) = msg.headers() {
            for header in h.iter() {
                headers = headers.insert(Header { key: header.key, value: header.value });
            }
        }
        self.local.dead_letters.inc();
        // Bytes and key unchanged: a record without a value stays without one.
        self.committer.produce(Outgoing {
            destination: Destination::DeadLetters,
            partition: None,
            key: msg.key(),
            payload: msg.payload(),
            headers: Some(headers),
            timestamp: msg.timestamp().to_millis(),
            since_ms: None,
        });
    }
}

/// Restores `tasks` from `cfg.state_topic` into fresh engines, exactly as an assignment does
/// (for the restore benchmark and tools). Also returns how long it took.
pub fn restore_tasks(
    cfg: &crate::config::KafkaConfig,
    model: Arc<Model>,
    tasks: &[i32],
) -> Result<(Vec<(i32, Engine)>, Duration), PipelineError> {
    let shared = Shared::new(Arc::clone(&model), Arc::new(Health::default()));
    shared.keep_changelog();
    let started = Instant::now();
    let engines = restore::restore_tasks(cfg, &shared, &Metrics::new(&model), tasks)?;
    Ok((engines, started.elapsed()))
}

/// Offsets for a commit: the next offset to read, per partition.
pub(crate) fn offset_list(entries: impl IntoIterator<Item = (String, i32, i64)>) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, next) in entries {
        tpl.add_partition_offset(&topic, partition, Offset::Offset(next)).expect("valid offset");
    }
    tpl
}
