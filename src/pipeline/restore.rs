//! The state changelog on the Kafka side: the compacted state topic is created when missing,
//! co-partitioned with the input, and tasks are restored from it before they process anything.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use super::{PipelineError, Shared};
use crate::config::KafkaConfig;
use crate::engine::Engine;
use crate::metrics::Metrics;

/// The restore consumer's context: end-of-partition is how a restore knows it is complete, not
/// an error worth a log line (librdkafka reports it as a "global error" too).
struct RestoreContext;

impl rdkafka::ClientContext for RestoreContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        );
        if !eof {
            warn!(error = %error, reason, "state topic client error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for RestoreContext {}

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// State records polled and applied together (their index entries prefetched first).
const RESTORE_BATCH: usize = 256;

/// How long a restore may take before the instance gives up (and exits non-zero for its
/// supervisor). Generous: a restore waits for the last stable offset, which a killed instance's
/// open transaction holds back for up to `transaction.timeout.ms`.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(600);

fn partition_count(client: &AdminClient<DefaultClientContext>, topic: &str) -> Result<Option<usize>, PipelineError> {
    let md = client
        .inner()
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|e| PipelineError::Topics(format!("cannot read the metadata of topic {topic}: {e}")))?;
    Ok(md.topics().iter().find(|t| t.name() == topic).filter(|t| t.error().is_none()).map(|t| t.partitions().len()))
}

/// Waits until every input topic exists (a service may start before its topics are created;
/// it is not ready meanwhile), then [`ensure_state_topic`] and, with `repartition`, the
/// repartition topic. Returns the partition count, or `None` if shutdown came first.
pub(crate) fn wait_for_topics(cfg: &KafkaConfig, shutdown: &AtomicBool) -> Result<Option<usize>, PipelineError> {
    let admin: AdminClient<DefaultClientContext> =
        crate::kafka::admin_config(cfg).create().map_err(PipelineError::Client)?;
    let mut logged = false;
    loop {
        let mut missing = Vec::new();
        for topic in &cfg.input_topics {
            if partition_count(&admin, topic)?.is_none_or(|n| n == 0) {
                missing.push(topic.as_str());
            }
        }
        if missing.is_empty() {
            let n = ensure_state_topic(&admin, cfg)?;
            if cfg.repartition {
                // Forwarded records wait here until their partition's owner reads them; a day
                // covers any restart, and their offsets are committed like the input's.
                let policy = [("cleanup.policy", "delete"), ("retention.ms", "86400000")];
                ensure_topic(&admin, &cfg.repartition_topic(), n, &policy)?;
            }
            return Ok(Some(n));
        }
        if !logged {
            warn!(topics = ?missing, "waiting for the input topics to exist");
            logged = true;
        }
        if shutdown.load(Ordering::Relaxed) {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Checks that the input topics have one partition count, and that the state topic has that
/// many partitions, creating it (compacted) when it is missing. Returns the count.
fn ensure_state_topic(admin: &AdminClient<DefaultClientContext>, cfg: &KafkaConfig) -> Result<usize, PipelineError> {
    let mut counts = BTreeMap::new();
    for topic in &cfg.input_topics {
        match partition_count(admin, topic)? {
            Some(n) if n > 0 => {
                counts.insert(topic.as_str(), n);
            }
            _ => return Err(PipelineError::Topics(format!("input topic {topic} does not exist"))),
        }
    }
    let n = *counts.values().next().expect("at least one input topic");
    if counts.values().any(|&c| c != n) {
        return Err(PipelineError::Topics(format!(
            "input topics must have the same partition count (one task per partition number): {counts:?}"
        )));
    }
    // Compaction keeps the newest record per lead; a restore reads little more than that.
    let policy = [("cleanup.policy", "compact"), ("min.cleanable.dirty.ratio", "0.1"), ("segment.ms", "600000")];
    ensure_topic(admin, &cfg.state_topic, n, &policy)?;
    Ok(n)
}

/// Makes sure `name` exists with `n` partitions (co-partitioned with the input), creating it
/// with `settings` when missing.
fn ensure_topic(
    admin: &AdminClient<DefaultClientContext>,
    name: &str,
    n: usize,
    settings: &[(&str, &str)],
) -> Result<(), PipelineError> {
    match partition_count(admin, name)? {
        Some(m) if m == n => return Ok(()),
        Some(m) if m > 0 => {
            return Err(PipelineError::Topics(format!(
                "topic {name} has {m} partitions, the input {n}: they must match (a lead's state and \
                 records live in the partition number of its input)"
            )))
        }
        _ => {}
    }
    let mut topic = NewTopic::new(name, n as i32, TopicReplication::Fixed(-1));
    for (k, v) in settings {
        topic = topic.set(k, v);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let results = runtime
        .block_on(admin.create_topics([&topic], &AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT))))
        .map_err(|e| PipelineError::Topics(format!("cannot create the state topic: {e}")))?;
    for r in results {
        match r {
            Ok(_) => info!(topic = name, partitions = n, "topic created"),
            // Another instance created it meanwhile: fine, checked below.
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(PipelineError::Topics(format!("cannot create topic {name}: {code}"))),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match partition_count(admin, name)? {
            Some(m) if m == n => return Ok(()),
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            other => {
                return Err(PipelineError::Topics(format!(
                    "topic {name} has {other:?} partitions after creation, expected {n}"
                )))
            }
        }
    }
}

/// Builds the engines of `tasks` from the state topic, reading each changelog partition from
/// its start to its last stable offset (committed data only). Tasks are spread over as many
/// threads as there are cores, each with its own consumer: restore time is downtime. A record
/// that cannot be read is counted and skipped: one damaged record must not keep a partition
/// from ever being processed.
pub(crate) fn restore_tasks(
    cfg: &KafkaConfig,
    shared: &Shared,
    metrics: &Metrics,
    tasks: &[i32],
) -> Result<Vec<(i32, Engine)>, PipelineError> {
    if tasks.is_empty() {
        return Ok(Vec::new());
    }
    let started = Instant::now();
    let _malloc = RestoreMalloc::tune();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(tasks.len());
    let mut shares: Vec<Vec<i32>> = vec![Vec::new(); threads];
    for (i, &t) in tasks.iter().enumerate() {
        shares[i % threads].push(t);
    }
    let results: Vec<Result<Restored, PipelineError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .iter()
            .map(|share| {
                let engines = share.iter().map(|&t| (t, shared.new_engine())).collect();
                scope.spawn(move || restore_share(cfg, metrics, engines))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(PipelineError::Restore("a restore thread panicked".into()))))
            .collect()
    });
    let (mut engines, mut records, mut damaged) = (Vec::new(), 0, 0);
    for r in results {
        let (e, n, d) = r?;
        engines.extend(e);
        records += n;
        damaged += d;
    }
    engines.sort_by_key(|(t, _)| *t);
    let leads: usize = engines.iter().map(|(_, e)| e.lead_ids().count()).sum();
    drop(_malloc);
    release_free_memory();
    let secs = started.elapsed().as_secs_f64();
    metrics.restore_seconds.observe(secs);
    info!(tasks = ?tasks, records, damaged, leads, threads, seconds = secs, "state restored");
    Ok(engines)
}

/// Gives the memory the restore consumers freed back to the operating system. Their read-ahead
/// was allocated by librdkafka's threads in malloc arenas of their own, which glibc keeps after
/// the threads are gone: measured (deploy/sizing/memory.py --malloc-trim), a restored instance
/// otherwise holds about twice the memory of its leads for good.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of glibc's arenas to the kernel; it has no
    // preconditions and touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// glibc's malloc tuned for the length of a restore, and set back when dropped. A restore
/// grows the heap by gigabytes in small steps while librdkafka's threads allocate and free
/// fetch buffers of a megabyte or more: with glibc's defaults each step and each trim of a
/// freed top is a system call, new pages and TLB shootdowns between the threads. The same
/// settings given to the build before this existed (commit fce3839) by `GLIBC_TUNABLES`
/// (docs/performance.md, "Restore"): system time 4.3 s -> 3.1 s, restore 7.6 s -> 7.1 s.
struct RestoreMalloc;

impl RestoreMalloc {
    /// Heap growth in steps of 64 MiB; up to 1 GiB of free top kept; buffers up to 32 MiB
    /// (glibc's own ceiling for its dynamic threshold) from the heap rather than from mmap.
    fn tune() -> RestoreMalloc {
        Self::set(64 << 20, 1 << 30, Some(32 << 20));
        RestoreMalloc
    }

    #[allow(unused_variables)]
    fn set(top_pad: i32, trim_threshold: i32, mmap_threshold: Option<i32>) {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes glibc's allocation parameters (it takes the arenas'
        // locks); no memory in use is touched.
        unsafe {
            libc::mallopt(libc::M_TOP_PAD, top_pad);
            libc::mallopt(libc::M_TRIM_THRESHOLD, trim_threshold);
            if let Some(m) = mmap_threshold {
                libc::mallopt(libc::M_MMAP_THRESHOLD, m);
            }
        }
    }
}

impl Drop for RestoreMalloc {
    /// Where glibc's dynamic thresholds end up in a busy process (any mallopt turns them off,
    /// so they no longer move by themselves): buffers up to 32 MiB from the heap, free top
    /// trimmed past twice that; the pad back to its default (128 KiB, `man mallopt`). Not the
    /// static 128 KiB trim threshold: the pipeline allocates and frees buffers of megabytes per
    /// batch and per commit, which would then go back to the kernel and fault in again.
    fn drop(&mut self) {
        Self::set(128 << 10, 64 << 20, None);
    }
}

/// Restored engines by task, records read, records skipped.
type Restored = (Vec<(i32, Engine)>, u64, u64);

/// Restores some tasks with one consumer.
fn restore_share(
    cfg: &KafkaConfig,
    metrics: &Metrics,
    mut engines: BTreeMap<i32, Engine>,
) -> Result<Restored, PipelineError> {
    let consumer: BaseConsumer<RestoreContext> = crate::kafka::restore_consumer_config(cfg)
        .create_with_context(RestoreContext)
        .map_err(PipelineError::Client)?;
    let mut tpl = TopicPartitionList::new();
    for (&t, engine) in engines.iter_mut() {
        tpl.add_partition_offset(&cfg.state_topic, t, Offset::Beginning).expect("valid offset");
        // Room for what the partition holds (an upper bound once compacted): no rehash storms.
        if let Ok((low, high)) = consumer.fetch_watermarks(&cfg.state_topic, t, METADATA_TIMEOUT) {
            engine.reserve(usize::try_from(high - low).unwrap_or(0));
        }
    }
    consumer.assign(&tpl).map_err(|e| PipelineError::Restore(format!("cannot assign the state topic: {e}")))?;
    let mut pending: BTreeSet<i32> = engines.keys().copied().collect();
    let (mut records, mut damaged) = (0u64, 0u64);
    let deadline = Instant::now() + RESTORE_TIMEOUT;
    let mut batch = Vec::with_capacity(RESTORE_BATCH);
    while !pending.is_empty() {
        if Instant::now() > deadline {
            return Err(PipelineError::Restore(format!(
                "state partitions {pending:?} not restored within {RESTORE_TIMEOUT:?}"
            )));
        }
        // A batch of records, and their leads' index entries requested before any applies.
        let mut timeout = Duration::from_millis(100);
        while batch.len() < RESTORE_BATCH {
            match consumer.poll(timeout) {
                Some(Ok(m)) => {
                    if let (Some(engine), Some(key)) = (engines.get(&m.partition()), m.key()) {
                        engine.prefetch_key(key);
                    }
                    batch.push(m);
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    pending.remove(&p);
                }
                Some(Err(e)) => warn!(error = %e, "state topic read error"),
                None => break,
            }
            timeout = Duration::ZERO;
        }
        for m in batch.drain(..) {
            records += 1;
            let Some(engine) = engines.get_mut(&m.partition()) else { continue };
            let result = match m.key() {
                Some(key) => engine.restore(key, m.payload()),
                None => Err(crate::changelog::ChangelogError::BadKey),
            };
            if let Err(e) = result {
                damaged += 1;
                metrics.restore_errors.with_label_values(&[e.code()]).inc();
                warn!(reason = e.code(), partition = m.partition(), offset = m.offset(), "state record skipped");
            }
        }
    }
    for engine in engines.values_mut() {
        for e in engine.finish_restore() {
            damaged += 1;
            metrics.restore_errors.with_label_values(&[e.code()]).inc();
            warn!(reason = e.code(), "state segment record skipped");
        }
    }
    Ok((engines.into_iter().collect(), records, damaged))
}
