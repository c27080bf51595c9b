//! The Kafka loop: consume, decode, score, publish, commit; rebalances and restores.
//!
//! One thread owns the consumer and drives everything that touches librdkafka, because its
//! calls block (flush, commit, transactions, rebalance callbacks, which run inside `poll` on
//! this thread). The engines live per task behind one mutex (see [`state`]), so the HTTP side
//! can read scores between records without a channel round trip.
//!
//! Every lead's state is also written to the compacted state topic (the changelog), one record
//! per lead changed in a commit interval, and restored from it when a task is assigned, before
//! the task processes anything. Two guarantees:
//!
//! - **exactly_once** (the default), Kafka Streams' `exactly_once_v2` without the JVM: one
//!   transactional producer; every commit interval one transaction holds the transitions, the
//!   dead letters, the changelog records and the input offsets (`send_offsets_to_transaction`
//!   with the consumer's live group metadata, which fences zombies). An abortable error aborts
//!   it and rolls back: the tasks are reloaded from the changelog and the input is re-read from
//!   the committed offsets, so no effect of aborted input survives. A fatal error (fenced, or
//!   unclassified) stops the pipeline with an error and the process exits non-zero.
//! - **at_least_once**, the way rust-rdkafka's example and Vector's Kafka source do it: offsets
//!   are committed only after the producer has flushed everything the records before them
//!   caused (transitions, dead letters and changelog records). After a crash, records since the
//!   last commit are applied again on top of a changelog that may already hold their effect.

mod owners;
mod restore;
mod state;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{debug, error, info, warn};

use crate::config::{Config, ProcessingGuarantee};
use crate::engine::Transition;
use crate::event::{decode, DecodeOptions, RejectReason, Rejection};
use crate::http::Health;
use crate::metrics::Metrics;
use crate::model::Model;
use crate::transition::write_json;

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

/// How often due crossings are checked between records (they are also checked before each
/// record of a partition): the bound on how late a decay-driven transition goes out.
const CROSSING_TICK: Duration = Duration::from_millis(100);

/// Bound on each blocking transaction call.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Delivery bookkeeping: failures stop the pipeline (at-least-once); successes feed the latency
/// histogram.
pub struct Delivery {
    failed: AtomicU64,
    metrics: Metrics,
}

impl ClientContext for Delivery {}

impl ProducerContext for Delivery {
    /// Epoch ms of what the record's latency is measured from (input record time, or crossing
    /// time); negative for records whose latency is not observed here (dead letters, changelog
    /// records, and everything under exactly-once, where visibility is the commit).
    type DeliveryOpaque = Box<i64>;

    fn delivery(&self, result: &DeliveryResult<'_>, since_ms: Box<i64>) {
        match result {
            Ok(_) => {
                if *since_ms >= 0 {
                    let secs = (wall_ms() - *since_ms).max(0) as f64 / 1000.0;
                    self.metrics.transition_latency.observe(secs);
                }
            }
            // Purged by an abort: expected, and the abort rolls their effects back.
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight), _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                debug!("delivery purged by an abort");
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "delivery failed");
            }
        }
    }
}

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Committed {
    /// Nothing was pending.
    Nothing,
    Done,
    /// The transaction was aborted: the tasks must be reloaded and the input re-read.
    Aborted,
}

/// How a transaction call failed (librdkafka's three classes; unclassified counts as fatal).
enum Failure {
    Retry,
    Abort,
    Fatal,
}

fn classify(e: &KafkaError) -> Failure {
    match e {
        KafkaError::Transaction(r) if r.is_fatal() => Failure::Fatal,
        KafkaError::Transaction(r) if r.txn_requires_abort() => Failure::Abort,
        KafkaError::Transaction(r) if r.is_retriable() => Failure::Retry,
        _ => Failure::Fatal,
    }
}

/// The open transaction (exactly-once).
#[derive(Default)]
struct Txn {
    open: bool,
    /// Latency origins (epoch ms) of the transitions in the open transaction: observed when it
    /// commits, which is when `read_committed` consumers see them.
    since: Vec<i64>,
    /// Commit attempts so far (for the test hook).
    attempts: u64,
}

