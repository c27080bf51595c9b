//! TOML model parsing and validation (spec section 3).
//!
//! The file is parsed with `toml_edit`, which keeps the byte span of every key and value, and the
//! document is then walked by hand instead of being deserialized: a serde derive stops at the first
//! problem, while `leadscore check` must list every one of them, each with its line, column and
//! path in the model (`rule[2].when."properties.path".prefix`). The walk never stops early: a bad
//! value is reported and replaced by a harmless default so that the rest is still checked, and the
//! compiled [`Model`] is returned only when no error was found.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use toml_edit::{Document, Item, TableLike, Value};

use super::{Condition, FitRule, Group, Limit, Model, Number, Op, Rule, Scalar, Test};
use crate::time::parse_duration_ms;

/// One error in a model file, with its location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters (not bytes) from the start of the line.
    pub column: usize,
    /// Where in the model (`rule[2].when."properties.path"`); empty for a TOML syntax error.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ModelError {
    /// `line:column: path: message` (`line:column: message` when there is no path).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}:{}: {}", self.line, self.column, self.message)
        } else {
            write!(f, "{}:{}: {}: {}", self.line, self.column, self.path, self.message)
        }
    }
}

/// A model file that could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ModelLoadError {
    #[error("cannot read model {path}: {error}")]
    Io { path: String, error: String },
    #[error("model {path} has {} error(s)", errors.len())]
    Invalid { path: String, errors: Vec<ModelError> },
}

/// Renders errors the way `leadscore check` prints them, one line each:
/// `PATH:LINE:COLUMN: error: MESSAGE (at MODELPATH)` (the `(at ...)` part is left out for a TOML
/// syntax error, which has no model path). `path` is the model file as the user named it.
pub fn render_errors(path: &str, errors: &[ModelError]) -> String {
    let mut out = String::new();
    for e in errors {
        out.push_str(&format!("{path}:{}:{}: error: {}", e.line, e.column, e.message));
        if !e.path.is_empty() {
            out.push_str(&format!(" (at {})", e.path));
        }
        out.push('\n');
    }
    out
}

/// Parses and validates a model; on failure, every error found, in file order.
pub(crate) fn parse_model(src: &str) -> Result<Model, Vec<ModelError>> {
    let mut cx = Checker::new(src);
    let doc = match Document::parse(src) {
        Ok(doc) => doc,
        Err(e) => {
            // toml_edit stops at the first syntax error: the rest of the file cannot be trusted.
            let span = e.span();
            cx.error(span, "", format!("TOML syntax error: {}", e.message().trim()));
            return Err(cx.errors);
        }
    };
    let root = Tab { t: doc.as_table(), span: None, path: String::new() };
    let model = cx.model(&root);
    if cx.errors.is_empty() {
        Ok(model)
    } else {
        // Sorted by position so that `check` reads like the file; the sort is stable, so errors
        // at one spot keep the order they were found in.
        cx.errors.sort_by_key(|e| (e.line, e.column));
        Err(cx.errors)
    }
}

type Span = Option<Range<usize>>;

const TOP_KEYS: &[&str] = &["name", "version", "score", "group", "rule", "fit"];
const SCORE_KEYS: &[&str] = &["qualify_at", "disqualify_below", "half_life", "forget_after", "dedup_window"];
const GROUP_KEYS: &[&str] = &["cap", "floor"];
const RULE_KEYS: &[&str] = &["id", "event", "when", "points", "group", "decays", "limit"];
const LIMIT_KEYS: &[&str] = &["count", "per"];
const OP_KEYS: &[&str] = &["equals", "in", "prefix", "contains", "matches", "between", "exists"];
const FIT_KEYS: &[&str] =
    &["id", "attribute", "points", "equals", "in", "prefix", "contains", "matches", "between", "exists"];

/// Longest event type the input accepts (spec section 2): a longer rule `event` could never match.
const MAX_EVENT_TYPE_BYTES: usize = 64;
const DEFAULT_DEDUP_WINDOW_MS: i64 = 86_400_000;
const DURATION_FORM: &str =
    "a duration is a string of a non-negative number and a unit s, m, h, d or w, like \"14d\" or \"1.5h\", \
     that is a whole number of milliseconds";

/// A table being walked (a `[table]`, an inline `{ ... }` or a dotted-key table).
struct Tab<'d> {
    t: &'d dyn TableLike,
    /// Where to point when something inside is missing: the header or the inline table, else the
    /// key that introduced it; `None` for the root (reported at 1:1).
    span: Span,
    path: String,
}

/// A key and its value inside a table being walked.
struct Ent<'d> {
    item: &'d Item,
    key_span: Span,
    path: String,
}

impl Ent<'_> {
    /// The value's location, or its key's when the value has none (implicit or dotted tables).
    fn span(&self) -> Span {
        self.item.span().or_else(|| self.key_span.clone())
    }

    /// The key's location (where an unknown key is reported).
    fn key_span(&self) -> Span {
        self.key_span.clone().or_else(|| self.item.span())
    }
}

/// A `when` key whose value TOML built from an unquoted dotted key (`properties.path = ...` is
/// the table `properties` holding `path`): the path and the operators cannot be told apart. A
/// quoted path whose operators are written as dotted keys (`"properties.path".prefix = ...`) is
/// an ordinary table of operators.
fn is_nested_path(key: &str, e: &Ent<'_>) -> bool {
    e.item.as_table_like().is_some_and(|t| t.is_dotted()) && !key.starts_with("properties.")
}

fn entries<'d>(t: &Tab<'d>) -> Vec<(&'d str, Ent<'d>)> {
    let table: &'d dyn TableLike = t.t;
    table
        .iter()
        .map(|(k, item)| {
            let key_span = table.key(k).and_then(|key| key.span());
            (k, Ent { item, key_span, path: join(&t.path, k) })
        })
        .collect()
}

fn get<'d>(t: &Tab<'d>, key: &str) -> Option<Ent<'d>> {
    let table: &'d dyn TableLike = t.t;
    table.get_key_value(key).map(|(k, item)| Ent { item, key_span: k.span(), path: join(&t.path, key) })
}

/// A key as it appears in a path: bare when TOML allows it bare, quoted otherwise.
fn key_segment(k: &str) -> String {
    if !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        k.to_string()
    } else {
        format!("{k:?}")
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key_segment(key)
    } else {
        format!("{path}.{}", key_segment(key))
    }
}

fn describe(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
        Item::Value(v) => describe_value(v),
    }
}

fn describe_value(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "a table",
    }
}

/// Levenshtein distance, for "did you mean" hints on unknown keys (keys are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The one-line gist of a `regex` error (its `Display` draws the pattern and a caret over
/// several lines, which would break `check`'s one-line-per-error output).
fn regex_error_text(e: &regex::Error) -> String {
    let full = e.to_string();
    if !full.contains('\n') {
        return full;
    }
    full.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: ").map(str::to_string))
        .unwrap_or_else(|| full.split_whitespace().collect::<Vec<_>>().join(" "))
}

struct Checker<'s> {
    src: &'s str,
    line_starts: Vec<usize>,
    errors: Vec<ModelError>,
}

