//! The service config, `leadscore.toml` (spec section 6): serde structs, defaults, environment
//! and flag overrides, validation.
//!
//! Sources, lowest precedence first: the file (if any), then `LEADSCORE_*` environment variables,
//! then command-line flags ([`Overrides`]). Every key has an environment variable
//! `LEADSCORE_<SECTION>_<KEY>` (see [`ENV_VARS`]); librdkafka properties have
//! `LEADSCORE_LIBRDKAFKA_<KEY>` (see [`librdkafka_key_from_env`]). Unknown keys in the file and
//! unknown `LEADSCORE_*` variables are errors, so a typo never silently falls back to a default.
//!
//! Secrets: the `[kafka.librdkafka]` table carries SASL passwords and TLS keys. [`KafkaConfig`]'s
//! `Debug` redacts them, [`KafkaConfig::redacted`] is the map to log, and errors never quote the
//! source line of the file (a TOML error's usual snippet could be a password line); they give
//! the path, line, column and the parser's message.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::time::parse_duration_ms;

/// Environment variables starting with this prefix are config overrides.
pub const ENV_PREFIX: &str = "LEADSCORE_";

/// `LEADSCORE_*` variables that are not config keys and are therefore allowed: `LEADSCORE_LOG`
/// (log filter), `LEADSCORE_CONFIG` (the config file path, for the command line) and
/// `LEADSCORE_TEST_ABORT_EVERY` (a test hook: abort every Nth transaction; never set it in
/// production).
pub const RESERVED_ENV_VARS: &[&str] = &["LEADSCORE_LOG", "LEADSCORE_CONFIG", "LEADSCORE_TEST_ABORT_EVERY"];

/// Prefix of the environment variables that set librdkafka properties.
pub const LIBRDKAFKA_ENV_PREFIX: &str = "LEADSCORE_LIBRDKAFKA_";

/// The same, spelled after the table's place in the file (`[kafka.librdkafka]`), as every other
/// key's variable is: both are accepted.
pub const KAFKA_LIBRDKAFKA_ENV_PREFIX: &str = "LEADSCORE_KAFKA_LIBRDKAFKA_";

/// Substrings of librdkafka property names whose values are secrets (matched case-insensitively).
/// Deliberately broad (`key` also hides `ssl.key.location`): redacting a path costs nothing,
/// leaking an inline PEM key costs a rotation.
pub const SENSITIVE_KEY_PARTS: &[&str] = &["password", "secret", "key", "token", "jaas", "credentials", "pem"];

/// What replaces a secret in `Debug` output and in [`KafkaConfig::redacted`].
pub const REDACTED: &str = "<redacted>";

/// Default `[kafka] commit_interval_ms`.
pub const DEFAULT_COMMIT_INTERVAL_MS: u64 = 100;
/// Allowed `[kafka] commit_interval_ms`: 1 ms to 60 s.
pub const COMMIT_INTERVAL_MS_RANGE: std::ops::RangeInclusive<u64> = 1..=60_000;
/// Default `[http] listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9898";
/// Default `[input] max_event_bytes`.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 65_536;
/// Default `[input] max_future_skew`.
pub const DEFAULT_MAX_FUTURE_SKEW: &str = "5m";
/// Kafka's limit on topic name length.
const MAX_TOPIC_LEN: usize = 249;

/// The whole service config (`leadscore.toml`). Every section is optional; only
/// `kafka.brokers` must be given (in the file, the environment or by `--brokers`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[kafka]`: brokers, topics, group, delivery guarantee, librdkafka pass-through.
    pub kafka: KafkaConfig,
    /// `[http]`: where `/metrics`, `/healthz`, `/readyz`, `/leads/{id}` and the status page listen.
    pub http: HttpConfig,
    /// `[model]`: the scoring model file.
    pub model: ModelConfig,
    /// `[input]`: limits applied to incoming records.
    pub input: InputConfig,
}

/// How offsets and outputs are committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessingGuarantee {
    /// Transitions, dead letters of the transaction, state and input offsets in one Kafka
    /// transaction (`read_committed` downstream sees each transition once).
    #[default]
    ExactlyOnce,
    /// Outputs are flushed, then offsets committed: a crash may repeat transitions (their `id`
    /// lets consumers deduplicate).
    AtLeastOnce,
}

impl ProcessingGuarantee {
    /// The config spelling: `exactly_once` or `at_least_once`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessingGuarantee::ExactlyOnce => "exactly_once",
            ProcessingGuarantee::AtLeastOnce => "at_least_once",
        }
    }
}

impl fmt::Display for ProcessingGuarantee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProcessingGuarantee {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "exactly_once" => Ok(ProcessingGuarantee::ExactlyOnce),
            "at_least_once" => Ok(ProcessingGuarantee::AtLeastOnce),
            _ => Err("expected `exactly_once` or `at_least_once`".to_owned()),
        }
    }
}

