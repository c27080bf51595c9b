package leadscore.peer;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serializer;

/**
 * One lead's state: what leadscore keeps per lead (src/engine). Its remembered event ids are not
 * here but in their own store ({@link EventIds}), one entry per id.
 *
 * <p>It is the value of the {@code leads} key-value store, so it crosses a serde on every read
 * and write (the in-memory store and the record cache hold bytes, not objects). That is why the
 * ids are kept apart: in the value, a busy lead's thousands of ids would be copied twice per event
 * (an O(ids) serde per record, quadratic over a busy lead's life). The format is compact and
 * allocation-light: a bit mask says which of the engagement columns and limit states are present
 * (most leads touch one or two groups) and attributes are tagged values. The serde is stateless
 * and shared.
 */
final class LeadState {
    static final long NO_WINDOW = -1L; // leadscore's u64::MAX: no match of a limited rule yet
    static final long NO_TIMER = Long.MAX_VALUE;

    /** The lead clock τ: the greatest accepted event time. */
    long tau;
    /** {@code at} of the previous transition; Long.MIN_VALUE before the first. */
    long lastAt = Long.MIN_VALUE;
    /** Due time of this lead's entry in the crossings store (NO_TIMER: none). */
    long timerDue = NO_TIMER;
    int transitions;
    boolean qualified;
    double ungrouped;
    final double[] groups;
    double fixed;
    double fit;
    /** Per limited rule: the newest window index seen (high 48 bits) and the count in it (low 16). */
    final long[] limits;
    /** Fit attributes (Model.attrNames order); null until the first profile_update. */
    Object[] attrs;

    LeadState(int nGroups, int nLimits) {
        groups = new double[nGroups];
        limits = new long[nLimits];
        Arrays.fill(limits, NO_WINDOW);
    }

    static long satSub(long a, long b) {
        long r = a - b;
        return ((a ^ b) & (a ^ r)) < 0 ? Long.MIN_VALUE : r;
    }

    /** 64-bit hash of an event id (leadscore also keeps 64-bit hashes, not the ids). */
    static long hashId(String id) {
        long h = 0xcbf29ce484222325L;
        for (int i = 0; i < id.length(); i++) {
            h ^= id.charAt(i);
            h *= 0x100000001b3L;
        }
        // murmur3's fmix64: FNV alone mixes the last characters poorly.
        h ^= h >>> 33;
        h *= 0xff51afd7ed558ccdL;
        h ^= h >>> 33;
        h *= 0xc4ceb9fe1a85ec53L;
        h ^= h >>> 33;
        return h;
    }

    // ---------------------------------------------------------------------------------------------
    // Serde

    private static final byte VERSION = 2;
    private static final int F_QUALIFIED = 1, F_LAST_AT = 2, F_TIMER = 4, F_ATTRS = 8;
    private static final byte A_ABSENT = 0, A_STR = 1, A_NUM = 2, A_TRUE = 3, A_FALSE = 4, A_COMPOSITE = 5;

    static Serde<LeadState> serde(Model model) {
        int g = model.groupNames.length;
        int l = model.limitedRules;
        int a = model.attrNames.length;
        // Columns of the presence mask: ungrouped, the groups, fixed, fit, then the limit states.
        if (g + l + 3 > 64) throw new IllegalArgumentException("too many groups and limited rules");
        Serializer<LeadState> ser = (topic, s) -> write(s, g, l);
        Deserializer<LeadState> de = (topic, bytes) -> bytes == null ? null : read(bytes, g, l, a);
        return new Serde<>() {
            @Override
            public Serializer<LeadState> serializer() {
                return ser;
            }

            @Override
            public Deserializer<LeadState> deserializer() {
                return de;
            }
        };
    }

