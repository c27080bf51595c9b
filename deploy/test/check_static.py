#!/usr/bin/env python3
"""The static part of scripts/test-ops: the deployment files checked with the real tools' own
code where this machine has it, and against each other.

- docker-compose.yml: Docker Compose's loader (compose-go, through deploy/test/validate), then
  names, ports, topics, config paths and mounts against deploy/compose/leadscore.toml,
  deploy/prometheus/prometheus.yml, the Grafana provisioning and the Dockerfile.
- Dockerfile: BuildKit's parser and linter; the runtime stage provides every shared library the
  binary links (ldd of the local build, mapped to Debian packages); the build stage's context
  holds every file the crate needs (cargo metadata --locked on a copy of exactly that context).
- Prometheus: promtool check config / check rules / test rules, and two mutants of the rules
  (every alert silenced, every alert always firing) that the unit tests must reject, which
  proves each alert has a firing case and a quiet case.
- Grafana: the dashboard's structure (ids, layout, variables, data sources) and that every metric
  it or the rules name is one src/metrics.rs registers.
- Kubernetes: kubernetes-validate (the API's JSON schemas, strict) on the core manifests for two
  Kubernetes versions; the Prometheus Operator's Go types (strict) on the PodMonitor and the
  PrometheusRule; the manifests against each other, the ConfigMap's model against
  examples/model.toml, the PrometheusRule against the rules file, the LEADSCORE_* variables
  against src/config.rs. KEDA's ScaledObject is checked for its references only.
- Each validator is also fed a broken copy, which it must reject.
"""

import argparse
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib

import yaml

sys.path.insert(0, os.path.dirname(__file__))
from common import REPO, Abort, Checks  # noqa: E402

P = lambda *a: os.path.join(REPO, *a)  # noqa: E731
K8S_VERSIONS = ["1.29.0", "1.37.0"]


def sh(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, **kw)


def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)


def yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def config_env_vars():
    """The LEADSCORE_* variables src/config.rs accepts (ENV_VARS and RESERVED_ENV_VARS)."""
    src = open(P("src/config.rs")).read()
    names = set()
    for const in ("ENV_VARS", "RESERVED_ENV_VARS"):
        m = re.search(rf"pub const {const}: &\[&str\] = &\[(.*?)\];", src, re.S)
        names |= set(re.findall(r'"(LEADSCORE_[A-Z_]+)"', m.group(1)))
    return names


def env_ok(name, known):
    return name in known or name.startswith("LEADSCORE_LIBRDKAFKA_") or not name.startswith("LEADSCORE_")


def registered_metrics():
    src = open(P("src/metrics.rs")).read()
    return set(re.findall(r'"(leadscore_[a-z_]+)"', src))


def metric_names(expr):
    return set(re.findall(r"(?<![A-Za-z0-9_:])(leadscore_[a-z_]+)", expr))


def base_metric(name):
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)].endswith("_seconds"):
            return name[: -len(suffix)]
    return name


