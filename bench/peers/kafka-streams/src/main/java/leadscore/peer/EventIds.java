package leadscore.peer;

import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Map;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * Remembered event ids (spec section 4, dedup): for each (lead, 64-bit hash of an event id), the
 * lead clock τ after the event that carried it. leadscore keeps the same pairs in one hash map
 * ({@code src/engine}); here they are entries of their own key-value store, so a lookup or an
 * insert costs one small key and an 8-byte value whatever the lead's history.
 *
 * <p>Nothing is pruned: an entry older than the dedup window can never make a duplicate again
 * (the check compares its clock), it only takes space. The benchmark's inputs span less than the
 * window, where leadscore drops nothing either.
 */
interface EventIds {
    long ABSENT = Long.MIN_VALUE;

    /** The clock remembered with this id for this lead, or {@link #ABSENT}. */
    long clock(String leadId, long idHash);

    /** Remembers (or re-remembers, with the newer clock) an id for a lead. */
    void put(String leadId, long idHash, long clock);

    /** Key: the lead id's UTF-8 bytes, then the hash (8 bytes, big-endian); fixed-length tail, so unambiguous. */
    static Bytes key(String leadId, long idHash) {
        byte[] id = leadId.getBytes(StandardCharsets.UTF_8);
        byte[] k = new byte[id.length + 8];
        System.arraycopy(id, 0, k, 0, id.length);
        for (int i = 0; i < 8; i++) k[id.length + i] = (byte) (idHash >>> (56 - 8 * i));
        return Bytes.wrap(k);
    }

    static byte[] encodeClock(long clock) {
        byte[] v = new byte[8];
        for (int i = 0; i < 8; i++) v[i] = (byte) (clock >>> (56 - 8 * i));
        return v;
    }

    static long decodeClock(byte[] v) {
        long c = 0;
        for (int i = 0; i < 8; i++) c = (c << 8) | (v[i] & 0xff);
        return c;
    }

    /** The Kafka Streams store (bytes in, bytes out: no serde beyond these two small arrays). */
    static EventIds of(KeyValueStore<Bytes, byte[]> store) {
        return new EventIds() {
            @Override
            public long clock(String leadId, long idHash) {
                byte[] v = store.get(key(leadId, idHash));
                return v == null ? ABSENT : decodeClock(v);
            }

            @Override
            public void put(String leadId, long idHash, long clock) {
                store.put(key(leadId, idHash), encodeClock(clock));
            }
        };
    }

    /** A plain map, for {@link LocalReplay}. */
    static EventIds inMemory() {
        Map<Bytes, Long> m = new HashMap<>();
        return new EventIds() {
            @Override
            public long clock(String leadId, long idHash) {
                Long c = m.get(key(leadId, idHash));
                return c == null ? ABSENT : c;
            }

            @Override
            public void put(String leadId, long idHash, long clock) {
                m.put(key(leadId, idHash), clock);
            }
        };
    }
}
