package leadscore.peer;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.LongAdder;
import org.apache.kafka.common.header.Headers;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.processor.PunctuationType;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.processor.api.RecordMetadata;
import org.apache.kafka.streams.state.KeyValueIterator;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * The per-record work of the peer (Processor API): decode, dedup, score, emit.
 *
 * <p>One instance per stream task (input partition). State lives in three key-value stores that
 * Kafka Streams owns, changelogs and all, so the guarantee (exactly_once_v2 or at_least_once)
 * covers it: {@code leads} (lead id to {@link LeadState}), {@code event-ids} (lead id and id hash
 * to the clock it was seen at: {@link EventIds}) and {@code crossings} (due time and lead id to
 * nothing), the index of pending decay-driven crossings that a wall-clock punctuation scans
 * every 100 ms, as {@code leadscore run} checks its timer heap every commit interval (100 ms). Transitions go to the
 * {@code transitions} sink keyed by lead id; rejected records go, bytes, key and headers
 * unchanged, to the {@code dead-letters} sink with leadscore's error headers.
 */
final class ScoringProcessor implements Processor<byte[], byte[], byte[], byte[]> {
    static final String LEADS = "leads";
    static final String CROSSINGS = "crossings";
    static final String EVENT_IDS = "event-ids";
    static final String TRANSITIONS = "transitions";
    static final String DEAD_LETTERS = "dead-letters";

    /** Process-wide counters, read by the end-of-input monitor and the final report. */
    static final LongAdder RECORDS = new LongAdder();
    static final LongAdder ACCEPTED = new LongAdder();
    static final LongAdder TRANSITIONS_OUT = new LongAdder();
    static final LongAdder[] REJECTED = new LongAdder[Decoder.Reason.values().length];
    static volatile long firstRecordNanos;

    static {
        for (int i = 0; i < REJECTED.length; i++) REJECTED[i] = new LongAdder();
    }

    private final Model model;
    private final Engine engine;
    private final Decoder decoder;
    private final long maxFutureSkewMs;
    private final Duration punctuateEvery;
    private ProcessorContext<byte[], byte[]> ctx;
    private KeyValueStore<String, LeadState> leads;
    private KeyValueStore<Bytes, byte[]> crossings;
    private EventIds ids;
    /** The output timestamp of the current transitions: when they are sent, as leadscore's. */
    private long sendTime;

    private final Engine.Out out = new Engine.Out() {
        @Override
        public void transition(String leadId, byte[] json) {
            ctx.forward(new Record<>(leadId.getBytes(StandardCharsets.UTF_8), json, sendTime), TRANSITIONS);
            TRANSITIONS_OUT.increment();
        }

        @Override
        public void schedule(String leadId, long due) {
            crossings.put(crossingKey(due, leadId), EMPTY);
        }
    };

    private static final byte[] EMPTY = new byte[0];

    ScoringProcessor(Model model, long maxFutureSkewMs, Duration punctuateEvery) {
        this.model = model;
        this.engine = new Engine(model);
        this.decoder = new Decoder(model);
        this.maxFutureSkewMs = maxFutureSkewMs;
        this.punctuateEvery = punctuateEvery;
    }

    @Override
    public void init(ProcessorContext<byte[], byte[]> context) {
        this.ctx = context;
        this.leads = context.getStateStore(LEADS);
        this.crossings = context.getStateStore(CROSSINGS);
        KeyValueStore<Bytes, byte[]> idStore = context.getStateStore(EVENT_IDS);
        this.ids = EventIds.of(idStore);
        // leadscore run checks its timers before each record and every commit interval, on the
        // wall clock. Here: a lead's own due crossings before and after each of its events
        // (Engine.apply), and this scan for leads that get no event.
        context.schedule(punctuateEvery, PunctuationType.WALL_CLOCK_TIME, this::fireDueCrossings);
    }

