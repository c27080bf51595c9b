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
    Between(Number, Number),
    /// `true`: present; `false`: absent.
    Exists(bool),
}

/// A literal in a model: string, number or bool.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Str(String),
    Num(Number),
    Bool(bool),
}

/// A number as written: an integer literal (of at most 64 bits) or anything else as the nearest
/// `f64`. Numbers compare by mathematical value: two integers exactly, an integer and a float
/// exactly too (`9007199254740993` is not `9007199254740992.0`, as in Python), so an integer
/// beyond 2^53 is never rounded before it is compared. Integers beyond the 64-bit range are read
/// as floats.
#[derive(Debug, Clone, Copy)]
pub enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    /// The order of two numbers by value; `None` only with a NaN (which neither JSON nor a
    /// model can hold).
    pub fn cmp_value(self, other: Number) -> Option<std::cmp::Ordering> {
        match (self, other) {
            (Number::Int(a), Number::Int(b)) => Some(a.cmp(&b)),
            (Number::Float(a), Number::Float(b)) => a.partial_cmp(&b),
            (Number::Int(a), Number::Float(b)) => cmp_int_float(a, b),
            (Number::Float(a), Number::Int(b)) => cmp_int_float(b, a).map(std::cmp::Ordering::reverse),
        }
    }

    /// The nearest `f64` (for display and for numbers that are only ever floats).
    pub fn to_f64(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }

    /// Reads a JSON number's text (valid JSON number syntax): an integer literal that fits 64
    /// bits as [`Number::Int`], anything else as the nearest `f64`.
    pub fn parse_json(raw: &str) -> Option<Number> {
        if !raw.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) {
            if let Ok(i) = raw.parse::<i64>() {
                return Some(Number::Int(i));
            }
        }
        raw.parse::<f64>().ok().map(Number::Float)
    }
}

/// An integer against a float, exactly.
fn cmp_int_float(i: i64, f: f64) -> Option<std::cmp::Ordering> {
    use std::cmp::Ordering;
    if f.is_nan() {
        return None;
    }
    // 2^63 is exactly representable; every float at or above it is above every i64, and every
    // float below -2^63 below. In between, the float's integer part is exact as an i64.
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if f >= TWO_63 {
        return Some(Ordering::Less);
    }
    if f < -TWO_63 {
        return Some(Ordering::Greater);
    }
    let whole = f.trunc();
    Some(i.cmp(&(whole as i64)).then_with(|| 0.0f64.partial_cmp(&(f - whole)).unwrap_or(Ordering::Equal)))
}

impl PartialEq for Number {
    /// Equal by value: `Int(2) == Float(2.0)`.
    fn eq(&self, other: &Number) -> bool {
        self.cmp_value(*other) == Some(std::cmp::Ordering::Equal)
    }
}

impl From<f64> for Number {
    fn from(f: f64) -> Number {
        Number::Float(f)
    }
}

impl From<i64> for Number {
    fn from(i: i64) -> Number {
        Number::Int(i)
    }
}

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Number::Int(i) => write!(f, "{i}"),
            Number::Float(x) => write!(f, "{x}"),
        }
    }
}

/// A value found in an event's properties or a lead's attributes, as conditions see it.
///
/// `null` is never represented: a `null` value counts as absent (documented in the README).
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Str(Cow<'a, str>),
    Num(Number),
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
            Op::Between(lo, hi) => {
                use std::cmp::Ordering::Greater;
                let at_most = |a: Number, b: Number| a.cmp_value(b).is_some_and(|o| o != Greater);
                matches!(v, Value::Num(n) if at_most(*lo, *n) && at_most(*n, *hi))
            }
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

#[cfg(test)]
mod tests {
    use super::Number::{Float, Int};
    use super::*;
    use std::cmp::Ordering::{Equal, Greater, Less};

    #[test]
    fn numbers_compare_by_value_exactly() {
        let big = 1i64 << 53;
        let cases = [
            (Int(2), Float(2.0), Equal),
            (Int(0), Float(-0.0), Equal),
            (Int(big + 1), Float(big as f64), Greater),
            (Int(big), Float(big as f64), Equal),
            (Int(big + 1), Int(big), Greater),
            (Int(3), Float(2.5), Greater),
            (Int(-3), Float(-2.5), Less),
            (Int(-2), Float(-2.5), Greater),
            (Int(i64::MAX), Float(9_223_372_036_854_775_808.0), Less),
            (Int(i64::MIN), Float(-9_223_372_036_854_775_808.0), Equal),
            (Int(i64::MIN), Float(-9_223_372_036_854_777_856.0), Greater),
            (Int(i64::MAX), Float(f64::INFINITY), Less),
            (Int(i64::MIN), Float(f64::NEG_INFINITY), Greater),
            (Float(0.1), Float(0.1), Equal),
        ];
        for (a, b, want) in cases {
            assert_eq!(a.cmp_value(b), Some(want), "{a:?} vs {b:?}");
            assert_eq!(b.cmp_value(a), Some(want.reverse()), "{b:?} vs {a:?}");
        }
        assert_eq!(Int(1).cmp_value(Float(f64::NAN)), None);
    }

    #[test]
    fn json_numbers_keep_integers() {
        assert_eq!(format!("{:?}", Number::parse_json("9007199254740993")), "Some(Int(9007199254740993))");
        assert_eq!(format!("{:?}", Number::parse_json("-0")), "Some(Int(0))");
        assert_eq!(format!("{:?}", Number::parse_json("1.0")), "Some(Float(1.0))");
        assert_eq!(format!("{:?}", Number::parse_json("1e2")), "Some(Float(100.0))");
        assert_eq!(format!("{:?}", Number::parse_json("18446744073709551616")), "Some(Float(1.8446744073709552e19))");
        assert_eq!(format!("{:?}", Number::parse_json("1e400")), "Some(Float(inf))");
        let equals = Op::Equals(Scalar::Num(Int((1 << 53) + 1)));
        assert!(!equals.holds(Some(&Value::Num(Number::parse_json("9007199254740992").unwrap()))));
        assert!(equals.holds(Some(&Value::Num(Number::parse_json("9007199254740993").unwrap()))));
        let between = Op::Between(Int(1), Float(2.5));
        assert!(between.holds(Some(&Value::Num(Float(2.5)))) && between.holds(Some(&Value::Num(Int(1)))));
        assert!(!between.holds(Some(&Value::Num(Int(3)))) && !between.holds(Some(&Value::Num(Float(0.999)))));
    }
}