/// Commits, for the loop and the rebalance callbacks alike.
pub struct Committer {
    cfg: Config,
    shared: Arc<Shared>,
    producer: BaseProducer<Delivery>,
    metrics: Metrics,
    health: Arc<Health>,
    exactly_once: bool,
    txn: Mutex<Txn>,
    abort_every: Option<u64>,
    /// An error raised inside a rebalance callback, for the loop to return.
    failure: Mutex<Option<PipelineError>>,
    /// A transaction was aborted inside a callback while tasks remained: rewind them.
    rewind_needed: AtomicBool,
}

impl Committer {
    fn fail(&self, e: PipelineError) {
        error!(code = e.code(), error = %e, "pipeline failure");
        lock(&self.failure).get_or_insert(e);
    }

    fn take_failure(&self) -> Option<PipelineError> {
        lock(&self.failure).take()
    }

    /// Opens a transaction if none is open (exactly-once only).
    fn begin(&self, txn: &mut Txn) -> Result<(), PipelineError> {
        if self.exactly_once && !txn.open {
            self.producer.begin_transaction().map_err(PipelineError::Transaction)?;
            txn.open = true;
        }
        Ok(())
    }

    /// Before a transition or dead letter is sent: makes sure a transaction is open. Failing to
    /// open one is fatal; it is reported to the loop.
    fn before_send(&self, since_ms: i64) -> i64 {
        if !self.exactly_once {
            return since_ms;
        }
        let mut txn = lock(&self.txn);
        if let Err(e) = self.begin(&mut txn) {
            drop(txn);
            self.fail(e);
            return -1;
        }
        if since_ms >= 0 {
            txn.since.push(since_ms);
        }
        // Under exactly-once the latency is observed at commit, not at delivery.
        -1
    }

    /// Sends the changelog records of every change since the last commit.
    fn send_changelog(&self) {
        let topic = self.cfg.kafka.state_topic.as_str();
        let mut n = 0u64;
        self.shared.drain_changelog(|task, lead_id, value| {
            let record = BaseRecord::with_opaque_to(topic, Box::new(-1)).partition(task).key(lead_id.as_bytes());
            match value {
                Some(v) => send(&self.producer, record.payload(v)),
                None => send::<[u8], [u8]>(&self.producer, record),
            }
            n += 1;
        });
        self.metrics.changelog_records.inc_by(n);
    }

    /// Commits everything processed so far.
    fn commit(&self, consumer: &BaseConsumer<Rebalancing>, mode: CommitMode) -> Result<Committed, PipelineError> {
        if self.exactly_once {
            self.commit_transaction(consumer)
        } else {
            self.commit_offsets(consumer, mode)
        }
    }

    /// At-least-once: flushes the producer (transitions, dead letters, changelog), then commits
    /// the offsets after everything it acknowledged.
    fn commit_offsets(
        &self,
        consumer: &BaseConsumer<Rebalancing>,
        mode: CommitMode,
    ) -> Result<Committed, PipelineError> {
        let started = Instant::now();
        self.send_changelog();
        flush_fast(&self.producer, Duration::from_secs(60)).map_err(PipelineError::Flush)?;
        let failed = self.producer.context().failed.load(Ordering::Relaxed);
        if failed > 0 {
            self.metrics.commits.with_label_values(&["failed"]).inc();
            return Err(PipelineError::Delivery(failed));
        }
        let offsets = self.shared.offsets_to_commit(None);
        if offsets.count() == 0 {
            return Ok(Committed::Nothing);
        }
        match consumer.commit(&offsets, mode) {
            Ok(()) => {
                self.shared.committed(&offsets);
                self.metrics.commits.with_label_values(&["ok"]).inc();
            }
            Err(e) => {
                // Not fatal: the next commit carries the same or later offsets.
                warn!(error = %e, "offset commit failed");
                self.metrics.commits.with_label_values(&["failed"]).inc();
            }
        }
        self.metrics.commit_seconds.with_label_values(&["at_least_once"]).observe(started.elapsed().as_secs_f64());
        Ok(Committed::Done)
    }

