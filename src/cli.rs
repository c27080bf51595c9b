//! The command line: `replay`, `check`, `generate` (spec section 6).

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::config::{Config, Overrides, ProcessingGuarantee};
use crate::model::{parse::render_errors, Model, ModelLoadError};
use crate::replay::{replay, ReplayOptions};
use crate::time::parse_rfc3339_ms;

/// Real-time lead scoring on Kafka.
#[derive(Debug, Parser)]
#[command(name = "leadscore", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The service: consume lead activity from Kafka, publish transitions, serve metrics.
    Run {
        /// The service config (TOML); every key can also come from LEADSCORE_* variables.
        #[arg(long, env = "LEADSCORE_CONFIG")]
        config: Option<PathBuf>,
        /// Kafka bootstrap servers (kafka.brokers).
        #[arg(long)]
        brokers: Option<String>,
        /// Consumer group (kafka.group_id).
        #[arg(long)]
        group_id: Option<String>,
        /// Input topics, comma-separated (kafka.input_topics).
        #[arg(long, value_delimiter = ',')]
        input_topics: Option<Vec<String>>,
        /// Output topic of transitions (kafka.output_topic).
        #[arg(long)]
        output_topic: Option<String>,
        /// HTTP listen address (http.listen).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// The model file (model.path).
        #[arg(long)]
        model: Option<PathBuf>,
        /// exactly_once or at_least_once (kafka.processing_guarantee).
        #[arg(long, value_parser = parse_guarantee)]
        processing_guarantee: Option<ProcessingGuarantee>,
        /// Transactional id, stable per instance (kafka.transactional_id).
        #[arg(long)]
        transactional_id: Option<String>,
        /// Seconds to wait for the graceful shutdown before exiting anyway.
        #[arg(long, default_value_t = 30)]
        shutdown_timeout_s: u64,
    },
    /// The whole pipeline with no setup: an in-process Kafka mock broker, generated traffic,
    /// the real consume-score-publish loop and the HTTP endpoints.
    Demo {
        /// HTTP listen address.
        #[arg(long, default_value = "127.0.0.1:9898")]
        listen: std::net::SocketAddr,
        /// Generated events per second.
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        /// Distinct leads.
        #[arg(long, default_value_t = 5000)]
        leads: u64,
        /// A model file instead of the built-in example model.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        duration_s: Option<u64>,
    },
    /// Offline backtest: score JSON lines in event time; transitions to stdout, a summary to
    /// stderr or --summary.
    Replay {
        /// The model file (TOML).
        #[arg(long)]
        model: PathBuf,
        /// Final watermark (RFC 3339 or epoch milliseconds): decay-driven crossings up to it fire.
        #[arg(long)]
        until: Option<String>,
        /// Write the summary JSON here instead of stderr.
        #[arg(long)]
        summary: Option<PathBuf>,
        /// Lines longer than this many bytes are rejected as `too_large`.
        #[arg(long, default_value_t = 64 * 1024)]
        max_event_bytes: usize,
        /// JSON lines to read; `-` or nothing: standard input.
        input: Option<PathBuf>,
    },
    /// Synthetic lead activity as JSON lines (bot bursts, late, duplicate and malformed records
    /// included), reproducible with --seed.
    Generate {
        /// Write to this file; `-` or nothing (and no --brokers): standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Produce to Kafka at --rate events per second (real time) instead of writing a file.
        #[arg(long, requires = "topic")]
        brokers: Option<String>,
        /// The topic to produce to (with --brokers).
        #[arg(long)]
        topic: Option<String>,
        /// Records to write (with --brokers: default unlimited, until Ctrl-C).
        #[arg(long)]
        count: Option<u64>,
        /// Distinct leads.
        #[arg(long, default_value_t = 100_000)]
        leads: u64,
        /// Events per second of event time.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Seed of the pseudo-random sequence.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Event time of the first record (RFC 3339 or epoch ms); default 2026-12-03T00:00:00Z.
        #[arg(long)]
        start: Option<String>,
        /// Power-law skew of activity per lead (0: uniform).
        #[arg(long, default_value_t = 1.2)]
        skew: f64,
        /// Share of malformed records.
        #[arg(long, default_value_t = 0.005)]
        malformed: f64,
        /// Share of exact duplicates.
        #[arg(long, default_value_t = 0.01)]
        duplicates: f64,
        /// Share of late events (up to a day behind).
        #[arg(long, default_value_t = 0.02)]
        late: f64,
        /// Share of events with an `event_id`.
        #[arg(long, default_value_t = 1.0)]
        event_ids: f64,
        /// Visit leads in turn instead of the power law (each lead once per --leads records).
        #[arg(long)]
        round_robin: bool,
    },
    /// Validate a model; lists every error with its location.
    Check {
        /// The model file (TOML).
        #[arg(long)]
        model: PathBuf,
    },
}

