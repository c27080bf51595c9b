//! Commits: what makes processed input count as done, under each guarantee.
//!
//! - **at_least_once**: every record produced carries, in its delivery opaque, the *epoch* (the
//!   commit interval) it was sent in. A commit tick encodes the changelog records of the interval
//!   (counted in the epoch; the committer thread produces them, see below) and closes the epoch
//!   with the input positions reached. A closed epoch's positions are
//!   committed, asynchronously, as soon as every record of it and of every earlier epoch is
//!   acknowledged by the broker. So offsets never pass a record whose effects are not durable,
//!   and the loop never waits for the broker in between (rust-rdkafka's example and Vector's
//!   Kafka source store offsets only after the work they cover is done; this is the same rule
//!   without a flush per commit). On revoke and shutdown the producer is flushed and everything
//!   is committed synchronously.
//! - **exactly_once**: one transaction per interval holds the transitions, dead letters,
//!   forwarded records, changelog records and the input offsets (`send_offsets_to_transaction`
//!   with the consumer's live group metadata, which fences zombies). An abortable error aborts
//!   it, and the caller rolls the state back ([`Committer::rewind`]). A transaction commits on
//!   a thread of its own ([`run_commits`]): committing waits for the broker to acknowledge
//!   everything in it (at catch-up rates, tens of thousands of changelog records) and then for
//!   the coordinator, and the pipeline keeps consuming and scoring meanwhile. What it produces
//!   meanwhile cannot join a transaction that is committing, so it is held ([`Deferred`]) and
//!   sent into the next transaction as soon as this one is done, with the positions it covers.
//!
//! The changelog records of an interval are encoded on the pipeline thread (they read the
//! engines, under their locks) into one [`ChangelogBatch`], and produced by the committer thread:
//! a commit writes thousands of them, and handing each to librdkafka (a copy, an allocation, a
//! lock the producer's broker thread also takes) held up the records behind the tick by
//! milliseconds. Batches are produced in order, so a key's records stay in order.
//!
//! The producer is a `ThreadedProducer`: its own thread serves delivery reports, so the counts
//! and the latency histogram are up to date without the pipeline polling, and transaction calls
//! (which wait for delivery reports) complete while they block.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset};
use tracing::{debug, error, info, warn};

use super::{lock, restore, wall_ms, PipelineError, Rebalancing, Shared};
use crate::config::Config;
use crate::http::Health;
use crate::metrics::Metrics;

/// Bound on each blocking transaction call.
pub(crate) const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// Epochs whose records may be unacknowledged at once (at-least-once); a commit tick that would
/// open one more waits for the oldest. At 100 ms per epoch: 25 s of deliveries in flight.
const EPOCHS: usize = 256;

/// The opaque of a produced record: its epoch in the high 16 bits, and in the low 48 the epoch
/// milliseconds its delivery latency is measured from, plus one (0: not observed at delivery).
/// 2^48 ms is about 8,900 years.
fn opaque(epoch: u64, since_ms: Option<i64>) -> usize {
    let since = since_ms.map_or(0, |s| (s.max(0) as u64 + 1) & LOW48);
    ((epoch % EPOCHS as u64) << 48 | since) as usize
}

const LOW48: u64 = (1 << 48) - 1;

fn epoch_of(opaque: usize) -> usize {
    (opaque as u64 >> 48) as usize
}

/// Delivery bookkeeping, from the producer's own thread: failures stop the pipeline (no commit
/// passes them); successes release their epoch and feed the latency histogram.
pub struct Delivery {
    failed: AtomicU64,
    /// Records sent and not yet acknowledged (or failed), by epoch modulo [`EPOCHS`].
    outstanding: Box<[AtomicU64]>,
    metrics: Metrics,
}

impl Delivery {
    pub(crate) fn new(metrics: Metrics) -> Delivery {
        Delivery { failed: AtomicU64::new(0), outstanding: (0..EPOCHS).map(|_| AtomicU64::new(0)).collect(), metrics }
    }

    fn unacknowledged(&self, epoch: u64) -> u64 {
        // Acquire: a failure counted before the release below is seen after this load.
        self.outstanding[(epoch % EPOCHS as u64) as usize].load(Ordering::Acquire)
    }

    fn release(&self, opaque: usize) {
        self.outstanding[epoch_of(opaque)].fetch_sub(1, Ordering::Release);
    }
}

