//! End-to-end latency of `leadscore run`, for `bench/kafka.sh latency`: from the input record's
//! Kafka timestamp to the transition's arrival at a downstream consumer.
//!
//! ```sh
//! cargo run --release --example latency_probe -- --brokers 127.0.0.1:9092 \
//!     --output-topic OUT --input-topic IN [--max-s 300] [--fetch-wait-ms 10] [--csv FILE]
//! cargo run --release --example latency_probe -- --brokers 127.0.0.1:9092 --input-topic IN --baseline-only
//! ```
//!
//! 1. Live: consumes the output topic (`read_committed`, every partition assigned from the
//!    beginning, no group join) and, for every transition, notes the wall clock when `poll`
//!    hands it over, its `trigger.event_id`, its `at` and the output record's Kafka timestamp
//!    (CreateTime: when leadscore called `send`). Prints `latency_probe: ready` on stderr once
//!    assigned; runs until SIGTERM/SIGINT or `--max-s`.
//! 2. Join: reads the input topic from the beginning to its end offsets and looks up each
//!    trigger's `event_id` there (the generator gives every event a unique `e-<seq>`; an exact
//!    duplicate repeats it a moment later, so the earliest timestamp is the original's).
//!
//! Latencies per event-driven transition (`trigger` not null; crossings by decay have no input
//! record and are not counted):
//! - `input_to_receive`: probe receive time - input record timestamp: the figure of issue 3.
//! - `input_to_send`: output record timestamp - input record timestamp (both Kafka timestamps,
//!   ms): the upstream producer's batching, the broker, leadscore's fetch and processing.
//! - `send_to_receive`: probe receive time - output record timestamp: leadscore's producer
//!   batching (`linger.ms`), the broker's append and this probe's fetch.
//! - `at_to_receive`: probe receive time - the transition's `at`, the simple way that needs no
//!   input record timestamps. `at` is the triggering event's own `timestamp` unless that event was
//!   late for its lead (then `at` is the lead's clock, the time of an earlier event); late
//!   triggers (`at` != the event's `timestamp`, read in the join) are excluded. It includes the
//!   generator's own delay between an event's time and its `send` (it sends in 5 ms ticks, and
//!   falls behind when the machine is busy).
//!
//! Kafka timestamps have millisecond resolution: latencies from them are ±1 ms.
//!
//! `--warmup-ms W` leaves out the first W ms of the input (by input record timestamp, from the
//! earliest one): transitions triggered by those records, or, with `--baseline-only`, those
//! records. The system under test (a JVM in particular) warms up on them; the figures are of the
//! steady state that follows.
//!
//! With `--baseline-only` it is instead a bare consumer of the input topic (same fetch settings,
//! no leadscore anywhere) and reports `baseline_ms`: receive time - input record timestamp for
//! every record: what any consumer sees on this machine at this rate, the floor for leadscore.
//!
//! Prints one JSON object on stdout; `--csv` also writes one line per transition.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

#[derive(serde::Deserialize)]
struct Trigger<'a> {
    #[serde(borrow)]
    event_id: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct TransitionIn<'a> {
    #[serde(borrow)]
    at: Cow<'a, str>,
    #[serde(borrow)]
    trigger: Option<Trigger<'a>>,
}

#[derive(serde::Deserialize)]
struct EventIn<'a> {
    #[serde(borrow)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
}

struct Seen {
    recv_us: i64,
    out_ts_ms: Option<i64>,
    at_ms: Option<i64>,
    event_id: Option<String>,
}

fn consumer(brokers: &str, group: &str, fetch_wait_ms: &str, isolation: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("client.id", "latency-probe")
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", isolation)
        .set("fetch.wait.max.ms", fetch_wait_ms)
        .set("fetch.queue.backoff.ms", "10")
        .set("enable.partition.eof", "false")
        .create()
        .expect("consumer")
}

/// Assigns every partition of `topic` from the beginning; returns the partition count.
fn assign_all(c: &BaseConsumer, topic: &str) -> usize {
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let parts = md.topics().first().map(|t| t.partitions().len()).unwrap_or(0);
    assert!(parts > 0, "topic {topic} has no partitions (does it exist?)");
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("partition");
    }
    c.assign(&tpl).expect("assign");
    parts
}

