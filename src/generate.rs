//! Synthetic lead activity: realistic enough to exercise every rule of the example model and
//! every rejection path, reproducible from a seed.
//!
//! Activity per lead is skewed (a power law: a few leads are very busy, most are quiet); events
//! come in browsing sessions; the mix includes logins, trials, webinars, profile updates,
//! unsubscribes, competitor signups, bot bursts of marketing clicks, late events (timestamps up
//! to a day in the past), exact duplicates and a small share of malformed records.

use std::io::{self, Write};

use crate::time::write_rfc3339_ms;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Distinct lead ids to draw from.
    pub leads: u64,
    /// Seed of the pseudo-random sequence; the same seed gives the same records.
    pub seed: u64,
    /// Event time of the first record, epoch milliseconds.
    pub start_ms: i64,
    /// Events per second of event time (spacing of timestamps).
    pub rate_per_s: f64,
    /// Power-law exponent of activity per lead: 0 is uniform, 2 is strongly skewed.
    pub skew: f64,
    /// Share of records that are malformed (each of several kinds).
    pub malformed_share: f64,
    /// Share of records that repeat an earlier record exactly (same `event_id`).
    pub duplicate_share: f64,
    /// Share of events whose timestamp is up to a day behind.
    pub late_share: f64,
    /// Share of events that carry an `event_id`.
    pub event_id_share: f64,
    /// Leads in turn (`seq % leads`) instead of the power law: every lead once per `leads`
    /// records (memory benchmarks).
    pub round_robin: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            leads: 100_000,
            seed: 42,
            start_ms: 1_796_256_000_000, // 2026-12-03T00:00:00Z
            rate_per_s: 1000.0,
            skew: 1.2,
            malformed_share: 0.005,
            duplicate_share: 0.01,
            late_share: 0.02,
            event_id_share: 1.0,
            round_robin: false,
        }
    }
}

/// SplitMix64: tiny, fast, good enough for traffic shapes, and stable across releases (a
/// dependency's generator could change its stream and silently change every benchmark input).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }
}

const PATHS: &[&str] = &[
    "/",
    "/",
    "/blog/lead-scoring-101",
    "/blog/sales-ops",
    "/product",
    "/product/integrations",
    "/docs/getting-started",
    "/pricing",
    "/pricing/enterprise",
    "/customers",
    "/careers",
    "/careers/engineering",
    "/contact",
];
const MARKETING: &[&str] = &["email_open", "email_open", "email_click", "ad_click"];
const SOCIAL: &[&str] = &["like", "share", "comment", "follow"];
const TITLES: &[&str] = &[
    "VP Sales",
    "Head of Marketing",
    "Director of Revenue Operations",
    "Chief Revenue Officer",
    "Sales Manager",
    "Account Executive",
    "Software Engineer",
    "Student",
    "Marketing Intern",
    "CTO",
];
const COUNTRIES: &[&str] = &["US", "GB", "DE", "FR", "CA", "AU", "NL", "IN", "BR", "JP"];
const DOMAINS: &[&str] = &["acme.com", "globex.com", "initech.com", "umbrella.io", "gmail.com", "rivalscore.com"];

/// The generator: call [`Generator::next_record`] for each record.
pub struct Generator {
    opts: GenerateOptions,
    rng: Rng,
    seq: u64,
    /// A recent record, re-sent as a duplicate now and then.
    last: Vec<u8>,
    /// Remaining records of a bot burst: (lead, count).
    burst: Option<(u64, u32)>,
    /// The lead of the current browsing session and its remaining page views.
    session: Option<(u64, u32)>,
    /// The lead of the last record (its Kafka key); `None` for malformed records.
    last_lead: Option<u64>,
}

impl Generator {
    pub fn new(opts: GenerateOptions) -> Generator {
        let rng = Rng::new(opts.seed);
        Generator { opts, rng, seq: 0, last: Vec::new(), burst: None, session: None, last_lead: None }
    }

    fn lead(&mut self) -> u64 {
        if self.opts.round_robin {
            return self.seq % self.opts.leads;
        }
        // Inverse-CDF of a power law over [0, leads): small indexes are the busy leads.
        let u = self.rng.f64();
        let x = u.powf(1.0 + self.opts.skew);
        ((x * self.opts.leads as f64) as u64).min(self.opts.leads - 1)
    }

