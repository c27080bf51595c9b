//! The command line: `replay`, `check`, `generate` (spec section 6).

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

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
        /// Write to this file; `-` or nothing: standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Records to write.
        #[arg(long, default_value_t = 100_000)]
        count: u64,
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
        Command::Generate {
            out,
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
