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
#[inline]
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    match parse_fixed_ms(s.as_bytes()) {
        Some(ms) => Some(ms),
        None => parse_general_ms(s),
    }
}

/// Days in each month (index 1..=12) of a common year.
const MONTH_DAYS: [u8; 13] = [0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/// The fast path of [`parse_rfc3339_ms`] for the form this service, JavaScript's
/// `toISOString` and most producers write: exactly `YYYY-MM-DDTHH:MM:SS.sssZ` (24 bytes, upper
/// case `T` and `Z`) with a year from 1970. Any other input, valid or not, gives `None` and goes
/// to the general parser; an input of this form that is not a valid time gives `None` too. When
/// it gives a value, it is the general parser's (a property test checks this on random input).
///
/// The text is read as three little-endian 8-byte words: the template check and the digit
/// values take a few word operations each instead of a loop per field, and with a year from
/// 1970 and no offset every valid time is in range, so no range check is needed.
#[inline]
pub fn parse_fixed_ms(s: &[u8]) -> Option<i64> {
    let b: &[u8; 24] = s.try_into().ok()?;
    let word = |k: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[8 * k..8 * k + 8]);
        u64::from_le_bytes(w)
    };
    let w = [word(0), word(1), word(2)];
    // Per word: the bytes that must be digits, and the exact separators elsewhere.
    //   "YYYY-MM-"   "DDTHH:MM"   ":SS.sssZ"
    const DIGITS: [u64; 3] = [0x00ff_ff00_ffff_ffff, 0xffff_00ff_ff00_ffff, 0x00ff_ffff_00ff_ff00];
    const SEPARATORS: [u64; 3] = [
        u64::from_le_bytes(*b"\0\0\0\0-\0\0-"),
        u64::from_le_bytes(*b"\0\0T\0\0:\0\0"),
        u64::from_le_bytes(*b":\0\0.\0\0\0Z"),
    ];
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    const HIGH_NIBBLES: u64 = 0xf0f0_f0f0_f0f0_f0f0;
    let mut bad = 0;
    for k in 0..3 {
        let (x, d) = (w[k], DIGITS[k]);
        // A byte is a digit when its high nibble is 3 and adding 6 keeps it 3 ('0'..='9').
        // The addition can carry out of a byte only from a byte >= 0xfa, which the first test
        // already fails, so a carry never hides a non-digit.
        bad |= ((x & HIGH_NIBBLES) ^ ZEROS) & d;
        bad |= ((x.wrapping_add(0x0606_0606_0606_0606) & HIGH_NIBBLES) ^ ZEROS) & d;
        bad |= (x ^ SEPARATORS[k]) & !d;
    }
    if bad != 0 {
        return None;
    }
    // Digit values with the separators zeroed (every digit byte is now '0'..='9': no borrow),
    // and in `pairs` byte j = 10 * digit j + digit j + 1, at most 99: no byte carries.
    let digits = [0, 1, 2].map(|k| (w[k] & DIGITS[k]) - (ZEROS & DIGITS[k]));
    let pairs = digits.map(|x| x * 10 + (x >> 8));
    let byte = |x: u64, j: u32| (x >> (8 * j)) as u8 as u32;
    let year = byte(pairs[0], 0) * 100 + byte(pairs[0], 2);
    let month = byte(pairs[0], 5);
    let (day, hour, minute) = (byte(pairs[1], 0), byte(pairs[1], 3), byte(pairs[1], 6));
    let second = byte(pairs[2], 1);
    let millis = byte(pairs[2], 4) * 10 + byte(digits[2], 6);
    if year < 1970 || hour > 23 || minute > 59 || second > 59 || day == 0 {
        return None;
    }
    let month_days = u32::from(*MONTH_DAYS.get(month as usize).filter(|_| month > 0)?);
    if day > month_days {
        // Only 29 February gets here and still exists.
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        if !(month == 2 && day == 29 && leap) {
            return None;
        }
    }
    // Days since 1970-01-01 (Howard Hinnant's `days_from_civil`, in unsigned arithmetic:
    // the year is at least 1969 after the shift to a March-based year).
    let y = if month <= 2 { year - 1 } else { year };
    let (era, yoe) = (y / 400, y % 400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = i64::from(days) * 86_400 + i64::from((hour * 60 + minute) * 60 + second);
    Some(seconds * 1000 + i64::from(millis))
}