/// `[kafka]`. `Debug` is written by hand: secret librdkafka values print as `<redacted>`.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, comma-separated `host:port` (librdkafka `bootstrap.servers`).
    /// Required: no default. Env `LEADSCORE_KAFKA_BROKERS`, flag `--brokers`.
    pub brokers: String,
    /// Consumer group id; instances with the same id share the input partitions.
    /// Default `"leadscore"`.
    pub group_id: String,
    /// Topics of lead activity events to consume. Default `["lead-events"]`.
    /// Env: comma-separated.
    pub input_topics: Vec<String>,
    /// Topic the transitions (`lead_qualified`, `lead_disqualified`) are written to, keyed by
    /// lead id. Default `"leads-qualified"`.
    pub output_topic: String,
    /// Topic rejected input records are copied to, with the reason in a header.
    /// Default `"lead-events-dlq"`.
    pub dead_letter_topic: String,
    /// Compacted changelog topic of per-lead state, restored before processing.
    /// Default `"leadscore-state"`.
    pub state_topic: String,
    /// Re-key input that is not partitioned by lead id: a record in another partition than its
    /// lead's (`murmur2(lead_id) % partitions`, Kafka's default partitioner) is forwarded
    /// through `repartition_topic` to its lead's partition before it is scored, as Kafka Streams
    /// does, so correctness never depends on how producers key their records. Default `true`;
    /// `false` only when every producer keys by lead id with the murmur2 partitioner (records
    /// elsewhere are then scored where they are, splitting a lead's state).
    pub repartition: bool,
    /// The internal repartition topic (created with the input's partition count).
    /// Default: `"{group_id}-repartition"`.
    pub repartition_topic: Option<String>,
    /// `exactly_once` (default) or `at_least_once`.
    pub processing_guarantee: ProcessingGuarantee,
    /// Milliseconds between offset commits (transaction commits under `exactly_once`).
    /// Default 100; allowed 1..=60000.
    pub commit_interval_ms: u64,
    /// Producer `transactional.id`; must be stable per instance (a restart with the same id
    /// aborts the previous incarnation's open transaction at once) and unique across instances.
    /// Default: `"{group_id}-{hostname}"` (see [`KafkaConfig::transactional_id`]).
    pub transactional_id: Option<String>,
    /// librdkafka properties passed through verbatim and applied last (security, SASL, TLS,
    /// tuning). Values may be strings, integers or booleans; they are handed over as strings.
    /// Dotted keys may be quoted (`"sasl.mechanism" = "PLAIN"`) or bare (`sasl.mechanism =
    /// "PLAIN"`, which TOML reads as nested tables; they are joined back with `.`).
    /// Default: empty. Env `LEADSCORE_LIBRDKAFKA_<KEY>`.
    #[serde(deserialize_with = "de_librdkafka")]
    pub librdkafka: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: String::new(),
            group_id: "leadscore".to_owned(),
            input_topics: vec!["lead-events".to_owned()],
            output_topic: "leads-qualified".to_owned(),
            dead_letter_topic: "lead-events-dlq".to_owned(),
            state_topic: "leadscore-state".to_owned(),
            repartition: true,
            repartition_topic: None,
            processing_guarantee: ProcessingGuarantee::ExactlyOnce,
            commit_interval_ms: DEFAULT_COMMIT_INTERVAL_MS,
            transactional_id: None,
            librdkafka: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// The repartition topic: the configured one, else `"{group_id}-repartition"`.
    pub fn repartition_topic(&self) -> String {
        match &self.repartition_topic {
            Some(t) => t.clone(),
            None => format!("{}-repartition", self.group_id),
        }
    }

    /// The producer `transactional.id`: the configured one, else `"{group_id}-{hostname}"`.
    ///
    /// The host name is stable per instance where it matters (a Kubernetes StatefulSet pod, a
    /// VM); on a Deployment with random pod names set `transactional_id` explicitly.
    pub fn transactional_id(&self) -> String {
        match &self.transactional_id {
            Some(id) => id.clone(),
            None => format!("{}-{}", self.group_id, hostname()),
        }
    }

    /// The librdkafka pass-through properties with secret values replaced by `<redacted>`: the
    /// map to log.
    pub fn redacted(&self) -> BTreeMap<String, String> {
        self.librdkafka
            .iter()
            .map(|(k, v)| (k.clone(), if is_sensitive(k) { REDACTED.to_owned() } else { v.clone() }))
            .collect()
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hand written so a secret never reaches a log line through `{:?}` of the config.
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("input_topics", &self.input_topics)
            .field("output_topic", &self.output_topic)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("state_topic", &self.state_topic)
            .field("repartition", &self.repartition)
            .field("repartition_topic", &self.repartition_topic)
            .field("processing_guarantee", &self.processing_guarantee)
            .field("commit_interval_ms", &self.commit_interval_ms)
            .field("transactional_id", &self.transactional_id)
            .field("librdkafka", &self.redacted())
            .finish()
    }
}

/// Whether a librdkafka property's value is a secret (see [`SENSITIVE_KEY_PARTS`]).
pub fn is_sensitive(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SENSITIVE_KEY_PARTS.iter().any(|part| key.contains(part))
}

/// This machine's host name: `/proc/sys/kernel/hostname`, else `$HOSTNAME`, else `localhost`.
pub fn hostname() -> String {
    let from_proc = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    let from_env = std::env::var("HOSTNAME").ok();
    [from_proc, from_env]
        .into_iter()
        .flatten()
        .map(|h| h.trim().to_owned())
        .find(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Socket address of the HTTP endpoints. Default `127.0.0.1:9898`; use `0.0.0.0:9898` to be
    /// reachable from other hosts. Env `LEADSCORE_HTTP_LISTEN`, flag `--listen`.
    pub listen: SocketAddr,
    /// Base URL other instances hand out (as a redirect) for `/leads/{id}` lookups of leads this
    /// instance owns, like `http://leadscore-0.leadscore:9898`. Default: the listen address as
    /// `http://host:port`, with the host name in place of an unspecified address (`0.0.0.0`).
    pub advertise: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: DEFAULT_LISTEN.parse().expect("valid default address"), advertise: None }
    }
}

impl HttpConfig {
    /// The advertised base URL, without a trailing `/`: `advertise`, else `http://{listen}` (the
    /// host name replacing `0.0.0.0` or `::`, which other hosts cannot connect to).
    pub fn advertise_url(&self) -> String {
        match &self.advertise {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None if self.listen.ip().is_unspecified() => format!("http://{}:{}", hostname(), self.listen.port()),
            None => format!("http://{}", self.listen),
        }
    }
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// The scoring model file (TOML, spec section 3), relative to the working directory.
    /// Default `examples/model.toml`. Env `LEADSCORE_MODEL_PATH`, flag `--model`.
    pub path: PathBuf,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig { path: PathBuf::from("examples/model.toml") }
    }
}

/// `[input]`: limits on incoming records (violations are rejected and dead-lettered).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// Records larger than this many bytes are rejected as `too_large`. Default 65536.
    pub max_event_bytes: usize,
    /// How far ahead of the wall clock an event's `timestamp` may be before it is rejected, as a
    /// duration (`"90s"`, `"5m"`, `"1h"`). Default `"5m"`.
    pub max_future_skew: String,
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig { max_event_bytes: DEFAULT_MAX_EVENT_BYTES, max_future_skew: DEFAULT_MAX_FUTURE_SKEW.to_owned() }
    }
}

impl InputConfig {
    /// `max_future_skew` in milliseconds. [`Config::load`] has validated it; a hand-built config
    /// with an unparsable value gets the default, 5 minutes.
    pub fn max_future_skew_ms(&self) -> i64 {
        parse_duration_ms(&self.max_future_skew)
            .or_else(|| parse_duration_ms(DEFAULT_MAX_FUTURE_SKEW))
            .expect("the default duration parses")
    }
}