    /// Exactly-once: the changelog records and the offsets join the open transaction (opened
    /// now if nothing was sent yet), which then commits.
    fn commit_transaction(&self, consumer: &BaseConsumer<Rebalancing>) -> Result<Committed, PipelineError> {
        let started = Instant::now();
        let mut txn = lock(&self.txn);
        let offsets = self.shared.offsets_to_commit(None);
        if !txn.open && offsets.count() == 0 && self.shared.changed_leads() == 0 {
            return Ok(Committed::Nothing);
        }
        self.begin(&mut txn)?;
        self.send_changelog();
        txn.attempts += 1;
        if self.abort_every.is_some_and(|n| txn.attempts % n == 0) {
            info!(attempt = txn.attempts, "test hook: aborting this transaction");
            return self.abort(&mut txn);
        }
        if offsets.count() > 0 {
            let Some(group) = consumer.group_metadata() else {
                // Not a group member right now: these offsets cannot be committed by us.
                warn!("no group metadata; aborting the transaction");
                return self.abort(&mut txn);
            };
            loop {
                match self.producer.send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT) {
                    Ok(()) => break,
                    Err(e) => match classify(&e) {
                        Failure::Retry => continue,
                        Failure::Abort => {
                            warn!(error = %e, "sending offsets failed; aborting the transaction");
                            return self.abort(&mut txn);
                        }
                        Failure::Fatal => return Err(PipelineError::Transaction(e)),
                    },
                }
            }
        }
        // rust-rdkafka's commit flushes in 100 ms poll slices; flush in 1 ms slices first.
        let _ = flush_fast(&self.producer, TXN_TIMEOUT);
        loop {
            match self.producer.commit_transaction(TXN_TIMEOUT) {
                Ok(()) => break,
                Err(e) => match classify(&e) {
                    Failure::Retry => continue,
                    Failure::Abort => {
                        warn!(error = %e, "commit failed; aborting the transaction");
                        return self.abort(&mut txn);
                    }
                    Failure::Fatal => return Err(PipelineError::Transaction(e)),
                },
            }
        }
        txn.open = false;
        self.shared.committed(&offsets);
        let now = wall_ms();
        for since in txn.since.drain(..) {
            self.metrics.transition_latency.observe((now - since).max(0) as f64 / 1000.0);
        }
        self.metrics.commits.with_label_values(&["ok"]).inc();
        self.metrics.commit_seconds.with_label_values(&["exactly_once"]).observe(started.elapsed().as_secs_f64());
        Ok(Committed::Done)
    }

    /// Aborts the open transaction; the caller rolls the state back.
    fn abort(&self, txn: &mut Txn) -> Result<Committed, PipelineError> {
        if txn.open {
            // Deliver what is queued first (it stays invisible: the transaction aborts). An abort
            // that purges records whose AddPartitionsToTxn has not completed yet sends EndTxn for
            // a transaction the coordinator holds as empty; the broker answers
            // INVALID_TXN_STATE and librdkafka makes the producer fatal (librdkafka #4849, open).
            // Bounded by the transaction timeout; a delivery that fails for good is purged below.
            let _ = flush_fast(&self.producer, TXN_TIMEOUT);
            // The abort purges what is queued or in flight; their delivery reports must be
            // served (this producer has no thread polling it) before the abort can complete, so
            // abort in short slices and poll in between, as librdkafka asks.
            let deadline = Instant::now() + TXN_TIMEOUT;
            loop {
                match self.producer.abort_transaction(Duration::from_millis(100)) {
                    Ok(()) => break,
                    Err(e) if Instant::now() < deadline && !matches!(classify(&e), Failure::Fatal) => {
                        debug!(error = %e, "abort not complete yet");
                        self.producer.poll(Duration::from_millis(10));
                    }
                    Err(e) => return Err(PipelineError::Transaction(e)),
                }
            }
        }
        txn.open = false;
        txn.since.clear();
        self.producer.context().failed.store(0, Ordering::Relaxed);
        self.metrics.commits.with_label_values(&["aborted"]).inc();
        Ok(Committed::Aborted)
    }

    /// Replaces every task's engine with one restored from the changelog and moves every input
    /// partition back to its committed offset: the state of the last committed transaction.
    fn rewind(&self, consumer: &BaseConsumer<Rebalancing>) -> Result<(), PipelineError> {
        self.rewind_needed.store(false, Ordering::Relaxed);
        let tasks = self.shared.tasks();
        for (task, engine) in restore::restore_tasks(&self.cfg.kafka, &self.shared, &self.metrics, &tasks)? {
            self.shared.set_engine(task, engine);
        }
        let inputs = self.shared.inputs();
        let committed = consumer.committed_offsets(inputs, TXN_TIMEOUT).map_err(PipelineError::Rewind)?;
        let mut positions = Vec::new();
        for e in committed.elements() {
            let (seek_to, pos) = match e.offset() {
                Offset::Offset(o) => (Offset::Offset(o), Some(o)),
                _ => (Offset::Beginning, None),
            };
            consumer.seek(e.topic(), e.partition(), seek_to, TXN_TIMEOUT).map_err(PipelineError::Rewind)?;
            positions.push((e.topic().to_owned(), e.partition(), pos));
        }
        self.shared.rewound(&positions);
        info!(tasks = ?tasks, "rolled back to the last committed transaction");
        Ok(())
    }
}

