package invalid.example.edgereplicator.oracle;

import java.io.BufferedReader;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.TimeoutException;

import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.utils.AppInfoParser;
import org.apache.kafka.connect.mirror.Checkpoint;
import org.apache.kafka.connect.mirror.Heartbeat;
import org.apache.kafka.connect.mirror.OffsetSync;
import org.apache.kafka.connect.mirror.OracleAccess;
import org.apache.kafka.connect.mirror.RemoteClusterUtils;

/**
 * The MirrorMaker 2 compatibility oracle of edge-replicator: Apache Kafka's own MM2 classes
 * (connect-mirror-client / connect-mirror of the Kafka release the test brokers run) behind a
 * small CLI. Output is one JSON object per line on stdout (non-ASCII escaped as \\uXXXX);
 * diagnostics go to stderr. Exit status: 0 ok, 1 Kafka failed (its exception on stderr), 2 usage.
 *
 * <p>Decoders print the fields Kafka decoded plus {@code kafkaKey} / {@code kafkaValue}: Kafka's
 * own serialization of the decoded record (hex), to compare byte for byte with the input.
 *
 * <p>No {@code -ea} by default, as MirrorMaker 2 runs in production. Kafka's deserializers check
 * the version with a Java {@code assert}, so run {@code java -ea -jar ...} to see what they do
 * with assertions enabled.
 */
public final class Main {
    static final String USAGE = String.join("\n",
        "usage: java [-ea] -jar mm2-oracle.jar <command>",
        "  version",
        "  translate --bootstrap <servers> --source-alias <alias> --group <group>... [--timeout-ms N] [--property k=v]...",
        "      RemoteClusterUtils.translateOffsets per group (in one JVM);",
        "      one {\"group\",\"topic\",\"partition\",\"offset\",\"metadata\"} per entry, sorted",
        "  decode-heartbeat <hex key> <hex value>",
        "  decode-checkpoint <hex key> <hex value>",
        "  decode-offset-sync <hex key> <hex value>",
        "  decode-batch",
        "      stdin: lines \"<heartbeat|checkpoint|offset-sync>\\t<hex key>\\t<hex value>\"; stdout: one line each,",
        "      {\"ok\":true,<fields>} or {\"ok\":false,\"error\":\"<exception>\"}",
        "  read-checkpoints --bootstrap <servers> --topic <topic> [--timeout-ms N]",
        "      every record from the beginning to the end offsets, decoded by Checkpoint.deserializeRecord:",
        "      {\"recordPartition\",\"recordOffset\",\"ok\":true,<fields>} or {..,\"ok\":false,\"error\":\"<exception>\"}",
        "exit status: 0 ok, 1 Kafka failed (message on stderr), 2 usage");

    static final int EXIT_FAILED = 1;
    static final int EXIT_USAGE = 2;
    static final long DEFAULT_TIMEOUT_MS = 30_000;

    private static final PrintStream OUT =
        new PrintStream(new FileOutputStream(FileDescriptor.out), false, StandardCharsets.UTF_8);
    private static final HexFormat HEX = HexFormat.of();

    private Main() {}

    /** Thrown for bad command lines and malformed batch input (exit status 2). */
    static final class UsageException extends Exception {
        UsageException(String message) {
            super(message);
        }
    }

    public static void main(String[] args) {
        // Kafka's clients log through slf4j-simple (stderr): warnings and up unless asked.
        if (System.getProperty("org.slf4j.simpleLogger.defaultLogLevel") == null) {
            System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
        }
        int rc;
        try {
            run(args);
            rc = 0;
        } catch (UsageException e) {
            System.err.println("mm2-oracle: " + e.getMessage());
            System.err.println(USAGE);
            rc = EXIT_USAGE;
        } catch (Throwable t) {
            System.err.println("mm2-oracle: " + describe(t));
            rc = EXIT_FAILED;
        }
        OUT.flush();
        System.err.flush();
        System.exit(rc);
    }

