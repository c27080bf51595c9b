//! Time on the wire: RFC 3339 timestamps, epoch milliseconds and model durations.
//!
//! All engine time is whole milliseconds since the Unix epoch (`i64`). Parsing is hand written
//! (no allocation, no locale, no leap-second surprises) because it sits on the per-event path and
//! because the accepted forms are part of the contract (spec section 2).

/// 1970-01-01T00:00:00.000Z: the earliest valid event time.
pub const MIN_TIMESTAMP_MS: i64 = 0;
/// 9999-12-31T23:59:59.999Z: the latest valid event time.
pub const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;

const MS_PER_DAY: i64 = 86_400_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (`civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        _ => 28,
    }
}

fn digits(b: &[u8]) -> Option<i64> {
    if b.is_empty() {
        return None;
    }
    let mut v = 0i64;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(c - b'0');
    }
    Some(v)
}

/// Parses an RFC 3339 date-time (`2026-12-03T10:15:00.123456Z`, `...+02:00`) into UTC epoch
/// milliseconds, truncating digits finer than a millisecond.
///
/// Accepted: `T` or `t` between date and time, `Z`/`z` or a `±HH:MM` offset, any number of
/// fraction digits. Rejected: leap seconds (`:60`), dates that do not exist, results outside
/// [`MIN_TIMESTAMP_MS`]..=[`MAX_TIMESTAMP_MS`]. Returns `None` on anything else.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                millis = millis * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return None;
        }
        for _ in n..3 {
            millis *= 10;
        }
    }
    let offset_min = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = digits(&b[i + 1..i + 3])?;
            let om = digits(&b[i + 4..i + 6])?;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 60 + om;
            if *sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let ms = days * MS_PER_DAY + ((hour * 60 + minute - offset_min) * 60 + second) * 1000 + millis;
    (MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(&ms).then_some(ms)
}

/// Writes `ms` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, always three fraction digits).
///
/// Defined for `0..=MAX_TIMESTAMP_MS`; later times (a decay crossing computed centuries ahead)
/// still format, with a wider year.
pub fn write_rfc3339_ms(out: &mut Vec<u8>, ms: i64) {
    let days = ms.div_euclid(MS_PER_DAY);
    let rem = ms.rem_euclid(MS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let (h, rem) = (rem / 3_600_000, rem % 3_600_000);
    let (mi, rem) = (rem / 60_000, rem % 60_000);
    let (s, milli) = (rem / 1000, rem % 1000);
    let mut buf = itoa::Buffer::new();
    let ys = buf.format(y);
    for _ in ys.len()..4 {
        out.push(b'0');
    }
    out.extend_from_slice(ys.as_bytes());
    let two = |out: &mut Vec<u8>, sep: u8, v: i64| {
        out.push(sep);
        out.push(b'0' + (v / 10) as u8);
        out.push(b'0' + (v % 10) as u8);
    };
    two(out, b'-', m);
    two(out, b'-', d);
    two(out, b'T', h);
    two(out, b':', mi);
    two(out, b':', s);
    out.push(b'.');
    out.push(b'0' + (milli / 100) as u8);
    out.push(b'0' + (milli / 10 % 10) as u8);
    out.push(b'0' + (milli % 10) as u8);
    out.push(b'Z');
}

/// [`write_rfc3339_ms`] into a new `String`.
pub fn format_rfc3339_ms(ms: i64) -> String {
    let mut v = Vec::with_capacity(24);
    write_rfc3339_ms(&mut v, ms);
    String::from_utf8(v).expect("ASCII")
}

/// Parses a model duration: a non-negative decimal number and a unit, `s`, `m`, `h`, `d` or `w`
/// (`"14d"`, `"1.5h"`, `"90s"`), into whole milliseconds. A duration that is not a whole number of
/// milliseconds, or too large for `i64` milliseconds, is rejected.
pub fn parse_duration_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.len().checked_sub(1)?);
    let unit_ms: i64 = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 604_800_000,
        _ => return None,
    };
    let (int_part, frac_part) = match num.split_once('.') {
        Some((_, "")) => return None,
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int_part.is_empty() || int_part.len() > 15 || frac_part.len() > 9 {
        return None;
    }
    let int = digits(int_part.as_bytes())?;
    let frac = if frac_part.is_empty() { 0 } else { digits(frac_part.as_bytes())? };
    let scale = 10i64.pow(frac_part.len() as u32);
    // ms = (int + frac/scale) * unit_ms, exactly; the fraction must land on a whole millisecond.
    let frac_ms_num = i128::from(frac) * i128::from(unit_ms);
    if frac_ms_num % i128::from(scale) != 0 {
        return None;
    }
    let total = i128::from(int) * i128::from(unit_ms) + frac_ms_num / i128::from(scale);
    i64::try_from(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_forms() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("2026-12-03T10:15:00.000Z"), Some(1_796_292_900_000));
        assert_eq!(parse_rfc3339_ms("2026-12-03T10:15:00.1239999Z"), Some(1_796_292_900_123));
        assert_eq!(parse_rfc3339_ms("2026-12-03T12:15:00+02:00"), Some(1_796_292_900_000));
        assert_eq!(parse_rfc3339_ms("2026-12-03t08:15:00-02:00"), Some(1_796_292_900_000));
        assert_eq!(parse_rfc3339_ms("2026-12-03T10:15:00.5z"), Some(1_796_292_900_500));
        assert_eq!(parse_rfc3339_ms("9999-12-31T23:59:59.999Z"), Some(MAX_TIMESTAMP_MS));
        assert_eq!(parse_rfc3339_ms("2024-02-29T00:00:00Z"), Some(1_709_164_800_000));
    }

    #[test]
    fn rfc3339_rejects() {
        for bad in [
            "",
            "2026-12-03",
            "2026-12-03 10:15:00Z",
            "2026-12-03T10:15:00",
            "2026-12-03T10:15:00.Z",
            "2026-12-03T10:15:60Z",
            "2026-13-03T10:15:00Z",
            "2025-02-29T00:00:00Z",
            "2026-12-03T24:00:00Z",
            "2026-12-03T10:15:00+24:00",
            "2026-12-03T10:15:00+0200",
            "1969-12-31T23:59:59.999Z",
            "1970-01-01T00:30:00+01:00",
            "+2026-12-03T10:15:00Z",
            "2026-12-03T10:15:00ZZ",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn format_round_trips() {
        for ms in [0, 1, 999, 1_796_292_900_123, MAX_TIMESTAMP_MS, 951_782_400_000] {
            let s = format_rfc3339_ms(ms);
            assert_eq!(parse_rfc3339_ms(&s), Some(ms), "{s}");
        }
        assert_eq!(format_rfc3339_ms(1_796_292_900_000), "2026-12-03T10:15:00.000Z");
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("14d"), Some(14 * 86_400_000));
        assert_eq!(parse_duration_ms("1.5h"), Some(5_400_000));
        assert_eq!(parse_duration_ms("90s"), Some(90_000));
        assert_eq!(parse_duration_ms("0.001s"), Some(1));
        assert_eq!(parse_duration_ms("2w"), Some(1_209_600_000));
        assert_eq!(parse_duration_ms("5m"), Some(300_000));
        assert_eq!(parse_duration_ms("0s"), Some(0));
        for bad in ["", "d", "14", "14x", "-1d", "1.d", ".5d", "0.0001s", "1e3s", "1 d", "99999999999999999d"] {
            assert_eq!(parse_duration_ms(bad), None, "{bad}");
        }
    }
}
