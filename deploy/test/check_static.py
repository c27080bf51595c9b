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
  against src/config.rs, the memory against the sizing rule. KEDA's ScaledObject is checked for
  its references only.
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
import tomllib

import yaml

sys.path.insert(0, os.path.dirname(__file__))
from common import REPO, Abort, Checks  # noqa: E402

P = lambda *a: os.path.join(REPO, *a)  # noqa: E731
K8S_VERSIONS = ["1.29.0", "1.37.0"]
# `leadscore run --shutdown-timeout-s` default (src/cli.rs): a supervisor must wait longer.
SHUTDOWN_TIMEOUT_S = 30
# Sizing (deploy/README.md, "Resources"; deploy/sizing/memory.py): memory a pod takes to restore
# its leads and keeps after, per lead and fixed, the limit's headroom over the request, and the
# tracked leads the Kubernetes manifest is sized for.
RESTORED_KIB_PER_LEAD = 1.0
OVERHEAD_MIB = 64
LIMIT_OVER_REQUEST = 4 / 3
PLANNED_LEADS = 1_000_000
ALERTS = {"LeadscoreNoEventsConsumed", "LeadscoreRejectedShareRising", "LeadscoreConsumerLagGrowing",
          "LeadscoreAverageScoreAbnormal", "LeadscoreInstanceDown", "LeadscoreAllInstancesDown",
          "LeadscoreTransitionLatencyHigh", "LeadscoreTransactionsAborting"}


# --- helpers -------------------------------------------------------------------------------------

def sh(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, **kw)


def read(path):
    with open(path) as f:
        return f.read()


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def load_yaml(path):
    return yaml.safe_load(read(path))


def yaml_docs(path):
    return [d for d in yaml.safe_load_all(read(path)) if d]


def config_env_vars():
    """The LEADSCORE_* variables src/config.rs accepts (ENV_VARS and RESERVED_ENV_VARS)."""
    src = read(P("src/config.rs"))
    names = set()
    for const in ("ENV_VARS", "RESERVED_ENV_VARS"):
        m = re.search(rf"pub const {const}: &\[&str\] = &\[(.*?)\];", src, re.S)
        names |= set(re.findall(r'"(LEADSCORE_[A-Z_]+)"', m.group(1)))
    return names


def env_ok(name, known):
    return name in known or name.startswith("LEADSCORE_LIBRDKAFKA_") or not name.startswith("LEADSCORE_")


def registered_metrics():
    return set(re.findall(r'"(leadscore_[a-z_]+)"', read(P("src/metrics.rs"))))


def metric_names(expr):
    return set(re.findall(r"(?<![A-Za-z0-9_:])(leadscore_[a-z_]+)", expr))


def base_metric(name):
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)].endswith("_seconds"):
            return name[: -len(suffix)]
    return name


def slug(heading):
    """GitHub's anchor of a Markdown heading."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


def seconds(duration):
    """'40s', '1m30s' or a number of seconds -> seconds."""
    if isinstance(duration, (int, float)):
        return float(duration)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration))


def quantity_mib(q):
    """A Kubernetes memory quantity ('640Mi', '2Gi') in MiB."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi)", q)
    return float(m.group(1)) * {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}[m.group(2)]


def rejects(argv, what, c, expect=None):
    """The validator `argv` must fail (and name `expect` in its error, if given)."""
    r = sh(argv)
    out = r.stdout + r.stderr
    return c.check(r.returncode != 0 and (expect is None or expect in out), what, out[-400:])


# --- docker-compose.yml ------------------------------------------------------------------------

def load_compose(c, args):
    r = sh([args.validate_bin, "compose", P("docker-compose.yml")])
    c.must(r.returncode == 0, "docker-compose.yml loads with compose-go (Compose Specification schema, "
           "interpolation, merge keys, references)", r.stderr)
    src = read(P("docker-compose.yml"))
    broken = os.path.join(args.workdir, "docker-compose.broken.yml")
    write(broken, src.replace("    depends_on:\n      kafka:", "    depends_on:\n      kafka-missing:", 1))
    rejects([args.validate_bin, "compose", broken], "compose-go rejects a copy that depends on an undefined service",
            c, "kafka-missing")
    write(broken, src.replace("stop_grace_period:", "stop_grace_periods:", 1))
    rejects([args.validate_bin, "compose", broken], "compose-go rejects a copy with a misspelt key", c)
    return json.loads(r.stdout)["services"]


def check_images(c, svcs):
    want = {"kafka", "kafka-init", "leadscore-0", "leadscore-1", "generator", "prometheus", "grafana"}
    c.check(set(svcs) == want, f"services: {sorted(svcs)}", f"expected {sorted(want)}")
    for name, s in svcs.items():
        img = s.get("image", "")
        c.check(img and not img.endswith(":latest") and ":" in img, f"{name}: image {img} has a pinned tag")


def check_kafka(c, svcs):
    """KRaft single node; returns the listener the other containers use."""
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
    return internal


def parse_create(line):
    """One `create --topic T --partitions N --config k=v ...` line -> (name, {partitions, config})."""
    a = shlex.split(line.strip())[1:]
    name, t = None, {"partitions": None, "config": {}}
    for i, x in enumerate(a):
        if x == "--topic":
            name = a[i + 1]
        elif x == "--partitions":
            t["partitions"] = int(a[i + 1])
        elif x == "--config":
            k, v = a[i + 1].split("=", 1)
            t["config"][k] = v
    return name, t


