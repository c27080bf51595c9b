//! Shared harness of the tests that run against a real Kafka broker.
//!
//! - [`bootstrap`]: the broker: `KAFKA_BOOTSTRAP` if set, else `scripts/kafka start` (once per
//!   test binary; idempotent, so test binaries share one broker; `scripts/test` stops it).
//! - [`unique`]: topic and group names no other test (or earlier run) uses.
//! - [`create_topics`], [`produce`], [`produce_lines`], [`Reader`] / [`read_all`]: topics with
//!   chosen partition counts, producing with delivery reports (partition and offset of each
//!   record), and reading a whole topic back from the beginning with `read_committed`.
//! - [`committed_offsets`], [`end_offsets`] (last stable offsets), [`high_watermarks`],
//!   [`group_members`] (the coordinator's view of a consumer group), [`topic_config`]: what the
//!   broker says about groups and topics.
//! - [`start_service`]: a [`Service`] in process on fresh topics and group, HTTP on an ephemeral
//!   port; [`http_get`] and [`parse_metrics`] to talk to it.
//! - [`Bin`]: the `leadscore` binary as a subprocess (logs to a file, signals, exit status).
//!
//! Waiting is always a condition polled inside a deadline ([`wait_until`], [`Reader::poll_until`]),
//! never a bare sleep.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use leadscore::config::{Config, ProcessingGuarantee};
use leadscore::model::Model;
use leadscore::service::Service;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

/// Timeout of single metadata / admin requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Wall clock, epoch milliseconds (the service's clock too).
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as i64
}

/// The broker's bootstrap address: `KAFKA_BOOTSTRAP`, else the repo's local Kafka, started once
/// per test binary (`scripts/kafka start` reuses a running broker and is serialised by a lock).
pub fn bootstrap() -> &'static str {
    static BOOTSTRAP: OnceLock<String> = OnceLock::new();
    BOOTSTRAP.get_or_init(|| {
        if let Ok(b) = std::env::var("KAFKA_BOOTSTRAP") {
            if !b.trim().is_empty() {
                return b.trim().to_owned();
            }
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka");
        let out = Command::new(&script).arg("start").output().expect("cannot run scripts/kafka start");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "scripts/kafka start failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("KAFKA_BOOTSTRAP="))
            .unwrap_or_else(|| panic!("scripts/kafka start printed no KAFKA_BOOTSTRAP=:\n{stdout}"))
            .trim()
            .to_owned()
    })
}

/// A name no other test, test binary or earlier run uses: `prefix-<ms>-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}-{}-{}", now_ms(), std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Polls `cond` every 10 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn client_config() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap());
    c
}

/// Runs an rdkafka future (admin requests) to completion.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime").block_on(f)
}

/// Partition count of `topic` per the broker's metadata, with leaders for all of them; `None`
/// while the topic is unknown or not fully up.
pub fn partition_count(topic: &str) -> Option<usize> {
    let consumer: BaseConsumer = client_config().create().expect("metadata client");
    let md = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT).ok()?;
    let t = md.topics().iter().find(|t| t.name() == topic)?;
    if t.error().is_some() || t.partitions().is_empty() || t.partitions().iter().any(|p| p.leader() < 0) {
        return None;
    }
    Some(t.partitions().len())
}

/// The value of the config entry `key` of `topic`, as the broker describes it (`None`: the
/// topic or the entry is unknown).
pub fn topic_config(topic: &str, key: &str) -> Option<String> {
    let admin: AdminClient<DefaultClientContext> = client_config().create().expect("admin client");
    let opts = AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT));
    let results = block_on(admin.describe_configs([&ResourceSpecifier::Topic(topic)], &opts)).expect("DescribeConfigs");
    let resource = results.into_iter().next()?.ok()?;
    resource.get(key).and_then(|e| e.value.clone())
}

