package leadscore.peer;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.dataformat.toml.TomlMapper;
import java.io.File;
import java.io.IOException;
import java.math.BigDecimal;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.regex.Pattern;

/**
 * A compiled leadscore model (spec section 3), read from the same TOML file leadscore reads.
 *
 * <p>Validation is leadscore's job ({@code leadscore check}); this loader trusts a model that
 * passes it and only refuses what the peer does not implement ({@code forget_after}), so that it
 * never silently scores a different model. Everything the engine needs per event is resolved
 * here once: rules by event type in file order, each condition's index among the distinct
 * property paths (an event's properties are read once per path while it is decoded), and the
 * distinct attributes fit rules read.
 */
final class Model {
    final String name;
    final String version;
    final double qualifyAt;
    final double disqualifyBelow;
    final double halfLifeMs;
    final long dedupWindowMs;
    final String[] groupNames;
    final double[] groupCap;
    final double[] groupFloor;
    final Rule[] rules;
    final Map<String, Rule[]> rulesByType;
    /** Distinct property paths the rules' conditions read (without the {@code properties.} prefix). */
    final List<String[]> paths;
    final FitRule[] fits;
    /** Distinct attributes the fit rules read, in order of first use. */
    final String[] attrNames;
    final Map<String, Integer> attrIndex;
    /** Rules with a limit, in file order; a rule's {@code limitSlot} indexes them. */
    final int limitedRules;

    static final class Rule {
        String id;
        String event;
        Condition[] when;
        double points;
        int group = -1;
        boolean decays = true;
        int limitCount;
        long limitPerMs;
        int limitSlot = -1;
    }

    static final class Condition {
        int path; // index into Model.paths
        Test test;
    }

    static final class FitRule {
        String id;
        int attr; // index into Model.attrNames
        Test test;
        double points;
    }

    /** A value as conditions see it: String, Double, Boolean, or {@link #COMPOSITE}; null is absent. */
    static final Object COMPOSITE = new Object() {
        @Override
        public String toString() {
            return "<composite>";
        }
    };

    /** A conjunction of operators (spec section 3), all of which must hold. */
    static final class Test {
        final List<Op> ops = new ArrayList<>();

        boolean holds(Object v) {
            for (Op op : ops) {
                if (!op.holds(v)) return false;
            }
            return true;
        }
    }

    interface Op {
        /** {@code v} is null when the path is absent: only {@code exists = false} holds then. */
        boolean holds(Object v);
    }

    /** Equality of a model literal with a value: strings with strings, numbers by value, bools. */
    static boolean scalarEquals(Object literal, Object v) {
        if (literal instanceof String s) return v instanceof String t && s.equals(t);
        if (literal instanceof Double d) return v instanceof Double e && d.doubleValue() == e.doubleValue();
        if (literal instanceof Boolean b) return v instanceof Boolean c && b.booleanValue() == c.booleanValue();
        return false;
    }

    private Model(JsonNode root) {
        name = root.path("name").asText();
        version = root.path("version").asText();
        JsonNode score = root.path("score");
        qualifyAt = score.path("qualify_at").asDouble();
        disqualifyBelow = score.has("disqualify_below") ? score.get("disqualify_below").asDouble() : qualifyAt;
        halfLifeMs = durationMs(score.path("half_life").asText());
        dedupWindowMs = score.has("dedup_window") ? durationMs(score.get("dedup_window").asText()) : 86_400_000L;
        if (score.has("forget_after")) {
            throw new IllegalArgumentException(
                    "score.forget_after is not implemented by the Kafka Streams peer (see its README): remove it");
        }

        Map<String, Integer> groupIndex = new HashMap<>();
        List<String> gNames = new ArrayList<>();
        List<double[]> gBounds = new ArrayList<>();
        for (Iterator<Map.Entry<String, JsonNode>> it = root.path("group").fields(); it.hasNext(); ) {
            Map.Entry<String, JsonNode> e = it.next();
            groupIndex.put(e.getKey(), gNames.size());
            gNames.add(e.getKey());
            JsonNode g = e.getValue();
            gBounds.add(new double[] {
                g.has("cap") ? g.get("cap").asDouble() : Double.POSITIVE_INFINITY,
                g.has("floor") ? g.get("floor").asDouble() : Double.NEGATIVE_INFINITY
            });
        }
        groupNames = gNames.toArray(new String[0]);
        groupCap = new double[groupNames.length];
        groupFloor = new double[groupNames.length];
        for (int i = 0; i < groupNames.length; i++) {
            groupCap[i] = gBounds.get(i)[0];
            groupFloor[i] = gBounds.get(i)[1];
        }

        paths = new ArrayList<>();
        Map<String, Integer> pathIndex = new HashMap<>();
        List<Rule> ruleList = new ArrayList<>();
        int limits = 0;
        for (JsonNode r : root.path("rule")) {
            Rule rule = new Rule();
            rule.id = r.path("id").asText();
            rule.event = r.path("event").asText();
            rule.points = r.path("points").asDouble();
            if (r.has("group")) {
                Integer g = groupIndex.get(r.get("group").asText());
                if (g == null) throw new IllegalArgumentException("rule " + rule.id + ": unknown group");
                rule.group = g;
            }
            rule.decays = !r.has("decays") || r.get("decays").asBoolean();
            if (r.has("limit")) {
                rule.limitCount = r.get("limit").path("count").asInt();
                rule.limitPerMs = durationMs(r.get("limit").path("per").asText());
                rule.limitSlot = limits++;
            }
            List<Condition> conds = new ArrayList<>();
            for (Iterator<Map.Entry<String, JsonNode>> it = r.path("when").fields(); it.hasNext(); ) {
                Map.Entry<String, JsonNode> e = it.next();
                String key = e.getKey();
                if (!key.startsWith("properties.")) {
                    throw new IllegalArgumentException("rule " + rule.id + ": condition path must start with properties.");
                }
                String dotted = key.substring("properties.".length());
                Condition c = new Condition();
                c.path = pathIndex.computeIfAbsent(dotted, k -> {
                    paths.add(k.split("\\.", -1));
                    return paths.size() - 1;
                });
                c.test = test(e.getValue(), true, "rule " + rule.id);
                conds.add(c);
            }
            rule.when = conds.toArray(new Condition[0]);
            ruleList.add(rule);
        }
        rules = ruleList.toArray(new Rule[0]);
        limitedRules = limits;
        Map<String, List<Rule>> byType = new HashMap<>();
        for (Rule rule : rules) byType.computeIfAbsent(rule.event, k -> new ArrayList<>()).add(rule);
        rulesByType = new HashMap<>();
        byType.forEach((k, v) -> rulesByType.put(k, v.toArray(new Rule[0])));

        List<FitRule> fitList = new ArrayList<>();
        List<String> attrs = new ArrayList<>();
        attrIndex = new HashMap<>();
        for (JsonNode f : root.path("fit")) {
            FitRule fit = new FitRule();
            fit.id = f.path("id").asText();
            String attr = f.path("attribute").asText();
            fit.attr = attrIndex.computeIfAbsent(attr, k -> {
                attrs.add(k);
                return attrs.size() - 1;
            });
            fit.points = f.path("points").asDouble();
            fit.test = test(f, false, "fit " + fit.id);
            fitList.add(fit);
        }
        fits = fitList.toArray(new FitRule[0]);
        attrNames = attrs.toArray(new String[0]);
    }

