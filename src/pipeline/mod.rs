//! The Kafka loop: consume, decode, score, publish, commit.
//!
//! One thread owns the consumer and drives everything that touches librdkafka, because its
//! calls block (flush, commit, rebalance callbacks, which run inside `poll` on this thread). The
//! engines live per input partition behind one mutex, so the HTTP side can read scores between
//! records without a channel round trip.
//!
//! At-least-once, the way rust-rdkafka's example and Vector's Kafka source do it: offsets are
//! committed only after the producer has flushed everything the records before them caused
//! (transitions and dead letters), every `commit_interval_ms` and on revoke and shutdown. A
//! delivery that fails for good stops the service with an error before any later commit, so a
//! restart re-reads from the last commit instead of losing output.

mod state;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{debug, info, warn};

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
    #[error("processing_guarantee = \"exactly_once\" is not available yet; set it to \"at_least_once\"")]
    ExactlyOnceUnavailable,
}

impl PipelineError {
    /// Stable code for logs and exit reasons.
    pub fn code(&self) -> &'static str {
        match self {
            PipelineError::Client(_) => "client",
            PipelineError::Subscribe(_) => "subscribe",
            PipelineError::Delivery(_) => "delivery",
            PipelineError::Flush(_) => "flush",
            PipelineError::ExactlyOnceUnavailable => "exactly_once_unavailable",
        }
    }
}

/// How often due crossings are checked between records (they are also checked before each
/// record of a partition): the bound on how late a decay-driven transition goes out.
const CROSSING_TICK: Duration = Duration::from_millis(100);

/// Milliseconds since the epoch, from the wall clock: the clock of decay-driven crossings and
/// `future_timestamp` in `run`.
pub fn wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Delivery bookkeeping: failures stop the pipeline; successes feed the latency histogram.
pub struct Delivery {
    failed: std::sync::atomic::AtomicU64,
    metrics: Metrics,
}

impl ClientContext for Delivery {}

impl ProducerContext for Delivery {
    /// Epoch ms of what the record's latency is measured from (input record time, or crossing
    /// time); negative for dead letters (no latency observed).
    type DeliveryOpaque = Box<i64>;

    fn delivery(&self, result: &DeliveryResult<'_>, since_ms: Box<i64>) {
        match result {
            Ok(_) => {
                if *since_ms >= 0 {
                    let secs = (wall_ms() - *since_ms).max(0) as f64 / 1000.0;
                    self.metrics.transition_latency.observe(secs);
                }
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "delivery failed");
            }
        }
    }
}

/// Rebalance handling, run by librdkafka inside `poll` on the pipeline thread.
pub struct Rebalancing {
    shared: Arc<Shared>,
    producer: Arc<BaseProducer<Delivery>>,
    health: Arc<Health>,
    metrics: Metrics,
}

impl ClientContext for Rebalancing {
    /// librdkafka's statistics (every `statistics.interval.ms`): consumer lag per partition.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut total = 0i64;
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // Partition -1 is librdkafka's internal UA partition; lag -1 means unknown.
                if *partition >= 0 && p.consumer_lag >= 0 && self.shared.owns(topic, *partition) {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[topic.as_str(), &partition.to_string()])
                        .set(p.consumer_lag);
                    total += p.consumer_lag;
                }
            }
        }
        self.shared.set_lag(total);
    }
}

impl ConsumerContext for Rebalancing {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Finish what the revoked partitions caused and commit it, so the next owner starts
            // exactly after it; then drop their state.
            let lost = consumer.assignment_lost();
            if !lost {
                if let Err(e) = flush_fast(&self.producer, Duration::from_secs(30)) {
                    warn!(error = %e, "flush on revoke failed");
                }
                let offsets = self.shared.offsets_to_commit(Some(tpl));
                if offsets.count() > 0 && self.producer.context().failed.load(Ordering::Relaxed) == 0 {
                    if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
                        warn!(error = %e, "commit on revoke failed");
                    }
                }
            }
            let dropped = self.shared.drop_partitions(tpl);
            info!(partitions = dropped, lost, "partitions revoked");
            self.metrics.assigned_partitions.set(self.shared.assigned() as i64);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let added = self.shared.add_partitions(tpl);
                info!(partitions = added, "partitions assigned");
                self.metrics.assigned_partitions.set(self.shared.assigned() as i64);
                // No state to restore at-least-once: ready as soon as partitions are ours.
                self.health.set_ready(true);
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