/// Creates topics with the given partition counts (replication 1) and waits until the metadata
/// shows every partition with a leader.
pub fn create_topics(topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> = client_config().create().expect("admin client");
    let new: Vec<NewTopic<'_>> =
        topics.iter().map(|(name, parts)| NewTopic::new(name, *parts, TopicReplication::Fixed(1))).collect();
    let opts = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT)).request_timeout(Some(REQUEST_TIMEOUT));
    let results = block_on(admin.create_topics(&new, &opts)).expect("CreateTopics request");
    for r in results {
        if let Err((name, code)) = r {
            panic!("cannot create topic {name}: {code}");
        }
    }
    for (name, parts) in topics {
        assert!(
            wait_until(Duration::from_secs(30), || partition_count(name) == Some(*parts as usize)),
            "topic {name} did not show {parts} partitions with leaders in the metadata"
        );
    }
}

/// One record to produce. `partition: None` lets the default partitioner pick by key.
#[derive(Debug, Clone, Default)]
pub struct Rec {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub timestamp_ms: Option<i64>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub partition: Option<i32>,
}

impl Rec {
    pub fn new(key: Option<&str>, payload: impl Into<Vec<u8>>) -> Rec {
        Rec { key: key.map(|k| k.as_bytes().to_vec()), payload: payload.into(), ..Rec::default() }
    }

    pub fn at(mut self, timestamp_ms: i64) -> Rec {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    pub fn header(mut self, key: &str, value: &[u8]) -> Rec {
        self.headers.push((key.to_owned(), value.to_vec()));
        self
    }
}

/// Where a record went, or why it did not; `None` until its delivery report arrives.
type Report = Option<Result<(i32, i64), String>>;

/// Delivery reports by record index.
struct Deliveries(Mutex<Vec<Report>>);

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<usize>;

    fn delivery(&self, result: &DeliveryResult<'_>, index: Box<usize>) {
        let r = match result {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.to_string()),
        };
        self.0.lock().unwrap()[*index] = Some(r);
    }
}

/// An idempotent producer (order per partition is kept) that reports where each record went.
/// Creating and closing one costs about half a second: streams reuse one.
pub struct TestProducer {
    producer: BaseProducer<Deliveries>,
}

impl Default for TestProducer {
    fn default() -> Self {
        TestProducer::new()
    }
}

impl TestProducer {
    pub fn new() -> TestProducer {
        let producer = client_config()
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            .create_with_context(Deliveries(Mutex::new(Vec::new())))
            .expect("test producer");
        TestProducer { producer }
    }

    /// Produces `records` to `topic` in order and waits until all are acknowledged. Returns each
    /// record's (partition, offset).
    pub fn send(&self, topic: &str, records: &[Rec]) -> Vec<(i32, i64)> {
        *self.producer.context().0.lock().unwrap() = vec![None; records.len()];
        for (i, r) in records.iter().enumerate() {
            let mut headers = OwnedHeaders::new();
            for (k, v) in &r.headers {
                headers = headers.insert(Header { key: k, value: Some(v) });
            }
            let mut record =
                BaseRecord::<[u8], [u8], Box<usize>>::with_opaque_to(topic, Box::new(i)).payload(&r.payload);
            if let Some(k) = &r.key {
                record = record.key(&k[..]);
            }
            if let Some(ts) = r.timestamp_ms {
                record = record.timestamp(ts);
            }
            if let Some(p) = r.partition {
                record = record.partition(p);
            }
            if !r.headers.is_empty() {
                record = record.headers(headers);
            }
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                        rec,
                    )) => {
                        record = rec;
                        self.producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => panic!("cannot produce to {topic}: {e}"),
                }
            }
        }
        self.producer.flush(Duration::from_secs(60)).expect("flush of the test producer");
        let reports = std::mem::take(&mut *self.producer.context().0.lock().unwrap());
        reports
            .into_iter()
            .enumerate()
            .map(|(i, r)| match r {
                Some(Ok(po)) => po,
                Some(Err(e)) => panic!("record {i} to {topic} not delivered: {e}"),
                None => panic!("record {i} to {topic}: no delivery report after flush"),
            })
            .collect()
    }

    /// [`TestProducer::send`] of JSON lines, each keyed by `key_fn(line)`.
    pub fn send_lines(
        &self,
        topic: &str,
        lines: &[Vec<u8>],
        key_fn: impl Fn(&[u8]) -> Option<String>,
    ) -> Vec<(i32, i64)> {
        let records: Vec<Rec> = lines.iter().map(|l| Rec::new(key_fn(l).as_deref(), l.clone())).collect();
        self.send(topic, &records)
    }
}

