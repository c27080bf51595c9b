package leadscore.peer;

import java.nio.charset.StandardCharsets;

/**
 * The score semantics of spec section 4, for one lead at a time, exactly as leadscore's engine
 * (src/engine/mod.rs) computes them: f64 totals held at the lead clock τ and multiplied by
 * {@code decay(Δ) = 2^(-Δ/h)} (glibc's pow, see {@link GlibcPow2}) when τ moves forward; late
 * events add {@code p·decay(τ-t)}; group totals clamped to [floor, cap] after each rule; limits
 * per epoch-aligned window; {@code decays = false} points to {@code fixed}; profile attributes
 * merged after the rules and fit re-evaluated; the check at {@code a = max(τ, previous at)} with
 * hysteresis; decay-driven crossings at the crossing time rounded up; dedup by event id against
 * the lead's clock. Summation orders are leadscore's (groups in file order, then the ungrouped
 * total; {@code score = (fit + fixed) + E·decay}).
 *
 * <p>The engine holds no state of its own: the caller loads the {@link LeadState} from its store,
 * calls {@link #apply} and writes it back. The clock that decides when a decay-driven crossing is
 * due ({@code now}) is the caller's: the wall clock in the Kafka Streams app, as in {@code
 * leadscore run}; the watermark in {@link LocalReplay}, as in {@code leadscore replay}.
 */
final class Engine {
    static final String PROFILE_UPDATE = "profile_update";

    /** Where transitions and timer requests go. */
    interface Out {
        /** A transition record (spec section 5), keyed by lead id. */
        void transition(String leadId, byte[] json);

        /** The lead has a decay-driven crossing due at {@code due}: call back at or after it. */
        void schedule(String leadId, long due);
    }

    private final Model m;
    private final int nGroups;
    private final String[] groupKeys; // group names as JSON strings, with the colon
    private final String prefix;      // JSON after the id up to "score": model and version
    private final long window;

    Engine(Model m) {
        this.m = m;
        this.nGroups = m.groupNames.length;
        this.window = m.dedupWindowMs;
        groupKeys = new String[nGroups];
        for (int i = 0; i < nGroups; i++) {
            StringBuilder sb = new StringBuilder();
            jsonString(sb, m.groupNames[i]);
            groupKeys[i] = sb.append(':').toString();
        }
        StringBuilder sb = new StringBuilder(",\"model\":");
        jsonString(sb, m.name);
        sb.append(",\"model_version\":");
        jsonString(sb, m.version);
        prefix = sb.toString();
    }

    /**
     * {@code -Dpeer.decay=java.pow} computes the decay with Java's {@code Math.pow} instead: within
     * one ulp, and different in the last bit for some inputs. bench/run's offline stage uses it as
     * a negative control, to show that compare.py catches a one-ulp difference.
     */
    private static final boolean JAVA_POW = "java.pow".equals(System.getProperty("peer.decay"));

    double decay(long dtMs) {
        double y = -(double) dtMs / m.halfLifeMs;
        return JAVA_POW ? Math.pow(2.0, y) : GlibcPow2.pow2(y);
    }

    LeadState newLead(long tau) {
        LeadState s = new LeadState(nGroups, m.limitedRules);
        s.tau = tau;
        s.fit = fitSum(null);
        return s;
    }

    /**
     * Would this event be a duplicate for this lead (null: a new lead, never)? Its id is
     * remembered with a clock no older than τ - dedup_window, τ as it is before this event.
     */
    boolean isDuplicate(String leadId, LeadState s, String eventId, EventIds ids) {
        if (s == null || eventId == null) return false;
        long clock = ids.clock(leadId, LeadState.hashId(eventId));
        return clock != EventIds.ABSENT && clock >= LeadState.satSub(s.tau, window);
    }

