//! The HTTP endpoints (spec section 7), on axum.
//!
//! - `GET /metrics`: the Prometheus text exposition ([`Metrics::render`]).
//! - `GET /healthz`: 200 `ok` while the process is alive.
//! - `GET /readyz`: 200 `ready` once partitions are assigned and state is restored; 503
//!   `not ready` while starting, 503 `shutting down` once shutdown began ([`Health`]).
//! - `GET /leads/{lead_id}`: one lead as JSON ([`lead_json`]); 404 for an unknown lead, 307 to the
//!   owning instance for a lead another instance owns, 400 for an id over 256 bytes.
//! - `GET /api/status`: the numbers of the status page ([`StatusSource::status`]).
//! - `GET /`: a self-contained live status page (inline HTML, CSS and JS; no external assets).
//!
//! Handlers never touch engine state on the async workers: scores decay, so `/metrics` and
//! `/api/status` walk every lead at request time (tens of milliseconds at millions of leads) and
//! lead lookups may wait for the pipeline's lock; all of it runs in `spawn_blocking`, so a scrape
//! never stalls the other connections. Lead ids are never logged.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, X_CONTENT_TYPE_OPTIONS};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};

use crate::engine::LeadView;
use crate::metrics::Metrics;
use crate::model::Model;
use crate::time::format_rfc3339_ms;

/// Content type of `/metrics`: the Prometheus text format 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Longest lead id `/leads/{lead_id}` accepts, in bytes (the input format's limit, spec section 2).
pub const MAX_LEAD_ID_BYTES: usize = 256;

const TEXT: &str = "text/plain; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";
/// The status page may only talk to its own origin and load nothing: a browser enforces the
/// "no external assets" rule even if a later edit slips one in.
const PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                        connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
                        frame-ancestors 'none'";

/// Liveness and readiness of the instance, flipped by the pipeline.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    stopping: AtomicBool,
}

impl Health {
    /// Starting: not ready, not stopping.
    pub fn new() -> Health {
        Health::default()
    }

    /// Ready once partitions are assigned and their state is restored; not ready again while a
    /// rebalance restores state.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Shutdown began: `/readyz` answers 503 from now on, whatever `set_ready` says, so load
    /// balancers drain the instance.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Whether shutdown began.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Ready and not stopping.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_stopping()
    }
}

/// The answer to a `/leads/{lead_id}` lookup.
#[derive(Debug, Clone, PartialEq)]
pub enum LeadAnswer {
    /// This instance tracks the lead: the JSON body (see [`lead_json`]).
    Found(Value),
    /// No instance tracks it (or, before the consumer-group work, this one does not).
    NotFound,
    /// Another instance owns the lead's partition: 307 Temporary Redirect to `url` (build it with
    /// [`lead_url`] from the owner's advertised address), with a JSON body naming `owner`.
    Elsewhere { owner: String, url: String },
}

/// What the endpoints read from the running pipeline. Both methods are called on a blocking
/// thread (`spawn_blocking`), so they may take locks and walk every lead.
pub trait StatusSource: Send + Sync + 'static {
    /// One lead, scored now.
    fn lead(&self, lead_id: &str) -> LeadAnswer;

    /// The numbers of the status page, as JSON; [`StatusReport`] serializes to exactly this
    /// shape. Every field is optional to the page (it shows `—`), but send them all:
    ///
    /// ```json
    /// {
    ///   "model": "default",                  // model name
    ///   "model_version": "2026-12-01",
    ///   "now": "2026-12-03T10:15:00.000Z",   // the instant the scores are evaluated at
    ///   "qualify_at": 60.0,                  // the model's thresholds (colour the distribution)
    ///   "disqualify_below": 45.0,
    ///   "average_score": 41.73,              // the KPI, as leadscore_average_score
    ///   "tracked_leads": 120000,
    ///   "qualified_leads": 5400,
    ///   "events_total": 9876543,             // counter: sum of leadscore_events_total (the page
    ///                                        // derives events per second between polls)
    ///   "rejected_total": 1234,              // counter: sum of leadscore_events_rejected_total
    ///   "transitions_total": 6789,           // counter: sum of leadscore_transitions_total
    ///   "distribution": [                    // CUMULATIVE, as leadscore_leads_by_score:
    ///     {"le": "-50", "count": 0},         // leads with score <= le, bounds ascending,
    ///     {"le": "0", "count": 3100},        // last one "+Inf" with count = tracked_leads
    ///     {"le": "+Inf", "count": 120000}
    ///   ],
    ///   "latest_transitions": [              // newest first, at most 20 (the page shows 20)
    ///     {"at": "2026-12-03T10:14:58.120Z", "lead_id": "lead-42",
    ///      "type": "lead_qualified", "score": 63.25}
    ///   ],
    ///   "instance": {
    ///     "id": "leadscore-0",               // optional: host name or transactional id
    ///     "ready": true,                     // Health::is_ready
    ///     "assigned_partitions": 6,
    ///     "lag": 0                           // records behind, summed over assigned partitions
    ///   }
    /// }
    /// ```
    fn status(&self) -> Value;
}