/// Produces `records` to `topic` in order with a new [`TestProducer`] and waits until all are
/// acknowledged. Returns each record's (partition, offset).
pub fn produce(topic: &str, records: &[Rec]) -> Vec<(i32, i64)> {
    TestProducer::new().send(topic, records)
}

/// Produces JSON lines, each keyed by `key_fn(line)`; returns each line's (partition, offset).
pub fn produce_lines(topic: &str, lines: &[Vec<u8>], key_fn: impl Fn(&[u8]) -> Option<String>) -> Vec<(i32, i64)> {
    TestProducer::new().send_lines(topic, lines, key_fn)
}

/// The `lead_id` of an event line (string, or integer as its decimal text); `None` if the line
/// has none.
pub fn lead_key(line: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    match v.get("lead_id")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A record read back.
#[derive(Debug, Clone)]
pub struct Received {
    pub key: Option<Vec<u8>>,
    /// The value; empty when the record has none (see `tombstone`).
    pub payload: Vec<u8>,
    /// The record has no value (on a compacted topic: a tombstone, the key's deletion).
    pub tombstone: bool,
    pub headers: Vec<(String, Vec<u8>)>,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    /// Wall clock when this reader got it.
    pub received_ms: i64,
}

impl Received {
    pub fn key_str(&self) -> Option<&str> {
        self.key.as_deref().map(|k| std::str::from_utf8(k).expect("UTF-8 key"))
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.payload).expect("UTF-8 payload")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Values of the headers named `key`, in order.
    pub fn header(&self, key: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| std::str::from_utf8(v).expect("UTF-8 header"))
            .collect()
    }
}

/// Reads a topic from the beginning, all partitions, `read_committed`, accumulating records.
pub struct Reader {
    consumer: BaseConsumer,
    pub topic: String,
    pub records: Vec<Received>,
}

impl Reader {
    /// Assigns every partition of `topic` (which must exist) from the beginning, under a fresh
    /// group id (nothing is committed).
    pub fn new(topic: &str) -> Reader {
        let parts = partition_count(topic).unwrap_or_else(|| panic!("topic {topic} does not exist"));
        let consumer: BaseConsumer = client_config()
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "10")
            .set("enable.partition.eof", "false")
            .create()
            .expect("test consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..parts as i32 {
            tpl.add_partition_offset(topic, p, Offset::Beginning).expect("partition offset");
        }
        consumer.assign(&tpl).expect("assign");
        Reader { consumer, topic: topic.to_owned(), records: Vec::new() }
    }

    /// Polls until `done(records so far)` holds or `timeout` passes; returns whether it held.
    pub fn poll_until(&mut self, timeout: Duration, mut done: impl FnMut(&[Received]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.records) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.consumer.poll(left.min(Duration::from_millis(20))) {
                Some(Ok(m)) => {
                    let headers = m
                        .headers()
                        .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.unwrap_or(&[]).to_vec())).collect())
                        .unwrap_or_default();
                    self.records.push(Received {
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().unwrap_or(&[]).to_vec(),
                        tombstone: m.payload().is_none(),
                        headers,
                        partition: m.partition(),
                        offset: m.offset(),
                        timestamp_ms: m.timestamp().to_millis(),
                        received_ms: now_ms(),
                    });
                }
                Some(Err(e)) => panic!("reading {}: {e}", self.topic),
                None => {}
            }
        }
    }

    /// Reads until this reader's position reaches the end offsets the topic has now (every
    /// record written before the call); returns whether it did within `timeout`.
    pub fn poll_to_end(&mut self, timeout: Duration) -> bool {
        let ends = end_offsets(&self.topic);
        self.poll_to(&ends, timeout)
    }

    /// Reads until this reader's position reaches `ends` (one offset per partition); returns
    /// whether it did within `timeout`. With [`high_watermarks`] as `ends` this holds only once
    /// no transaction is open on the topic: an open one holds `read_committed` readers back at
    /// its first offset (the last stable offset).
    pub fn poll_to(&mut self, ends: &[i64], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.reached(ends) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let n = self.records.len();
            self.poll_until(left.min(Duration::from_millis(50)), |r| r.len() > n);
        }
    }

    /// Whether this reader's position is at or past `ends` in every partition.
    pub fn reached(&self, ends: &[i64]) -> bool {
        let position = self.consumer.position().expect("position");
        ends.iter().enumerate().all(|(p, &end)| {
            end == 0
                || matches!(position.find_partition(&self.topic, p as i32).map(|e| e.offset()),
                            Some(Offset::Offset(o)) if o >= end)
        })
    }

    /// This reader's position in every partition (`None`: nothing read there yet).
    pub fn positions(&self) -> Vec<Option<i64>> {
        let position = self.consumer.position().expect("position");
        (0..partition_count(&self.topic).unwrap_or(0) as i32)
            .map(|p| match position.find_partition(&self.topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            })
            .collect()
    }

    /// Keeps reading for `quiet` and returns how many records arrived meanwhile (to check that
    /// nothing more than expected is on the topic).
    pub fn drain_for(&mut self, quiet: Duration) -> usize {
        let before = self.records.len();
        self.poll_until(quiet, |_| false);
        self.records.len() - before
    }
}