impl ClientContext for Delivery {}

impl ProducerContext for Delivery {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        match result {
            Ok(_) => {
                let since = opaque as u64 & LOW48;
                if since > 0 {
                    let secs = (wall_ms() - (since as i64 - 1)).max(0) as f64 / 1000.0;
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
        // After the failure count: whoever sees the epoch complete also sees its failures.
        self.release(opaque);
    }
}

/// The output producer.
pub(crate) type OutputProducer = ThreadedProducer<Delivery>;

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Committed {
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

/// A transaction handed to the committer thread: the input offsets it covers (and the group
/// metadata to send them with), or an abort (the test hook, or no group metadata).
struct CommitJob {
    /// The changelog records of the transaction, produced before it commits.
    changelog: ChangelogBatch,
    offsets: rdkafka::TopicPartitionList,
    group: Option<ConsumerGroupMetadata>,
    abort: bool,
    since: Vec<i64>,
    started: Instant,
}

/// What the committer thread did with a [`CommitJob`]: committed (`Ok(true)`), aborted
/// (`Ok(false)`: the state must be rolled back), or failed for good.
struct CommitDone {
    result: Result<bool, KafkaError>,
    offsets: rdkafka::TopicPartitionList,
    since: Vec<i64>,
    started: Instant,
}

/// What the committer thread is handed.
enum Job {
    /// Changelog records to produce (at-least-once: their epoch commits once they are all
    /// acknowledged).
    Changelog(ChangelogBatch),
    /// Exactly-once: the transaction's changelog records to produce, then the commit (or abort).
    Commit(CommitJob),
}

/// The committer thread: produces each changelog batch handed to it, and commits (or aborts)
/// each transaction (exactly-once). Its calls block, which is why they run here and not on the
/// pipeline thread; librdkafka's transactional API may be called from another thread than the
/// one producing. Emptied batches go back to `spare` for the next interval.
fn run_commits(
    producer: Arc<OutputProducer>,
    topic: String,
    jobs: Receiver<Job>,
    done: Sender<CommitDone>,
    spare: Arc<Mutex<Vec<ChangelogBatch>>>,
    pending: Arc<AtomicU64>,
) {
    let recycle = |mut batch: ChangelogBatch| {
        batch.clear();
        // A few are enough to reuse (one being encoded, one being produced); more would only
        // keep the peak of a catch-up burst allocated.
        let mut spare = lock(&spare);
        if spare.len() < 2 {
            spare.push(batch);
        }
    };
    for job in jobs {
        match job {
            Job::Changelog(batch) => {
                batch.produce(&producer, &topic);
                recycle(batch);
                pending.fetch_sub(1, Ordering::Release);
            }
            Job::Commit(job) => {
                let result = if job.abort {
                    abort_txn(&producer).map(|()| false)
                } else {
                    job.changelog.produce(&producer, &topic);
                    commit_txn(&producer, &job.offsets, job.group.as_ref())
                };
                recycle(job.changelog);
                let reply = CommitDone { result, offsets: job.offsets, since: job.since, started: job.started };
                if done.send(reply).is_err() {
                    return;
                }
            }
        }
    }
}

/// Changelog records encoded on the pipeline thread, to be produced on the committer thread:
/// keys and values in one buffer.
#[derive(Default)]
pub(crate) struct ChangelogBatch {
    data: Vec<u8>,
    records: Vec<BatchRecord>,
}

struct BatchRecord {
    /// The state topic's partition (the task).
    partition: i32,
    key_end: usize,
    /// `None`: a tombstone.
    value_end: Option<usize>,
    opaque: usize,
}

impl ChangelogBatch {
    fn push(&mut self, partition: i32, key: &[u8], value: Option<&[u8]>, opaque: usize) {
        self.data.extend_from_slice(key);
        let key_end = self.data.len();
        let value_end = value.map(|v| {
            self.data.extend_from_slice(v);
            self.data.len()
        });
        self.records.push(BatchRecord { partition, key_end, value_end, opaque });
    }

    fn clear(&mut self) {
        self.data.clear();
        self.records.clear();
    }

    fn produce(&self, producer: &OutputProducer, topic: &str) {
        let mut start = 0;
        for r in &self.records {
            let key = &self.data[start..r.key_end];
            let record = BaseRecord::with_opaque_to(topic, r.opaque).partition(r.partition).key(key);
            start = r.key_end;
            match r.value_end {
                Some(end) => {
                    send(producer, record.payload(&self.data[r.key_end..end]));
                    start = end;
                }
                None => send::<[u8], [u8]>(producer, record),
            }
        }
    }
}

/// Sends a record, waiting for room when librdkafka's queue is full (back-pressure, not loss).
fn send<K, P>(producer: &OutputProducer, mut record: BaseRecord<'_, K, P, usize>)
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                // The producer's thread serves deliveries meanwhile.
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, r)) => {
                // Invalid record or a fatal producer state: count it as a failed delivery so
                // no commit passes it, and release its epoch (it gets no delivery report).
                let ctx = producer.context();
                ctx.failed.fetch_add(1, Ordering::Relaxed);
                ctx.release(r.delivery_opaque);
                warn!(error = %e, "produce failed");
                return;
            }
        }
    }
}