def slug(heading):
    """GitHub's anchor of a Markdown heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--validate-bin", required=True)
    ap.add_argument("--bin", required=True, help="the locally built leadscore binary (for ldd)")
    ap.add_argument("--k8s-validate", default=f"{sys.executable} -m kubernetes_validate",
                    help="the kubernetes-validate command (default: this Python's module)")
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    c = Checks("static")
    for part in (compose_checks, dockerfile_checks, prometheus_checks, dashboard_checks, k8s_checks):
        print(f"{part.__name__.replace('_checks', '')}:", flush=True)
        try:
            part(c, args)
        except Abort as e:
            print(f"  stopping this part: {e}", flush=True)
    return c.summary()


# --- docker-compose.yml ------------------------------------------------------------------------

def compose_checks(c, args):
    r = sh([args.validate_bin, "compose", P("docker-compose.yml")])
    c.must(r.returncode == 0, "docker-compose.yml loads with compose-go (Compose Specification schema, "
           "interpolation, merge keys, references)", r.stderr)
    project = json.loads(r.stdout)
    # The validator must reject a broken file.
    src = open(P("docker-compose.yml")).read()
    broken = os.path.join(args.workdir, "docker-compose.broken.yml")
    with open(broken, "w") as f:
        f.write(src.replace("    depends_on:\n      kafka:", "    depends_on:\n      kafka-missing:", 1))
    r = sh([args.validate_bin, "compose", broken])
    c.check(r.returncode != 0 and "kafka-missing" in r.stderr,
            "compose-go rejects a copy that depends on an undefined service", r.stderr)
    with open(broken, "w") as f:
        f.write(src.replace("stop_grace_period:", "stop_grace_periods:", 1))
    r = sh([args.validate_bin, "compose", broken])
    c.check(r.returncode != 0, "compose-go rejects a copy with a misspelt key", r.stderr)

    svcs = project["services"]
    want = {"kafka", "kafka-init", "leadscore-0", "leadscore-1", "generator", "prometheus", "grafana"}
    c.check(set(svcs) == want, f"services: {sorted(svcs)}", f"expected {sorted(want)}")
    for name, s in svcs.items():
        img = s.get("image", "")
        c.check(img and not img.endswith(":latest") and (":" in img), f"{name}: image {img} has a pinned tag")

    # Kafka: KRaft single node; the listener containers use.
    kenv = svcs["kafka"]["environment"]
    c.check(svcs["kafka"]["image"].startswith("apache/kafka:"), "kafka is the official apache/kafka image")
    c.check(kenv.get("KAFKA_PROCESS_ROLES") == "broker,controller" and "CLUSTER_ID" in kenv
            and kenv.get("KAFKA_CONTROLLER_QUORUM_VOTERS", "").startswith(kenv.get("KAFKA_NODE_ID", "?") + "@"),
            "kafka runs KRaft, broker and controller in one node")
    c.check(all(kenv.get(k) == "1" for k in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                                              "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                                              "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR")),
            "kafka: internal topics (offsets, transaction state) fit one broker")
    adv = dict(re.findall(r"([A-Z_]+)://([^,]+)", kenv.get("KAFKA_ADVERTISED_LISTENERS", "")))
    internal = adv.get(kenv.get("KAFKA_INTER_BROKER_LISTENER_NAME", "PLAINTEXT"))
    c.check(internal and internal.split(":")[0] == "kafka", f"kafka advertises {internal} to the containers")
    c.check(kenv.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE") == "false",
            "kafka does not auto-create topics (kafka-init's partition counts are the only ones)")

    # kafka-init: the topics it creates.
    script = "\n".join(svcs["kafka-init"]["command"])
    topics = {}
    for line in script.splitlines():
        if line.strip().startswith("create --topic"):
            a = shlex.split(line.strip())[1:]
            t = {"partitions": None, "config": {}}
            name = None
            for i, x in enumerate(a):
                if x == "--topic":
                    name = a[i + 1]
                elif x == "--partitions":
                    t["partitions"] = int(a[i + 1])
                elif x == "--config":
                    k, v = a[i + 1].split("=", 1)
                    t["config"][k] = v
            topics[name] = t
    c.check(topics, f"kafka-init creates {sorted(topics)}")
    c.check(svcs["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
            and "healthcheck" in svcs["kafka"], "kafka-init waits for the broker's health check")

    # leadscore replicas.
    cfg_path = P("deploy/compose/leadscore.toml")
    with open(cfg_path, "rb") as f:
        cfg = tomllib.load(f)
    k = cfg["kafka"]
    c.check(k["brokers"] == internal, f"leadscore.toml brokers {k['brokers']} = kafka's advertised listener")
    port = int(cfg["http"]["listen"].rsplit(":", 1)[1])
    c.check(cfg["http"]["listen"].startswith("0.0.0.0:"), "leadscore listens on all interfaces of its container")
    runs = {n: s for n, s in svcs.items() if (s.get("command") or [None])[0] == "run"}
    c.check(sorted(runs) == ["leadscore-0", "leadscore-1"], f"two leadscore replicas: {sorted(runs)}")
    known_env = config_env_vars()
    tx_ids, host_ports = set(), []
    for n, s in runs.items():
        cmd = s["command"]
        conf = cmd[cmd.index("--config") + 1]
        mounts = {v["target"]: v["source"] for v in s.get("volumes", [])}
        c.check(os.path.realpath(mounts.get(conf, "")) == os.path.realpath(cfg_path),
                f"{n}: --config {conf} is deploy/compose/leadscore.toml")
        env = s.get("environment", {})
        c.check(all(env_ok(e, known_env) for e in env), f"{n}: every LEADSCORE_* variable is one src/config.rs knows",
                str([e for e in env if not env_ok(e, known_env)]))
        tx_ids.add(env.get("LEADSCORE_KAFKA_TRANSACTIONAL_ID"))
        c.check(s.get("hostname") == n and env.get("LEADSCORE_HTTP_ADVERTISE") == f"http://{n}:{port}",
                f"{n}: hostname and advertised URL http://{n}:{port}")
        c.check(s["depends_on"].get("kafka-init", {}).get("condition") == "service_completed_successfully",
                f"{n}: starts after kafka-init created the topics")
        c.check(any(p["target"] == port for p in s.get("ports", [])), f"{n}: publishes container port {port}")
        host_ports += [p.get("published") for p in s.get("ports", [])]
        c.check(s.get("build", {}).get("dockerfile") == "Dockerfile", f"{n}: built from the Dockerfile")
    c.check(len(tx_ids) == len(runs) and None not in tx_ids, f"transactional ids unique and set: {sorted(map(str, tx_ids))}")

    group = k.get("group_id", "leadscore")
    repart = k.get("repartition_topic", f"{group}-repartition")
    inputs = k["input_topics"]
    n_in = {topics.get(t, {}).get("partitions") for t in inputs}
    c.check(all(t in topics for t in inputs) and len(n_in) == 1,
            f"input topics {inputs} created with one partition count {n_in}")
    n_in = n_in.pop() if len(n_in) == 1 else None
    for key in ("output_topic", "dead_letter_topic"):
        c.check(k[key] in topics, f"{key} {k[key]} created")
    st = topics.get(k["state_topic"], {})
    c.check(st.get("partitions") == n_in and st.get("config", {}).get("cleanup.policy") == "compact",
            f"state topic {k['state_topic']}: compacted, {n_in} partitions like the input")
    rp = topics.get(repart, {})
    c.check(rp.get("partitions") == n_in and rp.get("config", {}).get("cleanup.policy") == "delete",
            f"repartition topic {repart}: {n_in} partitions like the input")

    # Generator.
    g = svcs["generator"]
    gcmd = g["command"]
    c.check(gcmd[0] == "generate" and gcmd[gcmd.index("--brokers") + 1] == k["brokers"]
            and gcmd[gcmd.index("--topic") + 1] in inputs, "generator produces to leadscore's input on the same broker")
    c.check(g.get("healthcheck", {}).get("disable") is True, "generator: the image's HTTP health check is disabled")

    # Prometheus.
    p = svcs["prometheus"]
    mounts = {v["target"]: v["source"] for v in p.get("volumes", [])}
    conf = next(a.split("=", 1)[1] for a in p["command"] if a.startswith("--config.file="))
    host_conf = None
    for tgt, source in mounts.items():
        if conf.startswith(tgt.rstrip("/") + "/"):
            host_conf = os.path.join(source, os.path.relpath(conf, tgt))
    c.check(host_conf and os.path.realpath(host_conf) == P("deploy/prometheus/prometheus.yml"),
            f"prometheus: --config.file {conf} is deploy/prometheus/prometheus.yml")
    prom = load_yaml(P("deploy/prometheus/prometheus.yml"))
    job = next((j for j in prom["scrape_configs"] if j["job_name"] == "leadscore"), None)
    targets = sorted(t for sc in (job or {}).get("static_configs", []) for t in sc["targets"])
    c.check(targets == sorted(f"{n}:{port}" for n in runs), f"prometheus scrapes {targets} (every replica)")
    c.check(job and job.get("metrics_path", "/metrics") == "/metrics", "prometheus scrapes /metrics")
    rule_files = [f for pat in prom.get("rule_files", []) for f in glob.glob(P("deploy/prometheus", pat))]
    c.check(P("deploy/prometheus/rules/leadscore.yml") in rule_files, "prometheus loads rules/leadscore.yml")
    host_ports += [x.get("published") for x in p.get("ports", [])]

    # Grafana.
    gr = svcs["grafana"]
    gmounts = {v["target"]: os.path.realpath(v["source"]) for v in gr.get("volumes", [])}
    c.check(gmounts.get("/etc/grafana/provisioning") == P("deploy/grafana/provisioning"),
            "grafana: provisioning from deploy/grafana/provisioning")
    ds = load_yaml(P("deploy/grafana/provisioning/datasources/prometheus.yml"))["datasources"]
    prom_url = next(d["url"] for d in ds if d["type"] == "prometheus")
    host = re.match(r"https?://([^:/]+):(\d+)", prom_url)
    c.check(host and host.group(1) in svcs and host.group(2) == "9090"
            and any(x["target"] == 9090 for x in p.get("ports", [])),
            f"grafana's data source {prom_url} is the prometheus service")
    prov = load_yaml(P("deploy/grafana/provisioning/dashboards/leadscore.yml"))["providers"][0]
    dash_dir = prov["options"]["path"]
    c.check(gmounts.get(dash_dir) == P("deploy/grafana/dashboards"),
            f"grafana: dashboards provider path {dash_dir} is deploy/grafana/dashboards")
    home = gr["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH", "")
    c.check(home.startswith(dash_dir + "/") and os.path.exists(P("deploy/grafana/dashboards", os.path.relpath(home, dash_dir))),
            f"grafana's home dashboard {home} is a provisioned file")
    c.check(gr["environment"].get("GF_AUTH_ANONYMOUS_ENABLED") == "true", "grafana: viewable without a login")
    host_ports += [x.get("published") for x in gr.get("ports", [])]
    c.check(len(host_ports) == len(set(host_ports)), f"published host ports are distinct: {host_ports}")


# --- Dockerfile ----------------------------------------------------------------------------------

def dockerfile_checks(c, args):
    r = sh([args.validate_bin, "dockerfile", P("Dockerfile")])
    c.must(r.returncode == 0, "the Dockerfile parses with BuildKit's parser", r.stderr)
    doc = json.loads(r.stdout)
    c.check(not doc["warnings"], "BuildKit's build checks raise no warning", str(doc["warnings"]))
    bad = os.path.join(args.workdir, "Dockerfile.broken")
    with open(bad, "w") as f:
        f.write(open(P("Dockerfile")).read().replace(" AS build", " as Build", 1))
    r2 = sh([args.validate_bin, "dockerfile", bad])
    c.check(r2.returncode == 0 and json.loads(r2.stdout)["warnings"],
            "the linter flags a copy with a mis-cased stage", r2.stdout[-300:])

    stages = doc["stages"]
    c.check(len(stages) >= 2, f"multi-stage: {[s['name'] for s in stages]}")
    build, final = stages[0], stages[-1]
    ins = lambda st, name: [i for i in st["instructions"] if i["name"] == name]  # noqa: E731
    c.check(re.fullmatch(r"debian:\$\{DEBIAN_RELEASE\}-slim|debian:[a-z]+-slim", final["base"]),
            f"runtime base {final['base']} is Debian slim")
    c.check("${DEBIAN_RELEASE}" in build["base"] and "${DEBIAN_RELEASE}" in final["base"],
            "build and runtime stages use one Debian release (glibc and OpenSSL match)")
    users = ins(final, "USER")
    user = users[-1]["command"]["User"] if users else ""
    c.check(user and user.split(":")[0] not in ("0", "root"), f"runs as a non-root user ({user})")
    hc = ins(final, "HEALTHCHECK")
    c.check(hc and "/healthz" in " ".join(hc[-1]["command"]["Health"]["Test"]), "HEALTHCHECK on /healthz")
    ep = ins(final, "ENTRYPOINT")
    c.check(ep and ep[-1]["command"]["CmdLine"] == ["/usr/local/bin/leadscore"], "ENTRYPOINT is the binary")
    copies = ins(final, "COPY")
    c.check(any(x["command"]["From"] == build["name"] and x["command"]["DestPath"] == "/usr/local/bin/leadscore"
                for x in copies), "the runtime stage takes only the binary from the build stage")
    workdir = (ins(final, "WORKDIR") or [{"command": {"Path": "/"}}])[-1]["command"]["Path"]
    model_dest = [x["command"]["DestPath"] for x in copies if x["command"]["SourcePaths"] == ["examples/model.toml"]]
    c.check(model_dest and os.path.join(workdir, "examples/model.toml") in model_dest,
            f"examples/model.toml is at {model_dest}, where the default model path (relative to {workdir}) finds it")
    with open(P("deploy/compose/leadscore.toml"), "rb") as f:
        compose_model = tomllib.load(f)["model"]["path"]
    c.check(compose_model in model_dest, f"the compose config's model {compose_model} is in the image")
    envs = {e["Key"]: e["Value"] for i in ins(final, "ENV") for e in i["command"]["Env"]}
    expose = [p for i in ins(final, "EXPOSE") for p in i["command"]["Ports"]]
    c.check(envs.get("LEADSCORE_HTTP_LISTEN", "").endswith(":9898") and "9898" in expose,
            "the image listens on 0.0.0.0:9898 and exposes 9898")

    # Shared libraries: every one the binary links comes with the runtime stage.
    run_cmds = " ".join(" ".join(i["command"]["CmdLine"]) for i in ins(final, "RUN"))
    m = re.search(r"apt-get install ([^&;]*)", run_cmds)
    installed = {w for w in (m.group(1).split() if m else []) if not w.startswith("-")}
    os_release = open("/etc/os-release").read()
    release = re.search(r"VERSION_CODENAME=(\w+)", os_release)
    arg_release = re.search(r"ARG DEBIAN_RELEASE=(\w+)", open(P("Dockerfile")).read())
    if release and arg_release and release.group(1) == arg_release.group(1) and shutil.which("dpkg"):
        ldd = sh(["ldd", args.bin]).stdout
        libs = re.findall(r"=>\s+(\S+)", ldd)
        pkgs = set()
        for lib in libs:
            r = sh(["dpkg", "-S", os.path.realpath(lib)])
            if r.returncode != 0:
                r = sh(["dpkg", "-S", lib])
            pkgs.add(r.stdout.split(":")[0] if r.returncode == 0 else f"?{lib}")
        base = {"libc6", "libgcc-s1"}  # essential in every Debian image
        missing = sorted(pkgs - installed - base)
        c.check(libs and not missing, f"runtime stage provides every linked library: packages {sorted(pkgs)}",
                f"not installed in the runtime stage: {missing}")
    else:
        c.check(False, "this machine is the Dockerfile's Debian release (needed to map libraries to packages)",
                f"machine {release.group(1) if release else '?'}, Dockerfile {arg_release.group(1) if arg_release else '?'}")

    # Build context: exactly the files the build stage copies, minus .dockerignore.
    ignore = [line.strip() for line in open(P(".dockerignore")) if line.strip() and not line.startswith("#")]
    srcs = [s for x in ins(build, "COPY") for s in x["command"]["SourcePaths"]]
    c.check(not [s for s in srcs if s in ignore or s.split("/")[0] in ignore],
            f"no COPY source is excluded by .dockerignore: {srcs}")
    ctx = os.path.join(args.workdir, "build-context")
    shutil.rmtree(ctx, ignore_errors=True)
    os.makedirs(ctx)
    for s in srcs:
        (shutil.copytree if os.path.isdir(P(s)) else shutil.copy2)(P(s), os.path.join(ctx, s))
    r = sh(["cargo", "metadata", "--format-version", "1", "--locked", "--offline"], cwd=ctx)
    c.check(r.returncode == 0, "`cargo metadata --locked` succeeds on the build stage's context (manifest, lock, targets)",
            r.stderr[-500:])
    included = set()
    for root, _, files in os.walk(P("src")):
        for fn in files:
            if fn.endswith(".rs"):
                path = os.path.join(root, fn)
                for inc in re.findall(r'include_(?:str|bytes)!\("([^"]+)"\)', open(path).read()):
                    included.add(os.path.relpath(os.path.normpath(os.path.join(root, inc)), REPO))
    missing = sorted(f for f in included if not os.path.exists(os.path.join(ctx, f)))
    c.check(included and not missing, f"every include_str! file of src/ is in the build context ({len(included)})",
            str(missing))
    cmd = " ".join(" ".join(i["command"]["CmdLine"]) for i in ins(build, "RUN"))
    c.check("cargo build --release --locked --bin leadscore" in cmd, "the build stage builds the release binary, locked")


# --- Prometheus ----------------------------------------------------------------------------------

def prometheus_checks(c, args):
    r = sh(["promtool", "check", "config", P("deploy/prometheus/prometheus.yml")])
    c.check(r.returncode == 0, "promtool check config deploy/prometheus/prometheus.yml", r.stdout + r.stderr)
    rules_file = P("deploy/prometheus/rules/leadscore.yml")
    r = sh(["promtool", "check", "rules", rules_file])
    c.check(r.returncode == 0, "promtool check rules deploy/prometheus/rules/leadscore.yml", r.stdout + r.stderr)
    test_file = P("deploy/prometheus/tests/leadscore_test.yml")
    r = sh(["promtool", "test", "rules", test_file])
    c.check(r.returncode == 0, "promtool test rules: every alert's unit tests pass", r.stdout + r.stderr)

    rules = load_yaml(rules_file)
    alerts = [x for g in rules["groups"] for x in g["rules"] if "alert" in x]
    names = [a["alert"] for a in alerts]
    wanted = {"LeadscoreNoEventsConsumed", "LeadscoreRejectedShareRising", "LeadscoreConsumerLagGrowing",
              "LeadscoreAverageScoreAbnormal", "LeadscoreInstanceDown", "LeadscoreAllInstancesDown",
              "LeadscoreTransitionLatencyHigh", "LeadscoreTransactionsAborting"}
    c.check(set(names) == wanted, f"the alerts: {names}")

    # Each alert has a firing and a quiet case: mutants the unit tests must reject.
    tests = load_yaml(test_file)
    for mutant, expr in (("silenced", "vector(0) > 1"), ("always firing", "vector(1)")):
        mdir = os.path.join(args.workdir, f"mutant-{mutant.replace(' ', '-')}")
        os.makedirs(os.path.join(mdir, "rules"), exist_ok=True)
        os.makedirs(os.path.join(mdir, "tests"), exist_ok=True)
        m = json.loads(json.dumps(rules))
        for g in m["groups"]:
            for x in g["rules"]:
                if "alert" in x:
                    x["expr"] = expr
        with open(os.path.join(mdir, "rules", "leadscore.yml"), "w") as f:
            yaml.safe_dump(m, f)
        with open(os.path.join(mdir, "tests", "leadscore_test.yml"), "w") as f:
            yaml.safe_dump(tests, f)
        r = sh(["promtool", "test", "rules", os.path.join(mdir, "tests", "leadscore_test.yml")])
        out = r.stdout + r.stderr
        caught = {n for n in names if re.search(rf"alertname: {n},", out)}
        c.check(r.returncode != 0 and caught == set(names),
                f"with every alert {mutant}, the unit tests fail for each of the {len(names)} alerts",
                f"not caught: {sorted(set(names) - caught)}")

    readme = open(P("deploy/README.md")).read()
    anchors = {slug(h) for h in re.findall(r"^#+\s+(.+)$", readme, re.M)}
    for a in alerts:
        ann = a.get("annotations", {})
        link = ann.get("runbook_url", "")
        c.check(a.get("labels", {}).get("severity") in ("warning", "critical") and ann.get("summary")
                and ann.get("description") and link.startswith("deploy/README.md#")
                and link.split("#", 1)[1] in anchors,
                f"{a['alert']}: severity, summary, description and a runbook section ({link})")

    known = registered_metrics()
    used = set()
    for g in rules["groups"]:
        for x in g["rules"]:
            used |= {base_metric(n) for n in metric_names(x["expr"])}
    c.check(used and used <= known, f"the rules use only metrics src/metrics.rs registers ({len(used)})",
            str(sorted(used - known)))


# --- Grafana dashboard ---------------------------------------------------------------------------

def dashboard_checks(c, args):
    path = P("deploy/grafana/dashboards/leadscore.json")
    dash = json.load(open(path))
    panels = []

    def walk(ps):
        for p in ps:
            panels.append(p)
            walk(p.get("panels", []))

    walk(dash["panels"])
    ids = [p["id"] for p in panels]
    c.check(len(ids) == len(set(ids)), f"{len(panels)} panels with distinct ids")
    c.check(dash.get("uid") and dash.get("title") and dash.get("schemaVersion", 0) >= 36,
            f"dashboard uid {dash.get('uid')!r}, schemaVersion {dash.get('schemaVersion')}")
    cells = {}
    overlaps = []
    for p in panels:
        g = p["gridPos"]
        if g["x"] + g["w"] > 24:
            overlaps.append(f"{p['title']} is wider than the grid")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    overlaps.append(f"{p['title']} overlaps {cells[(x, y)]}")
                cells[(x, y)] = p["title"]
    c.check(not overlaps, "panels do not overlap", "; ".join(sorted(set(overlaps))[:5]))
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    c.check(variables.get("datasource", {}).get("type") == "datasource"
            and variables["datasource"].get("query") == "prometheus", "a Prometheus data source variable")
    for name in ("model", "instance"):
        v = variables.get(name, {})
        c.check(v.get("type") == "query" and v.get("includeAll") and v.get("multi") and v.get("allValue") == ".*",
                f"variable ${name}: multi-value with All (.*)")
    targets = [(p, t) for p in panels for t in p.get("targets", [])]
    c.check(all(p.get("datasource", {}).get("uid") == "${datasource}" for p, _ in targets),
            "every panel with queries uses the $datasource variable")
    known = registered_metrics()
    used = set()
    for p, t in targets:
        used |= {base_metric(n) for n in metric_names(t["expr"])}
    c.check(used <= known, f"the dashboard uses only metrics src/metrics.rs registers ({len(used)})",
            str(sorted(used - known)))
    for p, t in targets:
        e = t["expr"]
        for sel in re.findall(r"(?:leadscore_[a-z_]+|up)\{[^}]*\}", e):
            if not ('job="leadscore"' in sel and 'instance=~"$instance"' in sel):
                c.check(False, f"panel {p['title']!r}: selector {sel} filters job and $instance")
    kpi = next((t["expr"] for p, t in targets if p["title"] == "Average lead score (KPI)"), "")
    norm = re.sub(r"\s+", " ", re.sub(r"\{[^}]*\}", "", kpi))
    c.check(norm == "sum by (model) (leadscore_score_sum) / sum by (model) (leadscore_tracked_leads)",
            "the KPI panel is sum(leadscore_score_sum) / sum(leadscore_tracked_leads), per model", norm)
    titles = {p["title"] for p in panels}
    for want in ("Average lead score trend", "Score distribution now", "Qualified leads now", "Transitions per minute",
                 "Events per second by type", "Rejected records per second by reason", "Event processing latency",
                 "Transition latency", "Consumer lag", "Instances"):
        c.check(want in titles, f"panel {want!r}")


# --- Kubernetes ----------------------------------------------------------------------------------

def k8s_checks(c, args):
    core = sorted(glob.glob(P("deploy/k8s/*.yaml")))
    core = [f for f in core if os.path.basename(f) != "kustomization.yaml"]
    kz = load_yaml(P("deploy/k8s/kustomization.yaml"))
    c.check(sorted(kz["resources"]) == sorted(os.path.basename(f) for f in core),
            f"kustomization.yaml lists every core manifest: {kz['resources']}")
    kv = shlex.split(args.k8s_validate)
    for version in K8S_VERSIONS:
        r = sh(kv + ["--strict", "-k", version, *core])
        c.check(r.returncode == 0, f"kubernetes-validate --strict (Kubernetes {version}): "
                f"{', '.join(os.path.basename(f) for f in core)}", r.stdout + r.stderr)
    bad = os.path.join(args.workdir, "statefulset.broken.yaml")
    with open(bad, "w") as f:
        f.write(open(P("deploy/k8s/statefulset.yaml")).read().replace("readinessProbe:", "readynessProbe:"))
    r = sh(kv + ["--strict", "-k", K8S_VERSIONS[-1], bad])
    c.check(r.returncode != 0, "kubernetes-validate rejects a copy with a misspelt field")

    extras = [P("deploy/k8s/extras/podmonitor.yaml"), P("deploy/k8s/extras/prometheusrule.yaml")]
    r = sh([args.validate_bin, "crd", *extras])
    c.check(r.returncode == 0, "PodMonitor and PrometheusRule decode strictly into the Prometheus Operator's types",
            r.stderr)
    bad = os.path.join(args.workdir, "podmonitor.broken.yaml")
    with open(bad, "w") as f:
        f.write(open(extras[0]).read().replace("podMetricsEndpoints:", "podMetricEndpoints:"))
    r = sh([args.validate_bin, "crd", bad])
    c.check(r.returncode != 0, "the strict decoder rejects a PodMonitor with a misspelt field", r.stderr)

    objs = {}
    for f in core + extras + [P("deploy/k8s/extras/keda-scaledobject.yaml")]:
        for d in yaml_docs(f):
            objs[(d["kind"], d["metadata"]["name"])] = d
    cm = objs[("ConfigMap", "leadscore")]
    sts = objs[("StatefulSet", "leadscore")]
    pod = sts["spec"]["template"]
    labels = pod["metadata"]["labels"]
    sel_ok = lambda sel: all(labels.get(k) == v for k, v in sel.items())  # noqa: E731
    c.check(cm["data"]["model.toml"] == open(P("examples/model.toml")).read(),
            "the ConfigMap's model.toml is examples/model.toml")
    cfg = tomllib.loads(cm["data"]["leadscore.toml"])
    ctr = pod["spec"]["containers"][0]
    mount = next(m for m in ctr["volumeMounts"] if m["name"] == "config")
    vol = next(v for v in pod["spec"]["volumes"] if v["name"] == "config")
    c.check(vol["configMap"]["name"] == "leadscore" and cfg["model"]["path"] == mount["mountPath"] + "/model.toml"
            and ctr["args"][ctr["args"].index("--config") + 1] == mount["mountPath"] + "/leadscore.toml",
            "the pod reads leadscore.toml and model.toml from the mounted ConfigMap")
    port = int(cfg["http"]["listen"].rsplit(":", 1)[1])
    cport = next(p for p in ctr["ports"] if p["name"] == "http")["containerPort"]
    c.check(cfg["http"]["listen"].startswith("0.0.0.0:") and port == cport, f"listens on 0.0.0.0:{port} = containerPort")
    c.check(sts["spec"]["selector"]["matchLabels"] == {k: labels[k] for k in sts["spec"]["selector"]["matchLabels"]},
            "StatefulSet selector matches its pod labels")
    headless = objs[("Service", sts["spec"]["serviceName"])]
    c.check(headless["spec"].get("clusterIP") == "None", f"serviceName {sts['spec']['serviceName']} is headless")
    for (kind, name), o in objs.items():
        if kind == "Service":
            c.check(sel_ok(o["spec"]["selector"]) and all(p["targetPort"] in ("http", cport) for p in o["spec"]["ports"]),
                    f"Service {name} selects the pods' http port")
    pdb = objs[("PodDisruptionBudget", "leadscore")]
    c.check(sel_ok(pdb["spec"]["selector"]["matchLabels"]) and pdb["spec"].get("maxUnavailable") == 1,
            "PodDisruptionBudget: at most one leadscore pod down")
    c.check(ctr["readinessProbe"]["httpGet"]["path"] == "/readyz" and ctr["livenessProbe"]["httpGet"]["path"] == "/healthz",
            "readiness on /readyz, liveness on /healthz")
    env = {e["name"]: e for e in ctr["env"]}
    order = [e["name"] for e in ctr["env"]]
    tx = env.get("LEADSCORE_KAFKA_TRANSACTIONAL_ID", {}).get("value", "")
    c.check("$(POD_NAME)" in tx and env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            == "metadata.name" and order.index("POD_NAME") < order.index("LEADSCORE_KAFKA_TRANSACTIONAL_ID"),
            f"transactional id from the stable pod name: {tx}")
    adv = env.get("LEADSCORE_HTTP_ADVERTISE", {}).get("value", "")
    c.check(adv == f"http://$(POD_NAME).{headless['metadata']['name']}.$(POD_NAMESPACE).svc:{port}",
            f"advertised URL through the headless Service: {adv}")
    known_env = config_env_vars()
    c.check(all(env_ok(n, known_env) for n in env), "every LEADSCORE_* variable is one src/config.rs knows",
            str([n for n in env if not env_ok(n, known_env)]))
    res = ctr.get("resources", {})
    c.check(res.get("requests", {}).get("memory") and res.get("limits", {}).get("memory")
            and res.get("requests", {}).get("cpu"), f"resources: {res}")
    sc = ctr.get("securityContext", {})
    c.check(pod["spec"]["securityContext"].get("runAsNonRoot") and sc.get("allowPrivilegeEscalation") is False,
            "runs as non-root without privilege escalation")
    c.check(pod["spec"].get("terminationGracePeriodSeconds", 30) > 30,
            "terminationGracePeriodSeconds exceeds run's 30 s graceful shutdown")

    pm = objs[("PodMonitor", "leadscore")]
    ep = pm["spec"]["podMetricsEndpoints"][0]
    relabel = {r.get("targetLabel"): r for r in ep.get("relabelings", [])}
    c.check(sel_ok(pm["spec"]["selector"]["matchLabels"]) and ep["port"] == "http" and ep.get("path", "/metrics") == "/metrics",
            "PodMonitor scrapes the pods' http port at /metrics")
    c.check(relabel.get("job", {}).get("replacement") == "leadscore"
            and relabel.get("instance", {}).get("sourceLabels") == ["__meta_kubernetes_pod_name"],
            "PodMonitor sets job=leadscore (the rules select it) and instance=<pod name>")
    pr = objs[("PrometheusRule", "leadscore")]
    c.check(pr["spec"]["groups"] == load_yaml(P("deploy/prometheus/rules/leadscore.yml"))["groups"],
            "the PrometheusRule's groups are deploy/prometheus/rules/leadscore.yml's")

    so = objs[("ScaledObject", "leadscore")]
    trig = so["spec"]["triggers"][0]
    md = trig["metadata"]
    compose_cfg = json.loads(sh([args.validate_bin, "compose", P("docker-compose.yml")]).stdout)
    c.check(so["apiVersion"] == "keda.sh/v1alpha1" and so["spec"]["scaleTargetRef"] ==
            {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": sts["metadata"]["name"]},
            "KEDA ScaledObject targets the StatefulSet (references only: no KEDA schema here)")
    c.check(trig["type"] == "kafka" and md["topic"] in cfg["kafka"]["input_topics"]
            and md["consumerGroup"] == cfg["kafka"]["group_id"] and md["bootstrapServers"] == cfg["kafka"]["brokers"],
            "KEDA's kafka trigger watches leadscore's group, input topic and brokers")
    init = "\n".join(compose_cfg["services"]["kafka-init"]["command"])
    parts = re.search(rf"--topic {re.escape(md['topic'])} --partitions (\d+)", init)
    c.check(parts and so["spec"]["maxReplicaCount"] <= int(parts.group(1))
            and so["spec"]["minReplicaCount"] >= 1,
            f"KEDA never scales past the input's partitions ({parts.group(1) if parts else '?'})")


if __name__ == "__main__":
    sys.exit(main())