/// The common command-line flags; `Some` wins over the file and the environment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// `--brokers`: `kafka.brokers`.
    pub brokers: Option<String>,
    /// `--group-id`: `kafka.group_id`.
    pub group_id: Option<String>,
    /// `--input-topics`: `kafka.input_topics`.
    pub input_topics: Option<Vec<String>>,
    /// `--output-topic`: `kafka.output_topic`.
    pub output_topic: Option<String>,
    /// `--listen`: `http.listen`.
    pub listen: Option<SocketAddr>,
    /// `--model`: `model.path`.
    pub model_path: Option<PathBuf>,
    /// `--processing-guarantee`: `kafka.processing_guarantee`.
    pub processing_guarantee: Option<ProcessingGuarantee>,
    /// `--transactional-id`: `kafka.transactional_id`.
    pub transactional_id: Option<String>,
}

/// One validation failure; [`ConfigError::Invalid`] collects all of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("kafka.brokers is required (set it in [kafka], LEADSCORE_KAFKA_BROKERS or --brokers)")]
    MissingBrokers,
    #[error("kafka.group_id must not be empty")]
    EmptyGroupId,
    #[error("kafka.input_topics must name at least one topic")]
    NoInputTopics,
    #[error("{key}: {topic:?} is not a valid Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -)")]
    InvalidTopicName { key: &'static str, topic: String },
    #[error("topic {topic:?} is used as both {first} and {second}")]
    TopicReused { topic: String, first: &'static str, second: &'static str },
    #[error("kafka.commit_interval_ms is {value}; allowed 1..=60000")]
    CommitInterval { value: u64 },
    #[error("kafka.transactional_id must not be empty (leave it out for the derived default)")]
    EmptyTransactionalId,
    #[error("kafka.librdkafka has an empty property name")]
    EmptyLibrdkafkaKey,
    #[error("http.advertise must be an http:// or https:// URL without spaces")]
    InvalidAdvertise,
    #[error("model.path must not be empty")]
    EmptyModelPath,
    #[error("input.max_event_bytes must be at least 1")]
    ZeroMaxEventBytes,
    #[error("{key} is not a duration (a number and s, m, h, d or w, like \"5m\"): {value:?}")]
    InvalidDuration { key: &'static str, value: String },
}

impl Problem {
    /// A stable identifier of the kind of problem.
    pub fn code(&self) -> &'static str {
        match self {
            Problem::MissingBrokers => "missing_brokers",
            Problem::EmptyGroupId => "empty_group_id",
            Problem::NoInputTopics => "no_input_topics",
            Problem::InvalidTopicName { .. } => "invalid_topic_name",
            Problem::TopicReused { .. } => "topic_reused",
            Problem::CommitInterval { .. } => "commit_interval_out_of_range",
            Problem::EmptyTransactionalId => "empty_transactional_id",
            Problem::EmptyLibrdkafkaKey => "empty_librdkafka_key",
            Problem::InvalidAdvertise => "invalid_advertise",
            Problem::EmptyModelPath => "empty_model_path",
            Problem::ZeroMaxEventBytes => "invalid_max_event_bytes",
            Problem::InvalidDuration { .. } => "invalid_duration",
        }
    }
}

/// Why [`Config::load`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A key the config does not have (a typo, or a key in the wrong section).
    #[error("{}: {message}", at(path, *line, *column))]
    UnknownKey { path: PathBuf, line: Option<usize>, column: Option<usize>, message: String },
    /// TOML syntax, or a value of the wrong type.
    #[error("{}: {message}", at(path, *line, *column))]
    Parse { path: PathBuf, line: Option<usize>, column: Option<usize>, message: String },
    /// `LEADSCORE_*` variables that match no key.
    #[error("unknown environment variable(s) {}; known: {}, LEADSCORE_LIBRDKAFKA_<PROPERTY>, {}",
        vars.join(", "), ENV_VARS.join(", "), RESERVED_ENV_VARS.join(", "))]
    UnknownEnv { vars: Vec<String> },
    /// A `LEADSCORE_*` variable whose value does not parse.
    #[error("environment variable {var}: {reason}")]
    InvalidEnv { var: String, reason: String },
    /// The merged config breaks one or more rules.
    #[error("invalid config:{}", problems.iter().map(|p| format!("\n  - {p}")).collect::<String>())]
    Invalid { problems: Vec<Problem> },
}

fn at(path: &Path, line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("{} line {l}, column {c}", path.display()),
        _ => path.display().to_string(),
    }
}

impl ConfigError {
    /// A stable identifier of the kind of error.
    pub fn code(&self) -> &'static str {
        match self {
            ConfigError::Read { .. } => "config_unreadable",
            ConfigError::UnknownKey { .. } => "unknown_key",
            ConfigError::Parse { .. } => "config_parse",
            ConfigError::UnknownEnv { .. } => "unknown_env",
            ConfigError::InvalidEnv { .. } => "invalid_env",
            ConfigError::Invalid { .. } => "invalid_config",
        }
    }

    /// The validation problems (empty for the other kinds).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems } => problems,
            _ => &[],
        }
    }
}

type Setter = fn(&mut Config, &str) -> Result<(), String>;

fn parse_value<T: FromStr>(v: &str) -> Result<T, String>
where
    T::Err: fmt::Display,
{
    v.trim().parse::<T>().map_err(|e| e.to_string())
}

fn non_empty(v: &str) -> Option<String> {
    let v = v.trim();
    (!v.is_empty()).then(|| v.to_owned())
}