/// Waits until every record sent so far is acknowledged and its delivery report served.
/// (rust-rdkafka's `flush` polls in 100 ms slices that always run to their end.)
fn wait_delivered(producer: &OutputProducer, timeout: Duration) -> Result<(), KafkaError> {
    let deadline = Instant::now() + timeout;
    // flush(0) is rd_kafka_flush(0): it sends lingering batches at once and says whether
    // anything is still outstanding; the producer's thread serves the reports.
    while let Err(e) = producer.flush(Duration::ZERO) {
        if Instant::now() >= deadline {
            return Err(e);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

/// Sends the offsets and commits the open transaction; `Ok(false)` when it had to be aborted.
fn commit_txn(
    producer: &OutputProducer,
    offsets: &rdkafka::TopicPartitionList,
    group: Option<&ConsumerGroupMetadata>,
) -> Result<bool, KafkaError> {
    let started = Instant::now();
    if let Some(group) = group.filter(|_| offsets.count() > 0) {
        loop {
            match producer.send_offsets_to_transaction(offsets, group, TXN_TIMEOUT) {
                Ok(()) => break,
                Err(e) => match classify(&e) {
                    Failure::Retry => continue,
                    Failure::Abort => {
                        warn!(error = %e, "sending offsets failed; aborting the transaction");
                        return abort_txn(producer).map(|()| false);
                    }
                    Failure::Fatal => return Err(e),
                },
            }
        }
    }
    // rust-rdkafka's commit_transaction flushes first, in 100 ms poll slices that always run to
    // their end; with everything delivered already its flush returns at once.
    let offsets_sent = started.elapsed();
    let _ = wait_delivered(producer, TXN_TIMEOUT);
    let delivered = started.elapsed();
    if producer.context().failed.load(Ordering::Acquire) > 0 {
        // A record librdkafka refused at send (it gets no delivery report, so the transaction
        // would not fail by itself): committing would lose it.
        warn!("a record of the transaction could not be sent; aborting the transaction");
        return abort_txn(producer).map(|()| false);
    }
    loop {
        match producer.commit_transaction(TXN_TIMEOUT) {
            Ok(()) => {
                // Where a transaction's time goes (the latency of its output): offsets, the
                // last deliveries, EndTxn.
                debug!(
                    offsets_ms = offsets_sent.as_secs_f64() * 1e3,
                    delivered_ms = delivered.as_secs_f64() * 1e3,
                    committed_ms = started.elapsed().as_secs_f64() * 1e3,
                    "transaction committed"
                );
                return Ok(true);
            }
            Err(e) => match classify(&e) {
                Failure::Retry => continue,
                Failure::Abort => {
                    warn!(error = %e, "commit failed; aborting the transaction");
                    return abort_txn(producer).map(|()| false);
                }
                Failure::Fatal => return Err(e),
            },
        }
    }
}

/// Aborts the open transaction.
fn abort_txn(producer: &OutputProducer) -> Result<(), KafkaError> {
    // Deliver what is queued first (it stays invisible: the transaction aborts). An abort that
    // purges records whose AddPartitionsToTxn has not completed yet sends EndTxn for a
    // transaction the coordinator holds as empty; the broker answers INVALID_TXN_STATE and
    // librdkafka makes the producer fatal (librdkafka #4849, open). Bounded by the transaction
    // timeout; a delivery that fails for good is purged by the abort.
    let _ = wait_delivered(producer, TXN_TIMEOUT);
    loop {
        match producer.abort_transaction(TXN_TIMEOUT) {
            Ok(()) => break,
            Err(e) if matches!(classify(&e), Failure::Retry) => debug!(error = %e, "abort not complete yet"),
            Err(e) => return Err(e),
        }
    }
    producer.context().failed.store(0, Ordering::Relaxed);
    Ok(())
}

/// Where an outgoing record goes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Destination {
    Transitions,
    DeadLetters,
    Repartition,
}

/// A record to produce, borrowed from what caused it.
pub(crate) struct Outgoing<'a> {
    pub destination: Destination,
    pub partition: Option<i32>,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub headers: Option<OwnedHeaders>,
    pub timestamp: Option<i64>,
    /// What a transition's latency is measured from (epoch ms).
    pub since_ms: Option<i64>,
}

/// An [`Outgoing`] record held while a transaction commits (exactly-once).
pub(crate) struct Deferred {
    destination: Destination,
    partition: Option<i32>,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
    timestamp: Option<i64>,
    since_ms: Option<i64>,
}

impl Deferred {
    fn new(o: Outgoing<'_>) -> Deferred {
        Deferred {
            destination: o.destination,
            partition: o.partition,
            key: o.key.map(<[u8]>::to_vec),
            payload: o.payload.map(<[u8]>::to_vec),
            headers: o.headers,
            timestamp: o.timestamp,
            since_ms: o.since_ms,
        }
    }

    fn outgoing(&mut self) -> Outgoing<'_> {
        Outgoing {
            destination: self.destination,
            partition: self.partition,
            key: self.key.as_deref(),
            payload: self.payload.as_deref(),
            headers: self.headers.take(),
            timestamp: self.timestamp,
            since_ms: self.since_ms,
        }
    }
}

