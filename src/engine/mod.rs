//! The scoring engine: pure, deterministic, time passed in (spec section 4).
//!
//! [`Engine::apply`] takes one decoded event and may emit one [`Transition`];
//! [`Engine::advance`] moves the clock that decides when decay-driven crossings and
//! `forget_after` removals are due (the wall clock in `run`, the watermark in `replay`) and fires
//! them in order of time, then lead id. No I/O and no clock reads happen here, so `replay`, `run`
//! and the tests drive the very same code.
//!
//! Arithmetic follows the spec to the last bit: totals are `f64` held at the lead's clock `τ` and
//! multiplied by `decay(Δ) = 2^(-Δ/h)` when `τ` moves forward; `E` is the sum of the group totals
//! (in file order) and then the ungrouped total; `score = fit + fixed + E·decay(t-τ)`.

mod store;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashMap;

use crate::event::LeadEvent;
use crate::model::{Model, Value};
use crate::time::MAX_TIMESTAMP_MS;
use store::{Hasher, Store};

/// The reserved event type whose properties merge into the lead's profile attributes.
pub const PROFILE_UPDATE: &str = "profile_update";

/// `lead_qualified` or `lead_disqualified`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransitionKind {
    Qualified,
    Disqualified,
}

impl TransitionKind {
    /// The `type` field of the output record.
    pub fn event_type(self) -> &'static str {
        match self {
            TransitionKind::Qualified => "lead_qualified",
            TransitionKind::Disqualified => "lead_disqualified",
        }
    }

    /// The `kind` label of `leadscore_transitions_total`.
    pub fn label(self) -> &'static str {
        match self {
            TransitionKind::Qualified => "qualified",
            TransitionKind::Disqualified => "disqualified",
        }
    }
}

/// The event that caused a transition (`None` for decay-driven ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    pub event_id: Option<String>,
    pub event_type: String,
}

/// The parts of a score, evaluated at the transition's `at`.
#[derive(Debug, Clone, PartialEq)]
pub struct Breakdown {
    pub fit: f64,
    pub fixed: f64,
    /// `E·decay(at-τ)`: all decaying engagement, groups included.
    pub engagement: f64,
    /// Each group's decayed total, in the model's group order.
    pub groups: Vec<f64>,
    /// Indexes into `Model::fits` of the fit rules that hold, in file order.
    pub fit_rules: Vec<usize>,
}

/// A qualification change of one lead (spec section 5).
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub kind: TransitionKind,
    pub lead_id: String,
    /// 1-based count of this lead's transitions since it entered state.
    pub n: u32,
    /// Epoch milliseconds of the check (or of the crossing, rounded up).
    pub at_ms: i64,
    pub score: f64,
    /// The threshold crossed: `qualify_at` or `disqualify_below`.
    pub threshold: f64,
    pub trigger: Option<Trigger>,
    pub breakdown: Breakdown,
}

/// What [`Engine::apply`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Accepted,
    /// Its `event_id` is remembered for the lead within the dedup window; nothing changed.
    Duplicate,
}

/// A lead as `/leads/{id}` and the tests see it.
#[derive(Debug, Clone, PartialEq)]
pub struct LeadView {
    pub lead_id: String,
    pub score: f64,
    pub qualified: bool,
    /// The lead's clock `τ`.
    pub clock_ms: i64,
    pub transitions: u32,
    pub breakdown: Breakdown,
}

/// Aggregates over all tracked leads at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Totals {
    pub leads: usize,
    pub qualified: usize,
    /// Sum of `score(now)`, compensated (Neumaier) so it does not depend on the lead count.
    pub score_sum: f64,
}

impl Totals {
    /// The average lead score KPI: 0 when no lead is tracked.
    pub fn average(&self) -> f64 {
        if self.leads == 0 {
            0.0
        } else {
            self.score_sum / self.leads as f64
        }
    }
}

/// A profile attribute value as stored (only attributes that fit rules read are kept).
#[derive(Debug, Clone, PartialEq)]
enum Attr {
    Str(Box<str>),
    Num(f64),
    Bool(bool),
    Composite,
}

impl Attr {
    fn from_value(v: Value<'_>) -> Attr {
        match v {
            Value::Str(s) => Attr::Str(s.into_owned().into_boxed_str()),
            Value::Num(n) => Attr::Num(n),
            Value::Bool(b) => Attr::Bool(b),
            Value::Composite => Attr::Composite,
        }
    }