fn parse_time_arg(s: &str) -> Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        if (crate::time::MIN_TIMESTAMP_MS..=crate::time::MAX_TIMESTAMP_MS).contains(&ms) {
            return Ok(ms);
        }
    }
    match parse_rfc3339_ms(s) {
        Some(ms) => Ok(ms),
        None => bail!("expected an RFC 3339 time or epoch milliseconds between 1970 and 9999, got {s:?}"),
    }
}

fn load_model(path: &std::path::Path) -> Result<Model> {
    match Model::load(path) {
        Ok(m) => Ok(m),
        Err(ModelLoadError::Invalid { path, errors }) => {
            eprint!("{}", render_errors(&path, &errors));
            bail!("model {path} is invalid ({} error(s))", errors.len())
        }
        Err(e) => Err(e.into()),
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check { model } => match Model::load(&model) {
            Ok(m) => {
                println!(
                    "{}: ok: model {:?} version {:?}, {} rule(s), {} fit rule(s), {} group(s)",
                    model.display(),
                    m.name,
                    m.version,
                    m.rules.len(),
                    m.fits.len(),
                    m.groups.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(ModelLoadError::Invalid { path, errors }) => {
                print!("{}", render_errors(&path, &errors));
                eprintln!("{path}: {} error(s)", errors.len());
                Ok(ExitCode::from(1))
            }
            Err(e) => Err(e.into()),
        },
        Command::Run {
            config,
            brokers,
            group_id,
            input_topics,
            output_topic,
            listen,
            model,
            processing_guarantee,
            transactional_id,
            shutdown_timeout_s,
        } => {
            init_logging();
            let overrides = Overrides {
                brokers,
                group_id,
                input_topics,
                output_topic,
                listen,
                model_path: model,
                processing_guarantee,
                transactional_id,
            };
            let cfg = Config::load(config.as_deref(), &crate::config::process_env(), &overrides)?;
            tracing::info!(kafka = ?cfg.kafka, http = %cfg.http.listen, "config loaded");
            let model = Arc::new(load_model(&cfg.model.path)?);
            let service = crate::service::Service::start(cfg, model)?;
            let stop = signal_flag()?;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && !service.pipeline_finished() {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            // Graceful shutdown, bounded: a supervisor's kill follows its own grace period.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(service.shutdown());
            });
            match rx.recv_timeout(std::time::Duration::from_secs(shutdown_timeout_s)) {
                Ok(result) => result?,
                Err(_) => bail!("graceful shutdown did not finish within {shutdown_timeout_s} s"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { listen, rate, leads, model, duration_s } => {
            // The status lines are the demo's console; logs only for problems unless asked.
            init_logging_default("warn");
            let model = match model {
                Some(p) => load_model(&p)?,
                None => Model::from_toml(crate::demo::EXAMPLE_MODEL)
                    .map_err(|e| anyhow::anyhow!("built-in model is invalid: {e:?}"))?,
            };
            let opts = crate::demo::DemoOptions {
                listen,
                rate_per_s: rate,
                leads,
                status_every_s: 5,
                duration: duration_s.map(std::time::Duration::from_secs),
            };
            let report = crate::demo::run(opts, Arc::new(model), signal_flag()?)?;
            println!(
                "demo stopped: {} records generated, {} events scored, {} transitions",
                report.generated, report.status["events_total"], report.status["transitions_total"]
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Generate {
            out,
            brokers,
            topic,
            count,
            leads,
            rate,
            seed,
            start,
            skew,
            malformed,
            duplicates,
            late,
            event_ids,
            round_robin,
        } => {
            if leads == 0 || rate.is_nan() || rate <= 0.0 {
                bail!("--leads and --rate must be positive");
            }
            let mut opts = crate::generate::GenerateOptions {
                leads,
                seed,
                rate_per_s: rate,
                skew,
                malformed_share: malformed,
                duplicate_share: duplicates,
                late_share: late,
                event_id_share: event_ids,
                round_robin,
                ..Default::default()
            };
            if let Some(s) = start.as_deref() {
                opts.start_ms = parse_time_arg(s)?;
            }
            if let (Some(brokers), Some(topic)) = (brokers.as_deref(), topic.as_deref()) {
                let stop = signal_flag()?;
                let sent = crate::generate::produce(brokers, topic, opts, count, &stop)?;
                eprintln!("generate: {sent} records to {topic}");
                return Ok(ExitCode::SUCCESS);
            }
            let count = count.unwrap_or(100_000);
            match out {
                Some(p) if p.as_os_str() != "-" => {
                    let file = File::create(&p).with_context(|| format!("cannot create {}", p.display()))?;
                    crate::generate::write_jsonl(&mut BufWriter::with_capacity(1 << 16, file), opts, count)?;
                }
                _ => crate::generate::write_jsonl(&mut BufWriter::new(io::stdout().lock()), opts, count)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay { model, until, summary, max_event_bytes, input } => {
            let model = Arc::new(load_model(&model)?);
            let until_ms = until.as_deref().map(parse_time_arg).transpose()?;
            let opts = ReplayOptions { max_event_bytes, until_ms };
            let stdout = io::stdout();
            let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
            let result = match input.as_deref() {
                None => replay(model, &mut BufReader::with_capacity(1 << 16, io::stdin().lock()), &mut out, opts),
                Some(p) if p.as_os_str() == "-" => {
                    replay(model, &mut BufReader::with_capacity(1 << 16, io::stdin().lock()), &mut out, opts)
                }
                Some(p) => {
                    let file = File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
                    replay(model, &mut BufReader::with_capacity(1 << 16, file), &mut out, opts)
                }
            };
            let s = result.context("replay failed")?;
            drop(out);
            let json = serde_json::to_string_pretty(&s)?;
            match summary {
                Some(p) => std::fs::write(&p, json + "\n").with_context(|| format!("cannot write {}", p.display()))?,
                None => writeln!(io::stderr(), "{json}")?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn parse_guarantee(s: &str) -> Result<ProcessingGuarantee, String> {
    match s {
        "exactly_once" => Ok(ProcessingGuarantee::ExactlyOnce),
        "at_least_once" => Ok(ProcessingGuarantee::AtLeastOnce),
        _ => Err("expected exactly_once or at_least_once".into()),
    }
}

/// Structured logs on stderr; `LEADSCORE_LOG` filters (default `info`).
fn init_logging() {
    init_logging_default("info")
}

fn init_logging_default(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEADSCORE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(io::stderr).try_init();
}

/// A flag set by SIGTERM or SIGINT (Ctrl-C), for loops that stop gracefully.
pub fn signal_flag() -> Result<Arc<std::sync::atomic::AtomicBool>> {
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let set = Arc::clone(&flag);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("leadscore-signals".into()).spawn(move || {
        rt.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("signal received: shutting down");
            set.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    })?;
    Ok(flag)
}

/// Entry point of the binary: parse, run, report errors with their context.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("leadscore: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