    /// Event time of the current record: the configured rate, plus a late shift sometimes.
    fn timestamp(&mut self) -> i64 {
        let base = self.opts.start_ms + (self.seq as f64 * 1000.0 / self.opts.rate_per_s) as i64;
        if self.rng.chance(self.opts.late_share) {
            base - self.rng.below(86_400_000) as i64
        } else {
            base
        }
    }

    /// Appends the next record (one JSON line without the newline) to `out`.
    pub fn next_record(&mut self, out: &mut Vec<u8>) {
        self.seq += 1;
        let r = self.rng.f64();
        if r < self.opts.duplicate_share && !self.last.is_empty() {
            out.extend_from_slice(&self.last);
            return;
        }
        if r < self.opts.duplicate_share + self.opts.malformed_share {
            self.malformed(out);
            return;
        }
        let start = out.len();
        self.event(out);
        self.last.clear();
        self.last.extend_from_slice(&out[start..]);
    }

    /// The lead of the last record written (the Kafka key to use); `None` for malformed ones.
    pub fn last_lead(&self) -> Option<u64> {
        self.last_lead
    }

    fn malformed(&mut self, out: &mut Vec<u8>) {
        self.last_lead = None;
        let lead = self.lead();
        let ts = self.timestamp();
        match self.rng.below(6) {
            0 => out.extend_from_slice(b"{\"lead_id\":\"lead-1\",\"type\":\"login\",\"timest"),
            1 => out.extend_from_slice(b"[\"not\",\"an\",\"object\"]"),
            2 => write!(out, "{{\"lead_id\":\"lead-{lead}\",\"timestamp\":{ts}}}").expect("vec"),
            3 => write!(out, "{{\"lead_id\":\"lead-{lead}\",\"type\":\"login\",\"timestamp\":\"yesterday\"}}")
                .expect("vec"),
            4 => write!(out, "{{\"lead_id\":true,\"type\":\"login\",\"timestamp\":{ts}}}").expect("vec"),
            _ => out.extend_from_slice(b"{\"lead_id\":\"lead-\xff\",\"type\":\"login\"}"),
        }
    }

    fn event(&mut self, out: &mut Vec<u8>) {
        let (lead, kind) = if self.opts.round_robin {
            // Memory benchmarks: exactly one event per lead per round, no sessions or bursts.
            (self.lead(), self.rng.below(99))
        } else if let Some((lead, n)) = self.burst {
            self.burst = (n > 1).then_some((lead, n - 1));
            (lead, 100)
        } else if let Some((lead, n)) = self.session.filter(|_| self.rng.chance(0.7)) {
            self.session = (n > 1).then_some((lead, n - 1));
            (lead, 0)
        } else {
            (self.lead(), self.rng.below(100))
        };
        let ts = self.timestamp();
        self.last_lead = Some(lead);
        out.extend_from_slice(b"{\"lead_id\":\"lead-");
        out.extend_from_slice(itoa::Buffer::new().format(lead).as_bytes());
        out.extend_from_slice(b"\",\"type\":\"");
        let event_type = match kind {
            0..=39 => "website_visit",
            40..=49 => "login",
            50..=64 => "marketing_interaction",
            65..=69 => "social_interaction",
            70 => "social_unfollow",
            71..=73 => "webinar_registration",
            74..=75 => "event_registration",
            76..=77 => "trial_activation",
            78 => "activation",
            79..=81 => "signup",
            82 => "unsubscribe",
            83..=89 => "profile_update",
            90..=98 => "website_visit",
            99 => "marketing_interaction",
            _ => "marketing_interaction",
        };
        out.extend_from_slice(event_type.as_bytes());
        out.extend_from_slice(b"\",\"timestamp\":\"");
        write_rfc3339_ms(out, ts);
        out.push(b'"');
        if self.rng.chance(self.opts.event_id_share) {
            out.extend_from_slice(b",\"event_id\":\"e-");
            out.extend_from_slice(itoa::Buffer::new().format(self.seq).as_bytes());
            out.push(b'"');
        }
        out.extend_from_slice(b",\"properties\":{");
        match event_type {
            "website_visit" => {
                if kind < 40 && self.session.is_none() && self.rng.chance(0.3) {
                    self.session = Some((lead, 1 + self.rng.below(6) as u32));
                }
                let path = self.rng.pick(PATHS);
                let source = self.rng.pick(&["google", "linkedin", "newsletter", "direct"]);
                write!(out, "\"path\":\"{path}\",\"utm\":{{\"source\":\"{source}\"}}").expect("vec");
            }
            "marketing_interaction" => {
                if kind == 99 && !self.opts.round_robin {
                    // A bot: dozens of clicks from one lead in a burst.
                    self.burst = Some((lead, 20 + self.rng.below(40) as u32));
                }
                let action = if kind == 100 { "email_click" } else { self.rng.pick(MARKETING) };
                write!(out, "\"action\":\"{action}\",\"campaign\":\"c-{}\"", self.rng.below(20)).expect("vec");
            }
            "social_interaction" => {
                write!(out, "\"action\":\"{}\",\"network\":\"linkedin\"", self.rng.pick(SOCIAL)).expect("vec");
            }
            "signup" | "trial_activation" => {
                write!(out, "\"email_domain\":\"{}\",\"plan\":\"trial\"", self.rng.pick(DOMAINS)).expect("vec");
            }
            "profile_update" => {
                let size = [5, 30, 120, 800, 5000, 20000][self.rng.below(6) as usize];
                write!(
                    out,
                    "\"job_title\":\"{}\",\"company_size\":{size},\"country\":\"{}\"",
                    self.rng.pick(TITLES),
                    self.rng.pick(COUNTRIES)
                )
                .expect("vec");
            }
            "webinar_registration" | "event_registration" => {
                write!(out, "\"name\":\"w-{}\"", self.rng.below(12)).expect("vec");
            }
            _ => {}
        }
        out.extend_from_slice(b"}}");
    }
}