def kafka_init_topics(c, svcs):
    script = "\n".join(svcs["kafka-init"]["command"])
    topics = dict(parse_create(line) for line in script.splitlines() if line.strip().startswith("create --topic"))
    c.check(topics, f"kafka-init creates {sorted(topics)}")
    c.check(svcs["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
            and "healthcheck" in svcs["kafka"], "kafka-init waits for the broker's health check")
    return topics


def compose_config():
    with open(P("deploy/compose/leadscore.toml"), "rb") as f:
        return tomllib.load(f)


def check_replica(c, name, s, port, known_env):
    cmd = s["command"]
    conf = cmd[cmd.index("--config") + 1]
    mounts = {v["target"]: v["source"] for v in s.get("volumes", [])}
    c.check(os.path.realpath(mounts.get(conf, "")) == P("deploy/compose/leadscore.toml"),
            f"{name}: --config {conf} is deploy/compose/leadscore.toml")
    env = s.get("environment", {})
    c.check(all(env_ok(e, known_env) for e in env), f"{name}: every LEADSCORE_* variable is one src/config.rs knows",
            str([e for e in env if not env_ok(e, known_env)]))
    c.check(s.get("hostname") == name and env.get("LEADSCORE_HTTP_ADVERTISE") == f"http://{name}:{port}",
            f"{name}: hostname and advertised URL http://{name}:{port}")
    c.check(s["depends_on"].get("kafka-init", {}).get("condition") == "service_completed_successfully",
            f"{name}: starts after kafka-init created the topics")
    c.check(any(p["target"] == port for p in s.get("ports", [])), f"{name}: publishes container port {port}")
    c.check(s.get("build", {}).get("dockerfile") == "Dockerfile", f"{name}: built from the Dockerfile")
    grace = seconds(s.get("stop_grace_period", "10s"))
    c.check(grace > SHUTDOWN_TIMEOUT_S, f"{name}: stop_grace_period {grace:.0f} s exceeds run's "
            f"{SHUTDOWN_TIMEOUT_S} s graceful shutdown")
    return env.get("LEADSCORE_KAFKA_TRANSACTIONAL_ID")


def check_replicas(c, svcs, internal):
    """The two leadscore replicas; returns (their names, the HTTP port, the config)."""
    cfg = compose_config()
    k = cfg["kafka"]
    c.check(k["brokers"] == internal, f"leadscore.toml brokers {k['brokers']} = kafka's advertised listener")
    port = int(cfg["http"]["listen"].rsplit(":", 1)[1])
    c.check(cfg["http"]["listen"].startswith("0.0.0.0:"), "leadscore listens on all interfaces of its container")
    runs = sorted(n for n, s in svcs.items() if (s.get("command") or [None])[0] == "run")
    c.check(runs == ["leadscore-0", "leadscore-1"], f"two leadscore replicas: {runs}")
    known_env = config_env_vars()
    tx_ids = [check_replica(c, n, svcs[n], port, known_env) for n in runs]
    c.check(len(set(tx_ids)) == len(runs) and None not in tx_ids, f"transactional ids unique and set: {tx_ids}")
    return runs, port, cfg


def check_topics(c, topics, cfg, replicas):
    k = cfg["kafka"]
    repart = k.get("repartition_topic", f"{k.get('group_id', 'leadscore')}-repartition")
    inputs = k["input_topics"]
    n_in = {topics.get(t, {}).get("partitions") for t in inputs}
    c.check(all(t in topics for t in inputs) and len(n_in) == 1,
            f"input topics {inputs} created with one partition count {n_in}")
    n_in = n_in.pop() if len(n_in) == 1 else None
    c.check(n_in and n_in >= replicas, f"the input's {n_in} partitions give each of the {replicas} replicas work")
    for key in ("output_topic", "dead_letter_topic"):
        c.check(k[key] in topics, f"{key} {k[key]} created")
    st = topics.get(k["state_topic"], {})
    c.check(st.get("partitions") == n_in and st.get("config", {}).get("cleanup.policy") == "compact",
            f"state topic {k['state_topic']}: compacted, {n_in} partitions like the input")
    rp = topics.get(repart, {})
    c.check(rp.get("partitions") == n_in and rp.get("config", {}).get("cleanup.policy") == "delete",
            f"repartition topic {repart}: {n_in} partitions like the input")


def check_generator(c, svcs, cfg):
    g = svcs["generator"]
    cmd = g["command"]
    c.check(cmd[0] == "generate" and cmd[cmd.index("--brokers") + 1] == cfg["kafka"]["brokers"]
            and cmd[cmd.index("--topic") + 1] in cfg["kafka"]["input_topics"],
            "generator produces to leadscore's input on the same broker")
    c.check(g.get("healthcheck", {}).get("disable") is True, "generator: the image's HTTP health check is disabled")


def check_prometheus_service(c, svcs, runs, port):
    p = svcs["prometheus"]
    mounts = {v["target"]: v["source"] for v in p.get("volumes", [])}
    conf = next(a.split("=", 1)[1] for a in p["command"] if a.startswith("--config.file="))
    host_conf = next((os.path.join(src, os.path.relpath(conf, tgt)) for tgt, src in mounts.items()
                      if conf.startswith(tgt.rstrip("/") + "/")), None)
    c.check(host_conf and os.path.realpath(host_conf) == P("deploy/prometheus/prometheus.yml"),
            f"prometheus: --config.file {conf} is deploy/prometheus/prometheus.yml")
    prom = load_yaml(P("deploy/prometheus/prometheus.yml"))
    job = next((j for j in prom["scrape_configs"] if j["job_name"] == "leadscore"), {})
    targets = sorted(t for sc in job.get("static_configs", []) for t in sc["targets"])
    c.check(targets == sorted(f"{n}:{port}" for n in runs), f"prometheus scrapes {targets} (every replica)")
    c.check(job and job.get("metrics_path", "/metrics") == "/metrics", "prometheus scrapes /metrics")
    rule_files = [f for pat in prom.get("rule_files", []) for f in glob.glob(P("deploy/prometheus", pat))]
    c.check(P("deploy/prometheus/rules/leadscore.yml") in rule_files, "prometheus loads rules/leadscore.yml")


def check_grafana_service(c, svcs):
    gr, p = svcs["grafana"], svcs["prometheus"]
    gmounts = {v["target"]: os.path.realpath(v["source"]) for v in gr.get("volumes", [])}
    c.check(gmounts.get("/etc/grafana/provisioning") == P("deploy/grafana/provisioning"),
            "grafana: provisioning from deploy/grafana/provisioning")
    ds = load_yaml(P("deploy/grafana/provisioning/datasources/prometheus.yml"))["datasources"]
    prom_url = next(d["url"] for d in ds if d["type"] == "prometheus")
    host = re.match(r"https?://([^:/]+):(\d+)", prom_url)
    c.check(host and host.group(1) in svcs and host.group(2) == "9090"
            and any(x["target"] == 9090 for x in p.get("ports", [])),
            f"grafana's data source {prom_url} is the prometheus service")
    dash_dir = load_yaml(P("deploy/grafana/provisioning/dashboards/leadscore.yml"))["providers"][0]["options"]["path"]
    c.check(gmounts.get(dash_dir) == P("deploy/grafana/dashboards"),
            f"grafana: dashboards provider path {dash_dir} is deploy/grafana/dashboards")
    home = gr["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH", "")
    c.check(home.startswith(dash_dir + "/") and os.path.exists(P("deploy/grafana/dashboards", os.path.relpath(home, dash_dir))),
            f"grafana's home dashboard {home} is a provisioned file")
    c.check(gr["environment"].get("GF_AUTH_ANONYMOUS_ENABLED") == "true", "grafana: viewable without a login")


def compose_checks(c, args):
    svcs = load_compose(c, args)
    check_images(c, svcs)
    internal = check_kafka(c, svcs)
    topics = kafka_init_topics(c, svcs)
    runs, port, cfg = check_replicas(c, svcs, internal)
    check_topics(c, topics, cfg, len(runs))
    check_generator(c, svcs, cfg)
    check_prometheus_service(c, svcs, runs, port)
    check_grafana_service(c, svcs)
    host_ports = [p.get("published") for s in svcs.values() for p in s.get("ports", [])]
    c.check(len(host_ports) == len(set(host_ports)), f"published host ports are distinct: {host_ports}")


# --- Dockerfile ----------------------------------------------------------------------------------

def instructions(stage, name):
    return [i for i in stage["instructions"] if i["name"] == name]


def load_dockerfile(c, args):
    r = sh([args.validate_bin, "dockerfile", P("Dockerfile")])
    c.must(r.returncode == 0, "the Dockerfile parses with BuildKit's parser", r.stderr)
    doc = json.loads(r.stdout)
    c.check(not doc["warnings"], "BuildKit's build checks raise no warning", str(doc["warnings"]))
    bad = write(os.path.join(args.workdir, "Dockerfile.broken"), read(P("Dockerfile")).replace(" AS build", " as Build", 1))
    r2 = sh([args.validate_bin, "dockerfile", bad])
    c.check(r2.returncode == 0 and json.loads(r2.stdout)["warnings"],
            "the linter flags a copy with a mis-cased stage", r2.stdout[-300:])
    bad = write(os.path.join(args.workdir, "Dockerfile.broken"), read(P("Dockerfile")).replace("COPY --from=build", "COPY --frum=build", 1))
    rejects([args.validate_bin, "dockerfile", bad], "BuildKit's parser rejects a copy with an unknown COPY flag", c)
    stages = doc["stages"]
    c.check(len(stages) >= 2, f"multi-stage: {[s['name'] for s in stages]}")
    return stages[0], stages[-1]


def check_runtime_stage(c, build, final):
    c.check(re.fullmatch(r"debian:\$\{DEBIAN_RELEASE\}-slim|debian:[a-z]+-slim", final["base"]),
            f"runtime base {final['base']} is Debian slim")
    c.check("${DEBIAN_RELEASE}" in build["base"] and "${DEBIAN_RELEASE}" in final["base"],
            "build and runtime stages use one Debian release (glibc and OpenSSL match)")
    users = instructions(final, "USER")
    user = users[-1]["command"]["User"] if users else ""
    c.check(user and user.split(":")[0] not in ("0", "root"), f"runs as a non-root user ({user})")
    hc = instructions(final, "HEALTHCHECK")
    c.check(hc and "/healthz" in " ".join(hc[-1]["command"]["Health"]["Test"]), "HEALTHCHECK on /healthz")
    ep = instructions(final, "ENTRYPOINT")
    c.check(ep and ep[-1]["command"]["CmdLine"] == ["/usr/local/bin/leadscore"], "ENTRYPOINT is the binary")
    copies = instructions(final, "COPY")
    c.check(any(x["command"]["From"] == build["name"] and x["command"]["DestPath"] == "/usr/local/bin/leadscore"
                for x in copies), "the runtime stage takes only the binary from the build stage")
    workdir = (instructions(final, "WORKDIR") or [{"command": {"Path": "/"}}])[-1]["command"]["Path"]
    model_dest = [x["command"]["DestPath"] for x in copies if x["command"]["SourcePaths"] == ["examples/model.toml"]]
    c.check(model_dest and os.path.join(workdir, "examples/model.toml") in model_dest,
            f"examples/model.toml is at {model_dest}, where the default model path (relative to {workdir}) finds it")
    compose_model = compose_config()["model"]["path"]
    c.check(compose_model in model_dest, f"the compose config's model {compose_model} is in the image")
    envs = {e["Key"]: e["Value"] for i in instructions(final, "ENV") for e in i["command"]["Env"]}
    expose = [p for i in instructions(final, "EXPOSE") for p in i["command"]["Ports"]]
    c.check(envs.get("LEADSCORE_HTTP_LISTEN", "").endswith(":9898") and "9898" in expose,
            "the image listens on 0.0.0.0:9898 and exposes 9898")


def linked_packages(binary):
    """The Debian packages of the shared libraries `ldd` lists for the binary."""
    libs = re.findall(r"=>\s+(\S+)", sh(["ldd", binary]).stdout)
    pkgs = set()
    for lib in libs:
        r = sh(["dpkg", "-S", os.path.realpath(lib)])
        if r.returncode != 0:
            r = sh(["dpkg", "-S", lib])
        pkgs.add(r.stdout.split(":")[0] if r.returncode == 0 else f"?{lib}")
    return libs, pkgs


def check_runtime_libraries(c, args, final):
    """Every library the binary links comes with the runtime stage."""
    run_cmds = " ".join(" ".join(i["command"]["CmdLine"]) for i in instructions(final, "RUN"))
    m = re.search(r"apt-get install ([^&;]*)", run_cmds)
    installed = {w for w in (m.group(1).split() if m else []) if not w.startswith("-")}
    release = re.search(r"VERSION_CODENAME=(\w+)", read("/etc/os-release"))
    arg_release = re.search(r"ARG DEBIAN_RELEASE=(\w+)", read(P("Dockerfile")))
    if not (release and arg_release and release.group(1) == arg_release.group(1) and shutil.which("dpkg")):
        c.check(False, "this machine is the Dockerfile's Debian release (needed to map libraries to packages)",
                f"machine {release.group(1) if release else '?'}, Dockerfile {arg_release.group(1) if arg_release else '?'}")
        return
    libs, pkgs = linked_packages(args.bin)
    missing = sorted(pkgs - installed - {"libc6", "libgcc-s1"})  # those two are in every Debian image
    c.check(libs and not missing, f"runtime stage provides every linked library: packages {sorted(pkgs)}",
            f"not installed in the runtime stage: {missing}")


def check_build_context(c, args, build):
    """The build context (the build stage's COPY sources, minus .dockerignore) builds the crate."""
    ignore = [line.strip() for line in open(P(".dockerignore")) if line.strip() and not line.startswith("#")]
    srcs = [s for x in instructions(build, "COPY") for s in x["command"]["SourcePaths"]]
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
        for fn in (f for f in files if f.endswith(".rs")):
            for inc in re.findall(r'include_(?:str|bytes)!\("([^"]+)"\)', read(os.path.join(root, fn))):
                included.add(os.path.relpath(os.path.normpath(os.path.join(root, inc)), REPO))
    missing = sorted(f for f in included if not os.path.exists(os.path.join(ctx, f)))
    c.check(included and not missing, f"every include_str! file of src/ is in the build context ({len(included)})",
            str(missing))
    cmd = " ".join(" ".join(i["command"]["CmdLine"]) for i in instructions(build, "RUN"))
    c.check("cargo build --release --locked --bin leadscore" in cmd, "the build stage builds the release binary, locked")
    c.check(re.search(r"strip --strip-debug /out/leadscore", cmd), "the image's binary has no debug info (symbols kept)")


def dockerfile_checks(c, args):
    build, final = load_dockerfile(c, args)
    check_runtime_stage(c, build, final)
    check_runtime_libraries(c, args, final)
    check_build_context(c, args, build)


# --- Prometheus ----------------------------------------------------------------------------------

def check_promtool(c, args):
    """promtool's three checks pass, and reject broken copies."""
    config, rules_file = P("deploy/prometheus/prometheus.yml"), P("deploy/prometheus/rules/leadscore.yml")
    for argv, what in ((["check", "config", config], "promtool check config deploy/prometheus/prometheus.yml"),
                       (["check", "rules", rules_file], "promtool check rules deploy/prometheus/rules/leadscore.yml"),
                       (["test", "rules", P("deploy/prometheus/tests/leadscore_test.yml")],
                        "promtool test rules: every alert's unit tests pass")):
        r = sh(["promtool", *argv])
        c.check(r.returncode == 0, what, r.stdout + r.stderr)
    bad = write(os.path.join(args.workdir, "prometheus.broken.yml"),
                read(config).replace("scrape_interval:", "scrape_intervall:", 1))
    rejects(["promtool", "check", "config", bad], "promtool check config rejects a misspelt key", c)
    bad = write(os.path.join(args.workdir, "rules.broken.yml"),
                read(rules_file).replace("== 0\n", "== = 0\n", 1))
    rejects(["promtool", "check", "rules", bad], "promtool check rules rejects a broken expression", c)


def check_mutants(c, args, rules, names):
    """Each alert has a firing and a quiet case: mutants the unit tests must reject."""
    tests = load_yaml(P("deploy/prometheus/tests/leadscore_test.yml"))
    for mutant, expr in (("silenced", "vector(0) > 1"), ("always firing", "vector(1)")):
        mdir = os.path.join(args.workdir, f"mutant-{mutant.replace(' ', '-')}")
        os.makedirs(os.path.join(mdir, "rules"), exist_ok=True)
        os.makedirs(os.path.join(mdir, "tests"), exist_ok=True)
        m = json.loads(json.dumps(rules))
        for x in (x for g in m["groups"] for x in g["rules"] if "alert" in x):
            x["expr"] = expr
        write(os.path.join(mdir, "rules", "leadscore.yml"), yaml.safe_dump(m))
        write(os.path.join(mdir, "tests", "leadscore_test.yml"), yaml.safe_dump(tests))
        r = sh(["promtool", "test", "rules", os.path.join(mdir, "tests", "leadscore_test.yml")])
        caught = {n for n in names if re.search(rf"alertname: {n},", r.stdout + r.stderr)}
        c.check(r.returncode != 0 and caught == set(names),
                f"with every alert {mutant}, the unit tests fail for each of the {len(names)} alerts",
                f"not caught: {sorted(set(names) - caught)}")


def run_rule_tests(args, name, rules):
    """promtool test rules with the repository's unit tests on `rules`; returns the result."""
    mdir = os.path.join(args.workdir, f"mutant-{name}")
    os.makedirs(os.path.join(mdir, "rules"), exist_ok=True)
    os.makedirs(os.path.join(mdir, "tests"), exist_ok=True)
    write(os.path.join(mdir, "rules", "leadscore.yml"), yaml.safe_dump(rules))
    write(os.path.join(mdir, "tests", "leadscore_test.yml"), yaml.safe_dump(load_yaml(P("deploy/prometheus/tests/leadscore_test.yml"))))
    return sh(["promtool", "test", "rules", os.path.join(mdir, "tests", "leadscore_test.yml")])


def check_lag_counts_every_guarantee(c, args, rules):
    """The lag recording rule counts exactly_once instances too: a copy that counts at_least_once
    instances only (the guard the rule had while the service's lag was wrong under exactly_once)
    fails the unit tests."""
    m = json.loads(json.dumps(rules))
    lag = [x for g in m["groups"] for x in g["rules"] if x.get("record") == "job:leadscore_consumer_lag_records:sum"]
    sel = 'leadscore_consumer_lag_records{job="leadscore"}'
    if not c.check(len(lag) == 1 and sel in lag[0]["expr"], "the lag recording rule reads " + sel, str(lag)):
        return
    c.check("mode=" not in lag[0]["expr"], "the lag recording rule counts every instance, whatever its mode",
            lag[0]["expr"])
    lag[0]["expr"] = lag[0]["expr"].replace(
        sel, sel + ' and on (instance) leadscore_commit_seconds_count{job="leadscore",mode="at_least_once"}')
    r = run_rule_tests(args, "lag-at-least-once-only", m)
    out = r.stdout + r.stderr
    c.check(r.returncode != 0 and "exactly_once" in out,
            "with the lag counting at_least_once instances only, the unit tests fail (exactly_once cases)", out[-600:])


def check_alert_metadata(c, alerts):
    anchors = {slug(h) for h in re.findall(r"^#+\s+(.+)$", read(P("deploy/README.md")), re.M)}
    for a in alerts:
        ann = a.get("annotations", {})
        link = ann.get("runbook_url", "")
        c.check(a.get("labels", {}).get("severity") in ("warning", "critical") and ann.get("summary")
                and ann.get("description") and link.startswith("deploy/README.md#")
                and link.split("#", 1)[1] in anchors,
                f"{a['alert']}: severity, summary, description and a runbook section ({link})")
        c.check(seconds(a.get("for", "0s")) >= 120, f"{a['alert']}: for: {a.get('for')} (at least 2 minutes: no "
                "page on a single bad scrape or evaluation)")


def prometheus_checks(c, args):
    check_promtool(c, args)
    rules = load_yaml(P("deploy/prometheus/rules/leadscore.yml"))
    alerts = [x for g in rules["groups"] for x in g["rules"] if "alert" in x]
    names = [a["alert"] for a in alerts]
    c.check(set(names) == ALERTS, f"the alerts: {names}")
    check_mutants(c, args, rules, names)
    check_lag_counts_every_guarantee(c, args, rules)
    check_alert_metadata(c, alerts)
    used = {base_metric(n) for g in rules["groups"] for x in g["rules"] for n in metric_names(x["expr"])}
    known = registered_metrics()
    c.check(used and used <= known, f"the rules use only metrics src/metrics.rs registers ({len(used)})",
            str(sorted(used - known)))


# --- Grafana dashboard ---------------------------------------------------------------------------

def all_panels(dash):
    out = []

    def walk(ps):
        for p in ps:
            out.append(p)
            walk(p.get("panels", []))

    walk(dash["panels"])
    return out


def layout_problems(panels):
    cells, problems = {}, []
    for p in panels:
        g = p["gridPos"]
        if g["x"] + g["w"] > 24:
            problems.append(f"{p['title']} is wider than the grid")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    problems.append(f"{p['title']} overlaps {cells[(x, y)]}")
                cells[(x, y)] = p["title"]
    return sorted(set(problems))


def check_dashboard_structure(c, dash, panels):
    ids = [p["id"] for p in panels]
    c.check(len(ids) == len(set(ids)), f"{len(panels)} panels with distinct ids")
    c.check(dash.get("uid") and dash.get("title") and dash.get("schemaVersion", 0) >= 36,
            f"dashboard uid {dash.get('uid')!r}, schemaVersion {dash.get('schemaVersion')}")
    problems = layout_problems(panels)
    c.check(not problems, "panels do not overlap", "; ".join(problems[:5]))
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    c.check(variables.get("datasource", {}).get("type") == "datasource"
            and variables["datasource"].get("query") == "prometheus", "a Prometheus data source variable")
    for name in ("model", "instance"):
        v = variables.get(name, {})
        c.check(v.get("type") == "query" and v.get("includeAll") and v.get("multi") and v.get("allValue") == ".*",
                f"variable ${name}: multi-value with All (.*)")
    titles = {p["title"] for p in panels}
    for want in ("Average lead score trend", "Score distribution now", "Qualified leads now", "Transitions per minute",
                 "Events per second by type", "Rejected records per second by reason", "Event processing latency",
                 "Transition latency", "Consumer lag", "Instances"):
        c.check(want in titles, f"panel {want!r}")


def check_dashboard_queries(c, panels):
    targets = [(p, t) for p in panels for t in p.get("targets", [])]
    c.check(all(p.get("datasource", {}).get("uid") == "${datasource}" for p, _ in targets),
            "every panel with queries uses the $datasource variable")
    known = registered_metrics()
    used = {base_metric(n) for _, t in targets for n in metric_names(t["expr"])}
    c.check(used <= known, f"the dashboard uses only metrics src/metrics.rs registers ({len(used)})",
            str(sorted(used - known)))
    unfiltered = [f"{p['title']}: {sel}" for p, t in targets
                  for sel in re.findall(r"(?:leadscore_[a-z_]+|up)\{[^}]*\}", t["expr"])
                  if not ('job="leadscore"' in sel and 'instance=~"$instance"' in sel)]
    c.check(not unfiltered, "every selector filters job=\"leadscore\" and $instance", "; ".join(unfiltered))
    kpi = next((t["expr"] for p, t in targets if p["title"] == "Average lead score (KPI)"), "")
    norm = re.sub(r"\s+", " ", re.sub(r"\{[^}]*\}", "", kpi))
    c.check(norm == "sum by (model) (leadscore_score_sum) / sum by (model) (leadscore_tracked_leads)",
            "the KPI panel is sum(leadscore_score_sum) / sum(leadscore_tracked_leads), per model", norm)


def dashboard_checks(c, args):
    dash = json.loads(read(P("deploy/grafana/dashboards/leadscore.json")))
    panels = all_panels(dash)
    check_dashboard_structure(c, dash, panels)
    check_dashboard_queries(c, panels)


# --- Kubernetes ----------------------------------------------------------------------------------

def core_manifests():
    return [f for f in sorted(glob.glob(P("deploy/k8s/*.yaml"))) if os.path.basename(f) != "kustomization.yaml"]


def check_schemas(c, args):
    """kubernetes-validate on the core manifests, the Prometheus Operator's types on the extras,
    and both reject broken copies."""
    core = core_manifests()
    kz = load_yaml(P("deploy/k8s/kustomization.yaml"))
    c.check(sorted(kz["resources"]) == sorted(os.path.basename(f) for f in core),
            f"kustomization.yaml lists every core manifest: {kz['resources']}")
    kv = shlex.split(args.k8s_validate)
    for version in K8S_VERSIONS:
        r = sh(kv + ["--strict", "-k", version, *core])
        c.check(r.returncode == 0, f"kubernetes-validate --strict (Kubernetes {version}): "
                f"{', '.join(os.path.basename(f) for f in core)}", r.stdout + r.stderr)
    bad = write(os.path.join(args.workdir, "statefulset.broken.yaml"),
                read(P("deploy/k8s/statefulset.yaml")).replace("readinessProbe:", "readynessProbe:"))
    rejects(kv + ["--strict", "-k", K8S_VERSIONS[-1], bad], "kubernetes-validate rejects a copy with a misspelt field", c)
    bad = write(os.path.join(args.workdir, "pdb.broken.yaml"),
                read(P("deploy/k8s/pdb.yaml")).replace("maxUnavailable: 1", "maxUnavailable: [1]"))
    rejects(kv + ["--strict", "-k", K8S_VERSIONS[-1], bad], "kubernetes-validate rejects a copy with a wrong type", c)
    extras = [P("deploy/k8s/extras/podmonitor.yaml"), P("deploy/k8s/extras/prometheusrule.yaml")]
    r = sh([args.validate_bin, "crd", *extras])
    c.check(r.returncode == 0, "PodMonitor and PrometheusRule decode strictly into the Prometheus Operator's types",
            r.stderr)
    bad = write(os.path.join(args.workdir, "podmonitor.broken.yaml"),
                read(extras[0]).replace("podMetricsEndpoints:", "podMetricEndpoints:"))
    rejects([args.validate_bin, "crd", bad], "the strict decoder rejects a PodMonitor with a misspelt field", c)


def k8s_objects():
    objs = {}
    for f in core_manifests() + glob.glob(P("deploy/k8s/extras/*.yaml")):
        for d in yaml_docs(f):
            objs[(d["kind"], d["metadata"]["name"])] = d
    return objs


def check_config_mount(c, cm, ctr, pod):
    c.check(cm["data"]["model.toml"] == read(P("examples/model.toml")), "the ConfigMap's model.toml is examples/model.toml")
    cfg = tomllib.loads(cm["data"]["leadscore.toml"])
    mount = next(m for m in ctr["volumeMounts"] if m["name"] == "config")
    vol = next(v for v in pod["spec"]["volumes"] if v["name"] == "config")
    c.check(vol["configMap"]["name"] == "leadscore" and cfg["model"]["path"] == mount["mountPath"] + "/model.toml"
            and ctr["args"][ctr["args"].index("--config") + 1] == mount["mountPath"] + "/leadscore.toml",
            "the pod reads leadscore.toml and model.toml from the mounted ConfigMap")
    return cfg


def check_services(c, objs, sts, labels, cport):
    headless = objs[("Service", sts["spec"]["serviceName"])]
    c.check(headless["spec"].get("clusterIP") == "None" and headless["spec"].get("publishNotReadyAddresses"),
            f"serviceName {sts['spec']['serviceName']} is headless and lists restoring (not ready) pods")
    for (kind, name), o in objs.items():
        if kind == "Service":
            c.check(all(labels.get(k) == v for k, v in o["spec"]["selector"].items())
                    and all(p["targetPort"] in ("http", cport) for p in o["spec"]["ports"]),
                    f"Service {name} selects the pods' http port")
    pdb = objs[("PodDisruptionBudget", "leadscore")]
    c.check(all(labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())
            and pdb["spec"].get("maxUnavailable") == 1, "PodDisruptionBudget: at most one leadscore pod down")
    return headless


def check_identity(c, ctr, headless, port):
    """The pod name becomes the transactional id and the advertised URL."""
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


def check_pod_runtime(c, sts, pod, ctr):
    """Probes, grace period, security, and memory sized by the rule of deploy/README.md."""
    c.check(ctr["readinessProbe"]["httpGet"]["path"] == "/readyz" and ctr["livenessProbe"]["httpGet"]["path"] == "/healthz",
            "readiness on /readyz, liveness on /healthz")
    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
    c.check(grace > SHUTDOWN_TIMEOUT_S, f"terminationGracePeriodSeconds {grace} exceeds run's {SHUTDOWN_TIMEOUT_S} s "
            "graceful shutdown")
    sc = ctr.get("securityContext", {})
    c.check(pod["spec"]["securityContext"].get("runAsNonRoot") and sc.get("allowPrivilegeEscalation") is False,
            "runs as non-root without privilege escalation")
    res = ctr.get("resources", {})
    problem, what = memory_problem(sts)
    c.check(not problem, what, problem)
    c.check(res.get("requests", {}).get("cpu"), "a CPU request")
    c.check("cpu" not in res.get("limits", {}), "no CPU limit (a throttled pipeline thread only adds lag)")


def memory_problem(sts):
    """Why the StatefulSet's memory does not follow the sizing rule (None if it does), and what the
    check says."""
    ctr = sts["spec"]["template"]["spec"]["containers"][0]
    res = ctr.get("resources", {})
    replicas = sts["spec"]["replicas"]
    need = OVERHEAD_MIB + RESTORED_KIB_PER_LEAD * PLANNED_LEADS / max(1, replicas - 1) / 1024
    try:
        req, lim = quantity_mib(res["requests"]["memory"]), quantity_mib(res["limits"]["memory"])
    except (KeyError, TypeError, AttributeError) as e:
        return f"no memory request and limit: {e!r}", "memory request and limit set"
    what = (f"memory request {req:.0f} MiB / limit {lim:.0f} MiB cover {PLANNED_LEADS:,} restored leads on "
            f"{replicas - 1} pod(s) ({need:.0f} MiB needed: {OVERHEAD_MIB} MiB + {RESTORED_KIB_PER_LEAD} KiB per "
            f"lead; limit at least {LIMIT_OVER_REQUEST:.2f} x that)")
    if req < need:
        return f"request {req:.0f} MiB < {need:.0f} MiB", what
    if lim < LIMIT_OVER_REQUEST * need - 0.5:
        return f"limit {lim:.0f} MiB < {LIMIT_OVER_REQUEST * need:.0f} MiB", what
    return None, what


def documented_rule(doc):
    """(MiB, KiB per lead, limit over request) of the sizing rule deploy/README.md states, or None."""
    m = re.search(r"memory request = (\d+) MiB \+ (\d+(?:\.\d+)?) KiB x total leads / \(replicas - 1\) "
                  r"memory limit = request x (\d+)/(\d+)", re.sub(r"\s+", " ", doc))
    return m and (int(m.group(1)), float(m.group(2)), int(m.group(3)) / int(m.group(4)))


def check_sizing_rule(c, objs):
    """The rule as deploy/README.md states it is the one checked, and the check rejects a
    StatefulSet below it."""
    doc = read(P("deploy/README.md"))
    rule = documented_rule(doc)
    c.check(rule == (OVERHEAD_MIB, RESTORED_KIB_PER_LEAD, LIMIT_OVER_REQUEST),
            f"deploy/README.md's sizing rule is the checked one ({OVERHEAD_MIB} MiB + {RESTORED_KIB_PER_LEAD:g} KiB "
            f"per lead, limit x {LIMIT_OVER_REQUEST:.2f})", f"deploy/README.md says {rule}")
    stale = doc.replace(f"+ {RESTORED_KIB_PER_LEAD:g} KiB x total leads", f"+ {RESTORED_KIB_PER_LEAD + 0.5:g} KiB x total leads")
    c.check(documented_rule(stale) != rule, "control: that check rejects a README with another figure per lead")
    sts = objs[("StatefulSet", "leadscore")]
    for field, bad in (("requests", "512Mi"), ("limits", "1Gi")):
        broken = json.loads(json.dumps(sts))
        broken["spec"]["template"]["spec"]["containers"][0]["resources"][field]["memory"] = bad
        c.check(memory_problem(broken)[0], f"the sizing check rejects a StatefulSet with memory {field} {bad}")


def check_statefulset(c, objs):
    sts = objs[("StatefulSet", "leadscore")]
    pod = sts["spec"]["template"]
    ctr = pod["spec"]["containers"][0]
    labels = pod["metadata"]["labels"]
    cfg = check_config_mount(c, objs[("ConfigMap", "leadscore")], ctr, pod)
    port = int(cfg["http"]["listen"].rsplit(":", 1)[1])
    cport = next(p for p in ctr["ports"] if p["name"] == "http")["containerPort"]
    c.check(cfg["http"]["listen"].startswith("0.0.0.0:") and port == cport, f"listens on 0.0.0.0:{port} = containerPort")
    c.check(sts["spec"]["selector"]["matchLabels"] == {k: labels[k] for k in sts["spec"]["selector"]["matchLabels"]},
            "StatefulSet selector matches its pod labels")
    headless = check_services(c, objs, sts, labels, cport)
    check_identity(c, ctr, headless, port)
    check_pod_runtime(c, sts, pod, ctr)
    return sts, cfg, labels


def check_operator_objects(c, objs, labels):
    pm = objs[("PodMonitor", "leadscore")]
    ep = pm["spec"]["podMetricsEndpoints"][0]
    relabel = {r.get("targetLabel"): r for r in ep.get("relabelings", [])}
    c.check(all(labels.get(k) == v for k, v in pm["spec"]["selector"]["matchLabels"].items())
            and ep["port"] == "http" and ep.get("path", "/metrics") == "/metrics",
            "PodMonitor scrapes the pods' http port at /metrics")
    c.check(relabel.get("job", {}).get("replacement") == "leadscore"
            and relabel.get("instance", {}).get("sourceLabels") == ["__meta_kubernetes_pod_name"],
            "PodMonitor sets job=leadscore (the rules select it) and instance=<pod name>")
    pr = objs[("PrometheusRule", "leadscore")]
    c.check(pr["spec"]["groups"] == load_yaml(P("deploy/prometheus/rules/leadscore.yml"))["groups"],
            "the PrometheusRule's groups are deploy/prometheus/rules/leadscore.yml's")


def check_keda(c, args, objs, sts, cfg):
    so = objs[("ScaledObject", "leadscore")]
    md = so["spec"]["triggers"][0]["metadata"]
    c.check(so["apiVersion"] == "keda.sh/v1alpha1" and so["spec"]["scaleTargetRef"] ==
            {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": sts["metadata"]["name"]},
            "KEDA ScaledObject targets the StatefulSet (references only: no KEDA schema here)")
    c.check(so["spec"]["triggers"][0]["type"] == "kafka" and md["topic"] in cfg["kafka"]["input_topics"]
            and md["consumerGroup"] == cfg["kafka"]["group_id"] and md["bootstrapServers"] == cfg["kafka"]["brokers"],
            "KEDA's kafka trigger watches leadscore's group, input topic and brokers")
    init = "\n".join(json.loads(sh([args.validate_bin, "compose", P("docker-compose.yml")]).stdout)
                     ["services"]["kafka-init"]["command"])
    parts = re.search(rf"--topic {re.escape(md['topic'])} --partitions (\d+)", init)
    c.check(parts and so["spec"]["minReplicaCount"] >= 1 and so["spec"]["maxReplicaCount"] <= int(parts.group(1)),
            f"KEDA never scales past the input's partitions ({parts.group(1) if parts else '?'})")


def k8s_checks(c, args):
    check_schemas(c, args)
    objs = k8s_objects()
    sts, cfg, labels = check_statefulset(c, objs)
    check_sizing_rule(c, objs)
    check_operator_objects(c, objs, labels)
    check_keda(c, args, objs, sts, cfg)


# --- the screenshot ------------------------------------------------------------------------------

def screenshot_checks(c, args):
    path = P("docs/img/status-page.png")
    ok = os.path.exists(path) and open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    c.check(ok, "docs/img/status-page.png is a PNG (scripts/test-ops --update-screenshot refreshes it)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--validate-bin", required=True)
    ap.add_argument("--bin", required=True, help="the locally built leadscore binary (for ldd)")
    ap.add_argument("--k8s-validate", default=f"{sys.executable} -m kubernetes_validate",
                    help="the kubernetes-validate command (default: this Python's module)")
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    c = Checks("static")
    for part in (compose_checks, dockerfile_checks, prometheus_checks, dashboard_checks, k8s_checks, screenshot_checks):
        print(f"{part.__name__.replace('_checks', '')}:", flush=True)
        try:
            part(c, args)
        except Abort as e:
            print(f"  stopping this part: {e}", flush=True)
    return c.summary()


if __name__ == "__main__":
    sys.exit(main())
