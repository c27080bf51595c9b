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
  every Nth transaction), so LeadscoreTransactionsAborting must go pending for B and for B only
  while every other alert stays quiet; after B is killed, LeadscoreInstanceDown must go pending
  for B, and the dashboard's alert table must show it;
- the image's HEALTHCHECK command (read from the Dockerfile through BuildKit's parser) passes
  against a running instance and fails against a dead port and a server without /healthz.

Instance A runs on deploy/compose/leadscore.toml, instance B on the leadscore.toml of
deploy/k8s/configmap.yaml (both with LEADSCORE_* overrides for the local broker, the test's own
topic and group names, and ports), so both shipped configs are proven to load. A runs
at_least_once and B exactly_once (the default), so both commit paths feed the dashboard; they
share one group, input and state as any two instances do.

Known defect (src/pipeline/mod.rs, `Rebalancing::stats`): under exactly_once,
leadscore_consumer_lag_records is never exported, because librdkafka's `consumer_lag` is computed
from the consumer's committed offset, which transactional offset commits do not update (it stays
-1). The lag panels and rules are therefore proven on A's series; B's missing series is reported
as a known defect (skipped) until it is fixed, then as passed.
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
import uuid

import yaml

sys.path.insert(0, os.path.dirname(__file__))
from common import (REPO, Abort, Checks, Children, Prometheus, free_port, http_get,  # noqa: E402
                    metric_sum, parse_metrics, wait_until)

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

# Metrics that exist only after an event that a healthy run does not have. A selector of one of
# these may return nothing; its name must then be registered in src/metrics.rs.
MAY_BE_ABSENT = {
    "leadscore_state_restore_errors_total": "only after a damaged state record was skipped",
}
# Metrics that not every instance exports yet (see the known defect above): their expressions
# may cover a subset of the instances.
NOT_ON_EVERY_INSTANCE = {"leadscore_consumer_lag_records"}
LAG_DEFECT = ("under exactly_once leadscore_consumer_lag_records is never exported: librdkafka's "
              "consumer_lag is -1 because transactional offset commits do not set the consumer's "
              "committed offset (src/pipeline/mod.rs Rebalancing::stats; use ls_offset - app_offset)")


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
                    for r in g["rules"]:
                        out.append(r)
    return out


def k8s_leadscore_toml():
    with open(K8S_CONFIGMAP) as f:
        return yaml.safe_load(f)["data"]["leadscore.toml"]


def dockerfile_healthcheck(validate_bin):
    out = subprocess.run([validate_bin, "dockerfile", os.path.join(REPO, "Dockerfile")],
                         check=True, capture_output=True, text=True).stdout
    doc = json.loads(out)
    final = doc["stages"][-1]
    checks = [i["command"]["Health"]["Test"] for i in final["instructions"] if i["name"] == "HEALTHCHECK"]
    return checks[-1] if checks else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="the leadscore binary")
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--validate-bin", required=True, help="deploy/test/validate, built")
    args = ap.parse_args()

    c = Checks("live-prometheus")
    kids = Children(args.workdir)
    try:
        run(c, kids, args)
    except Abort as e:
        print(f"  stopping: {e}", flush=True)
    finally:
        kids.stop_all()
    return c.summary()