/// At-least-once epochs closed and not committed yet: their number, the positions reached when
/// they closed, and when.
#[derive(Default)]
struct Epochs {
    closed: VecDeque<(u64, rdkafka::TopicPartitionList, Instant)>,
}

/// Commits, for the loop and the rebalance callbacks alike (both run on the pipeline thread).
pub struct Committer {
    pub(crate) cfg: Config,
    /// `cfg.kafka.repartition_topic()`, named once.
    repartition_topic: String,
    pub(crate) shared: Arc<Shared>,
    pub(crate) producer: Arc<OutputProducer>,
    pub(crate) metrics: Metrics,
    pub(crate) health: Arc<Health>,
    pub(crate) exactly_once: bool,
    txn: Mutex<Txn>,
    /// `txn.open`, readable without the lock on every record.
    txn_open: AtomicBool,
    /// A transaction is with the committer thread: records produced now are deferred.
    committing: AtomicBool,
    deferred: Mutex<Vec<Deferred>>,
    jobs: Mutex<Option<Sender<Job>>>,
    /// The committer thread, joined on drop: it holds the producer, which must be gone (its
    /// queue flushed, its connections closed) before the caller goes on, e.g. before the demo
    /// stops its in-process broker.
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Emptied changelog batches, for reuse.
    spare: Arc<Mutex<Vec<ChangelogBatch>>>,
    /// Changelog batches handed to the committer thread and not produced yet.
    pending_batches: Arc<AtomicU64>,
    done: Mutex<Receiver<CommitDone>>,
    /// The current epoch (at-least-once).
    epoch: AtomicU64,
    epochs: Mutex<Epochs>,
    abort_every: Option<u64>,
    /// An error raised inside a rebalance callback, for the loop to return.
    failure: Mutex<Option<PipelineError>>,
    /// A transaction was aborted inside a callback while tasks remained: rewind them.
    pub(crate) rewind_needed: AtomicBool,
    /// Bumped by every rebalance, so the loop can tell that records it polled before one are
    /// stale (their partitions were revoked, and perhaps assigned again from the last commit).
    pub(crate) rebalances: AtomicU64,
}

