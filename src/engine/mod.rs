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
    /// Indexes into `Model::rules` of the rules whose points the event scored (matched, and
    /// within its limit), in file order: the breakdown's `rules`.
    pub rules: Vec<usize>,
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
    /// Sum of `score(now)`, exactly rounded ([`ExactSum`]): it depends neither on the order of
    /// the leads nor on their count.
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

/// An exactly rounded sum of `f64` values (Shewchuk's algorithm, as Python's `math.fsum`): the
/// result is the exact sum rounded once, so it does not depend on the order of the values. The
/// average lead score is `sum / leads` (Python's `statistics.fmean`), so two implementations
/// that agree on every lead's score agree on the average to the last digit, whatever order
/// they keep their leads in. The values must be finite (scores are).
#[derive(Debug, Clone, Default)]
pub struct ExactSum {
    /// Non-overlapping partial sums, increasing in magnitude; their exact sum is the total.
    partials: Vec<f64>,
}

impl ExactSum {
    pub fn add(&mut self, mut x: f64) {
        let mut i = 0;
        for j in 0..self.partials.len() {
            let mut y = self.partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                self.partials[i] = lo;
                i += 1;
            }
            x = hi;
        }
        self.partials.truncate(i);
        self.partials.push(x);
    }

    /// The exact sum, rounded to the nearest `f64` (ties to even), as CPython's `fsum` rounds it.
    pub fn value(&self) -> f64 {
        let p = &self.partials;
        let Some((&top, rest)) = p.split_last() else { return 0.0 };
        let (mut hi, mut lo) = (top, 0.0);
        let mut n = rest.len();
        while n > 0 {
            let x = hi;
            n -= 1;
            let y = p[n];
            hi = x + y;
            lo = y - (hi - x);
            if lo != 0.0 {
                break;
            }
        }
        // Half-way cases: the partials below decide the direction of the rounding.
        if n > 0 && ((lo < 0.0 && p[n - 1] < 0.0) || (lo > 0.0 && p[n - 1] > 0.0)) {
            let y = lo * 2.0;
            let x = hi + y;
            if y == x - hi {
                hi = x;
            }
        }
        hi
    }
}

/// A profile attribute value as stored (only attributes that fit rules read are kept).
#[derive(Debug, Clone, PartialEq)]
enum Attr {
    Str(Box<str>),
    Num(crate::model::Number),
    Bool(bool),
    Composite,
}

/// See [`Engine::fit_sum_memo`].
#[derive(Default)]
struct FitMemo {
    sums: HashMap<Box<[u8]>, f64, Hasher>,
    /// Scratch: the key being looked up.
    key: Vec<u8>,
}

/// The key of [`Engine::fit_sum_memo`]: the fit attributes as a changelog record encodes them
/// (self-delimiting, so two different sets of values never share a key).
fn fit_memo_key(attrs: Option<&[Option<Attr>]>, key: &mut Vec<u8>) {
    key.clear();
    match attrs {
        None => key.push(0xff),
        Some(attrs) => attrs.iter().for_each(|a| crate::changelog::put_attr(key, a.as_ref().map(Attr::borrowed))),
    }
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

/// How far [`Engine::crossing_due_of`] looks past the formula's millisecond for the first one at
/// which the evaluated score has reached the threshold.
const CROSSING_SEARCH_MS: usize = 8;

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

/// The hashes an event is looked up by: its lead id's (the lead index) and its `event_id`'s
/// (the lead's remembered ids). Computed once per event, and early when the caller prefetches
/// a batch ([`Engine::prefetch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventHashes {
    lead: u64,
    event_id: Option<u64>,
}

/// The rules of one event type, in file order.
struct TypeRules {
    rules: Box<[u32]>,
}

