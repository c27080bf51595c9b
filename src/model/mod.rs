//! The scoring model: what a TOML model file compiles to (spec section 3).
//!
//! [`parse`] turns TOML into a [`Model`], collecting every error with its location so that
//! `leadscore check` can list them all at once. The types here are the compiled, validated form
//! the engine reads: durations in milliseconds, groups referenced by index, regexes compiled,
//! absent caps and floors as infinities.

pub mod parse;

use std::borrow::Cow;
use std::path::Path;

pub use parse::{ModelError, ModelLoadError};

/// A compiled, valid scoring model.
#[derive(Debug, Clone)]
pub struct Model {
    /// Stamped on every output event (`model`).
    pub name: String,
    /// Stamped on every output event (`model_version`).
    pub version: String,
    /// `lead_qualified` when the score is `>= qualify_at` and the lead is not qualified.
    pub qualify_at: f64,
    /// `lead_disqualified` when qualified and the score is `< disqualify_below`.
    pub disqualify_below: f64,
    /// Half-life of engagement points, milliseconds (> 0).
    pub half_life_ms: i64,
    /// A lead with no event for longer than this is dropped from state; `None`: never.
    pub forget_after_ms: Option<i64>,
    /// How long an `event_id` is remembered, in event time (milliseconds, >= 0).
    pub dedup_window_ms: i64,
    /// Groups in file order; rules refer to them by index.
    pub groups: Vec<Group>,
    /// Engagement rules in file order (the order in which they apply).
    pub rules: Vec<Rule>,
    /// Fit rules in file order (the order in which their points are summed).
    pub fits: Vec<FitRule>,
}

/// A group of rules that share a cap (and optionally a floor) on their decayed total.
#[derive(Debug, Clone)]
pub struct Group {
    /// The `[group.<name>]` name; a key of the breakdown's `groups`.
    pub name: String,
    /// Upper clamp; `f64::INFINITY` when absent.
    pub cap: f64,
    /// Lower clamp; `f64::NEG_INFINITY` when absent.
    pub floor: f64,
}

/// An engagement rule: points for events of one type whose properties meet all conditions.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Unique id (across rules and fit rules).
    pub id: String,
    /// The event type it applies to.
    pub event: String,
    /// All must hold (an empty list always holds).
    pub when: Vec<Condition>,
    /// Points added on a scored match; may be negative. Finite.
    pub points: f64,
    /// Index into [`Model::groups`].
    pub group: Option<usize>,
    /// `false`: the points go to `fixed` and never decay (never grouped: `check` rejects that).
    pub decays: bool,
    /// At most `count` scored matches per lead per epoch-aligned window of `per_ms`.
    pub limit: Option<Limit>,
}

/// `limit = { count, per }` of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Scored matches allowed per window (1..=65535).
    pub count: u32,
    /// Window length in milliseconds (> 0); windows are `[k*per, (k+1)*per)`.
    pub per_ms: i64,
}

/// A condition of a rule's `when`: a path into the event's `properties` and a test.
#[derive(Debug, Clone)]
pub struct Condition {
    /// The path after `properties.`, split on dots (`properties.utm.source` -> `["utm", "source"]`).
    pub path: Vec<String>,
    /// What must hold for the value found there.
    pub test: Test,
}

/// A fit rule: points while a profile attribute meets a test. Fit points never decay.
#[derive(Debug, Clone)]
pub struct FitRule {
    /// Unique id; listed in the breakdown's `fit_rules` while it holds.
    pub id: String,
    /// The profile attribute it reads (a top-level key of `profile_update` properties).
    pub attribute: String,
    /// What must hold for the attribute.
    pub test: Test,
    /// Points while it holds; may be negative. Finite.
    pub points: f64,
}

/// A conjunction of operators; all must hold. Never empty after validation.
#[derive(Debug, Clone)]
pub struct Test {
    pub ops: Vec<Op>,
}

/// One condition operator (spec section 3).
#[derive(Debug, Clone)]
pub enum Op {
    /// Equal to a string, number (by value) or bool; never a string with a number.
    Equals(Scalar),
    /// Equal to any of the listed values.
    In(Vec<Scalar>),
    /// A string starting with this.
    Prefix(String),
    /// A string containing this.
    Contains(String),
    /// A string the regex matches anywhere in.
    Matches(regex::Regex),
    /// A number in `[lo, hi]`, inclusive.
    Between(f64, f64),
    /// `true`: present; `false`: absent.
    Exists(bool),
}

/// A literal in a model: string, number or bool.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Str(String),
    Num(f64),
    Bool(bool),
}

/// A value found in an event's properties or a lead's attributes, as conditions see it.
///
/// `null` is never represented: a `null` value counts as absent (documented in the README).
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Str(Cow<'a, str>),
    Num(f64),
    Bool(bool),
    /// An array or object: present (so `exists = true` holds), but no other operator holds.
    Composite,
}

impl Scalar {
    fn equals(&self, v: &Value<'_>) -> bool {
        match (self, v) {
            (Scalar::Str(a), Value::Str(b)) => a == b.as_ref(),
            (Scalar::Num(a), Value::Num(b)) => a == b,
            (Scalar::Bool(a), Value::Bool(b)) => a == b,
            _ => false,
        }
    }
}

impl Op {
    /// Does this operator hold for `value` (`None`: the path is absent)?
    pub fn holds(&self, value: Option<&Value<'_>>) -> bool {
        let Some(v) = value else {
            return matches!(self, Op::Exists(false));
        };
        match self {
            Op::Exists(e) => *e,
            Op::Equals(s) => s.equals(v),
            Op::In(list) => list.iter().any(|s| s.equals(v)),
            Op::Prefix(p) => matches!(v, Value::Str(s) if s.starts_with(p.as_str())),
            Op::Contains(p) => matches!(v, Value::Str(s) if s.contains(p.as_str())),
            Op::Matches(re) => matches!(v, Value::Str(s) if re.is_match(s)),
            Op::Between(lo, hi) => matches!(v, Value::Num(n) if *lo <= *n && *n <= *hi),
        }
    }
}

impl Test {
    /// All operators hold for `value`.
    pub fn holds(&self, value: Option<&Value<'_>>) -> bool {
        self.ops.iter().all(|op| op.holds(value))
    }
}

impl Model {
    /// Parses and validates a model from TOML text; on failure, every error found.
    pub fn from_toml(src: &str) -> Result<Model, Vec<ModelError>> {
        parse::parse_model(src)
    }

    /// Reads and compiles a model file.
    pub fn load(path: &Path) -> Result<Model, ModelLoadError> {
        let src = std::fs::read_to_string(path)
            .map_err(|e| ModelLoadError::Io { path: path.display().to_string(), error: e.to_string() })?;
        Model::from_toml(&src).map_err(|errors| ModelLoadError::Invalid { path: path.display().to_string(), errors })
    }
}