    private static final Set<String> FIT_KEYS = Set.of("id", "attribute", "points");

    /** The operators of a condition value ({@code when} entry) or of a fit rule's own table. */
    private static Test test(JsonNode node, boolean isWhen, String where) {
        Test t = new Test();
        if (isWhen && !node.isObject()) {
            Object lit = scalar(node, where); // a bare scalar means equals
            t.ops.add(v -> v != null && scalarEquals(lit, v));
            return t;
        }
        for (Iterator<Map.Entry<String, JsonNode>> it = node.fields(); it.hasNext(); ) {
            Map.Entry<String, JsonNode> e = it.next();
            String op = e.getKey();
            JsonNode arg = e.getValue();
            if (!isWhen && FIT_KEYS.contains(op)) continue;
            switch (op) {
                case "equals" -> {
                    Object lit = scalar(arg, where);
                    t.ops.add(v -> v != null && scalarEquals(lit, v));
                }
                case "in" -> {
                    List<Object> lits = new ArrayList<>();
                    for (JsonNode x : arg) lits.add(scalar(x, where));
                    Object[] arr = lits.toArray();
                    t.ops.add(v -> {
                        if (v == null) return false;
                        for (Object lit : arr) if (scalarEquals(lit, v)) return true;
                        return false;
                    });
                }
                case "prefix" -> {
                    String p = arg.asText();
                    t.ops.add(v -> v instanceof String s && s.startsWith(p));
                }
                case "contains" -> {
                    String p = arg.asText();
                    t.ops.add(v -> v instanceof String s && s.contains(p));
                }
                case "matches" -> {
                    // Rust's regex crate: Unicode-aware classes by default, a match anywhere.
                    // UNICODE_CHARACTER_CLASS makes \b, \w, \d and (?i) Unicode-aware here too; the
                    // two engines agree on ASCII text (the benchmark's), see README.
                    Pattern re = Pattern.compile(arg.asText(), Pattern.UNICODE_CHARACTER_CLASS);
                    t.ops.add(v -> v instanceof String s && re.matcher(s).find());
                }
                case "between" -> {
                    double lo = arg.get(0).asDouble();
                    double hi = arg.get(1).asDouble();
                    t.ops.add(v -> v instanceof Double d && lo <= d && d <= hi);
                }
                case "exists" -> {
                    boolean want = arg.asBoolean();
                    t.ops.add(v -> (v != null) == want);
                }
                default -> throw new IllegalArgumentException(where + ": unknown operator " + op);
            }
        }
        if (t.ops.isEmpty()) throw new IllegalArgumentException(where + ": no condition");
        return t;
    }

    private static Object scalar(JsonNode n, String where) {
        if (n.isTextual()) return n.asText();
        if (n.isNumber()) return n.asDouble();
        if (n.isBoolean()) return n.asBoolean();
        throw new IllegalArgumentException(where + ": expected a string, number or bool");
    }

    /** leadscore's durations: a decimal number and a unit (s, m, h, d, w), whole milliseconds. */
    static long durationMs(String s) {
        if (s.isEmpty()) throw new IllegalArgumentException("empty duration");
        long unit = switch (s.charAt(s.length() - 1)) {
            case 's' -> 1000L;
            case 'm' -> 60_000L;
            case 'h' -> 3_600_000L;
            case 'd' -> 86_400_000L;
            case 'w' -> 604_800_000L;
            default -> throw new IllegalArgumentException("bad duration unit: " + s);
        };
        BigDecimal ms = new BigDecimal(s.substring(0, s.length() - 1)).multiply(BigDecimal.valueOf(unit));
        return ms.longValueExact(); // throws when it is not a whole number of milliseconds
    }

    static Model load(String path) throws IOException {
        return new Model(new TomlMapper().readTree(new File(path)));
    }

    /** Group name to index, in file order (breakdown order). */
    Map<String, Integer> groupOrder() {
        Map<String, Integer> m = new LinkedHashMap<>();
        for (int i = 0; i < groupNames.length; i++) m.put(groupNames[i], i);
        return m;
    }
}