/// The scoring engine for one model.
pub struct Engine {
    model: Arc<Model>,
    half_life: f64,
    store: Store,
    /// Per slot, the fit attributes (`attr_names` order); empty when the model has no fit rules.
    attrs: Vec<Option<Box<[Option<Attr>]>>>,
    rules_by_type: HashMap<Box<str>, TypeRules, Hasher>,
    /// Column of each rule's limit state, `usize::MAX` when it has no limit.
    limit_col: Vec<usize>,
    /// For each rule and condition, the index of its property path among the model's distinct
    /// paths: consecutive conditions on one path look into the event's properties once.
    cond_path: Vec<Vec<usize>>,
    /// Distinct attributes read by fit rules, and each fit rule's index into them.
    attr_names: Vec<String>,
    fit_attr: Vec<usize>,
    n_groups: usize,
    /// Columns of the decaying totals (the ungrouped one and the groups).
    decaying: u64,
    col_fixed: usize,
    col_fit: usize,
    /// The due time of the lead's entry in `timers`; present only while it has one.
    col_timer: usize,
    /// The clock of the last [`Engine::advance`]: decides which leads `forget_after` has removed.
    clock: i64,
    /// When the next sweep of expired leads is due (they are invisible before it; the sweep
    /// only gives their memory back).
    next_sweep: i64,
    /// Sweeps so far: a slot found before one may have been given back by it.
    sweeps: u64,
    /// Pending decay-driven crossings: (due, slot, generation). Stale entries are skipped.
    timers: BinaryHeap<Reverse<(i64, u32, u32)>>,
    event_id_hasher: foldhash::quality::FixedState,
    batch: Vec<u32>,
    /// What changed since the changelog was last written (`None`: this engine keeps no
    /// changelog, as in `replay`).
    journal: Option<Box<Journal>>,
    /// Scratch of [`Engine::restore`]: a record's event ids.
    import_ids: Vec<[i64; 2]>,
    /// A restore's fit sums by attribute values (their encoding by [`fit_memo_key`]): a
    /// restore recomputes every lead's fit under the current model, and leads share a few
    /// titles, sizes and countries, so most records' regexes need not run again (they were
    /// a sixth of a restore's CPU). Bounded; emptied when the restore ends.
    fit_memo: FitMemo,
    /// Leads some of whose event ids the changelog keeps in segment records (engines with a
    /// journal; see [`crate::changelog`]).
    id_segments: HashMap<u32, IdSegments, Hasher>,
    /// Leads restored from version 1 records whose ids were in bucket records, by their bucket
    /// bits: the buckets are deleted when the lead is next written.
    legacy_buckets: HashMap<u32, u8, Hasher>,
    /// Segment and bucket records read by a restore, by key (the last wins; `None`: deleted),
    /// applied by [`Engine::finish_restore`].
    restore_buckets: BucketRecords,
    /// Columns and attributes by the names a changelog record stores them under.
    names: Names,
    /// Scratch of [`Engine::apply`]: the row of the lead being applied, by column (only the
    /// columns of its mask mean anything). Rules read and write it here, and it goes back to
    /// the store once.
    row: Option<Box<[u64; 64]>>,
    /// Scratch of [`Engine::apply`]: the rules the event being applied scored.
    scored: Vec<usize>,
    /// Scored matches by rule since [`Engine::take_rule_matches`] (`leadscore_rule_matches_total`).
    rule_matches: Vec<u64>,
}

/// Where a changelog record's named parts go: group name to column, limited rule id to column,
/// fit attribute name to index.
struct Names {
    group_col: HashMap<Box<str>, usize, Hasher>,
    limit_col: HashMap<Box<str>, usize, Hasher>,
    attr: HashMap<Box<str>, usize, Hasher>,
}

/// Changes not yet written to the state changelog.
#[derive(Default)]
struct Journal {
    /// Slots whose state changed (a slot may appear twice; its `dirty` flag decides).
    dirty: Vec<u32>,
    /// Leads `forget_after` removed (or reset), with their id records: tombstones.
    removed: Vec<Gone>,
    buf: Vec<u8>,
    /// Scratch: a lead's event ids, sorted for its record.
    ids: Vec<(u64, i64)>,
    /// Scratch: a bucket record's key.
    key: Vec<u8>,
}

/// State-topic bucket records by key (`None`: deleted).
type BucketRecords = HashMap<Box<[u8]>, Option<Box<[u8]>>, Hasher>;

/// A lead whose older event ids are sealed in segment records of the changelog (see
/// [`crate::changelog`]).
#[derive(Default)]
pub(crate) struct IdSegments {
    /// Sequence number of the oldest segment still in the changelog.
    first: u32,
    /// The newest clock of each segment from `first` on, in order: a segment is deleted once
    /// that clock has left the dedup window. `i64::MIN`: a segment a restore did not find.
    newest: std::collections::VecDeque<i64>,
    /// Ids remembered since the last seal, in order (so by clock): the record holds them.
    open: Vec<(u64, i64)>,
}

impl IdSegments {
    /// The sequence number the next sealed segment gets (a u32: at one segment per 100 ms
    /// commit, a lead that always has one in its window would take 13 years to run out).
    fn next(&self) -> u32 {
        self.first + self.newest.len() as u32
    }
}

/// What a removed (or reset) lead leaves in the changelog to delete.
struct Gone {
    lead: Box<str>,
    /// Its own record too (removed; a reset lead's record is rewritten instead).
    record: bool,
    /// Version 1 bucket bits (0: none).
    legacy_bits: u8,
    /// Its segments `first..next`.
    segments: (u32, u32),
}

/// Columns of a lead's row: the ungrouped total, the group totals, `fixed`, `fit`, one packed
/// state per limited rule, then the timer.
const COL_UNGROUPED: usize = 0;
const COL_GROUPS: usize = 1;

/// Most groups plus limited rules a model may have (rows have at most 64 columns, four of
/// which are the ungrouped total, `fixed`, `fit` and the timer).
pub const MAX_GROUPS_AND_LIMITS: usize = 60;

