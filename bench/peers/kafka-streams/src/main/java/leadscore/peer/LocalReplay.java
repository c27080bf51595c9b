package leadscore.peer;

import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.ByteArrayOutputStream;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.PrintStream;
import java.util.HashMap;
import java.util.Map;
import org.apache.kafka.common.serialization.Serde;

/**
 * {@code replay FILE}: the peer's engine over JSON lines in event time, without Kafka, the way
 * {@code leadscore replay} runs (the clock of decay-driven crossings is the watermark; at the end
 * it moves to {@code --until}, default the last accepted event's time). It exists to check the
 * engine, decoder and state serde against leadscore in seconds, before any broker is involved:
 * every lead's state goes through the same serde as in the Kafka Streams store.
 *
 * <p>Transitions come out per lead in the same order as leadscore's, but the interleaving of
 * different leads' decay-driven crossings can differ (leadscore fires all of them in time order
 * as the watermark passes; this fires a lead's when that lead is next touched, or at the end):
 * compare by transition id, as compare.py does.
 */
final class LocalReplay {
    private LocalReplay() {}

    static int run(Model model, String path, Long until, PrintStream summaryOut) throws IOException {
        Engine engine = new Engine(model);
        Decoder decoder = new Decoder(model);
        Serde<LeadState> serde = LeadState.serde(model);
        Map<String, byte[]> store = new HashMap<>();
        EventIds ids = EventIds.inMemory();
        long[] rejected = new long[Decoder.Reason.values().length];
        long lines = 0, events = 0;
        long[] transitions = {0};
        long watermark = Long.MIN_VALUE;
        OutputStream out = new BufferedOutputStream(System.out, 1 << 16);
        Engine.Out sink = new Engine.Out() {
            @Override
            public void transition(String leadId, byte[] json) {
                try {
                    out.write(json);
                    out.write('\n');
                } catch (IOException e) {
                    throw new java.io.UncheckedIOException(e);
                }
                transitions[0]++;
            }

            @Override
            public void schedule(String leadId, long due) {
                // Due crossings are found at the lead's next event and in the final sweep.
            }
        };
        try (InputStream in = path.equals("-") ? System.in : new BufferedInputStream(new FileInputStream(path), 1 << 16)) {
            // Lines split from 64 KiB reads (a byte at a time through read() costs more than the scoring).
            ByteArrayOutputStream line = new ByteArrayOutputStream(512);
            byte[] buf = new byte[1 << 16];
            int n;
            boolean eof = false;
            while (!eof) {
                n = in.read(buf);
                if (n < 0) {
                    eof = true;
                    n = 0;
                    if (line.size() == 0) break;
                }
                int start = 0;
                for (int i = 0; i <= n; i++) {
                    boolean endOfLine = i < n ? buf[i] == '\n' : eof;
                    if (!endOfLine) continue;
                    line.write(buf, start, i - start);
                    start = i + 1;
                    byte[] b = line.toByteArray();
                    line.reset();
                    if (blank(b)) continue;
                    lines++;
                    Decoder.Reason r = decoder.decode(b, Long.MIN_VALUE, Long.MAX_VALUE);
                    if (r != null) {
                        rejected[r.ordinal()]++;
                        continue;
                    }
                    Decoder.Event ev = decoder.ev;
                    byte[] raw = store.get(ev.leadId);
                    LeadState s = raw == null ? null : serde.deserializer().deserialize("", raw);
                    if (engine.isDuplicate(ev.leadId, s, ev.eventId, ids)) {
                        rejected[Decoder.Reason.DUPLICATE.ordinal()]++;
                        continue;
                    }
                    watermark = Math.max(watermark, ev.timestampMs);
                    events++;
                    s = engine.apply(ev.leadId, s, ev, watermark, ids, sink);
                    store.put(ev.leadId, serde.serializer().serialize("", s));
                }
                if (start < n) line.write(buf, start, n - start);
            }
        }
        long end = until != null ? Math.max(until, watermark) : watermark;
        int qualified = 0;
        for (Map.Entry<String, byte[]> e : store.entrySet()) {
            LeadState s = serde.deserializer().deserialize("", e.getValue());
            engine.fireDue(e.getKey(), s, end, sink);
            if (s.qualified) qualified++;
        }
        out.flush();
        StringBuilder sb = new StringBuilder("{\"lines\":").append(lines).append(",\"events\":").append(events)
                .append(",\"rejected\":{");
        for (Decoder.Reason r : Decoder.Reason.values()) {
            sb.append(r.ordinal() == 0 ? "" : ",").append('"').append(r.code).append("\":").append(rejected[r.ordinal()]);
        }
        sb.append("},\"leads\":").append(store.size()).append(",\"qualified\":").append(qualified)
                .append(",\"transitions\":").append(transitions[0]).append('}');
        summaryOut.println(sb);
        return 0;
    }

    private static boolean blank(byte[] b) {
        for (byte x : b) if (x != ' ' && x != '\t' && x != '\r') return false;
        return true;
    }
}