/// Comma-separated list; blanks around items and empty items are dropped.
fn split_list(v: &str) -> Vec<String> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// Every key's environment variable (after `LEADSCORE_`) and how it sets the key. The single
/// source of truth for which variables exist.
const ENV_SETTERS: &[(&str, Setter)] = &[
    ("KAFKA_BROKERS", |c, v| {
        c.kafka.brokers = v.trim().to_owned();
        Ok(())
    }),
    ("KAFKA_GROUP_ID", |c, v| {
        c.kafka.group_id = v.trim().to_owned();
        Ok(())
    }),
    ("KAFKA_INPUT_TOPICS", |c, v| {
        c.kafka.input_topics = split_list(v);
        Ok(())
    }),
    ("KAFKA_OUTPUT_TOPIC", |c, v| {
        c.kafka.output_topic = v.trim().to_owned();
        Ok(())
    }),
    ("KAFKA_DEAD_LETTER_TOPIC", |c, v| {
        c.kafka.dead_letter_topic = v.trim().to_owned();
        Ok(())
    }),
    ("KAFKA_STATE_TOPIC", |c, v| {
        c.kafka.state_topic = v.trim().to_owned();
        Ok(())
    }),
    ("KAFKA_REPARTITION", |c, v| {
        c.kafka.repartition = parse_value(v)?;
        Ok(())
    }),
    ("KAFKA_REPARTITION_TOPIC", |c, v| {
        c.kafka.repartition_topic = non_empty(v);
        Ok(())
    }),
    ("KAFKA_PROCESSING_GUARANTEE", |c, v| {
        c.kafka.processing_guarantee = v.parse()?;
        Ok(())
    }),
    ("KAFKA_COMMIT_INTERVAL_MS", |c, v| {
        c.kafka.commit_interval_ms = parse_value(v)?;
        Ok(())
    }),
    ("KAFKA_TRANSACTIONAL_ID", |c, v| {
        // Empty means "use the derived default", as leaving the key out of the file does.
        c.kafka.transactional_id = non_empty(v);
        Ok(())
    }),
    ("HTTP_LISTEN", |c, v| {
        c.http.listen = parse_value(v)?;
        Ok(())
    }),
    ("HTTP_ADVERTISE", |c, v| {
        c.http.advertise = non_empty(v);
        Ok(())
    }),
    ("MODEL_PATH", |c, v| {
        c.model.path = PathBuf::from(v.trim());
        Ok(())
    }),
    ("INPUT_MAX_EVENT_BYTES", |c, v| {
        c.input.max_event_bytes = parse_value(v)?;
        Ok(())
    }),
    ("INPUT_MAX_FUTURE_SKEW", |c, v| {
        c.input.max_future_skew = v.trim().to_owned();
        Ok(())
    }),
];

/// The environment variables of the config keys, in file order.
pub const ENV_VARS: &[&str] = &[
    "LEADSCORE_KAFKA_BROKERS",
    "LEADSCORE_KAFKA_GROUP_ID",
    "LEADSCORE_KAFKA_INPUT_TOPICS",
    "LEADSCORE_KAFKA_OUTPUT_TOPIC",
    "LEADSCORE_KAFKA_DEAD_LETTER_TOPIC",
    "LEADSCORE_KAFKA_STATE_TOPIC",
    "LEADSCORE_KAFKA_REPARTITION",
    "LEADSCORE_KAFKA_REPARTITION_TOPIC",
    "LEADSCORE_KAFKA_PROCESSING_GUARANTEE",
    "LEADSCORE_KAFKA_COMMIT_INTERVAL_MS",
    "LEADSCORE_KAFKA_TRANSACTIONAL_ID",
    "LEADSCORE_HTTP_LISTEN",
    "LEADSCORE_HTTP_ADVERTISE",
    "LEADSCORE_MODEL_PATH",
    "LEADSCORE_INPUT_MAX_EVENT_BYTES",
    "LEADSCORE_INPUT_MAX_FUTURE_SKEW",
];

/// The librdkafka property a `LEADSCORE_LIBRDKAFKA_<KEY>` (or `LEADSCORE_KAFKA_LIBRDKAFKA_<KEY>`)
/// variable sets: `<KEY>` lowercased, `_` becoming `.` and `__` becoming a literal `_`
/// (`SASL_PASSWORD` → `sasl.password`). `None` when `var` has neither prefix or names no
/// property.
pub fn librdkafka_key_from_env(var: &str) -> Option<String> {
    let rest = var.strip_prefix(LIBRDKAFKA_ENV_PREFIX).or_else(|| var.strip_prefix(KAFKA_LIBRDKAFKA_ENV_PREFIX))?;
    if rest.is_empty() {
        return None;
    }
    let key = rest.to_ascii_lowercase().split("__").map(|part| part.replace('_', ".")).collect::<Vec<_>>().join("_");
    Some(key)
}

/// The `LEADSCORE_*` variables of this process, for [`Config::load`] (names or values that are
/// not UTF-8 are converted lossily, so they still fail loudly as unknown or invalid).
pub fn process_env() -> HashMap<String, String> {
    std::env::vars_os()
        .map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()))
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect()
}