    fn as_value(&self) -> Value<'_> {
        match self {
            Attr::Str(s) => Value::Str(std::borrow::Cow::Borrowed(s)),
            Attr::Num(n) => Value::Num(*n),
            Attr::Bool(b) => Value::Bool(*b),
            Attr::Composite => Value::Composite,
        }
    }
}

/// Key of a remembered `event_id`: the lead's slot and generation and a 64-bit hash of the id.
/// A false duplicate needs two ids of one lead to collide in 64 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct DedupKey {
    slot: u32,
    gen: u32,
    id_hash: u64,
}

/// `decay(dt) = 2^(-dt/h)`, computed as C's `pow(2, -dt/h)` (what Python's `2 ** x` calls).
/// The base goes through `black_box` so LLVM does not rewrite `pow(2, x)` into `exp2(x)`, whose
/// last bit can differ.
#[inline]
fn decay(dt_ms: i64, half_life_ms: f64) -> f64 {
    std::hint::black_box(2.0f64).powf(-(dt_ms as f64) / half_life_ms)
}

/// Packed state of a limited rule: the newest window index seen (high 48 bits) and the matches
/// in it (low 16 bits, saturating). `NO_WINDOW` before the first match.
const NO_WINDOW: u64 = u64::MAX;

/// The scoring engine for one model.
pub struct Engine {
    model: Arc<Model>,
    half_life: f64,
    store: Store,
    /// Per slot, the fit attributes (`attr_names` order); empty when the model has no fit rules.
    attrs: Vec<Option<Box<[Option<Attr>]>>>,
    rules_by_type: HashMap<Box<str>, Box<[u32]>, Hasher>,
    /// Column of each rule's limit state, `usize::MAX` when it has no limit.
    limit_col: Vec<usize>,
    /// Distinct attributes read by fit rules, and each fit rule's index into them.
    attr_names: Vec<String>,
    fit_attr: Vec<usize>,
    n_groups: usize,
    col_fixed: Option<usize>,
    col_fit: Option<usize>,
    /// One entry per lead with something due (plus stale ones, skipped): (due, slot, generation).
    timers: BinaryHeap<Reverse<(i64, u32, u32)>>,
    dedup: HashMap<DedupKey, i64, Hasher>,
    dedup_hasher: foldhash::quality::FixedState,
    dedup_prune_at: usize,
    qualified: usize,
    batch: Vec<u32>,
}

const COL_UNGROUPED: usize = 0;
const COL_GROUPS: usize = 1;

impl Engine {
    /// A new engine with no leads.
    pub fn new(model: Arc<Model>) -> Engine {
        let n_groups = model.groups.len();
        let mut init = vec![0f64.to_bits(); 1 + n_groups];
        let col_fixed = model.rules.iter().any(|r| !r.decays).then(|| {
            init.push(0f64.to_bits());
            init.len() - 1
        });
        let col_fit = (!model.fits.is_empty()).then(|| {
            init.push(0f64.to_bits());
            init.len() - 1
        });
        let mut limit_col = Vec::with_capacity(model.rules.len());
        for r in &model.rules {
            if r.limit.is_some() {
                init.push(NO_WINDOW);
                limit_col.push(init.len() - 1);
            } else {
                limit_col.push(usize::MAX);
            }
        }
        let mut by_type: HashMap<Box<str>, Vec<u32>, Hasher> = HashMap::with_hasher(store::hasher());
        for (i, r) in model.rules.iter().enumerate() {
            by_type.entry(r.event.as_str().into()).or_default().push(i as u32);
        }
        let mut rules_by_type = HashMap::with_hasher(store::hasher());
        rules_by_type.extend(by_type.into_iter().map(|(k, v)| (k, v.into_boxed_slice())));
        let mut attr_names: Vec<String> = Vec::new();
        let mut fit_attr = Vec::with_capacity(model.fits.len());
        for f in &model.fits {
            let i = match attr_names.iter().position(|a| *a == f.attribute) {
                Some(i) => i,
                None => {
                    attr_names.push(f.attribute.clone());
                    attr_names.len() - 1
                }
            };
            fit_attr.push(i);
        }
        Engine {
            half_life: model.half_life_ms as f64,
            store: Store::new(init),
            attrs: Vec::new(),
            rules_by_type,
            limit_col,
            attr_names,
            fit_attr,
            n_groups,
            col_fixed,
            col_fit,
            timers: BinaryHeap::new(),
            dedup: HashMap::with_hasher(store::hasher()),
            dedup_hasher: foldhash::quality::FixedState::with_seed(0x6465_6475_7000_0001),
            dedup_prune_at: 1024,
            qualified: 0,
            batch: Vec::new(),
            model,
        }
    }

