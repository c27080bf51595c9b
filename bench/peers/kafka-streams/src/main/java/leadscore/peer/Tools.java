package leadscore.peer;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.ByteArrayOutputStream;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.HashMap;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringSerializer;

/** The loader and the dump: the benchmark's way to put one file of events on a topic and back. */
final class Tools {
    private Tools() {}

    /**
     * Produces every non-blank line of a JSON-lines file to a topic, in file order, keyed by its
     * {@code lead_id} (a string, or an integer as its text) with the Java client's default
     * partitioner, murmur2 of the key: the partition leadscore expects a lead in. Lines without
     * a readable lead id go unkeyed; they are rejected by both sides anyway. One idempotent
     * producer keeps each partition in file order, so each lead's events reach the peer, and
     * leadscore, in the order {@code leadscore replay} reads them from the same file.
     */
    static int load(String brokers, String topic, String path) throws IOException {
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
        p.put(ProducerConfig.ACKS_CONFIG, "all");
        p.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        p.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, "lz4"); // as `leadscore generate`
        p.put(ProducerConfig.LINGER_MS_CONFIG, "20");
        p.put(ProducerConfig.BATCH_SIZE_CONFIG, Integer.toString(256 * 1024));
        p.put(ProducerConfig.BUFFER_MEMORY_CONFIG, Long.toString(256L << 20));
        JsonFactory json = new JsonFactory();
        long sent = 0;
        long t0 = System.nanoTime();
        AtomicReference<Exception> failure = new AtomicReference<>();
        try (KafkaProducer<String, byte[]> producer =
                        new KafkaProducer<>(p, new StringSerializer(), new ByteArraySerializer());
                InputStream in = new BufferedInputStream(new FileInputStream(path), 1 << 20)) {
            ByteArrayOutputStream line = new ByteArrayOutputStream(512);
            byte[] buf = new byte[1 << 16];
            int n;
            while ((n = in.read(buf)) >= 0) {
                int start = 0;
                for (int i = 0; i < n; i++) {
                    if (buf[i] == '\n') {
                        line.write(buf, start, i - start);
                        sent += send(producer, topic, json, line.toByteArray(), failure);
                        line.reset();
                        start = i + 1;
                    }
                }
                line.write(buf, start, n - start);
            }
            if (line.size() > 0) sent += send(producer, topic, json, line.toByteArray(), failure);
            producer.flush();
        }
        if (failure.get() != null) {
            System.err.println("load: a send failed: " + failure.get());
            return 1;
        }
        double s = (System.nanoTime() - t0) / 1e9;
        System.out.printf("{\"records\":%d,\"seconds\":%.3f}%n", sent, s);
        return 0;
    }

    private static int send(KafkaProducer<String, byte[]> producer, String topic, JsonFactory json, byte[] line,
            AtomicReference<Exception> failure) {
        boolean blank = true; // leadscore replay skips lines of spaces, tabs and carriage returns
        for (byte x : line) {
            if (x != ' ' && x != '\t' && x != '\r') {
                blank = false;
                break;
            }
        }
        if (blank) return 0;
        producer.send(new ProducerRecord<>(topic, leadId(json, line), line), (md, e) -> {
            if (e != null) failure.compareAndSet(null, e);
        });
        return 1;
    }

    /** The last top-level {@code lead_id} (string, or integer text with -0 as 0), or null. */
    private static String leadId(JsonFactory json, byte[] line) {
        String id = null;
        try (JsonParser p = json.createParser(line)) {
            if (p.nextToken() != JsonToken.START_OBJECT) return null;
            while (p.nextToken() == JsonToken.FIELD_NAME) {
                String name = p.currentName();
                JsonToken v = p.nextToken();
                if (name.equals("lead_id")) {
                    id = v == JsonToken.VALUE_STRING ? p.getText()
                            : v == JsonToken.VALUE_NUMBER_INT ? (p.getText().equals("-0") ? "0" : p.getText())
                            : null;
                }
                p.skipChildren();
            }
        } catch (IOException e) {
            return id; // malformed: keyed by what was read, if anything; it is rejected anyway
        }
        return id;
    }

    /**
     * Writes every value of a topic, as one line each, read with isolation.level=read_committed
     * (exactly-once output is only meaningful that way), from the beginning to the end offsets
     * as of the start (for a read_committed consumer, the last stable offsets).
     */
    static int dump(String brokers, String topic, String outPath) throws IOException {
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
        p.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        p.put(ConsumerConfig.MAX_POLL_RECORDS_CONFIG, "10000");
        long records = 0;
        try (KafkaConsumer<byte[], byte[]> c = new KafkaConsumer<>(p, new ByteArrayDeserializer(), new ByteArrayDeserializer());
                OutputStream out = new BufferedOutputStream(new FileOutputStream(outPath), 1 << 16)) {
            List<TopicPartition> parts = new ArrayList<>();
            for (PartitionInfo pi : c.partitionsFor(topic, Duration.ofSeconds(30))) {
                parts.add(new TopicPartition(topic, pi.partition()));
            }
            c.assign(parts);
            c.seekToBeginning(parts);
            Map<TopicPartition, Long> end = c.endOffsets(parts, Duration.ofSeconds(30));
            long deadline = System.nanoTime() + Duration.ofSeconds(120).toNanos();
            while (true) {
                boolean done = true;
                for (TopicPartition tp : parts) {
                    if (c.position(tp, Duration.ofSeconds(30)) < end.get(tp)) done = false;
                }
                if (done) break;
                if (System.nanoTime() > deadline) {
                    System.err.println("dump: did not reach the end offsets within 120 s");
                    return 1;
                }
                for (ConsumerRecord<byte[], byte[]> r : c.poll(Duration.ofMillis(200))) {
                    if (r.offset() >= end.get(new TopicPartition(r.topic(), r.partition()))) continue;
                    out.write(r.value());
                    out.write('\n');
                    records++;
                }
            }
        }
        System.out.printf("{\"records\":%d}%n", records);
        return 0;
    }

    /**
     * Waits until consumer group {@code group} has committed, on every partition of {@code topic},
     * the topic's end offset as of the call (a preloaded topic: the end does not move), polling
     * the group's offsets every 20 ms from outside the measured process; prints {@code
     * {"committed_at_ms": <wall clock>}}. bench/run uses it to time leadscore's catch-up without
     * scraping its /metrics, which walks every lead (docs/performance-kafka.md, finding 3).
     */
    static int awaitCommitted(String brokers, String group, String topic, long timeoutS) throws Exception {
        try (Admin admin = Admin.create(Map.of(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, brokers))) {
            Map<TopicPartition, OffsetSpec> req = new HashMap<>();
            admin.describeTopics(List.of(topic)).allTopicNames().get(30, TimeUnit.SECONDS).get(topic).partitions()
                    .forEach(pi -> req.put(new TopicPartition(topic, pi.partition()), OffsetSpec.latest()));
            Map<TopicPartition, Long> end = new HashMap<>();
            admin.listOffsets(req).all().get(30, TimeUnit.SECONDS).forEach((tp, info) -> end.put(tp, info.offset()));
            System.err.println("await-committed: ready");
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(timeoutS);
            while (true) {
                Map<TopicPartition, OffsetAndMetadata> c =
                        admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get(30, TimeUnit.SECONDS);
                boolean done = true;
                for (Map.Entry<TopicPartition, Long> e : end.entrySet()) {
                    OffsetAndMetadata o = c.get(e.getKey());
                    if (e.getValue() > 0 && (o == null || o.offset() < e.getValue())) {
                        done = false;
                        break;
                    }
                }
                if (done) {
                    System.out.printf("{\"committed_at_ms\":%d}%n", System.currentTimeMillis());
                    return 0;
                }
                if (System.nanoTime() > deadline) {
                    System.err.println("await-committed: group " + group + " did not commit the end of " + topic
                            + " within " + timeoutS + " s");
                    return 1;
                }
                Thread.sleep(20);
            }
        }
    }

    /**
     * Creates topics in one Admin request ({@code name:partitions} each, replication factor 1):
     * bench/run creates dozens, and one JVM start per topic (the kafka-topics tool) costs seconds.
     */
    static int createTopics(String brokers, List<String> specs) throws Exception {
        List<org.apache.kafka.clients.admin.NewTopic> topics = new ArrayList<>();
        for (String spec : specs) {
            int colon = spec.lastIndexOf(':');
            if (colon <= 0) {
                System.err.println("create-topics: expected name:partitions, got " + spec);
                return 2;
            }
            topics.add(new org.apache.kafka.clients.admin.NewTopic(spec.substring(0, colon),
                    Integer.parseInt(spec.substring(colon + 1)), (short) 1));
        }
        try (Admin admin = Admin.create(Map.of(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, brokers))) {
            admin.createTopics(topics).all().get(60, TimeUnit.SECONDS);
        }
        return 0;
    }
}