impl Drop for Committer {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has done what it was given.
        lock(&self.jobs).take();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

impl Committer {
    pub(crate) fn new(
        cfg: Config,
        shared: Arc<Shared>,
        producer: OutputProducer,
        metrics: Metrics,
        health: Arc<Health>,
        abort_every: Option<u64>,
    ) -> Result<Committer, PipelineError> {
        let exactly_once = cfg.kafka.processing_guarantee == crate::config::ProcessingGuarantee::ExactlyOnce;
        let producer = Arc::new(producer);
        let (jobs, job_queue) = std::sync::mpsc::channel();
        let (done_tx, done) = std::sync::mpsc::channel();
        let spare = Arc::new(Mutex::new(Vec::new()));
        let pending_batches = Arc::new(AtomicU64::new(0));
        let thread = {
            let (p, topic) = (Arc::clone(&producer), cfg.kafka.state_topic.clone());
            let (spare, pending) = (Arc::clone(&spare), Arc::clone(&pending_batches));
            std::thread::Builder::new()
                .name("leadscore-commit".into())
                .spawn(move || run_commits(p, topic, job_queue, done_tx, spare, pending))
                .map_err(|e| PipelineError::Restore(format!("cannot start the committer thread: {e}")))?
        };
        Ok(Committer {
            repartition_topic: cfg.kafka.repartition_topic(),
            cfg,
            shared,
            producer,
            metrics,
            health,
            exactly_once,
            txn: Mutex::new(Txn::default()),
            txn_open: AtomicBool::new(false),
            committing: AtomicBool::new(false),
            deferred: Mutex::new(Vec::new()),
            jobs: Mutex::new(Some(jobs)),
            thread: Mutex::new(Some(thread)),
            spare,
            pending_batches,
            done: Mutex::new(done),
            epoch: AtomicU64::new(0),
            epochs: Mutex::new(Epochs::default()),
            abort_every,
            failure: Mutex::new(None),
            rewind_needed: AtomicBool::new(false),
            rebalances: AtomicU64::new(0),
        })
    }

    /// Exactly-once: a transaction is with the committer thread (its end is noticed on the loop's
    /// next turn, and what the pipeline produces meanwhile waits for it).
    pub(crate) fn committing(&self) -> bool {
        self.committing.load(Ordering::Relaxed)
    }

    pub(crate) fn fail(&self, e: PipelineError) {
        error!(code = e.code(), error = %e, "pipeline failure");
        lock(&self.failure).get_or_insert(e);
    }

    pub(crate) fn take_failure(&self) -> Option<PipelineError> {
        lock(&self.failure).take()
    }