/// Reads `topic` from the beginning until `done(records)` holds or `timeout` passes; returns what
/// was read (the caller asserts on it).
pub fn read_all(topic: &str, timeout: Duration, done: impl FnMut(&[Received]) -> bool) -> Vec<Received> {
    let mut r = Reader::new(topic);
    r.poll_until(timeout, done);
    r.records
}

/// Every record of `topic` written before the call, read from the beginning.
pub fn read_to_end(topic: &str, timeout: Duration) -> Vec<Received> {
    let mut r = Reader::new(topic);
    assert!(r.poll_to_end(timeout), "could not read {topic} to its end within {timeout:?}");
    r.records
}

/// Committed offsets of `group` for every partition of `topic` (`None`: nothing committed).
pub fn committed_offsets(group: &str, topic: &str) -> Vec<Option<i64>> {
    let parts = partition_count(topic).unwrap_or_else(|| panic!("topic {topic} does not exist"));
    let consumer: BaseConsumer = client_config().set("group.id", group).create().expect("offsets client");
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts as i32 {
        tpl.add_partition(topic, p);
    }
    let got = consumer.committed_offsets(tpl, REQUEST_TIMEOUT).expect("OffsetFetch");
    (0..parts as i32)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        })
        .collect()
}

/// Consumer group `group` as its coordinator describes it: the state (`Stable`,
/// `PreparingRebalance`, `CompletingRebalance`, `Empty`, ...) and, per member, the partitions of
/// `topic` assigned to it. `None` if the group is unknown or the request fails.
pub fn group_members(group: &str, topic: &str) -> Option<(String, Vec<Vec<i32>>)> {
    let consumer: BaseConsumer = client_config().create().expect("group client");
    let list = consumer.fetch_group_list(Some(group), REQUEST_TIMEOUT).ok()?;
    let info = list.groups().iter().find(|g| g.name() == group)?;
    let members = info.members().iter().map(|m| assigned_partitions(m.assignment().unwrap_or(&[]), topic)).collect();
    Some((info.state().to_owned(), members))
}

/// The partitions of `topic` in a consumer protocol assignment: version (int16), then an array
/// (int32 count) of topic (int16 length, bytes) with an array of partitions (int32 each), then
/// user data. Malformed or empty input gives no partitions.
fn assigned_partitions(bytes: &[u8], topic: &str) -> Vec<i32> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (b.get(..n)?, b.get(n..)?);
        *b = rest;
        Some(head)
    }
    fn int(b: &mut &[u8], n: usize) -> Option<i64> {
        Some(take(b, n)?.iter().fold(0i64, |acc, &x| (acc << 8) | i64::from(x)))
    }
    let mut b = bytes;
    let mut out = Vec::new();
    let parsed = (|| -> Option<()> {
        take(&mut b, 2)?; // version
        for _ in 0..int(&mut b, 4)? {
            let len = int(&mut b, 2)? as usize;
            let name = take(&mut b, len)?;
            for _ in 0..int(&mut b, 4)? {
                let p = int(&mut b, 4)? as i32;
                if name == topic.as_bytes() {
                    out.push(p);
                }
            }
        }
        Some(())
    })();
    if parsed.is_none() {
        out.clear();
    }
    out
}

