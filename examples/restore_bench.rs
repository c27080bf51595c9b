//! Restore speed (issue 4, "Speed"): how long a task assignment takes to rebuild lead state from
//! the state changelog. `bench/restore.sh` runs it against the local broker.
//!
//! ```sh
//! cargo run --release --example restore_bench -- --brokers 127.0.0.1:9092 --leads 10000000
//! ```
//!
//! 1. Creates a compacted topic with `--partitions` (6) partitions and loads one changelog record
//!    per lead into it, keyed and partitioned as leadscore writes them. The records are what the
//!    example model's engine writes for a lead with a few events: the ungrouped total, two group
//!    totals, a limited rule's window, a `job_title` attribute and two remembered event ids
//!    (about 150 bytes each).
//! 2. Restores every partition with `leadscore::pipeline::restore_tasks`, the code an
//!    assignment runs, and prints one JSON line: `leads`, `records`, `bytes`, `load_s`,
//!    `settle_s`, `restore_s`, `leads_per_s`, `peak_rss_mib`.
//!
//! Between the two, the load is let settle (`settle_s` in the JSON): the kernel writes the
//! loaded gigabytes back to disk (`sync`) and the broker finishes what the load left it (its
//! log flushes, the JVM's collections), until the machine is idle: a restore normally reads a
//! changelog written over hours, not one written a second ago, and on 2 cores whatever the
//! load leaves running competes with the restore for CPU. `--no-settle` restores at once.
//!
//! `--load-only` loads (and settles) and prints `topic`, `records`, `bytes`, `load_s`,
//! `settle_s`; `--topic T --skip-load` restores an already loaded topic (`bench/restore.sh`
//! does both, so that the restore runs in a fresh process, as after a restart: in the process
//! that loaded, the producer's leftovers made it 2 to 5 s slower).

use std::sync::Arc;
use std::time::{Duration, Instant};

use leadscore::changelog::{encode_record, AttrValue, LeadRecord};
use leadscore::config::KafkaConfig;
use leadscore::model::Model;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

/// CPU time (user + system, all cores) the machine has spent so far, in clock ticks.
fn busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu = stat.lines().next().unwrap_or_default();
    // cpu user nice system idle iowait irq softirq steal ...
    let f: Vec<u64> = cpu.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    [0, 1, 2, 5, 6].iter().filter_map(|&i| f.get(i)).sum()
}

