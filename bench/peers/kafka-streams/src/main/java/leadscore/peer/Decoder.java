package leadscore.peer;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import com.fasterxml.jackson.core.StreamReadConstraints;
import java.io.IOException;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * The input wire format of spec section 2, with leadscore's rejection reasons in leadscore's
 * order (src/event.rs {@code decode}): {@code too_large}, {@code invalid_utf8}, {@code
 * invalid_json}, {@code not_an_object}, {@code missing_field}, {@code invalid_field}, {@code
 * invalid_timestamp}, {@code future_timestamp}. ({@code duplicate} is the engine's decision.)
 *
 * <p>One pass of Jackson's streaming parser over the record's bytes validates the whole document
 * and, on the way, keeps only what the model reads: the five known top-level fields (a repeated
 * key keeps its last occurrence), the values at the property paths the rules' conditions name,
 * and the top-level properties that fit rules read (for {@code profile_update}). No tree and no
 * map is built per record. One Decoder per stream task thread; it reuses its {@link Event}.
 */
final class Decoder {
    /** The reasons of spec section 2; {@code code} is the metric label and dead-letter header. */
    enum Reason {
        TOO_LARGE("too_large"),
        INVALID_UTF8("invalid_utf8"),
        INVALID_JSON("invalid_json"),
        NOT_AN_OBJECT("not_an_object"),
        MISSING_FIELD("missing_field"),
        INVALID_FIELD("invalid_field"),
        INVALID_TIMESTAMP("invalid_timestamp"),
        FUTURE_TIMESTAMP("future_timestamp"),
        DUPLICATE("duplicate");

        final String code;

        Reason(String code) {
            this.code = code;
        }
    }

    /** Payload-free messages, as leadscore's dead-letter header {@code leadscore.error.message}. */
    static String message(Reason r) {
        return switch (r) {
            case TOO_LARGE -> "record is larger than max_event_bytes";
            case INVALID_UTF8 -> "record is not valid UTF-8";
            case INVALID_JSON -> "record is not valid JSON (syntax, NaN/Infinity or nesting deeper than 128)";
            case NOT_AN_OBJECT -> "record is not a JSON object";
            case MISSING_FIELD -> "a required field (lead_id, type, timestamp) is missing or null";
            case INVALID_FIELD -> "a field has the wrong type or length";
            case INVALID_TIMESTAMP ->
                "field `timestamp`: expected an RFC 3339 string or integer epoch milliseconds between 1970 and 9999";
            case FUTURE_TIMESTAMP -> "field `timestamp` is further in the future than allowed";
            case DUPLICATE -> "duplicate event_id";
        };
    }

    static final int MAX_EVENT_BYTES = 64 * 1024;
    private static final int MAX_LEAD_ID_BYTES = 256;
    private static final int MAX_TYPE_BYTES = 64;
    private static final int MAX_EVENT_ID_BYTES = 128;

    /** One decoded event; the arrays are indexed like {@link Model#paths} and {@link Model#attrNames}. */
    static final class Event {
        String leadId;
        String type;
        long timestampMs;
        String eventId; // null when absent or null
        boolean hasProperties;
        /** Value found at each model path: String, Double, Boolean, Model.COMPOSITE; null: absent. */
        final Object[] pathValues;
        /** Fit attributes this event's properties name (a null value removes the attribute). */
        final boolean[] attrMentioned;
        final Object[] attrValues;

        Event(Model m) {
            pathValues = new Object[m.paths.size()];
            attrMentioned = new boolean[m.attrNames.length];
            attrValues = new Object[m.attrNames.length];
        }
    }

    /** A trie of the model's property paths: descend only where some condition reads. */
    private static final class PathNode {
        final Map<String, PathNode> children = new HashMap<>();
        int pathIndex = -1;
        /** Every path index at or under this node: reset when a later occurrence of the key overrides. */
        final List<Integer> under = new ArrayList<>();
    }

    // Kinds of a raw top-level field.
    private static final byte ABSENT = 0, STRING = 1, INT = 2, FLOAT = 3, OTHER = 4, OBJECT = 5;

    private final Model model;
    private final JsonFactory factory;
    private final PathNode paths = new PathNode();
    final Event ev;

    // The last occurrence of each known top-level field: its kind and text.
    private byte leadKind, typeKind, tsKind, idKind, propsKind;
    private String leadText, typeText, tsText, idText;

    Decoder(Model model) {
        this.model = model;
        this.ev = new Event(model);
        // leadscore's scanner: at most 128 nested containers, numbers and strings of any length
        // (a record is at most 64 KiB anyway). Jackson's defaults are 1000 levels and 1000-digit
        // numbers, so without this a 129-deep record would be accepted here and rejected there.
        this.factory = JsonFactory.builder()
                .streamReadConstraints(StreamReadConstraints.builder()
                        .maxNestingDepth(128)
                        .maxNumberLength(Integer.MAX_VALUE)
                        .maxStringLength(Integer.MAX_VALUE)
                        .maxNameLength(Integer.MAX_VALUE)
                        .build())
                .disable(com.fasterxml.jackson.core.StreamReadFeature.INCLUDE_SOURCE_IN_LOCATION) // never payload in messages
                .build();
        for (int i = 0; i < model.paths.size(); i++) {
            PathNode node = paths;
            for (String seg : model.paths.get(i)) {
                node = node.children.computeIfAbsent(seg, k -> new PathNode());
                node.under.add(i);
            }
            node.pathIndex = i;
        }
    }

    /**
     * Decodes one record into {@link #ev}; returns null when it is accepted, else the reason.
     *
     * @param fallbackTs the Kafka record timestamp, used when {@code timestamp} is absent ({@code
     *     Long.MIN_VALUE}: none, a missing timestamp is {@code missing_field}, as in replay)
     * @param latestTs events later than this are {@code future_timestamp} ({@code Long.MAX_VALUE}: no check)
     */
    Reason decode(byte[] b, long fallbackTs, long latestTs) {
        if (b == null) return Reason.INVALID_JSON; // a tombstone: empty input is not JSON
        if (b.length > MAX_EVENT_BYTES) return Reason.TOO_LARGE;
        if (!validUtf8(b)) return Reason.INVALID_UTF8;
        // Jackson's byte bootstrapper skips a UTF-8 BOM and sniffs UTF-16/32 from zero bytes;
        // leadscore's scanner accepts neither (U+FEFF is not JSON whitespace, and a NUL byte is
        // invalid anywhere in JSON text), so both are settled before Jackson sees the bytes.
        if (b.length >= 3 && (b[0] & 0xff) == 0xEF && (b[1] & 0xff) == 0xBB && (b[2] & 0xff) == 0xBF) {
            return Reason.INVALID_JSON;
        }
        for (byte x : b) if (x == 0) return Reason.INVALID_JSON;

        leadKind = typeKind = tsKind = idKind = ABSENT;
        propsKind = ABSENT;
        resetProperties();
        boolean isObject;
        try (JsonParser p = factory.createParser(b)) {
            JsonToken t = p.nextToken();
            if (t == null) return Reason.INVALID_JSON;
            isObject = t == JsonToken.START_OBJECT;
            if (isObject) {
                readEvent(p);
            } else {
                p.skipChildren();
            }
            if (p.nextToken() != null) return Reason.INVALID_JSON; // something after the value
        } catch (IOException e) {
            return Reason.INVALID_JSON;
        }
        if (!isObject) return Reason.NOT_AN_OBJECT;

        // invalid_json: a lone surrogate escape in the occurrence of lead_id, type or event_id that counts.
        if ((leadKind == STRING && loneSurrogate(leadText)) || (typeKind == STRING && loneSurrogate(typeText))
                || (idKind == STRING && loneSurrogate(idText))) {
            return Reason.INVALID_JSON;
        }
        // missing_field
        if (leadKind == ABSENT || typeKind == ABSENT) return Reason.MISSING_FIELD;
        if (tsKind == ABSENT && fallbackTs == Long.MIN_VALUE) return Reason.MISSING_FIELD;
        // invalid_field
        if (leadKind == STRING) {
            if (!lenOk(leadText, MAX_LEAD_ID_BYTES)) return Reason.INVALID_FIELD;
            ev.leadId = leadText;
        } else if (leadKind == INT && leadText.length() <= MAX_LEAD_ID_BYTES) {
            ev.leadId = leadText.equals("-0") ? "0" : leadText;
        } else {
            return Reason.INVALID_FIELD;
        }
        if (typeKind != STRING || !lenOk(typeText, MAX_TYPE_BYTES)) return Reason.INVALID_FIELD;
        ev.type = typeText;
        if (idKind == ABSENT) {
            ev.eventId = null;
        } else if (idKind == STRING && lenOk(idText, MAX_EVENT_ID_BYTES)) {
            ev.eventId = idText;
        } else {
            return Reason.INVALID_FIELD;
        }
        if (propsKind != ABSENT && propsKind != OBJECT) return Reason.INVALID_FIELD;
        ev.hasProperties = propsKind == OBJECT;
        // invalid_timestamp
        long ts;
        switch (tsKind) {
            case STRING -> ts = Time.parseRfc3339(tsText);
            case INT -> ts = integerMs(tsText);
            case ABSENT -> ts = (fallbackTs >= Time.MIN_MS && fallbackTs <= Time.MAX_MS) ? fallbackTs : Long.MIN_VALUE;
            default -> ts = Long.MIN_VALUE;
        }
        if (ts == Long.MIN_VALUE) return Reason.INVALID_TIMESTAMP;
        if (ts > latestTs) return Reason.FUTURE_TIMESTAMP;
        ev.timestampMs = ts;
        return null;
    }

    private void resetProperties() {
        java.util.Arrays.fill(ev.pathValues, null);
        java.util.Arrays.fill(ev.attrMentioned, false);
        java.util.Arrays.fill(ev.attrValues, null);
    }

    /** The members of the top-level object (the parser is on its START_OBJECT). */
    private void readEvent(JsonParser p) throws IOException {
        while (p.nextToken() == JsonToken.FIELD_NAME) {
            String name = p.currentName();
            JsonToken v = p.nextToken();
            switch (name) {
                case "lead_id" -> {
                    leadKind = kind(v);
                    leadText = leadKind == STRING || leadKind == INT ? p.getText() : null;
                    p.skipChildren();
                }
                case "type" -> {
                    typeKind = kind(v);
                    typeText = typeKind == STRING ? p.getText() : null;
                    p.skipChildren();
                }
                case "timestamp" -> {
                    tsKind = kind(v);
                    tsText = tsKind == STRING || tsKind == INT ? p.getText() : null;
                    p.skipChildren();
                }
                case "event_id" -> {
                    idKind = kind(v);
                    idText = idKind == STRING ? p.getText() : null;
                    p.skipChildren();
                }
                case "properties" -> {
                    // A later occurrence replaces an earlier one entirely.
                    resetProperties();
                    propsKind = kind(v);
                    if (v == JsonToken.START_OBJECT) {
                        readProperties(p, paths, true);
                    } else {
                        p.skipChildren();
                    }
                }
                default -> p.skipChildren();
            }
        }
    }

    /** One object of the properties (the parser is on its START_OBJECT). */
    private void readProperties(JsonParser p, PathNode node, boolean top) throws IOException {
        while (p.nextToken() == JsonToken.FIELD_NAME) {
            String key = p.currentName();
            JsonToken v = p.nextToken();
            PathNode child = node.children.get(key);
            Integer attr = top ? model.attrIndex.get(key) : null;
            if (child != null) {
                // The last member with this name is the one a path goes through (leadscore's lookup).
                for (int i : child.under) ev.pathValues[i] = null;
            }
            Object value = null;
            if ((child != null && child.pathIndex >= 0) || attr != null) {
                value = value(p, v);
            }
            if (child != null && child.pathIndex >= 0) ev.pathValues[child.pathIndex] = value;
            if (attr != null) {
                ev.attrMentioned[attr] = true;
                ev.attrValues[attr] = value;
            }
            if (v == JsonToken.START_OBJECT && child != null && !child.children.isEmpty()) {
                readProperties(p, child, false);
            } else {
                p.skipChildren();
            }
        }
    }

    /** A property value as conditions see it; the parser stays on the value's first token. */
    private static Object value(JsonParser p, JsonToken v) throws IOException {
        return switch (v) {
            case VALUE_STRING -> lossy(p.getText());
            case VALUE_NUMBER_INT, VALUE_NUMBER_FLOAT -> p.getDoubleValue();
            case VALUE_TRUE -> Boolean.TRUE;
            case VALUE_FALSE -> Boolean.FALSE;
            case START_ARRAY, START_OBJECT -> Model.COMPOSITE;
            default -> null; // null counts as absent
        };
    }

    private static byte kind(JsonToken t) {
        return switch (t) {
            case VALUE_STRING -> STRING;
            case VALUE_NUMBER_INT -> INT;
            case VALUE_NUMBER_FLOAT -> FLOAT;
            case VALUE_NULL -> ABSENT;
            case START_OBJECT -> OBJECT;
            default -> OTHER;
        };
    }

    /** leadscore's integer_ms: digits only (an optional minus), at most 15, within 1970..9999. */
    private static long integerMs(String raw) {
        int i = raw.startsWith("-") ? 1 : 0;
        int digits = raw.length() - i;
        if (digits == 0 || digits > 15) return Long.MIN_VALUE;
        long ms = 0;
        for (int k = i; k < raw.length(); k++) {
            char c = raw.charAt(k);
            if (c < '0' || c > '9') return Long.MIN_VALUE;
            ms = ms * 10 + (c - '0');
        }
        if (i == 1) ms = -ms;
        return (ms >= Time.MIN_MS && ms <= Time.MAX_MS) ? ms : Long.MIN_VALUE;
    }

    /** 1..=max bytes of UTF-8 (leadscore counts bytes). */
    private static boolean lenOk(String s, int max) {
        int n = s.length();
        if (n == 0) return false;
        int bytes = 0;
        for (int i = 0; i < n; i++) {
            char c = s.charAt(i);
            if (c < 0x80) bytes += 1;
            else if (c < 0x800) bytes += 2;
            else if (Character.isHighSurrogate(c) && i + 1 < n && Character.isLowSurrogate(s.charAt(i + 1))) {
                bytes += 4;
                i++;
            } else bytes += 3;
            if (bytes > max) return false;
        }
        return true;
    }

    /** Raw UTF-8 cannot carry surrogates (validated), so any here came from an unpaired escape. */
    static boolean loneSurrogate(String s) {
        int n = s.length();
        for (int i = 0; i < n; i++) {
            char c = s.charAt(i);
            if (Character.isHighSurrogate(c)) {
                if (i + 1 < n && Character.isLowSurrogate(s.charAt(i + 1))) {
                    i++;
                } else {
                    return true;
                }
            } else if (Character.isLowSurrogate(c)) {
                return true;
            }
        }
        return false;
    }

    /** leadscore reads lone surrogate escapes in property values as U+FFFD. */
    private static String lossy(String s) {
        if (!loneSurrogate(s)) return s;
        StringBuilder out = new StringBuilder(s.length());
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (Character.isHighSurrogate(c) && i + 1 < s.length() && Character.isLowSurrogate(s.charAt(i + 1))) {
                out.append(c).append(s.charAt(++i));
            } else if (Character.isSurrogate(c)) {
                out.append('\uFFFD');
            } else {
                out.append(c);
            }
        }
        return out.toString();
    }

    /** Strict UTF-8 as Rust's {@code str::from_utf8}: no overlongs, no surrogates, at most U+10FFFF. */
    static boolean validUtf8(byte[] b) {
        int i = 0, n = b.length;
        while (i < n && b[i] >= 0) i++; // ASCII fast path
        while (i < n) {
            int c = b[i] & 0xff;
            if (c < 0x80) {
                i++;
                continue;
            }
            int need;
            int min;
            if (c >= 0xC2 && c <= 0xDF) {
                need = 1;
                min = 0x80;
            } else if (c >= 0xE0 && c <= 0xEF) {
                need = 2;
                min = 0x800;
            } else if (c >= 0xF0 && c <= 0xF4) {
                need = 3;
                min = 0x10000;
            } else {
                return false;
            }
            int cp = c & (0x3F >> need);
            for (int k = 1; k <= need; k++) {
                if (i + k >= n) return false;
                int cc = b[i + k] & 0xff;
                if ((cc & 0xC0) != 0x80) return false;
                cp = (cp << 6) | (cc & 0x3F);
            }
            if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
            i += need + 1;
        }
        return true;
    }
}