/// End offsets of every partition of `topic` as a `read_committed` consumer sees them: the
/// last stable offset, which is the high watermark unless a transaction is open there.
pub fn end_offsets(topic: &str) -> Vec<i64> {
    watermarks(topic, "read_committed")
}

/// High watermarks of every partition of `topic`: the offset after its last record, open
/// transactions included.
pub fn high_watermarks(topic: &str) -> Vec<i64> {
    watermarks(topic, "read_uncommitted")
}

fn watermarks(topic: &str, isolation: &str) -> Vec<i64> {
    let parts = partition_count(topic).unwrap_or_else(|| panic!("topic {topic} does not exist"));
    let consumer: BaseConsumer = client_config().set("isolation.level", isolation).create().expect("watermarks client");
    (0..parts as i32).map(|p| consumer.fetch_watermarks(topic, p, REQUEST_TIMEOUT).expect("watermarks").1).collect()
}

// ---------------------------------------------------------------------------------------------
// Models

/// `examples/model.toml`.
pub fn example_model_text() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/model.toml")).expect("example model")
}

/// The example model with a 3650-day half-life and no `forget_after`: over the seconds a test
/// runs, decay moves no score across a threshold, so the wall clock (`run`) and the watermark
/// (`replay`) give the same transitions.
pub fn long_half_life_model_text() -> String {
    let text = example_model_text();
    assert!(text.contains("half_life = \"14d\"") && text.contains("forget_after = \"180d\""), "example model changed");
    text.replace("half_life = \"14d\"", "half_life = \"3650d\"")
        .lines()
        .filter(|l| !l.trim_start().starts_with("forget_after"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn parse_model(text: &str) -> Model {
    Model::from_toml(text).unwrap_or_else(|e| panic!("test model invalid: {e:?}\n{text}"))
}

/// Writes a model to a file that lives as long as the returned guard.
pub fn model_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().expect("temp file");
    f.write_all(text.as_bytes()).expect("write model");
    f.flush().expect("flush model");
    f
}

// ---------------------------------------------------------------------------------------------
// The service in process

/// Topics, group and model of a running [`Service`].
pub struct Running {
    pub service: Option<Service>,
    pub cfg: Config,
    pub model: Arc<Model>,
    pub input: String,
    pub output: String,
    pub dlq: String,
    pub addr: SocketAddr,
    _model_file: tempfile::NamedTempFile,
}

impl Running {
    pub fn svc(&self) -> &Service {
        self.service.as_ref().expect("service running")
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    pub fn metrics(&self) -> Vec<Sample> {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "/metrics: {body}");
        parse_metrics(&body)
    }

    /// Waits until `expected` partitions of the input topic are assigned (the repartition
    /// topic's are assigned beside them) and `/readyz` answers 200.
    pub fn wait_ready(&self, expected: usize, timeout: Duration) {
        let ok = wait_until(timeout, || {
            let shared = &self.svc().shared;
            (0..expected as i32).all(|p| shared.owns(&self.input, p))
                && http_get(self.addr, "/readyz").is_ok_and(|(s, _)| s == 200)
        });
        assert!(ok, "service not ready with {expected} partitions within {timeout:?}");
    }

    /// Graceful shutdown; panics on a pipeline error.
    pub fn shutdown(&mut self) {
        if let Some(s) = self.service.take() {
            s.shutdown().expect("graceful shutdown");
        }
    }
}

/// What [`start_service`] sets up.
pub struct ServiceSpec<'a> {
    pub model_toml: &'a str,
    /// Partitions of the input topic; 0: do not create it (the test creates it later).
    pub input_partitions: i32,
    /// Last changes to the config.
    pub tweak: &'a dyn Fn(&mut Config),
}

/// Creates fresh input, output and dead-letter topics, builds an at-least-once config (random
/// group, commits every 100 ms, HTTP on 127.0.0.1:0) and starts the service in process.
pub fn start_service(spec: ServiceSpec<'_>) -> Running {
    let input = unique("in");
    let output = unique("out");
    let dlq = unique("dlq");
    let mut topics = vec![(output.as_str(), 1), (dlq.as_str(), 1)];
    if spec.input_partitions > 0 {
        topics.push((input.as_str(), spec.input_partitions));
    }
    create_topics(&topics);
    let model_file = model_file(spec.model_toml);
    let mut cfg = Config::default();
    cfg.kafka.brokers = bootstrap().to_owned();
    cfg.kafka.group_id = unique("group");
    cfg.kafka.input_topics = vec![input.clone()];
    cfg.kafka.output_topic = output.clone();
    cfg.kafka.dead_letter_topic = dlq.clone();
    cfg.kafka.state_topic = unique("state");
    cfg.kafka.processing_guarantee = ProcessingGuarantee::AtLeastOnce;
    cfg.kafka.commit_interval_ms = 100;
    cfg.http.listen = "127.0.0.1:0".parse().expect("address");
    cfg.model.path = model_file.path().to_owned();
    (spec.tweak)(&mut cfg);
    cfg.validate().unwrap_or_else(|e| panic!("test config invalid: {e}"));
    let model = Arc::new(Model::load(&cfg.model.path).unwrap_or_else(|e| panic!("test model invalid: {e:?}")));
    let service = Service::start(cfg.clone(), Arc::clone(&model)).expect("Service::start");
    let addr = service.http_addr();
    Running { service: Some(service), cfg, model, input, output, dlq, addr, _model_file: model_file }
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// `GET path` over a plain TCP connection (HTTP/1.1, `Connection: close`): status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {} bytes", raw.len())))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    if head.lines().any(|l| l.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked") {
        body = dechunk(&body)?;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut b: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").ok_or_else(|| std::io::Error::other("bad chunk"))?;
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| std::io::Error::other("bad chunk size"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(b.get(..size).ok_or_else(|| std::io::Error::other("short chunk"))?);
        b = b.get(size + 2..).unwrap_or(&[]);
    }
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the sample lines of a Prometheus text exposition (comments skipped).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name_end, mut labels) = (line.find(['{', ' ']).expect("sample line"), BTreeMap::new());
        let name = line[..name_end].to_owned();
        let mut rest = &line[name_end..];
        if rest.starts_with('{') {
            let mut chars = rest[1..].char_indices();
            let (mut key, mut value, mut in_value, mut escaped) = (String::new(), String::new(), false, false);
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                if in_value {
                    match (escaped, c) {
                        (true, 'n') => {
                            value.push('\n');
                            escaped = false;
                        }
                        (true, c) => {
                            value.push(c);
                            escaped = false;
                        }
                        (false, '\\') => escaped = true,
                        (false, '"') => {
                            labels.insert(std::mem::take(&mut key), std::mem::take(&mut value));
                            in_value = false;
                        }
                        (false, c) => value.push(c),
                    }
                } else {
                    match c {
                        '}' => {
                            end = Some(i + 2);
                            break;
                        }
                        '=' => {
                            let (_, q) = chars.next().expect("quote");
                            assert_eq!(q, '"', "label value must be quoted: {line}");
                            in_value = true;
                        }
                        ',' | ' ' => {}
                        c => key.push(c),
                    }
                }
            }
            rest = &rest[end.unwrap_or_else(|| panic!("unterminated labels: {line}"))..];
        }
        let value_text = rest.split_whitespace().next().unwrap_or_else(|| panic!("no value: {line}"));
        let value = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        out.push(Sample { name, labels, value });
    }
    out
}

