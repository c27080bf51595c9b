//! The practical consume limit of this machine, for `bench/kafka.sh catchup`: a bare rdkafka
//! `BaseConsumer` that only counts the records of a topic, from the beginning, with a fresh
//! consumer group, until it has seen `--count` of them.
//!
//! It uses leadscore's own consumer settings (`leadscore::kafka::consumer_config`: the same
//! `fetch.wait.max.ms`, `fetch.queue.backoff.ms`, `isolation.level`, statistics interval...) and
//! the same loop shape as the pipeline (`poll` one record at a time), so the only difference
//! from `leadscore run` is the work done per record: here it only reads the payload length.
//!
//! ```sh
//! cargo run --release --example raw_consumer -- --brokers 127.0.0.1:9092 --topic T --count N
//! ```
//!
//! Prints one JSON line: `messages`, `bytes`, `startup_s` (start to the first record: client
//! creation, group join, assignment, first fetch), `consume_s` (first to last record),
//! `msgs_per_s` (= (messages - 1) / consume_s), `total_s`, `cpu_s` (user + system of this process).

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

/// User + system CPU seconds of this process, from /proc/self/stat (Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the stat line, i.e. 11 and 12 after the name.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0 // CLK_TCK is 100 on Linux
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: raw_consumer --brokers B --topic T --count N [--group G] [--timeout-s S]";
    let (Some(brokers), Some(topic), Some(count)) =
        (arg(&args, "--brokers"), arg(&args, "--topic"), arg(&args, "--count"))
    else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let count: u64 = count.parse().expect("--count: a number");
    let timeout =
        Duration::from_secs(arg(&args, "--timeout-s").map_or(300, |s| s.parse().expect("--timeout-s: a number")));
    let group = arg(&args, "--group").unwrap_or_else(|| format!("raw-consumer-{}", std::process::id()));

    let started = Instant::now();
    let cfg = leadscore::config::KafkaConfig {
        brokers,
        group_id: group,
        input_topics: vec![topic.clone()],
        ..Default::default()
    };
    // Exactly leadscore's consumer properties (client.id aside), so fetch behaviour is the same.
    let mut client = leadscore::kafka::consumer_config(&cfg);
    client.set("client.id", "raw-consumer");
    let consumer: BaseConsumer = client.create().expect("consumer");
    consumer.subscribe(&[topic.as_str()]).expect("subscribe");

    let (mut seen, mut bytes) = (0u64, 0u64);
    let mut first: Option<Instant> = None;
    let mut last = started;
    while seen < count {
        if started.elapsed() > timeout {
            eprintln!("raw_consumer: timeout after {:?}: {seen} of {count} records", timeout);
            std::process::exit(1);
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(msg)) => {
                if first.is_none() {
                    first = Some(Instant::now());
                }
                seen += 1;
                bytes += msg.payload_len() as u64;
                if seen == count {
                    last = Instant::now();
                }
            }
            Some(Err(e)) => eprintln!("raw_consumer: consumer error: {e}"),
            None => {}
        }
    }
    let first = first.unwrap_or(last);
    let consume_s = last.duration_since(first).as_secs_f64();
    let rate = if consume_s > 0.0 { (seen - 1) as f64 / consume_s } else { 0.0 };
    println!(
        "{{\"messages\":{seen},\"bytes\":{bytes},\"startup_s\":{:.3},\"consume_s\":{consume_s:.3},\"msgs_per_s\":{rate:.0},\"total_s\":{:.3},\"cpu_s\":{:.2}}}",
        first.duration_since(started).as_secs_f64(),
        last.duration_since(started).as_secs_f64(),
        cpu_seconds()
    );
}
