//! The engine against a deliberately naive model of spec section 4 (and the transitions of
//! section 5), plus invariants and a few pinned examples.
//!
//! The naive model shares no code with the engine beyond the data types: it keeps, per lead, the
//! full history of accepted events and recomputes the lead's state by replaying that history
//! from scratch every time it needs it. It never schedules anything: to find what the clock has
//! made due it recomputes every lead's next crossing and removal and takes the earliest. It reads
//! `properties` with `serde_json` and evaluates conditions itself.
//!
//! Both are driven the way `leadscore replay` drives the engine (the watermark is the clock):
//! for each event, a duplicate is counted and skipped; otherwise, if the event moves the
//! watermark, everything due up to it fires first; then the event is applied; then whatever is
//! due at the watermark fires (crossings the event set up in the past). At the end the clock
//! moves to the final watermark.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use leadscore::engine::{Applied, Breakdown, Engine, Transition, TransitionKind, Trigger};
use leadscore::event::{LeadEvent, Properties};
use leadscore::model::{Condition, FitRule, Group, Limit, Model, Number, Op, Rule, Scalar, Test};
use leadscore::time::MAX_TIMESTAMP_MS;
use proptest::prelude::*;
use serde_json::Value as Json;

/// A realistic epoch (2023-11-14) so that times carry 13 digits, as in production.
const T0: i64 = 1_700_000_000_000;
const PROFILE_UPDATE: &str = "profile_update";

// ---------------------------------------------------------------------------------------------
// Input events, as the test generates them.

/// One input event (already decoded: the engine sees it as a `LeadEvent`).
#[derive(Debug, Clone)]
struct Ev {
    lead: String,
    ty: String,
    t: i64,
    event_id: Option<String>,
    /// Raw JSON object text of `properties`.
    props: Option<String>,
}

impl Ev {
    fn new(lead: &str, ty: &str, t: i64) -> Ev {
        Ev { lead: lead.into(), ty: ty.into(), t, event_id: None, props: None }
    }

    fn id(mut self, id: &str) -> Ev {
        self.event_id = Some(id.into());
        self
    }

    fn props(mut self, raw: &str) -> Ev {
        self.props = Some(raw.into());
        self
    }