/// Rebalance handling, run by librdkafka inside `poll` on the pipeline thread.
pub struct Rebalancing {
    committer: Arc<Committer>,
}

impl ClientContext for Rebalancing {
    /// librdkafka's statistics (every `statistics.interval.ms`): consumer lag per partition.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let c = &self.committer;
        let mut total = 0i64;
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // Partition -1 is librdkafka's internal UA partition; lag -1 means unknown.
                if *partition >= 0 && p.consumer_lag >= 0 && c.shared.owns(topic, *partition) {
                    c.metrics
                        .consumer_lag
                        .with_label_values(&[topic.as_str(), &partition.to_string()])
                        .set(p.consumer_lag);
                    total += p.consumer_lag;
                }
            }
        }
        c.shared.set_lag(total);
    }
}

impl ConsumerContext for Rebalancing {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let c = &self.committer;
        if let Rebalance::Revoke(tpl) = rebalance {
            c.health.set_ready(false);
            let lost = consumer.assignment_lost();
            if lost {
                // Another member may own these partitions already: nothing of ours may commit.
                if c.exactly_once {
                    let mut txn = lock(&c.txn);
                    if let Err(e) = c.abort(&mut txn) {
                        drop(txn);
                        c.fail(e);
                    }
                    c.rewind_needed.store(true, Ordering::Relaxed);
                }
            } else {
                // Finish what the revoked partitions caused and commit it, so the next owner
                // starts exactly after it; then drop their state.
                match c.commit(consumer, CommitMode::Sync) {
                    Ok(Committed::Aborted) => c.rewind_needed.store(true, Ordering::Relaxed),
                    Ok(_) => {}
                    Err(e) => c.fail(e),
                }
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

/// Everything but the consumer (messages borrow the consumer while they are processed).
struct Worker {
    route: Option<Route>,
    committer: Arc<Committer>,
    shared: Arc<Shared>,
    metrics: Metrics,
    decode: DecodeOptions,
    max_future_skew_ms: i64,
    json: Vec<u8>,
    pending: Vec<Transition>,
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
        let producer: BaseProducer<Delivery> = producer_cfg
            .create_with_context(Delivery { failed: Default::default(), metrics: metrics.clone() })
            .map_err(PipelineError::Client)?;
        if exactly_once {
            producer.init_transactions(TXN_TIMEOUT).map_err(PipelineError::Transaction)?;
            info!("transactions initialized");
        }
        let abort_every = std::env::var(ABORT_EVERY_ENV).ok().and_then(|v| v.parse::<u64>().ok()).filter(|&n| n > 0);
        if let Some(n) = abort_every {
            warn!(every = n, "test hook {ABORT_EVERY_ENV} set: transactions will be aborted on purpose");
        }
        let committer = Arc::new(Committer {
            cfg: cfg.clone(),
            shared: Arc::clone(&shared),
            producer,
            metrics: metrics.clone(),
            health,
            exactly_once,
            txn: Mutex::new(Txn::default()),
            abort_every,
            failure: Mutex::new(None),
            rewind_needed: AtomicBool::new(false),
        });
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
            metrics,
            decode,
            max_future_skew_ms,
            json: Vec::with_capacity(1024),
            pending: Vec::new(),
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
        let mut next_crossings = Instant::now() + CROSSING_TICK;
        info!(
            topics = ?c.cfg.kafka.input_topics,
            group = %c.cfg.kafka.group_id,
            guarantee = c.cfg.kafka.processing_guarantee.as_str(),
            "consuming"
        );
        while !shutdown.load(Ordering::Relaxed) {
            // A short poll timeout: shutdown, crossings and commits are noticed within it.
            let polled = consumer.poll(Duration::from_millis(20));
            match polled {
                Some(Ok(msg)) => {
                    w.process(&msg);
                    // Drain what is already fetched without waiting, up to a bound, so commits
                    // and crossings still run on time under load.
                    for _ in 0..1024 {
                        match consumer.poll(Duration::ZERO) {
                            Some(Ok(msg)) => w.process(&msg),
                            Some(Err(e)) => {
                                warn!(error = %e, "consumer error");
                                break;
                            }
                            None => break,
                        }
                    }
                }
                Some(Err(e)) => warn!(error = %e, "consumer error"),
                None => {}
            }
            if let Some(e) = c.take_failure() {
                return Err(e);
            }
            if c.rewind_needed.load(Ordering::Relaxed) {
                c.rewind(&consumer)?;
            }
            c.producer.poll(Duration::ZERO);
            let now = Instant::now();
            if now >= next_crossings {
                // Decay-driven crossings follow the wall clock, whatever the commit interval.
                w.fire_due_crossings();
                next_crossings = now + CROSSING_TICK;
            }
            if now >= next_commit {
                // Paced from the start of the commit, so the commit's own duration does not
                // stretch the interval (and the time output waits to become visible).
                next_commit = now + interval;
                if c.commit(&consumer, CommitMode::Async)? == Committed::Aborted {
                    c.rewind(&consumer)?;
                }
            }
        }
        info!("shutting down: flushing and committing");
        w.fire_due_crossings();
        if let Some(e) = c.take_failure() {
            return Err(e);
        }
        // An abort here loses nothing: the next owner re-reads from the last commit.
        c.commit(&consumer, CommitMode::Sync)?;
        consumer.unsubscribe();
        Ok(())
    }
}

impl Worker {
    fn process(&mut self, msg: &BorrowedMessage<'_>) {
        let started = Instant::now();
        let now = wall_ms();
        let record_ts = msg.timestamp().to_millis();
        let opts = DecodeOptions {
            fallback_timestamp_ms: record_ts.filter(|&t| t >= 0),
            latest_timestamp_ms: Some(now + self.max_future_skew_ms),
            ..self.decode
        };
        let payload = msg.payload().unwrap_or(&[]);
        let (topic, partition, offset) = (msg.topic(), msg.partition(), msg.offset());
        match decode(payload, &opts) {
            Err(rejection) => {
                self.metrics.rejected.with_label_values(&[rejection.reason.code()]).inc();
                self.shared.count_rejected();
                self.dead_letter(msg, &rejection);
                self.shared.processed(topic, partition, offset);
            }
            Ok(ev) => {
                if let Some(route) = &self.route {
                    let owner = crate::partition::lead_partition(&ev.lead_id, route.partitions);
                    if owner != partition && topic != route.topic {
                        // Not applied here: its processing time is observed where it is applied,
                        // when it comes back from the repartition topic.
                        self.forward(msg, owner, &ev.lead_id);
                        self.shared.processed(topic, partition, offset);
                        return;
                    }
                }
                let mut pending = std::mem::take(&mut self.pending);
                let applied = self.shared.apply(topic, partition, offset, &ev, now, &mut |t| pending.push(t));
                match applied {
                    Some(crate::engine::Applied::Accepted) => {
                        self.metrics.events.with_label_values(&[self.metrics.type_label(&ev.event_type)]).inc();
                    }
                    Some(crate::engine::Applied::Duplicate) => {
                        self.metrics.rejected.with_label_values(&[RejectReason::Duplicate.code()]).inc();
                    }
                    None => debug!(topic, partition, "record of a partition not assigned here; skipped"),
                }
                let since = record_ts.unwrap_or(now);
                for t in pending.drain(..) {
                    self.publish(&t, since);
                }
                self.pending = pending;
            }
        }
        self.metrics.processing.observe(started.elapsed().as_secs_f64());
    }

    fn fire_due_crossings(&mut self) {
        let mut pending = std::mem::take(&mut self.pending);
        self.shared.advance_all(wall_ms(), &mut |t| pending.push(t));
        for t in pending.drain(..) {
            let at = t.at_ms;
            self.publish(&t, at);
        }
        self.pending = pending;
    }

    /// Sends one transition; `since_ms` is what its delivery latency is measured from.
    fn publish(&mut self, t: &Transition, since_ms: i64) {
        self.json.clear();
        write_json(&mut self.json, self.shared.model(), t);
        self.metrics.transitions.with_label_values(&[self.shared.model().name.as_str(), t.kind.label()]).inc();
        self.shared.record_transition(t);
        let c = &self.committer;
        let since_ms = c.before_send(since_ms);
        let record = BaseRecord::with_opaque_to(&c.cfg.kafka.output_topic, Box::new(since_ms))
            .key(t.lead_id.as_bytes())
            .payload(&self.json[..]);
        send(&c.producer, record);
    }

    /// Forwards a record, bytes, headers and timestamp unchanged, to its lead's partition of the
    /// repartition topic, keyed by lead id (in the transaction, under exactly-once).
    fn forward(&mut self, msg: &BorrowedMessage<'_>, owner: i32, lead_id: &str) {
        let c = &self.committer;
        let Some(route) = &self.route else { return };
        c.before_send(-1);
        let mut record =
            BaseRecord::with_opaque_to(&route.topic, Box::new(-1)).partition(owner).key(lead_id.as_bytes());
        if let Some(payload) = msg.payload() {
            record = record.payload(payload);
        }
        if let Some(h) = msg.headers() {
            record = record.headers(h.detach());
        }
        if let Some(ts) = msg.timestamp().to_millis() {
            record = record.timestamp(ts);
        }
        self.metrics.repartitioned.inc();
        send(&c.producer, record);
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
        let c = &self.committer;
        c.before_send(-1);
        let mut record = BaseRecord::with_opaque_to(&c.cfg.kafka.dead_letter_topic, Box::new(-1)).headers(headers);
        // Bytes unchanged: a record without a value stays without one.
        if let Some(payload) = msg.payload() {
            record = record.payload(payload);
        }
        if let Some(key) = msg.key() {
            record = record.key(key);
        }
        if let Some(ts) = msg.timestamp().to_millis() {
            record = record.timestamp(ts);
        }
        self.metrics.dead_letters.inc();
        send(&c.producer, record);
    }
}

/// Restores `tasks` from `cfg.state_topic` into fresh engines, exactly as an assignment does
/// (for the restore benchmark and tools). Also returns how long it took.
pub fn restore_tasks(
    cfg: &crate::config::KafkaConfig,
    model: Arc<Model>,
    tasks: &[i32],
) -> Result<(Vec<(i32, crate::engine::Engine)>, Duration), PipelineError> {
    let shared = Shared::new(Arc::clone(&model), Arc::new(Health::default()));
    shared.keep_changelog();
    let started = Instant::now();
    let engines = restore::restore_tasks(cfg, &shared, &Metrics::new(&model), tasks)?;
    Ok((engines, started.elapsed()))
}

/// Sends a record, waiting for room when librdkafka's queue is full (back-pressure, not loss).
fn send<K, P>(producer: &BaseProducer<Delivery>, mut record: BaseRecord<'_, K, P, Box<i64>>)
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => {
                // Invalid record or a fatal producer state: count it as a failed delivery so the
                // next commit stops the pipeline instead of skipping the record.
                producer.context().failed.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "produce failed");
                return;
            }
        }
    }
}

/// Offsets for a commit: the next offset to read, per partition.
pub(crate) fn offset_list(entries: impl IntoIterator<Item = (String, i32, i64)>) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, next) in entries {
        tpl.add_partition_offset(&topic, partition, Offset::Offset(next)).expect("valid offset");
    }
    tpl
}

/// Waits until every record sent so far is acknowledged (delivery reports served), in 1 ms
/// slices. rust-rdkafka's `flush` polls in 100 ms slices that always run to their end, so it
/// costs at least 100 ms whenever anything is in flight.
fn flush_fast(producer: &BaseProducer<Delivery>, timeout: Duration) -> Result<(), KafkaError> {
    let deadline = Instant::now() + timeout;
    // rd_kafka_flush(0): sends lingering batches now; it returns at once (timed out) if anything is in flight.
    if producer.flush(Duration::ZERO).is_ok() {
        return Ok(());
    }
    loop {
        producer.poll(Duration::from_millis(1));
        if producer.in_flight_count() == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
        }
    }
}
