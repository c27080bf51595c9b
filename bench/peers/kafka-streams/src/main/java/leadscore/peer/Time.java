package leadscore.peer;

/** leadscore's timestamps (src/time.rs): RFC 3339 in, {@code YYYY-MM-DDTHH:MM:SS.mmmZ} out. */
final class Time {
    private Time() {}

    /** 1970-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z: the valid event times. */
    static final long MIN_MS = 0L;
    static final long MAX_MS = 253_402_300_799_999L;
    private static final long MS_PER_DAY = 86_400_000L;

    static long daysFromCivil(long y, long m, long d) {
        y = m <= 2 ? y - 1 : y;
        long era = Math.floorDiv(y, 400);
        long yoe = y - era * 400;
        long mp = (m + 9) % 12;
        long doy = (153 * mp + 2) / 5 + d - 1;
        long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        return era * 146_097 + doe - 719_468;
    }

    private static boolean isLeap(long y) {
        return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    }

    private static long daysInMonth(long y, long m) {
        if (m == 2) return isLeap(y) ? 29 : 28;
        return (m == 4 || m == 6 || m == 9 || m == 11) ? 30 : 31;
    }

    /** Digits of s[from, to) as a number, or -1. */
    private static long digits(String s, int from, int to) {
        long v = 0;
        for (int i = from; i < to; i++) {
            char c = s.charAt(i);
            if (c < '0' || c > '9') return -1;
            v = v * 10 + (c - '0');
        }
        return v;
    }

    /**
     * RFC 3339 to epoch milliseconds exactly as leadscore's {@code parse_rfc3339_ms}: {@code T}/{@code t},
     * {@code Z}/{@code z} or {@code ±HH:MM}, any number of fraction digits (truncated to the
     * millisecond), no leap seconds, 1970..9999. Returns {@code Long.MIN_VALUE} when invalid.
     */
    static long parseRfc3339(String s) {
        int n = s.length();
        // Every accepted character is ASCII, so byte and char positions agree (leadscore indexes
        // bytes); a non-ASCII character anywhere fails one of the checks below either way.
        for (int i = 0; i < n; i++) if (s.charAt(i) > 127) return Long.MIN_VALUE;
        if (n < 20) return Long.MIN_VALUE;
        char t = s.charAt(10);
        if (s.charAt(4) != '-' || s.charAt(7) != '-' || (t != 'T' && t != 't') || s.charAt(13) != ':'
                || s.charAt(16) != ':') {
            return Long.MIN_VALUE;
        }
        long year = digits(s, 0, 4), month = digits(s, 5, 7), day = digits(s, 8, 10);
        long hour = digits(s, 11, 13), minute = digits(s, 14, 16), second = digits(s, 17, 19);
        if (year < 0 || month < 0 || day < 0 || hour < 0 || minute < 0 || second < 0) return Long.MIN_VALUE;
        if (month < 1 || month > 12 || day < 1 || day > daysInMonth(year, month)) return Long.MIN_VALUE;
        if (hour > 23 || minute > 59 || second > 59) return Long.MIN_VALUE;
        int i = 19;
        long millis = 0;
        if (s.charAt(i) == '.') {
            i++;
            int start = i;
            while (i < n && s.charAt(i) >= '0' && s.charAt(i) <= '9') {
                if (i - start < 3) millis = millis * 10 + (s.charAt(i) - '0');
                i++;
            }
            int digitsSeen = i - start;
            if (digitsSeen == 0) return Long.MIN_VALUE;
            for (int k = digitsSeen; k < 3; k++) millis *= 10;
        }
        if (i >= n) return Long.MIN_VALUE;
        char c = s.charAt(i);
        long offsetMin;
        if ((c == 'Z' || c == 'z') && i + 1 == n) {
            offsetMin = 0;
        } else if ((c == '+' || c == '-') && i + 6 == n && s.charAt(i + 3) == ':') {
            long oh = digits(s, i + 1, i + 3), om = digits(s, i + 4, i + 6);
            if (oh < 0 || om < 0 || oh > 23 || om > 59) return Long.MIN_VALUE;
            offsetMin = c == '-' ? -(oh * 60 + om) : oh * 60 + om;
        } else {
            return Long.MIN_VALUE;
        }
        long days = daysFromCivil(year, month, day);
        long ms = days * MS_PER_DAY + ((hour * 60 + minute - offsetMin) * 60 + second) * 1000 + millis;
        return (ms >= MIN_MS && ms <= MAX_MS) ? ms : Long.MIN_VALUE;
    }

    /** Appends {@code ms} as {@code YYYY-MM-DDTHH:MM:SS.mmmZ} (leadscore's {@code write_rfc3339_ms}). */
    static void appendRfc3339(StringBuilder out, long ms) {
        long days = Math.floorDiv(ms, MS_PER_DAY);
        long rem = Math.floorMod(ms, MS_PER_DAY);
        // civil_from_days
        long z = days + 719_468;
        long era = Math.floorDiv(z, 146_097);
        long doe = z - era * 146_097;
        long yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        long y = yoe + era * 400;
        long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        long mp = (5 * doy + 2) / 153;
        long d = doy - (153 * mp + 2) / 5 + 1;
        long m = mp < 10 ? mp + 3 : mp - 9;
        if (m <= 2) y++;
        String ys = Long.toString(y);
        for (int k = ys.length(); k < 4; k++) out.append('0');
        out.append(ys);
        two(out, '-', m);
        two(out, '-', d);
        two(out, 'T', rem / 3_600_000);
        two(out, ':', rem % 3_600_000 / 60_000);
        two(out, ':', rem % 60_000 / 1000);
        long milli = rem % 1000;
        out.append('.').append((char) ('0' + milli / 100)).append((char) ('0' + milli / 10 % 10))
                .append((char) ('0' + milli % 10)).append('Z');
    }

    private static void two(StringBuilder out, char sep, long v) {
        out.append(sep).append((char) ('0' + v / 10)).append((char) ('0' + v % 10));
    }
}