    fn as_lead_event(&self) -> LeadEvent<'_> {
        LeadEvent {
            lead_id: Cow::Borrowed(&self.lead),
            event_type: Cow::Borrowed(&self.ty),
            timestamp_ms: self.t,
            event_id: self.event_id.as_deref().map(Cow::Borrowed),
            properties: self.props.as_deref().map(Properties::new_unchecked),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The engine, driven like `replay`.

struct EngineRun {
    engine: Engine,
    watermark: Option<i64>,
    out: Vec<Transition>,
    duplicates: usize,
}

impl EngineRun {
    fn new(model: &Arc<Model>) -> EngineRun {
        EngineRun { engine: Engine::new(Arc::clone(model)), watermark: None, out: Vec::new(), duplicates: 0 }
    }

    fn step(&mut self, ev: &Ev) {
        let le = ev.as_lead_event();
        let out = &mut self.out;
        let mut emit = |t: Transition| out.push(t);
        // `replay`'s step (the engine's clock is the watermark): a duplicate moves no clock;
        // otherwise what is due up to the event fires first, then the event, then what it set up
        // in the past.
        match self.engine.apply_in_event_time(&le, &mut emit) {
            Applied::Duplicate => self.duplicates += 1,
            Applied::Accepted => self.watermark = Some(self.watermark.map_or(ev.t, |w| w.max(ev.t))),
        }
        assert_eq!(self.engine.clock(), self.watermark.unwrap_or(i64::MIN), "the engine's clock is the watermark");
    }

    fn finish(&mut self) {
        if let Some(w) = self.watermark {
            let out = &mut self.out;
            self.engine.advance(w, &mut |t| out.push(t));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The naive model of spec section 4.

/// `decay(dt) = 2^(-dt / h)`, as C's `pow` (the base is opaque so LLVM keeps `pow`).
fn decay(dt: i64, h: i64) -> f64 {
    std::hint::black_box(2.0f64).powf(-(dt as f64) / (h as f64))
}

/// The value at a `properties.<path>` (`null` counts as absent).
fn lookup<'a>(props: Option<&'a Json>, path: &[String]) -> Option<&'a Json> {
    let mut cur = props?;
    for key in path {
        cur = cur.as_object()?.get(key)?;
    }
    (!cur.is_null()).then_some(cur)
}

/// 2^53: integers above it are not all floats.
const BIG: i64 = 1 << 53;

fn scalar_equals(s: &Scalar, v: &Json) -> bool {
    match (s, v) {
        (Scalar::Str(a), Json::String(b)) => a == b,
        (Scalar::Num(a), Json::Number(b)) => num_cmp(*a, b) == Some(Ordering::Equal),
        (Scalar::Bool(a), Json::Bool(b)) => a == b,
        _ => false,
    }
}

/// A model number against a JSON number by mathematical value, as Python compares an `int`
/// and a `float`: through `i128` and the float's floor, not through `f64` (which cannot tell
/// 2^53 + 1 from 2^53). JSON integers beyond 64 bits are read as floats (documented).
fn num_cmp(a: Number, b: &serde_json::Number) -> Option<Ordering> {
    let b = match b.as_i64() {
        Some(i) => Number::Int(i),
        None => Number::Float(b.as_f64()?),
    };
    let int_float = |i: i64, f: f64| -> Option<Ordering> {
        if f.is_nan() {
            return None;
        }
        if f >= 1.8446744073709552e19 {
            return Some(Ordering::Less);
        }
        if f <= -1.8446744073709552e19 {
            return Some(Ordering::Greater);
        }
        let floor = f.floor();
        Some(i128::from(i).cmp(&(floor as i128)).then(if f > floor { Ordering::Less } else { Ordering::Equal }))
    };
    match (a, b) {
        (Number::Int(x), Number::Int(y)) => Some(x.cmp(&y)),
        (Number::Float(x), Number::Float(y)) => x.partial_cmp(&y),
        (Number::Int(x), Number::Float(y)) => int_float(x, y),
        (Number::Float(x), Number::Int(y)) => int_float(y, x).map(Ordering::reverse),
    }
}

/// Spec section 3, read literally: an absent value fails everything but `exists = false`;
/// string operators never hold on non-strings; `between` is inclusive and numbers only.
fn op_holds(op: &Op, v: Option<&Json>) -> bool {
    match (op, v) {
        (Op::Exists(e), v) => *e == v.is_some(),
        (_, None) => false,
        (Op::Equals(s), Some(v)) => scalar_equals(s, v),
        (Op::In(list), Some(v)) => list.iter().any(|s| scalar_equals(s, v)),
        (Op::Prefix(p), Some(Json::String(s))) => s.starts_with(p.as_str()),
        (Op::Contains(p), Some(Json::String(s))) => s.contains(p.as_str()),
        (Op::Matches(re), Some(Json::String(s))) => re.is_match(s),
        (Op::Between(lo, hi), Some(Json::Number(n))) => {
            num_cmp(*lo, n).is_some_and(|o| o != Ordering::Greater)
                && num_cmp(*hi, n).is_some_and(|o| o != Ordering::Less)
        }
        _ => false,
    }
}

fn test_holds(test: &Test, v: Option<&Json>) -> bool {
    test.ops.iter().all(|op| op_holds(op, v))
}

/// An accepted event as the naive model remembers it.
#[derive(Debug, Clone)]
struct Remembered {
    ty: String,
    t: i64,
    event_id: Option<String>,
    props: Option<Json>,
}

impl Remembered {
    fn of(ev: &Ev) -> Remembered {
        Remembered {
            ty: ev.ty.clone(),
            t: ev.t,
            event_id: ev.event_id.clone(),
            props: ev.props.as_deref().map(|raw| serde_json::from_str(raw).expect("test properties are JSON")),
        }
    }

    /// The rule applies to this event: its type, and every `when` condition.
    fn matches(&self, rule: &Rule) -> bool {
        rule.event == self.ty && rule.when.iter().all(|c| test_holds(&c.test, lookup(self.props.as_ref(), &c.path)))
    }
}

/// A lead's state, recomputed from its history.
struct State {
    /// The clock: the greatest accepted event time (the first event's time to begin with).
    tau: i64,
    /// Group totals held at `tau`, in the model's group order.
    groups: Vec<f64>,
    /// The ungrouped total held at `tau`.
    ungrouped: f64,
    /// Points of matched `decays = false` rules, in full.
    fixed: f64,
    /// Profile attributes merged from `profile_update` (a `null` removed the attribute).
    attrs: BTreeMap<String, Json>,
    /// The clock right after each event of the history (what dedup remembers).
    tau_after: Vec<i64>,
}

impl State {
    /// Replays a lead's whole history, in processing order, following section 4 line by line.
    fn replay(model: &Model, history: &[Remembered]) -> State {
        let h = model.half_life_ms;
        let mut s = State {
            tau: history[0].t,
            groups: vec![0.0; model.groups.len()],
            ungrouped: 0.0,
            fixed: 0.0,
            attrs: BTreeMap::new(),
            tau_after: Vec::with_capacity(history.len()),
        };
        for (i, ev) in history.iter().enumerate() {
            // "if t >= τ: the decayed totals are first decayed from τ to t, then τ = t, then p
            // is added; if t < τ (a late event): p·decay(τ - t) is added at τ".
            let late_factor = if ev.t >= s.tau {
                let d = decay(ev.t - s.tau, h);
                for g in &mut s.groups {
                    *g *= d;
                }
                s.ungrouped *= d;
                s.tau = ev.t;
                1.0
            } else {
                decay(s.tau - ev.t, h)
            };
            // "all matching rules apply, in file order".
            for rule in &model.rules {
                if !ev.matches(rule) {
                    continue;
                }
                if let Some(limit) = rule.limit {
                    if !limit_allows(rule, limit, &history[..i], ev.t) {
                        continue;
                    }
                }
                if !rule.decays {
                    // "points of a rule with decays = false go to fixed in full, even for a late
                    // event".
                    s.fixed += rule.points;
                    continue;
                }
                let p = rule.points * late_factor;
                match rule.group {
                    Some(g) => {
                        // "a grouped rule adds to its group total, which is clamped to [floor,
                        // cap] after each rule".
                        let group = &model.groups[g];
                        let mut v = s.groups[g] + p;
                        if v < group.floor {
                            v = group.floor;
                        }
                        if v > group.cap {
                            v = group.cap;
                        }
                        s.groups[g] = v;
                    }
                    None => s.ungrouped += p,
                }
            }
            // "profile_update attributes merge in processing order" (null removes).
            if ev.ty == PROFILE_UPDATE {
                if let Some(Json::Object(props)) = &ev.props {
                    for (k, v) in props {
                        if v.is_null() {
                            s.attrs.remove(k);
                        } else {
                            s.attrs.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            s.tau_after.push(s.tau);
        }
        s
    }

    /// `E`: the group totals in group file order, then the ungrouped total.
    fn engagement(&self) -> f64 {
        let mut e = 0.0;
        for g in &self.groups {
            e += *g;
        }
        e + self.ungrouped
    }

    /// Indexes of the fit rules that hold for the current attributes.
    fn fit_rules(&self, model: &Model) -> Vec<usize> {
        (0..model.fits.len())
            .filter(|&i| test_holds(&model.fits[i].test, self.attrs.get(&model.fits[i].attribute)))
            .collect()
    }

    fn fit(&self, model: &Model) -> f64 {
        let mut fit = 0.0;
        for i in self.fit_rules(model) {
            fit += model.fits[i].points;
        }
        fit
    }

    /// `score(t) = fit + fixed + E·decay(t - τ)`, and `score(τ)` before `τ`.
    fn score(&self, model: &Model, t: i64) -> f64 {
        let d = decay(t.max(self.tau) - self.tau, model.half_life_ms);
        (self.fit(model) + self.fixed) + self.engagement() * d
    }

    fn breakdown(&self, model: &Model, t: i64) -> Breakdown {
        let d = decay(t.max(self.tau) - self.tau, model.half_life_ms);
        Breakdown {
            fit: self.fit(model),
            fixed: self.fixed,
            engagement: self.engagement() * d,
            groups: self.groups.iter().map(|g| g * d).collect(),
            fit_rules: self.fit_rules(model),
        }
    }
}

/// The rules whose points the last event of `history` scored: those it matches, within their
/// limit, in file order (the breakdown's `rules`).
fn scored_rules(model: &Model, history: &[Remembered]) -> Vec<usize> {
    let (ev, earlier) = history.split_last().expect("a history holds the event");
    (0..model.rules.len())
        .filter(|&r| {
            let rule = &model.rules[r];
            ev.matches(rule) && rule.limit.is_none_or(|limit| limit_allows(rule, limit, earlier, ev.t))
        })
        .collect()
}

/// "a rule with a limit scores only the first count matches per lead in each window
/// [k·per, (k+1)·per) of event time ...; further matches, and matches in a window older than the
/// newest one seen for that lead and rule, score 0". `earlier` is the lead's history before this
/// event.
fn limit_allows(rule: &Rule, limit: Limit, earlier: &[Remembered], t: i64) -> bool {
    let window = t.div_euclid(limit.per_ms);
    let seen: Vec<i64> = earlier.iter().filter(|e| e.matches(rule)).map(|e| e.t.div_euclid(limit.per_ms)).collect();
    if seen.iter().any(|&w| w > window) {
        return false;
    }
    seen.iter().filter(|&&w| w == window).count() < limit.count as usize
}

#[derive(Default)]
struct NaiveLead {
    /// Every accepted event since the lead entered state, in processing order.
    history: Vec<Remembered>,
    /// Every transition since the lead entered state: kind and `at`.
    transitions: Vec<(TransitionKind, i64)>,
}

impl NaiveLead {
    fn qualified(&self) -> bool {
        matches!(self.transitions.last(), Some((TransitionKind::Qualified, _)))
    }

    /// `a = max(τ, at of its previous transition)`.
    fn check_time(&self, tau: i64) -> i64 {
        self.transitions.last().map_or(tau, |&(_, at)| at.max(tau))
    }
}

/// Something the clock makes due: ordered by time, then lead id (bytewise), then a crossing
/// before a removal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    at: i64,
    lead: String,
    removal: bool,
}

struct Naive {
    model: Arc<Model>,
    leads: BTreeMap<String, NaiveLead>,
    watermark: Option<i64>,
    out: Vec<Transition>,
    duplicates: usize,
}

impl Naive {
    fn new(model: &Arc<Model>) -> Naive {
        Naive { model: Arc::clone(model), leads: BTreeMap::new(), watermark: None, out: Vec::new(), duplicates: 0 }
    }

    fn state(&self, lead: &NaiveLead) -> State {
        State::replay(&self.model, &lead.history)
    }

    /// "An event is a duplicate when its event_id is remembered for its lead with a clock no
    /// older than τ - dedup_window (τ as it is before this event)".
    fn is_duplicate(&self, ev: &Ev) -> bool {
        let (Some(id), Some(lead)) = (ev.event_id.as_deref(), self.leads.get(&ev.lead)) else {
            return false;
        };
        let s = self.state(lead);
        lead.history
            .iter()
            .zip(&s.tau_after)
            .any(|(e, &clock)| e.event_id.as_deref() == Some(id) && clock >= s.tau - self.model.dedup_window_ms)
    }

    fn step(&mut self, ev: &Ev) {
        if self.is_duplicate(ev) {
            self.duplicates += 1;
            return;
        }
        if self.watermark.is_none_or(|w| ev.t > w) {
            self.watermark = Some(ev.t);
            self.fire_due(ev.t);
        }
        let model = Arc::clone(&self.model);
        let lead = self.leads.entry(ev.lead.clone()).or_default();
        lead.history.push(Remembered::of(ev));
        let s = State::replay(&model, &lead.history);
        // The check after the event.
        let a = lead.check_time(s.tau);
        let score = s.score(&model, a);
        let kind = if !lead.qualified() && score >= model.qualify_at {
            Some(TransitionKind::Qualified)
        } else if lead.qualified() && score < model.disqualify_below {
            Some(TransitionKind::Disqualified)
        } else {
            None
        };
        if let Some(kind) = kind {
            lead.transitions.push((kind, a));
            self.out.push(Transition {
                kind,
                lead_id: ev.lead.clone(),
                n: lead.transitions.len() as u32,
                at_ms: a,
                score,
                threshold: threshold(&model, kind),
                trigger: Some(Trigger {
                    event_id: ev.event_id.clone(),
                    event_type: ev.ty.clone(),
                    rules: scored_rules(&model, &lead.history),
                }),
                breakdown: s.breakdown(&model, a),
            });
        }
        let w = self.watermark.expect("set above");
        self.fire_due(w);
    }

    fn finish(&mut self) {
        if let Some(w) = self.watermark {
            self.fire_due(w);
        }
    }

    /// The decay-driven crossing ahead of a lead, if any: its time and kind.
    fn crossing(&self, lead: &NaiveLead, s: &State) -> Option<(i64, TransitionKind)> {
        let m = &self.model;
        let steady = s.fit(m) + s.fixed;
        let e = s.engagement();
        let kind = if lead.qualified() {
            // "a qualified lead's positive engagement sinks until score = disqualify_below".
            if !(e > 0.0 && steady < m.disqualify_below) {
                return None;
            }
            TransitionKind::Disqualified
        } else {
            // "an unqualified lead's negative engagement wears off until score = qualify_at".
            if !(e < 0.0 && steady > m.qualify_at) {
                return None;
            }
            TransitionKind::Qualified
        };
        // "sinks until score = disqualify_below" / "wears off until score = qualify_at", "rounded
        // up to the whole millisecond": the first whole millisecond at which the score, as
        // evaluated, has reached the threshold; "one lead's transitions never go back in time",
        // so not before the last check. Found by bisection over every millisecond (the score is
        // monotonic in t), independently of the engine's closed form.
        let th = threshold(m, kind);
        let reached = |t: i64| {
            let v = s.score(m, t);
            if kind == TransitionKind::Disqualified {
                v <= th
            } else {
                v >= th
            }
        };
        let (mut lo, mut hi) = (lead.check_time(s.tau), MAX_TIMESTAMP_MS);
        if !reached(hi) {
            return None;
        }
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if reached(mid) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Some((lo, kind))
    }

    /// Fires, one at a time, the earliest thing due at or before `clock`, until none is left.
    fn fire_due(&mut self, clock: i64) {
        loop {
            let mut next: Option<Due> = None;
            for (id, lead) in &self.leads {
                let s = self.state(lead);
                let mut candidates = Vec::new();
                if let Some((at, _)) = self.crossing(lead, &s) {
                    candidates.push(Due { at, lead: id.clone(), removal: false });
                }
                if let Some(f) = self.model.forget_after_ms {
                    // Removed once the clock is more than forget_after past τ.
                    candidates.push(Due { at: s.tau + f + 1, lead: id.clone(), removal: true });
                }
                for c in candidates {
                    if c.at <= clock && next.as_ref().is_none_or(|n| c < *n) {
                        next = Some(c);
                    }
                }
            }
            let Some(due) = next else { return };
            if due.removal {
                self.leads.remove(&due.lead);
                continue;
            }
            let lead = &self.leads[&due.lead];
            let s = self.state(lead);
            let (at, kind) = self.crossing(lead, &s).expect("found above");
            let t = Transition {
                kind,
                lead_id: due.lead.clone(),
                n: lead.transitions.len() as u32 + 1,
                at_ms: at,
                score: threshold(&self.model, kind),
                threshold: threshold(&self.model, kind),
                trigger: None,
                breakdown: s.breakdown(&self.model, at),
            };
            self.leads.get_mut(&due.lead).expect("present").transitions.push((kind, at));
            self.out.push(t);
        }
    }

    /// Score at `t` of every tracked lead.
    fn scores(&self, t: i64) -> BTreeMap<String, f64> {
        self.leads.iter().map(|(id, lead)| (id.clone(), self.state(lead).score(&self.model, t))).collect()
    }
}

fn threshold(m: &Model, kind: TransitionKind) -> f64 {
    match kind {
        TransitionKind::Qualified => m.qualify_at,
        TransitionKind::Disqualified => m.disqualify_below,
    }
}

fn engine_scores(engine: &Engine, t: i64) -> BTreeMap<String, f64> {
    engine.lead_ids().map(|id| (id.to_owned(), engine.lead(id, t).expect("listed lead").score)).collect()
}

// ---------------------------------------------------------------------------------------------
// Model builders.

fn base_model(qualify_at: f64, disqualify_below: f64, half_life_ms: i64) -> Model {
    Model {
        name: "m".into(),
        version: "1".into(),
        qualify_at,
        disqualify_below,
        half_life_ms,
        forget_after_ms: None,
        dedup_window_ms: 86_400_000,
        groups: Vec::new(),
        rules: Vec::new(),
        fits: Vec::new(),
    }
}

fn rule(id: &str, event: &str, points: f64) -> Rule {
    Rule { id: id.into(), event: event.into(), when: Vec::new(), points, group: None, decays: true, limit: None }
}

fn cond(path: &str, op: Op) -> Condition {
    Condition { path: path.split('.').map(str::to_owned).collect(), test: Test { ops: vec![op] } }
}

// ---------------------------------------------------------------------------------------------
// Generators.

const LEAD_IDS: [&str; 4] = ["b", "a", "B", "ab"];
const TYPES: [&str; 5] = ["visit", "login", "signup", PROFILE_UPDATE, "other"];
const RULE_TYPES: [&str; 4] = ["visit", "login", "signup", PROFILE_UPDATE];
const PATHS: [&str; 4] = ["/pricing", "/pricing/team", "/docs", "/blog"];
const TITLES: [&str; 4] = ["VP Sales", "head of growth", "CEO", "intern"];

fn arb_points() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => (0i32..=40).prop_map(f64::from),
        2 => (-2000i32..=4000).prop_map(|c| f64::from(c) / 100.0),
        2 => (-60i32..=60).prop_map(|k| f64::from(k) / 3.0),
        1 => -30.0f64..40.0,
        1 => -80.0f64..-20.0,
    ]
}

fn arb_condition() -> impl Strategy<Value = Condition> {
    prop_oneof![
        Just(cond("path", Op::Prefix("/pricing".into()))),
        Just(cond("path", Op::Equals(Scalar::Str("/docs".into())))),
        Just(cond("path", Op::Exists(false))),
        Just(cond("n", Op::Exists(true))),
        (-2i64..10, 0i64..6)
            .prop_map(|(lo, w)| cond("n", Op::Between(Number::Int(lo), Number::Float((lo + w) as f64)))),
        (-2i64..12).prop_map(|v| cond("n", Op::Equals(Scalar::Num(Number::Int(v))))),
        Just(cond(
            "n",
            Op::In(vec![Scalar::Num(Number::Float(3.0)), Scalar::Num(4.5.into()), Scalar::Str("/docs".into())])
        )),
        Just(cond(
            "path",
            Op::In(vec![Scalar::Num(3.0.into()), Scalar::Str("/docs".into()), Scalar::Str("/blog".into())])
        )),
        // Integers beyond 2^53 compare exactly, with each other and with floats.
        Just(cond("n", Op::Equals(Scalar::Num(Number::Int(BIG + 1))))),
        Just(cond("n", Op::Equals(Scalar::Num(Number::Float(BIG as f64))))),
        Just(cond("n", Op::Between(Number::Float(BIG as f64), Number::Int(BIG + 1)))),
        Just(cond("utm.source", Op::Equals(Scalar::Str("google".into())))),
        Just(cond("utm", Op::Exists(true))),
    ]
}

fn arb_limit() -> impl Strategy<Value = Limit> {
    (1u32..=3, prop_oneof![Just(1_000i64), Just(60_000), Just(3_600_000), 1i64..=600_000])
        .prop_map(|(count, per_ms)| Limit { count, per_ms })
}

/// A rule; its group index is reduced modulo the group count (or dropped) by `arb_model`.
fn arb_rule(plain: bool) -> impl Strategy<Value = Rule> {
    let decays = if plain { Just(true).boxed() } else { prop::bool::weighted(0.8).boxed() };
    let limit = if plain { Just(None).boxed() } else { prop::option::weighted(0.3, arb_limit()).boxed() };
    (
        prop::sample::select(&RULE_TYPES[..]),
        prop::collection::vec(arb_condition(), 0..=2),
        arb_points(),
        prop::option::weighted(0.5, 0usize..2),
        decays,
        limit,
    )
        .prop_map(|(event, when, points, group, decays, limit)| Rule {
            id: String::new(),
            event: event.into(),
            when,
            points,
            group,
            decays,
            limit,
        })
}

fn arb_group(plain: bool) -> impl Strategy<Value = Group> {
    let bound = |lo: i32, hi: i32| prop::option::of((lo..=hi).prop_map(|v| f64::from(v) / 2.0));
    if plain {
        Just(Group { name: String::new(), cap: f64::INFINITY, floor: f64::NEG_INFINITY }).boxed()
    } else {
        (bound(0, 80), bound(-80, 0))
            .prop_map(|(cap, floor)| Group {
                name: String::new(),
                cap: cap.unwrap_or(f64::INFINITY),
                floor: floor.unwrap_or(f64::NEG_INFINITY),
            })
            .boxed()
    }
}

fn arb_fit() -> impl Strategy<Value = FitRule> {
    let op = prop_oneof![
        Just(Op::Matches(regex::Regex::new(r"(?i)\b(vp|head)\b").expect("regex"))),
        Just(Op::Equals(Scalar::Str("CEO".into()))),
        Just(Op::Exists(true)),
        Just(Op::Exists(false)),
        Just(Op::Prefix("VP".into())),
        Just(Op::Between(Number::Int(5), Number::Float(10.0))),
    ];
    (op, arb_points()).prop_map(|(op, points)| FitRule {
        id: String::new(),
        attribute: "title".into(),
        test: Test { ops: vec![op] },
        points,
    })
}

/// A random model. `plain`: no caps, floors, limits, fixed or fit rules, no forget_after.
fn arb_model(plain: bool) -> impl Strategy<Value = Model> {
    let fits = if plain { Just(Vec::new()).boxed() } else { prop::collection::vec(arb_fit(), 0..=2).boxed() };
    let forget = if plain {
        Just(None).boxed()
    } else {
        // Some of them one millisecond short of a half-life or of a common step, so that a
        // removal lands on a crossing or an event.
        let f = prop_oneof![
            1_000i64..=600_000,
            600_000i64..=7_200_000,
            prop::sample::select(vec![999i64, 1_000, 1_999, 2_000, 59_999, 60_000]),
        ];
        prop::option::weighted(0.4, f).boxed()
    };
    (
        prop_oneof![1_000i64..=10_000, 10_000i64..=3_600_000, prop::sample::select(vec![1_000i64, 2_000, 60_000])],
        prop::collection::vec(arb_group(plain), 0..=2),
        prop::collection::vec(arb_rule(plain), 1..=5),
        fits,
        prop_oneof![(-5i32..=30).prop_map(f64::from), 0.0f64..60.0, 0.0f64..15.0],
        prop_oneof![Just(0.0), (0i32..=20).prop_map(f64::from), 0.0f64..20.0],
        forget,
        prop_oneof![Just(0i64), 1i64..=7_200_000, Just(86_400_000)],
    )
        .prop_map(|(half_life_ms, mut groups, mut rules, mut fits, qualify_at, gap, forget_after_ms, dedup)| {
            for (i, g) in groups.iter_mut().enumerate() {
                g.name = format!("g{i}");
            }
            for (i, r) in rules.iter_mut().enumerate() {
                r.id = format!("r{i}");
                r.group = r.group.filter(|_| r.decays && !groups.is_empty()).map(|g| g % groups.len());
            }
            for (i, f) in fits.iter_mut().enumerate() {
                f.id = format!("f{i}");
            }
            Model {
                name: "m".into(),
                version: "1".into(),
                qualify_at,
                disqualify_below: qualify_at - gap,
                half_life_ms,
                forget_after_ms,
                dedup_window_ms: dedup,
                groups,
                rules,
                fits,
            }
        })
}

/// Raw parts of one generated event.
#[derive(Debug, Clone)]
struct EvGen {
    lead: usize,
    ty: usize,
    /// Moves the time cursor (mostly forward, sometimes back).
    step: i64,
    /// A one-off late event this far before the cursor (the cursor stays).
    back: Option<i64>,
    /// Also send the same event (without its id) to the next lead, at the same time: leads
    /// with the same history cross at the same millisecond (ties go by lead id).
    twin: bool,
    event_id: Option<u8>,
    /// `None`: no properties.
    props: Option<PropsGen>,
}

/// Raw parts of `properties` (each key present when `Some`).
#[derive(Debug, Clone, Copy)]
struct PropsGen {
    /// An index into `PATHS`.
    path: Option<usize>,
    /// `n / 2` as a number, except 23: the string "3"; 24, 25 and 26: 2^53 + 1, 2^53 and 2^53.0.
    n: Option<i32>,
    /// 0..4 a string of `TITLES`, 4 the number 7, 5 `null`, 6 an array.
    title: Option<u8>,
    /// 0 and 1 objects with a `source`, 2 a string.
    utm: Option<u8>,
}

fn arb_ev_gen(allow_back: bool) -> impl Strategy<Value = EvGen> {
    let step = if allow_back {
        prop_oneof![
            2 => Just(0i64),
            1 => prop::sample::select(vec![1_000i64, 2_000, 60_000]),
            4 => 0i64..2_000,
            4 => 0i64..600_000,
            2 => 0i64..7_200_000,
            1 => -600_000i64..0,
            1 => -7_200_000i64..0,
        ]
        .boxed()
    } else {
        prop_oneof![2 => Just(0i64), 4 => 0i64..2_000, 4 => 0i64..600_000, 2 => 0i64..7_200_000].boxed()
    };
    let back = if allow_back {
        prop::option::weighted(0.15, prop_oneof![1i64..2_000, 1i64..7_200_000]).boxed()
    } else {
        Just(None).boxed()
    };
    let props = prop::option::weighted(
        0.7,
        (
            prop::option::of(0..PATHS.len()),
            prop::option::of(-4i32..27),
            prop::option::weighted(0.5, 0u8..7),
            prop::option::weighted(0.3, 0u8..3),
        )
            .prop_map(|(path, n, title, utm)| PropsGen { path, n, title, utm }),
    );
    (0usize..4, 0..TYPES.len(), step, back, prop::bool::weighted(0.15), prop::option::weighted(0.5, 0u8..5), props)
        .prop_map(|(lead, ty, step, back, twin, event_id, props)| EvGen { lead, ty, step, back, twin, event_id, props })
}

fn build_events(n_leads: usize, gens: &[EvGen], with_ids: bool) -> Vec<Ev> {
    let mut cursor = T0;
    let mut events = Vec::with_capacity(gens.len());
    for g in gens {
        cursor = (cursor + g.step).max(0);
        let t = g.back.map_or(cursor, |b| (cursor - b).max(0));
        let props = g.props.map(|PropsGen { path, n, title, utm }| {
            let mut o = serde_json::Map::new();
            if let Some(p) = path {
                o.insert("path".into(), Json::from(PATHS[p]));
            }
            match n {
                Some(23) => {
                    o.insert("n".into(), Json::from("3"));
                }
                Some(24) => {
                    o.insert("n".into(), Json::from(BIG + 1));
                }
                Some(25) => {
                    o.insert("n".into(), Json::from(BIG));
                }
                Some(26) => {
                    o.insert("n".into(), Json::from(BIG as f64));
                }
                Some(n) if n % 2 == 0 => {
                    o.insert("n".into(), Json::from(n / 2));
                }
                Some(n) => {
                    o.insert("n".into(), Json::from(f64::from(n) / 2.0));
                }
                None => {}
            }
            match utm {
                Some(0) => {
                    o.insert("utm".into(), serde_json::json!({"source": "google"}));
                }
                Some(1) => {
                    o.insert("utm".into(), serde_json::json!({"source": "bing", "medium": "cpc"}));
                }
                Some(_) => {
                    o.insert("utm".into(), Json::from("google"));
                }
                None => {}
            }
            match title {
                Some(i @ 0..=3) => {
                    o.insert("title".into(), Json::from(TITLES[i as usize]));
                }
                Some(4) => {
                    o.insert("title".into(), Json::from(7));
                }
                Some(5) => {
                    o.insert("title".into(), Json::Null);
                }
                Some(_) => {
                    o.insert("title".into(), serde_json::json!(["VP"]));
                }
                None => {}
            }
            Json::Object(o).to_string()
        });
        let ev = Ev {
            lead: LEAD_IDS[g.lead % n_leads].into(),
            ty: TYPES[g.ty].into(),
            t,
            event_id: g.event_id.filter(|_| with_ids).map(|i| format!("e{i}")),
            props,
        };
        if g.twin && n_leads > 1 {
            events.push(Ev { lead: LEAD_IDS[(g.lead + 1) % n_leads].into(), event_id: None, ..ev.clone() });
        }
        events.push(ev);
    }
    events
}

/// Up to 60 events of up to 4 leads; often a final unscored event of another lead, up to 10 h
/// later, that moves the watermark past pending crossings and removals.
fn arb_events() -> impl Strategy<Value = Vec<Ev>> {
    (1usize..=4, prop::collection::vec(arb_ev_gen(true), 1..=60), prop::option::weighted(0.6, 0i64..36_000_000))
        .prop_map(|(n_leads, gens, tick)| {
            let mut events = build_events(n_leads, &gens, true);
            if let Some(dt) = tick {
                let last = events.iter().map(|e| e.t).max().unwrap_or(T0);
                events.push(Ev::new("zz", "other", last + dt));
            }
            events
        })
}

fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    // No regression file: the minimal failing input is printed instead.
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

// ---------------------------------------------------------------------------------------------
// Properties.

/// Drives the engine and the naive model with the same events and requires the same
/// transitions (to the last bit), duplicates, final leads, scores, flags, clocks and breakdowns.
fn check_against_naive(model: Model, events: &[Ev]) -> Result<(), TestCaseError> {
    let model = Arc::new(model);
    let mut engine = EngineRun::new(&model);
    let mut naive = Naive::new(&model);
    for (i, ev) in events.iter().enumerate() {
        engine.step(ev);
        naive.step(ev);
        prop_assert_eq!(&engine.out, &naive.out, "transitions differ after event {} ({:?})", i, ev);
        prop_assert_eq!(engine.duplicates, naive.duplicates, "duplicates differ after event {}", i);
    }
    engine.finish();
    naive.finish();
    prop_assert_eq!(&engine.out, &naive.out, "transitions differ at the end");
    let w = naive.watermark.expect("at least one event is accepted");
    prop_assert_eq!(engine.watermark, Some(w));
    prop_assert_eq!(engine_scores(&engine.engine, w), naive.scores(w), "final scores differ");
    let totals = engine.engine.totals(w);
    prop_assert_eq!(totals.leads, naive.leads.len());
    prop_assert_eq!(totals.qualified, naive.leads.values().filter(|l| l.qualified()).count());
    for (id, lead) in &naive.leads {
        let view = engine.engine.lead(id, w).expect("tracked");
        let s = naive.state(lead);
        prop_assert_eq!(view.qualified, lead.qualified(), "{}", id);
        prop_assert_eq!(view.clock_ms, s.tau, "{}", id);
        prop_assert_eq!(view.transitions as usize, lead.transitions.len(), "{}", id);
        prop_assert_eq!(&view.breakdown, &s.breakdown(&model, w), "{}", id);
    }
    Ok(())
}

/// One or two leads (twins) with one visit worth `P` at `T0`; `disqualify_below = P / 2^k`;
/// `forget_after = k·h - 1 + δ`; then an unscored event of another lead moves the watermark.
fn arb_exact_tie() -> impl Strategy<Value = (Model, Vec<Ev>)> {
    (
        1i32..=80,
        1u32..=3,
        prop_oneof![1i64..=5_000, 1_000i64..=3_600_000],
        -2i64..=2,
        any::<bool>(),
        0i64..3,
        0.0f64..1.0,
    )
        .prop_map(|(p, k, h, delta, twins, late, fixed)| {
            let p = f64::from(p);
            let mut m = base_model(p, p / f64::from(1u32 << k), h);
            m.forget_after_ms = Some(i64::from(k) * h - 1 + delta);
            m.rules.push(rule("visit", "visit", p));
            // Sometimes a fixed part too (the crossing is then no longer exact).
            if fixed > 0.7 {
                let mut r = rule("bonus", "visit", fixed);
                r.decays = false;
                m.rules.push(r);
            }
            let mut events = vec![Ev::new("b", "visit", T0)];
            if twins {
                events.push(Ev::new("a", "visit", T0));
            }
            events.push(Ev::new("z", "other", T0 + i64::from(k) * h + late));
            (m, events)
        })
}

proptest! {
    #![proptest_config(cases(1000))]

    /// The engine emits exactly the naive model's transitions, in the same order, with the same
    /// numbers to the last bit, and ends with the same leads and scores.
    #[test]
    fn engine_matches_naive_model(model in arb_model(false), events in arb_events()) {
        check_against_naive(model, &events)?;
    }
}

proptest! {
    #![proptest_config(cases(500))]

    /// Crossings and removals due in the same millisecond, and neighbours: a lead whose
    /// engagement `P` halves `k` times to reach `disqualify_below = P / 2^k` crosses at exactly
    /// `τ + k·h`, and `forget_after = k·h - 1 + δ` removes it at `τ + k·h + δ`.
    #[test]
    fn engine_matches_naive_model_on_exact_ties(
        (model, events) in arb_exact_tie(),
    ) {
        check_against_naive(model, &events)?;
    }
}

proptest! {
    #![proptest_config(cases(300))]

    /// Between events a lead's score only moves towards `fit + fixed`: down while its
    /// engagement is positive, up while it is negative.
    #[test]
    fn score_decays_monotonically_between_events(model in arb_model(false), events in arb_events()) {
        let model = Arc::new(model);
        let h = model.half_life_ms;
        let mut run = EngineRun::new(&model);
        for ev in &events {
            run.step(ev);
            let ids: Vec<String> = run.engine.lead_ids().map(str::to_owned).collect();
            for id in ids {
                let at_clock = run.engine.lead(&id, i64::MIN).expect("tracked");
                let tau = at_clock.clock_ms;
                let e = at_clock.breakdown.engagement;
                let mut probes = vec![
                    tau - 1_000, tau - 1, tau, tau + 1, tau + 2, tau + 10, tau + h / 7, tau + h / 2,
                    tau + h, tau + 2 * h + 3, tau + 10 * h, tau + 60 * h, run.watermark.expect("set"),
                ];
                probes.sort_unstable();
                let score = |t: i64| run.engine.lead(&id, t).expect("tracked").score;
                for pair in probes.windows(2) {
                    let (t1, t2) = (pair[0], pair[1]);
                    let (s1, s2) = (score(t1), score(t2));
                    let ok = if e > 0.0 { s2 <= s1 } else if e < 0.0 { s2 >= s1 } else { s2 == s1 };
                    prop_assert!(ok, "{}: E = {}, score({}) = {}, score({}) = {}", id, e, t1, s1, t2, s2);
                }
            }
        }
    }
}

/// Phase 1: on-time events (the cursor never goes back). Phase 2: events of the same leads,
/// each strictly before its lead's clock at the end of phase 1, so late whatever their order.
/// Returns the model, phase 1, phase 2, and phase 2 shuffled.
fn arb_late_permutation() -> impl Strategy<Value = (Model, Vec<Ev>, Vec<Ev>, Vec<Ev>)> {
    (
        arb_model(true),
        1usize..=4,
        prop::collection::vec(arb_ev_gen(false), 1..=30),
        prop::collection::vec((0usize..4, 0..TYPES.len(), 1i64..7_200_000, arb_ev_gen(false)), 1..=30),
    )
        .prop_flat_map(|(model, n_leads, on_time, late)| {
            let phase1 = build_events(n_leads, &on_time, false);
            let mut clocks: BTreeMap<String, i64> = BTreeMap::new();
            for ev in &phase1 {
                let c = clocks.entry(ev.lead.clone()).or_insert(ev.t);
                *c = (*c).max(ev.t);
            }
            let leads: Vec<(String, i64)> = clocks.into_iter().collect();
            let phase2: Vec<Ev> = late
                .iter()
                .map(|(lead, ty, back, g)| {
                    let (id, clock) = &leads[lead % leads.len()];
                    let mut ev = build_events(1, std::slice::from_ref(g), false).remove(0);
                    ev.lead = id.clone();
                    ev.ty = TYPES[*ty].into();
                    ev.t = clock - back;
                    ev
                })
                .collect();
            (Just(model), Just(phase1), Just(phase2.clone()), Just(phase2).prop_shuffle())
        })
}

proptest! {
    #![proptest_config(cases(300))]

    /// Without caps, floors, limits, fixed points, fit rules or forgetting, late points simply
    /// add up: their order does not matter beyond rounding.
    #[test]
    fn late_event_order_does_not_matter((model, phase1, late, shuffled) in arb_late_permutation()) {
        let model = Arc::new(model);
        let run = |late: &[Ev]| {
            let mut r = EngineRun::new(&model);
            for ev in phase1.iter().chain(late) {
                r.step(ev);
            }
            r.finish();
            let w = r.watermark.expect("events");
            engine_scores(&r.engine, w)
        };
        let (a, b) = (run(&late), run(&shuffled));
        prop_assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (id, &x) in &a {
            let y = b[id];
            let tol = 1e-9 * x.abs().max(y.abs()).max(1.0);
            prop_assert!((x - y).abs() <= tol, "{}: {} vs {}", id, x, y);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pinned examples.

fn run_all(model: Model, events: &[Ev]) -> (EngineRun, Vec<Transition>) {
    let model = Arc::new(model);
    let mut run = EngineRun::new(&model);
    for ev in events {
        run.step(ev);
    }
    run.finish();
    let out = run.out.clone();
    (run, out)
}

#[test]
fn qualifies_on_the_event_that_crosses() {
    let mut m = base_model(60.0, 45.0, 3_600_000);
    m.rules.push(rule("visit", "visit", 40.0));
    let (_, out) = run_all(m, &[Ev::new("a", "visit", T0).id("e1"), Ev::new("a", "visit", T0 + 1_000).id("e2")]);
    let score = 40.0 * decay(1_000, 3_600_000) + 40.0;
    assert_eq!(
        out,
        vec![Transition {
            kind: TransitionKind::Qualified,
            lead_id: "a".into(),
            n: 1,
            at_ms: T0 + 1_000,
            score,
            threshold: 60.0,
            trigger: Some(Trigger { event_id: Some("e2".into()), event_type: "visit".into(), rules: vec![0] }),
            breakdown: Breakdown { fit: 0.0, fixed: 0.0, engagement: score, groups: vec![], fit_rules: vec![] },
        }]
    );
}

#[test]
fn decay_disqualifies_at_the_crossing_rounded_up() {
    // 100·2^(-x/1000) = 45 at x = 1000·log2(100/45) = 1152.0031 ms: due at +1153 ms.
    let mut m = base_model(60.0, 45.0, 1_000);
    m.rules.push(rule("visit", "visit", 100.0));
    assert!(100.0 * decay(1_152, 1_000) >= 45.0 && 100.0 * decay(1_153, 1_000) < 45.0);
    let mut engine = Engine::new(Arc::new(m));
    let mut out = Vec::new();
    let ev = Ev::new("a", "visit", T0);
    engine.advance(T0, &mut |t| out.push(t));
    assert_eq!(engine.apply(&ev.as_lead_event(), &mut |t| out.push(t)), Applied::Accepted);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].kind, out[0].at_ms, out[0].score), (TransitionKind::Qualified, T0, 100.0));
    engine.advance(T0 + 1_152, &mut |t| out.push(t));
    assert_eq!(out.len(), 1, "not due before the crossing");
    engine.advance(T0 + 1_153, &mut |t| out.push(t));
    assert_eq!(
        out[1],
        Transition {
            kind: TransitionKind::Disqualified,
            lead_id: "a".into(),
            n: 2,
            at_ms: T0 + 1_153,
            score: 45.0,
            threshold: 45.0,
            trigger: None,
            breakdown: Breakdown {
                fit: 0.0,
                fixed: 0.0,
                engagement: 100.0 * decay(1_153, 1_000),
                groups: vec![],
                fit_rules: vec![],
            },
        }
    );
    assert_eq!(engine.totals(T0 + 1_153).qualified, 0);
}

#[test]
fn decay_qualifies_when_negative_engagement_wears_off() {
    // fit 70, engagement -40: 70 - 40·2^(-x/h) = 60 at exactly x = 2h.
    let mut m = base_model(60.0, 60.0, 1_000);
    m.rules.push(rule("unsubscribe", "unsubscribe", -40.0));
    m.fits.push(FitRule {
        id: "titled".into(),
        attribute: "title".into(),
        test: Test { ops: vec![Op::Exists(true)] },
        points: 70.0,
    });
    let (_, out) = run_all(
        m,
        &[
            Ev::new("a", "unsubscribe", T0),
            Ev::new("a", PROFILE_UPDATE, T0).props(r#"{"title":"CTO"}"#),
            Ev::new("b", "other", T0 + 5_000),
        ],
    );
    assert_eq!(out.len(), 1);
    let t = &out[0];
    assert_eq!((t.kind, t.lead_id.as_str(), t.n, t.at_ms), (TransitionKind::Qualified, "a", 1, T0 + 2_000));
    assert_eq!((t.score, t.threshold, &t.trigger), (60.0, 60.0, &None));
    assert_eq!((t.breakdown.fit, t.breakdown.engagement, &t.breakdown.fit_rules[..]), (70.0, -10.0, &[0][..]));
}

#[test]
fn late_event_adds_its_decayed_points_at_the_clock() {
    let mut m = base_model(1e9, 1e9, 1_000);
    m.rules.push(rule("visit", "visit", 10.0));
    let (run, _) = run_all(m, &[Ev::new("a", "visit", T0 + 2_000), Ev::new("a", "visit", T0)]);
    let view = run.engine.lead("a", T0).expect("tracked");
    assert_eq!((view.clock_ms, view.score), (T0 + 2_000, 12.5));
    assert_eq!(run.engine.lead("a", T0 + 3_000).expect("tracked").score, 6.25);
}

#[test]
fn duplicates_are_judged_by_the_remembered_clock() {
    let mut m = base_model(1e9, 1e9, 1_000);
    m.dedup_window_ms = 1_000;
    m.rules.push(rule("visit", "visit", 1.0));
    let (run, _) = run_all(
        m,
        &[
            Ev::new("a", "visit", T0).id("x"),
            // Remembered at T0 >= T0 - 1000: a duplicate, whatever its timestamp.
            Ev::new("a", "visit", T0 + 60_000).id("x"),
            Ev::new("a", "visit", T0 + 3_000).id("y"),
            // Remembered at T0 < (T0 + 3000) - 1000: accepted again.
            Ev::new("a", "visit", T0 + 3_500).id("x"),
            // Now remembered at T0 + 3500.
            Ev::new("a", "visit", T0 - 9_000).id("x"),
        ],
    );
    assert_eq!(run.duplicates, 2);
    assert_eq!(run.watermark, Some(T0 + 3_500));
}

#[test]
fn crossing_due_with_the_removal_fires_first() {
    // Crossing at exactly τ + 1000; removal due once the clock is more than forget_after past τ.
    for (forget_after, transitions) in [(999, 2), (998, 1)] {
        let mut m = base_model(60.0, 50.0, 1_000);
        m.forget_after_ms = Some(forget_after);
        m.rules.push(rule("visit", "visit", 100.0));
        let (run, out) = run_all(m, &[Ev::new("a", "visit", T0), Ev::new("b", "other", T0 + 1_000)]);
        assert_eq!(out.len(), transitions, "forget_after = {forget_after}");
        if transitions == 2 {
            assert_eq!((out[1].kind, out[1].at_ms, out[1].score), (TransitionKind::Disqualified, T0 + 1_000, 50.0));
        }
        assert!(run.engine.lead("a", T0 + 1_000).is_none(), "a is forgotten");
        assert!(run.engine.lead("b", T0 + 1_000).is_some());
    }
}

#[test]
fn limit_scores_the_first_matches_of_the_newest_window() {
    let mut m = base_model(1e9, 1e9, 3_600_000_000);
    let mut r = rule("visit", "visit", 1.0);
    r.decays = false;
    r.limit = Some(Limit { count: 2, per_ms: 1_000 });
    m.rules.push(r);
    let w = T0 - T0 % 1_000; // a window boundary
    let (run, _) = run_all(
        m,
        &[
            Ev::new("a", "visit", w + 10),    // window k: 1
            Ev::new("a", "visit", w + 20),    // window k: 2
            Ev::new("a", "visit", w + 30),    // window k: over the limit
            Ev::new("a", "visit", w + 1_000), // window k+1: 1
            Ev::new("a", "visit", w + 900),   // window k, older than the newest: 0
            Ev::new("a", "visit", w + 1_999), // window k+1: 2
        ],
    );
    assert_eq!(run.engine.lead("a", w + 2_000).expect("tracked").breakdown.fixed, 4.0);
}