/// The value of the sample `name` whose labels include all of `labels`; panics unless exactly one.
pub fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let hits: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .collect();
    assert_eq!(hits.len(), 1, "{name}{labels:?}: expected one sample, got {hits:?}");
    hits[0].value
}

/// Sum of all samples named `name`.
pub fn sum_of(samples: &[Sample], name: &str) -> f64 {
    samples.iter().filter(|s| s.name == name).map(|s| s.value).sum()
}

// ---------------------------------------------------------------------------------------------
// The binary as a subprocess

/// A `leadscore` subprocess, SIGKILLed on drop unless it has exited. Its stderr (the logs) goes
/// to a file: a temporary one of its own ([`Bin::start`]), or one the caller appends every
/// incarnation of an instance to ([`Bin::spawn`]); [`Bin::log`] is this process's part of it.
pub struct Bin {
    child: Child,
    log_path: PathBuf,
    /// Where this process's output starts in the log file.
    log_start: u64,
    _own_log: Option<tempfile::NamedTempFile>,
}

impl Bin {
    /// `leadscore run` at-least-once, configured by flags, logging to a temporary file. The state
    /// topic is `<group>-state`, so runs never share one.
    pub fn start(brokers: &str, group: &str, input: &str, output: &str, dlq: &str, model: &Path) -> Bin {
        let log = tempfile::NamedTempFile::new().expect("log file");
        let mut args: Vec<&OsStr> = ["run", "--brokers", brokers, "--processing-guarantee", "at_least_once"]
            .into_iter()
            .chain(["--input-topics", input, "--output-topic", output, "--group-id", group])
            .chain(["--listen", "127.0.0.1:0", "--model"])
            .map(OsStr::new)
            .collect();
        args.push(model.as_os_str());
        let state = format!("{group}-state");
        let env = [("LEADSCORE_KAFKA_DEAD_LETTER_TOPIC", dlq), ("LEADSCORE_KAFKA_STATE_TOPIC", state.as_str())];
        let mut bin = Bin::spawn(&args, &env, log.path());
        bin._own_log = Some(log);
        bin
    }

