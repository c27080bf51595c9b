//! Every metric leadscore exports, named once (spec section 8).
//!
//! The registry is created here and handed to whoever needs it, never global, so each test (and
//! each pipeline in one process) has its own. Score gauges are not updated on the hot path:
//! they are computed at scrape time by [`ScoreCollector`] from a [`ScoreSource`], because scores
//! decay between events. No label ever carries a lead id: `type` is drawn from the model's event
//! types (others count as `other`), `reason` from the rejection codes, `kind` from two values.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::engine::{Totals, TransitionKind};
use crate::event::RejectReason;
use crate::model::Model;

/// Score aggregates of one model at one instant, for the scrape-time gauges.
#[derive(Debug, Clone, Default)]
pub struct ScoreSnapshot {
    pub totals: Totals,
    /// Cumulative counts of leads with `score <= le`, for each of [`ScoreCollector`]'s bounds.
    pub cumulative: Vec<u64>,
}

/// Whatever holds the engines: computes a snapshot at `now` with the given bucket bounds.
pub trait ScoreSource: Send + Sync {
    fn snapshot(&self, bounds: &[f64]) -> ScoreSnapshot;
}

/// Bucket bounds of `leadscore_leads_by_score`: a fixed ladder plus the model's thresholds.
pub fn score_bounds(model: &Model) -> Vec<f64> {
    let mut b = vec![-50.0, -25.0, 0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0, 150.0];
    b.push(model.qualify_at);
    b.push(model.disqualify_below);
    b.sort_by(f64::total_cmp);
    b.dedup();
    b
}

/// Fills `cumulative` from a score, for [`crate::engine::Engine::totals_with`].
pub fn count_into(bounds: &[f64], cumulative: &mut [u64], score: f64) {
    // `le` buckets are cumulative: a score counts in every bucket whose bound is >= it.
    let first = bounds.partition_point(|&b| b < score);
    for c in &mut cumulative[first..] {
        *c += 1;
    }
}

/// Computes the score gauges when Prometheus scrapes.
pub struct ScoreCollector {
    model: String,
    bounds: Vec<f64>,
    source: Arc<dyn ScoreSource>,
    descs: Vec<Desc>,
}

impl ScoreCollector {
    pub fn new(model: &Model, source: Arc<dyn ScoreSource>) -> ScoreCollector {
        let descs = Self::gauges("").iter().flat_map(|g| g.desc().into_iter().cloned().collect::<Vec<_>>()).collect();
        ScoreCollector { model: model.name.clone(), bounds: score_bounds(model), source, descs }
    }

    fn gauges(_model: &str) -> [GaugeVec; 5] {
        let g = |name: &str, help: &str, labels: &[&str]| {
            GaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition")
        };
        [
            g("leadscore_average_score", "Mean current score of tracked leads (the KPI); 0 with no leads.", &["model"]),
            g(
                "leadscore_score_sum",
                "Sum of current scores of tracked leads (sum over instances / tracked leads = average).",
                &["model"],
            ),
            g("leadscore_tracked_leads", "Leads in state.", &["model"]),
            g("leadscore_qualified_leads", "Leads currently qualified.", &["model"]),
            g("leadscore_leads_by_score", "Cumulative count of tracked leads with score <= le.", &["model", "le"]),
        ]
    }
}

impl Collector for ScoreCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let snap = self.source.snapshot(&self.bounds);
        let [avg, sum, tracked, qualified, by_score] = Self::gauges(&self.model);
        let m = [self.model.as_str()];
        avg.with_label_values(&m).set(snap.totals.average());
        sum.with_label_values(&m).set(snap.totals.score_sum);
        tracked.with_label_values(&m).set(snap.totals.leads as f64);
        qualified.with_label_values(&m).set(snap.totals.qualified as f64);
        for (i, bound) in self.bounds.iter().enumerate() {
            let le = le_label(*bound);
            by_score
                .with_label_values(&[self.model.as_str(), &le])
                .set(snap.cumulative.get(i).copied().unwrap_or(0) as f64);
        }
        by_score.with_label_values(&[self.model.as_str(), "+Inf"]).set(snap.totals.leads as f64);
        [avg, sum, tracked, qualified, by_score].iter().flat_map(|g| g.collect()).collect()
    }
}

