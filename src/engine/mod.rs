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

mod snapshot;
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
    /// For each rule and condition, the index of its property path among the model's distinct
    /// paths: an event's properties are looked into once per path, however many rules read it.
    cond_path: Vec<Vec<usize>>,
    /// Distinct attributes read by fit rules, and each fit rule's index into them.
    attr_names: Vec<String>,
    fit_attr: Vec<usize>,
    n_groups: usize,
    col_fixed: usize,
    col_fit: usize,
    /// The clock of the last [`Engine::advance`]: decides which leads `forget_after` has removed.
    clock: i64,
    /// When the next sweep of expired leads is due (they are invisible before it; the sweep
    /// only gives their memory back).
    next_sweep: i64,
    /// Pending decay-driven crossings: (due, slot, generation). Stale entries are skipped.
    timers: BinaryHeap<Reverse<(i64, u32, u32)>>,
    /// Due time of each lead's entry in `timers` (leads without a pending crossing have none):
    /// kept out of the lead core because most leads never have one.
    timer_of: HashMap<u32, i64, Hasher>,
    dedup: HashMap<DedupKey, i64, Hasher>,
    dedup_hasher: foldhash::quality::FixedState,
    dedup_prune_at: usize,
    batch: Vec<u32>,
    /// What changed since the changelog was last written (`None`: this engine keeps no
    /// changelog, as in `replay`).
    journal: Option<Box<Journal>>,
}

/// Changes not yet written to the state changelog.
#[derive(Default)]
struct Journal {
    /// Slots whose state changed (a slot may appear twice; its `dirty` flag decides).
    dirty: Vec<u32>,
    /// Leads `forget_after` removed: tombstones.
    removed: Vec<Box<str>>,
    /// Each lead's remembered event ids (hash, clock), so a lead's record can carry them: the
    /// dedup map is keyed for lookups and cannot list one lead's ids.
    ids: HashMap<u32, Vec<(u64, i64)>, Hasher>,
    buf: Vec<u8>,
}

/// Columns of a lead's row: the ungrouped total, the group totals, `fixed`, `fit`, then one
/// packed state per limited rule.
const COL_UNGROUPED: usize = 0;
const COL_GROUPS: usize = 1;

/// Most groups plus limited rules a model may have (rows have at most 64 columns).
pub const MAX_GROUPS_AND_LIMITS: usize = 61;

const ZERO: u64 = 0; // 0.0f64.to_bits()

/// Distinct property paths whose values an event caches while its rules are evaluated.
const PATH_CACHE: usize = 16;