/// Writes dirty pages back, then waits (at most `deadline`) for one second in which the whole
/// machine used less than a tenth of a core. Returns the seconds it took.
fn settle(deadline: Duration) -> f64 {
    let started = Instant::now();
    // SAFETY: sync(2) has no arguments and no failure mode.
    unsafe { libc::sync() };
    let hz = 100.0; // USER_HZ: /proc/stat's unit on Linux
    while started.elapsed() < deadline {
        let before = busy_ticks();
        std::thread::sleep(Duration::from_secs(1));
        if ((busy_ticks() - before) as f64 / hz) < 0.1 {
            break;
        }
    }
    started.elapsed().as_secs_f64()
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The state of lead `i`, as the example model's engine would write it after a few events.
fn record(i: u64) -> LeadRecord {
    let t = 1_796_256_000_000 + (i as i64 % 86_400_000);
    LeadRecord {
        tau_ms: t,
        last_transition_at_ms: (i % 7 == 0).then_some(t - 1000),
        transitions: (i % 7 == 0) as u32,
        qualified: i % 7 == 0,
        ungrouped: Some(5.0 + (i % 13) as f64 * 0.731),
        fixed: (i % 5 == 0).then_some(-40.0),
        groups: vec![("web".into(), 12.25 + (i % 11) as f64), ("marketing".into(), 3.5)],
        limits: vec![("pricing_page".into(), (t / 3_600_000) as u64, 2)],
        attributes: Some(vec![
            ("job_title".into(), Some(AttrValue::Str("Head of Marketing".into()))),
            ("company_size".into(), None),
            ("country".into(), None),
        ]),
        event_ids: vec![(i.wrapping_mul(0x9e37_79b9_7f4a_7c15), t - 5000), (i ^ 0xdead_beef, t)],
        id_segments: (0, 0),
        id_bucket_bits: 0,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let brokers = arg(&args, "--brokers").unwrap_or_else(|| "127.0.0.1:9092".into());
    let leads: u64 = arg(&args, "--leads").map_or(10_000_000, |v| v.parse().expect("--leads N"));
    let partitions: usize = arg(&args, "--partitions").map_or(6, |v| v.parse().expect("--partitions P"));
    let topic = arg(&args, "--topic").unwrap_or_else(|| {
        format!(
            "bench-restore-{}",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
        )
    });
    let skip_load = args.iter().any(|a| a == "--skip-load");
    let model_path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/model.toml");
    let model = Arc::new(Model::load(std::path::Path::new(model_path)).expect("example model"));
    let cfg = KafkaConfig { brokers: brokers.clone(), state_topic: topic.clone(), ..KafkaConfig::default() };

    let mut bytes = 0u64;
    let mut load_s = 0.0;
    if !skip_load {
        let admin: AdminClient<DefaultClientContext> =
            leadscore::kafka::admin_config(&cfg).create().expect("admin client");
        let new = NewTopic::new(&topic, partitions as i32, TopicReplication::Fixed(1)).set("cleanup.policy", "compact");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(admin.create_topics([&new], &AdminOptions::new())).expect("create topic");
        let producer: BaseProducer = leadscore::kafka::bulk_producer_config(&brokers).create().expect("producer");
        let started = Instant::now();
        let mut value = Vec::with_capacity(256);
        for i in 0..leads {
            let id = format!("lead-{i}");
            value.clear();
            encode_record(&record(i), &mut value);
            bytes += (id.len() + value.len()) as u64;
            let p = leadscore::partition::lead_partition(&id, partitions);
            let mut rec = BaseRecord::<str, [u8]>::to(&topic).key(id.as_str()).payload(&value[..]).partition(p);
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        rec = r;
                        producer.poll(Duration::from_millis(5));
                    }
                    Err((e, _)) => panic!("produce: {e}"),
                }
            }
            if i % 10_000 == 0 {
                producer.poll(Duration::ZERO);
            }
        }
        producer.flush(Duration::from_secs(300)).expect("flush");
        load_s = started.elapsed().as_secs_f64();
        eprintln!("loaded {leads} records ({:.0} MiB) into {topic} in {load_s:.1} s", bytes as f64 / 1048576.0);
    }
    let settle_s =
        if skip_load || args.iter().any(|a| a == "--no-settle") { 0.0 } else { settle(Duration::from_secs(120)) };
    if args.iter().any(|a| a == "--load-only") {
        println!(
            "{{\"topic\":\"{topic}\",\"records\":{leads},\"bytes\":{bytes},\"load_s\":{load_s:.2},\
             \"settle_s\":{settle_s:.1}}}"
        );
        return;
    }
    let tasks: Vec<i32> = (0..partitions as i32).collect();
    let (engines, took) = leadscore::pipeline::restore_tasks(&cfg, Arc::clone(&model), &tasks).expect("restore");
    let restored: usize = engines.iter().map(|(_, e)| e.totals(i64::MIN).leads).sum();
    let restore_s = took.as_secs_f64();
    println!(
        "{{\"topic\":\"{topic}\",\"leads\":{restored},\"records\":{leads},\"bytes\":{bytes},\"load_s\":{load_s:.2},\
         \"settle_s\":{settle_s:.1},\"restore_s\":{restore_s:.2},\"leads_per_s\":{:.0},\"peak_rss_mib\":{:.0}}}",
        restored as f64 / restore_s,
        peak_rss_mib()
    );
    assert_eq!(restored as u64, leads, "every lead restored");
}