    /// The model this engine scores with.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Leads in state.
    pub fn tracked_leads(&self) -> usize {
        self.store.len()
    }

    /// Leads currently qualified.
    pub fn qualified_leads(&self) -> usize {
        self.qualified
    }

    #[inline]
    fn f(&self, slot: u32, col: usize) -> f64 {
        f64::from_bits(self.store.col(slot, col))
    }

    /// `E`: the group totals in file order, then the ungrouped total, at the lead's clock.
    #[inline]
    fn engagement(&self, slot: u32) -> f64 {
        let cols = self.store.cols_of(slot);
        let mut e = 0.0;
        for g in 0..self.n_groups {
            e += f64::from_bits(cols[COL_GROUPS + g]);
        }
        e + f64::from_bits(cols[COL_UNGROUPED])
    }

    /// `fit + fixed`: the part of the score that never decays.
    #[inline]
    fn steady(&self, slot: u32) -> f64 {
        let fit = self.col_fit.map_or(0.0, |c| self.f(slot, c));
        let fixed = self.col_fixed.map_or(0.0, |c| self.f(slot, c));
        fit + fixed
    }

    /// `score(t)`; times before the clock count as the clock.
    #[inline]
    fn score_at(&self, slot: u32, t: i64) -> f64 {
        let tau = self.store.cores[slot as usize].tau;
        let dt = t.max(tau) - tau;
        let e = self.engagement(slot);
        if dt == 0 {
            self.steady(slot) + e
        } else {
            self.steady(slot) + e * decay(dt, self.half_life)
        }
    }

    fn breakdown(&self, slot: u32, t: i64) -> Breakdown {
        let tau = self.store.cores[slot as usize].tau;
        let d = decay(t.max(tau) - tau, self.half_life);
        let fit_rules = match &self.attrs.get(slot as usize) {
            Some(Some(attrs)) => (0..self.model.fits.len()).filter(|&i| self.fit_holds(attrs, i)).collect(),
            _ => (0..self.model.fits.len()).filter(|&i| self.model.fits[i].test.holds(None)).collect(),
        };
        Breakdown {
            fit: self.col_fit.map_or(0.0, |c| self.f(slot, c)),
            fixed: self.col_fixed.map_or(0.0, |c| self.f(slot, c)),
            engagement: self.engagement(slot) * d,
            groups: (0..self.n_groups).map(|g| self.f(slot, COL_GROUPS + g) * d).collect(),
            fit_rules,
        }
    }

    fn fit_holds(&self, attrs: &[Option<Attr>], i: usize) -> bool {
        let v = attrs[self.fit_attr[i]].as_ref().map(Attr::as_value);
        self.model.fits[i].test.holds(v.as_ref())
    }

    /// The fit sum of a lead with these attributes (`None`: no attribute yet), in file order.
    fn fit_sum(&self, attrs: Option<&[Option<Attr>]>) -> f64 {
        let mut sum = 0.0;
        for (i, f) in self.model.fits.iter().enumerate() {
            let holds = match attrs {
                Some(a) => self.fit_holds(a, i),
                None => f.test.holds(None),
            };
            if holds {
                sum += f.points;
            }
        }
        sum
    }

    fn dedup_key(&self, slot: u32, event_id: &str) -> DedupKey {
        DedupKey { slot, gen: self.store.cores[slot as usize].gen, id_hash: self.dedup_hasher.hash_one(event_id.as_bytes()) }
    }

    /// Would [`Engine::apply`] reject this event as a duplicate right now?
    pub fn is_duplicate(&self, ev: &LeadEvent<'_>) -> bool {
        let Some(event_id) = ev.event_id.as_deref() else { return false };
        let Some(slot) = self.store.find(&ev.lead_id) else { return false };
        self.is_remembered(slot, event_id)
    }