/// Nearest-rank quantiles, in ms with 0.1 ms resolution.
fn summary(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "{\"count\":0}".to_owned();
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    format!(
        "{{\"count\":{},\"mean\":{mean:.2},\"p50\":{:.1},\"p90\":{:.1},\"p99\":{:.1},\"p999\":{:.1},\"max\":{:.1},\"over_10ms\":{}}}",
        v.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        v[v.len() - 1],
        v.iter().filter(|&&x| x > 10.0).count()
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let baseline_only = args.iter().any(|a| a == "--baseline-only");
    let (Some(brokers), Some(in_topic), Some(out_topic)) = (
        arg(&args, "--brokers"),
        arg(&args, "--input-topic"),
        arg(&args, "--output-topic").or_else(|| baseline_only.then(String::new)),
    ) else {
        eprintln!(
            "usage: latency_probe --brokers B --input-topic I (--output-topic O | --baseline-only) [--max-s S] [--fetch-wait-ms MS] [--csv FILE] [--warmup-ms W]"
        );
        std::process::exit(2);
    };
    let max = Duration::from_secs(arg(&args, "--max-s").map_or(300, |s| s.parse().expect("--max-s: a number")));
    let fetch_wait = arg(&args, "--fetch-wait-ms").unwrap_or_else(|| "10".to_owned());
    let csv = arg(&args, "--csv");
    let warmup_ms: i64 = arg(&args, "--warmup-ms").map_or(0, |s| s.parse().expect("--warmup-ms: a number"));
    let stop = leadscore::cli::signal_flag().expect("signal handler");
    let started = Instant::now();

    // 0. Baseline only: a bare consumer of the input topic, nothing else.
    if baseline_only {
        let c =
            consumer(&brokers, &format!("latency-probe-base-{}", std::process::id()), &fetch_wait, "read_committed");
        let parts = assign_all(&c, &in_topic);
        // (input record timestamp, latency): the warm-up is cut once the earliest timestamp is known.
        let mut lat: Vec<(i64, f64)> = Vec::new();
        let mut on_msg = |m: &rdkafka::message::BorrowedMessage<'_>| {
            let recv_us = now_us();
            if let Some(ts) = m.timestamp().to_millis() {
                lat.push((ts, (recv_us - ts * 1000) as f64 / 1000.0));
            }
        };
        let warm = Instant::now() + Duration::from_millis(500);
        while Instant::now() < warm {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
                on_msg(&m);
            }
        }
        eprintln!("latency_probe: ready ({parts} partitions of {in_topic})");
        while !stop.load(Ordering::Relaxed) && started.elapsed() < max {
            match c.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => on_msg(&m),
                Some(Err(e)) => eprintln!("latency_probe: consumer error: {e}"),
                None => {}
            }
        }
        let since = lat.iter().map(|&(ts, _)| ts).min().unwrap_or(0).saturating_add(warmup_ms);
        let total = lat.len();
        let kept: Vec<f64> = lat.into_iter().filter(|&(ts, _)| ts >= since).map(|(_, l)| l).collect();
        println!("{{\"warmup_excluded\":{},\"baseline_ms\":{}}}", total - kept.len(), summary(kept));
        return;
    }

    // 1. Live: the output topic.
    let live = consumer(&brokers, &format!("latency-probe-{}", std::process::id()), &fetch_wait, "read_committed");
    let parts = assign_all(&live, &out_topic);
    // A first poll round connects to the broker and starts the fetchers before we say ready.
    let warm = Instant::now() + Duration::from_millis(500);
    let mut seen: Vec<Seen> = Vec::new();
    let mut bad = 0u64;
    let mut on_msg = |m: &rdkafka::message::BorrowedMessage<'_>, seen: &mut Vec<Seen>| {
        let recv_us = now_us();
        let out_ts_ms = m.timestamp().to_millis();
        match serde_json::from_slice::<TransitionIn<'_>>(m.payload().unwrap_or(&[])) {
            Ok(t) => seen.push(Seen {
                recv_us,
                out_ts_ms,
                at_ms: leadscore::time::parse_rfc3339_ms(&t.at),
                event_id: t.trigger.and_then(|tr| tr.event_id).map(Cow::into_owned),
            }),
            Err(_) => bad += 1,
        }
    };
    while Instant::now() < warm {
        if let Some(Ok(m)) = live.poll(Duration::from_millis(50)) {
            on_msg(&m, &mut seen);
        }
    }
    eprintln!("latency_probe: ready ({parts} partitions of {out_topic})");
    while !stop.load(Ordering::Relaxed) && started.elapsed() < max {
        match live.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => on_msg(&m, &mut seen),
            Some(Err(e)) => eprintln!("latency_probe: consumer error: {e}"),
            None => {}
        }
    }
    drop(live);
    eprintln!("latency_probe: {} transitions received; joining with {in_topic}", seen.len());

    // 2. Join: input record timestamps of the triggers.
    let wanted: HashSet<&str> = seen.iter().filter_map(|s| s.event_id.as_deref()).collect();
    // event_id -> (earliest input record timestamp, the event's own `timestamp`).
    let mut input_ts: HashMap<String, (i64, Option<i64>)> = HashMap::with_capacity(wanted.len());
    let join = consumer(&brokers, &format!("latency-probe-join-{}", std::process::id()), "100", "read_uncommitted");
    let n = assign_all(&join, &in_topic);
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    for p in 0..n as i32 {
        let (low, high) = join.fetch_watermarks(&in_topic, p, Duration::from_secs(10)).expect("watermarks");
        if high > low {
            remaining.insert(p, high);
        }
    }
    let mut input_records = 0u64;
    let mut first_input_ts = i64::MAX;
    let deadline = Instant::now() + Duration::from_secs(180);
    while !remaining.is_empty() {
        if Instant::now() > deadline {
            eprintln!("latency_probe: join did not reach the end of {in_topic} within 180 s");
            std::process::exit(1);
        }
        let Some(Ok(m)) = join.poll(Duration::from_millis(200)) else { continue };
        input_records += 1;
        if let Some(ts) = m.timestamp().to_millis() {
            first_input_ts = first_input_ts.min(ts);
        }
        if let (Ok(ev), Some(ts)) =
            (serde_json::from_slice::<EventIn<'_>>(m.payload().unwrap_or(&[])), m.timestamp().to_millis())
        {
            if let Some(id) = ev.event_id.as_deref().filter(|id| wanted.contains(id)) {
                let event_ms = ev.timestamp.as_deref().and_then(leadscore::time::parse_rfc3339_ms);
                input_ts.entry(id.to_owned()).and_modify(|t| t.0 = t.0.min(ts)).or_insert((ts, event_ms));
            }
        }
        if remaining.get(&m.partition()).is_some_and(|&high| m.offset() + 1 >= high) {
            remaining.remove(&m.partition());
        }
    }

    // 3. Latencies.
    let (mut in_recv, mut in_send, mut send_recv, mut at_recv) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut no_trigger, mut unmatched, mut late, mut warmup) = (0u64, 0u64, 0u64, 0u64);
    let since = first_input_ts.saturating_add(warmup_ms);
    let mut csv_out = csv.as_deref().map(|p| {
        let mut f = std::io::BufWriter::new(std::fs::File::create(p).expect("csv file"));
        writeln!(f, "recv_us,input_ts_ms,output_ts_ms,at_ms,event_id").expect("csv");
        f
    });
    for s in &seen {
        let Some(id) = s.event_id.as_deref() else {
            no_trigger += 1;
            continue;
        };
        let Some(&(in_ts, event_ms)) = input_ts.get(id) else {
            unmatched += 1;
            continue;
        };
        if in_ts < since {
            warmup += 1;
            continue;
        }
        in_recv.push((s.recv_us - in_ts * 1000) as f64 / 1000.0);
        if let Some(out_ts) = s.out_ts_ms {
            in_send.push((out_ts - in_ts) as f64);
            send_recv.push((s.recv_us - out_ts * 1000) as f64 / 1000.0);
        }
        // `at` is the event's own time unless the event was late for its lead (then it is the
        // lead's clock, the time of an earlier event): only the former measure latency.
        match (s.at_ms, event_ms) {
            (Some(at), Some(ev)) if at == ev => at_recv.push((s.recv_us - at * 1000) as f64 / 1000.0),
            _ => late += 1,
        }
        if let Some(f) = csv_out.as_mut() {
            let o = s.out_ts_ms.map_or(String::new(), |t| t.to_string());
            let a = s.at_ms.map_or(String::new(), |t| t.to_string());
            writeln!(f, "{},{in_ts},{o},{a},{id}", s.recv_us).expect("csv");
        }
    }
    if let Some(mut f) = csv_out {
        f.flush().expect("csv");
    }
    println!(
        "{{\"transitions\":{},\"unparsable\":{bad},\"no_trigger\":{no_trigger},\"unmatched\":{unmatched},\"late_excluded_from_at\":{late},\"warmup_excluded\":{warmup},\"input_records\":{input_records},\
\"input_to_receive_ms\":{},\"input_to_send_ms\":{},\"send_to_receive_ms\":{},\"at_to_receive_ms\":{}}}",
        seen.len(),
        summary(in_recv),
        summary(in_send),
        summary(send_recv),
        summary(at_recv)
    );
}
