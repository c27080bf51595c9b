package leadscore.peer;

import java.io.IOException;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * The peer's command line (one jar, several tools):
 *
 * <pre>
 *   run     --brokers B --input T --output T --dead-letters T --application-id ID --model M
 *           [--guarantee exactly_once_v2|at_least_once] [--store memory|rocksdb]
 *           [--commit-interval-ms 100 (EOS) | 30000 (ALO)] [--threads <cores>] [--cache-mib 64]
 *           [--rocksdb-mib 256] [--linger-ms 1] [--state-dir DIR] [--max-future-skew-ms 300000] [--exit-at-end]
 *           [--expect-records N] [--skip-commit-wait]
 *   load    --brokers B --topic T FILE.jsonl      JSON lines to a topic, keyed by lead id
 *   dump    --brokers B --topic T --out FILE      a topic's values as lines, read_committed
 *   create-topics --brokers B NAME:PARTITIONS...  topics in one Admin request
 *   await-committed --brokers B --group G --topic T [--timeout-s S]
 *                                                 waits until G has committed T's end offsets
 *   replay  --model M [--until MS] FILE.jsonl     the engine without Kafka, in event time
 *   selftest                                      the bit-exact decay against glibc vectors
 * </pre>
 */
public final class Main {
    private Main() {}

    public static void main(String[] args) throws Exception {
        if (args.length == 0) usage("no command");
        String cmd = args[0];
        Args a = new Args(List.of(args).subList(1, args.length));
        int rc;
        switch (cmd) {
            case "run" -> rc = PeerApp.run(a);
            case "load" -> rc = Tools.load(a.req("brokers"), a.req("topic"), a.positional());
            case "dump" -> rc = Tools.dump(a.req("brokers"), a.req("topic"), a.req("out"));
            case "create-topics" -> rc = Tools.createTopics(a.req("brokers"), a.positionals());
            case "await-committed" -> rc = Tools.awaitCommitted(a.req("brokers"), a.req("group"), a.req("topic"),
                    a.num("timeout-s", 600));
            case "replay" -> {
                String until = a.opt("until", null);
                rc = LocalReplay.run(Model.load(a.req("model")), a.positional(),
                        until == null ? null : Long.parseLong(until), System.err);
            }
            case "selftest" -> rc = SelfTest.run();
            default -> {
                usage("unknown command " + cmd);
                rc = 2;
            }
        }
        System.out.flush();
        System.exit(rc);
    }

    static void usage(String why) {
        System.err.println("leadscore-streams-peer: " + why + "\nusage: run|load|dump|create-topics|await-committed|replay|selftest [--flag value ...] (see README.md)");
        System.exit(2);
    }

    /** {@code --name value} flags, {@code --name} alone for booleans, and one positional argument. */
    static final class Args {
        private final Map<String, String> flags = new HashMap<>();
        private String positional;
        private final List<String> all = new java.util.ArrayList<>();

        Args(List<String> args) {
            for (int i = 0; i < args.size(); i++) {
                String s = args.get(i);
                if (s.startsWith("--")) {
                    String name = s.substring(2);
                    if (i + 1 < args.size() && !args.get(i + 1).startsWith("--")) {
                        flags.put(name, args.get(++i));
                    } else {
                        flags.put(name, "true");
                    }
                } else {
                    all.add(s);
                    if (positional == null) positional = s;
                }
            }
        }

        String req(String name) {
            String v = flags.get(name);
            if (v == null) usage("--" + name + " is required");
            return v;
        }

        String opt(String name, String dflt) {
            return flags.getOrDefault(name, dflt);
        }

        long num(String name, long dflt) {
            String v = flags.get(name);
            return v == null ? dflt : Long.parseLong(v);
        }

        boolean flag(String name) {
            return "true".equals(flags.get(name));
        }

        String positional() throws IOException {
            if (positional == null) usage("a file argument is required");
            if (all.size() > 1) usage("unexpected argument " + all.get(1));
            return positional;
        }

        List<String> positionals() {
            return all;
        }
    }
}