impl Config {
    /// Loads the config: the file (if given), then the `LEADSCORE_*` variables of `env`, then
    /// `overrides`; then validates the result, reporting every problem at once.
    pub fn load(
        path: Option<&Path>,
        env: &HashMap<String, String>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                Config::from_toml(&text, path)?
            }
            None => Config::default(),
        };
        config.apply_env(env)?;
        config.apply_overrides(overrides);
        config.validate()?;
        Ok(config)
    }

    /// Parses the text of a config file (`path` only names it in errors). Not validated.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let (line, column) = match e.span() {
                Some(span) => {
                    let (l, c) = line_column(text, span.start);
                    (Some(l), Some(c))
                }
                None => (None, None),
            };
            // `message()` rather than the error's `Display`: the latter quotes the source line,
            // which may be a `sasl.password = ...` line.
            let message = e.message().trim().to_owned();
            let path = path.to_owned();
            if message.starts_with("unknown field") {
                ConfigError::UnknownKey { path, line, column, message }
            } else {
                ConfigError::Parse { path, line, column, message }
            }
        })
    }

    /// Applies the `LEADSCORE_*` variables of `env` (other variables are ignored).
    pub fn apply_env(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        let mut vars: Vec<(&String, &String)> = env.iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
        // Sorted, so errors and the order of librdkafka overrides do not depend on hashing.
        vars.sort();
        let mut unknown = Vec::new();
        for (var, value) in vars {
            if RESERVED_ENV_VARS.contains(&var.as_str()) {
                continue;
            }
            if var.starts_with(LIBRDKAFKA_ENV_PREFIX) || var.starts_with(KAFKA_LIBRDKAFKA_ENV_PREFIX) {
                match librdkafka_key_from_env(var) {
                    Some(key) => {
                        self.kafka.librdkafka.insert(key, value.clone());
                    }
                    None => unknown.push(var.clone()),
                }
                continue;
            }
            let name = &var[ENV_PREFIX.len()..];
            match ENV_SETTERS.iter().find(|(n, _)| *n == name) {
                Some((_, set)) => {
                    set(self, value).map_err(|reason| ConfigError::InvalidEnv { var: var.clone(), reason })?
                }
                None => unknown.push(var.clone()),
            }
        }
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::UnknownEnv { vars: unknown })
        }
    }

    /// Applies the command-line flags that are set.
    pub fn apply_overrides(&mut self, o: &Overrides) {
        let k = &mut self.kafka;
        if let Some(v) = &o.brokers {
            k.brokers = v.clone();
        }
        if let Some(v) = &o.group_id {
            k.group_id = v.clone();
        }
        if let Some(v) = &o.input_topics {
            k.input_topics = v.clone();
        }
        if let Some(v) = &o.output_topic {
            k.output_topic = v.clone();
        }
        if let Some(v) = o.processing_guarantee {
            k.processing_guarantee = v;
        }
        if let Some(v) = &o.transactional_id {
            k.transactional_id = Some(v.clone());
        }
        if let Some(v) = o.listen {
            self.http.listen = v;
        }
        if let Some(v) = &o.model_path {
            self.model.path = v.clone();
        }
    }

    /// Checks every rule and reports all broken ones.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let k = &self.kafka;
        if k.brokers.trim().is_empty() {
            problems.push(Problem::MissingBrokers);
        }
        if k.group_id.trim().is_empty() {
            problems.push(Problem::EmptyGroupId);
        }
        if k.input_topics.is_empty() {
            problems.push(Problem::NoInputTopics);
        }
        let mut topics: Vec<(&'static str, &str)> =
            k.input_topics.iter().map(|t| ("kafka.input_topics", t.as_str())).collect();
        topics.push(("kafka.output_topic", &k.output_topic));
        topics.push(("kafka.dead_letter_topic", &k.dead_letter_topic));
        topics.push(("kafka.state_topic", &k.state_topic));
        let repartition_topic = k.repartition_topic();
        if k.repartition {
            topics.push(("kafka.repartition_topic", &repartition_topic));
        }
        for (i, &(key, topic)) in topics.iter().enumerate() {
            if !valid_topic_name(topic) {
                problems.push(Problem::InvalidTopicName { key, topic: topic.to_owned() });
                continue;
            }
            // Reading what we write would loop transitions back in as events; two outputs on
            // one topic would mix record kinds that consumers cannot tell apart.
            if let Some(&(first, _)) = topics[..i].iter().find(|&&(_, t)| t == topic) {
                problems.push(Problem::TopicReused { topic: topic.to_owned(), first, second: key });
            }
        }
        if !COMMIT_INTERVAL_MS_RANGE.contains(&k.commit_interval_ms) {
            problems.push(Problem::CommitInterval { value: k.commit_interval_ms });
        }
        if k.transactional_id.as_deref().is_some_and(|t| t.trim().is_empty()) {
            problems.push(Problem::EmptyTransactionalId);
        }
        if k.librdkafka.keys().any(|key| key.trim().is_empty()) {
            problems.push(Problem::EmptyLibrdkafkaKey);
        }
        if let Some(url) = &self.http.advertise {
            let ok = (url.starts_with("http://") || url.starts_with("https://"))
                && !url.chars().any(char::is_whitespace)
                && url.split_once("://").is_some_and(|(_, rest)| !rest.is_empty());
            if !ok {
                problems.push(Problem::InvalidAdvertise);
            }
        }
        if self.model.path.as_os_str().is_empty() {
            problems.push(Problem::EmptyModelPath);
        }
        if self.input.max_event_bytes == 0 {
            problems.push(Problem::ZeroMaxEventBytes);
        }
        if parse_duration_ms(&self.input.max_future_skew).is_none() {
            problems.push(Problem::InvalidDuration {
                key: "input.max_future_skew",
                value: self.input.max_future_skew.clone(),
            });
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { problems })
        }
    }
}

/// Kafka's legal topic names: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn valid_topic_name(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_TOPIC_LEN
        && t != "."
        && t != ".."
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// 1-based line and column (in characters) of byte offset `pos` in `text`.
fn line_column(text: &str, pos: usize) -> (usize, usize) {
    let before = &text[..pos.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// A value of the `[kafka.librdkafka]` table: a scalar as its string, or a nested table (bare
/// dotted keys).
enum Prop {
    Value(String),
    Table(Vec<(String, Prop)>),
}

impl<'de> Deserialize<'de> for Prop {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PropVisitor)
    }
}

struct PropVisitor;