/// Typed form of the `/api/status` body (see [`StatusSource::status`]); `to_value` gives the JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StatusReport {
    pub model: String,
    pub model_version: String,
    /// RFC 3339 with milliseconds ([`format_rfc3339_ms`]).
    pub now: String,
    pub qualify_at: f64,
    pub disqualify_below: f64,
    pub average_score: f64,
    pub tracked_leads: u64,
    pub qualified_leads: u64,
    pub events_total: u64,
    pub rejected_total: u64,
    pub transitions_total: u64,
    /// Cumulative buckets, ascending, ending with `+Inf` ([`distribution`] builds them).
    pub distribution: Vec<Bucket>,
    /// Newest first, at most [`StatusReport::LATEST_TRANSITIONS`].
    pub latest_transitions: Vec<RecentTransition>,
    /// The average score over the last hour: (epoch ms, average) samples about 10 s apart,
    /// oldest first, kept by the service (the status page's trend).
    pub average_history: Vec<(i64, f64)>,
    pub instance: InstanceStatus,
}

impl StatusReport {
    /// How many transitions the status page lists.
    pub const LATEST_TRANSITIONS: usize = 20;

    /// The JSON of `/api/status`.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("a status report serializes")
    }
}

/// One cumulative bucket of the score distribution: `count` leads have `score <= le`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bucket {
    /// The bound as Prometheus writes it (`"60"`, `"45.5"`, `"+Inf"`).
    pub le: String,
    pub count: u64,
}

/// One row of the status page's transition table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecentTransition {
    /// RFC 3339 with milliseconds.
    pub at: String,
    pub lead_id: String,
    /// `lead_qualified` or `lead_disqualified`.
    #[serde(rename = "type")]
    pub kind: String,
    pub score: f64,
}

/// The instance block of the status page.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct InstanceStatus {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub id: String,
    pub ready: bool,
    pub assigned_partitions: u64,
    pub lag: u64,
}

/// The status page's buckets from a [`crate::metrics::ScoreSnapshot`]: `bounds` as given to the
/// snapshot (ascending), its `cumulative` counts, and the tracked lead count for `+Inf`.
pub fn distribution(bounds: &[f64], cumulative: &[u64], tracked: u64) -> Vec<Bucket> {
    let mut out: Vec<Bucket> = bounds
        .iter()
        .enumerate()
        .map(|(i, &b)| Bucket { le: crate::metrics::le_label(b), count: cumulative.get(i).copied().unwrap_or(0) })
        .collect();
    out.push(Bucket { le: "+Inf".to_owned(), count: tracked });
    out
}

/// The `/leads/{lead_id}` body of a tracked lead, with the transition's vocabulary (spec section
/// 5): group totals by name, fit rules by id, times in RFC 3339.
///
/// ```json
/// {"lead_id":"lead-42","model":"default","model_version":"2026-12-01","score":63.25,
///  "qualified":true,"qualify_at":60.0,"disqualify_below":45.0,"at":"2026-12-03T10:15:00.000Z",
///  "clock":"2026-12-03T10:14:58.000Z","clock_ms":1796292898000,"transitions":1,
///  "breakdown":{"fit":15.0,"fixed":0.0,"engagement":48.25,"groups":{"web":8.25},
///               "fit_rules":["senior_title"]}}
/// ```
pub fn lead_json(model: &Model, view: &LeadView, now_ms: i64) -> Value {
    let b = &view.breakdown;
    let groups: serde_json::Map<String, Value> =
        model.groups.iter().zip(&b.groups).map(|(g, v)| (g.name.clone(), json!(v))).collect();
    let fit_rules: Vec<&str> = b.fit_rules.iter().filter_map(|&i| model.fits.get(i)).map(|f| f.id.as_str()).collect();
    json!({
        "lead_id": view.lead_id,
        "model": model.name,
        "model_version": model.version,
        "score": view.score,
        "qualified": view.qualified,
        "qualify_at": model.qualify_at,
        "disqualify_below": model.disqualify_below,
        "at": format_rfc3339_ms(now_ms),
        "clock": format_rfc3339_ms(view.clock_ms),
        "clock_ms": view.clock_ms,
        "transitions": view.transitions,
        "breakdown": {
            "fit": b.fit,
            "fixed": b.fixed,
            "engagement": b.engagement,
            "groups": groups,
            "fit_rules": fit_rules,
        },
    })
}

/// `{base}/leads/{lead_id}` with the id percent-encoded as one path segment (for
/// [`LeadAnswer::Elsewhere`]); `base` is an instance's advertised URL.
pub fn lead_url(base: &str, lead_id: &str) -> String {
    let mut url = String::with_capacity(base.len() + 7 + lead_id.len());
    url.push_str(base.trim_end_matches('/'));
    url.push_str("/leads/");
    for &b in lead_id.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            url.push(char::from(b));
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

/// What the handlers share.
#[derive(Clone)]
pub struct HttpState {
    pub metrics: Metrics,
    pub health: Arc<Health>,
    pub source: Arc<dyn StatusSource>,
}

/// Every endpoint, ready to serve.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/leads/{lead_id}", get(lead))
        .route("/api/status", get(api_status))
        .fallback(not_found)
        .with_state(state)
}