impl<'s> Checker<'s> {
    fn new(src: &'s str) -> Self {
        let line_starts = std::iter::once(0).chain(src.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Checker { src, line_starts, errors: Vec::new() }
    }

    /// 1-based line and column (in characters) of a byte offset.
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.src.len());
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self.line_starts[line - 1];
        let column = match self.src.get(start..offset) {
            Some(s) => s.chars().count(),
            None => offset - start,
        };
        (line, column + 1)
    }

    fn error(&mut self, span: Span, path: &str, message: impl Into<String>) {
        let (line, column) = self.position(span.map_or(0, |r| r.start));
        self.errors.push(ModelError { line, column, path: path.to_string(), message: message.into() });
    }

    fn type_error(&mut self, e: &Ent<'_>, expected: &str) {
        let mut msg = format!("expected {expected}, found {}", describe(e.item));
        if let Item::Value(Value::Datetime(d)) = e.item {
            if expected.contains("string") {
                msg.push_str(&format!(" (quote it: \"{}\")", d.value()));
            }
        }
        self.error(e.span(), &e.path, msg);
    }

    fn unknown_keys(&mut self, t: &Tab<'_>, allowed: &[&str], what: &str) {
        for (k, e) in entries(t) {
            if allowed.contains(&k) {
                continue;
            }
            let mut msg = format!("unknown key `{k}` in {what}");
            if let Some(near) = allowed.iter().find(|a| edit_distance(k, a) <= 2 && k.len() > 2) {
                msg.push_str(&format!(" (did you mean `{near}`?)"));
            }
            msg.push_str(&format!("; allowed keys: {}", allowed.join(", ")));
            self.error(e.key_span(), &e.path, msg);
        }
    }

    fn required<'d>(&mut self, t: &Tab<'d>, key: &str, what: &str) -> Option<Ent<'d>> {
        let found = get(t, key);
        if found.is_none() {
            self.error(t.span.clone(), &join(&t.path, key), format!("missing required key `{key}` ({what})"));
        }
        found
    }

    fn table<'d>(&mut self, e: &Ent<'d>, expected: &str) -> Option<Tab<'d>> {
        match e.item.as_table_like() {
            Some(t) => Some(Tab { t, span: e.span(), path: e.path.clone() }),
            None => {
                self.type_error(e, expected);
                None
            }
        }
    }

    fn value<'d>(&mut self, e: &Ent<'d>, expected: &str) -> Option<&'d Value> {
        match e.item {
            Item::Value(v) => Some(v),
            _ => {
                self.type_error(e, expected);
                None
            }
        }
    }

    fn string<'d>(&mut self, e: &Ent<'d>) -> Option<&'d str> {
        match e.item {
            Item::Value(Value::String(s)) => Some(s.value().as_str()),
            _ => {
                self.type_error(e, "a string");
                None
            }
        }
    }

    fn nonempty_string(&mut self, e: &Ent<'_>) -> Option<String> {
        match e.item {
            Item::Value(Value::String(s)) if s.value().is_empty() => {
                self.error(e.span(), &e.path, "expected a non-empty string, found an empty one");
                None
            }
            Item::Value(Value::String(s)) => Some(s.value().clone()),
            _ => {
                self.type_error(e, "a non-empty string");
                None
            }
        }
    }

    fn number(&mut self, e: &Ent<'_>) -> Option<f64> {
        match e.item {
            Item::Value(v) => self.number_value(v, e.span(), &e.path).map(Number::to_f64),
            _ => {
                self.type_error(e, "a number");
                None
            }
        }
    }

    /// An integer or a finite float (TOML integers are numbers wherever one is expected).
    fn number_value(&mut self, v: &Value, fallback: Span, path: &str) -> Option<Number> {
        let span = v.span().or(fallback);
        match v {
            Value::Integer(i) => Some(Number::Int(*i.value())),
            Value::Float(f) if f.value().is_finite() => Some(Number::Float(*f.value())),
            Value::Float(f) => {
                self.error(span, path, format!("expected a finite number, found {}", f.value()));
                None
            }
            other => {
                self.error(span, path, format!("expected a number, found {}", describe_value(other)));
                None
            }
        }
    }

    fn boolean(&mut self, e: &Ent<'_>) -> Option<bool> {
        match e.item {
            Item::Value(Value::Boolean(b)) => Some(*b.value()),
            _ => {
                self.type_error(e, "a boolean (true or false)");
                None
            }
        }
    }

    /// A duration string in milliseconds; `Some(0)` only when `allow_zero`.
    fn duration(&mut self, e: &Ent<'_>, allow_zero: bool) -> Option<i64> {
        let Item::Value(Value::String(s)) = e.item else {
            self.type_error(e, "a duration string like \"14d\"");
            return None;
        };
        match parse_duration_ms(s.value()) {
            None => {
                let msg = format!("invalid duration {:?}: {DURATION_FORM}", s.value());
                self.error(e.span(), &e.path, msg);
                None
            }
            Some(0) if !allow_zero => {
                self.error(e.span(), &e.path, "must be a duration greater than zero");
                None
            }
            Some(ms) => Some(ms),
        }
    }

    /// A string, number or bool literal (`equals`, `in` elements, bare `when` values).
    fn scalar(&mut self, v: &Value, fallback: Span, path: &str) -> Option<Scalar> {
        match v {
            Value::String(s) => Some(Scalar::Str(s.value().clone())),
            Value::Boolean(b) => Some(Scalar::Bool(*b.value())),
            Value::Integer(_) | Value::Float(_) => self.number_value(v, fallback, path).map(Scalar::Num),
            other => {
                let msg = format!("expected a string, number or boolean, found {}", describe_value(other));
                self.error(v.span().or(fallback), path, msg);
                None
            }
        }
    }

    fn model(&mut self, root: &Tab<'_>) -> Model {
        self.unknown_keys(root, TOP_KEYS, "the model's top level");
        let name = self.required(root, "name", "the model's name, stamped on every output event");
        let name = name.and_then(|e| self.nonempty_string(&e)).unwrap_or_default();
        let version = self.required(root, "version", "the model's version, stamped on every output event");
        let version = version.and_then(|e| self.nonempty_string(&e)).unwrap_or_default();
        let score = self.score(root);
        let groups = self.groups(root);
        let mut ids = HashMap::new();
        let rules = self.rules(root, &groups, &mut ids);
        let fits = self.fits(root, &mut ids);
        let columns = groups.len() + rules.iter().filter(|r| r.limit.is_some()).count();
        if columns > crate::engine::MAX_GROUPS_AND_LIMITS {
            self.error(
                Some(0..0),
                "",
                format!(
                    "{} groups and {} limited rules: at most {} together (each is a number kept per lead)",
                    groups.len(),
                    columns - groups.len(),
                    crate::engine::MAX_GROUPS_AND_LIMITS
                ),
            );
        }
        Model {
            name,
            version,
            qualify_at: score.qualify_at,
            disqualify_below: score.disqualify_below,
            half_life_ms: score.half_life_ms,
            forget_after_ms: score.forget_after_ms,
            dedup_window_ms: score.dedup_window_ms,
            groups,
            rules,
            fits,
        }
    }

    fn score(&mut self, root: &Tab<'_>) -> ScoreSection {
        let mut s = ScoreSection {
            qualify_at: 0.0,
            disqualify_below: 0.0,
            half_life_ms: 1,
            forget_after_ms: None,
            dedup_window_ms: DEFAULT_DEDUP_WINDOW_MS,
        };
        let Some(e) = self.required(root, "score", "the [score] table, with qualify_at and half_life") else {
            return s;
        };
        let Some(t) = self.table(&e, "the [score] table") else {
            return s;
        };
        self.unknown_keys(&t, SCORE_KEYS, "[score]");
        let qualify_at = self.required(&t, "qualify_at", "a number: the qualification threshold");
        let qualify_at = qualify_at.and_then(|e| self.number(&e));
        s.qualify_at = qualify_at.unwrap_or(0.0);
        s.disqualify_below = s.qualify_at;
        if let Some(e) = get(&t, "disqualify_below") {
            if let Some(below) = self.number(&e) {
                if let Some(at) = qualify_at.filter(|at| below > *at) {
                    let msg = format!(
                        "disqualify_below ({below}) must not be greater than qualify_at ({at}): \
                         a qualified lead would have to fall below a score it never had to reach"
                    );
                    self.error(e.span(), &e.path, msg);
                }
                s.disqualify_below = below;
            }
        }
        let half_life = self.required(&t, "half_life", "a duration like \"14d\": the decay of engagement points");
        s.half_life_ms = half_life.and_then(|e| self.duration(&e, false)).unwrap_or(1);
        if let Some(e) = get(&t, "forget_after") {
            s.forget_after_ms = self.duration(&e, false);
        }
        if let Some(e) = get(&t, "dedup_window") {
            s.dedup_window_ms = self.duration(&e, true).unwrap_or(DEFAULT_DEDUP_WINDOW_MS);
        }
        s
    }

    fn groups(&mut self, root: &Tab<'_>) -> Vec<Group> {
        let Some(e) = get(root, "group") else {
            return Vec::new();
        };
        let Some(t) = self.table(&e, "a table of groups, like [group.web]") else {
            return Vec::new();
        };
        let mut groups = Vec::new();
        for (name, ge) in entries(&t) {
            // Every declared name is kept, even an invalid group's, so that the rules naming it
            // are not also reported as naming an unknown group.
            let mut group = Group { name: name.to_string(), cap: f64::INFINITY, floor: f64::NEG_INFINITY };
            if name.is_empty() {
                self.error(ge.key_span(), &ge.path, "a group name must not be empty");
            }
            if let Some(gt) = self.table(&ge, "a group table with optional cap and floor, like [group.web]") {
                self.unknown_keys(&gt, GROUP_KEYS, &format!("[group.{}]", key_segment(name)));
                let cap = get(&gt, "cap");
                let cap_span = cap.as_ref().map(|c| (c.span(), c.path.clone()));
                let cap = cap.and_then(|e| self.number(&e));
                let floor = get(&gt, "floor");
                let floor_span = floor.as_ref().map(|f| (f.span(), f.path.clone()));
                let floor = floor.and_then(|e| self.number(&e));
                // Decay moves a total towards 0, so a cap below 0 or a floor above 0 could not
                // hold between events: reject them rather than promise a bound that decays away.
                if let (Some(cap), Some((span, path))) = (cap, cap_span) {
                    if cap < 0.0 {
                        self.error(span, &path, format!("cap ({cap}) must not be negative: totals decay towards 0"));
                    }
                }
                if let (Some(floor), Some((span, path))) = (floor, floor_span) {
                    if floor > 0.0 {
                        self.error(
                            span,
                            &path,
                            format!("floor ({floor}) must not be positive: totals decay towards 0"),
                        );
                    }
                }
                group.cap = cap.unwrap_or(f64::INFINITY);
                group.floor = floor.unwrap_or(f64::NEG_INFINITY);
            }
            groups.push(group);
        }
        groups
    }

    /// The tables of `[[rule]]` / `[[fit]]` (or of an inline array of inline tables).
    fn table_array<'d>(&mut self, e: &Ent<'d>, header: &str) -> Vec<Tab<'d>> {
        let expected = format!("an array of tables, written [[{header}]]");
        match e.item {
            Item::ArrayOfTables(a) => a
                .iter()
                .enumerate()
                .map(|(i, t)| Tab {
                    t: t as &dyn TableLike,
                    span: t.span().or_else(|| e.key_span.clone()),
                    path: format!("{}[{i}]", e.path),
                })
                .collect(),
            Item::Value(Value::Array(a)) => {
                let mut out = Vec::new();
                for (i, v) in a.iter().enumerate() {
                    let path = format!("{}[{i}]", e.path);
                    match v {
                        Value::InlineTable(t) => out.push(Tab { t, span: t.span().or_else(|| e.span()), path }),
                        other => {
                            let msg = format!("expected a table, found {}", describe_value(other));
                            self.error(v.span().or_else(|| e.span()), &path, msg);
                        }
                    }
                }
                out
            }
            Item::Table(_) | Item::Value(Value::InlineTable(_)) => {
                let msg = format!("expected {expected}, found a single table: write [[{header}]], not [{header}]");
                self.error(e.span(), &e.path, msg);
                Vec::new()
            }
            _ => {
                self.type_error(e, &expected);
                Vec::new()
            }
        }
    }

    /// Records a rule or fit id; reports a duplicate at its second use.
    fn unique_id(&mut self, ids: &mut HashMap<String, String>, e: &Ent<'_>, owner: &str) -> String {
        let Some(id) = self.nonempty_string(e) else {
            return String::new();
        };
        if let Some(first) = ids.get(&id) {
            let msg =
                format!("duplicate id {id:?}: already used by {first} (ids are unique across rules and fit rules)");
            self.error(e.span(), &e.path, msg);
        } else {
            ids.insert(id.clone(), owner.to_string());
        }
        id
    }

    fn rules(&mut self, root: &Tab<'_>, groups: &[Group], ids: &mut HashMap<String, String>) -> Vec<Rule> {
        let Some(e) = get(root, "rule") else {
            return Vec::new();
        };
        let tables = self.table_array(&e, "rule");
        tables.iter().map(|t| self.rule(t, groups, ids)).collect()
    }

    fn rule(&mut self, t: &Tab<'_>, groups: &[Group], ids: &mut HashMap<String, String>) -> Rule {
        self.unknown_keys(t, RULE_KEYS, "a [[rule]]");
        let id = self.required(t, "id", "a unique non-empty string");
        let id = id.map(|e| self.unique_id(ids, &e, &t.path)).unwrap_or_default();
        let event = self.required(t, "event", "the event type the rule applies to");
        let event = event.and_then(|e| {
            let s = self.nonempty_string(&e)?;
            if s.len() > MAX_EVENT_TYPE_BYTES {
                let msg = format!(
                    "an event type is at most {MAX_EVENT_TYPE_BYTES} bytes (this one is {}): no event could match it",
                    s.len()
                );
                self.error(e.span(), &e.path, msg);
            }
            Some(s)
        });
        let points = self.required(t, "points", "a number, may be negative");
        let points = points.and_then(|e| self.number(&e)).unwrap_or(0.0);
        let decays_ent = get(t, "decays");
        let decays = decays_ent.as_ref().and_then(|e| self.boolean(e)).unwrap_or(true);
        let mut group = None;
        if let Some(ge) = get(t, "group") {
            if let Some(name) = self.string(&ge) {
                group = groups.iter().position(|g| g.name == name);
                if group.is_none() {
                    let declared = if groups.is_empty() {
                        "no groups are declared".to_string()
                    } else {
                        let names: Vec<String> = groups.iter().map(|g| key_segment(&g.name)).collect();
                        format!("declared groups: {}", names.join(", "))
                    };
                    self.error(
                        ge.span(),
                        &ge.path,
                        format!("unknown group {name:?} (declare it as [group.{}]); {declared}", key_segment(name)),
                    );
                }
                if !decays {
                    if let Some(de) = &decays_ent {
                        let msg = format!(
                            "decays = false cannot be combined with group = {name:?}: fixed points never \
                             decay, so a decaying group's cap and floor cannot bound them"
                        );
                        self.error(de.span(), &de.path, msg);
                    }
                }
            }
        }
        let limit = get(t, "limit").and_then(|e| self.limit(&e));
        let when = match get(t, "when") {
            Some(e) => self.when(&e),
            None => Vec::new(),
        };
        Rule { id, event: event.unwrap_or_default(), when, points, group, decays, limit }
    }

    fn limit(&mut self, e: &Ent<'_>) -> Option<Limit> {
        let t = self.table(e, "a table like { count = 3, per = \"1h\" }")?;
        self.unknown_keys(&t, LIMIT_KEYS, "a rule's limit");
        let count = self.required(&t, "count", "an integer from 1 to 65535");
        let count = count.and_then(|ce| match ce.item {
            Item::Value(Value::Integer(i)) if (1..=65_535).contains(i.value()) => Some(*i.value() as u32),
            Item::Value(Value::Integer(i)) => {
                let msg = format!("count must be from 1 to 65535, found {}", i.value());
                self.error(ce.span(), &ce.path, msg);
                None
            }
            _ => {
                self.type_error(&ce, "an integer from 1 to 65535");
                None
            }
        });
        let per = self.required(&t, "per", "a duration like \"1h\": the length of a window");
        let per = per.and_then(|pe| self.duration(&pe, false));
        Some(Limit { count: count?, per_ms: per? })
    }

    fn when(&mut self, e: &Ent<'_>) -> Vec<Condition> {
        let Some(t) = self.table(e, "a table of conditions, like { \"properties.path\" = { prefix = \"/pricing\" } }")
        else {
            return Vec::new();
        };
        let mut conditions = Vec::new();
        for (k, ce) in entries(&t) {
            let nested = is_nested_path(k, &ce);
            let path = self.condition_path(k, &ce);
            if nested {
                // Its value is TOML's nesting of the dotted key, not a table of operators.
                continue;
            }
            let test = self.condition_value(&ce);
            if let (Some(path), Some(test)) = (path, test) {
                conditions.push(Condition { path, test });
            }
        }
        conditions
    }

    fn condition_path(&mut self, key: &str, e: &Ent<'_>) -> Option<Vec<String>> {
        if is_nested_path(key, e) {
            // `properties.path = ...` unquoted is a dotted key: TOML nests it, so the path and the
            // operators would be indistinguishable. Ask for the quoted form instead of guessing.
            let msg = "a condition path is one quoted key: write \"properties.path\" = ..., with the quotes";
            self.error(e.key_span(), &e.path, msg);
            return None;
        }
        let segments: Option<Vec<String>> = key
            .strip_prefix("properties.")
            .map(|rest| rest.split('.').map(str::to_string).collect::<Vec<_>>())
            .filter(|segs| segs.iter().all(|s| !s.is_empty()));
        if segments.is_none() {
            let msg = format!(
                "a condition key is a path into the event's properties: \"properties.\" followed by \
                 non-empty dot-separated names, like \"properties.path\"; found {key:?}"
            );
            self.error(e.key_span(), &e.path, msg);
        }
        segments
    }

    /// A `when` value: a bare scalar (equals) or a table of operators.
    fn condition_value(&mut self, e: &Ent<'_>) -> Option<Test> {
        match e.item {
            Item::Value(Value::Array(_)) => {
                let msg = "a bare array is not a condition: write { in = [...] } for a list of values, \
                           or { between = [lo, hi] } for a range";
                self.error(e.span(), &e.path, msg);
                None
            }
            Item::Value(v @ (Value::String(_) | Value::Integer(_) | Value::Float(_) | Value::Boolean(_))) => {
                let s = self.scalar(v, e.key_span.clone(), &e.path)?;
                Some(Test { ops: vec![Op::Equals(s)] })
            }
            _ => {
                let expected = "a string, number or boolean, or a table of operators";
                let t = self.table(e, expected)?;
                self.unknown_keys(&t, OP_KEYS, "a condition");
                let (ops, present) = self.ops(&t);
                if present == 0 {
                    let msg = format!("a condition needs at least one operator: {}", OP_KEYS.join(", "));
                    self.error(t.span.clone(), &t.path, msg);
                    return None;
                }
                (ops.len() == present).then_some(Test { ops })
            }
        }
    }

    /// The operators among `t`'s keys, in file order, and how many operator keys are present
    /// (valid or not). Other keys are left to the caller's unknown-key check.
    fn ops(&mut self, t: &Tab<'_>) -> (Vec<Op>, usize) {
        let mut ops = Vec::new();
        let mut present = 0;
        for (k, e) in entries(t) {
            if !OP_KEYS.contains(&k) {
                continue;
            }
            present += 1;
            if let Some(op) = self.op(k, &e) {
                ops.push(op);
            }
        }
        if present > 1 && ops.iter().any(|op| matches!(op, Op::Exists(false))) {
            let e = get(t, "exists").expect("an exists operator was parsed");
            let msg = "exists = false cannot be combined with other operators: they never hold on an absent value";
            self.error(e.span(), &e.path, msg);
        }
        (ops, present)
    }

    fn op(&mut self, k: &str, e: &Ent<'_>) -> Option<Op> {
        match k {
            "equals" => {
                let v = self.value(e, "a string, number or boolean")?;
                self.scalar(v, e.span(), &e.path).map(Op::Equals)
            }
            "in" => {
                let Item::Value(Value::Array(a)) = e.item else {
                    self.type_error(e, "a non-empty array of strings, numbers or booleans");
                    return None;
                };
                if a.is_empty() {
                    self.error(e.span(), &e.path, "`in` needs at least one value: an empty list never holds");
                    return None;
                }
                let mut list = Vec::with_capacity(a.len());
                let mut ok = true;
                for (i, v) in a.iter().enumerate() {
                    match self.scalar(v, e.span(), &format!("{}[{i}]", e.path)) {
                        Some(s) => list.push(s),
                        None => ok = false,
                    }
                }
                ok.then_some(Op::In(list))
            }
            "prefix" => self.string(e).map(|s| Op::Prefix(s.to_string())),
            "contains" => self.string(e).map(|s| Op::Contains(s.to_string())),
            "matches" => {
                let pattern = self.string(e)?;
                match regex::Regex::new(pattern) {
                    Ok(re) => Some(Op::Matches(re)),
                    Err(err) => {
                        let msg = format!("invalid regex {pattern:?}: {}", regex_error_text(&err));
                        self.error(e.span(), &e.path, msg);
                        None
                    }
                }
            }
            "between" => {
                let expected = "an array of two numbers [lo, hi]";
                let Item::Value(Value::Array(a)) = e.item else {
                    self.type_error(e, expected);
                    return None;
                };
                if a.len() != 2 {
                    let msg = format!("expected {expected}, found an array of {} value(s)", a.len());
                    self.error(e.span(), &e.path, msg);
                    return None;
                }
                let lo = self.number_value(a.get(0)?, e.span(), &format!("{}[0]", e.path));
                let hi = self.number_value(a.get(1)?, e.span(), &format!("{}[1]", e.path));
                let (lo, hi) = (lo?, hi?);
                if lo.cmp_value(hi) == Some(std::cmp::Ordering::Greater) {
                    let msg = format!("between = [{lo}, {hi}] is empty: lo must not be greater than hi");
                    self.error(e.span(), &e.path, msg);
                    return None;
                }
                Some(Op::Between(lo, hi))
            }
            "exists" => self.boolean(e).map(Op::Exists),
            _ => None,
        }
    }

    fn fits(&mut self, root: &Tab<'_>, ids: &mut HashMap<String, String>) -> Vec<FitRule> {
        let Some(e) = get(root, "fit") else {
            return Vec::new();
        };
        let tables = self.table_array(&e, "fit");
        tables.iter().map(|t| self.fit(t, ids)).collect()
    }

    fn fit(&mut self, t: &Tab<'_>, ids: &mut HashMap<String, String>) -> FitRule {
        self.unknown_keys(t, FIT_KEYS, "a [[fit]] rule");
        let id = self.required(t, "id", "a unique non-empty string");
        let id = id.map(|e| self.unique_id(ids, &e, &t.path)).unwrap_or_default();
        let attribute = self.required(t, "attribute", "the profile attribute the rule reads");
        let attribute = attribute.and_then(|e| self.nonempty_string(&e)).unwrap_or_default();
        let points = self.required(t, "points", "a number, may be negative");
        let points = points.and_then(|e| self.number(&e)).unwrap_or(0.0);
        let (ops, present) = self.ops(t);
        if present == 0 {
            let msg = format!("a fit rule needs at least one condition on its attribute: {}", OP_KEYS.join(", "));
            self.error(t.span.clone(), &t.path, msg);
        }
        FitRule { id, attribute, test: Test { ops }, points }
    }
}