    /// `leadscore ARGS` without the `LEADSCORE_*` variables of this process, with `env` added
    /// (`LEADSCORE_LOG` is `info` unless `env` sets it); stdin and stdout are null, stderr is
    /// appended to `log` (created if missing).
    pub fn spawn<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &str)], log: &Path) -> Bin {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
        let log_start = file.metadata().expect("log file metadata").len();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_leadscore"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("LEADSCORE_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(args).env("LEADSCORE_LOG", "info").stdin(Stdio::null()).stdout(Stdio::null()).stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn leadscore");
        Bin { child, log_path: log.to_owned(), log_start, _own_log: None }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What this process has logged so far.
    pub fn log(&self) -> String {
        let mut text = Vec::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            if f.seek(SeekFrom::Start(self.log_start)).is_ok() {
                let _ = f.read_to_end(&mut text);
            }
        }
        String::from_utf8_lossy(&text).into_owned()
    }

    /// The address of the HTTP endpoints, once the process has logged `HTTP listening`.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        let log = self.log();
        let line = log.lines().find(|l| l.contains("HTTP listening"))?;
        let addr = line.split_whitespace().find_map(|w| w.strip_prefix("addr="))?;
        addr.trim_matches('"').parse().ok()
    }

    /// Sends `signal` (a `kill` name: `TERM`, `STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().to_string();
        let status = Command::new("kill").args([format!("-{signal}").as_str(), &pid]).status().expect("kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// The exit status if the process has exited (it is reaped), else `None`.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// SIGKILL (a crash: no shutdown of any kind), then waits for the exit.
    pub fn kill(&mut self) -> ExitStatus {
        if self.exited().is_none() {
            let _ = self.child.kill();
        }
        self.child.wait().expect("wait")
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal("TERM");
        let started = Instant::now();
        let mut status = None;
        let exited = wait_until(timeout, || {
            status = self.exited();
            status.is_some()
        });
        assert!(exited, "no exit within {timeout:?} of SIGTERM; log:\n{}", self.log());
        eprintln!("leadscore run exited {:?} after SIGTERM", started.elapsed());
        status.unwrap()
    }
}

impl Drop for Bin {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