/// Writes `count` records as JSON lines.
pub fn write_jsonl(out: &mut impl Write, opts: GenerateOptions, count: u64) -> io::Result<()> {
    let mut gen = Generator::new(opts);
    let mut buf = Vec::with_capacity(1 << 16);
    for _ in 0..count {
        gen.next_record(&mut buf);
        buf.push(b'\n');
        if buf.len() > 60_000 {
            out.write_all(&buf)?;
            buf.clear();
        }
    }
    out.write_all(&buf)?;
    out.flush()
}

/// Produces records to a Kafka topic at `rate_per_s` (keyed by lead id) until `count` records
/// (if given) or until `stop` is set. Event times follow the wall clock: `opts.start_ms` is
/// replaced by now and `opts.rate_per_s` by the production rate. Returns the records sent.
pub fn produce(
    brokers: &str,
    topic: &str,
    mut opts: GenerateOptions,
    count: Option<u64>,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<u64, rdkafka::error::KafkaError> {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    let producer: ThreadedProducer<DefaultProducerContext> = crate::kafka::live_producer_config(brokers).create()?;
    opts.start_ms = crate::pipeline::wall_ms();
    let rate = opts.rate_per_s;
    let mut gen = Generator::new(opts);
    let started = Instant::now();
    let (mut sent, mut buf, mut key) = (0u64, Vec::with_capacity(512), String::new());
    while !stop.load(Ordering::Relaxed) && count.is_none_or(|c| sent < c) {
        // Send what the rate allows by now, then sleep a tick (1 ms: records leave within a
        // millisecond of when the rate makes them due, as from a live source).
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while sent < due && count.is_none_or(|c| sent < c) {
            buf.clear();
            gen.next_record(&mut buf);
            let mut record = BaseRecord::<str, [u8]>::to(topic).payload(&buf[..]);
            if let Some(lead) = gen.last_lead() {
                key.clear();
                key.push_str("lead-");
                key.push_str(itoa::Buffer::new().format(lead));
                record = record.key(key.as_str());
            }
            let mut record = record;
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                        r,
                    )) => {
                        record = r;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => return Err(e),
                }
            }
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_records_and_a_realistic_mix() {
        let gen = |seed| {
            let mut out = Vec::new();
            write_jsonl(&mut out, GenerateOptions { seed, ..Default::default() }, 20_000).unwrap();
            out
        };
        let a = gen(7);
        assert_eq!(a, gen(7));
        assert_ne!(a, gen(8));
        let text = String::from_utf8_lossy(&a);
        for t in ["website_visit", "login", "profile_update", "unsubscribe", "trial_activation", "rivalscore.com"] {
            assert!(text.contains(t), "{t} missing from the mix");
        }
        let lines: Vec<&[u8]> = a.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 20_000);
        let bad = lines.iter().filter(|l| serde_json::from_slice::<serde_json::Value>(l).is_err()).count();
        assert!(bad > 10 && bad < 200, "malformed share off: {bad}");
    }
}