struct ScoreSection {
    qualify_at: f64,
    disqualify_below: f64,
    half_life_ms: i64,
    forget_after_ms: Option<i64>,
    dedup_window_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid model; a test's TOML goes after it, at the top level (it ends on line 3).
    const HEAD: &str = "name = \"m\"\nversion = \"1\"\nscore = { qualify_at = 60, half_life = \"14d\" }\n";

    fn ok(src: &str) -> Model {
        match parse_model(src) {
            Ok(m) => m,
            Err(errors) => panic!("unexpected errors:\n{}", render_errors("test.toml", &errors)),
        }
    }

    fn errs(src: &str) -> Vec<ModelError> {
        match parse_model(src) {
            Ok(_) => panic!("expected errors for:\n{src}"),
            Err(errors) => errors,
        }
    }

    /// The only error of `src` (after HEAD): its path and message.
    fn one_error(tail: &str) -> ModelError {
        let errors = errs(&format!("{HEAD}{tail}"));
        assert_eq!(errors.len(), 1, "{errors:#?}");
        errors.into_iter().next().unwrap()
    }

    fn assert_error(tail: &str, path: &str, message_part: &str) {
        let e = one_error(tail);
        assert_eq!(e.path, path, "{e:?}");
        assert!(e.message.contains(message_part), "{:?} does not contain {message_part:?}", e.message);
    }