    /**
     * Applies one decoded, non-duplicate event to its lead ({@code s}, or null for a new lead).
     * Crossings due by {@code now} fire before it (as {@code run} fires due crossings before each
     * record) and after it (one it set up that is already due). Returns the state to store.
     */
    LeadState apply(String leadId, LeadState s, Decoder.Event ev, long now, EventIds ids, Out out) {
        long t = ev.timestampMs;
        if (s == null) {
            s = newLead(t);
        } else {
            fireDue(leadId, s, now, out);
        }

        // Move the clock, or find the factor that brings a late event's points to it.
        double lateFactor = 1.0;
        if (t >= s.tau) {
            if (t > s.tau) {
                double d = decay(t - s.tau);
                s.ungrouped *= d;
                for (int g = 0; g < nGroups; g++) s.groups[g] *= d;
                s.tau = t;
            }
        } else {
            lateFactor = decay(s.tau - t);
        }

        // Every matching rule, in file order.
        Model.Rule[] rules = m.rulesByType.get(ev.type);
        if (rules != null) {
            for (Model.Rule rule : rules) {
                if (!holds(rule, ev)) continue;
                if (rule.limitSlot >= 0) {
                    long w = Math.floorDiv(t, rule.limitPerMs);
                    long packed = s.limits[rule.limitSlot];
                    long state;
                    boolean scored;
                    if (packed == LeadState.NO_WINDOW || w > (packed >>> 16)) {
                        state = w << 16 | 1;
                        scored = true;
                    } else if (w == (packed >>> 16)) {
                        long count = packed & 0xffff;
                        state = w << 16 | Math.min(count + 1, 0xffff);
                        scored = count < rule.limitCount;
                    } else {
                        state = packed; // a window older than the newest seen: scores 0
                        scored = false;
                    }
                    s.limits[rule.limitSlot] = state;
                    if (!scored) continue;
                }
                if (!rule.decays) {
                    s.fixed = s.fixed + rule.points;
                } else {
                    double p = lateFactor == 1.0 ? rule.points : rule.points * lateFactor;
                    if (rule.group >= 0) {
                        double total = s.groups[rule.group] + p;
                        s.groups[rule.group] = Math.min(Math.max(total, m.groupFloor[rule.group]), m.groupCap[rule.group]);
                    } else {
                        s.ungrouped = s.ungrouped + p;
                    }
                }
            }
        }

        if (ev.type.equals(PROFILE_UPDATE) && m.fits.length > 0 && ev.hasProperties) {
            if (s.attrs == null) s.attrs = new Object[m.attrNames.length];
            for (int i = 0; i < s.attrs.length; i++) {
                if (ev.attrMentioned[i]) s.attrs[i] = ev.attrValues[i];
            }
            s.fit = fitSum(s.attrs);
        }

        if (ev.eventId != null) ids.put(leadId, LeadState.hashId(ev.eventId), s.tau);

        // The check, at a = max(τ, at of the previous transition).
        long a = Math.max(s.tau, s.lastAt);
        double score = scoreAt(s, a);
        if (!s.qualified && score >= m.qualifyAt) {
            transition(leadId, s, true, a, score, ev, out);
        } else if (s.qualified && score < m.disqualifyBelow) {
            transition(leadId, s, false, a, score, ev, out);
        }
        fireDue(leadId, s, now, out);
        schedule(leadId, s, out);
        return s;
    }

    private static boolean holds(Model.Rule rule, Decoder.Event ev) {
        for (Model.Condition c : rule.when) {
            if (!c.test.holds(ev.pathValues[c.path])) return false;
        }
        return true;
    }

    private double fitSum(Object[] attrs) {
        double sum = 0.0;
        for (Model.FitRule f : m.fits) {
            if (f.test.holds(attrs == null ? null : attrs[f.attr])) sum += f.points;
        }
        return sum;
    }

    /** E: the group totals in file order, then the ungrouped total, at the lead's clock. */
    private double engagement(LeadState s) {
        double e = 0.0;
        for (int g = 0; g < nGroups; g++) e += s.groups[g];
        return e + s.ungrouped;
    }

    /** score(t); times before the clock count as the clock. */
    double scoreAt(LeadState s, long t) {
        long dt = Math.max(t, s.tau) - s.tau;
        double steady = s.fit + s.fixed;
        double e = engagement(s);
        return dt == 0 ? steady + e : steady + e * decay(dt);
    }

    /**
     * When decay alone takes the lead across a threshold: the crossing time rounded up to the
     * millisecond, never before the lead's last check; Long.MAX_VALUE when it never does.
     */
    long crossingDue(LeadState s) {
        double steady = s.fit + s.fixed;
        double e = engagement(s);
        double threshold;
        if (s.qualified) {
            if (!(e > 0.0 && steady < m.disqualifyBelow)) return Long.MAX_VALUE;
            threshold = m.disqualifyBelow;
        } else {
            if (!(e < 0.0 && steady > m.qualifyAt)) return Long.MAX_VALUE;
            threshold = m.qualifyAt;
        }
        // As leadscore: the offset ceil(h·log2(E / (threshold - steady))) first, τ added as an
        // integer; then the first whole millisecond near it at which the score as evaluated
        // (glibc's pow) has reached the threshold (<= sinking, >= rising). Java has no log2;
        // log(x)/ln 2 can differ from libm's in the last bit, which the search below absorbs.
        double dt = Math.ceil(m.halfLifeMs * log2(e / (threshold - steady)));
        if (Double.isNaN(dt) || Double.isInfinite(dt) || dt > (double) (Time.MAX_MS - s.tau)) return Long.MAX_VALUE;
        long lo = Math.max(s.tau, s.lastAt);
        long candidate = Math.max(s.tau + (long) dt, lo);
        long t = candidate;
        for (int i = 0; i < CROSSING_SEARCH_MS; i++) {
            if (reached(s, t, threshold)) {
                for (int j = 0; j < CROSSING_SEARCH_MS && t > lo && reached(s, t - 1, threshold); j++) t--;
                return t;
            }
            t++;
        }
        return candidate;
    }