/// Everything but the consumer (messages borrow the consumer while they are processed).
struct Worker {
    cfg: Config,
    shared: Arc<Shared>,
    metrics: Metrics,
    producer: Arc<BaseProducer<Delivery>>,
    decode: DecodeOptions,
    max_future_skew_ms: i64,
    json: Vec<u8>,
    pending: Vec<Transition>,
}

impl Pipeline {
    /// Creates the clients and subscribes. Nothing is consumed until [`Pipeline::run`].
    pub fn new(
        cfg: Config,
        model: Arc<Model>,
        metrics: Metrics,
        health: Arc<Health>,
        shared: Arc<Shared>,
    ) -> Result<Pipeline, PipelineError> {
        if cfg.kafka.processing_guarantee == ProcessingGuarantee::ExactlyOnce {
            return Err(PipelineError::ExactlyOnceUnavailable);
        }
        let producer: BaseProducer<Delivery> = crate::kafka::producer_config(&cfg.kafka)
            .create_with_context(Delivery { failed: Default::default(), metrics: metrics.clone() })
            .map_err(PipelineError::Client)?;
        let producer = Arc::new(producer);
        let ctx = Rebalancing {
            shared: Arc::clone(&shared),
            producer: Arc::clone(&producer),
            health,
            metrics: metrics.clone(),
        };
        let consumer: BaseConsumer<Rebalancing> =
            crate::kafka::consumer_config(&cfg.kafka).create_with_context(ctx).map_err(PipelineError::Client)?;
        let topics: Vec<&str> = cfg.kafka.input_topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(PipelineError::Subscribe)?;
        let decode = DecodeOptions {
            max_event_bytes: cfg.input.max_event_bytes,
            fallback_timestamp_ms: None,
            latest_timestamp_ms: None,
        };
        let max_future_skew_ms = cfg.input.max_future_skew_ms();
        debug_assert!(model.name == shared.model().name);
        let worker = Worker {
            cfg,
            shared,
            metrics,
            producer,
            decode,
            max_future_skew_ms,
            json: Vec::with_capacity(1024),
            pending: Vec::new(),
        };
        Ok(Pipeline { consumer, worker })
    }

    /// Consumes until `shutdown` is set, then stops consuming, finishes in-flight work, flushes
    /// the producer and commits. Returns an error (and commits nothing further) when a delivery
    /// failed for good.
    pub fn run(self, shutdown: Arc<AtomicBool>) -> Result<(), PipelineError> {
        let Pipeline { consumer, mut worker } = self;
        let w = &mut worker;
        let interval = Duration::from_millis(w.cfg.kafka.commit_interval_ms);
        let mut next_commit = Instant::now() + interval;
        let mut next_crossings = Instant::now() + CROSSING_TICK;
        info!(topics = ?w.cfg.kafka.input_topics, group = %w.cfg.kafka.group_id, "consuming");
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
            w.producer.poll(Duration::ZERO);
            let now = Instant::now();
            if now >= next_crossings {
                // Decay-driven crossings follow the wall clock, whatever the commit interval.
                w.fire_due_crossings();
                next_crossings = now + CROSSING_TICK;
            }
            if now >= next_commit {
                w.commit(&consumer, CommitMode::Async)?;
                next_commit = Instant::now() + interval;
            }
        }
        info!("shutting down: flushing and committing");
        w.fire_due_crossings();
        w.commit(&consumer, CommitMode::Sync)?;
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
        let record = BaseRecord::with_opaque_to(&self.cfg.kafka.output_topic, Box::new(since_ms))
            .key(t.lead_id.as_bytes())
            .payload(&self.json[..]);
        send(&self.producer, record);
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
        let mut record = BaseRecord::with_opaque_to(&self.cfg.kafka.dead_letter_topic, Box::new(-1)).headers(headers);
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
        send(&self.producer, record);
    }

    /// Flushes the producer, then commits the offsets after everything it acknowledged.
    fn commit(&mut self, consumer: &BaseConsumer<Rebalancing>, mode: CommitMode) -> Result<(), PipelineError> {
        let started = Instant::now();
        flush_fast(&self.producer, Duration::from_secs(60)).map_err(PipelineError::Flush)?;
        let failed = self.producer.context().failed.load(Ordering::Relaxed);
        if failed > 0 {
            self.metrics.commits.with_label_values(&["failed"]).inc();
            return Err(PipelineError::Delivery(failed));
        }
        let offsets = self.shared.offsets_to_commit(None);
        if offsets.count() > 0 {
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
        }
        self.metrics.commit_seconds.with_label_values(&["at_least_once"]).observe(started.elapsed().as_secs_f64());
        Ok(())
    }
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