    fn rule_tail(body: &str) -> String {
        format!("[[rule]]\nid = \"r\"\nevent = \"login\"\npoints = 1\n{body}\n")
    }

    #[test]
    fn example_model_parses() {
        let m = ok(include_str!("../../examples/model.toml"));
        assert_eq!(m.name, "default");
        assert_eq!(m.version, "2026-12-01");
        assert_eq!((m.qualify_at, m.disqualify_below), (60.0, 45.0));
        assert_eq!(m.half_life_ms, 14 * 86_400_000);
        assert_eq!(m.forget_after_ms, Some(180 * 86_400_000));
        assert_eq!(m.dedup_window_ms, 86_400_000);
        let groups: Vec<&str> = m.groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(groups, ["web", "marketing", "social", "product"]);
        assert_eq!(m.rules[0].id, "page_view");
        assert_eq!(m.rules[0].group, Some(0));
        assert!(!m.fits.is_empty());
        for ty in [
            "website_visit",
            "login",
            "activation",
            "trial_activation",
            "signup",
            "webinar_registration",
            "event_registration",
            "marketing_interaction",
            "social_interaction",
            "social_unfollow",
            "unsubscribe",
            "profile_update",
        ] {
            assert!(m.rules.iter().any(|r| r.event == ty), "no rule scores {ty}");
        }
        // A negative careers-page rule, a fixed unsubscribe and a competitor penalty.
        let careers = m.rules.iter().find(|r| r.id == "careers_page").unwrap();
        assert!(careers.points < 0.0 && careers.when[0].path == ["path"]);
        assert!(!m.rules.iter().find(|r| r.id == "unsubscribe").unwrap().decays);
    }