    private static final int CROSSING_SEARCH_MS = 8;

    private boolean reached(LeadState s, long t, double threshold) {
        double v = scoreAt(s, t);
        return s.qualified ? v <= threshold : v >= threshold;
    }

    private static double log2(double x) {
        return x == 1.0 ? 0.0 : Math.log(x) / LN2;
    }

    private static final double LN2 = Math.log(2.0);

    /** Fires the lead's decay-driven crossings due by {@code now}, in time order. */
    void fireDue(String leadId, LeadState s, long now, Out out) {
        for (int guard = 0; guard < 4; guard++) {
            long c = crossingDue(s);
            if (c > now) return;
            boolean qualify = !s.qualified;
            // A decay-driven transition reports the threshold itself as its score.
            transition(leadId, s, qualify, c, qualify ? m.qualifyAt : m.disqualifyBelow, null, out);
        }
    }

    /** Asks for a call back at the lead's next crossing, unless one at or before it is pending. */
    void schedule(String leadId, LeadState s, Out out) {
        long due = crossingDue(s);
        if (due != Long.MAX_VALUE && due < s.timerDue) {
            s.timerDue = due;
            out.schedule(leadId, due);
        }
    }

    private void transition(String leadId, LeadState s, boolean qualify, long at, double score,
            Decoder.Event trigger, Out out) {
        long dt = Math.max(at, s.tau) - s.tau;
        double d = decay(dt);
        double threshold = qualify ? m.qualifyAt : m.disqualifyBelow;
        s.qualified = qualify;
        s.lastAt = at;
        s.transitions++;

        StringBuilder sb = new StringBuilder(384);
        sb.append("{\"id\":");
        jsonString(sb, leadId + ":" + m.name + ":" + s.transitions);
        sb.append(",\"type\":\"").append(qualify ? "lead_qualified" : "lead_disqualified").append("\",\"lead_id\":");
        jsonString(sb, leadId);
        sb.append(prefix).append(",\"score\":");
        number(sb, score);
        sb.append(",\"threshold\":");
        number(sb, threshold);
        sb.append(",\"at\":\"");
        Time.appendRfc3339(sb, at);
        sb.append("\",\"trigger\":");
        if (trigger == null) {
            sb.append("null");
        } else {
            sb.append("{\"event_id\":");
            if (trigger.eventId == null) sb.append("null");
            else jsonString(sb, trigger.eventId);
            sb.append(",\"type\":");
            jsonString(sb, trigger.type);
            sb.append('}');
        }
        sb.append(",\"breakdown\":{\"fit\":");
        number(sb, s.fit);
        sb.append(",\"fixed\":");
        number(sb, s.fixed);
        sb.append(",\"engagement\":");
        number(sb, engagement(s) * d);
        sb.append(",\"groups\":{");
        for (int g = 0; g < nGroups; g++) {
            if (g > 0) sb.append(',');
            sb.append(groupKeys[g]);
            number(sb, s.groups[g] * d);
        }
        sb.append("},\"fit_rules\":[");
        boolean first = true;
        for (Model.FitRule f : m.fits) {
            if (f.test.holds(s.attrs == null ? null : s.attrs[f.attr])) {
                if (!first) sb.append(',');
                jsonString(sb, f.id);
                first = false;
            }
        }
        sb.append("]}}");
        out.transition(leadId, sb.toString().getBytes(StandardCharsets.UTF_8));
    }

    /**
     * A finite double as JSON. Java's shortest-round-trip digits; it spells some magnitudes with
     * an exponent ({@code 1.0E-4}) where leadscore writes {@code 0.0001}: the same number.
     */
    private static void number(StringBuilder sb, double v) {
        sb.append(v);
    }

    /** A JSON string as serde_json writes it: escapes quote, backslash and control characters. */
    static void jsonString(StringBuilder sb, String s) {
        sb.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"' -> sb.append("\\\"");
                case '\\' -> sb.append("\\\\");
                case '\n' -> sb.append("\\n");
                case '\r' -> sb.append("\\r");
                case '\t' -> sb.append("\\t");
                case '\b' -> sb.append("\\b");
                case '\f' -> sb.append("\\f");
                default -> {
                    if (c < 0x20) {
                        sb.append(String.format("\\u%04x", (int) c));
                    } else {
                        sb.append(c);
                    }
                }
            }
        }
        sb.append('"');
    }
}