/// Serves [`router`] on `listener` until `shutdown` completes, then stops accepting and lets
/// in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (status, [(CONTENT_TYPE, TEXT), (CACHE_CONTROL, "no-store")], body).into_response()
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, [(CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

fn json_error(status: StatusCode, code: &str) -> Response {
    json_response(status, json!({ "error": code }))
}

async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found")
}

async fn healthz() -> Response {
    text(StatusCode::OK, "ok")
}

async fn readyz(State(state): State<HttpState>) -> Response {
    if state.health.is_ready() {
        text(StatusCode::OK, "ready")
    } else if state.health.is_stopping() {
        text(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let metrics = state.metrics.clone();
    match tokio::task::spawn_blocking(move || metrics.render()).await {
        Ok(body) => ([(CONTENT_TYPE, METRICS_CONTENT_TYPE), (CACHE_CONTROL, "no-store")], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering /metrics failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

async fn api_status(State(state): State<HttpState>) -> Response {
    let source = state.source.clone();
    match tokio::task::spawn_blocking(move || source.status()).await {
        Ok(status) => json_response(StatusCode::OK, status),
        Err(e) => {
            tracing::error!(error = %e, "computing /api/status failed");
            json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error")
        }
    }
}

async fn lead(State(state): State<HttpState>, id: Result<Path<String>, PathRejection>) -> Response {
    // Path percent-decodes the segment; a rejection means it did not decode to UTF-8.
    let Ok(Path(lead_id)) = id else {
        return json_error(StatusCode::BAD_REQUEST, "invalid_lead_id");
    };
    if lead_id.is_empty() {
        return json_error(StatusCode::BAD_REQUEST, "invalid_lead_id");
    }
    if lead_id.len() > MAX_LEAD_ID_BYTES {
        return json_error(StatusCode::BAD_REQUEST, "lead_id_too_long");
    }
    let source = state.source.clone();
    match tokio::task::spawn_blocking(move || source.lead(&lead_id)).await {
        Ok(LeadAnswer::Found(body)) => json_response(StatusCode::OK, body),
        Ok(LeadAnswer::NotFound) => json_error(StatusCode::NOT_FOUND, "not_found"),
        Ok(LeadAnswer::Elsewhere { owner, url }) => match HeaderValue::try_from(url.as_str()) {
            Ok(location) => (
                StatusCode::TEMPORARY_REDIRECT,
                [(LOCATION, location), (CACHE_CONTROL, HeaderValue::from_static("no-store"))],
                Json(json!({ "error": "elsewhere", "owner": owner, "url": url })),
            )
                .into_response(),
            Err(_) => {
                tracing::error!(owner = %owner, "the owner's lead URL is not a valid header value");
                json_error(StatusCode::INTERNAL_SERVER_ERROR, "invalid_redirect")
            }
        },
        Err(e) => {
            tracing::error!(error = %e, "lead lookup failed");
            json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error")
        }
    }
}

async fn status_page() -> Response {
    (
        [
            (CONTENT_TYPE, HTML),
            (CACHE_CONTROL, "no-cache"),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (HeaderName::from_static("content-security-policy"), PAGE_CSP),
        ],
        STATUS_PAGE,
    )
        .into_response()
}

/// The live status page. Data only ever reaches the DOM through `textContent` and attribute
/// setters, never `innerHTML`: lead ids are producer input.
const STATUS_PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>leadscore · live</title>
<style>
:root {
  --bg: #f4f6f8; --card: #ffffff; --ink: #111827; --muted: #4b5563; --line: #e2e6ea;
  --accent: #1d4ed8; --accent-soft: rgba(29, 78, 216, .12); --good: #047857; --bad: #b91c1c;
  --bar: #60a5fa; --bar-q: #10b981; --ok-bg: #d1fae5; --ok-ink: #065f46; --warn-bg: #fef3c7;
  --warn-ink: #78350f; --bad-bg: #fee2e2; --bad-ink: #991b1b;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #0b1220; --card: #131c2e; --ink: #f1f5f9; --muted: #b6c2d2; --line: #24324a;
    --accent: #93c5fd; --accent-soft: rgba(147, 197, 253, .16); --good: #34d399; --bad: #fca5a5;
    --bar: #3b82f6; --bar-q: #10b981; --ok-bg: #064e3b; --ok-ink: #d1fae5; --warn-bg: #78350f;
    --warn-ink: #fef3c7; --bad-bg: #7f1d1d; --bad-ink: #fee2e2;
  }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { display: flex; flex-wrap: wrap; gap: .5rem 1.5rem; align-items: center; justify-content: space-between;
  padding: .9rem 1.25rem; background: var(--card); border-bottom: 1px solid var(--line); }
h1 { font-size: 1.2rem; margin: 0; }
h2 { font-size: 1rem; margin: 0 0 .75rem; }
.sub { color: var(--muted); font-size: .9rem; }
.head-right { display: flex; gap: .75rem; align-items: center; flex-wrap: wrap; }
.banner { display: none; padding: .6rem 1.25rem; background: var(--warn-bg); color: var(--warn-ink); font-weight: 600; }
.banner.show { display: block; }
main { max-width: 1240px; margin: 0 auto; padding: 1rem 1.25rem 2.5rem; display: grid; gap: 1rem; }
.kpis { display: grid; gap: 1rem; grid-template-columns: repeat(auto-fit, minmax(190px, 1fr)); }
.cols { display: grid; gap: 1rem; grid-template-columns: repeat(auto-fit, minmax(340px, 1fr)); }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 12px; padding: 1rem 1.1rem; min-width: 0; }
.hero { grid-column: span 2; }
@media (max-width: 640px) { .hero { grid-column: auto; } .cols { grid-template-columns: 1fr; } }
.label { margin: 0 0 .2rem; color: var(--muted); font-size: .78rem; font-weight: 600; text-transform: uppercase; letter-spacing: .05em; }
.value { font-size: 2.1rem; font-weight: 700; line-height: 1.15; font-variant-numeric: tabular-nums; }
.hint { color: var(--muted); font-size: .85rem; margin-top: .2rem; font-variant-numeric: tabular-nums; }
.trend { font-weight: 600; }
.trend.up { color: var(--good); }
.trend.down { color: var(--bad); }
svg.spark { display: block; width: 100%; height: 64px; margin-top: .6rem; }
#spark-line { fill: none; stroke: var(--accent); stroke-width: 2; vector-effect: non-scaling-stroke; }
#spark-area { fill: var(--accent-soft); stroke: none; }
.drow { display: grid; grid-template-columns: 7.5rem 1fr 4.5rem; gap: .6rem; align-items: center; font-size: .85rem; padding: .12rem 0; }
.dlabel { color: var(--muted); white-space: nowrap; font-variant-numeric: tabular-nums; }
.dtrack { height: 14px; background: var(--line); border-radius: 4px; overflow: hidden; }
.dfill { display: block; height: 100%; width: 0; background: var(--bar); border-radius: 4px; transition: width .4s ease; }
.dfill.q { background: var(--bar-q); }
.dcount { text-align: right; font-variant-numeric: tabular-nums; }
.legend { display: flex; gap: 1rem; margin-top: .6rem; color: var(--muted); font-size: .8rem; flex-wrap: wrap; }
.swatch { display: inline-block; width: .8rem; height: .8rem; border-radius: 3px; vertical-align: -1px; margin-right: .3rem; background: var(--bar); }
.swatch.q { background: var(--bar-q); }
.table-wrap { overflow-x: auto; }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: .45rem .5rem; border-bottom: 1px solid var(--line); }
th { color: var(--muted); font-size: .78rem; font-weight: 600; text-transform: uppercase; letter-spacing: .04em; }
.num { text-align: right; }
td.lead { max-width: 18rem; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .85rem; }
.badge { display: inline-block; padding: .1rem .55rem; border-radius: 999px; font-size: .78rem; font-weight: 700; }
.badge.q { background: var(--ok-bg); color: var(--ok-ink); }
.badge.d { background: var(--bad-bg); color: var(--bad-ink); }
.pill { display: inline-block; padding: .2rem .7rem; border-radius: 999px; font-size: .85rem; font-weight: 700; background: var(--warn-bg); color: var(--warn-ink); }
.pill.ok { background: var(--ok-bg); color: var(--ok-ink); }
.pill.bad { background: var(--bad-bg); color: var(--bad-ink); }
dl.health { display: grid; grid-template-columns: auto 1fr; gap: .45rem 1.25rem; margin: 0; }
dl.health dt { color: var(--muted); }
dl.health dd { margin: 0; font-weight: 600; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
.empty { color: var(--muted); font-style: italic; padding: .5rem 0; }
</style>
</head>
<body>
<header>
  <div>
    <h1>Lead scoring · live</h1>
    <div class="sub" id="model">Connecting…</div>
  </div>
  <div class="head-right">
    <span class="sub" id="updated"></span>
    <span class="pill" id="ready-pill">Connecting</span>
  </div>
</header>
<div class="banner" id="banner" role="status">Connection to the service lost. Retrying every 2 seconds; the numbers below are stale.</div>
<noscript><div class="banner show">This page needs JavaScript. The raw numbers are at /api/status and /metrics.</div></noscript>
<main>
  <section class="kpis" aria-label="Key figures">
    <div class="card hero">
      <p class="label">Average lead score</p>
      <div class="value" id="avg">—</div>
      <div class="hint"><span class="trend" id="trend">Collecting the trend…</span></div>
      <svg class="spark" id="spark" viewBox="0 0 300 64" preserveAspectRatio="none" role="img" aria-labelledby="spark-title">
        <title id="spark-title">Average lead score over the last hour</title>
        <path id="spark-area" d=""></path>
        <path id="spark-line" d=""></path>
      </svg>
      <div class="hint" id="spark-range"></div>
    </div>
    <div class="card">
      <p class="label">Qualified leads</p>
      <div class="value" id="qualified">—</div>
      <div class="hint" id="qualified-share"></div>
    </div>
    <div class="card">
      <p class="label">Tracked leads</p>
      <div class="value" id="tracked">—</div>
      <div class="hint" id="transitions-total"></div>
    </div>
    <div class="card">
      <p class="label">Events per second</p>
      <div class="value" id="eps">—</div>
      <div class="hint" id="events-total"></div>
    </div>
  </section>
  <section class="cols">
    <div class="card">
      <h2>Score distribution</h2>
      <div id="dist" aria-label="Leads per score range"><div class="empty">No data yet.</div></div>
      <div class="legend">
        <span><span class="swatch"></span>Leads in range</span>
        <span id="legend-q"><span class="swatch q"></span>Above the qualification line</span>
      </div>
    </div>
    <div class="card">
      <h2>Latest transitions</h2>
      <div class="table-wrap">
        <table>
          <thead><tr><th>Time</th><th>Lead</th><th>Change</th><th class="num">Score</th></tr></thead>
          <tbody id="tx-body"></tbody>
        </table>
      </div>
      <div class="empty" id="tx-empty">No transitions yet.</div>
    </div>
  </section>
  <section class="card" aria-label="Instance health">
    <h2>Instance health</h2>
    <dl class="health">
      <dt>Instance</dt><dd id="inst-id">—</dd>
      <dt>Ready</dt><dd id="inst-ready">—</dd>
      <dt>Assigned partitions</dt><dd id="inst-partitions">—</dd>
      <dt>Consumer lag (records)</dt><dd id="inst-lag">—</dd>
      <dt>Rejected records</dt><dd id="inst-rejected">—</dd>
      <dt>Model</dt><dd id="inst-model">—</dd>
    </dl>
  </section>
</main>
<script>
(function () {
  'use strict';
  var POLL_MS = 2000, HOUR_MS = 3600000, MAX_SAMPLES = 2400, MAX_ROWS = 20;
  var W = 300, H = 64;
  var nf0 = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  var nf1 = new Intl.NumberFormat(undefined, { minimumFractionDigits: 1, maximumFractionDigits: 1 });
  var series = [], storeKey = null, prev = null;

  function $(id) { return document.getElementById(id); }
  function num(v) { return typeof v === 'number' && isFinite(v) ? v : null; }
  function str(v) { return v === null || v === undefined ? '' : String(v); }
  function setText(id, s) { $(id).textContent = s; }
  function fmtInt(v) { v = num(v); return v === null ? '—' : nf0.format(v); }
  // A score that rounds to zero shows as 0.0, not -0.0.
  function fmtScore(v) { v = num(v); return v === null ? '—' : nf1.format(Math.abs(v) < 0.05 ? 0 : v); }
  function clear(el) { while (el.firstChild) { el.removeChild(el.firstChild); } }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function timeOf(iso) {
    var d = new Date(iso);
    return isNaN(d.getTime()) ? str(iso) : d.toLocaleTimeString();
  }

  // The trend lives in the browser: a series of (time, average) samples over the last hour,
  // kept in localStorage so a reload does not lose it.
  function loadSeries(model) {
    storeKey = 'leadscore.average.' + model;
    series = [];
    try {
      var saved = JSON.parse(window.localStorage.getItem(storeKey) || '[]');
      if (Array.isArray(saved)) {
        series = saved.filter(function (p) { return p && num(p.t) !== null && num(p.v) !== null; });
      }
    } catch (e) { series = []; }
  }
  function saveSeries() {
    try { window.localStorage.setItem(storeKey, JSON.stringify(series)); } catch (e) { /* private mode */ }
  }
  function addSample(t, v) {
    series.push({ t: t, v: v });
    var cut = t - HOUR_MS;
    while (series.length && series[0].t < cut) { series.shift(); }
    if (series.length > MAX_SAMPLES) { series.splice(0, series.length - MAX_SAMPLES); }
    saveSeries();
  }

  function drawSpark(now) {
    var line = $('spark-line'), area = $('spark-area');
    if (series.length < 2) {
      line.setAttribute('d', '');
      area.setAttribute('d', '');
      setText('spark-range', '');
      return;
    }
    var lo = Infinity, hi = -Infinity;
    series.forEach(function (p) { lo = Math.min(lo, p.v); hi = Math.max(hi, p.v); });
    var pad = hi - lo < 1e-9 ? 1 : (hi - lo) * 0.1;
    // The chart spans the data it has, up to the last hour.
    var t0 = Math.max(now - HOUR_MS, series[0].t), span = Math.max(1, now - t0);
    var y0 = lo - pad, y1 = hi + pad;
    var pts = series.map(function (p) {
      var x = Math.max(0, Math.min(W, (p.t - t0) / span * W));
      var y = H - 3 - (p.v - y0) / (y1 - y0) * (H - 6);
      return x.toFixed(1) + ' ' + y.toFixed(1);
    });
    var d = 'M' + pts.join(' L');
    line.setAttribute('d', d);
    area.setAttribute('d', d + ' L' + pts[pts.length - 1].split(' ')[0] + ' ' + H + ' L' + pts[0].split(' ')[0] + ' ' + H + ' Z');
    setText('spark-range', (now - t0 >= HOUR_MS - 60000 ? 'Last hour' : 'Since ' + new Date(t0).toLocaleTimeString()) + ': low ' + nf1.format(lo) + ', high ' + nf1.format(hi));
  }

  function drawTrend() {
    var t = $('trend');
    if (series.length < 2) { t.className = 'trend'; t.textContent = 'Collecting the trend…'; return; }
    var first = series[0], last = series[series.length - 1];
    var delta = last.v - first.v;
    var seconds = Math.round((last.t - first.t) / 1000), minutes = Math.round(seconds / 60);
    var span = minutes >= 59 ? 'the last hour' : seconds < 90 ? 'the last ' + seconds + ' s' : 'the last ' + minutes + ' min';
    if (Math.abs(delta) < 0.05) {
      t.className = 'trend';
      t.textContent = 'Steady over ' + span;
    } else {
      t.className = 'trend ' + (delta > 0 ? 'up' : 'down');
      t.textContent = (delta > 0 ? '▲ +' : '▼ −') + nf1.format(Math.abs(delta)) + ' over ' + span;
    }
  }

  // `distribution` is cumulative (leads with score <= le); bars show each range's own count.
  function drawDistribution(dist, qualifyAt) {
    var box = $('dist');
    clear(box);
    if (!Array.isArray(dist) || dist.length === 0) { box.appendChild(el('div', 'empty', 'No data yet.')); return; }
    var rows = [], prevCount = 0, prevLe = null;
    dist.forEach(function (b) {
      var count = num(b && b.count) || 0, le = str(b && b.le);
      var label = prevLe === null ? '≤ ' + le : (le === '+Inf' ? '> ' + prevLe : prevLe + ' to ' + le);
      var lower = prevLe === null ? -Infinity : parseFloat(prevLe);
      rows.push({ label: label, n: Math.max(0, count - prevCount), q: qualifyAt !== null && lower >= qualifyAt });
      prevCount = count;
      prevLe = le;
    });
    var max = 0;
    rows.forEach(function (r) { max = Math.max(max, r.n); });
    rows.forEach(function (r) {
      var row = el('div', 'drow');
      row.appendChild(el('span', 'dlabel', r.label));
      var track = el('span', 'dtrack');
      var fill = el('span', 'dfill' + (r.q ? ' q' : ''));
      fill.style.width = (max > 0 ? (100 * r.n / max) : 0).toFixed(2) + '%';
      track.appendChild(fill);
      row.appendChild(track);
      row.appendChild(el('span', 'dcount', nf0.format(r.n)));
      row.title = r.label + ': ' + nf0.format(r.n) + ' leads';
      box.appendChild(row);
    });
    $('legend-q').style.display = qualifyAt === null ? 'none' : '';
    if (qualifyAt !== null) {
      $('legend-q').lastChild.textContent = 'Above the qualification line (' + nf1.format(qualifyAt) + ')';
    }
  }

  function drawTransitions(list) {
    var body = $('tx-body');
    clear(body);
    var rows = Array.isArray(list) ? list.slice(0, MAX_ROWS) : [];
    $('tx-empty').style.display = rows.length ? 'none' : '';
    rows.forEach(function (t) {
      var tr = el('tr');
      var when = el('td', '', timeOf(t.at));
      when.title = str(t.at);
      tr.appendChild(when);
      var lead = el('td', 'lead', str(t.lead_id));
      lead.title = str(t.lead_id);
      tr.appendChild(lead);
      var kind = el('td');
      var q = t.type === 'lead_qualified', d = t.type === 'lead_disqualified';
      kind.appendChild(el('span', 'badge ' + (q ? 'q' : 'd'), q ? 'Qualified' : (d ? 'Disqualified' : str(t.type))));
      tr.appendChild(kind);
      tr.appendChild(el('td', 'num', fmtScore(t.score)));
      body.appendChild(tr);
    });
  }

  function drawHealth(s) {
    var inst = s.instance || {};
    var pill = $('ready-pill');
    if (inst.ready === true) { pill.className = 'pill ok'; pill.textContent = 'Ready'; }
    else if (inst.ready === false) { pill.className = 'pill'; pill.textContent = 'Not ready'; }
    else { pill.className = 'pill'; pill.textContent = 'Unknown'; }
    setText('inst-id', str(inst.id) || '—');
    setText('inst-ready', inst.ready === true ? 'Yes' : (inst.ready === false ? 'No (starting, rebalancing or stopping)' : '—'));
    setText('inst-partitions', fmtInt(inst.assigned_partitions));
    setText('inst-lag', fmtInt(inst.lag));
    setText('inst-rejected', fmtInt(s.rejected_total));
    var model = str(s.model), version = str(s.model_version);
    setText('inst-model', model ? model + (version ? ' (version ' + version + ')' : '') : '—');
  }

  function render(s, now) {
    var model = str(s.model) || 'default';
    if (storeKey !== 'leadscore.average.' + model) { loadSeries(model); }
    setText('model', 'Model ' + model + (s.model_version ? ' · version ' + str(s.model_version) : ''));
    var avg = num(s.average_score);
    setText('avg', fmtScore(avg));
    if (Array.isArray(s.average_history)) {
      // The service keeps the last hour (a sample about every 10 s, whether a page is open or
      // not): it is the trend's base, and this page's own samples since its newest refine it.
      var server = [];
      s.average_history.forEach(function (p) {
        if (Array.isArray(p) && num(p[0]) !== null && num(p[1]) !== null) { server.push({ t: num(p[0]), v: num(p[1]) }); }
      });
      if (server.length) {
        var newest = server[server.length - 1].t;
        series = server.concat(series.filter(function (p) { return p.t > newest; }));
      }
    }
    if (avg !== null) { addSample(now, avg); }
    drawSpark(now);
    drawTrend();

    var tracked = num(s.tracked_leads), qualified = num(s.qualified_leads);
    setText('qualified', fmtInt(qualified));
    setText('qualified-share', tracked && qualified !== null ? nf1.format(100 * qualified / tracked) + '% of tracked leads' : '');
    setText('tracked', fmtInt(tracked));
    setText('transitions-total', num(s.transitions_total) === null ? '' : fmtInt(s.transitions_total) + ' transitions so far');

    var events = num(s.events_total);
    if (prev && events !== null && prev.events !== null && events >= prev.events && now > prev.t) {
      var rate = (events - prev.events) / ((now - prev.t) / 1000);
      setText('eps', rate < 10 ? nf1.format(rate) : nf0.format(rate));
    } else if (!prev || events === null) {
      setText('eps', '…');
    }
    setText('events-total', events === null ? '' : fmtInt(events) + ' events so far');
    prev = { t: now, events: events };

    drawDistribution(s.distribution, num(s.qualify_at));
    drawTransitions(s.latest_transitions);
    drawHealth(s);
    setText('updated', 'Updated ' + new Date(now).toLocaleTimeString());
  }

  function offline(on) {
    $('banner').className = on ? 'banner show' : 'banner';
    if (on) { var p = $('ready-pill'); p.className = 'pill bad'; p.textContent = 'Unreachable'; }
  }

  function poll() {
    var started = Date.now();
    var ctrl = typeof AbortController === 'function' ? new AbortController() : null;
    var timer = ctrl ? setTimeout(function () { ctrl.abort(); }, 10000) : null;
    fetch('api/status', { cache: 'no-store', headers: { 'Accept': 'application/json' }, signal: ctrl ? ctrl.signal : undefined })
      .then(function (r) { if (!r.ok) { throw new Error('status ' + r.status); } return r.json(); })
      .then(function (s) { render(s || {}, Date.now()); offline(false); })
      .catch(function () { offline(true); })
      .then(function () {
        if (timer) { clearTimeout(timer); }
        setTimeout(poll, Math.max(200, POLL_MS - (Date.now() - started)));
      });
  }

  poll();
})();
</script>
</body>
</html>
"##;

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::oneshot;

    use super::*;
    use crate::engine::{Breakdown, Totals};
    use crate::metrics::{count_into, ScoreSnapshot, ScoreSource};

    struct FakeScores;
    impl ScoreSource for FakeScores {
        fn snapshot(&self, bounds: &[f64]) -> ScoreSnapshot {
            let mut cumulative = vec![0; bounds.len()];
            for s in [10.0, 70.0] {
                count_into(bounds, &mut cumulative, s);
            }
            ScoreSnapshot { totals: Totals { leads: 2, qualified: 1, score_sum: 80.0 }, cumulative }
        }
    }

    struct FakeSource {
        model: Model,
    }
    impl StatusSource for FakeSource {
        fn lead(&self, lead_id: &str) -> LeadAnswer {
            match lead_id {
                "lead 42/é" | "lead-42" => {
                    let view = LeadView {
                        lead_id: lead_id.to_owned(),
                        score: 63.25,
                        qualified: true,
                        clock_ms: 1_000,
                        transitions: 1,
                        breakdown: Breakdown {
                            fit: 15.0,
                            fixed: 0.0,
                            engagement: 48.25,
                            groups: vec![0.0; self.model.groups.len()],
                            fit_rules: vec![],
                        },
                    };
                    LeadAnswer::Found(lead_json(&self.model, &view, 2_000))
                }
                "remote-7" => LeadAnswer::Elsewhere {
                    owner: "leadscore-1".to_owned(),
                    url: lead_url("http://leadscore-1:9898/", "remote-7"),
                },
                _ => LeadAnswer::NotFound,
            }
        }

        fn status(&self) -> Value {
            StatusReport {
                model: self.model.name.clone(),
                model_version: self.model.version.clone(),
                now: format_rfc3339_ms(2_000),
                average_score: 40.0,
                tracked_leads: 2,
                qualified_leads: 1,
                distribution: distribution(&[0.0, 60.0], &[0, 1], 2),
                latest_transitions: vec![RecentTransition {
                    at: format_rfc3339_ms(1_500),
                    lead_id: "<b>x</b>".to_owned(),
                    kind: "lead_qualified".to_owned(),
                    score: 61.0,
                }],
                instance: InstanceStatus { id: String::new(), ready: true, assigned_partitions: 3, lag: 0 },
                ..StatusReport::default()
            }
            .to_value()
        }
    }

    fn model() -> Model {
        Model::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/model.toml"))).unwrap()
    }

    struct Server {
        addr: SocketAddr,
        health: Arc<Health>,
        stop: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    impl Server {
        async fn start() -> Server {
            let model = model();
            let metrics = Metrics::new(&model);
            metrics.register_scores(&model, Arc::new(FakeScores));
            let health = Arc::new(Health::new());
            let state = HttpState { metrics, health: health.clone(), source: Arc::new(FakeSource { model }) };
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, rx) = oneshot::channel::<()>();
            let task = tokio::spawn(serve(listener, state, async move {
                let _ = rx.await;
            }));
            Server { addr, health, stop: Some(tx), task }
        }

        async fn get(&self, path: &str) -> Reply {
            get(self.addr, path).await
        }

        async fn stop(mut self) {
            self.stop.take().unwrap().send(()).unwrap();
            tokio::time::timeout(std::time::Duration::from_secs(5), self.task).await.unwrap().unwrap().unwrap();
        }
    }

    #[derive(Debug)]
    struct Reply {
        status: u16,
        headers: HashMap<String, String>,
        body: String,
    }

    impl Reply {
        fn header(&self, name: &str) -> &str {
            self.headers.get(name).map(String::as_str).unwrap_or("")
        }

        fn json(&self) -> Value {
            assert!(self.header("content-type").starts_with("application/json"), "{self:?}");
            serde_json::from_str(&self.body).unwrap()
        }
    }

    /// A minimal HTTP/1.1 client: one request per connection, `Connection: close`.
    async fn get(addr: SocketAddr, path: &str) -> Reply {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_to_end(&mut raw)).await.unwrap().unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("end of headers");
        let head = std::str::from_utf8(&raw[..split]).unwrap();
        let mut body = raw[split + 4..].to_vec();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        if headers.get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            body = dechunk(&body);
        }
        Reply { status, headers, body: String::from_utf8(body).unwrap() }
    }

    fn dechunk(mut data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let eol = data.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(std::str::from_utf8(&data[..eol]).unwrap().trim(), 16).unwrap();
            if size == 0 {
                return out;
            }
            out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
            data = &data[eol + 4 + size..];
        }
    }

    #[tokio::test]
    async fn healthz_and_readiness_transitions() {
        let s = Server::start().await;
        let r = s.get("/healthz").await;
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));
        assert!(r.header("content-type").starts_with("text/plain"));

        let r = s.get("/readyz").await;
        assert_eq!((r.status, r.body.as_str()), (503, "not ready"));
        s.health.set_ready(true);
        let r = s.get("/readyz").await;
        assert_eq!((r.status, r.body.as_str()), (200, "ready"));
        assert!(r.header("content-type").starts_with("text/plain"));
        s.health.set_stopping();
        let r = s.get("/readyz").await;
        assert_eq!((r.status, r.body.as_str()), (503, "shutting down"));
        s.health.set_ready(true);
        assert_eq!(s.get("/readyz").await.status, 503, "stopping wins over ready");
        assert_eq!(s.get("/healthz").await.status, 200, "alive while stopping");
        s.stop().await;
    }

    #[tokio::test]
    async fn metrics_exposition() {
        let s = Server::start().await;
        let r = s.get("/metrics").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), METRICS_CONTENT_TYPE);
        assert!(r.body.contains("leadscore_average_score{model=\"default\"} 40"), "{}", r.body);
        assert!(r.body.contains("leadscore_events_total"));
        s.stop().await;
    }

    #[tokio::test]
    async fn leads_found_not_found_redirect_and_too_long() {
        let s = Server::start().await;
        let r = s.get("/leads/lead-42").await;
        assert_eq!(r.status, 200);
        let v = r.json();
        assert_eq!(v["lead_id"], "lead-42");
        assert_eq!(v["score"], 63.25);
        assert_eq!(v["qualified"], true);
        assert_eq!(v["at"], "1970-01-01T00:00:02.000Z");
        assert_eq!(v["clock"], "1970-01-01T00:00:01.000Z");
        assert_eq!(v["breakdown"]["engagement"], 48.25);
        assert!(v["breakdown"]["groups"].is_object());

        // The segment is percent-decoded (space, slash, UTF-8).
        let r = s.get("/leads/lead%2042%2F%C3%A9").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["lead_id"], "lead 42/é");

        let r = s.get("/leads/nobody").await;
        assert_eq!(r.status, 404);
        assert_eq!(r.json(), json!({"error": "not_found"}));

        let r = s.get("/leads/remote-7").await;
        assert_eq!(r.status, 307);
        assert_eq!(r.header("location"), "http://leadscore-1:9898/leads/remote-7");
        assert_eq!(r.json()["owner"], "leadscore-1");

        let id256 = "a".repeat(MAX_LEAD_ID_BYTES);
        assert_eq!(s.get(&format!("/leads/{id256}")).await.status, 404);
        let r = s.get(&format!("/leads/{id256}a")).await;
        assert_eq!(r.status, 400);
        assert_eq!(r.json(), json!({"error": "lead_id_too_long"}));
        // 129 two-byte characters: 258 bytes after decoding.
        assert_eq!(s.get(&format!("/leads/{}", "%C3%A9".repeat(129))).await.status, 400);
        // Not UTF-8 after decoding.
        let r = s.get("/leads/%FF").await;
        assert_eq!(r.status, 400);
        assert_eq!(r.json(), json!({"error": "invalid_lead_id"}));
        s.stop().await;
    }

    #[tokio::test]
    async fn api_status_and_page() {
        let s = Server::start().await;
        let r = s.get("/api/status").await;
        assert_eq!(r.status, 200);
        let v = r.json();
        assert_eq!(v["model"], "default");
        assert_eq!(v["distribution"], json!([{"le":"0","count":0},{"le":"60","count":1},{"le":"+Inf","count":2}]));
        assert_eq!(v["latest_transitions"][0]["type"], "lead_qualified");
        assert_eq!(v["instance"], json!({"ready": true, "assigned_partitions": 3, "lag": 0}));

        let r = s.get("/").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), "text/html; charset=utf-8");
        assert!(r.header("content-security-policy").contains("default-src 'none'"));
        let page = r.body.to_ascii_lowercase();
        assert!(page.contains("api/status"));
        for banned in
            ["http://", "https://", "src=", "href=", "@import", "url(", "innerhtml", "//cdn", "document.write"]
        {
            assert!(!page.contains(banned), "the status page contains {banned:?}");
        }

        let r = s.get("/nope").await;
        assert_eq!(r.status, 404);
        s.stop().await;
    }

    #[test]
    fn helpers() {
        assert_eq!(lead_url("http://h:1", "a b/é"), "http://h:1/leads/a%20b%2F%C3%A9");
        assert_eq!(
            distribution(&[-25.0, 45.5, 60.0], &[1, 2, 3], 4).iter().map(|b| b.le.as_str()).collect::<Vec<_>>(),
            ["-25", "45.5", "60", "+Inf"]
        );
        let h = Health::new();
        assert!(!h.is_ready());
        h.set_ready(true);
        assert!(h.is_ready());
        h.set_ready(false);
        assert!(!h.is_ready());
    }
}