impl Engine {
    /// A new engine with no leads.
    ///
    /// # Panics
    /// If the model has more than [`MAX_GROUPS_AND_LIMITS`] groups and limited rules together
    /// (`leadscore check` rejects such models).
    pub fn new(model: Arc<Model>) -> Engine {
        let n_groups = model.groups.len();
        let col_fixed = COL_GROUPS + n_groups;
        let col_fit = col_fixed + 1;
        let mut next = col_fit + 1;
        let limit_col: Vec<usize> = model
            .rules
            .iter()
            .map(|r| match r.limit {
                Some(_) => {
                    next += 1;
                    next - 1
                }
                None => usize::MAX,
            })
            .collect();
        assert!(next <= 64, "a model has at most {MAX_GROUPS_AND_LIMITS} groups and limited rules together");
        let mut by_type: HashMap<Box<str>, Vec<u32>, Hasher> = HashMap::with_hasher(store::hasher());
        for (i, r) in model.rules.iter().enumerate() {
            by_type.entry(r.event.as_str().into()).or_default().push(i as u32);
        }
        let mut rules_by_type = HashMap::with_hasher(store::hasher());
        rules_by_type.extend(by_type.into_iter().map(|(k, v)| (k, v.into_boxed_slice())));
        let mut paths: Vec<&[String]> = Vec::new();
        let cond_path = model
            .rules
            .iter()
            .map(|r| {
                r.when
                    .iter()
                    .map(|c| match paths.iter().position(|p| *p == c.path.as_slice()) {
                        Some(i) => i,
                        None => {
                            paths.push(&c.path);
                            paths.len() - 1
                        }
                    })
                    .collect()
            })
            .collect();
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
            store: Store::new(next),
            attrs: Vec::new(),
            rules_by_type,
            limit_col,
            cond_path,
            attr_names,
            fit_attr,
            n_groups,
            col_fixed,
            col_fit,
            clock: i64::MIN,
            next_sweep: i64::MIN,
            timers: BinaryHeap::new(),
            timer_of: HashMap::with_hasher(store::hasher()),
            dedup: HashMap::with_hasher(store::hasher()),
            dedup_hasher: foldhash::quality::FixedState::with_seed(0x6465_6475_7000_0001),
            dedup_prune_at: 1024,
            batch: Vec::new(),
            journal: None,
            model,
        }
    }

    /// A new engine that also keeps what its state changelog needs: which leads changed since
    /// [`Engine::drain_changelog`], and each lead's remembered event ids.
    pub fn with_changelog(model: Arc<Model>) -> Engine {
        let mut e = Engine::new(model);
        e.journal = Some(Box::default());
        e
    }

    /// The model this engine scores with.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The clock of the last [`Engine::advance`] (`i64::MIN` before the first).
    pub fn clock(&self) -> i64 {
        self.clock
    }

    #[inline]
    fn f(&self, slot: u32, col: usize) -> f64 {
        f64::from_bits(self.store.get(slot, col, ZERO))
    }

    /// Has `forget_after` removed this lead (the clock is more than `forget_after` past `τ`)?
    #[inline]
    fn expired(&self, slot: u32) -> bool {
        match self.model.forget_after_ms {
            Some(f) => self.clock > self.store.cores[slot as usize].tau.saturating_add(f),
            None => false,
        }
    }

    /// The slot of a lead in state (not expired).
    fn find(&self, lead_id: &str) -> Option<u32> {
        self.store.find(lead_id).filter(|&s| !self.expired(s))
    }

    /// `E`: the group totals in file order, then the ungrouped total, at the lead's clock.
    #[inline]
    fn engagement(&self, slot: u32) -> f64 {
        let (mask, words) = self.store.row(slot);
        let (ungrouped, mut i) = if mask & 1 != 0 { (f64::from_bits(words[0]), 1) } else { (0.0, 0) };
        let mut e = 0.0;
        let mut groups = (mask >> COL_GROUPS) & ((1u64 << self.n_groups) - 1);
        while groups != 0 {
            // Present group columns are consecutive words after the ungrouped one, in order.
            e += f64::from_bits(words[i]);
            i += 1;
            groups &= groups - 1;
        }
        e + ungrouped
    }

    /// `fit + fixed`: the part of the score that never decays.
    #[inline]
    fn steady(&self, slot: u32) -> f64 {
        self.f(slot, self.col_fit) + self.f(slot, self.col_fixed)
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
            fit: self.f(slot, self.col_fit),
            fixed: self.f(slot, self.col_fixed),
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
        DedupKey {
            slot,
            gen: self.store.cores[slot as usize].gen,
            id_hash: self.dedup_hasher.hash_one(event_id.as_bytes()),
        }
    }

    /// Would [`Engine::apply`] reject this event as a duplicate right now?
    pub fn is_duplicate(&self, ev: &LeadEvent<'_>) -> bool {
        let Some(event_id) = ev.event_id.as_deref() else { return false };
        let Some(slot) = self.find(&ev.lead_id) else { return false };
        self.is_remembered(slot, event_id)
    }

    fn is_remembered(&self, slot: u32, event_id: &str) -> bool {
        let tau = self.store.cores[slot as usize].tau;
        match self.dedup.get(&self.dedup_key(slot, event_id)) {
            Some(&clock) => clock >= tau.saturating_sub(self.model.dedup_window_ms),
            None => false,
        }
    }

    /// `replay`'s step: the engine's clock is the watermark. A duplicate is rejected before any
    /// clock moves; otherwise crossings and removals due up to the event's time fire first (if it
    /// moves the watermark), then the event applies, then crossings it set up in the past of the
    /// watermark fire at once.
    pub fn apply_in_event_time(&mut self, ev: &LeadEvent<'_>, out: &mut impl FnMut(Transition)) -> Applied {
        if self.is_duplicate(ev) {
            return Applied::Duplicate;
        }
        if ev.timestamp_ms > self.clock {
            self.advance(ev.timestamp_ms, out);
        }
        let applied = self.apply(ev, out);
        self.advance(self.clock, out);
        applied
    }

    /// Applies one decoded event. Emits at most one transition (the check after the event), and
    /// schedules the lead's next decay-driven crossing. Due crossings are not fired here: the
    /// caller owns the clock and calls [`Engine::advance`].
    pub fn apply(&mut self, ev: &LeadEvent<'_>, out: &mut impl FnMut(Transition)) -> Applied {
        let t = ev.timestamp_ms;
        let (slot, mut new) = self.store.find_or_insert(&ev.lead_id, t);
        if !new && self.expired(slot) {
            // Forgotten (not yet swept) and back: it starts afresh.
            self.store.reset(slot, t);
            self.timer_of.remove(&slot);
            if let Some(j) = &mut self.journal {
                j.ids.remove(&slot);
            }
            new = true;
        }
        if !new {
            if let Some(id) = ev.event_id.as_deref() {
                if self.is_remembered(slot, id) {
                    return Applied::Duplicate;
                }
            }
        }
        let dedup_key = ev.event_id.as_deref().map(|id| self.dedup_key(slot, id));
        if !self.model.fits.is_empty() {
            if self.attrs.len() <= slot as usize {
                self.attrs.resize_with(slot as usize + 1, || None);
            }
            if new {
                self.attrs[slot as usize] = None;
                let fit = self.fit_sum(None);
                if fit != 0.0 {
                    self.store.set(slot, self.col_fit, fit.to_bits());
                }
            }
        }

        // Move the clock, or find the factor that brings a late event's points to it.
        let tau = self.store.cores[slot as usize].tau;
        let late_factor = if t >= tau {
            if t > tau {
                let d = decay(t - tau, self.half_life);
                let (mask, words) = self.store.row_mut(slot);
                // The ungrouped and group totals are the row's first words, in column order.
                let n = (mask & ((1u64 << (COL_GROUPS + self.n_groups)) - 1)).count_ones() as usize;
                for w in &mut words[..n] {
                    *w = (f64::from_bits(*w) * d).to_bits();
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
            // Values found at each property path, looked up at most once per event.
            let mut found: [Option<Option<Value<'_>>>; PATH_CACHE] = std::array::from_fn(|_| None);
            for &ri in rules.iter() {
                let rule = &model.rules[ri as usize];
                let holds = rule.when.iter().zip(&self.cond_path[ri as usize]).all(|(c, &pi)| {
                    let lookup = || ev.properties.as_ref().and_then(|p| p.get(&c.path));
                    match found.get_mut(pi) {
                        Some(slot) => c.test.holds(slot.get_or_insert_with(lookup).as_ref()),
                        None => c.test.holds(lookup().as_ref()),
                    }
                });
                if !holds {
                    continue;
                }
                if let Some(limit) = rule.limit {
                    let col = self.limit_col[ri as usize];
                    let window = t.div_euclid(limit.per_ms) as u64;
                    let packed = self.store.get(slot, col, NO_WINDOW);
                    let (state, scored) = if packed == NO_WINDOW || window > packed >> 16 {
                        (window << 16 | 1, true)
                    } else if window == packed >> 16 {
                        let count = packed & 0xffff;
                        (window << 16 | (count + 1).min(0xffff), count < u64::from(limit.count))
                    } else {
                        (packed, false)
                    };
                    self.store.set(slot, col, state);
                    if !scored {
                        continue;
                    }
                }
                let (col, value) = if !rule.decays {
                    (self.col_fixed, self.f(slot, self.col_fixed) + rule.points)
                } else {
                    let p = if late_factor == 1.0 { rule.points } else { rule.points * late_factor };
                    match rule.group {
                        Some(g) => {
                            let group = &model.groups[g];
                            let total = self.f(slot, COL_GROUPS + g) + p;
                            (COL_GROUPS + g, total.max(group.floor).min(group.cap))
                        }
                        None => (COL_UNGROUPED, self.f(slot, COL_UNGROUPED) + p),
                    }
                };
                self.store.set(slot, col, value.to_bits());
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
            if let Some(j) = &mut self.journal {
                let ids = j.ids.entry(slot).or_default();
                // Ids the window no longer covers go; the same id again takes the newer clock.
                let oldest = tau.saturating_sub(self.model.dedup_window_ms);
                ids.retain(|&(h, c)| h != key.id_hash && c >= oldest);
                ids.push((key.id_hash, tau));
            }
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
        self.mark_dirty(slot);
        Applied::Accepted
    }

    #[inline]
    fn mark_dirty(&mut self, slot: u32) {
        if let Some(j) = &mut self.journal {
            let core = &mut self.store.cores[slot as usize];
            if !core.dirty {
                core.dirty = true;
                j.dirty.push(slot);
            }
        }
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
        if fit != self.f(slot, self.col_fit) {
            self.store.set(slot, self.col_fit, fit.to_bits());
        }
        self.attrs[slot as usize] = Some(attrs);
    }

    /// The threshold a transition of this kind crosses.
    fn threshold(&self, kind: TransitionKind) -> f64 {
        match kind {
            TransitionKind::Qualified => self.model.qualify_at,
            TransitionKind::Disqualified => self.model.disqualify_below,
        }
    }

    /// Records a transition in the lead's state and builds its record.
    fn transition(
        &mut self,
        slot: u32,
        kind: TransitionKind,
        at: i64,
        score: f64,
        trigger: Option<Trigger>,
    ) -> Transition {
        let breakdown = self.breakdown(slot, at);
        let core = &mut self.store.cores[slot as usize];
        core.qualified = kind == TransitionKind::Qualified;
        core.last_at = at;
        core.transitions += 1;
        let n = core.transitions;
        self.mark_dirty(slot);
        let threshold = self.threshold(kind);
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
        let t = (core.tau as f64 + self.half_life * (e / (threshold - steady)).log2()).ceil();
        if !t.is_finite() || t > MAX_TIMESTAMP_MS as f64 {
            return i64::MAX;
        }
        (t as i64).max(core.tau.max(core.last_at))
    }

    /// The clock at which `forget_after` removes the lead (`i64::MAX`: never).
    fn forget_due(&self, slot: u32) -> i64 {
        match self.model.forget_after_ms {
            // Removed once the clock is *more than* forget_after past τ.
            Some(f) => self.store.cores[slot as usize].tau.saturating_add(f).saturating_add(1),
            None => i64::MAX,
        }
    }

    /// Makes sure the heap holds an entry at or before the lead's next crossing. Entries are
    /// lazy: one that pops early (new points pushed the crossing later) is pushed again at the
    /// new time, so the heap holds about one entry per lead however many events the lead gets.
    fn schedule(&mut self, slot: u32) {
        let due = self.crossing_due(slot);
        // A crossing after the lead's removal never happens (at the same time: crossing first).
        if due == i64::MAX || due > self.forget_due(slot) {
            return;
        }
        let current = self.timer_of.get(&slot).copied().unwrap_or(i64::MAX);
        if due < current {
            self.timer_of.insert(slot, due);
            self.timers.push(Reverse((due, slot, self.store.cores[slot as usize].gen)));
        }
    }

    /// Moves the clock to `clock` (never backwards): fires every crossing due at or before it,
    /// in order of time, then of lead id (bytewise); leads `forget_after` past their last event
    /// leave the state (a crossing due at the same time fires first).
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
                if core.live && core.gen == gen && self.timer_of.get(&slot) == Some(&due) {
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
        self.clock = self.clock.max(clock);
        if let Some(f) = self.model.forget_after_ms {
            if self.clock >= self.next_sweep {
                self.sweep();
                self.next_sweep = self.clock.saturating_add((f / 4).max(1));
            }
        }
    }

    fn fire(&mut self, slot: u32, due: i64, out: &mut impl FnMut(Transition)) {
        self.timer_of.remove(&slot);
        let crossing = self.crossing_due(slot);
        if crossing <= due && crossing <= self.forget_due(slot) {
            let core = self.store.cores[slot as usize];
            let kind = if core.qualified { TransitionKind::Disqualified } else { TransitionKind::Qualified };
            // A decay-driven transition reports the threshold itself as its score.
            out(self.transition(slot, kind, crossing, self.threshold(kind), None));
        }
        self.schedule(slot);
    }

    /// Gives back the memory of leads that `forget_after` has removed (they are already
    /// invisible: see [`Engine::expired`]). Amortized: runs once per quarter of `forget_after`
    /// of clock.
    fn sweep(&mut self) {
        let expired: Vec<u32> = self.store.live_slots().filter(|&s| self.expired(s)).collect();
        for slot in expired {
            if let Some(a) = self.attrs.get_mut(slot as usize) {
                *a = None;
            }
            self.timer_of.remove(&slot);
            if let Some(j) = &mut self.journal {
                j.ids.remove(&slot);
                j.removed.push(self.store.id(slot).into());
            }
            // Its dedup entries and heap entries die with the generation.
            self.store.remove(slot);
        }
    }

    /// Drops remembered event ids that can no longer make a duplicate: their lead is gone, or
    /// its clock has moved more than the dedup window past them. Amortized: runs when the map
    /// has doubled since the last prune.
    fn prune_dedup(&mut self) {
        let window = self.model.dedup_window_ms;
        // Every lead's clock is at most the engine's clock (the watermark in replay), so an entry
        // within the window of the engine's clock is still needed, whatever its lead: keep it
        // without touching the lead (a random memory access per entry would dominate the prune).
        let recent = if self.clock == i64::MIN { i64::MIN } else { self.clock.saturating_sub(window) };
        let cores = &self.store.cores;
        self.dedup.retain(|k, &mut clock| {
            if clock >= recent {
                // (An entry of a removed lead is never matched again: lookups carry the slot's
                // current generation. It goes once it is older than the window.)
                return true;
            }
            let c = &cores[k.slot as usize];
            c.live && c.gen == k.gen && clock >= c.tau.saturating_sub(window)
        });
        self.dedup_prune_at = (self.dedup.len() * 2).max(1024);
    }

    /// A lead's score, flag, clock and breakdown at `now`; `None` for a lead not in state.
    pub fn lead(&self, lead_id: &str, now: i64) -> Option<LeadView> {
        let slot = self.find(lead_id)?;
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

    fn tracked_slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.store.live_slots().filter(|&s| !self.expired(s))
    }

    /// Ids of all tracked leads (in slot order; not sorted).
    pub fn lead_ids(&self) -> impl Iterator<Item = &str> + '_ {
        self.tracked_slots().map(|s| self.store.id(s))
    }

    /// Lead count, qualified count and score sum at `now`.
    pub fn totals(&self, now: i64) -> Totals {
        self.totals_with(now, |_| {})
    }

    /// [`Engine::totals`], also handing every lead's current score to `each` (for distributions).
    pub fn totals_with(&self, now: i64, mut each: impl FnMut(f64)) -> Totals {
        let (mut sum, mut comp) = (0.0f64, 0.0f64);
        let (mut leads, mut qualified) = (0usize, 0usize);
        for slot in self.tracked_slots() {
            let s = self.score_at(slot, now);
            each(s);
            leads += 1;
            qualified += usize::from(self.store.cores[slot as usize].qualified);
            // Neumaier summation: the sum of millions of scores keeps its last digits.
            let t = sum + s;
            if sum.abs() >= s.abs() {
                comp += (sum - t) + s;
            } else {
                comp += (s - t) + sum;
            }
            sum = t;
        }
        Totals { leads, qualified, score_sum: sum + comp }
    }

    /// Remembered event ids (for memory accounting and tests).
    pub fn remembered_event_ids(&self) -> usize {
        self.dedup.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn model(src_tail: &str) -> Arc<Model> {
        let src =
            format!("name = \"m\"\nversion = \"1\"\n[score]\nqualify_at = 1000.0\nhalf_life = \"1h\"\n{src_tail}");
        Arc::new(Model::from_toml(&src).expect("valid model"))
    }

    fn ev<'a>(lead: &'a str, t: i64, id: &'a str) -> LeadEvent<'a> {
        LeadEvent {
            lead_id: Cow::Borrowed(lead),
            event_type: Cow::Borrowed("visit"),
            timestamp_ms: t,
            event_id: Some(Cow::Borrowed(id)),
            properties: None,
        }
    }

    /// Thousands of remembered ids force several prunes; what the window still covers stays
    /// remembered, what it no longer covers is forgotten, leads' own clocks decide.
    #[test]
    fn dedup_survives_prunes() {
        let m = model("dedup_window = \"10s\"\n");
        let mut e = Engine::new(m);
        let mut out = |_t: Transition| {};
        // A quiet lead whose clock stays at 0: its id stays a duplicate however far others go.
        assert_eq!(e.apply_in_event_time(&ev("quiet", 0, "q"), &mut out), Applied::Accepted);
        let ids: Vec<String> = (0..5000).map(|i| format!("e{i}")).collect();
        for (i, id) in ids.iter().enumerate() {
            let t = i as i64 * 100; // 500 s in all: far more than the 10 s window
            assert_eq!(e.apply_in_event_time(&ev("busy", t, id), &mut out), Applied::Accepted);
        }
        assert!(e.remembered_event_ids() < 3000, "prunes dropped old ids: {}", e.remembered_event_ids());
        // The busy lead's clock is 499.9 s: ids from the last 10 s are duplicates, older ones not.
        assert_eq!(e.apply_in_event_time(&ev("busy", 499_900, "e4990"), &mut out), Applied::Duplicate);
        assert_eq!(e.apply_in_event_time(&ev("busy", 499_900, "e10"), &mut out), Applied::Accepted);
        assert_eq!(e.apply_in_event_time(&ev("quiet", 0, "q"), &mut out), Applied::Duplicate);
    }
}