impl<'de> Visitor<'de> for PropVisitor {
    type Value = Prop;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a librdkafka property value: a string, an integer or a boolean")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Prop, E> {
        Ok(Prop::Value(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Prop, E> {
        Ok(Prop::Value(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Prop, E> {
        Ok(Prop::Value(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Prop, E> {
        Ok(Prop::Value(v.to_string()))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Prop, E> {
        Ok(Prop::Value(v.to_string()))
    }

    // The messages below never quote the value: it may be a secret.
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Prop, E> {
        Err(E::custom("librdkafka values must be strings, integers or booleans; write a float as a string"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Prop, A::Error> {
        Err(de::Error::custom(
            "librdkafka values must be strings, integers or booleans; write a list as a comma-separated string",
        ))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Prop, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if key.starts_with("$__toml_private") {
                // How the toml crate hands over a date-time.
                return Err(de::Error::custom("librdkafka values must be strings, integers or booleans; quote a date"));
            }
            entries.push((key, map.next_value::<Prop>()?));
        }
        Ok(Prop::Table(entries))
    }
}

fn flatten(prefix: &str, entries: Vec<(String, Prop)>, out: &mut BTreeMap<String, String>) -> Result<(), String> {
    for (key, prop) in entries {
        let full = if prefix.is_empty() { key } else { format!("{prefix}.{key}") };
        match prop {
            Prop::Value(v) => {
                if out.insert(full.clone(), v).is_some() {
                    return Err(format!("librdkafka property `{full}` is given twice"));
                }
            }
            Prop::Table(inner) => flatten(&full, inner, out)?,
        }
    }
    Ok(())
}

fn de_librdkafka<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    match Prop::deserialize(d)? {
        Prop::Table(entries) => {
            let mut out = BTreeMap::new();
            flatten("", entries, &mut out).map_err(de::Error::custom)?;
            Ok(out)
        }
        Prop::Value(_) => Err(de::Error::custom("kafka.librdkafka must be a table of librdkafka properties")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn brokers_env() -> HashMap<String, String> {
        env(&[("LEADSCORE_KAFKA_BROKERS", "127.0.0.1:9092")])
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("leadscore.toml"))
    }

    fn load_text(text: &str, env: &HashMap<String, String>, o: &Overrides) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leadscore.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(Some(&path), env, o)
    }

    fn codes(e: &ConfigError) -> Vec<&'static str> {
        e.problems().iter().map(Problem::code).collect()
    }

    #[test]
    fn defaults() {
        let c = Config::load(None, &brokers_env(), &Overrides::default()).unwrap();
        let k = &c.kafka;
        assert_eq!(k.brokers, "127.0.0.1:9092");
        assert_eq!(k.group_id, "leadscore");
        assert_eq!(k.input_topics, ["lead-events"]);
        assert_eq!(k.output_topic, "leads-qualified");
        assert_eq!(k.dead_letter_topic, "lead-events-dlq");
        assert_eq!(k.state_topic, "leadscore-state");
        assert_eq!(k.processing_guarantee, ProcessingGuarantee::ExactlyOnce);
        assert_eq!(k.commit_interval_ms, 100);
        assert_eq!(k.transactional_id, None);
        assert!(k.transactional_id().starts_with("leadscore-"));
        assert!(k.transactional_id().len() > "leadscore-".len());
        assert!(k.librdkafka.is_empty());
        assert_eq!(c.http.listen, "127.0.0.1:9898".parse::<SocketAddr>().unwrap());
        assert_eq!(c.http.advertise, None);
        assert_eq!(c.http.advertise_url(), "http://127.0.0.1:9898");
        assert_eq!(c.model.path, PathBuf::from("examples/model.toml"));
        assert_eq!(c.input.max_event_bytes, 65_536);
        assert_eq!(c.input.max_future_skew_ms(), 300_000);
    }

    #[test]
    fn example_file_is_complete_and_at_defaults() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/leadscore.toml"));
        let from_file = Config::load(Some(path), &HashMap::new(), &Overrides::default()).unwrap();
        let defaults = Config::load(None, &brokers_env(), &Overrides::default()).unwrap();
        assert_eq!(defaults.kafka.processing_guarantee, ProcessingGuarantee::ExactlyOnce);
        assert_eq!(from_file, defaults);
        // Every key is written out (commented-out optional keys included).
        let text = std::fs::read_to_string(path).unwrap();
        for var in ENV_VARS {
            let key = var.trim_start_matches(ENV_PREFIX).split_once('_').unwrap().1.to_ascii_lowercase();
            assert!(text.contains(&format!("{key} =")), "examples/leadscore.toml lacks {key}");
        }
    }

    #[test]
    fn empty_file_and_empty_sections_take_defaults() {
        let c = parse("[kafka]\nbrokers = \"b:9092\"\n[http]\n[model]\n[input]\n").unwrap();
        assert_eq!(c.kafka.group_id, "leadscore");
        assert_eq!(c.input.max_future_skew, "5m");
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn precedence_file_then_env_then_flags() {
        let file = r#"
[kafka]
brokers = "file:9092"
group_id = "from-file"
output_topic = "out-file"
commit_interval_ms = 250
processing_guarantee = "at_least_once"

[http]
listen = "0.0.0.0:8080"
"#;
        let e = env(&[
            ("LEADSCORE_KAFKA_BROKERS", "env:9092"),
            ("LEADSCORE_KAFKA_GROUP_ID", "from-env"),
            ("LEADSCORE_KAFKA_INPUT_TOPICS", "a, b,,c"),
            ("LEADSCORE_MODEL_PATH", "/etc/leadscore/model.toml"),
            ("LEADSCORE_LOG", "debug"),
            ("PATH", "/usr/bin"),
        ]);
        let flags = Overrides {
            group_id: Some("from-flag".into()),
            processing_guarantee: Some(ProcessingGuarantee::ExactlyOnce),
            transactional_id: Some("tx-1".into()),
            ..Overrides::default()
        };
        let c = load_text(file, &e, &flags).unwrap();
        assert_eq!(c.kafka.brokers, "env:9092", "env beats file");
        assert_eq!(c.kafka.group_id, "from-flag", "flag beats env and file");
        assert_eq!(c.kafka.output_topic, "out-file", "file beats default");
        assert_eq!(c.kafka.commit_interval_ms, 250);
        assert_eq!(c.kafka.processing_guarantee, ProcessingGuarantee::ExactlyOnce);
        assert_eq!(c.kafka.input_topics, ["a", "b", "c"]);
        assert_eq!(c.kafka.transactional_id(), "tx-1");
        assert_eq!(c.http.listen.port(), 8080);
        assert!(!c.http.advertise_url().contains("0.0.0.0"));
        assert_eq!(c.model.path, PathBuf::from("/etc/leadscore/model.toml"));
    }

    #[test]
    fn every_env_var_sets_its_key() {
        let e = env(&[
            ("LEADSCORE_KAFKA_BROKERS", "b1:9092,b2:9092"),
            ("LEADSCORE_KAFKA_GROUP_ID", "g"),
            ("LEADSCORE_KAFKA_INPUT_TOPICS", "in1,in2"),
            ("LEADSCORE_KAFKA_OUTPUT_TOPIC", "out"),
            ("LEADSCORE_KAFKA_DEAD_LETTER_TOPIC", "dlq"),
            ("LEADSCORE_KAFKA_STATE_TOPIC", "state"),
            ("LEADSCORE_KAFKA_REPARTITION", "false"),
            ("LEADSCORE_KAFKA_REPARTITION_TOPIC", "rekey"),
            ("LEADSCORE_KAFKA_PROCESSING_GUARANTEE", "at_least_once"),
            ("LEADSCORE_KAFKA_COMMIT_INTERVAL_MS", "500"),
            ("LEADSCORE_KAFKA_TRANSACTIONAL_ID", "tx"),
            ("LEADSCORE_HTTP_LISTEN", "[::1]:9000"),
            ("LEADSCORE_HTTP_ADVERTISE", "http://leadscore-0:9000/"),
            ("LEADSCORE_MODEL_PATH", "m.toml"),
            ("LEADSCORE_INPUT_MAX_EVENT_BYTES", "1024"),
            ("LEADSCORE_INPUT_MAX_FUTURE_SKEW", "90s"),
        ]);
        assert_eq!(e.len(), ENV_VARS.len());
        assert_eq!(ENV_SETTERS.len(), ENV_VARS.len());
        for (name, _) in ENV_SETTERS {
            assert!(ENV_VARS.contains(&format!("{ENV_PREFIX}{name}").as_str()), "{name} missing from ENV_VARS");
        }
        let c = Config::load(None, &e, &Overrides::default()).unwrap();
        let k = &c.kafka;
        assert_eq!((k.brokers.as_str(), k.group_id.as_str(), k.output_topic.as_str()), ("b1:9092,b2:9092", "g", "out"));
        assert_eq!(k.input_topics, ["in1", "in2"]);
        assert_eq!((k.dead_letter_topic.as_str(), k.state_topic.as_str()), ("dlq", "state"));
        assert!(!k.repartition);
        assert_eq!(k.repartition_topic(), "rekey");
        assert_eq!(k.processing_guarantee, ProcessingGuarantee::AtLeastOnce);
        assert_eq!(k.commit_interval_ms, 500);
        assert_eq!(k.transactional_id(), "tx");
        assert_eq!(c.http.listen, "[::1]:9000".parse::<SocketAddr>().unwrap());
        assert_eq!(c.http.advertise_url(), "http://leadscore-0:9000");
        assert_eq!(c.model.path, PathBuf::from("m.toml"));
        assert_eq!(c.input.max_event_bytes, 1024);
        assert_eq!(c.input.max_future_skew_ms(), 90_000);
    }

    #[test]
    fn unknown_key_in_file_names_key_and_line() {
        let err = parse("[kafka]\nbrokers = \"b:9092\"\nbrokerz = \"x\"\n").unwrap_err();
        assert_eq!(err.code(), "unknown_key");
        let msg = err.to_string();
        assert!(msg.contains("brokerz"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
        assert!(msg.contains("leadscore.toml"), "{msg}");

        let err = parse("[kafka]\nbrokers = \"b:9092\"\n\n[metrics]\nport = 1\n").unwrap_err();
        assert_eq!(err.code(), "unknown_key");
        assert!(err.to_string().contains("metrics") && err.to_string().contains("line 4"), "{err}");

        let err = parse("[input]\nmax_event_size = 10\n").unwrap_err();
        assert!(matches!(err, ConfigError::UnknownKey { line: Some(2), .. }), "{err}");
    }

    #[test]
    fn type_and_syntax_errors_have_locations() {
        let err = parse("[kafka]\ncommit_interval_ms = \"fast\"\n").unwrap_err();
        assert_eq!(err.code(), "config_parse");
        assert!(matches!(err, ConfigError::Parse { line: Some(2), .. }), "{err}");
        let err = parse("[kafka\n").unwrap_err();
        assert_eq!(err.code(), "config_parse");
        let err = parse("[kafka]\nprocessing_guarantee = \"twice\"\n").unwrap_err();
        assert!(err.to_string().contains("exactly_once"), "{err}");
        let err = parse("[http]\nlisten = \"localhost\"\n").unwrap_err();
        assert!(matches!(err, ConfigError::Parse { line: Some(2), .. }), "{err}");
    }

    #[test]
    fn unknown_env_vars_are_errors_except_reserved() {
        let mut e = brokers_env();
        e.insert("LEADSCORE_KAFKA_BROKER".into(), "x".into());
        e.insert("LEADSCORE_HTTP_PORT".into(), "1".into());
        e.insert("LEADSCORE_LOG".into(), "info".into());
        e.insert("LEADSCORE_LIBRDKAFKA_".into(), "x".into());
        let err = Config::load(None, &e, &Overrides::default()).unwrap_err();
        assert_eq!(err.code(), "unknown_env");
        let ConfigError::UnknownEnv { vars } = &err else { panic!("{err}") };
        assert_eq!(vars, &["LEADSCORE_HTTP_PORT", "LEADSCORE_KAFKA_BROKER", "LEADSCORE_LIBRDKAFKA_"]);
        assert!(err.to_string().contains("LEADSCORE_KAFKA_BROKERS"), "lists the known names: {err}");

        let ok = env(&[("LEADSCORE_KAFKA_BROKERS", "b:1"), ("LEADSCORE_LOG", "debug"), ("OTHER_VAR", "1")]);
        Config::load(None, &ok, &Overrides::default()).unwrap();
    }

    #[test]
    fn invalid_env_values() {
        for (var, value) in [
            ("LEADSCORE_KAFKA_COMMIT_INTERVAL_MS", "fast"),
            ("LEADSCORE_HTTP_LISTEN", "nowhere"),
            ("LEADSCORE_KAFKA_PROCESSING_GUARANTEE", "maybe"),
            ("LEADSCORE_INPUT_MAX_EVENT_BYTES", "-1"),
        ] {
            let mut e = brokers_env();
            e.insert(var.into(), value.into());
            let err = Config::load(None, &e, &Overrides::default()).unwrap_err();
            assert_eq!(err.code(), "invalid_env", "{var}");
            assert!(err.to_string().contains(var), "{err}");
        }
    }

    #[test]
    fn librdkafka_from_file_and_env() {
        let file = r#"
[kafka]
brokers = "b:9092"

[kafka.librdkafka]
"security.protocol" = "SASL_SSL"
sasl.mechanism = "PLAIN"
sasl.username = "svc"
"fetch.wait.max.ms" = 10
"enable.idempotence" = true
"statistics.interval.ms" = 0
"#;
        let e = env(&[
            ("LEADSCORE_KAFKA_BROKERS", "b:9092"),
            ("LEADSCORE_LIBRDKAFKA_SASL_PASSWORD", "hunter2"),
            ("LEADSCORE_LIBRDKAFKA_FETCH_WAIT_MAX_MS", "5"),
            ("LEADSCORE_LIBRDKAFKA_SOME__UNDERSCORED_KEY", "v"),
            ("LEADSCORE_KAFKA_LIBRDKAFKA_CLIENT_RACK", "r1"),
        ]);
        let c = load_text(file, &e, &Overrides::default()).unwrap();
        let expected: BTreeMap<String, String> = [
            ("enable.idempotence", "true"),
            ("fetch.wait.max.ms", "5"),
            ("sasl.mechanism", "PLAIN"),
            ("sasl.password", "hunter2"),
            ("sasl.username", "svc"),
            ("security.protocol", "SASL_SSL"),
            ("client.rack", "r1"),
            ("some_underscored.key", "v"),
            ("statistics.interval.ms", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(c.kafka.librdkafka, expected);
        assert_eq!(librdkafka_key_from_env("LEADSCORE_LIBRDKAFKA_SSL_KEY_PEM").as_deref(), Some("ssl.key.pem"));
        assert_eq!(librdkafka_key_from_env("LEADSCORE_KAFKA_BROKERS"), None);
        assert_eq!(librdkafka_key_from_env("LEADSCORE_KAFKA_LIBRDKAFKA_"), None);
    }

    #[test]
    fn librdkafka_rejects_other_value_types_without_quoting_them() {
        let err = parse("[kafka.librdkafka]\n\"sasl.password\" = 3.14159\n").unwrap_err();
        assert_eq!(err.code(), "config_parse");
        assert!(matches!(err, ConfigError::Parse { line: Some(2), .. }), "{err}");
        assert!(!err.to_string().contains("3.14159"), "{err}");
        let err = parse("[kafka.librdkafka]\n\"ssl.key.password\" = [\"s3cr3t\"]\n").unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        // A syntax error on a secret line: the line itself is not quoted.
        let err = parse("[kafka.librdkafka]\n\"sasl.password\" = \"s3cr3t\n").unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        let err = parse("[kafka.librdkafka]\n\"sasl.mechanism\" = \"A\"\nsasl.mechanism = \"B\"\n").unwrap_err();
        assert!(err.to_string().contains("given twice"), "{err}");
    }

    #[test]
    fn secrets_are_redacted() {
        let file = r#"
[kafka]
brokers = "b:9092"

[kafka.librdkafka]
"security.protocol" = "SASL_SSL"
"sasl.username" = "svc"
"sasl.password" = "hunter2-file"
"ssl.key.pem" = "-----BEGIN PRIVATE KEY-----MIIE"
"ssl.key.password" = "keypass"
"sasl.oauthbearer.client.secret" = "oauth-secret"
"sasl.oauthbearer.config" = "token=abc"
"sasl.jaas.config" = "jaas-inline"
"#;
        let mut e = HashMap::new();
        e.insert("LEADSCORE_LIBRDKAFKA_SASL_PASSWORD".to_owned(), "hunter2-env".to_owned());
        let c = load_text(file, &e, &Overrides::default()).unwrap();
        assert_eq!(c.kafka.librdkafka["sasl.password"], "hunter2-env");
        let debug = format!("{c:?}");
        let pretty = format!("{c:#?}");
        for secret in ["hunter2", "BEGIN PRIVATE", "keypass", "oauth-secret", "jaas-inline"] {
            assert!(!debug.contains(secret), "{secret} leaked: {debug}");
            assert!(!pretty.contains(secret), "{secret} leaked: {pretty}");
        }
        assert!(debug.contains("SASL_SSL") && debug.contains("svc"), "non-secrets stay visible: {debug}");
        let r = c.kafka.redacted();
        assert_eq!(r["sasl.password"], REDACTED);
        assert_eq!(r["ssl.key.pem"], REDACTED);
        assert_eq!(r["security.protocol"], "SASL_SSL");
        assert!(is_sensitive("SSL.KEY.LOCATION") && is_sensitive("sasl.oauthbearer.token.endpoint.url"));
        assert!(!is_sensitive("bootstrap.servers"));
    }

    #[test]
    fn validation_collects_every_problem() {
        let file = r#"
[kafka]
brokers = " "
group_id = ""
input_topics = ["leads", "bad topic"]
output_topic = "leads"
dead_letter_topic = "leads-dlq"
state_topic = "leads-dlq"
commit_interval_ms = 0
transactional_id = ""

[http]
advertise = "leadscore-0:9898"

[model]
path = ""

[input]
max_event_bytes = 0
max_future_skew = "5 minutes"
"#;
        let err = load_text(file, &HashMap::new(), &Overrides::default()).unwrap_err();
        assert_eq!(err.code(), "invalid_config");
        assert_eq!(
            codes(&err),
            [
                "missing_brokers",
                "empty_group_id",
                "invalid_topic_name",
                "topic_reused",
                "topic_reused",
                "commit_interval_out_of_range",
                "empty_transactional_id",
                "invalid_advertise",
                "empty_model_path",
                "invalid_max_event_bytes",
                "invalid_duration",
            ]
        );
        let msg = err.to_string();
        assert!(msg.contains("\"leads\" is used as both kafka.input_topics and kafka.output_topic"), "{msg}");
        assert!(msg.contains("\"leads-dlq\" is used as both kafka.dead_letter_topic and kafka.state_topic"), "{msg}");
    }

    #[test]
    fn validation_edges() {
        let check = |o: Overrides, e: &[(&str, &str)]| {
            let mut env = brokers_env();
            env.extend(e.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            Config::load(None, &env, &o).map(|_| ()).map_err(|e| codes(&e))
        };
        assert_eq!(check(Overrides::default(), &[("LEADSCORE_KAFKA_COMMIT_INTERVAL_MS", "1")]), Ok(()));
        assert_eq!(check(Overrides::default(), &[("LEADSCORE_KAFKA_COMMIT_INTERVAL_MS", "60000")]), Ok(()));
        assert_eq!(
            check(Overrides::default(), &[("LEADSCORE_KAFKA_COMMIT_INTERVAL_MS", "60001")]),
            Err(vec!["commit_interval_out_of_range"])
        );
        assert_eq!(
            check(Overrides { input_topics: Some(vec![]), ..Overrides::default() }, &[]),
            Err(vec!["no_input_topics"])
        );
        assert_eq!(
            check(Overrides::default(), &[("LEADSCORE_KAFKA_INPUT_TOPICS", " , ")]),
            Err(vec!["no_input_topics"])
        );
        assert_eq!(
            check(Overrides { output_topic: Some("lead-events".into()), ..Overrides::default() }, &[]),
            Err(vec!["topic_reused"])
        );
        assert_eq!(
            check(Overrides::default(), &[("LEADSCORE_INPUT_MAX_FUTURE_SKEW", "5")]),
            Err(vec!["invalid_duration"])
        );
        assert_eq!(
            check(Overrides { brokers: Some(String::new()), ..Overrides::default() }, &[]),
            Err(vec!["missing_brokers"])
        );
        assert_eq!(check(Overrides::default(), &[("LEADSCORE_HTTP_ADVERTISE", "https://ls.example:443")]), Ok(()));
        // Missing brokers everywhere.
        let err = Config::load(None, &HashMap::new(), &Overrides::default()).unwrap_err();
        assert_eq!(codes(&err), ["missing_brokers"]);
        assert!(err.to_string().contains("LEADSCORE_KAFKA_BROKERS"), "{err}");
    }

    #[test]
    fn unreadable_file() {
        let err = Config::load(Some(Path::new("/nonexistent/leadscore.toml")), &brokers_env(), &Overrides::default())
            .unwrap_err();
        assert_eq!(err.code(), "config_unreadable");
    }

    #[test]
    fn processing_guarantee_strings() {
        for g in [ProcessingGuarantee::ExactlyOnce, ProcessingGuarantee::AtLeastOnce] {
            assert_eq!(g.as_str().parse::<ProcessingGuarantee>(), Ok(g));
            assert_eq!(g.to_string(), g.as_str());
        }
    }
}