    /// Opens a transaction if none is open (exactly-once only).
    fn begin(&self, txn: &mut Txn) -> Result<(), PipelineError> {
        if self.exactly_once && !txn.open {
            self.producer.begin_transaction().map_err(PipelineError::Transaction)?;
            txn.open = true;
            self.txn_open.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Before a record is produced: makes sure a transaction is open (exactly-once), counts the
    /// record in the current epoch (at-least-once), and returns its delivery opaque. `since_ms`
    /// is what a transition's latency is measured from. Failing to open a transaction is fatal;
    /// it is reported to the loop.
    pub(crate) fn before_send(&self, since_ms: Option<i64>) -> usize {
        if !self.exactly_once {
            let epoch = self.epoch.load(Ordering::Relaxed);
            self.producer.context().outstanding[(epoch % EPOCHS as u64) as usize].fetch_add(1, Ordering::Relaxed);
            return opaque(epoch, since_ms);
        }
        if !self.txn_open.load(Ordering::Relaxed) || since_ms.is_some() {
            let mut txn = lock(&self.txn);
            if let Err(e) = self.begin(&mut txn) {
                drop(txn);
                self.fail(e);
            } else if let Some(since) = since_ms {
                txn.since.push(since);
            }
        }
        // Under exactly-once the epoch is not used and latency is observed at commit.
        opaque(0, None)
    }

    /// Sends a record prepared with [`Committer::before_send`], waiting for room when
    /// librdkafka's queue is full (back-pressure, not loss).
    pub(crate) fn send<K, P>(&self, record: BaseRecord<'_, K, P, usize>)
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        send(&self.producer, record);
    }

    /// Produces a record now, or holds it until the transaction being committed is done
    /// (exactly-once), so that it joins the next one.
    pub(crate) fn produce(&self, o: Outgoing<'_>) {
        if self.committing.load(Ordering::Relaxed) {
            lock(&self.deferred).push(Deferred::new(o));
        } else {
            self.produce_now(o);
        }
    }

    fn produce_now(&self, o: Outgoing<'_>) {
        let k = &self.cfg.kafka;
        let topic = match o.destination {
            Destination::Transitions => k.output_topic.as_str(),
            Destination::DeadLetters => k.dead_letter_topic.as_str(),
            Destination::Repartition => self.repartition_topic.as_str(),
        };
        let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(topic, self.before_send(o.since_ms));
        if let Some(p) = o.partition {
            record = record.partition(p);
        }
        if let Some(key) = o.key {
            record = record.key(key);
        }
        // Bytes unchanged: a record without a value stays without one.
        if let Some(payload) = o.payload {
            record = record.payload(payload);
        }
        if let Some(h) = o.headers {
            record = record.headers(h);
        }
        if let Some(ts) = o.timestamp {
            record = record.timestamp(ts);
        }
        self.send(record);
    }

    /// Encodes the changelog records of every change since the last commit into a batch, each
    /// counted as sent now (in the current epoch, at-least-once), for the committer thread to
    /// produce.
    fn encode_changelog(&self) -> ChangelogBatch {
        let mut batch = lock(&self.spare).pop().unwrap_or_default();
        let mut n = 0u64;
        self.shared.drain_changelog(|task, key, value| {
            batch.push(task, key, value, self.before_send(None));
            n += 1;
        });
        self.metrics.changelog_records.inc_by(n);
        self.metrics.changelog_bytes.inc_by(batch.data.len() as u64);
        batch
    }

    /// Hands the changelog records of the leads changed so far to the committer thread.
    fn send_changelog(&self) -> Result<(), PipelineError> {
        let batch = self.encode_changelog();
        if batch.records.is_empty() {
            lock(&self.spare).push(batch);
            return Ok(());
        }
        self.pending_batches.fetch_add(1, Ordering::Relaxed);
        let sent = lock(&self.jobs).as_ref().is_some_and(|jobs| jobs.send(Job::Changelog(batch)).is_ok());
        if !sent {
            return Err(PipelineError::Restore("the committer thread is gone".into()));
        }
        Ok(())
    }

    /// Exactly-once, halfway through a commit interval: the changelog records of the leads
    /// changed so far join the open transaction now, so that the commit has only the second
    /// half's to deliver before EndTxn. Deliveries were most of a commit's time (at 50k
    /// events/s, 12 of 13 ms median), and a commit's time is added to every transition's
    /// latency. A lead changed in both halves is written twice.
    pub(crate) fn send_changelog_early(&self) -> Result<(), PipelineError> {
        if !self.exactly_once || self.committing.load(Ordering::Relaxed) || !self.txn_open.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.send_changelog()
    }

    /// Waits until the committer thread has produced every batch handed to it.
    fn wait_batches_sent(&self, timeout: Duration) -> Result<(), PipelineError> {
        let deadline = Instant::now() + timeout;
        while self.pending_batches.load(Ordering::Acquire) > 0 {
            if Instant::now() >= deadline {
                return Err(PipelineError::Flush(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }

    /// The periodic commit (every `commit_interval_ms`): never waits for the broker under
    /// at-least-once; commits the transaction under exactly-once.
    pub(crate) fn commit_tick(&self, consumer: &BaseConsumer<Rebalancing>) -> Result<Committed, PipelineError> {
        if self.exactly_once {
            if self.committing.load(Ordering::Relaxed) {
                // The previous transaction is still committing: this interval's work joins the
                // next one.
                return Ok(Committed::Nothing);
            }
            return self.start_transaction_commit(consumer);
        }
        self.send_changelog()?;
        self.close_epoch();
        self.commit_delivered(consumer)?;
        Ok(Committed::Done)
    }

    /// Commits everything processed so far, and waits for it (revoke, shutdown).
    pub(crate) fn commit_now(&self, consumer: &BaseConsumer<Rebalancing>) -> Result<Committed, PipelineError> {
        if self.exactly_once {
            if self.transaction_done(true)? == Committed::Aborted {
                return Ok(Committed::Aborted);
            }
            if self.start_transaction_commit(consumer)? == Committed::Nothing {
                return Ok(Committed::Nothing);
            }
            return self.transaction_done(true);
        }
        let started = Instant::now();
        self.send_changelog()?;
        self.close_epoch();
        self.wait_batches_sent(Duration::from_secs(60))?;
        wait_delivered(&self.producer, Duration::from_secs(60)).map_err(PipelineError::Flush)?;
        let failed = self.producer.context().failed.load(Ordering::Relaxed);
        if failed > 0 {
            self.metrics.commits.with_label_values(&["failed"]).inc();
            return Err(PipelineError::Delivery(failed));
        }
        lock(&self.epochs).closed.clear();
        let offsets = self.shared.offsets_to_commit(None);
        if offsets.count() == 0 {
            return Ok(Committed::Nothing);
        }
        self.commit_offsets(consumer, &offsets, CommitMode::Sync, started);
        Ok(Committed::Done)
    }

    /// Closes the current epoch with the positions reached (at-least-once). Waits for the oldest
    /// closed epoch first if [`EPOCHS`] are unacknowledged.
    fn close_epoch(&self) {
        let mut epochs = lock(&self.epochs);
        while epochs.closed.len() >= EPOCHS - 1 {
            let oldest = epochs.closed.front().expect("not empty").0;
            if self.producer.context().unacknowledged(oldest) == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let epoch = self.epoch.fetch_add(1, Ordering::Relaxed);
        epochs.closed.push_back((epoch, self.shared.offsets_to_commit(None), Instant::now()));
    }

    /// Commits (asynchronously) the positions of every closed epoch whose records, and those of
    /// every earlier epoch, are all acknowledged (at-least-once). Called on every loop turn.
    pub(crate) fn commit_delivered(&self, consumer: &BaseConsumer<Rebalancing>) -> Result<(), PipelineError> {
        if self.exactly_once {
            return Ok(());
        }
        let ctx = self.producer.context();
        let mut epochs = lock(&self.epochs);
        let mut ready = None;
        while let Some((epoch, _, _)) = epochs.closed.front() {
            if ctx.unacknowledged(*epoch) > 0 {
                break;
            }
            let failed = ctx.failed.load(Ordering::Relaxed);
            if failed > 0 {
                self.metrics.commits.with_label_values(&["failed"]).inc();
                return Err(PipelineError::Delivery(failed));
            }
            ready = epochs.closed.pop_front();
        }
        drop(epochs);
        // Positions only grow, so the newest ready epoch covers the older ones.
        if let Some((_, offsets, closed_at)) = ready {
            if offsets.count() > 0 {
                self.commit_offsets(consumer, &offsets, CommitMode::Async, closed_at);
            }
        }
        Ok(())
    }

    fn commit_offsets(
        &self,
        consumer: &BaseConsumer<Rebalancing>,
        offsets: &rdkafka::TopicPartitionList,
        mode: CommitMode,
        since: Instant,
    ) {
        match consumer.commit(offsets, mode) {
            Ok(()) => {
                self.shared.committed(offsets);
                self.metrics.commits.with_label_values(&["ok"]).inc();
            }
            Err(e) => {
                // Not fatal: the next commit carries the same or later offsets.
                warn!(error = %e, "offset commit failed");
                self.metrics.commits.with_label_values(&["failed"]).inc();
            }
        }
        self.metrics.commit_seconds.with_label_values(&["at_least_once"]).observe(since.elapsed().as_secs_f64());
    }

    /// After a lost assignment (at-least-once): positions closed in epochs are not ours to
    /// commit any more.
    pub(crate) fn forget_closed_epochs(&self) {
        lock(&self.epochs).closed.clear();
    }

    /// Exactly-once: the changelog records and the offsets join the open transaction (opened
    /// now if nothing was sent yet), which goes to the committer thread. Records produced from
    /// now on are deferred until it is done ([`Committer::transaction_done`]).
    fn start_transaction_commit(&self, consumer: &BaseConsumer<Rebalancing>) -> Result<Committed, PipelineError> {
        let started = Instant::now();
        let offsets = self.shared.offsets_to_commit(None);
        {
            let mut txn = lock(&self.txn);
            if !txn.open && offsets.count() == 0 && self.shared.changed_leads() == 0 {
                return Ok(Committed::Nothing);
            }
            self.begin(&mut txn)?;
        }
        let changelog = self.encode_changelog();
        let mut txn = lock(&self.txn);
        txn.attempts += 1;
        let mut abort = false;
        if self.abort_every.is_some_and(|n| txn.attempts % n == 0) {
            info!(attempt = txn.attempts, "test hook: aborting this transaction");
            abort = true;
        }
        let group = if offsets.count() > 0 { consumer.group_metadata() } else { None };
        if offsets.count() > 0 && group.is_none() {
            // Not a group member right now: these offsets cannot be committed by us.
            warn!("no group metadata; aborting the transaction");
            abort = true;
        }
        let since = std::mem::take(&mut txn.since);
        txn.open = false;
        self.txn_open.store(false, Ordering::Relaxed);
        self.committing.store(true, Ordering::Relaxed);
        let job = CommitJob { changelog, offsets, group, abort, since, started };
        let sent = lock(&self.jobs).as_ref().is_some_and(|jobs| jobs.send(Job::Commit(job)).is_ok());
        if !sent {
            return Err(PipelineError::Restore("the committer thread is gone".into()));
        }
        Ok(Committed::Done)
    }

    /// Exactly-once: what became of the transaction with the committer thread, if any (`wait`:
    /// waits for it). Once it is committed, the deferred records go into the next transaction;
    /// once it is aborted, they are dropped and the caller rolls the state back.
    pub(crate) fn transaction_done(&self, wait: bool) -> Result<Committed, PipelineError> {
        if !self.committing.load(Ordering::Relaxed) {
            return Ok(Committed::Nothing);
        }
        let done = {
            let rx = lock(&self.done);
            if wait {
                rx.recv().map_err(|_| PipelineError::Restore("the committer thread is gone".into()))?
            } else {
                match rx.try_recv() {
                    Ok(d) => d,
                    Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(Committed::Nothing),
                    Err(_) => return Err(PipelineError::Restore("the committer thread is gone".into())),
                }
            }
        };
        self.committing.store(false, Ordering::Relaxed);
        match done.result {
            Ok(true) => {
                self.shared.committed(&done.offsets);
                let now = wall_ms();
                for since in done.since {
                    self.metrics.transition_latency.observe((now - since).max(0) as f64 / 1000.0);
                }
                self.metrics.commits.with_label_values(&["ok"]).inc();
                self.metrics
                    .commit_seconds
                    .with_label_values(&["exactly_once"])
                    .observe(done.started.elapsed().as_secs_f64());
                let deferred = std::mem::take(&mut *lock(&self.deferred));
                for mut d in deferred {
                    self.produce_now(d.outgoing());
                }
                Ok(Committed::Done)
            }
            Ok(false) => {
                lock(&self.deferred).clear();
                self.metrics.commits.with_label_values(&["aborted"]).inc();
                Ok(Committed::Aborted)
            }
            Err(e) => Err(PipelineError::Transaction(e)),
        }
    }

    /// Aborts the open transaction, after the one with the committer thread is done (a lost
    /// assignment: nothing of ours may commit from here); the caller rolls the state back.
    pub(crate) fn abort(&self) -> Result<Committed, PipelineError> {
        self.transaction_done(true)?;
        // An early changelog batch still with the committer thread would be produced into
        // the aborted transaction's place.
        self.wait_batches_sent(TXN_TIMEOUT)?;
        lock(&self.deferred).clear();
        let mut txn = lock(&self.txn);
        if txn.open {
            abort_txn(&self.producer).map_err(PipelineError::Transaction)?;
        }
        txn.open = false;
        self.txn_open.store(false, Ordering::Relaxed);
        txn.since.clear();
        self.metrics.commits.with_label_values(&["aborted"]).inc();
        Ok(Committed::Aborted)
    }

    /// Replaces every task's engine with one restored from the changelog and moves every input
    /// partition back to its committed offset: the state of the last committed transaction.
    pub(crate) fn rewind(&self, consumer: &BaseConsumer<Rebalancing>) -> Result<(), PipelineError> {
        self.rewind_needed.store(false, Ordering::Relaxed);
        // Records held for the next transaction came from input that is read again.
        lock(&self.deferred).clear();
        // Records polled before this point are stale.
        self.rebalances.fetch_add(1, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaque_carries_epoch_and_latency_origin() {
        let o = opaque(5, Some(1_764_000_000_123));
        assert_eq!(epoch_of(o), 5);
        assert_eq!(o as u64 & LOW48, 1_764_000_000_124);
        let o = opaque(EPOCHS as u64 + 7, None);
        assert_eq!((epoch_of(o), o as u64 & LOW48), (7, 0));
    }
}