    fn is_remembered(&self, slot: u32, event_id: &str) -> bool {
        let tau = self.store.cores[slot as usize].tau;
        match self.dedup.get(&self.dedup_key(slot, event_id)) {
            Some(&clock) => clock >= tau.saturating_sub(self.model.dedup_window_ms),
            None => false,
        }
    }

    /// Applies one decoded event. Emits at most one transition (the check after the event), and
    /// schedules the lead's next crossing or removal. Due timers are not fired here: the caller
    /// decides the clock and calls [`Engine::advance`].
    pub fn apply(&mut self, ev: &LeadEvent<'_>, out: &mut impl FnMut(Transition)) -> Applied {
        let t = ev.timestamp_ms;
        let (slot, new) = self.store.find_or_insert(&ev.lead_id, t);
        let dedup_key = ev.event_id.as_deref().map(|id| self.dedup_key(slot, id));
        if !new {
            if let Some(id) = ev.event_id.as_deref() {
                if self.is_remembered(slot, id) {
                    return Applied::Duplicate;
                }
            }
        }
        if !self.model.fits.is_empty() {
            if self.attrs.len() <= slot as usize {
                self.attrs.resize_with(slot as usize + 1, || None);
            }
            if new {
                self.attrs[slot as usize] = None;
                let fit = self.fit_sum(None);
                self.store.cols_mut(slot)[self.col_fit.expect("fit column")] = fit.to_bits();
            }
        }

        // Move the clock, or find the factor that brings a late event's points to it.
        let tau = self.store.cores[slot as usize].tau;
        let late_factor = if t >= tau {
            if t > tau {
                let d = decay(t - tau, self.half_life);
                let cols = self.store.cols_mut(slot);
                for c in &mut cols[COL_UNGROUPED..COL_GROUPS + self.n_groups] {
                    *c = (f64::from_bits(*c) * d).to_bits();
                }
                self.store.cores[slot as usize].tau = t;
            }
            1.0
        } else {
            decay(tau - t, self.half_life)
        };

        // Every matching rule, in file order.
        let model = Arc::clone(&self.model);
        if let Some(rules) = self.rules_by_type.get(ev.event_type.as_ref()) {
            for &ri in rules.iter() {
                let rule = &model.rules[ri as usize];
                let holds = rule.when.iter().all(|c| {
                    let v = ev.properties.as_ref().and_then(|p| p.get(&c.path));
                    c.test.holds(v.as_ref())
                });
                if !holds {
                    continue;
                }
                let cols = self.store.cols_mut(slot);
                if let Some(limit) = rule.limit {
                    let col = self.limit_col[ri as usize];
                    let window = (t.div_euclid(limit.per_ms)) as u64;
                    let packed = cols[col];
                    let scored = if packed == NO_WINDOW || window > packed >> 16 {
                        cols[col] = window << 16 | 1;
                        true
                    } else if window == packed >> 16 {
                        let count = packed & 0xffff;
                        cols[col] = window << 16 | (count + 1).min(0xffff);
                        count < u64::from(limit.count)
                    } else {
                        false
                    };
                    if !scored {
                        continue;
                    }
                }
                if !rule.decays {
                    let c = self.col_fixed.expect("fixed column");
                    cols[c] = (f64::from_bits(cols[c]) + rule.points).to_bits();
                    continue;
                }
                let p = if late_factor == 1.0 { rule.points } else { rule.points * late_factor };
                match rule.group {
                    Some(g) => {
                        let group = &model.groups[g];
                        let c = &mut cols[COL_GROUPS + g];
                        *c = (f64::from_bits(*c) + p).max(group.floor).min(group.cap).to_bits();
                    }
                    None => {
                        let c = &mut cols[COL_UNGROUPED];
                        *c = (f64::from_bits(*c) + p).to_bits();
                    }
                }
            }
        }

        if ev.event_type == PROFILE_UPDATE && !model.fits.is_empty() {
            if let Some(props) = &ev.properties {
                self.merge_profile(slot, props);
            }
        }

        if let Some(key) = dedup_key {
            let tau = self.store.cores[slot as usize].tau;
            self.dedup.insert(key, tau);
            if self.dedup.len() >= self.dedup_prune_at {
                self.prune_dedup();
            }
        }

        // The check, at a = max(τ, at of the previous transition).
        let core = self.store.cores[slot as usize];
        let a = core.tau.max(core.last_at);
        let score = self.score_at(slot, a);
        let kind = if !core.qualified && score >= model.qualify_at {
            Some(TransitionKind::Qualified)
        } else if core.qualified && score < model.disqualify_below {
            Some(TransitionKind::Disqualified)
        } else {
            None
        };
        if let Some(kind) = kind {
            let trigger = Trigger {
                event_id: ev.event_id.as_deref().map(str::to_owned),
                event_type: ev.event_type.as_ref().to_owned(),
            };
            out(self.transition(slot, kind, a, score, Some(trigger)));
        }
        self.schedule(slot);
        Applied::Accepted
    }