    private static byte[] write(LeadState s, int g, int l) {
        long mask = 0;
        int words = 0;
        if (s.ungrouped != 0.0 || isNegZero(s.ungrouped)) {
            mask |= 1;
            words++;
        }
        for (int i = 0; i < g; i++) {
            if (s.groups[i] != 0.0 || isNegZero(s.groups[i])) {
                mask |= 1L << (1 + i);
                words++;
            }
        }
        if (s.fixed != 0.0 || isNegZero(s.fixed)) {
            mask |= 1L << (1 + g);
            words++;
        }
        if (s.fit != 0.0 || isNegZero(s.fit)) {
            mask |= 1L << (2 + g);
            words++;
        }
        for (int i = 0; i < l; i++) {
            if (s.limits[i] != NO_WINDOW) {
                mask |= 1L << (3 + g + i);
                words++;
            }
        }
        byte[][] strs = null;
        int attrBytes = 0;
        if (s.attrs != null) {
            strs = new byte[s.attrs.length][];
            for (int i = 0; i < s.attrs.length; i++) {
                Object v = s.attrs[i];
                attrBytes += 1;
                if (v instanceof String str) {
                    strs[i] = str.getBytes(StandardCharsets.UTF_8);
                    attrBytes += 4 + strs[i].length;
                } else if (v instanceof Double) {
                    attrBytes += 8;
                }
            }
        }
        int flags = (s.qualified ? F_QUALIFIED : 0) | (s.lastAt != Long.MIN_VALUE ? F_LAST_AT : 0)
                | (s.timerDue != NO_TIMER ? F_TIMER : 0) | (s.attrs != null ? F_ATTRS : 0);
        int size = 1 + 1 + 4 + 8 + (s.lastAt != Long.MIN_VALUE ? 8 : 0) + (s.timerDue != NO_TIMER ? 8 : 0)
                + 8 + 8 * words + attrBytes;
        ByteBuffer b = ByteBuffer.allocate(size);
        b.put(VERSION).put((byte) flags).putInt(s.transitions).putLong(s.tau);
        if (s.lastAt != Long.MIN_VALUE) b.putLong(s.lastAt);
        if (s.timerDue != NO_TIMER) b.putLong(s.timerDue);
        b.putLong(mask);
        if ((mask & 1) != 0) b.putDouble(s.ungrouped);
        for (int i = 0; i < g; i++) if ((mask & (1L << (1 + i))) != 0) b.putDouble(s.groups[i]);
        if ((mask & (1L << (1 + g))) != 0) b.putDouble(s.fixed);
        if ((mask & (1L << (2 + g))) != 0) b.putDouble(s.fit);
        for (int i = 0; i < l; i++) if ((mask & (1L << (3 + g + i))) != 0) b.putLong(s.limits[i]);
        if (s.attrs != null) {
            for (int i = 0; i < s.attrs.length; i++) {
                Object v = s.attrs[i];
                if (v == null) {
                    b.put(A_ABSENT);
                } else if (v instanceof String) {
                    b.put(A_STR).putInt(strs[i].length).put(strs[i]);
                } else if (v instanceof Double d) {
                    b.put(A_NUM).putDouble(d);
                } else if (v instanceof Boolean bool) {
                    b.put(bool ? A_TRUE : A_FALSE);
                } else {
                    b.put(A_COMPOSITE);
                }
            }
        }
        return b.array();
    }

    private static LeadState read(byte[] bytes, int g, int l, int a) {
        ByteBuffer b = ByteBuffer.wrap(bytes);
        if (b.get() != VERSION) throw new IllegalStateException("unknown lead state version");
        int flags = b.get();
        LeadState s = new LeadState(g, l);
        s.qualified = (flags & F_QUALIFIED) != 0;
        s.transitions = b.getInt();
        s.tau = b.getLong();
        if ((flags & F_LAST_AT) != 0) s.lastAt = b.getLong();
        if ((flags & F_TIMER) != 0) s.timerDue = b.getLong();
        long mask = b.getLong();
        if ((mask & 1) != 0) s.ungrouped = b.getDouble();
        for (int i = 0; i < g; i++) if ((mask & (1L << (1 + i))) != 0) s.groups[i] = b.getDouble();
        if ((mask & (1L << (1 + g))) != 0) s.fixed = b.getDouble();
        if ((mask & (1L << (2 + g))) != 0) s.fit = b.getDouble();
        for (int i = 0; i < l; i++) if ((mask & (1L << (3 + g + i))) != 0) s.limits[i] = b.getLong();
        if ((flags & F_ATTRS) != 0) {
            s.attrs = new Object[a];
            for (int i = 0; i < a; i++) {
                byte tag = b.get();
                switch (tag) {
                    case A_STR -> {
                        int n = b.getInt();
                        s.attrs[i] = new String(bytes, b.position(), n, StandardCharsets.UTF_8);
                        b.position(b.position() + n);
                    }
                    case A_NUM -> s.attrs[i] = b.getDouble();
                    case A_TRUE -> s.attrs[i] = Boolean.TRUE;
                    case A_FALSE -> s.attrs[i] = Boolean.FALSE;
                    case A_COMPOSITE -> s.attrs[i] = Model.COMPOSITE;
                    default -> s.attrs[i] = null;
                }
            }
        }
        return s;
    }

    private static boolean isNegZero(double d) {
        return Double.doubleToRawLongBits(d) == Long.MIN_VALUE;
    }
}
