#!/usr/bin/env python3
"""The live part of scripts/test-ops: a real Prometheus (the repository's scrape config with the
targets, intervals and listen address substituted; the repository's very rule files) scraping
two real leadscore instances in one consumer group on a real Kafka broker, fed by
`leadscore generate`. Then:

- every PromQL expression of the Grafana dashboard (read from the dashboard JSON, $model and
  $instance replaced by the match-all regex) and of the rule files is evaluated through
  Prometheus' HTTP API: each returns the expected series, and so does each metric selector in it;
- the dashboard's template variables list the model and both instances;
- the KPI as Prometheus computes it equals the instances' own sum(score_sum) / sum(tracked_leads);
- alerts: instance B runs with LEADSCORE_TEST_ABORT_EVERY (the service's test hook that aborts
  every Nth transaction), so LeadscoreTransactionsAborting must match B and only B while every
  other alert stays quiet; after B is killed, LeadscoreInstanceDown must go pending for B, and
  the dashboard's alert table must show it;
- the image's HEALTHCHECK command (read from the Dockerfile through BuildKit's parser) passes
  against a running instance and fails against a dead port and a server without /healthz;
- partitions: each instance counts only the input topic's partitions it owns (the repartition
  topic's, assigned beside them, not counted): together they own the input's partitions once;
  each exports the lag of the partitions it owns and of no other;
- failover and consumer lag: once B is killed, A takes over every input partition and exports
  their lag; after B restarts under traffic, A gives B's partitions back and stops exporting their
  lag, and the lag each instance exports (and the lag recording rule, which the lag alert reads)
  equals the lag the broker reports for the group (end offsets minus committed offsets), within
  the alert's threshold, for both guarantees.

Instance A runs on deploy/compose/leadscore.toml, instance B on the leadscore.toml of
deploy/k8s/configmap.yaml (both with LEADSCORE_* overrides for the local broker, the test's own
topic and group names, and ports), so both shipped configs are proven to load. A runs
at_least_once and B exactly_once (the default), so both commit paths feed the dashboard; they
share one group, input and state as any two instances do. Under exactly_once the lag must not
be librdkafka's `consumer_lag` (counted from the consumer's committed offset, which transactional
commits never move): with a fresh group it would be missing, and after a restart it would grow
with every record however well B keeps up. The checks of B's lag catch both.
"""

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import yaml

sys.path.insert(0, os.path.dirname(__file__))
from common import (REPO, Abort, Checks, Children, Prometheus, TestKafka, free_port,  # noqa: E402
                    http_get, metric_sum, parse_metrics, wait_until)

DASHBOARD = os.path.join(REPO, "deploy/grafana/dashboards/leadscore.json")
PROM_CONFIG = os.path.join(REPO, "deploy/prometheus/prometheus.yml")
RULES_DIR = os.path.join(REPO, "deploy/prometheus/rules")
COMPOSE_CONFIG = os.path.join(REPO, "deploy/compose/leadscore.toml")
K8S_CONFIGMAP = os.path.join(REPO, "deploy/k8s/configmap.yaml")
MODEL = os.path.join(REPO, "examples/model.toml")

SCRAPE_S = 1
RATE_INTERVAL = "15s"  # what Grafana's $__rate_interval would be with enough samples
ABORT_EVERY = 40       # instance B aborts every 40th transaction (about every 4 s under load)
PARTITIONS = 4
RATE = 500             # generated events per second
LAG_THRESHOLD = 1000   # LeadscoreConsumerLagGrowing's threshold, in records

# Metrics that exist only after an event that a healthy run does not have. A selector of one of
# these may return nothing; its name must then be registered in src/metrics.rs.
MAY_BE_ABSENT = {
    "leadscore_state_restore_errors_total": "only after a damaged state record was skipped",
}


# --- reading the dashboard and the rules ---------------------------------------------------------

def dashboard_queries(dash):
    """(where, expr) of every panel target, rows' nested panels included."""
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((f"panel {p.get('title')!r} target {t.get('refId')}", t["expr"]))
            walk(p.get("panels", []))

    walk(dash["panels"])
    return out