    fn merge_profile(&mut self, slot: u32, props: &crate::event::Properties<'_>) {
        let n_attrs = self.attr_names.len();
        let mut attrs = self.attrs[slot as usize].take().unwrap_or_else(|| vec![None; n_attrs].into_boxed_slice());
        let names = &self.attr_names;
        props.for_each_entry(|key, value| {
            if let Some(i) = names.iter().position(|n| *n == key) {
                attrs[i] = value.map(Attr::from_value);
            }
        });
        let fit = self.fit_sum(Some(&attrs));
        self.store.cols_mut(slot)[self.col_fit.expect("fit column")] = fit.to_bits();
        self.attrs[slot as usize] = Some(attrs);
    }

    /// Records a transition in the lead's state and builds its record.
    fn transition(&mut self, slot: u32, kind: TransitionKind, at: i64, score: f64, trigger: Option<Trigger>) -> Transition {
        let breakdown = self.breakdown(slot, at);
        let core = &mut self.store.cores[slot as usize];
        core.qualified = kind == TransitionKind::Qualified;
        core.last_at = at;
        core.transitions += 1;
        let n = core.transitions;
        match kind {
            TransitionKind::Qualified => self.qualified += 1,
            TransitionKind::Disqualified => self.qualified -= 1,
        }
        let threshold = match kind {
            TransitionKind::Qualified => self.model.qualify_at,
            TransitionKind::Disqualified => self.model.disqualify_below,
        };
        Transition { kind, lead_id: self.store.id(slot).to_owned(), n, at_ms: at, score, threshold, trigger, breakdown }
    }

    /// When decay alone takes the lead across a threshold: the crossing time rounded up to the
    /// millisecond, never before the lead's last check; `i64::MAX` when it never does.
    fn crossing_due(&self, slot: u32) -> i64 {
        let core = &self.store.cores[slot as usize];
        let steady = self.steady(slot);
        let e = self.engagement(slot);
        // Solve steady + e·2^(-(t-τ)/h) = threshold for t.
        let threshold = if core.qualified {
            // Positive engagement sinking towards a steady part below the threshold.
            if !(e > 0.0 && steady < self.model.disqualify_below) {
                return i64::MAX;
            }
            self.model.disqualify_below
        } else {
            // Negative engagement wearing off towards a steady part above the threshold.
            if !(e < 0.0 && steady > self.model.qualify_at) {
                return i64::MAX;
            }
            self.model.qualify_at
        };
        let t = core.tau as f64 + self.half_life * (e / (threshold - steady)).log2();
        let t = t.ceil();
        if !t.is_finite() || t > MAX_TIMESTAMP_MS as f64 {
            return i64::MAX;
        }
        (t as i64).max(core.tau.max(core.last_at))
    }

    fn forget_due(&self, slot: u32) -> i64 {
        match self.model.forget_after_ms {
            // Removed once the clock is *more than* forget_after past τ.
            Some(f) => self.store.cores[slot as usize].tau.saturating_add(f).saturating_add(1),
            None => i64::MAX,
        }
    }

    /// Makes sure the heap holds an entry at or before the lead's next due time. Entries are
    /// lazy: one that pops early (the lead's clock moved since) is pushed again at the new time,
    /// so the heap holds about one entry per lead however many events the lead gets.
    fn schedule(&mut self, slot: u32) {
        let due = self.crossing_due(slot).min(self.forget_due(slot));
        let core = &mut self.store.cores[slot as usize];
        if due < core.timer {
            core.timer = due;
            self.timers.push(Reverse((due, slot, core.gen)));
        }
    }