    #[test]
    fn nofit_model_is_the_model_without_fits() {
        let full = ok(include_str!("../../examples/model.toml"));
        let nofit = ok(include_str!("../../examples/model-nofit.toml"));
        assert!(nofit.fits.is_empty());
        let ids = |m: &Model| m.rules.iter().map(|r| (r.id.clone(), r.points, r.group)).collect::<Vec<_>>();
        assert_eq!(ids(&full), ids(&nofit));
        assert_eq!(full.groups.len(), nofit.groups.len());
        assert_eq!((full.qualify_at, full.half_life_ms), (nofit.qualify_at, nofit.half_life_ms));
    }

    #[test]
    fn too_many_groups_and_limits() {
        let mut src = String::from("name = \"m\"\nversion = \"1\"\n[score]\nqualify_at = 1.0\nhalf_life = \"1d\"\n");
        for i in 0..40 {
            src.push_str(&format!("[group.g{i}]\ncap = 1.0\n"));
        }
        for i in 0..22 {
            src.push_str(&format!(
                "[[rule]]\nid = \"r{i}\"\nevent = \"e\"\npoints = 1.0\nlimit = {{ count = 1, per = \"1h\" }}\n"
            ));
        }
        let e = errs(&src);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].message.contains("at most 60"), "{}", e[0].message);
    }

    #[test]
    fn many_errors_all_reported_with_locations() {
        let src = r#"name = ""
version = 3
colour = "red"
[score]
qualify_at = "sixty"
disqualify_below = 70
half_life = "14 days"
dedup_window = "-1d"
[group.web]
cap = 10
floor = 20
[[rule]]
id = "a"
event = "website_visit"
points = 1
group = "webb"
when = { "properties.path" = { prefix = 5 }, "path" = "x" }
[[rule]]
id = "a"
event = "login"
decays = "no"
limit = { count = 0, per = "1h" }
[[fit]]
id = "f"
attribute = "job_title"
matches = "(unclosed"
points = 1
"#;
        let errors = errs(src);
        let got: Vec<(usize, usize, &str)> = errors.iter().map(|e| (e.line, e.column, e.path.as_str())).collect();
        assert_eq!(
            got,
            [
                (1, 8, "name"),
                (2, 11, "version"),
                (3, 1, "colour"),
                (5, 14, "score.qualify_at"),
                (7, 13, "score.half_life"),
                (8, 16, "score.dedup_window"),
                (11, 9, "group.web.floor"),
                (16, 9, "rule[0].group"),
                (17, 41, "rule[0].when.\"properties.path\".prefix"),
                (17, 46, "rule[0].when.path"),
                (18, 1, "rule[1].points"),
                (19, 6, "rule[1].id"),
                (21, 10, "rule[1].decays"),
                (22, 19, "rule[1].limit.count"),
                (26, 11, "fit[0].matches"),
            ],
            "{errors:#?}"
        );
        let msg = |path: &str| errors.iter().find(|e| e.path == path).unwrap().message.clone();
        assert!(msg("colour").contains("unknown key `colour`"));
        assert!(msg("colour").contains("allowed keys: name, version, score, group, rule, fit"));
        assert!(msg("score.half_life").contains("\"14d\""));
        assert!(msg("rule[0].group").contains("unknown group \"webb\""));
        assert!(msg("rule[1].id").contains("duplicate id \"a\""));
        assert!(msg("rule[1].points").contains("missing required key `points`"));
        assert!(msg("fit[0].matches").contains("invalid regex"));
        assert!(!msg("fit[0].matches").contains('\n'));
    }

    #[test]
    fn syntax_error_is_one_located_error() {
        let errors = errs("name = \"m\"\nversion = \"1\"\n[score\nqualify_at = 1\n");
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(errors[0].line, 3);
        assert_eq!(errors[0].path, "");
        assert!(errors[0].message.starts_with("TOML syntax error"), "{}", errors[0].message);
        let dup = errs("name = \"m\"\nname = \"n\"\n");
        assert_eq!((dup.len(), dup[0].line), (1, 2));
    }

    #[test]
    fn columns_count_characters_and_display_formats() {
        let e = one_error("[group.\"été\"]\ncap = \"x\"\n");
        assert_eq!((e.line, e.column), (5, 7));
        assert_eq!(e.path, "group.\"été\".cap");
        let e = errs("name = \"é\" ; \n").remove(0);
        assert_eq!((e.line, e.column), (1, 12));
        let e = ModelError { line: 3, column: 5, path: "score.half_life".into(), message: "bad".into() };
        assert_eq!(e.to_string(), "3:5: score.half_life: bad");
        let syntax = ModelError { line: 1, column: 2, path: String::new(), message: "oops".into() };
        assert_eq!(syntax.to_string(), "1:2: oops");
        assert_eq!(
            render_errors("m.toml", &[e, syntax]),
            "m.toml:3:5: error: bad (at score.half_life)\nm.toml:1:2: error: oops\n"
        );
    }

    #[test]
    fn required_keys() {
        let errors = errs("");
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["name", "version", "score"]);
        assert!(errors.iter().all(|e| (e.line, e.column) == (1, 1)));
        let errors = errs("name = \"m\"\nversion = \"1\"\n\n[score]\n");
        let got: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.path.as_str())).collect();
        assert_eq!(got, [(4, "score.qualify_at"), (4, "score.half_life")]);
        assert_error("[[rule]]\nid = \"r\"\npoints = 1\n", "rule[0].event", "missing required key `event`");
        assert_error("[[rule]]\nevent = \"x\"\npoints = 1\n", "rule[0].id", "missing required key `id`");
        assert_error("[[fit]]\nid = \"f\"\nattribute = \"a\"\nexists = true\n", "fit[0].points", "missing");
        assert_error("[[fit]]\nid = \"f\"\npoints = 1\nexists = true\n", "fit[0].attribute", "missing");
        let e = errs("name = \"m\"\nversion = \"\"\nscore = { qualify_at = 1, half_life = \"1d\" }\n");
        assert_eq!(
            (e.len(), e[0].path.as_str(), e[0].message.as_str()),
            (1, "version", "expected a non-empty string, found an empty one")
        );
        let e = errs("name = \"m\"\nversion = 2026-12-01\n[score]\nqualify_at = 1\nhalf_life = \"1d\"\n");
        assert!(e[0].message.contains("quote it: \"2026-12-01\""), "{}", e[0].message);
    }

    #[test]
    fn unknown_keys_everywhere() {
        assert_error("bogus = 1\n", "bogus", "the model's top level");
        let e = errs("name = \"m\"\nversion = \"1\"\n[score]\nqualify_at = 1\nhalf_life = \"1d\"\nhalf_lfe = \"1d\"\n");
        assert_eq!((e.len(), e[0].line, e[0].path.as_str()), (1, 6, "score.half_lfe"));
        assert!(e[0].message.contains("did you mean `half_life`"), "{}", e[0].message);
        assert_error("[group.web]\ncap = 1\nceiling = 2\n", "group.web.ceiling", "allowed keys: cap, floor");
        assert_error(&rule_tail("weight = 2"), "rule[0].weight", "allowed keys: id, event, when");
        assert_error(&rule_tail("limit = { count = 1, per = \"1h\", burst = 2 }"), "rule[0].limit.burst", "count, per");
        assert_error(
            &rule_tail("when = { \"properties.path\" = { prefix = \"/a\", startswith = \"/b\" } }"),
            "rule[0].when.\"properties.path\".startswith",
            "equals, in, prefix, contains, matches, between, exists",
        );
        assert_error(
            "[[fit]]\nid = \"f\"\nattribute = \"a\"\npoints = 1\nexists = true\ndecays = false\n",
            "fit[0].decays",
            "unknown key",
        );
    }

    #[test]
    fn score_section_and_defaults() {
        let m = ok(HEAD);
        assert_eq!(m.disqualify_below, 60.0, "defaults to qualify_at");
        assert_eq!(m.dedup_window_ms, 86_400_000, "defaults to 1d");
        assert_eq!(m.forget_after_ms, None);
        assert!(m.groups.is_empty() && m.rules.is_empty() && m.fits.is_empty());
        let m = ok("name = \"m\"\nversion = \"1\"\n[score]\nqualify_at = 60.5\ndisqualify_below = 40\n\
                    half_life = \"1.5h\"\nforget_after = \"2w\"\ndedup_window = \"0s\"\n");
        assert_eq!((m.qualify_at, m.disqualify_below), (60.5, 40.0));
        assert_eq!((m.half_life_ms, m.forget_after_ms, m.dedup_window_ms), (5_400_000, Some(1_209_600_000), 0));
        // Equal thresholds are fine; disqualify_below above qualify_at is not.
        ok("name = \"m\"\nversion = \"1\"\n[score]\nqualify_at = 5\ndisqualify_below = 5.0\nhalf_life = \"1d\"\n");
        let e =
            errs("name = \"m\"\nversion = \"1\"\n[score]\nqualify_at = 5\ndisqualify_below = 6\nhalf_life = \"1d\"\n");
        assert_eq!((e.len(), e[0].line, e[0].path.as_str()), (1, 5, "score.disqualify_below"));
        // Inline and dotted forms of [score] are the same table.
        ok("name = \"m\"\nversion = \"1\"\nscore = { qualify_at = 1, half_life = \"1d\" }\n");
        ok("name = \"m\"\nversion = \"1\"\nscore.qualify_at = 1\nscore.half_life = \"1d\"\n");
        let e = errs("name = \"m\"\nversion = \"1\"\nscore = 5\n");
        assert_eq!((e.len(), e[0].path.as_str()), (1, "score"));
        let e = errs("name = \"m\"\nversion = \"1\"\n[score]\nqualify_at = nan\nhalf_life = \"1d\"\n");
        assert!(e[0].message.contains("finite"), "{:?}", e[0]);
        let e = errs("name = \"m\"\nversion = \"1\"\n[score]\nqualify_at = true\nhalf_life = \"1d\"\n");
        assert!(e[0].message.contains("expected a number, found a boolean"), "{:?}", e[0]);
    }

    #[test]
    fn durations() {
        let with = |k: &str, v: &str| {
            errs(&format!("name = \"m\"\nversion = \"1\"\n[score]\nqualify_at = 1\nhalf_life = \"1d\"\n{k} = {v}\n"))
        };
        let e = errs("name = \"m\"\nversion = \"1\"\n[score]\nqualify_at = 1\nhalf_life = \"0d\"\n");
        assert!(e[0].message.contains("greater than zero"), "{:?}", e[0]);
        let e = errs("name = \"m\"\nversion = \"1\"\n[score]\nqualify_at = 1\nhalf_life = 14\n");
        assert!(e[0].message.contains("expected a duration string like \"14d\", found an integer"), "{:?}", e[0]);
        let e = with("forget_after", "\"0s\"");
        assert_eq!(e[0].path, "score.forget_after");
        let e = with("dedup_window", "\"1y\"");
        assert!(e[0].message.contains("units s, m, h, d or w") || e[0].message.contains("unit s, m, h, d or w"));
        assert!(e[0].message.contains("invalid duration \"1y\""));
        let e = with("forget_after", "\"0.0001s\"");
        assert!(e[0].message.contains("whole number of milliseconds"));
    }

    #[test]
    fn groups() {
        let m = ok(&format!("{HEAD}[group.web]\n[group.b]\ncap = 5\n[group.c]\nfloor = -2.5\n"));
        let g: Vec<(&str, f64, f64)> = m.groups.iter().map(|g| (g.name.as_str(), g.cap, g.floor)).collect();
        assert_eq!(
            g,
            [("web", f64::INFINITY, f64::NEG_INFINITY), ("b", 5.0, f64::NEG_INFINITY), ("c", f64::INFINITY, -2.5)]
        );
        ok(&format!("{HEAD}[group.web]\ncap = 0\nfloor = 0\n"));
        assert_error("[group.web]\ncap = 5\nfloor = 6\n", "group.web.floor", "must not be positive");
        assert_error("[group.web]\ncap = -1\n", "group.web.cap", "must not be negative");
        assert_error("[group.web]\ncap = \"5\"\n", "group.web.cap", "expected a number, found a string");
        assert_error("[group]\nweb = 5\n", "group.web", "expected a group table");
        assert_error("group = 5\n", "group", "expected a table of groups");
    }

    #[test]
    fn rules_compile_in_file_order_with_defaults() {
        let src = format!(
            "{HEAD}[group.web]\ncap = 30\n[group.x]\n\
             [[rule]]\nid = \"a\"\nevent = \"website_visit\"\npoints = 2\ngroup = \"x\"\n\
             [[rule]]\nid = \"b\"\nevent = \"unsubscribe\"\npoints = -20.5\ndecays = false\nlimit = {{ count = 3, per = \"1h\" }}\n\
             [[rule]]\nid = \"c\"\nevent = \"login\"\npoints = 1\ngroup = \"web\"\ndecays = true\n"
        );
        let m = ok(&src);
        type Row<'a> = (&'a str, &'a str, f64, Option<usize>, bool, Option<Limit>);
        let r: Vec<Row<'_>> =
            m.rules.iter().map(|r| (r.id.as_str(), r.event.as_str(), r.points, r.group, r.decays, r.limit)).collect();
        assert_eq!(
            r,
            [
                ("a", "website_visit", 2.0, Some(1), true, None),
                ("b", "unsubscribe", -20.5, None, false, Some(Limit { count: 3, per_ms: 3_600_000 })),
                ("c", "login", 1.0, Some(0), true, None),
            ]
        );
        assert!(m.rules.iter().all(|r| r.when.is_empty()));
        // The inline-array form is the same as [[rule]].
        let m = ok(&format!("{HEAD}rule = [{{ id = \"a\", event = \"e\", points = 1 }}]\n"));
        assert_eq!(m.rules[0].id, "a");
    }

    #[test]
    fn rule_validation() {
        assert_error(&rule_tail("group = \"web\""), "rule[0].group", "no groups are declared");
        assert_error(
            &format!("[group.web]\n{}", rule_tail("group = \"wbe\"")),
            "rule[0].group",
            "declared groups: web",
        );
        assert_error(
            &format!("[group.web]\n{}", rule_tail("group = \"web\"\ndecays = false")),
            "rule[0].decays",
            "cannot be combined with group",
        );
        assert_error(&rule_tail("decays = 0"), "rule[0].decays", "expected a boolean");
        assert_error("[[rule]]\nid = \"\"\nevent = \"e\"\npoints = 1\n", "rule[0].id", "non-empty");
        assert_error("[[rule]]\nid = \"r\"\nevent = \"\"\npoints = 1\n", "rule[0].event", "non-empty");
        let long = "e".repeat(65);
        assert_error(
            &format!("[[rule]]\nid = \"r\"\nevent = \"{long}\"\npoints = 1\n"),
            "rule[0].event",
            "at most 64 bytes",
        );
        ok(&format!("{HEAD}[[rule]]\nid = \"r\"\nevent = \"{}\"\npoints = 1\n", "e".repeat(64)));
        assert_error("[[rule]]\nid = \"r\"\nevent = \"e\"\npoints = inf\n", "rule[0].points", "finite");
        assert_error("[[rule]]\nid = \"r\"\nevent = \"e\"\npoints = \"1\"\n", "rule[0].points", "expected a number");
        assert_error("[rule]\nid = \"r\"\n", "rule", "write [[rule]]");
        assert_error("rule = [1]\n", "rule[0]", "expected a table, found an integer");
        // Ids are unique across rules and fit rules.
        let e =
            one_error(&format!("{}[[fit]]\nid = \"r\"\nattribute = \"a\"\npoints = 1\nexists = true\n", rule_tail("")));
        assert_eq!(e.path, "fit[0].id");
        assert!(e.message.contains("already used by rule[0]"), "{}", e.message);
    }

    #[test]
    fn limits() {
        assert_error(&rule_tail("limit = { count = 0, per = \"1h\" }"), "rule[0].limit.count", "from 1 to 65535");
        assert_error(&rule_tail("limit = { count = 65536, per = \"1h\" }"), "rule[0].limit.count", "from 1 to 65535");
        assert_error(&rule_tail("limit = { count = 3.0, per = \"1h\" }"), "rule[0].limit.count", "expected an integer");
        assert_error(&rule_tail("limit = { count = 3, per = \"0s\" }"), "rule[0].limit.per", "greater than zero");
        assert_error(&rule_tail("limit = { per = \"1h\" }"), "rule[0].limit.count", "missing");
        assert_error(&rule_tail("limit = 3"), "rule[0].limit", "expected a table");
        let m = ok(&format!("{HEAD}{}", rule_tail("[rule.limit]\ncount = 65535\nper = \"1w\"")));
        assert_eq!(m.rules[0].limit, Some(Limit { count: 65_535, per_ms: 604_800_000 }));
    }

    fn when_ops(when: &str) -> Vec<Condition> {
        ok(&format!("{HEAD}{}", rule_tail(&format!("when = {when}")))).rules.remove(0).when
    }

    #[test]
    fn bare_scalar_means_equals_and_numbers_are_ints_or_floats() {
        let c = when_ops(
            "{ \"properties.a\" = \"x\", \"properties.b.c\" = 3, \"properties.d\" = 2.5, \"properties.e\" = true }",
        );
        let got: Vec<(Vec<String>, Scalar)> = c
            .iter()
            .map(|c| match &c.test.ops[..] {
                [Op::Equals(s)] => (c.path.clone(), s.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            [
                (vec!["a".to_string()], Scalar::Str("x".into())),
                (vec!["b".to_string(), "c".to_string()], Scalar::Num(Number::Int(3))),
                (vec!["d".to_string()], Scalar::Num(Number::Float(2.5))),
                (vec!["e".to_string()], Scalar::Bool(true)),
            ]
        );
        // An int compiled as a number equals a JSON 3.0, never a string "3".
        let t = &c[1].test;
        assert!(t.holds(Some(&super::super::Value::Num(3.0.into()))));
        assert!(!t.holds(Some(&super::super::Value::Str("3".into()))));
        let c = when_ops("{ \"properties.n\" = { between = [1, 2.5], equals = 2 } }");
        assert!(
            matches!(c[0].test.ops[..], [Op::Between(lo, hi), Op::Equals(Scalar::Num(n))] if lo == 1.0.into() && hi == 2.5.into() && n == 2.0.into())
        );
    }

    #[test]
    fn operators_compile() {
        let c = when_ops(
            "{ \"properties.p\" = { prefix = \"/a\", contains = \"b\", matches = \"^/a.*b$\", exists = true }, \
             \"properties.q\" = { in = [\"x\", 1, false] }, \"properties.r\" = { exists = false } }",
        );
        assert_eq!(c.len(), 3);
        let p = &c[0].test;
        assert_eq!(p.ops.len(), 4);
        assert!(p.holds(Some(&super::super::Value::Str("/a-b".into()))));
        assert!(!p.holds(Some(&super::super::Value::Str("/a-c".into()))));
        assert!(
            matches!(&c[1].test.ops[..], [Op::In(v)] if v == &[Scalar::Str("x".into()), Scalar::Num(1.0.into()), Scalar::Bool(false)])
        );
        assert!(c[2].test.holds(None));
        // [rule.when."properties.x"] sub-tables are the same as inline ones.
        let m = ok(&format!("{HEAD}{}", rule_tail("[rule.when.\"properties.x\"]\nequals = \"y\"")));
        assert_eq!(m.rules[0].when[0].path, ["x"]);
        // A quoted path's operators written as dotted keys are the same table too (TOML reads
        // `"properties.p".prefix = "/a"` as `"properties.p" = { prefix = "/a" }`).
        let c = when_ops("{ \"properties.p\".prefix = \"/a\", \"properties.q\".between = [1, 5] }");
        assert_eq!((c.len(), &c[0].path[..], &c[1].path[..]), (2, &["p".to_string()][..], &["q".to_string()][..]));
        assert!(matches!(&c[0].test.ops[..], [Op::Prefix(p)] if p == "/a"));
        assert!(matches!(c[1].test.ops[..], [Op::Between(lo, hi)] if lo == Number::Int(1) && hi == Number::Int(5)));
        let m = ok(&format!("{HEAD}{}", rule_tail("when.\"properties.x\".exists = true")));
        assert!(m.rules[0].when[0].test.holds(Some(&super::super::Value::Bool(false))));
    }

    #[test]
    fn condition_errors() {
        let w = |when: &str| rule_tail(&format!("when = {when}"));
        assert_error(&w("{ \"path\" = 1 }"), "rule[0].when.path", "\"properties.\" followed by");
        assert_error(&w("{ \"properties.\" = 1 }"), "rule[0].when.\"properties.\"", "non-empty");
        assert_error(&w("{ \"properties.a..b\" = 1 }"), "rule[0].when.\"properties.a..b\"", "non-empty");
        assert_error(&w("{ \"properties\" = 1 }"), "rule[0].when.properties", "\"properties.\" followed by");
        assert_error(&w("{ properties.path = \"/x\" }"), "rule[0].when.properties", "with the quotes");
        assert_error(&w("{ \"properties.a\" = [1, 2] }"), "rule[0].when.\"properties.a\"", "{ in = [...] }");
        assert_error(&w("{ \"properties.a\" = {} }"), "rule[0].when.\"properties.a\"", "at least one operator");
        assert_error(&w("{ \"properties.a\" = 1979-05-27 }"), "rule[0].when.\"properties.a\"", "found a date-time");
        assert_error(&w("5"), "rule[0].when", "expected a table of conditions");
        let p = "rule[0].when.\"properties.a\"";
        assert_error(
            &w("{ \"properties.a\" = { equals = [1] } }"),
            &format!("{p}.equals"),
            "expected a string, number or boolean",
        );
        assert_error(&w("{ \"properties.a\" = { in = [] } }"), &format!("{p}.in"), "at least one value");
        assert_error(&w("{ \"properties.a\" = { in = \"x\" } }"), &format!("{p}.in"), "non-empty array");
        assert_error(&w("{ \"properties.a\" = { in = [\"x\", [1]] } }"), &format!("{p}.in[1]"), "found an array");
        assert_error(&w("{ \"properties.a\" = { prefix = 1 } }"), &format!("{p}.prefix"), "expected a string");
        assert_error(&w("{ \"properties.a\" = { contains = true } }"), &format!("{p}.contains"), "expected a string");
        assert_error(&w("{ \"properties.a\" = { matches = \"a(\" } }"), &format!("{p}.matches"), "unclosed group");
        assert_error(
            &w("{ \"properties.a\" = { between = [2, 1] } }"),
            &format!("{p}.between"),
            "lo must not be greater",
        );
        assert_error(&w("{ \"properties.a\" = { between = [1] } }"), &format!("{p}.between"), "array of 1 value");
        assert_error(
            &w("{ \"properties.a\" = { between = [1, \"2\"] } }"),
            &format!("{p}.between[1]"),
            "expected a number",
        );
        assert_error(&w("{ \"properties.a\" = { between = 1 } }"), &format!("{p}.between"), "two numbers");
        assert_error(&w("{ \"properties.a\" = { exists = \"yes\" } }"), &format!("{p}.exists"), "expected a boolean");
        assert_error(&w("{ \"properties.a\" = { exists = false, equals = 1 } }"), &format!("{p}.exists"), "never hold");
        assert_error(&w("{ \"properties.a\" = { equals = nan } }"), &format!("{p}.equals"), "finite");
    }

    #[test]
    fn fit_rules() {
        let m = ok(&format!(
            "{HEAD}[[fit]]\nid = \"size\"\nattribute = \"company_size\"\nbetween = [50, 5000.5]\npoints = 10\n\
             [[fit]]\nid = \"title\"\nattribute = \"job_title\"\nmatches = \"(?i)vp\"\ncontains = \"V\"\npoints = 15.5\n"
        ));
        let f: Vec<(&str, &str, f64, usize)> =
            m.fits.iter().map(|f| (f.id.as_str(), f.attribute.as_str(), f.points, f.test.ops.len())).collect();
        assert_eq!(f, [("size", "company_size", 10.0, 1), ("title", "job_title", 15.5, 2)]);
        assert!(m.fits[1].test.holds(Some(&super::super::Value::Str("SVP Sales".into()))));
        assert_error("[[fit]]\nid = \"f\"\nattribute = \"a\"\npoints = 1\n", "fit[0]", "at least one condition");
        assert_error("[[fit]]\nid = \"f\"\nattribute = \"\"\npoints = 1\nexists = true\n", "fit[0].attribute", "empty");
        assert_error(
            "[[fit]]\nid = \"f\"\nattribute = \"a\"\npoints = 1\nmatches = \"[\"\n",
            "fit[0].matches",
            "invalid regex",
        );
        assert_error(
            "[[fit]]\nid = \"f\"\nattribute = \"a\"\npoints = 1\nin = []\n",
            "fit[0].in",
            "at least one value",
        );
        let e = one_error("[[fit]]\nid = \"f\"\nattribute = \"a\"\npoints = 1\nexists = true\n[[fit]]\nid = \"f\"\nattribute = \"a\"\npoints = 1\nexists = true\n");
        assert_eq!((e.line, e.path.as_str()), (10, "fit[1].id"));
    }
}
