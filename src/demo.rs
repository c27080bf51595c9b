//! `leadscore demo`: the whole pipeline with no setup.
//!
//! An in-process Kafka-protocol broker (librdkafka's mock cluster), the synthetic traffic
//! generator producing to it, the real consume-score-publish loop and the HTTP endpoints. The
//! mock cluster is for demos and client fault tests only: it cannot prove exactly-once, so the
//! demo runs at-least-once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::mocking::MockCluster;

use crate::config::{Config, ProcessingGuarantee};
use crate::generate::GenerateOptions;
use crate::model::Model;
use crate::service::Service;

/// The example model, built in so the demo needs no file.
pub const EXAMPLE_MODEL: &str = include_str!("../examples/model.toml");

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// HTTP address of the endpoints and the status page.
    pub listen: SocketAddr,
    /// Generated events per second.
    pub rate_per_s: f64,
    /// Distinct leads in the generated traffic.
    pub leads: u64,
    /// Seconds between status lines on stdout.
    pub status_every_s: u64,
    /// Stop after this long (`None`: until interrupted).
    pub duration: Option<Duration>,
}

/// What a demo run did.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Records the generator produced.
    pub generated: u64,
    /// The service's `/api/status` document at the end.
    pub status: serde_json::Value,
}

/// Runs the demo until `stop` is set (or the duration passes); prints the URLs and a live status
/// line.
pub fn run(opts: DemoOptions, model: Arc<Model>, stop: Arc<AtomicBool>) -> Result<DemoReport> {
    let cluster = MockCluster::new(1).context("cannot start the in-process Kafka mock cluster")?;
    let brokers = cluster.bootstrap_servers();
    // The state and repartition topics too: the mock cluster does not serve CreateTopics, and
    // would auto-create them with its own partition count.
    let topics = [
        ("lead-events", 6),
        ("leads-qualified", 3),
        ("lead-events-dlq", 1),
        ("leadscore-state", 6),
        ("leadscore-demo-repartition", 6),
    ];
    for (topic, partitions) in topics {
        cluster.create_topic(topic, partitions, 1).with_context(|| format!("cannot create topic {topic}"))?;
    }
    let mut cfg = Config::default();
    cfg.kafka.brokers = brokers.clone();
    cfg.kafka.processing_guarantee = ProcessingGuarantee::AtLeastOnce;
    cfg.kafka.group_id = "leadscore-demo".into();
    cfg.http.listen = opts.listen;
    let service = Service::start(cfg, Arc::clone(&model))?;
    let base = format!("http://{}", service.http_addr());
    println!(
        "leadscore demo: model {:?} version {:?}, {} events/s over {} leads",
        model.name, model.version, opts.rate_per_s, opts.leads
    );
    println!("  status page  {base}/");
    println!("  metrics      {base}/metrics");
    println!("  readiness    {base}/readyz");
    println!("  a lead       {base}/leads/lead-0");
    println!("  Ctrl-C stops it.");

    let gen_stop = Arc::new(AtomicBool::new(false));
    let generator = {
        let (brokers, gen_stop) = (brokers.clone(), Arc::clone(&gen_stop));
        let gopts = GenerateOptions { leads: opts.leads, rate_per_s: opts.rate_per_s, ..Default::default() };
        std::thread::Builder::new()
            .name("leadscore-generate".into())
            .spawn(move || crate::generate::produce(&brokers, "lead-events", gopts, None, &gen_stop))?
    };

    let started = Instant::now();
    let mut last = (Instant::now(), 0u64);
    let mut next_status = Instant::now() + Duration::from_secs(opts.status_every_s);
    while !stop.load(Ordering::Relaxed) && opts.duration.is_none_or(|d| started.elapsed() < d) {
        std::thread::sleep(Duration::from_millis(100));
        if service.pipeline_finished() {
            break;
        }
        if Instant::now() >= next_status {
            let status = crate::http::StatusSource::status(&*service.shared);
            let events = status["events_total"].as_u64().unwrap_or(0);
            let rate = (events - last.1) as f64 / last.0.elapsed().as_secs_f64();
            last = (Instant::now(), events);
            println!(
                "{:>6.0} events/s  {:>7} leads  average score {:>6.2}  {:>5} qualified  {:>6} transitions  {} rejected",
                rate,
                status["tracked_leads"],
                status["average_score"].as_f64().unwrap_or(0.0),
                status["qualified_leads"],
                status["transitions_total"],
                status["rejected_total"],
            );
            next_status = Instant::now() + Duration::from_secs(opts.status_every_s);
        }
    }
    gen_stop.store(true, Ordering::Relaxed);
    let generated = generator.join().map_err(|_| anyhow::anyhow!("the generator panicked"))??;
    let status = crate::http::StatusSource::status(&*service.shared);
    service.shutdown()?;
    drop(cluster);
    Ok(DemoReport { generated, status })
}
