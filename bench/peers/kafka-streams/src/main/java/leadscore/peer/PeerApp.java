package leadscore.peer;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.ListOffsetsResult;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;
import org.apache.kafka.streams.state.KeyValueBytesStoreSupplier;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.StoreBuilder;
import org.apache.kafka.streams.state.Stores;

/**
 * {@code run}: the Kafka Streams application, and its end-of-input report for catch-up runs.
 *
 * <p>Topology: source (input topic, raw bytes) → {@link ScoringProcessor} (stores {@code leads}
 * and {@code crossings}, cached and changelogged) → sinks {@code transitions} (output topic,
 * keyed by lead id: the default partitioner hashes it with murmur2, as leadscore's producer
 * does) and {@code dead-letters}. Tuning and the reasons for each setting: README.md.
 */
final class PeerApp {
    private PeerApp() {}

    /** How often the wall-clock punctuation looks for due decay-driven crossings. */
    static final long PUNCTUATE_MS = 100;

    static int run(Main.Args a) throws Exception {
        long startNanos = System.nanoTime();
        String brokers = a.req("brokers");
        String input = a.req("input");
        String output = a.req("output");
        String deadLetters = a.req("dead-letters");
        String appId = a.req("application-id");
        Model model = Model.load(a.req("model"));
        String guarantee = a.opt("guarantee", StreamsConfig.EXACTLY_ONCE_V2);
        String store = a.opt("store", "memory");
        // Kafka Streams' own defaults: 100 ms under exactly_once_v2, 30 s under at_least_once.
        long commitMs = a.num("commit-interval-ms", guarantee.equals(StreamsConfig.EXACTLY_ONCE_V2) ? 100 : 30_000);
        int threads = (int) a.num("threads", Runtime.getRuntime().availableProcessors());
        long cacheMib = a.num("cache-mib", 64);
        long rocksMib = a.num("rocksdb-mib", 256);
        long lingerMs = a.num("linger-ms", 1);
        long skewMs = a.num("max-future-skew-ms", 300_000);
        boolean exitAtEnd = a.flag("exit-at-end");
        boolean skipCommitWait = a.flag("skip-commit-wait");
        if (!guarantee.equals(StreamsConfig.EXACTLY_ONCE_V2) && !guarantee.equals(StreamsConfig.AT_LEAST_ONCE)) {
            Main.usage("--guarantee is exactly_once_v2 or at_least_once");
        }
        if (!store.equals("memory") && !store.equals("rocksdb")) Main.usage("--store is memory or rocksdb");
        if (!SelfTest.ok()) {
            System.err.println("run: the decay is not bit-exact with glibc's pow on this JVM; refusing to score");
            return 1;
        }
        Path stateDir = Path.of(a.opt("state-dir", Files.createTempDirectory("leadscore-peer-").toString()));

        Properties p = new Properties();
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, guarantee);
        // exactly_once_v2: 100 ms (Streams' default under EOS; leadscore's too). at_least_once:
        // Streams' default, 30 s (leadscore commits every 100 ms in both modes: here the peer
        // flushes its caches and changelogs less often than leadscore does).
        p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, Long.toString(commitMs));
        p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, Integer.toString(threads));
        p.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, Long.toString(cacheMib << 20));
        p.put(StreamsConfig.STATE_DIR_CONFIG, stateDir.toString());
        p.put(StreamsConfig.DEFAULT_KEY_SERDE_CLASS_CONFIG, Serdes.ByteArraySerde.class);
        p.put(StreamsConfig.DEFAULT_VALUE_SERDE_CLASS_CONFIG, Serdes.ByteArraySerde.class);
        if (store.equals("rocksdb")) {
            p.put(StreamsConfig.ROCKSDB_CONFIG_SETTER_CLASS_CONFIG, BoundedRocksDbConfig.class);
            p.put(BoundedRocksDbConfig.TOTAL_MIB, Long.toString(rocksMib));
        }
        // Consumers: leadscore's fetch wait (10 ms) and group timeouts.
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.FETCH_MAX_WAIT_MS_CONFIG), "10");
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.SESSION_TIMEOUT_MS_CONFIG), "10000");
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.HEARTBEAT_INTERVAL_MS_CONFIG), "2000");
        // Producers: no compression and linger 1 ms, as leadscore's producer (Streams would set 100 ms, which
        // only adds latency; batches fill by volume during a catch-up either way).
        p.put(StreamsConfig.producerPrefix(ProducerConfig.COMPRESSION_TYPE_CONFIG), "none");
        p.put(StreamsConfig.producerPrefix(ProducerConfig.LINGER_MS_CONFIG), Long.toString(lingerMs));
        p.put(StreamsConfig.producerPrefix(ProducerConfig.BATCH_SIZE_CONFIG), Integer.toString(64 * 1024));

        // Wall-clock crossings are checked every 100 ms, as leadscore run checks them every commit
        // interval, whatever the commit interval here.
        Topology topology = topology(model, store, input, output, deadLetters, skewMs, Duration.ofMillis(PUNCTUATE_MS));
        KafkaStreams streams = new KafkaStreams(topology, p);
        CountDownLatch stopped = new CountDownLatch(1);
        int[] exit = {0};
        streams.setUncaughtExceptionHandler(e -> {
            System.err.println("run: stream thread failed: " + e);
            exit[0] = 1;
            return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        streams.setStateListener((now, before) -> {
            if (now == KafkaStreams.State.RUNNING) System.err.println("peer: running"); // bench/run waits for it
            if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) stopped.countDown();
        });
        Thread hook = new Thread(() -> {
            streams.close(Duration.ofSeconds(60)); // commits, then leaves the group
            stopped.countDown();
        }, "shutdown");
        Runtime.getRuntime().addShutdownHook(hook);

        if (!exitAtEnd) {
            streams.start();
            stopped.await();
            report(null, guarantee, store, threads, commitMs, cacheMib, 0, 0, 0, 0, 0, 0, 0, 0);
            return exit[0];
        }

        // Catch-up: the input is preloaded and its extent known before the start. Live (latency
        // runs): --expect-records says how many records the generator sends.
        try (Admin admin = Admin.create(Map.of(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, brokers))) {
            List<TopicPartition> parts = new ArrayList<>();
            admin.describeTopics(List.of(input)).allTopicNames().get().get(input).partitions()
                    .forEach(pi -> parts.add(new TopicPartition(input, pi.partition())));
            long expected = a.num("expect-records", -1);
            if (expected < 0) {
                Map<TopicPartition, Long> begin = offsets(admin, parts, OffsetSpec.earliest());
                Map<TopicPartition, Long> end = offsets(admin, parts, OffsetSpec.latest());
                expected = 0;
                for (TopicPartition tp : parts) expected += end.get(tp) - begin.get(tp);
            }

            streams.start();
            // 1. Every record processed: the throughput figure ends here.
            double cpuFirst = Double.NaN;
            while (ScoringProcessor.RECORDS.sum() < expected) {
                if (stopped.getCount() == 0) return fail(exit);
                if (Double.isNaN(cpuFirst) && ScoringProcessor.firstRecordNanos != 0) cpuFirst = cpuSeconds();
                Thread.sleep(5);
            }
            if (Double.isNaN(cpuFirst)) cpuFirst = cpuSeconds();
            long doneNanos = System.nanoTime();
            long clockMs = System.currentTimeMillis();
            double cpuDone = cpuSeconds();
            Map<TopicPartition, Long> end = offsets(admin, parts, OffsetSpec.latest());
            // 2. Every input offset committed (for exactly-once: every transaction with output).
            //    Latency runs skip this (--skip-commit-wait): the close below commits anyway, and
            //    at_least_once's 30 s interval would only make the run longer.
            while (!skipCommitWait && !committed(admin, appId, end)) {
                if (stopped.getCount() == 0) return fail(exit);
                Thread.sleep(20);
            }
            long committedNanos = System.nanoTime();
            double cpu = cpuSeconds();
            long rss = peakRssMib();
            // 3. Let every task's wall-clock punctuation run past clockMs (crossings due by then
            //    fire), then close: the close commits what they produced.
            Thread.sleep(3 * PUNCTUATE_MS);
            report(clockMs, guarantee, store, threads, commitMs, cacheMib, expected,
                    (doneNanos - ScoringProcessor.firstRecordNanos) / 1e9,
                    (ScoringProcessor.firstRecordNanos - startNanos) / 1e9, (committedNanos - startNanos) / 1e9,
                    cpu, rss, cpuDone, cpuFirst);
        }
        Runtime.getRuntime().removeShutdownHook(hook);
        streams.close(Duration.ofSeconds(60));
        streams.cleanUp(); // the local state directory of this throwaway application id
        deleteTree(stateDir);
        return exit[0];
    }

    private static int fail(int[] exit) {
        System.err.println("run: Kafka Streams stopped before the end of the input");
        return exit[0] == 0 ? 1 : exit[0];
    }

    static Topology topology(Model model, String store, String input, String output, String deadLetters,
            long skewMs, Duration punctuate) {
        boolean rocks = store.equals("rocksdb");
        KeyValueBytesStoreSupplier leads = rocks ? Stores.persistentKeyValueStore(ScoringProcessor.LEADS)
                : Stores.inMemoryKeyValueStore(ScoringProcessor.LEADS);
        KeyValueBytesStoreSupplier crossings = rocks ? Stores.persistentKeyValueStore(ScoringProcessor.CROSSINGS)
                : Stores.inMemoryKeyValueStore(ScoringProcessor.CROSSINGS);
        // leads: caching on. Reads of busy leads come from the cache, and the changelog gets one
        // record per lead changed per commit interval, as leadscore's changelog does.
        // event-ids and crossings: caching off. Each id is written once (a cache would only add a
        // second copy, its LRU bookkeeping and a flush per commit), and crossings are written
        // rarely and range-scanned every 100 ms. Logging on everywhere (the default): the state
        // survives a crash under either guarantee, as leadscore's.
        StoreBuilder<KeyValueStore<String, LeadState>> leadsStore =
                Stores.keyValueStoreBuilder(leads, Serdes.String(), LeadState.serde(model)).withCachingEnabled();
        StoreBuilder<KeyValueStore<Bytes, byte[]>> crossingsStore =
                Stores.keyValueStoreBuilder(crossings, Serdes.Bytes(), Serdes.ByteArray()).withCachingDisabled();
        KeyValueBytesStoreSupplier eventIds = rocks ? Stores.persistentKeyValueStore(ScoringProcessor.EVENT_IDS)
                : Stores.inMemoryKeyValueStore(ScoringProcessor.EVENT_IDS);
        StoreBuilder<KeyValueStore<Bytes, byte[]>> eventIdsStore =
                Stores.keyValueStoreBuilder(eventIds, Serdes.Bytes(), Serdes.ByteArray()).withCachingDisabled();
        Topology t = new Topology();
        t.addSource("input", new ByteArrayDeserializer(), new ByteArrayDeserializer(), input);
        t.addProcessor("score", () -> new ScoringProcessor(model, skewMs, punctuate), "input");
        t.addStateStore(leadsStore, "score");
        t.addStateStore(crossingsStore, "score");
        t.addStateStore(eventIdsStore, "score");
        t.addSink(ScoringProcessor.TRANSITIONS, output, new ByteArraySerializer(), new ByteArraySerializer(), "score");
        t.addSink(ScoringProcessor.DEAD_LETTERS, deadLetters, new ByteArraySerializer(), new ByteArraySerializer(), "score");
        return t;
    }

    private static Map<TopicPartition, Long> offsets(Admin admin, List<TopicPartition> parts, OffsetSpec spec)
            throws Exception {
        Map<TopicPartition, OffsetSpec> req = new HashMap<>();
        for (TopicPartition tp : parts) req.put(tp, spec);
        Map<TopicPartition, Long> out = new HashMap<>();
        for (Map.Entry<TopicPartition, ListOffsetsResult.ListOffsetsResultInfo> e :
                admin.listOffsets(req).all().get(30, TimeUnit.SECONDS).entrySet()) {
            out.put(e.getKey(), e.getValue().offset());
        }
        return out;
    }

    private static boolean committed(Admin admin, String group, Map<TopicPartition, Long> end) throws Exception {
        Map<TopicPartition, OffsetAndMetadata> c =
                admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get(30, TimeUnit.SECONDS);
        for (Map.Entry<TopicPartition, Long> e : end.entrySet()) {
            if (e.getValue() == 0) continue;
            OffsetAndMetadata o = c.get(e.getKey());
            if (o == null || o.offset() < e.getValue()) return false;
        }
        return true;
    }

    /** user + system CPU seconds of this process (start-up and JIT included, as for leadscore). */
    static double cpuSeconds() {
        try {
            String stat = Files.readString(Path.of("/proc/self/stat"));
            String[] f = stat.substring(stat.lastIndexOf(')') + 2).split(" ");
            return (Long.parseLong(f[11]) + Long.parseLong(f[12])) / 100.0; // utime, stime; CLK_TCK 100
        } catch (IOException | RuntimeException e) {
            return Double.NaN;
        }
    }

    /** VmHWM: the peak resident set size, MiB. */
    static long peakRssMib() {
        try {
            for (String line : Files.readAllLines(Path.of("/proc/self/status"))) {
                if (line.startsWith("VmHWM:")) return Long.parseLong(line.replaceAll("[^0-9]", "")) / 1024;
            }
        } catch (IOException e) {
            // fall through
        }
        return -1;
    }

    /** One JSON line on stdout: the figures of the run (catch-up) or the counters (live). */
    private static void report(Long clockMs, String guarantee, String store, int threads, long commitMs, long cacheMib,
            long events, double seconds, double startupS, double committedS, double cpu, long rss, double cpuDone,
            double cpuFirst) {
        StringBuilder sb = new StringBuilder("{");
        if (clockMs != null) {
            sb.append(String.format(java.util.Locale.ROOT,
                    "\"events\":%d,\"seconds\":%.3f,\"events_per_s\":%.0f,\"cpu_s\":%.2f,\"cpu_s_per_million\":%.2f,"
                            + "\"peak_rss_mib\":%d,\"startup_s\":%.3f,\"all_committed_s\":%.3f,\"cpu_s_at_last_record\":%.2f,"
                            + "\"cpu_s_during\":%.2f,",
                    events, seconds, events / seconds, cpu, cpu / events * 1e6, rss, startupS, committedS, cpuDone,
                    cpuDone - cpuFirst));
        }
        sb.append("\"mode\":\"").append(guarantee).append("\",\"store\":\"").append(store)
                .append("\",\"threads\":").append(threads).append(",\"commit_interval_ms\":").append(commitMs)
                .append(",\"cache_mib\":").append(cacheMib)
                .append(",\"records\":").append(ScoringProcessor.RECORDS.sum())
                .append(",\"accepted\":").append(ScoringProcessor.ACCEPTED.sum())
                .append(",\"transitions\":").append(ScoringProcessor.TRANSITIONS_OUT.sum())
                .append(",\"rejected\":{");
        for (Decoder.Reason r : Decoder.Reason.values()) {
            sb.append(r.ordinal() == 0 ? "" : ",").append('"').append(r.code).append("\":")
                    .append(ScoringProcessor.REJECTED[r.ordinal()].sum());
        }
        sb.append('}');
        if (clockMs != null) sb.append(",\"clock_ms\":").append(clockMs);
        sb.append('}');
        System.out.println(sb);
        System.out.flush();
    }

    private static void deleteTree(Path dir) {
        try (var walk = Files.walk(dir)) {
            walk.sorted(java.util.Comparator.reverseOrder()).forEach(f -> f.toFile().delete());
        } catch (IOException e) {
            // a temp directory: best effort
        }
    }
}