    static void run(String[] args) throws Exception {
        if (args.length == 0) {
            throw new UsageException("no command");
        }
        String command = args[0];
        switch (command) {
            case "help", "--help", "-h" -> OUT.println(USAGE);
            case "version" -> OUT.println(new Json()
                .put("kafka", AppInfoParser.getVersion())
                .put("commitId", AppInfoParser.getCommitId())
                .put("assertions", Checkpoint.class.desiredAssertionStatus())
                .done());
            case "translate" -> translate(Options.parse(args, "--bootstrap", "--source-alias",
                "--group", "--timeout-ms", "--property"));
            case "decode-heartbeat", "decode-checkpoint", "decode-offset-sync" -> {
                if (args.length != 3) {
                    throw new UsageException(command + " takes <hex key> <hex value>");
                }
                String kind = command.substring("decode-".length());
                OUT.println(decode(kind, hex(args[1], "key"), hex(args[2], "value")).done());
            }
            case "decode-batch" -> decodeBatch();
            case "read-checkpoints" -> readCheckpoints(Options.parse(args, "--bootstrap", "--topic",
                "--timeout-ms"));
            default -> throw new UsageException("unknown command " + command);
        }
    }

    // ---------------------------------------------------------------------------------------
    // translate

    static void translate(Options o) throws Exception {
        Map<String, Object> props = new HashMap<>();
        for (String kv : o.all("--property")) {
            int eq = kv.indexOf('=');
            if (eq <= 0) {
                throw new UsageException("--property takes key=value, got " + kv);
            }
            props.put(kv.substring(0, eq), kv.substring(eq + 1));
        }
        props.put("bootstrap.servers", o.required("--bootstrap"));
        String alias = o.required("--source-alias");
        List<String> groups = o.all("--group");
        if (groups.isEmpty()) {
            throw new UsageException("missing --group");
        }
        Duration timeout = Duration.ofMillis(o.timeoutMs());
        for (String group : groups) {
            Map<TopicPartition, OffsetAndMetadata> offsets =
                RemoteClusterUtils.translateOffsets(props, alias, group, timeout);
            List<Map.Entry<TopicPartition, OffsetAndMetadata>> sorted = new ArrayList<>(offsets.entrySet());
            sorted.sort(Comparator
                .comparing((Map.Entry<TopicPartition, OffsetAndMetadata> e) -> e.getKey().topic())
                .thenComparingInt(e -> e.getKey().partition()));
            for (Map.Entry<TopicPartition, OffsetAndMetadata> e : sorted) {
                OUT.println(new Json()
                    .put("group", group)
                    .put("topic", e.getKey().topic())
                    .put("partition", e.getKey().partition())
                    .put("offset", e.getValue().offset())
                    .put("metadata", e.getValue().metadata())
                    .done());
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // decoding

    /** Decodes one record with Kafka's class for `kind`; throws whatever Kafka throws. */
    static Json decode(String kind, byte[] key, byte[] value) throws UsageException {
        return switch (kind) {
            case "heartbeat" -> heartbeat(Heartbeat.deserializeRecord(record("heartbeats", key, value)));
            case "checkpoint" -> checkpoint(Checkpoint.deserializeRecord(record("checkpoints.internal", key, value)));
            case "offset-sync" -> offsetSync(OffsetSync.deserializeRecord(record("offset-syncs.internal", key, value)));
            default -> throw new UsageException("unknown record kind " + kind
                + " (heartbeat, checkpoint, offset-sync)");
        };
    }

    static ConsumerRecord<byte[], byte[]> record(String topic, byte[] key, byte[] value) {
        return new ConsumerRecord<>(topic, 0, 0L, key, value);
    }

    static Json heartbeat(Heartbeat h) {
        return new Json()
            .put("sourceClusterAlias", h.sourceClusterAlias())
            .put("targetClusterAlias", h.targetClusterAlias())
            .put("timestamp", h.timestamp())
            .put("kafkaKey", HEX.formatHex(OracleAccess.key(h)))
            .put("kafkaValue", HEX.formatHex(OracleAccess.value(h)));
    }

    static Json checkpoint(Checkpoint c) {
        return new Json()
            .put("consumerGroupId", c.consumerGroupId())
            .put("topic", c.topicPartition().topic())
            .put("partition", c.topicPartition().partition())
            .put("upstreamOffset", c.upstreamOffset())
            .put("downstreamOffset", c.downstreamOffset())
            .put("metadata", c.metadata())
            .put("kafkaKey", HEX.formatHex(OracleAccess.key(c)))
            .put("kafkaValue", HEX.formatHex(OracleAccess.value(c)));
    }

    static Json offsetSync(OffsetSync s) {
        return new Json()
            .put("topic", s.topicPartition().topic())
            .put("partition", s.topicPartition().partition())
            .put("upstreamOffset", s.upstreamOffset())
            .put("downstreamOffset", s.downstreamOffset())
            .put("kafkaKey", HEX.formatHex(OracleAccess.key(s)))
            .put("kafkaValue", HEX.formatHex(OracleAccess.value(s)));
    }

    static void decodeBatch() throws IOException, UsageException {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        int n = 0;
        while ((line = in.readLine()) != null) {
            n++;
            String[] parts = line.split("\t", -1);
            if (parts.length != 3) {
                throw new UsageException("stdin line " + n + ": expected <kind>\\t<hex key>\\t<hex value>");
            }
            byte[] key = hex(parts[1], "line " + n + " key");
            byte[] value = hex(parts[2], "line " + n + " value");
            Json out;
            try {
                out = new Json().put("ok", true).merge(decode(parts[0], key, value));
            } catch (UsageException e) {
                throw new UsageException("stdin line " + n + ": " + e.getMessage());
            } catch (Throwable t) {
                out = new Json().put("ok", false).put("error", describe(t));
            }
            OUT.println(out.done());
        }
    }

    // ---------------------------------------------------------------------------------------
    // read-checkpoints

    static void readCheckpoints(Options o) throws Exception {
        String topic = o.required("--topic");
        long timeoutMs = o.timeoutMs();
        long deadline = System.currentTimeMillis() + timeoutMs;
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, o.required("--bootstrap"));
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        p.put(ConsumerConfig.ALLOW_AUTO_CREATE_TOPICS_CONFIG, "false");
        p.put(ConsumerConfig.CLIENT_ID_CONFIG, "mm2-oracle");
        try (KafkaConsumer<byte[], byte[]> consumer =
                 new KafkaConsumer<>(p, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
            List<PartitionInfo> infos = consumer.partitionsFor(topic, Duration.ofMillis(timeoutMs));
            if (infos == null || infos.isEmpty()) {
                throw new IllegalStateException("topic " + topic + " not found");
            }
            List<TopicPartition> tps = new ArrayList<>();
            for (PartitionInfo i : infos) {
                tps.add(new TopicPartition(topic, i.partition()));
            }
            tps.sort(Comparator.comparingInt(TopicPartition::partition));
            consumer.assign(tps);
            consumer.seekToBeginning(tps);
            Map<TopicPartition, Long> end = consumer.endOffsets(tps, Duration.ofMillis(timeoutMs));
            List<ConsumerRecord<byte[], byte[]>> records = new ArrayList<>();
            while (!atEnd(consumer, tps, end)) {
                if (System.currentTimeMillis() > deadline) {
                    throw new TimeoutException("read " + records.size() + " records of " + topic
                        + " but not up to the end offsets " + end + " within " + timeoutMs + " ms");
                }
                consumer.poll(Duration.ofMillis(200)).forEach(records::add);
            }
            records.sort(Comparator.comparingInt((ConsumerRecord<byte[], byte[]> r) -> r.partition())
                .thenComparingLong(ConsumerRecord::offset));
            for (ConsumerRecord<byte[], byte[]> r : records) {
                Json out = new Json().put("recordPartition", r.partition()).put("recordOffset", r.offset());
                try {
                    out.put("ok", true).merge(checkpoint(Checkpoint.deserializeRecord(r)));
                } catch (Throwable t) {
                    out.put("ok", false).put("error", describe(t));
                }
                OUT.println(out.done());
            }
        }
    }

    static boolean atEnd(KafkaConsumer<?, ?> consumer, List<TopicPartition> tps, Map<TopicPartition, Long> end) {
        for (TopicPartition tp : tps) {
            if (consumer.position(tp) < end.get(tp)) {
                return false;
            }
        }
        return true;
    }

    // ---------------------------------------------------------------------------------------
    // helpers

    /** "java.lang.AssertionError" / "...SchemaException: Error reading field ..." plus causes. */
    static String describe(Throwable t) {
        StringBuilder sb = new StringBuilder(t.toString());
        for (Throwable c = t.getCause(); c != null && c != c.getCause(); c = c.getCause()) {
            sb.append("; caused by ").append(c);
        }
        return sb.toString();
    }

    static byte[] hex(String s, String what) throws UsageException {
        try {
            return HEX.parseHex(s);
        } catch (IllegalArgumentException e) {
            throw new UsageException(what + " is not hex: " + e.getMessage());
        }
    }

    /** Parsed "--name value" options; repeated names keep every value. */
    static final class Options {
        private final Map<String, List<String>> values = new HashMap<>();

        static Options parse(String[] args, String... known) throws UsageException {
            Options o = new Options();
            List<String> names = List.of(known);
            for (int i = 1; i < args.length; i += 2) {
                if (!names.contains(args[i])) {
                    throw new UsageException("unknown option " + args[i] + " for " + args[0]);
                }
                if (i + 1 >= args.length) {
                    throw new UsageException(args[i] + " needs a value");
                }
                o.values.computeIfAbsent(args[i], k -> new ArrayList<>()).add(args[i + 1]);
            }
            return o;
        }

        String required(String name) throws UsageException {
            List<String> v = values.get(name);
            if (v == null) {
                throw new UsageException("missing " + name);
            }
            return v.get(v.size() - 1);
        }

        List<String> all(String name) {
            return values.getOrDefault(name, List.of());
        }

        long timeoutMs() throws UsageException {
            List<String> v = values.get("--timeout-ms");
            if (v == null) {
                return DEFAULT_TIMEOUT_MS;
            }
            try {
                long ms = Long.parseLong(v.get(v.size() - 1));
                if (ms <= 0) {
                    throw new NumberFormatException("not positive");
                }
                return ms;
            } catch (NumberFormatException e) {
                throw new UsageException("--timeout-ms takes a positive number of milliseconds");
            }
        }
    }

    /** A flat JSON object, fields in insertion order, strings ASCII-only (\\uXXXX escapes). */
    static final class Json {
        private final StringBuilder sb = new StringBuilder();

        Json put(String key, String value) {
            key(key);
            if (value == null) {
                sb.append("null");
            } else {
                string(value);
            }
            return this;
        }

        Json put(String key, long value) {
            key(key);
            sb.append(value);
            return this;
        }

        Json put(String key, boolean value) {
            key(key);
            sb.append(value);
            return this;
        }

        /** Appends the fields of another (unfinished) object. */
        Json merge(Json other) {
            if (other.sb.length() > 0) {
                if (sb.length() > 0) {
                    sb.append(',');
                }
                sb.append(other.sb);
            }
            return this;
        }

        String done() {
            return "{" + sb + "}";
        }

        private void key(String key) {
            if (sb.length() > 0) {
                sb.append(',');
            }
            string(key);
            sb.append(':');
        }

        private void string(String s) {
            sb.append('"');
            for (int i = 0; i < s.length(); i++) {
                char c = s.charAt(i);
                switch (c) {
                    case '"' -> sb.append("\\\"");
                    case '\\' -> sb.append("\\\\");
                    case '\n' -> sb.append("\\n");
                    case '\r' -> sb.append("\\r");
                    case '\t' -> sb.append("\\t");
                    default -> {
                        if (c < 0x20 || c >= 0x7f) {
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
}