/// [`parse_rfc3339_ms`] for every accepted form.
fn parse_general_ms(s: &str) -> Option<i64> {
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
    use proptest::prelude::*;

    #[test]
    fn fixed_form_fast_path() {
        let fast = |s: &str| parse_fixed_ms(s.as_bytes());
        // The form it takes, at the edges of the range and of the calendar.
        for (s, ms) in [
            ("1970-01-01T00:00:00.000Z", 0),
            ("2026-12-03T10:15:00.123Z", 1_796_292_900_123),
            ("9999-12-31T23:59:59.999Z", MAX_TIMESTAMP_MS),
            ("2024-02-29T00:00:00.000Z", 1_709_164_800_000),
            ("2000-02-29T12:00:00.000Z", 951_825_600_000),
            ("1972-12-31T23:59:59.999Z", 94_694_399_999),
            ("1973-01-01T00:00:00.000Z", 94_694_400_000),
            ("2000-03-01T00:00:00.000Z", 951_868_800_000),
            ("2023-03-01T00:00:00.000Z", 1_677_628_800_000),
            ("2024-03-01T00:00:00.000Z", 1_709_251_200_000),
        ] {
            assert_eq!(fast(s), Some(ms), "{s}");
            assert_eq!(parse_general_ms(s), Some(ms), "{s}");
        }
        // Invalid times of that form, and valid times of other forms: the fast path declines,
        // and the general parser decides.
        for s in [
            "2100-02-29T00:00:00.000Z",
            "2023-02-29T00:00:00.000Z",
            "2026-04-31T00:00:00.000Z",
            "2026-00-10T00:00:00.000Z",
            "2026-13-10T00:00:00.000Z",
            "2026-12-00T00:00:00.000Z",
            "2026-12-03T24:00:00.000Z",
            "2026-12-03T10:60:00.000Z",
            "2026-12-03T10:15:60.000Z",
            "1969-12-31T23:59:59.999Z",
            "2026-12-03t10:15:00.123Z",
            "2026-12-03T10:15:00.123z",
            "2026-12-03T10:15:00.12Z",
            "2026-12-03T10:15:00.1234Z",
            "2026-12-03T10:15:00+00:00",
            "2026-12-03T10:15:00.123+",
            "2026-12-03T10:15:0a.123Z",
            "2026-12-03T10:15:00:123Z",
            "2026-12-03 10:15:00.123Z",
            "2026/12/03T10:15:00.123Z",
        ] {
            assert_eq!(fast(s), None, "{s}");
        }
        assert_eq!(parse_rfc3339_ms("2026-12-03t10:15:00.123Z"), Some(1_796_292_900_123));
        assert_eq!(parse_rfc3339_ms("2100-02-29T00:00:00.000Z"), None);
    }

    /// A string of the fixed form with any digits in its fields (including out-of-range ones),
    /// sometimes with one byte replaced.
    fn fixed_form_like() -> impl Strategy<Value = Vec<u8>> {
        // Mostly near the valid ranges, so that most dates exist, sometimes anything.
        let near = |hi: u32| prop_oneof![9 => 0..=hi, 1 => 0u32..=99];
        let year = prop_oneof![3 => 1965u32..=2110, 1 => 0u32..=9999];
        let fields = (year, near(13), near(32), near(25), near(61), near(61), 0u32..=999);
        let edit = prop::option::of((0usize..24, prop::sample::select(b"0159:-.TtZz+ \x00\x7f\xff\xc3/".to_vec())));
        (fields, edit).prop_map(|((y, mo, d, h, mi, s, ms), edit)| {
            let mut b = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z").into_bytes();
            if let Some((at, byte)) = edit {
                b[at] = byte;
            }
            b
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// Wherever the fast path gives a value, it is the general parser's; on the form it takes
        /// it never declines a time the general parser accepts.
        #[test]
        fn fast_path_agrees_with_general_parser(b in fixed_form_like()) {
            let general = std::str::from_utf8(&b).ok().and_then(parse_general_ms);
            let fast = parse_fixed_ms(&b);
            if fast.is_some() {
                prop_assert_eq!(fast, general, "{:?}", String::from_utf8_lossy(&b));
            }
            let fixed_form = b.len() == 24 && b[10] == b'T' && b[19] == b'.' && b[23] == b'Z';
            if fixed_form && general.is_some() {
                prop_assert_eq!(fast, general, "{:?}", String::from_utf8_lossy(&b));
            }
        }

        /// Every valid time, written the way this service writes it, takes the fast path.
        #[test]
        fn fast_path_takes_every_written_time(ms in MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS) {
            let s = format_rfc3339_ms(ms);
            prop_assert_eq!(parse_fixed_ms(s.as_bytes()), Some(ms), "{}", s);
        }

        #[test]
        fn fast_path_on_any_bytes(b in prop::collection::vec(any::<u8>(), 0..30)) {
            if let Some(ms) = parse_fixed_ms(&b) {
                prop_assert_eq!(std::str::from_utf8(&b).ok().and_then(parse_general_ms), Some(ms));
            }
        }
    }

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