def substitute(expr):
    """Grafana's variables as a match-all selection and a rate interval would make them."""
    e = re.sub(r"\$\{?(model|instance)(:[a-z]+)?\}?", ".*", expr)
    e = e.replace("${__rate_interval}", RATE_INTERVAL).replace("$__rate_interval", RATE_INTERVAL)
    e = e.replace("$__interval", "5s").replace("$__range", "1m")
    if "$" in e:
        raise ValueError(f"unsubstituted variable in {expr!r}")
    return e


SELECTOR = re.compile(r"(?<![A-Za-z0-9_:])((?:leadscore_|job:|job_model:)[A-Za-z0-9_:]+|up|ALERTS)(\{[^}]*\})?")


def selectors(expr):
    return sorted({m.group(0) for m in SELECTOR.finditer(expr)})


def strip_offsets(expr):
    return re.sub(r"\s+offset\s+\d+[smhdwy]", "", expr)


def rule_entries():
    out = []
    for name in sorted(os.listdir(RULES_DIR)):
        if name.endswith((".yml", ".yaml")):
            with open(os.path.join(RULES_DIR, name)) as f:
                for g in yaml.safe_load(f)["groups"]:
                    out.extend(g["rules"])
    return out


def k8s_leadscore_toml():
    with open(K8S_CONFIGMAP) as f:
        return yaml.safe_load(f)["data"]["leadscore.toml"]


def dockerfile_healthcheck(validate_bin):
    out = subprocess.run([validate_bin, "dockerfile", os.path.join(REPO, "Dockerfile")],
                         check=True, capture_output=True, text=True).stdout
    final = json.loads(out)["stages"][-1]
    checks = [i["command"]["Health"]["Test"] for i in final["instructions"] if i["name"] == "HEALTHCHECK"]
    return checks[-1] if checks else None


# --- what runs -------------------------------------------------------------------------------------

class Stack:
    """Two leadscore instances (a: compose config, at_least_once; b: Kubernetes config,
    exactly_once, aborting on purpose), the generator and Prometheus, all children of `kids`."""

    def __init__(self, c, kids, kafka, args):
        self.c, self.kids, self.kafka, self.args = c, kids, kafka, args
        self.topics = kafka.create({"events": PARTITIONS, "qualified": 2, "dlq": 1})
        kafka.owned_by_service("state", "repartition")
        self.group = kafka.group()
        self.ports = {"a": free_port(), "b": free_port(), "prom": free_port()}
        self.inst = {n: {"addr": f"127.0.0.1:{self.ports[n]}"} for n in ("a", "b")}
        for n, i in self.inst.items():
            i["url"] = f"http://{i['addr']}"
        k8s_config = os.path.join(args.workdir, "k8s-leadscore.toml")
        with open(k8s_config, "w") as f:
            f.write(k8s_leadscore_toml())
        self.inst["a"]["config"], self.inst["a"]["what"] = COMPOSE_CONFIG, "deploy/compose/leadscore.toml"
        self.inst["b"]["config"], self.inst["b"]["what"] = k8s_config, "deploy/k8s/configmap.yaml leadscore.toml"
        self.gen = None
        self.prom = Prometheus(f"http://127.0.0.1:{self.ports['prom']}")
        self.instances = {i["addr"] for i in self.inst.values()}

    def env(self, name):
        addr = self.inst[name]["addr"]
        env = {
            "LEADSCORE_KAFKA_BROKERS": self.args.bootstrap,
            "LEADSCORE_KAFKA_GROUP_ID": self.group,
            "LEADSCORE_KAFKA_INPUT_TOPICS": self.topics["events"],
            "LEADSCORE_KAFKA_OUTPUT_TOPIC": self.topics["qualified"],
            "LEADSCORE_KAFKA_DEAD_LETTER_TOPIC": self.topics["dlq"],
            "LEADSCORE_KAFKA_STATE_TOPIC": self.kafka.name("state"),
            "LEADSCORE_KAFKA_REPARTITION_TOPIC": self.kafka.name("repartition"),
            "LEADSCORE_KAFKA_TRANSACTIONAL_ID": self.kafka.name(name),
            "LEADSCORE_HTTP_LISTEN": addr,
            "LEADSCORE_HTTP_ADVERTISE": f"http://{addr}",
            "LEADSCORE_MODEL_PATH": MODEL,
            "LEADSCORE_LOG": "warn",
        }
        if name == "a":
            env["LEADSCORE_KAFKA_PROCESSING_GUARANTEE"] = "at_least_once"
        else:
            env["LEADSCORE_TEST_ABORT_EVERY"] = str(ABORT_EVERY)
        return env

    def start_instance(self, name):
        i = self.inst[name]
        i["proc"] = self.kids.start(f"leadscore-{name}", [self.args.bin, "run", "--config", i["config"]],
                                    env=self.env(name))

    def wait_ready(self, name, what):
        i = self.inst[name]
        ok = wait_until(f"instance {name} ready", 60,
                        lambda: http_get(i["url"] + "/readyz")[0] == 200 or i["proc"].poll() is not None)
        self.c.must(ok and i["proc"].poll() is None, what, self.kids.log_tail(i["proc"]))

    def start_generator(self, seed):
        self.gen = self.kids.start(f"generate-{seed}", [
            self.args.bin, "generate", "--brokers", self.args.bootstrap, "--topic", self.topics["events"],
            "--rate", str(RATE), "--leads", "2000", "--seed", str(seed)])

    def stop_generator(self):
        self.kids.stop(self.gen, signal.SIGINT, timeout_s=15)

    def direct(self, name):
        """The instance's own /metrics, parsed."""
        status, body = http_get(self.inst[name]["url"] + "/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics of {name}: {status}")
        return parse_metrics(body)

    def alerts(self):
        return [a for a in self.prom.get("/api/v1/alerts")["alerts"]
                if a["labels"]["alertname"].startswith("Leadscore")]