/// Formats a bound the way Prometheus writes `le` values (`60`, `45.5`, `-25`).
pub fn le_label(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The event-driven metrics of the service.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// `leadscore_events_total{type}`: valid events consumed.
    pub events: IntCounterVec,
    /// `leadscore_events_rejected_total{reason}`.
    pub rejected: IntCounterVec,
    /// `leadscore_transitions_total{model,kind}`.
    pub transitions: IntCounterVec,
    /// `leadscore_rule_matches_total{model,rule}`: events that scored a rule's points (rule ids
    /// come from the model: a bounded label).
    pub rule_matches: IntCounterVec,
    /// `leadscore_event_processing_seconds`: from receiving a record to having applied it.
    pub processing: Histogram,
    /// `leadscore_transition_latency_seconds`: input record timestamp to the transition's delivery.
    pub transition_latency: Histogram,
    /// `leadscore_dead_letters_total`: records written to the dead-letter topic.
    pub dead_letters: IntCounter,
    /// `leadscore_commits_total{result}`: offset commits (or transactions) by outcome.
    pub commits: IntCounterVec,
    /// `leadscore_assigned_partitions`: input partitions this instance owns.
    pub assigned_partitions: IntGauge,
    /// `leadscore_consumer_lag_records{partition}`: high watermark minus next offset.
    pub consumer_lag: prometheus::IntGaugeVec,
    /// `leadscore_commit_seconds`: duration of a commit (flush and offset commit, or transaction).
    pub commit_seconds: HistogramVec,
    /// `leadscore_state_restore_seconds`: duration of a restore of tasks from the state topic.
    pub restore_seconds: Histogram,
    /// `leadscore_state_restore_errors_total{reason}`: changelog records skipped on restore.
    pub restore_errors: IntCounterVec,
    /// `leadscore_repartitioned_records_total`: records forwarded to their lead's partition.
    pub repartitioned: IntCounter,
    /// `leadscore_changelog_records_total`: lead states, id segments and tombstones written to
    /// the state topic.
    pub changelog_records: IntCounter,
    /// `leadscore_changelog_bytes_total`: bytes of their keys and values.
    pub changelog_bytes: IntCounter,
    /// Event types with their own `type` label value; the rest count as `other`.
    known_types: Arc<[String]>,
}