def run(c, kids, args):
    from confluent_kafka.admin import AdminClient, NewTopic

    tag = f"ops-{uuid.uuid4().hex[:8]}"
    topics = {"input": f"{tag}-events", "output": f"{tag}-qualified", "dlq": f"{tag}-dlq",
              "state": f"{tag}-state", "repartition": f"{tag}-repartition"}
    group = f"{tag}-group"
    print(f"topics {tag}-*, group {group}, broker {args.bootstrap}", flush=True)

    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    futures = admin.create_topics([NewTopic(topics["input"], PARTITIONS, 1),
                                   NewTopic(topics["output"], 2, 1), NewTopic(topics["dlq"], 1, 1)],
                                  operation_timeout=30)
    for t, f in futures.items():
        f.result(timeout=60)
    c.check(True, f"created topics {topics['input']} ({PARTITIONS} partitions), output and dead letters")

    with open(os.path.join(args.workdir, "k8s-leadscore.toml"), "w") as f:
        f.write(k8s_leadscore_toml())

    ports = {"a": free_port(), "b": free_port(), "prom": free_port()}
    inst = {}
    for name, config in (("a", COMPOSE_CONFIG), ("b", os.path.join(args.workdir, "k8s-leadscore.toml"))):
        addr = f"127.0.0.1:{ports[name]}"
        env = {
            "LEADSCORE_KAFKA_BROKERS": args.bootstrap,
            "LEADSCORE_KAFKA_GROUP_ID": group,
            "LEADSCORE_KAFKA_INPUT_TOPICS": topics["input"],
            "LEADSCORE_KAFKA_OUTPUT_TOPIC": topics["output"],
            "LEADSCORE_KAFKA_DEAD_LETTER_TOPIC": topics["dlq"],
            "LEADSCORE_KAFKA_STATE_TOPIC": topics["state"],
            "LEADSCORE_KAFKA_REPARTITION_TOPIC": topics["repartition"],
            "LEADSCORE_KAFKA_TRANSACTIONAL_ID": f"{tag}-{name}",
            "LEADSCORE_HTTP_LISTEN": addr,
            "LEADSCORE_HTTP_ADVERTISE": f"http://{addr}",
            "LEADSCORE_MODEL_PATH": MODEL,
            "LEADSCORE_LOG": "warn",
        }
        if name == "a":
            env["LEADSCORE_KAFKA_PROCESSING_GUARANTEE"] = "at_least_once"
        if name == "b":
            env["LEADSCORE_TEST_ABORT_EVERY"] = str(ABORT_EVERY)
        p = kids.start(f"leadscore-{name}", [args.bin, "run", "--config", config], env=env)
        inst[name] = {"proc": p, "addr": addr, "url": f"http://{addr}", "config": config}

    def ready(name):
        return http_get(inst[name]["url"] + "/readyz")[0] == 200

    for name in ("a", "b"):
        ok = wait_until(f"instance {name} ready", 60, lambda: ready(name) or inst[name]["proc"].poll() is not None)
        c.must(ok and inst[name]["proc"].poll() is None,
               f"instance {name} ({os.path.relpath(inst[name]['config'], REPO) if name == 'a' else 'deploy/k8s/configmap.yaml leadscore.toml'}) runs and is ready",
               kids.log_tail(inst[name]["proc"]))

    gen = kids.start("generate", [args.bin, "generate", "--brokers", args.bootstrap, "--topic", topics["input"],
                                  "--rate", "500", "--leads", "2000", "--seed", "7"])

    # The repository's scrape config with local targets and short intervals; the rule files are
    # the repository's own, by absolute path.
    with open(PROM_CONFIG) as f:
        cfg = yaml.safe_load(f)
    cfg["global"]["scrape_interval"] = f"{SCRAPE_S}s"
    cfg["global"]["scrape_timeout"] = f"{SCRAPE_S}s"
    cfg["global"]["evaluation_interval"] = f"{SCRAPE_S}s"
    cfg["rule_files"] = [os.path.join(os.path.dirname(PROM_CONFIG), r) for r in cfg["rule_files"]]
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    c.must("leadscore" in jobs, "the scrape config has a job named leadscore")
    jobs["leadscore"]["static_configs"] = [{"targets": [inst["a"]["addr"], inst["b"]["addr"]]}]
    if "prometheus" in jobs:
        jobs["prometheus"]["static_configs"] = [{"targets": [f"127.0.0.1:{ports['prom']}"]}]
    variant = os.path.join(args.workdir, "prometheus.yml")
    with open(variant, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    r = subprocess.run(["promtool", "check", "config", variant], capture_output=True, text=True)
    c.check(r.returncode == 0, "promtool check config passes on the local variant", r.stdout + r.stderr)

    prom_proc = kids.start("prometheus", [
        "prometheus", f"--config.file={variant}", f"--storage.tsdb.path={os.path.join(args.workdir, 'tsdb')}",
        f"--web.listen-address=127.0.0.1:{ports['prom']}", "--log.level=warn"])
    prom = Prometheus(f"http://127.0.0.1:{ports['prom']}")
    ok = wait_until("Prometheus ready", 30, lambda: http_get(prom.base + "/-/ready")[0] == 200)
    c.must(ok, "Prometheus starts on the config", kids.log_tail(prom_proc))

    rules = prom.get("/api/v1/rules")
    loaded = [r for g in rules["groups"] for r in g["rules"]]
    c.check(len(loaded) == len(rule_entries()),
            f"Prometheus loaded all {len(rule_entries())} rules of deploy/prometheus/rules/", str(len(loaded)))

    def targets_up():
        active = prom.get("/api/v1/targets")["activeTargets"]
        ls = [t for t in active if t["labels"].get("job") == "leadscore"]
        return len(ls) == 2 and all(t["health"] == "up" for t in ls)

    c.must(wait_until("both leadscore targets up", 30, targets_up), "Prometheus scrapes both instances (up)")

    def direct(name):
        status, body = http_get(inst[name]["url"] + "/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics of {name}: {status}")
        return parse_metrics(body)

    def warmed_up():
        a, b = direct("a"), direct("b")
        transitions = metric_sum(a, "leadscore_transitions_total") + metric_sum(b, "leadscore_transitions_total")
        aborted = metric_sum(b, "leadscore_commits_total", result="aborted")
        latency = metric_sum(a, "leadscore_transition_latency_seconds_count") + \
            metric_sum(b, "leadscore_transition_latency_seconds_count")
        both = metric_sum(a, "leadscore_tracked_leads") > 0 and metric_sum(b, "leadscore_tracked_leads") > 0
        scrapes = prom.query(f'count_over_time(up{{job="leadscore"}}[1m]) >= 20')
        return transitions > 0 and aborted >= 2 and latency > 0 and both and len(scrapes) == 2

    ok = wait_until("traffic, transitions, aborts on B and 20 scrapes of each instance", 90, warmed_up, 1)
    c.must(ok, "both instances score leads and publish transitions; B aborts transactions; 20 scrapes each",
           kids.log_tail(inst["b"]["proc"]))
    # One more rule evaluation after the last condition, so recorded series exist.
    wait_until("recording rules evaluated", 15,
               lambda: prom.query("job_model:leadscore_average_score:ratio") and
               prom.query("job:leadscore_records_rejected_share:rate10m"))

    model_name = direct("a")
    model_name = sorted({l["model"] for n, l, v in model_name if n == "leadscore_tracked_leads"})
    c.check(len(model_name) == 1, f"the instances export one model: {model_name}")
    instances = {inst["a"]["addr"], inst["b"]["addr"]}

    with open(DASHBOARD) as f:
        dash = json.load(f)

    # --- template variables ---
    for v in dash["templating"]["list"]:
        if v.get("type") != "query":
            continue
        m = re.fullmatch(r"\s*label_values\((.+),\s*([a-zA-Z_]+)\)\s*", v["definition"])
        if not c.check(m, f"variable ${v['name']} is a label_values() query", v["definition"]):
            continue
        series = prom.get("/api/v1/series", **{"match[]": substitute(m.group(1))})
        values = {s.get(m.group(2)) for s in series} - {None}
        want = set(model_name) if v["name"] == "model" else instances if v["name"] == "instance" else None
        c.check(values and (want is None or values == want),
                f"variable ${v['name']} lists {sorted(values)}", f"expected {sorted(want or [])}")

    # --- every dashboard expression ---
    alerts_exprs = []
    for where, expr in dashboard_queries(dash):
        e = substitute(expr)
        if "ALERTS" in e:
            alerts_exprs.append((where, e))  # checked once an alert is pending (below)
            continue
        if re.search(r"\boffset\b", e):
            # Compares with 1 hour or 1 day ago: no data that old yet. The same expression
            # without the offsets must return data.
            where, e = where + " (offsets removed)", strip_offsets(e)
        try:
            res = prom.query(e)
        except Exception as err:  # a PromQL error is a failed check, not a crash
            c.check(False, f"{where}: evaluates", str(err))
            continue
        problems = []
        if not res:
            problems.append("no series")
        if any(not math.isfinite(v) for _, v in res):
            problems.append(f"non-finite values {[(l, v) for l, v in res if not math.isfinite(v)]}")
        got_inst = {l["instance"] for l, _ in res if "instance" in l}
        # Every instance, unless the expression selects on another label's value (aborted
        # commits exist on B only): then a subset.
        filtered = any(k not in ("job", "instance", "model")
                       for s in selectors(e) for k in re.findall(r"([a-zA-Z_]+)\s*(?:=~|!~|!=|=)", s))
        filtered = filtered or any(n in e for n in NOT_ON_EVERY_INSTANCE)
        if got_inst and not (got_inst <= instances if filtered else got_inst == instances):
            problems.append(f"instances {sorted(got_inst)}")
        got_models = {l["model"] for l, _ in res if "model" in l}
        if got_models and got_models != set(model_name):
            problems.append(f"models {sorted(got_models)}")
        for s in selectors(e):
            name = re.match(r"[A-Za-z0-9_:]+", s).group(0)
            if not prom.query(s):
                if name in MAY_BE_ABSENT:
                    with open(os.path.join(REPO, "src/metrics.rs")) as f:
                        if f'"{name}"' not in f.read():
                            problems.append(f"{name} is not registered in src/metrics.rs")
                else:
                    problems.append(f"selector {s} matches no series")
        c.check(not problems, f"{where}: {len(res)} series", "; ".join(problems) + f"\n        {e}")

    lag_b = prom.query(f'leadscore_consumer_lag_records{{job="leadscore",instance="{inst["b"]["addr"]}"}}')
    c.known_defect(lag_b, "instance B (exactly_once) exports leadscore_consumer_lag_records", LAG_DEFECT)

    # --- the heatmap / bar gauge buckets are the service's `le` buckets ---
    le_direct = {l["le"] for n, l, v in direct("a") if n == "leadscore_leads_by_score"}
    le_prom = {l["le"] for l, _ in prom.query('sum by (le) (leadscore_leads_by_score{job="leadscore"})')}
    c.check(le_direct and le_direct == le_prom, f"score distribution has the service's {len(le_direct)} buckets")

    # --- every rule expression ---
    for r in rule_entries():
        e = r["expr"]
        name = r.get("alert") or r.get("record")
        try:
            res = prom.query(e)
        except Exception as err:
            c.check(False, f"rule {name}: evaluates", str(err))
            continue
        missing = [s for s in selectors(e) if not prom.query(s)]
        c.check(not missing, f"rule {name}: every selector matches series", f"empty: {missing}")
        if "record" in r:
            c.check(res and all(math.isfinite(v) for _, v in res),
                    f"recording rule {name}: {len(res)} series, finite", str(res))
        elif name == "LeadscoreTransactionsAborting":
            got = sorted(l.get("instance") for l, _ in res)
            c.check(got == [inst["b"]["addr"]], f"alert {name}: matches instance B only (B aborts on purpose)",
                    str(res))
        else:
            c.check(not res, f"alert {name}: quiet on the healthy pair", str(res))

    def alerts():
        return [a for a in prom.get("/api/v1/alerts")["alerts"] if a["labels"]["alertname"].startswith("Leadscore")]

    ok = wait_until("LeadscoreTransactionsAborting pending for B", 15,
                    lambda: any(a["labels"]["alertname"] == "LeadscoreTransactionsAborting" for a in alerts()))
    active = [(a["labels"]["alertname"], a["labels"].get("instance"), a["state"]) for a in alerts()]
    c.check(ok and active and all(n == "LeadscoreTransactionsAborting" and i == inst["b"]["addr"] for n, i, _ in active),
            "Prometheus' rule engine: LeadscoreTransactionsAborting active for B, no other alert", str(active))

    # --- the KPI through Prometheus equals the instances' own average ---
    kids.stop(gen, signal.SIGINT, timeout_s=15)

    def settled():
        before = [metric_sum(direct(n), "leadscore_events_total") + metric_sum(direct(n), "leadscore_events_rejected_total")
                  for n in ("a", "b")]
        time.sleep(2)
        after = [metric_sum(direct(n), "leadscore_events_total") + metric_sum(direct(n), "leadscore_events_rejected_total")
                 for n in ("a", "b")]
        return before == after

    c.must(wait_until("both instances idle after the generator stopped", 40, settled, 0.5),
           "the instances consume everything after the generator stops")
    t0 = time.time()
    ok = wait_until("a scrape of both instances after they settled", 15,
                    lambda: len(prom.query(f'timestamp(leadscore_score_sum{{job="leadscore"}}) > {t0:.3f}')) == 2)
    c.must(ok, "Prometheus scraped both settled instances")
    a, b = direct("a"), direct("b")
    own = (metric_sum(a, "leadscore_score_sum") + metric_sum(b, "leadscore_score_sum")) / \
        (metric_sum(a, "leadscore_tracked_leads") + metric_sum(b, "leadscore_tracked_leads"))
    kpi_expr = next(e for w, e in dashboard_queries(dash) if "Average lead score (KPI)" in w)
    kpi = prom.query(substitute(kpi_expr))
    c.check(len(kpi) == 1 and abs(kpi[0][1] - own) <= 0.01,
            f"KPI from Prometheus {kpi[0][1] if kpi else None:.4f} = instances' own {own:.4f} (within 0.01)",
            str(kpi))
    rec = prom.query("job_model:leadscore_average_score:ratio")
    c.check(len(rec) == 1 and abs(rec[0][1] - own) <= 0.01,
            f"recording rule job_model:leadscore_average_score:ratio = {own:.4f}", str(rec))
    mean_of_means = (metric_sum(a, "leadscore_average_score") + metric_sum(b, "leadscore_average_score")) / 2
    print(f"  (the mean of the two instance averages would be {mean_of_means:.4f})", flush=True)
    for n, s in (("a", a), ("b", b)):
        mine = metric_sum(s, "leadscore_average_score")
        ratio = metric_sum(s, "leadscore_score_sum") / metric_sum(s, "leadscore_tracked_leads")
        c.check(abs(mine - ratio) <= 1e-6 * max(1, abs(ratio)),
                f"instance {n}: leadscore_average_score {mine:.4f} = score_sum / tracked_leads")
    tracked_prom = prom.query('sum(leadscore_tracked_leads{job="leadscore"})')
    c.check(tracked_prom and tracked_prom[0][1] == metric_sum(a, "leadscore_tracked_leads") + metric_sum(b, "leadscore_tracked_leads"),
            "tracked leads in Prometheus = the instances' sum")

    # --- the image's health check, run here against real endpoints ---
    hc = dockerfile_healthcheck(args.validate_bin)
    if c.check(hc and hc[0] == "CMD", "the Dockerfile has an exec-form HEALTHCHECK", str(hc)):
        def run_hc(listen):
            env = dict(os.environ, LEADSCORE_HTTP_LISTEN=listen)
            return subprocess.run(hc[1:], env=env, capture_output=True, timeout=10).returncode
        c.check(run_hc(inst["a"]["addr"]) == 0, "HEALTHCHECK passes against a running instance's /healthz")
        c.check(run_hc(f"127.0.0.1:{free_port()}") != 0, "HEALTHCHECK fails against a closed port")
        c.check(run_hc(f"127.0.0.1:{ports['prom']}") != 0, "HEALTHCHECK fails against a server without /healthz (404)")

    # --- instance down: the alert goes pending, the dashboard's alert table shows it ---
    kids.stop(inst["b"]["proc"], signal.SIGKILL)
    ok = wait_until("LeadscoreInstanceDown pending for B", 20, lambda: any(
        a["labels"]["alertname"] == "LeadscoreInstanceDown" and a["labels"].get("instance") == inst["b"]["addr"]
        for a in alerts()))
    c.check(ok, "after B is killed, LeadscoreInstanceDown is pending for B", str(alerts()))
    quiet = [a["labels"] for a in alerts() if a["labels"]["alertname"] == "LeadscoreInstanceDown"
             and a["labels"].get("instance") != inst["b"]["addr"]]
    c.check(not quiet, "LeadscoreInstanceDown stays quiet for A", str(quiet))
    for where, e in alerts_exprs:
        res = prom.query(e)
        names = {(l.get("alertname"), l.get("instance")) for l, _ in res}
        c.check(("LeadscoreInstanceDown", inst["b"]["addr"]) in names, f"{where}: shows the pending alert", str(res))


if __name__ == "__main__":
    sys.exit(main())
