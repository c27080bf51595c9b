//! The only place that sets librdkafka properties.
//!
//! Defaults are tuned for latency (a transition reaches sales within milliseconds) without
//! giving up throughput: consumers fetch with `fetch.wait.max.ms=10` instead of 500, producers
//! linger 1 ms instead of 5. The `[kafka.librdkafka]` table of the config is applied last, so
//! operators can override any of these and add security settings (TLS, SASL). Config maps are
//! never logged whole: librdkafka values can be secrets.

use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

/// Settings shared by every client.
fn base(cfg: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    c.set("client.id", client_id);
    c
}

fn passthrough(mut c: ClientConfig, cfg: &KafkaConfig) -> ClientConfig {
    for (k, v) in &cfg.librdkafka {
        c.set(k, v);
    }
    c
}

/// The input consumer: a group member that commits explicitly, only after everything a record
/// caused is acknowledged, and reads only committed data.
pub fn consumer_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = base(cfg, "leadscore-consumer");
    c.set("group.id", &cfg.group_id)
        // Offsets are committed by the pipeline after flush (or in the transaction), never by a timer.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        // Low-latency fetching (default 500 ms).
        .set("fetch.wait.max.ms", "10")
        .set("fetch.queue.backoff.ms", "10")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "2000")
        .set("enable.partition.eof", "false")
        // Range gives a member the same partition numbers of every equally partitioned input
        // topic: one task (engine and changelog partition) per partition number.
        .set("partition.assignment.strategy", "range")
        // Consumer lag per partition for leadscore_consumer_lag_records.
        .set("statistics.interval.ms", "5000");
    passthrough(c, cfg)
}

/// The output producer (transitions, dead letters, forwarded records, changelog records):
/// idempotent, acks from all replicas.
///
/// No compression (Kafka's and librdkafka's default): the changelog, one small binary record per
/// lead changed in a commit interval, is most of what leadscore writes, and it barely
/// compresses. Measured on the catch-up benchmark (bench/kafka.sh catchup), lz4 cost about a
/// third of leadscore's CPU per record and raised the broker's by two thirds. Set
/// `compression.type` in `[kafka.librdkafka]` where the network, not the CPU, is short.
/// `linger.ms=1` keeps a transition's way to sales short; 5 (librdkafka's default) batches more
/// and raised catch-up throughput by about a fifth in the same benchmark.
pub fn producer_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = base(cfg, "leadscore-producer");
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("message.timeout.ms", "30000")
        .set("compression.type", "none");
    passthrough(c, cfg)
}

/// The exactly-once producer: transactional, with a stable `transactional.id` so a restarted
/// instance fences its previous incarnation and aborts its open transaction at once. The
/// transaction timeout is short (Kafka Streams uses 10 s under exactly-once; librdkafka's
/// default is 60 s): a killed instance's open transaction holds back every `read_committed`
/// reader until it times out. Deliveries must time out before the transaction does.
pub fn transactional_producer_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = base(cfg, "leadscore-producer");
    c.set("transactional.id", cfg.transactional_id())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("transaction.timeout.ms", "10000")
        .set("message.timeout.ms", "9000")
        // As the at-least-once producer (see `producer_config`).
        .set("compression.type", "none");
    passthrough(c, cfg)
}

/// The consumer that restores tasks from the state changelog: no group (it assigns partitions
/// itself and commits nothing), committed data only, and an end-of-partition event at the last
/// stable offset, which is where a restore is complete.
pub fn restore_consumer_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = base(cfg, "leadscore-restore");
    c.set("group.id", format!("{}-restore", cfg.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "10")
        // A short read-ahead: a restore applies records as fast as it can fetch them, and
        // whatever librdkafka fetches ahead (fetched messages, decompressed batches, receive
        // buffers) is peak memory on top of the engines, per restore thread. The defaults let
        // it read nearly a whole changelog ahead: measured (deploy/sizing/memory.py
        // --restore-env), these settings halve a restore's peak and do not slow it down. The
        // short queue backoff matters: at librdkafka's default (1 s) a full queue stalls the
        // fetcher for a second each time.
        .set("queued.max.messages.kbytes", "8192")
        .set("queued.min.messages", "10000")
        .set("fetch.max.bytes", "8388608")
        .set("max.partition.fetch.bytes", "1048576")
        .set("fetch.queue.backoff.ms", "10");
    passthrough(c, cfg)
}

/// The admin client that checks the input topics and creates the state topic. Its metadata
/// requests must never auto-create a missing input topic with the broker's defaults.
pub fn admin_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = base(cfg, "leadscore-admin");
    c.set("allow.auto.create.topics", "false");
    passthrough(c, cfg)
}

/// The producer of `generate` into Kafka: records in real time, as an upstream service that
/// cares about latency would send them (`linger.ms=1`: a record's timestamp is taken when it is
/// sent, so the producer's linger is part of every latency measured from it, and librdkafka's
/// default of 5 ms would add up to 5 ms that no consumer can take back).
pub fn live_producer_config(brokers: &str) -> ClientConfig {
    let mut c = bulk_producer_config(brokers);
    c.set("linger.ms", "1");
    c
}

/// A plain producer for tests and tools: batches generously for throughput.
pub fn bulk_producer_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", "leadscore-generate")
        // Kafka's default partitioner (Java clients): keyed records land in their lead's partition,
        // so leadscore scores them where they are instead of forwarding them.
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.type", "lz4");
    c
}