impl Metrics {
    /// Registers every event-driven metric in a new registry.
    pub fn new(model: &Model) -> Metrics {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
            registry.register(Box::new(c.clone())).expect("metric names are unique");
            c
        };
        let events =
            counter_vec("leadscore_events_total", "Valid events consumed, by type (unknown types: other).", &["type"]);
        let rejected = counter_vec("leadscore_events_rejected_total", "Rejected records, by reason.", &["reason"]);
        let transitions = counter_vec("leadscore_transitions_total", "Transitions published.", &["model", "kind"]);
        let rule_matches = counter_vec(
            "leadscore_rule_matches_total",
            "Events that scored a rule's points (matched, within its limit), by rule id.",
            &["model", "rule"],
        );
        let commits = counter_vec("leadscore_commits_total", "Offset commits or transactions, by result.", &["result"]);
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid histogram");
            registry.register(Box::new(h.clone())).expect("metric names are unique");
            h
        };
        let processing = histogram(
            "leadscore_event_processing_seconds",
            "Time from receiving a record to having applied it.",
            prometheus::exponential_buckets(1e-6, 4.0, 10).expect("valid buckets"),
        );
        let transition_latency = histogram(
            "leadscore_transition_latency_seconds",
            "Time from the input record's timestamp to the transition's delivery.",
            vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
        );
        let restore_seconds = histogram(
            "leadscore_state_restore_seconds",
            "Duration of a restore of assigned tasks from the state topic.",
            vec![0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0],
        );
        let restore_errors = counter_vec(
            "leadscore_state_restore_errors_total",
            "State records skipped on restore, by reason.",
            &["reason"],
        );
        let changelog_records = IntCounter::new(
            "leadscore_changelog_records_total",
            "Lead states, event-id segments and tombstones written to the state topic.",
        )
        .expect("valid metric definition");
        registry.register(Box::new(changelog_records.clone())).expect("metric names are unique");
        let changelog_bytes = IntCounter::new(
            "leadscore_changelog_bytes_total",
            "Bytes of the keys and values written to the state topic.",
        )
        .expect("valid metric definition");
        registry.register(Box::new(changelog_bytes.clone())).expect("metric names are unique");
        let repartitioned = IntCounter::new(
            "leadscore_repartitioned_records_total",
            "Input records forwarded through the repartition topic to their lead's partition.",
        )
        .expect("valid metric definition");
        registry.register(Box::new(repartitioned.clone())).expect("metric names are unique");
        let commit_seconds = HistogramVec::new(
            HistogramOpts::new("leadscore_commit_seconds", "Duration of a commit (flush + offsets, or a transaction).")
                .buckets(prometheus::exponential_buckets(0.0005, 2.0, 14).expect("valid buckets")),
            &["mode"],
        )
        .expect("valid histogram");
        registry.register(Box::new(commit_seconds.clone())).expect("metric names are unique");
        let dead_letters = IntCounter::new("leadscore_dead_letters_total", "Records written to the dead-letter topic.")
            .expect("valid metric definition");
        registry.register(Box::new(dead_letters.clone())).expect("metric names are unique");
        let assigned_partitions =
            IntGauge::new("leadscore_assigned_partitions", "Input partitions assigned to this instance.")
                .expect("valid metric definition");
        registry.register(Box::new(assigned_partitions.clone())).expect("metric names are unique");
        let consumer_lag = prometheus::IntGaugeVec::new(
            Opts::new("leadscore_consumer_lag_records", "Records behind the high watermark, per input partition."),
            &["topic", "partition"],
        )
        .expect("valid metric definition");
        registry.register(Box::new(consumer_lag.clone())).expect("metric names are unique");

        let mut known: Vec<String> = model.rules.iter().map(|r| r.event.clone()).collect();
        known.push(crate::engine::PROFILE_UPDATE.to_owned());
        known.sort();
        known.dedup();
        // Zero-initialize the bounded label sets so dashboards see every series from the start.
        for t in known.iter().map(String::as_str).chain(["other"]) {
            events.with_label_values(&[t]);
        }
        for r in RejectReason::ALL {
            rejected.with_label_values(&[r.code()]);
        }
        for k in [TransitionKind::Qualified, TransitionKind::Disqualified] {
            transitions.with_label_values(&[model.name.as_str(), k.label()]);
        }
        for r in &model.rules {
            rule_matches.with_label_values(&[model.name.as_str(), r.id.as_str()]);
        }
        Metrics {
            registry,
            events,
            rejected,
            transitions,
            rule_matches,
            processing,
            transition_latency,
            dead_letters,
            commits,
            assigned_partitions,
            consumer_lag,
            commit_seconds,
            restore_seconds,
            restore_errors,
            changelog_records,
            changelog_bytes,
            repartitioned,
            known_types: known.into(),
        }
    }

    /// Event types with their own `type` label value, sorted; the rest count as `other`.
    pub fn known_types(&self) -> &[String] {
        &self.known_types
    }

    /// The index of an event type in [`Metrics::known_types`], or its length for `other`.
    pub fn type_index(&self, event_type: &str) -> usize {
        self.known_types.binary_search_by(|t| t.as_str().cmp(event_type)).unwrap_or(self.known_types.len())
    }

    /// The `type` label value for an event type: itself if the model knows it, else `other`.
    pub fn type_label<'a>(&'a self, event_type: &str) -> &'a str {
        match self.known_types.binary_search_by(|t| t.as_str().cmp(event_type)) {
            Ok(i) => &self.known_types[i],
            Err(_) => "other",
        }
    }

    /// Adds the scrape-time score gauges for one model.
    pub fn register_scores(&self, model: &Model, source: Arc<dyn ScoreSource>) {
        self.registry.register(Box::new(ScoreCollector::new(model, source))).expect("score gauges registered once");
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding cannot fail");
        String::from_utf8(buf).expect("exposition is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;
    impl ScoreSource for Fixed {
        fn snapshot(&self, bounds: &[f64]) -> ScoreSnapshot {
            let mut cumulative = vec![0; bounds.len()];
            for s in [10.0, 50.0, 61.5] {
                count_into(bounds, &mut cumulative, s);
            }
            ScoreSnapshot { totals: Totals { leads: 3, qualified: 1, score_sum: 121.5 }, cumulative }
        }
    }

    fn model() -> Model {
        let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/model.toml")).unwrap();
        Model::from_toml(&src).unwrap()
    }

    #[test]
    fn exposition_has_every_required_metric_with_bounded_labels() {
        let model = model();
        let m = Metrics::new(&model);
        m.register_scores(&model, Arc::new(Fixed));
        m.events.with_label_values(&[m.type_label("website_visit")]).inc();
        m.events.with_label_values(&[m.type_label("lead-42-custom-type")]).inc();
        let text = m.render();
        for name in [
            "leadscore_average_score{model=\"default\"} 40.5",
            "leadscore_score_sum{model=\"default\"} 121.5",
            "leadscore_tracked_leads{model=\"default\"} 3",
            "leadscore_qualified_leads{model=\"default\"} 1",
            "leadscore_leads_by_score{le=\"45\",model=\"default\"} 1",
            "leadscore_leads_by_score{le=\"60\",model=\"default\"} 2",
            "leadscore_leads_by_score{le=\"+Inf\",model=\"default\"} 3",
            "leadscore_events_total{type=\"website_visit\"} 1",
            "leadscore_events_total{type=\"other\"} 1",
            "leadscore_events_rejected_total{reason=\"invalid_json\"} 0",
            "leadscore_transitions_total{kind=\"qualified\",model=\"default\"} 0",
            "leadscore_rule_matches_total{model=\"default\",rule=\"pricing_page\"} 0",
            "leadscore_event_processing_seconds_bucket",
            "leadscore_transition_latency_seconds_bucket",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
        assert!(!text.contains("lead-42"), "a label carries an unbounded value");
    }

    #[test]
    fn cumulative_buckets() {
        let bounds = [0.0, 10.0, 20.0];
        let mut c = vec![0; 3];
        for s in [-5.0, 0.0, 10.0, 15.0, 25.0] {
            count_into(&bounds, &mut c, s);
        }
        assert_eq!(c, vec![2, 3, 4]);
    }
}