const ZERO: u64 = 0; // 0.0f64.to_bits()

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
        let col_timer = next;
        assert!(col_timer < 64, "a model has at most {MAX_GROUPS_AND_LIMITS} groups and limited rules together");
        let mut by_type: HashMap<Box<str>, Vec<u32>, Hasher> = HashMap::with_hasher(store::hasher());
        for (i, r) in model.rules.iter().enumerate() {
            by_type.entry(r.event.as_str().into()).or_default().push(i as u32);
        }
        let mut rules_by_type = HashMap::with_hasher(store::hasher());
        rules_by_type.extend(by_type.into_iter().map(|(k, v)| (k, TypeRules { rules: v.into_boxed_slice() })));
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
        let mut names = Names {
            group_col: HashMap::with_hasher(store::hasher()),
            limit_col: HashMap::with_hasher(store::hasher()),
            attr: HashMap::with_hasher(store::hasher()),
        };
        names
            .group_col
            .extend(model.groups.iter().enumerate().map(|(g, group)| (group.name.as_str().into(), COL_GROUPS + g)));
        names.limit_col.extend(
            model
                .rules
                .iter()
                .zip(&limit_col)
                .filter(|(_, &c)| c != usize::MAX)
                .map(|(r, &c)| (r.id.as_str().into(), c)),
        );
        names.attr.extend(attr_names.iter().enumerate().map(|(i, a)| (a.as_str().into(), i)));
        Engine {
            names,
            half_life: model.half_life_ms as f64,
            store: Store::new(col_timer + 1),
            attrs: Vec::new(),
            rules_by_type,
            limit_col,
            cond_path,
            attr_names,
            fit_attr,
            n_groups,
            decaying: (1u64 << (COL_GROUPS + n_groups)) - 1,
            col_fixed,
            col_fit,
            col_timer,
            clock: i64::MIN,
            next_sweep: i64::MIN,
            sweeps: 0,
            timers: BinaryHeap::new(),
            event_id_hasher: foldhash::quality::FixedState::with_seed(0x6465_6475_7000_0001),
            batch: Vec::new(),
            journal: None,
            import_ids: Vec::new(),
            fit_memo: FitMemo::default(),
            id_segments: HashMap::with_hasher(store::hasher()),
            legacy_buckets: HashMap::with_hasher(store::hasher()),
            restore_buckets: HashMap::with_hasher(store::hasher()),
            row: Some(Box::new([0; 64])),
            scored: Vec::new(),
            rule_matches: vec![0; model.rules.len()],
            model,
        }
    }

    /// A new engine that also keeps what its state changelog needs: which leads changed since
    /// [`Engine::drain_changelog`].
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

    /// `E` from a dense row: the group totals in file order, then the ungrouped total.
    #[inline]
    fn engagement_of(&self, mask: u64, row: &[u64; 64]) -> f64 {
        let ungrouped = if mask & 1 != 0 { f64::from_bits(row[COL_UNGROUPED]) } else { 0.0 };
        let mut e = 0.0;
        let mut groups = mask & self.decaying & !1;
        while groups != 0 {
            e += f64::from_bits(row[groups.trailing_zeros() as usize]);
            groups &= groups - 1;
        }
        e + ungrouped
    }

    /// `fit + fixed` from a dense row: the part of the score that never decays.
    #[inline]
    fn steady_of(&self, mask: u64, row: &[u64; 64]) -> f64 {
        let get = |col: usize| if mask & (1 << col) != 0 { f64::from_bits(row[col]) } else { 0.0 };
        get(self.col_fit) + get(self.col_fixed)
    }

    /// `E` of a stored lead, at its clock.
    #[inline]
    fn engagement(&self, slot: u32) -> f64 {
        let (mask, words) = self.store.row(slot);
        let (ungrouped, mut i) = if mask & 1 != 0 { (f64::from_bits(words[0]), 1) } else { (0.0, 0) };
        let mut e = 0.0;
        let mut groups = (mask & self.decaying) >> COL_GROUPS;
        while groups != 0 {
            // Present group columns are consecutive words after the ungrouped one, in order.
            e += f64::from_bits(words[i]);
            i += 1;
            groups &= groups - 1;
        }
        e + ungrouped
    }

    /// `fit + fixed` of a stored lead.
    #[inline]
    fn steady(&self, slot: u32) -> f64 {
        self.f(slot, self.col_fit) + self.f(slot, self.col_fixed)
    }

    /// `score(t)` from the parts at the clock `tau`; times before the clock count as the clock.
    #[inline]
    fn score_from(&self, steady: f64, e: f64, tau: i64, t: i64) -> f64 {
        let dt = t.max(tau) - tau;
        if dt == 0 {
            steady + e
        } else {
            steady + e * decay(dt, self.half_life)
        }
    }

    /// `score(t)` of a stored lead.
    #[inline]
    fn score_at(&self, slot: u32, t: i64) -> f64 {
        let tau = self.store.cores[slot as usize].tau;
        self.score_from(self.steady(slot), self.engagement(slot), tau, t)
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

    /// [`Engine::fit_sum`], remembered by the attribute values for the rest of a restore.
    fn fit_sum_memo(&mut self, attrs: Option<&[Option<Attr>]>) -> f64 {
        /// Distinct attribute combinations remembered at most (then forgotten, and remembered
        /// again): a bound on memory whatever the profiles hold.
        const FIT_MEMO_MAX: usize = 1 << 16;
        fit_memo_key(attrs, &mut self.fit_memo.key);
        if let Some(&sum) = self.fit_memo.sums.get(&self.fit_memo.key[..]) {
            return sum;
        }
        let sum = self.fit_sum(attrs);
        let memo = &mut self.fit_memo;
        if memo.sums.len() >= FIT_MEMO_MAX {
            memo.sums.clear();
        }
        memo.sums.insert(memo.key[..].into(), sum);
        sum
    }

    /// The hashes [`Engine::apply_hashed`] looks an event up by.
    #[inline]
    pub fn hashes(&self, ev: &LeadEvent<'_>) -> EventHashes {
        EventHashes {
            lead: self.store.hash(&ev.lead_id),
            event_id: ev.event_id.as_deref().map(|id| self.event_id_hasher.hash_one(id.as_bytes())),
        }
    }

    /// Starts loading, for every event of a batch, what applying it will touch: the lead index
    /// entry, then the lead's core, then its id, row and remembered ids, one level for the
    /// whole batch at a time, so the cache misses of the batch overlap. `slots` is scratch.
    /// Purely a hint: applying gives the same result with or without it.
    ///
    /// The three levels are also public ([`Engine::prefetch_index`], [`Engine::prefetch_core`],
    /// [`Engine::prefetch_lead`]) for callers that have other work to put between them, so that
    /// each level's loads have arrived when the next level reads them.
    pub fn prefetch(&self, batch: &[EventHashes], slots: &mut Vec<u32>) {
        for &h in batch {
            self.prefetch_index(h);
        }
        slots.clear();
        slots.extend(batch.iter().map(|&h| self.prefetch_core(h)));
        for (&h, &slot) in batch.iter().zip(slots.iter()) {
            self.prefetch_lead(slot, h);
        }
    }

    /// Prefetch level 1: the lead index entry of the event's lead.
    #[inline]
    pub fn prefetch_index(&self, h: EventHashes) {
        self.store.prefetch_index(h.lead);
    }

    /// Prefetch level 2, once level 1 has had time to arrive: the core of the lead the index
    /// points to. Returns the slot to hand to level 3 (`u32::MAX`: none).
    #[inline]
    pub fn prefetch_core(&self, h: EventHashes) -> u32 {
        self.store.prefetch_core(h.lead).unwrap_or(u32::MAX)
    }

    /// Prefetch level 3, once level 2 has had time to arrive: the lead's id, row and
    /// remembered ids.
    #[inline]
    pub fn prefetch_lead(&self, slot: u32, h: EventHashes) {
        if slot != u32::MAX {
            self.store.prefetch_lead(slot, h.event_id);
        }
    }

    /// Would [`Engine::apply`] reject this event as a duplicate right now?
    pub fn is_duplicate(&self, ev: &LeadEvent<'_>) -> bool {
        self.is_duplicate_hashed(ev, self.hashes(ev))
    }

    fn is_duplicate_hashed(&self, ev: &LeadEvent<'_>, h: EventHashes) -> bool {
        let Some(id_hash) = h.event_id else { return false };
        match self.store.find_hashed(&ev.lead_id, h.lead) {
            Some(slot) if !self.expired(slot) => self.is_remembered(slot, id_hash),
            _ => false,
        }
    }

    #[inline]
    fn is_remembered(&self, slot: u32, id_hash: u64) -> bool {
        let tau = self.store.cores[slot as usize].tau;
        match self.store.ids_get(slot, id_hash) {
            Some(clock) => clock >= tau.saturating_sub(self.model.dedup_window_ms),
            None => false,
        }
    }

    /// `replay`'s step: the engine's clock is the watermark. A duplicate is rejected before any
    /// clock moves; otherwise crossings and removals due up to the event's time fire first (if it
    /// moves the watermark), then the event applies, then crossings it set up in the past of the
    /// watermark fire at once.
    pub fn apply_in_event_time(&mut self, ev: &LeadEvent<'_>, out: &mut impl FnMut(Transition)) -> Applied {
        let h = self.hashes(ev);
        self.apply_in_event_time_hashed(ev, h, out)
    }

    /// [`Engine::apply_in_event_time`] with the event's [`Engine::hashes`] already computed.
    pub fn apply_in_event_time_hashed(
        &mut self,
        ev: &LeadEvent<'_>,
        h: EventHashes,
        out: &mut impl FnMut(Transition),
    ) -> Applied {
        let found = self.store.find_hashed(&ev.lead_id, h.lead);
        if let (Some(slot), Some(id_hash)) = (found, h.event_id) {
            if !self.expired(slot) && self.is_remembered(slot, id_hash) {
                return Applied::Duplicate;
            }
        }
        let sweeps = self.sweeps;
        if ev.timestamp_ms > self.clock {
            self.advance(ev.timestamp_ms, out);
        }
        // Moving the engine's clock does not change whether the event is a duplicate: that
        // depends on the lead's own clock and ids (and a lead it expired starts afresh). Nor
        // where the lead is, unless a sweep gave slots back.
        let known = (self.sweeps == sweeps).then_some(found);
        let applied = self.apply_inner(ev, h, false, known, out);
        self.advance(self.clock, out);
        applied
    }

    /// Applies one decoded event. Emits at most one transition (the check after the event), and
    /// schedules the lead's next decay-driven crossing. Due crossings are not fired here: the
    /// caller owns the clock and calls [`Engine::advance`].
    pub fn apply(&mut self, ev: &LeadEvent<'_>, out: &mut impl FnMut(Transition)) -> Applied {
        let h = self.hashes(ev);
        self.apply_hashed(ev, h, out)
    }

    /// [`Engine::apply`] with the event's [`Engine::hashes`] already computed.
    pub fn apply_hashed(&mut self, ev: &LeadEvent<'_>, h: EventHashes, out: &mut impl FnMut(Transition)) -> Applied {
        self.apply_inner(ev, h, true, None, out)
    }

    /// `known`: where the caller just found the lead (`Some(None)`: not in the store), so that
    /// it is not looked up twice.
    fn apply_inner(
        &mut self,
        ev: &LeadEvent<'_>,
        h: EventHashes,
        check_duplicate: bool,
        known: Option<Option<u32>>,
        out: &mut impl FnMut(Transition),
    ) -> Applied {
        let t = ev.timestamp_ms;
        let (slot, mut new) = match known {
            Some(Some(slot)) => (slot, false),
            Some(None) => (self.store.insert_hashed(&ev.lead_id, h.lead, t), true),
            None => self.store.find_or_insert_hashed(&ev.lead_id, h.lead, t),
        };
        if !new && self.expired(slot) {
            // Forgotten (not yet swept) and back: it starts afresh (and what the changelog still
            // holds of its ids is deleted).
            self.forget_records(slot, false);
            self.store.reset(slot, t);
            new = true;
        }
        if !new && check_duplicate {
            if let Some(id_hash) = h.event_id {
                if self.is_remembered(slot, id_hash) {
                    return Applied::Duplicate;
                }
            }
        }
        // The lead's numbers, by column, for the rules to read and write; stored back once.
        let mut row = self.row.take().unwrap_or_else(|| Box::new([0; 64]));
        let mut mask = self.store.load_row(slot, &mut row);
        if !self.model.fits.is_empty() {
            if self.attrs.len() <= slot as usize {
                self.attrs.resize_with(slot as usize + 1, || None);
            }
            if new {
                self.attrs[slot as usize] = None;
                let fit = self.fit_sum(None);
                if fit != 0.0 {
                    row[self.col_fit] = fit.to_bits();
                    mask |= 1 << self.col_fit;
                }
            }
        }

        // Move the clock, or find the factor that brings a late event's points to it.
        let tau = self.store.cores[slot as usize].tau;
        let late_factor = if t >= tau {
            if t > tau {
                let d = decay(t - tau, self.half_life);
                let mut m = mask & self.decaying;
                while m != 0 {
                    let col = m.trailing_zeros() as usize;
                    row[col] = (f64::from_bits(row[col]) * d).to_bits();
                    m &= m - 1;
                }
                self.store.cores[slot as usize].tau = t;
            }
            1.0
        } else {
            decay(tau - t, self.half_life)
        };

        // Every matching rule, in file order.
        let model = &*self.model;
        self.scored.clear();
        if let Some(rules) = self.rules_by_type.get(ev.event_type.as_ref()) {
            // The value at the last property path looked into: the rules of one type mostly
            // read the same path.
            let mut last: Option<(usize, Option<Value<'_>>)> = None;
            for &ri in rules.rules.iter() {
                let rule = &model.rules[ri as usize];
                let holds = rule.when.iter().zip(&self.cond_path[ri as usize]).all(|(c, &pi)| {
                    if !matches!(&last, Some((p, _)) if *p == pi) {
                        last = Some((pi, ev.properties.as_ref().and_then(|p| p.get(&c.path))));
                    }
                    c.test.holds(last.as_ref().and_then(|(_, v)| v.as_ref()))
                });
                if !holds {
                    continue;
                }
                if let Some(limit) = rule.limit {
                    let col = self.limit_col[ri as usize];
                    let window = t.div_euclid(limit.per_ms) as u64;
                    let packed = if mask & (1 << col) != 0 { row[col] } else { NO_WINDOW };
                    let (state, scored) = if packed == NO_WINDOW || window > packed >> 16 {
                        (window << 16 | 1, true)
                    } else if window == packed >> 16 {
                        let count = packed & 0xffff;
                        (window << 16 | (count + 1).min(0xffff), count < u64::from(limit.count))
                    } else {
                        (packed, false)
                    };
                    row[col] = state;
                    mask |= 1 << col;
                    if !scored {
                        continue;
                    }
                }
                self.scored.push(ri as usize);
                self.rule_matches[ri as usize] += 1;
                let get = |col: usize| if mask & (1 << col) != 0 { f64::from_bits(row[col]) } else { 0.0 };
                let (col, value) = if !rule.decays {
                    (self.col_fixed, get(self.col_fixed) + rule.points)
                } else {
                    let p = if late_factor == 1.0 { rule.points } else { rule.points * late_factor };
                    match rule.group {
                        Some(g) => {
                            let group = &model.groups[g];
                            let total = get(COL_GROUPS + g) + p;
                            (COL_GROUPS + g, total.max(group.floor).min(group.cap))
                        }
                        None => (COL_UNGROUPED, get(COL_UNGROUPED) + p),
                    }
                };
                row[col] = value.to_bits();
                mask |= 1 << col;
            }
        }

        if ev.event_type == PROFILE_UPDATE && !model.fits.is_empty() {
            if let Some(props) = &ev.properties {
                let fit = self.merge_profile(slot, props);
                let had = if mask & (1 << self.col_fit) != 0 { f64::from_bits(row[self.col_fit]) } else { 0.0 };
                if fit != had {
                    row[self.col_fit] = fit.to_bits();
                    mask |= 1 << self.col_fit;
                }
            }
        }

        let core = self.store.cores[slot as usize];
        if let Some(id_hash) = h.event_id {
            let oldest = core.tau.saturating_sub(self.model.dedup_window_ms);
            self.store.ids_remember(slot, id_hash, core.tau, oldest);
            if !self.id_segments.is_empty() {
                if let Some(s) = self.id_segments.get_mut(&slot) {
                    s.open.push((id_hash, core.tau));
                }
            }
        }

        // The check, at a = max(τ, at of the previous transition).
        let a = core.tau.max(core.last_at);
        let (steady, e) = (self.steady_of(mask, &row), self.engagement_of(mask, &row));
        let score = self.score_from(steady, e, core.tau, a);
        let kind = if !core.qualified() && score >= self.model.qualify_at {
            Some(TransitionKind::Qualified)
        } else if core.qualified() && score < self.model.disqualify_below {
            Some(TransitionKind::Disqualified)
        } else {
            None
        };
        if let Some(kind) = kind {
            self.record_transition(slot, kind, a);
        }
        // The next decay-driven crossing, from the state after the check.
        let due = self.crossing_due_of(slot, steady, e);
        let timer = self.push_timer(slot, due, mask & (1 << self.col_timer) != 0, row[self.col_timer]);
        if let Some(due) = timer {
            row[self.col_timer] = due as u64;
            mask |= 1 << self.col_timer;
        }
        self.store.store_row(slot, mask, &row);
        self.row = Some(row);
        if let Some(kind) = kind {
            let trigger = Trigger {
                event_id: ev.event_id.as_deref().map(str::to_owned),
                event_type: ev.event_type.as_ref().to_owned(),
                rules: self.scored.clone(),
            };
            out(self.build_transition(slot, kind, a, score, Some(trigger)));
        }
        self.mark_dirty(slot);
        Applied::Accepted
    }

    /// Drops what the engine knows of the lead's changelog records and (with a journal)
    /// queues their deletion: its segment and bucket records, and its own record if `record`.
    fn forget_records(&mut self, slot: u32, record: bool) {
        let segments = self.id_segments.remove(&slot).map_or((0, 0), |s| (s.first, s.next()));
        let legacy_bits = self.legacy_buckets.remove(&slot).unwrap_or(0);
        if let (Some(j), true) = (&mut self.journal, record || segments.0 < segments.1 || legacy_bits > 0) {
            j.removed.push(Gone { lead: self.store.id(slot).into(), record, legacy_bits, segments });
        }
    }

    #[inline]
    fn mark_dirty(&mut self, slot: u32) {
        if let Some(j) = &mut self.journal {
            let core = &mut self.store.cores[slot as usize];
            if !core.dirty() {
                core.set_dirty(true);
                j.dirty.push(slot);
            }
        }
    }

    /// Merges a `profile_update`'s properties into the lead's attributes; returns the fit sum
    /// under the merged attributes.
    fn merge_profile(&mut self, slot: u32, props: &crate::event::Properties<'_>) -> f64 {
        let n_attrs = self.attr_names.len();
        let mut attrs = self.attrs[slot as usize].take().unwrap_or_else(|| vec![None; n_attrs].into_boxed_slice());
        let names = &self.attr_names;
        props.for_each_entry(|key, value| {
            if let Some(i) = names.iter().position(|n| *n == key) {
                attrs[i] = value.map(Attr::from_value);
            }
        });
        let fit = self.fit_sum(Some(&attrs));
        self.attrs[slot as usize] = Some(attrs);
        fit
    }

    /// The threshold a transition of this kind crosses.
    fn threshold(&self, kind: TransitionKind) -> f64 {
        match kind {
            TransitionKind::Qualified => self.model.qualify_at,
            TransitionKind::Disqualified => self.model.disqualify_below,
        }
    }

    /// Records a transition in the lead's state.
    fn record_transition(&mut self, slot: u32, kind: TransitionKind, at: i64) {
        let core = &mut self.store.cores[slot as usize];
        core.set_qualified(kind == TransitionKind::Qualified);
        core.last_at = at;
        core.transitions += 1;
        self.mark_dirty(slot);
    }

    /// The record of the transition just recorded.
    fn build_transition(
        &self,
        slot: u32,
        kind: TransitionKind,
        at: i64,
        score: f64,
        trigger: Option<Trigger>,
    ) -> Transition {
        Transition {
            kind,
            lead_id: self.store.id(slot).to_owned(),
            n: self.store.cores[slot as usize].transitions,
            at_ms: at,
            score,
            threshold: self.threshold(kind),
            trigger,
            breakdown: self.breakdown(slot, at),
        }
    }

    /// When decay alone takes the lead across a threshold: the crossing time rounded up to the
    /// millisecond, never before the lead's last check; `i64::MAX` when it never does.
    fn crossing_due_of(&self, slot: u32, steady: f64, e: f64) -> i64 {
        let core = &self.store.cores[slot as usize];
        // Solve steady + e·2^(-(t-τ)/h) = threshold for t.
        let threshold = if core.qualified() {
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
        // The offset from τ first, then τ added as an integer: τ + x in f64 rounds at the scale
        // of τ (2.4e-4 ms near today's epoch milliseconds), which can put the sum on the wrong
        // side of a whole millisecond.
        let dt = (self.half_life * (e / (threshold - steady)).log2()).ceil();
        if !dt.is_finite() || dt > (MAX_TIMESTAMP_MS - core.tau) as f64 {
            return i64::MAX;
        }
        let (tau, lo) = (core.tau, core.tau.max(core.last_at));
        let candidate = (tau + dt as i64).max(lo);
        // The formula is exact in real numbers; the score is evaluated in f64. The crossing is
        // the first whole millisecond at which the score *as evaluated* has reached the
        // threshold (`<=` sinking, `>=` rising), so that a check at that millisecond agrees with
        // it: the formula can be a millisecond off where the true crossing is within rounding of
        // a whole millisecond. The score is monotonic in t, so the answer is next to the formula.
        let qualified = core.qualified();
        let reached = |t: i64| {
            let s = self.score_from(steady, e, tau, t);
            if qualified {
                s <= threshold
            } else {
                s >= threshold
            }
        };
        let mut t = candidate;
        for _ in 0..CROSSING_SEARCH_MS {
            if reached(t) {
                for _ in 0..CROSSING_SEARCH_MS {
                    if t > lo && reached(t - 1) {
                        t -= 1;
                    } else {
                        break;
                    }
                }
                return t;
            }
            t += 1;
        }
        // Scores that move less than an ulp per millisecond (absurd half-lives): the formula.
        candidate
    }

    fn crossing_due(&self, slot: u32) -> i64 {
        self.crossing_due_of(slot, self.steady(slot), self.engagement(slot))
    }

    /// The clock at which `forget_after` removes the lead (`i64::MAX`: never).
    fn forget_due(&self, slot: u32) -> i64 {
        match self.model.forget_after_ms {
            // Removed once the clock is *more than* forget_after past τ.
            Some(f) => self.store.cores[slot as usize].tau.saturating_add(f).saturating_add(1),
            None => i64::MAX,
        }
    }

    /// Makes sure the heap holds an entry at or before the lead's next crossing `due`, given the
    /// timer it has (`has_timer`: the due time `current` of its entry). Entries are lazy: one
    /// that pops early (new points pushed the crossing later) is pushed again at the new time,
    /// so the heap holds about one entry per lead however many events the lead gets. Returns
    /// the lead's new timer when it pushed one.
    fn push_timer(&mut self, slot: u32, due: i64, has_timer: bool, current: u64) -> Option<i64> {
        // A crossing after the lead's removal never happens (at the same time: crossing first).
        if due == i64::MAX || due > self.forget_due(slot) {
            return None;
        }
        if has_timer && due >= current as i64 {
            return None;
        }
        self.timers.push(Reverse((due, slot, self.store.cores[slot as usize].gen)));
        Some(due)
    }

    /// [`Engine::push_timer`] for a stored lead.
    fn schedule(&mut self, slot: u32) {
        let due = self.crossing_due(slot);
        let has = self.store.row(slot).0 & (1 << self.col_timer) != 0;
        let current = self.store.get(slot, self.col_timer, 0);
        if let Some(due) = self.push_timer(slot, due, has, current) {
            self.store.set(slot, self.col_timer, due as u64);
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
                if core.live() && core.gen == gen && self.store.get(slot, self.col_timer, u64::MAX) == due as u64 {
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
        self.store.unset(slot, self.col_timer);
        let crossing = self.crossing_due(slot);
        if crossing <= due && crossing <= self.forget_due(slot) {
            let core = self.store.cores[slot as usize];
            let kind = if core.qualified() { TransitionKind::Disqualified } else { TransitionKind::Qualified };
            // A decay-driven transition reports the threshold itself as its score.
            self.record_transition(slot, kind, crossing);
            out(self.build_transition(slot, kind, crossing, self.threshold(kind), None));
        }
        self.schedule(slot);
    }

    /// Gives back the memory of leads that `forget_after` has removed (they are already
    /// invisible: see [`Engine::expired`]). Amortized: runs once per quarter of `forget_after`
    /// of clock.
    fn sweep(&mut self) {
        self.sweeps += 1;
        let expired: Vec<u32> = self.store.live_slots().filter(|&s| self.expired(s)).collect();
        for slot in expired {
            if let Some(a) = self.attrs.get_mut(slot as usize) {
                *a = None;
            }
            // Deleted from the changelog, with its id records.
            self.forget_records(slot, true);
            // Its heap entries die with the generation.
            self.store.remove(slot);
        }
    }

    /// Hands over the scored matches by rule (index into `Model::rules`) counted since the last
    /// call, and starts counting afresh: the service adds them to `leadscore_rule_matches_total`.
    pub fn take_rule_matches(&mut self, mut each: impl FnMut(usize, u64)) {
        for (rule, n) in self.rule_matches.iter_mut().enumerate() {
            if *n > 0 {
                each(rule, std::mem::take(n));
            }
        }
    }

    /// A lead's score, flag, clock and breakdown at `now`; `None` for a lead not in state.
    pub fn lead(&self, lead_id: &str, now: i64) -> Option<LeadView> {
        let slot = self.find(lead_id)?;
        let core = &self.store.cores[slot as usize];
        Some(LeadView {
            lead_id: lead_id.to_owned(),
            score: self.score_at(slot, now),
            qualified: core.qualified(),
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
        let mut sum = ExactSum::default();
        let (mut leads, mut qualified) = (0usize, 0usize);
        for slot in self.tracked_slots() {
            let s = self.score_at(slot, now);
            each(s);
            leads += 1;
            qualified += usize::from(self.store.cores[slot as usize].qualified());
            sum.add(s);
        }
        Totals { leads, qualified, score_sum: sum.value() }
    }

    /// Remembered event ids of tracked leads, expired ones not yet dropped included (for memory
    /// accounting and tests).
    pub fn remembered_event_ids(&self) -> usize {
        self.tracked_slots().map(|s| self.store.ids_entries(s).count()).sum()
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
        assert!(e.remembered_event_ids() < 3000, "old ids were dropped: {}", e.remembered_event_ids());
        // The busy lead's clock is 499.9 s: ids from the last 10 s are duplicates, older ones not.
        assert_eq!(e.apply_in_event_time(&ev("busy", 499_900, "e4990"), &mut out), Applied::Duplicate);
        assert_eq!(e.apply_in_event_time(&ev("busy", 499_900, "e10"), &mut out), Applied::Accepted);
        assert_eq!(e.apply_in_event_time(&ev("quiet", 0, "q"), &mut out), Applied::Duplicate);
    }

    #[test]
    fn exact_sum_is_python_fsum_and_independent_of_order() {
        let sum = |xs: &[f64]| {
            let mut s = ExactSum::default();
            xs.iter().for_each(|&x| s.add(x));
            s.value()
        };
        // Expected values from CPython's math.fsum.
        assert_eq!(sum(&[]), 0.0);
        assert_eq!(sum(&[0.1; 10]), 1.0);
        assert_eq!(sum(&[1e100, 1.0, -1e100, 1e-100, 1e50, -1.0, -1e50]), 1e-100);
        assert_eq!(sum(&[1.0, 1e-16, 1e-16]), 1.0000000000000002);
        assert_eq!(sum(&[2f64.powi(53), 1.0, 2f64.powi(-60)]), 9007199254740994.0);
        // A tie broken by a partial below it (the half-way correction).
        assert_eq!(sum(&[1.0, 2f64.powi(-53), 2f64.powi(-106)]), 1.0000000000000002);
        let mut xs: Vec<f64> = (0..1000u64).map(|i| ((i * 7919 % 1000) as f64 - 499.5) * 0.1234567).collect();
        let forward = sum(&xs);
        xs.reverse();
        assert_eq!(sum(&xs), forward);
        xs.sort_by(f64::total_cmp);
        assert_eq!(sum(&xs), forward);
    }
}