    @Override
    public void process(Record<byte[], byte[]> record) {
        if (firstRecordNanos == 0) firstRecordNanos = System.nanoTime();
        RECORDS.increment();
        long now = System.currentTimeMillis();
        // In run, a missing timestamp takes the Kafka record timestamp, and events more than
        // max_future_skew ahead of the wall clock are rejected (spec section 2).
        Decoder.Reason reason = decoder.decode(record.value(), record.timestamp(), now + maxFutureSkewMs);
        if (reason != null) {
            reject(record, reason);
            return;
        }
        Decoder.Event ev = decoder.ev;
        LeadState s = leads.get(ev.leadId);
        if (engine.isDuplicate(ev.leadId, s, ev.eventId, ids)) {
            REJECTED[Decoder.Reason.DUPLICATE.ordinal()].increment(); // counted, not dead-lettered
            return;
        }
        sendTime = now;
        s = engine.apply(ev.leadId, s, ev, now, ids, out);
        leads.put(ev.leadId, s);
        ACCEPTED.increment();
    }

    private void reject(Record<byte[], byte[]> record, Decoder.Reason reason) {
        REJECTED[reason.ordinal()].increment();
        Headers h = new RecordHeaders();
        h.add("leadscore.error.reason", reason.code.getBytes(StandardCharsets.UTF_8));
        h.add("leadscore.error.message", Decoder.message(reason).getBytes(StandardCharsets.UTF_8));
        RecordMetadata md = ctx.recordMetadata().orElse(null);
        if (md != null) {
            h.add("leadscore.source.topic", md.topic().getBytes(StandardCharsets.UTF_8));
            h.add("leadscore.source.partition", Integer.toString(md.partition()).getBytes(StandardCharsets.UTF_8));
            h.add("leadscore.source.offset", Long.toString(md.offset()).getBytes(StandardCharsets.UTF_8));
        }
        record.headers().forEach(h::add); // then the producer's own headers, as leadscore does
        ctx.forward(new Record<>(record.key(), record.value(), record.timestamp(), h), DEAD_LETTERS);
    }

    /** Fires every crossing due by now, in order of time, then of lead id (bytewise). */
    private void fireDueCrossings(long now) {
        List<KeyValue<Bytes, byte[]>> due = new ArrayList<>();
        // Keys sort by due time (8 bytes big-endian, never negative), then lead id: the range
        // from 0 to (now + 1) with no id holds exactly the entries due by now.
        try (KeyValueIterator<Bytes, byte[]> it = crossings.range(crossingKey(0, ""), crossingKey(now + 1, ""))) {
            while (it.hasNext()) due.add(it.next());
        }
        sendTime = now;
        for (KeyValue<Bytes, byte[]> kv : due) {
            byte[] k = kv.key.get();
            long at = dueOf(k);
            String leadId = new String(k, 8, k.length - 8, StandardCharsets.UTF_8);
            crossings.delete(kv.key);
            LeadState s = leads.get(leadId);
            // Entries are lazy, as leadscore's heap: one at or before the lead's crossing. A
            // stale one (the lead was rescheduled since) is dropped.
            if (s == null || s.timerDue != at) continue;
            s.timerDue = LeadState.NO_TIMER;
            engine.fireDue(leadId, s, now, out);
            engine.schedule(leadId, s, out);
            leads.put(leadId, s);
        }
    }

    static Bytes crossingKey(long due, String leadId) {
        byte[] id = leadId.getBytes(StandardCharsets.UTF_8);
        byte[] k = new byte[8 + id.length];
        for (int i = 0; i < 8; i++) k[i] = (byte) (due >>> (56 - 8 * i));
        System.arraycopy(id, 0, k, 8, id.length);
        return Bytes.wrap(k);
    }

    private static long dueOf(byte[] k) {
        long v = 0;
        for (int i = 0; i < 8; i++) v = (v << 8) | (k[i] & 0xff);
        return v;
    }
}