    /// Moves the clock to `clock`: fires every crossing and removal due at or before it, in order
    /// of time, then of lead id (bytewise), a crossing before a removal of the same lead.
    pub fn advance(&mut self, clock: i64, out: &mut impl FnMut(Transition)) {
        while let Some(&Reverse((due, _, _))) = self.timers.peek() {
            if due > clock {
                break;
            }
            let mut batch = std::mem::take(&mut self.batch);
            batch.clear();
            while let Some(&Reverse((d, slot, gen))) = self.timers.peek() {
                if d != due {
                    break;
                }
                self.timers.pop();
                let core = &self.store.cores[slot as usize];
                if core.live && core.gen == gen && core.timer == due {
                    batch.push(slot);
                }
            }
            batch.sort_unstable_by(|&a, &b| self.store.id(a).cmp(self.store.id(b)));
            batch.dedup();
            for &slot in &batch {
                self.fire(slot, due, out);
            }
            self.batch = batch;
        }
    }

    fn fire(&mut self, slot: u32, due: i64, out: &mut impl FnMut(Transition)) {
        self.store.cores[slot as usize].timer = i64::MAX;
        let crossing = self.crossing_due(slot);
        if crossing <= due {
            let core = self.store.cores[slot as usize];
            let kind = if core.qualified { TransitionKind::Disqualified } else { TransitionKind::Qualified };
            let threshold = match kind {
                TransitionKind::Qualified => self.model.qualify_at,
                TransitionKind::Disqualified => self.model.disqualify_below,
            };
            let at = crossing.max(core.last_at);
            out(self.transition(slot, kind, at, threshold, None));
        }
        if self.forget_due(slot) <= due {
            self.forget(slot);
        } else {
            self.schedule(slot);
        }
    }

    fn forget(&mut self, slot: u32) {
        if self.store.cores[slot as usize].qualified {
            self.qualified -= 1;
        }
        if let Some(a) = self.attrs.get_mut(slot as usize) {
            *a = None;
        }
        // Its dedup entries die with the generation; the next prune drops them.
        self.store.remove(slot);
    }

    /// Drops remembered event ids that can no longer make a duplicate: their lead is gone, or
    /// its clock has moved more than the dedup window past them. Amortized: runs when the map
    /// has doubled since the last prune.
    fn prune_dedup(&mut self) {
        let window = self.model.dedup_window_ms;
        let cores = &self.store.cores;
        self.dedup.retain(|k, &mut clock| {
            let c = &cores[k.slot as usize];
            c.live && c.gen == k.gen && clock >= c.tau.saturating_sub(window)
        });
        self.dedup_prune_at = (self.dedup.len() * 2).max(1024);
    }

    /// A lead's score, flag, clock and breakdown at `now`.
    pub fn lead(&self, lead_id: &str, now: i64) -> Option<LeadView> {
        let slot = self.store.find(lead_id)?;
        let core = &self.store.cores[slot as usize];
        Some(LeadView {
            lead_id: lead_id.to_owned(),
            score: self.score_at(slot, now),
            qualified: core.qualified,
            clock_ms: core.tau,
            transitions: core.transitions,
            breakdown: self.breakdown(slot, now),
        })
    }

    /// Ids of all tracked leads (in slot order; not sorted).
    pub fn lead_ids(&self) -> impl Iterator<Item = &str> + '_ {
        self.store.live_slots().map(|s| self.store.id(s))
    }

    /// Lead count, qualified count and score sum at `now`.
    pub fn totals(&self, now: i64) -> Totals {
        self.totals_with(now, |_| {})
    }

    /// [`Engine::totals`], also handing every lead's current score to `each` (for distributions).
    pub fn totals_with(&self, now: i64, mut each: impl FnMut(f64)) -> Totals {
        let (mut sum, mut comp) = (0.0f64, 0.0f64);
        for slot in self.store.live_slots() {
            let s = self.score_at(slot, now);
            each(s);
            // Neumaier summation: the sum of millions of scores keeps its last digits.
            let t = sum + s;
            if sum.abs() >= s.abs() {
                comp += (sum - t) + s;
            } else {
                comp += (s - t) + sum;
            }
            sum = t;
        }
        Totals { leads: self.store.len(), qualified: self.qualified, score_sum: sum + comp }
    }

    /// Remembered event ids (for memory accounting).
    pub fn remembered_event_ids(&self) -> usize {
        self.dedup.len()
    }
}