# --- phases ----------------------------------------------------------------------------------------

def start_instances(c, s):
    for name in ("a", "b"):
        s.start_instance(name)
    for name in ("a", "b"):
        s.wait_ready(name, f"instance {name} ({s.inst[name]['what']}) runs and is ready")


def prometheus_variant(c, s):
    """The repository's scrape config with local targets and 1-second intervals; the rule files are
    the repository's own, by absolute path. Returns the variant's path."""
    with open(PROM_CONFIG) as f:
        cfg = yaml.safe_load(f)
    for key in ("scrape_interval", "scrape_timeout", "evaluation_interval"):
        cfg["global"][key] = f"{SCRAPE_S}s"
    cfg["rule_files"] = [os.path.join(os.path.dirname(PROM_CONFIG), r) for r in cfg["rule_files"]]
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    c.must("leadscore" in jobs, "the scrape config has a job named leadscore")
    jobs["leadscore"]["static_configs"] = [{"targets": sorted(s.instances)}]
    if "prometheus" in jobs:
        jobs["prometheus"]["static_configs"] = [{"targets": [f"127.0.0.1:{s.ports['prom']}"]}]
    variant = os.path.join(s.args.workdir, "prometheus.yml")
    with open(variant, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    r = subprocess.run(["promtool", "check", "config", variant], capture_output=True, text=True)
    c.check(r.returncode == 0, "promtool check config passes on the local variant", r.stdout + r.stderr)
    return variant


def start_prometheus(c, s):
    variant = prometheus_variant(c, s)
    proc = s.kids.start("prometheus", [
        "prometheus", f"--config.file={variant}", f"--storage.tsdb.path={os.path.join(s.args.workdir, 'tsdb')}",
        f"--web.listen-address=127.0.0.1:{s.ports['prom']}", "--log.level=warn"])
    ok = wait_until("Prometheus ready", 30, lambda: http_get(s.prom.base + "/-/ready")[0] == 200)
    c.must(ok, "Prometheus starts on the config", s.kids.log_tail(proc))
    loaded = [r for g in s.prom.get("/api/v1/rules")["groups"] for r in g["rules"]]
    c.check(len(loaded) == len(rule_entries()),
            f"Prometheus loaded all {len(rule_entries())} rules of deploy/prometheus/rules/", str(len(loaded)))

    def targets_up():
        active = s.prom.get("/api/v1/targets")["activeTargets"]
        ls = [t for t in active if t["labels"].get("job") == "leadscore"]
        return len(ls) == 2 and all(t["health"] == "up" for t in ls)

    c.must(wait_until("both leadscore targets up", 30, targets_up), "Prometheus scrapes both instances (up)")


def wait_warmed_up(c, s):
    """Traffic scored on both instances, transitions and their latency, 6 aborts on B (so that
    LeadscoreTransactionsAborting, more than 3 in 10 minutes, holds with margin), and 20 scrapes
    of each instance; then one more rule evaluation, so recorded series exist."""

    def warmed_up():
        a, b = s.direct("a"), s.direct("b")
        total = lambda name: metric_sum(a, name) + metric_sum(b, name)  # noqa: E731
        both = metric_sum(a, "leadscore_tracked_leads") > 0 and metric_sum(b, "leadscore_tracked_leads") > 0
        scrapes = s.prom.query('count_over_time(up{job="leadscore"}[1m]) >= 20')
        return (total("leadscore_transitions_total") > 0 and total("leadscore_transition_latency_seconds_count") > 0
                and metric_sum(b, "leadscore_commits_total", result="aborted") >= 6 and both and len(scrapes) == 2)

    ok = wait_until("traffic, transitions, aborts on B and 20 scrapes of each instance", 90, warmed_up, 1)
    c.must(ok, "both instances score leads and publish transitions; B aborts transactions; 20 scrapes each",
           s.kids.log_tail(s.inst["b"]["proc"]))
    wait_until("recording rules evaluated", 15,
               lambda: s.prom.query("job_model:leadscore_average_score:ratio") and
               s.prom.query("job:leadscore_records_rejected_share:rate10m"))


def model_names(s):
    return sorted({l["model"] for n, l, v in s.direct("a") if n == "leadscore_tracked_leads"})


def check_variables(c, s, dash, models):
    for v in dash["templating"]["list"]:
        if v.get("type") != "query":
            continue
        m = re.fullmatch(r"\s*label_values\((.+),\s*([a-zA-Z_]+)\)\s*", v["definition"])
        if not c.check(m, f"variable ${v['name']} is a label_values() query", v["definition"]):
            continue
        series = s.prom.get("/api/v1/series", **{"match[]": substitute(m.group(1))})
        values = {x.get(m.group(2)) for x in series} - {None}
        want = {"model": set(models), "instance": s.instances}.get(v["name"])
        c.check(values and (want is None or values == want),
                f"variable ${v['name']} lists {sorted(values)}", f"expected {sorted(want or [])}")


def expression_problems(s, expr, res, models):
    """Why a dashboard expression's result is not what it should be (empty list: nothing)."""
    problems = []
    if not res:
        problems.append("no series")
    if any(not math.isfinite(v) for _, v in res):
        problems.append(f"non-finite values {[(l, v) for l, v in res if not math.isfinite(v)]}")
    got_inst = {l["instance"] for l, _ in res if "instance" in l}
    # Every instance, unless the expression selects on another label's value (aborted commits
    # exist on B only): then a subset.
    filtered = any(k not in ("job", "instance", "model")
                   for sel in selectors(expr) for k in re.findall(r"([a-zA-Z_]+)\s*(?:=~|!~|!=|=)", sel))
    if got_inst and not (got_inst <= s.instances if filtered else got_inst == s.instances):
        problems.append(f"instances {sorted(got_inst)}")
    got_models = {l["model"] for l, _ in res if "model" in l}
    if got_models and got_models != set(models):
        problems.append(f"models {sorted(got_models)}")
    for sel in selectors(expr):
        name = re.match(r"[A-Za-z0-9_:]+", sel).group(0)
        if s.prom.query(sel):
            continue
        if name not in MAY_BE_ABSENT:
            problems.append(f"selector {sel} matches no series")
        elif f'"{name}"' not in open(os.path.join(REPO, "src/metrics.rs")).read():
            problems.append(f"{name} is not registered in src/metrics.rs")
    return problems


def check_dashboard(c, s, dash, models):
    """Every dashboard expression returns the expected series; returns the ALERTS expressions,
    which are checked once an alert is pending."""
    alerts_exprs = []
    for where, expr in dashboard_queries(dash):
        e = substitute(expr)
        if "ALERTS" in e:
            alerts_exprs.append((where, e))
            continue
        if re.search(r"\boffset\b", e):
            # Compares with 1 hour or 1 day ago: no data that old yet. The same expression
            # without the offsets must return data.
            where, e = where + " (offsets removed)", strip_offsets(e)
        try:
            res = s.prom.query(e)
        except Exception as err:  # a PromQL error is a failed check, not a crash
            c.check(False, f"{where}: evaluates", str(err))
            continue
        problems = expression_problems(s, e, res, models)
        c.check(not problems, f"{where}: {len(res)} series", "; ".join(problems) + f"\n        {e}")
        if "leadscore_consumer_lag_records" in e and any("partition" in l for l, _ in res):
            # Both guarantees count: every input partition, whichever instance owns it.
            got = input_partitions(s, res)
            c.check(got == list(range(PARTITIONS)), f"{where}: every input partition once, whichever "
                    f"instance (and guarantee) owns it: {got}", e)
            # The control: the expression as it was while it counted at_least_once instances only.
            guarded = input_partitions(s, s.prom.query(e.replace(
                'leadscore_consumer_lag_records{job="leadscore",instance=~".*"}',
                'leadscore_consumer_lag_records{job="leadscore",instance=~".*"} and on (instance) '
                'leadscore_commit_seconds_count{job="leadscore",mode="at_least_once"}')))
            c.check(guarded and guarded != got, f"control: that check rejects the panel counting at_least_once "
                    f"instances only (A's partitions {guarded})", e)
    lag_b = s.prom.query(f'leadscore_consumer_lag_records{{job="leadscore",instance="{s.inst["b"]["addr"]}"}}')
    c.check(lag_b, "instance B (exactly_once, fresh group) exports leadscore_consumer_lag_records",
            "no lag series of B in Prometheus")
    le_direct = {l["le"] for n, l, v in s.direct("a") if n == "leadscore_leads_by_score"}
    le_prom = {l["le"] for l, _ in s.prom.query('sum by (le) (leadscore_leads_by_score{job="leadscore"})')}
    c.check(le_direct and le_direct == le_prom, f"score distribution has the service's {len(le_direct)} buckets")
    return alerts_exprs


def check_rules(c, s):
    """Every rule expression evaluates with non-empty selectors: recording rules give finite
    series, alerts are quiet on the healthy pair, except LeadscoreTransactionsAborting for B."""
    for r in rule_entries():
        e, name = r["expr"], r.get("alert") or r.get("record")
        try:
            res = s.prom.query(e)
        except Exception as err:
            c.check(False, f"rule {name}: evaluates", str(err))
            continue
        missing = [sel for sel in selectors(e) if not s.prom.query(sel)]
        c.check(not missing, f"rule {name}: every selector matches series", f"empty: {missing}")
        if "record" in r:
            c.check(res and all(math.isfinite(v) for _, v in res),
                    f"recording rule {name}: {len(res)} series, finite", str(res))
        elif name == "LeadscoreTransactionsAborting":
            got = sorted(l.get("instance") for l, _ in res)
            c.check(got == [s.inst["b"]["addr"]], f"alert {name}: matches instance B only (B aborts on purpose)",
                    str(res))
        else:
            c.check(not res, f"alert {name}: quiet on the healthy pair", str(res))
    ok = wait_until("LeadscoreTransactionsAborting pending for B", 15,
                    lambda: any(a["labels"]["alertname"] == "LeadscoreTransactionsAborting" for a in s.alerts()))
    active = [(a["labels"]["alertname"], a["labels"].get("instance"), a["state"]) for a in s.alerts()]
    c.check(ok and active and all(n == "LeadscoreTransactionsAborting" and i == s.inst["b"]["addr"]
                                  for n, i, _ in active),
            "Prometheus' rule engine: LeadscoreTransactionsAborting active for B, no other alert", str(active))


def consumed(s, name):
    m = s.direct(name)
    return metric_sum(m, "leadscore_events_total") + metric_sum(m, "leadscore_events_rejected_total")


def check_kpi(c, s, dash):
    """With the generator stopped and everything consumed, the KPI through Prometheus (the
    dashboard's expression and the recording rule) equals the instances' own average."""
    s.stop_generator()

    def settled():
        before = [consumed(s, n) for n in ("a", "b")]
        time.sleep(2)
        return before == [consumed(s, n) for n in ("a", "b")]

    c.must(wait_until("both instances idle after the generator stopped", 40, settled, 0.5),
           "the instances consume everything after the generator stops")
    t0 = time.time()
    ok = wait_until("a scrape of both instances after they settled", 15,
                    lambda: len(s.prom.query(f'timestamp(leadscore_score_sum{{job="leadscore"}}) > {t0:.3f}')) == 2)
    c.must(ok, "Prometheus scraped both settled instances")
    a, b = s.direct("a"), s.direct("b")
    total = lambda name: metric_sum(a, name) + metric_sum(b, name)  # noqa: E731
    own = total("leadscore_score_sum") / total("leadscore_tracked_leads")
    kpi_expr = next(e for w, e in dashboard_queries(dash) if "Average lead score (KPI)" in w)
    kpi = s.prom.query(substitute(kpi_expr))
    c.check(len(kpi) == 1 and abs(kpi[0][1] - own) <= 0.01,
            f"KPI from Prometheus {kpi[0][1] if kpi else float('nan'):.4f} = instances' own {own:.4f} (within 0.01)",
            str(kpi))
    rec = s.prom.query("job_model:leadscore_average_score:ratio")
    c.check(len(rec) == 1 and abs(rec[0][1] - own) <= 0.01,
            f"recording rule job_model:leadscore_average_score:ratio = {own:.4f}", str(rec))
    mean_of_means = (metric_sum(a, "leadscore_average_score") + metric_sum(b, "leadscore_average_score")) / 2
    print(f"  (the mean of the two instance averages would be {mean_of_means:.4f})", flush=True)
    for n, m in (("a", a), ("b", b)):
        mine = metric_sum(m, "leadscore_average_score")
        ratio = metric_sum(m, "leadscore_score_sum") / metric_sum(m, "leadscore_tracked_leads")
        c.check(abs(mine - ratio) <= 1e-6 * max(1, abs(ratio)),
                f"instance {n}: leadscore_average_score {mine:.4f} = score_sum / tracked_leads")
    tracked = s.prom.query('sum(leadscore_tracked_leads{job="leadscore"})')
    c.check(tracked and tracked[0][1] == total("leadscore_tracked_leads"), "tracked leads in Prometheus = the instances' sum")


def check_healthcheck(c, s):
    """The image's HEALTHCHECK command, run here against real endpoints."""
    hc = dockerfile_healthcheck(s.args.validate_bin)
    if not c.check(hc and hc[0] == "CMD", "the Dockerfile has an exec-form HEALTHCHECK", str(hc)):
        return

    def run_hc(listen):
        env = dict(os.environ, LEADSCORE_HTTP_LISTEN=listen)
        return subprocess.run(hc[1:], env=env, capture_output=True, timeout=10).returncode

    c.check(run_hc(s.inst["a"]["addr"]) == 0, "HEALTHCHECK passes against a running instance's /healthz")
    c.check(run_hc(f"127.0.0.1:{free_port()}") != 0, "HEALTHCHECK fails against a closed port")
    c.check(run_hc(f"127.0.0.1:{s.ports['prom']}") != 0, "HEALTHCHECK fails against a server without /healthz (404)")


def input_partitions(s, res):
    return sorted(int(l["partition"]) for l, _ in res if l.get("topic") == s.topics["events"])


def ownership(s, names):
    """{instance: (leadscore_assigned_partitions, input partitions it exports a lag for)} from the
    instances' own /metrics."""
    out = {}
    for name in names:
        m = s.direct(name)
        lagged = {int(l["partition"]) for n, l, _ in m
                  if n == "leadscore_consumer_lag_records" and l.get("topic") == s.topics["events"]}
        out[name] = (int(metric_sum(m, "leadscore_assigned_partitions")), lagged)
    return out


def owned_once(own, each_at_least=1):
    """Whether the instances of `own` ({name: (assigned, partitions with a lag)}) own the input's
    partitions once between them, each at least `each_at_least`, and each exports the lag of
    exactly as many partitions as it owns, none of another's."""
    lagged = [p for _, ps in own.values() for p in ps]
    return (sum(n for n, _ in own.values()) == PARTITIONS and all(n >= each_at_least for n, _ in own.values())
            and all(n == len(ps) for n, ps in own.values()) and sorted(lagged) == list(range(PARTITIONS)))


def partitions_owned_once(s, names, each_at_least=1):
    """The ownership of `names` when it is [owned_once], else None."""
    own = ownership(s, names)
    return own if owned_once(own, each_at_least) else None


def check_ownership_controls(c):
    """[owned_once] rejects the defects it is there for: a partition's lag still exported by its
    former owner, and the repartition topic's partitions counted as assigned."""
    half = PARTITIONS // 2
    mine, theirs = set(range(half)), set(range(half, PARTITIONS))
    stale = {"a": (half, mine | theirs), "b": (PARTITIONS - half, theirs)}
    doubled = {"a": (2 * half, mine), "b": (2 * (PARTITIONS - half), theirs)}
    c.check(not owned_once(stale), "control: the ownership check rejects a former owner still exporting a "
            "partition's lag")
    c.check(not owned_once(doubled), "control: the ownership check rejects assigned partitions that count the "
            "repartition topic's")


def check_partitions(c, s, names, what, timeout_s, each_at_least=1):
    own = wait_until(what, timeout_s, lambda: partitions_owned_once(s, names, each_at_least), 0.5)
    shown = own or ownership(s, names)
    c.check(own, f"{what}: " + ", ".join(f"{n.upper()} owns {k} and exports the lag of {sorted(ps)}"
                                         for n, (k, ps) in shown.items()),
            f"expected the {PARTITIONS} input partitions once (leadscore_assigned_partitions counts the input's "
            "only, never the repartition topic's), each exported by its owner alone")


def check_instance_down(c, s, alerts_exprs):
    """B killed: LeadscoreInstanceDown goes pending for B alone, and the dashboard's alert table
    shows it; A takes over B's partitions (after the session timeout) and exports their lag."""
    b = s.inst["b"]["addr"]
    s.kids.stop(s.inst["b"]["proc"], signal.SIGKILL)
    down = lambda a: a["labels"]["alertname"] == "LeadscoreInstanceDown"  # noqa: E731
    ok = wait_until("LeadscoreInstanceDown pending for B", 20,
                    lambda: any(down(a) and a["labels"].get("instance") == b for a in s.alerts()))
    c.check(ok, "after B is killed, LeadscoreInstanceDown is pending for B", str(s.alerts()))
    others = [a["labels"] for a in s.alerts() if down(a) and a["labels"].get("instance") != b]
    c.check(not others, "LeadscoreInstanceDown stays quiet for A", str(others))
    for where, e in alerts_exprs:
        names = {(l.get("alertname"), l.get("instance")) for l, _ in s.prom.query(e)}
        c.check(("LeadscoreInstanceDown", b) in names, f"{where}: shows the pending alert", str(names))
    # Session timeout (10 s), a restore of B's partitions, and a statistics interval (5 s).
    check_partitions(c, s, ["a"], f"A takes over all {PARTITIONS} input partitions of the killed B", 45,
                     each_at_least=PARTITIONS)


def exported_lag(s, name):
    """(reported, records behind) from the instance's /metrics; reported is False without a series."""
    series = [v for n, l, v in s.direct(name) if n == "leadscore_consumer_lag_records"
              and l.get("topic") == s.topics["events"]]
    return bool(series), sum(series)


def check_lag_after_restart(c, s):
    """B restarts (same transactional id) under traffic: once it has consumed for a while, the lag
    each instance exports for the input equals the broker's own lag of the group, within the
    alert's threshold."""
    s.start_instance("b")
    s.wait_ready("b", "instance B restarts with its transactional id and gets ready")
    ready_at = time.monotonic()
    check_partitions(c, s, ["a", "b"], "after B's restart, A gives B its partitions back and exports no lag "
                     "for the partitions it lost", 30)
    s.start_generator(seed=8)
    start = consumed(s, "b")
    # Three statistics intervals (5 s) of traffic after B got ready: a frozen lag has grown by then.
    ok = wait_until("B consuming the new traffic for 15 s", 25,
                    lambda: consumed(s, "b") > start + RATE and time.monotonic() > ready_at + 15, 0.5)
    c.must(ok, "B consumes the new traffic after its restart")
    broker = s.kafka.true_lag(s.group, s.topics["events"])
    print(f"  (the broker's lag of the group: {broker} records)", flush=True)
    for name, guarantee in (("a", "at_least_once"), ("b", "exactly_once")):
        reported, lag = exported_lag(s, name)
        c.check(reported and abs(lag - broker) <= LAG_THRESHOLD,
                f"instance {name.upper()} ({guarantee}) exports a lag within {LAG_THRESHOLD} of the broker's "
                f"({lag:.0f} exported, {broker} on the broker)")
    t0 = time.time()

    def evaluated_after_scrapes():
        scraped = [v for _, v in s.prom.query(f'timestamp(up{{job="leadscore"}}) > {t0:.3f}')]
        rule = s.prom.query("timestamp(job:leadscore_consumer_lag_records:sum)")
        return len(scraped) == 2 and rule and rule[0][1] > max(scraped)

    wait_until("a lag rule evaluation after a scrape of both instances", 15, evaluated_after_scrapes)
    rec = s.prom.query("job:leadscore_consumer_lag_records:sum")
    c.check(len(rec) == 1 and abs(rec[0][1] - broker) <= LAG_THRESHOLD,
            f"the lag alert's input job:leadscore_consumer_lag_records:sum (both instances) is within "
            f"{LAG_THRESHOLD} of the broker's ({rec[0][1] if rec else float('nan'):.0f})", str(rec))


def run(c, kids, kafka, args):
    s = Stack(c, kids, kafka, args)
    print(f"topics {kafka.tag}-*, group {s.group}, broker {args.bootstrap}", flush=True)
    c.check(True, f"created topics {s.topics['events']} ({PARTITIONS} partitions), output and dead letters")
    start_instances(c, s)
    s.start_generator(seed=7)
    start_prometheus(c, s)
    wait_warmed_up(c, s)
    models = model_names(s)
    c.check(len(models) == 1, f"the instances export one model: {models}")
    with open(DASHBOARD) as f:
        dash = json.load(f)
    check_variables(c, s, dash, models)
    check_ownership_controls(c)
    check_partitions(c, s, ["a", "b"], f"A and B own the input's {PARTITIONS} partitions once between them", 15)
    alerts_exprs = check_dashboard(c, s, dash, models)
    check_rules(c, s)
    check_kpi(c, s, dash)
    check_healthcheck(c, s)
    check_instance_down(c, s, alerts_exprs)
    check_lag_after_restart(c, s)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="the leadscore binary")
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--validate-bin", required=True, help="deploy/test/validate, built")
    args = ap.parse_args()

    c = Checks("live-prometheus")
    kids = Children(args.workdir)
    kafka = TestKafka(args.bootstrap, "ops")
    try:
        run(c, kids, kafka, args)
    except Abort as e:
        print(f"  stopping: {e}", flush=True)
    finally:
        kids.stop_all()
        kafka.cleanup()
    return c.summary()


if __name__ == "__main__":
    sys.exit(main())
