#!/usr/bin/env python3
"""Memory of one `leadscore run` instance, for sizing its container (deploy/README.md,
"Resources"). Not part of scripts/test-ops: it takes about a minute per million events.

    KAFKA_BOOTSTRAP=127.0.0.1:9092 python3 deploy/sizing/memory.py --leads 1000000 --events 3000000

1. Preloads a fresh 6-partition topic with `leadscore generate --rate 1e9` (skewed: some lead ids
   get many events, so fewer distinct leads than --leads are tracked).
2. `consume`: one instance (exactly_once, the example model) consumes all of it. Peak RSS
   (VmHWM) and tracked leads once everything is consumed.
3. `restore`: the instance is stopped (SIGTERM) and started again on the same group: it restores
   every lead from the changelog. Peak RSS and RSS once it is ready and idle, and the changelog
   records it read.
Prints one JSON line per phase, with KiB per tracked lead above an idle instance's RSS.

Diagnostics (deploy/README.md, "Resources", on why a restored instance holds more):
  --malloc-trim        after each phase's readings, calls glibc's malloc_trim(0) in the instance
                       (through gdb) and reports its RSS after: what the allocator held as free
                       memory rather than live data
  --restore-env K=V    extra environment for the restore phase only (repeatable), e.g. restore
                       consumer settings as LEADSCORE_LIBRDKAFKA_QUEUED_MAX_MESSAGES_KBYTES=8192
                       (they reach every client of that instance; its input consumer is idle)
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ left in deploy/test/
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "test"))
from common import (REPO, Children, TestKafka, child_env, free_port, http_get, metric_sum,  # noqa: E402
                    parse_metrics, wait_until)


def proc_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def env_for(kafka, topics, port):
    return {
        "LEADSCORE_KAFKA_BROKERS": kafka.bootstrap,
        "LEADSCORE_KAFKA_GROUP_ID": kafka.group(),
        "LEADSCORE_KAFKA_INPUT_TOPICS": topics["events"],
        "LEADSCORE_KAFKA_OUTPUT_TOPIC": topics["qualified"],
        "LEADSCORE_KAFKA_DEAD_LETTER_TOPIC": topics["dlq"],
        "LEADSCORE_KAFKA_STATE_TOPIC": kafka.owned_by_service("state")[0],
        "LEADSCORE_KAFKA_REPARTITION_TOPIC": kafka.owned_by_service("repartition")[0],
        "LEADSCORE_KAFKA_TRANSACTIONAL_ID": kafka.name("0"),
        "LEADSCORE_HTTP_LISTEN": f"127.0.0.1:{port}",
        "LEADSCORE_MODEL_PATH": os.path.join(REPO, "examples/model.toml"),
        "LEADSCORE_LOG": "warn",
    }


def scrape(url):
    status, body = http_get(url + "/metrics", timeout=30)
    if status != 200:
        raise RuntimeError(f"/metrics: {status}")
    m = parse_metrics(body)
    records = metric_sum(m, "leadscore_events_total") + metric_sum(m, "leadscore_events_rejected_total")
    return records, metric_sum(m, "leadscore_tracked_leads")


def malloc_trim_rss_kib(pid):
    """RSS after glibc's malloc_trim(0) ran in process `pid` (it returns the free pages of every
    arena to the kernel)."""
    r = subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "call (int) malloc_trim(0)"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0 or "$1 = " not in r.stdout:
        sys.exit(f"gdb could not call malloc_trim in {pid}: {(r.stdout + r.stderr)[-400:]}")
    return proc_kib(pid, "VmRSS")


def changelog_records(kafka):
    """Records (offsets) in the state topic, summed over its partitions."""
    from confluent_kafka import Consumer, TopicPartition
    topic = kafka.name("state")
    c = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": kafka.group("watermarks")})
    try:
        parts = kafka.admin.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(hi - lo for lo, hi in (c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                                          for p in parts))
    finally:
        c.close()


def phase(kids, args, env, url, name, done, idle_kib):
    """Runs one instance until `done(records, leads)` holds; returns its figures."""
    started = time.monotonic()
    p = kids.start(f"run-{name}", [args.bin, "run"], env=env)
    ok = wait_until(f"{name}: done", args.timeout_s, lambda: done(*scrape(url)), 1)
    if not ok:
        sys.exit(f"{name} did not finish within {args.timeout_s} s")
    time.sleep(6)  # one more statistics interval, then read the final state
    records, leads = scrape(url)
    out = {"phase": name, "leads": int(leads), "records": int(records),
           "seconds": round(time.monotonic() - started, 1),
           "peak_rss_mib": round(proc_kib(p.pid, "VmHWM") / 1024), "rss_mib": round(proc_kib(p.pid, "VmRSS") / 1024)}
    out["peak_kib_per_lead"] = round((proc_kib(p.pid, "VmHWM") - idle_kib) / max(1, leads), 2)
    out["kib_per_lead"] = round((proc_kib(p.pid, "VmRSS") - idle_kib) / max(1, leads), 2)
    if args.malloc_trim:
        out["rss_after_malloc_trim_mib"] = round(malloc_trim_rss_kib(p.pid) / 1024)
    kids.stop(p, signal.SIGTERM, timeout_s=60)
    return out


def idle_rss_kib(kids, args, env, url):
    """RSS of an instance that is ready with no data (its own topics, empty)."""
    p = kids.start("run-idle", [args.bin, "run"], env=env)
    wait_until("idle instance ready", 60, lambda: http_get(url + "/readyz")[0] == 200)
    time.sleep(6)
    kib = proc_kib(p.pid, "VmHWM")
    kids.stop(p, signal.SIGTERM, timeout_s=60)
    return kib


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(REPO, "target/release/leadscore"))
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    ap.add_argument("--leads", type=int, default=1_000_000)
    ap.add_argument("--events", type=int, default=3_000_000)
    ap.add_argument("--timeout-s", type=int, default=600)
    ap.add_argument("--malloc-trim", action="store_true",
                    help="report each phase's RSS after malloc_trim(0) too (needs gdb)")
    ap.add_argument("--restore-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for the restore phase (repeatable)")
    args = ap.parse_args()
    if args.malloc_trim and not shutil.which("gdb"):
        sys.exit("--malloc-trim needs gdb (apt-get install -y gdb)")
    if not all("=" in kv for kv in args.restore_env):
        sys.exit(f"--restore-env takes KEY=VALUE: {args.restore_env}")
    workdir = os.path.join(REPO, "target", "sizing")
    os.makedirs(workdir, exist_ok=True)
    kids = Children(workdir)
    idle_kafka, kafka = TestKafka(args.bootstrap, "sizing-idle"), TestKafka(args.bootstrap, "sizing")
    try:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        idle_topics = idle_kafka.create({"events": 6, "qualified": 6, "dlq": 1})
        idle = idle_rss_kib(kids, args, env_for(idle_kafka, idle_topics, port), url)
        print(json.dumps({"phase": "idle", "rss_mib": round(idle / 1024)}), flush=True)
        topics = kafka.create({"events": 6, "qualified": 6, "dlq": 1})
        subprocess.run([args.bin, "generate", "--brokers", args.bootstrap, "--topic", topics["events"],
                        "--rate", "1e9", "--leads", str(args.leads), "--count", str(args.events), "--seed", "1"],
                       check=True, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env = env_for(kafka, topics, port)
        consumed = phase(kids, args, env, url, "consume", lambda n, _: n >= args.events, idle)
        print(json.dumps(consumed), flush=True)
        restore_env = dict(env, **dict(kv.split("=", 1) for kv in args.restore_env))
        restored = phase(kids, args, restore_env, url, "restore", lambda _, leads: leads >= consumed["leads"], idle)
        restored["changelog_records"] = changelog_records(kafka)
        if args.restore_env:
            restored["env"] = args.restore_env
        print(json.dumps(restored), flush=True)
    finally:
        kids.stop_all()
        idle_kafka.cleanup()
        kafka.cleanup()


if __name__ == "__main__":
    main()
