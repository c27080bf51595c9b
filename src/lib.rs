//! leadscore: real-time lead scoring on Kafka.
//!
//! Lead activity events come in as JSON; each lead keeps a time-decayed score computed by a
//! declarative model; when a score crosses the model's thresholds a `lead_qualified` or
//! `lead_disqualified` transition goes out. `run` does this on Kafka, as a consumer-group member; `replay` runs the
//! same engine over a file.
//!
//! Data flow: bytes → [`event::decode`] → [`engine::Engine::apply`] → [`transition::Transition`]
//! → JSON ([`transition::write_json`]).
//!
//! Modules:
//! - [`time`]: RFC 3339 and duration parsing, millisecond formatting.
//! - [`json`]: a validating, borrowing JSON scanner for the per-event hot path.
//! - [`event`]: the input wire format, rejection reasons.
//! - [`model`]: the scoring model: TOML schema, validation with locations, compiled rules.
//! - [`engine`]: the pure scoring engine: lead state, decay, rules, crossings, transitions.
//! - [`transition`]: the output wire format.
//! - [`changelog`]: the state changelog's record format (one lead's whole state), versioned.
//! - [`metrics`]: every Prometheus metric, named once; score gauges computed at scrape time.
//! - [`replay`]: offline backtest over JSON lines.
//! - [`generate`]: reproducible synthetic lead activity.
//! - [`config`]: the service config (`leadscore.toml`): defaults, env and flag overrides, validation.
//! - [`kafka`]: the only place that sets librdkafka properties.
//! - [`partition`]: which partition a lead belongs to (Kafka's murmur2 partitioner).
//! - [`pipeline`]: the Kafka loop: consume, decode, score, publish, commit; rebalances.
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`, `/leads/{id}`, `/api/status` and the status page.
//! - [`service`]: `run`: the pipeline thread and the HTTP server, started and stopped together.
//! - [`demo`]: `demo`: the whole pipeline on an in-process mock broker.
//! - [`cli`]: the command line.

pub mod changelog;
pub mod cli;
pub mod config;
pub mod demo;
pub mod engine;
pub mod event;
pub mod generate;
pub mod http;
pub mod json;
pub mod kafka;
pub mod metrics;
pub mod model;
pub mod partition;
pub mod pipeline;
pub mod replay;
pub mod service;
pub mod time;
pub mod transition;
