"""Helpers shared by the scripts of scripts/test-ops: checks that count, waits with deadlines,
child processes that are always stopped, the Prometheus text format, HTTP."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


class Checks:
    """Counts checks; a failed check is reported and the run goes on, so one run shows all."""

    def __init__(self, name):
        self.name = name
        self.passed = 0
        self.failed = []
        # Nothing is skipped at this commit; the count stays in the summary line that
        # scripts/test-ops adds up.
        self.skipped = []

    def check(self, ok, what, detail=""):
        if ok:
            self.passed += 1
            print(f"  ok    {what}", flush=True)
        else:
            self.failed.append(what)
            print(f"  FAIL  {what}" + (f"\n        {detail}" if detail else ""), flush=True)
        return bool(ok)

    def must(self, ok, what, detail=""):
        """A check the rest of the run depends on: stop here when it fails."""
        if not self.check(ok, what, detail):
            raise Abort(what)

    def summary(self):
        for f in self.skipped:
            print(f"  skipped: {f}", flush=True)
        for f in self.failed:
            print(f"  failed: {f}", flush=True)
        print(f"{self.name}: {self.passed} passed, {len(self.failed)} failed, {len(self.skipped)} skipped",
              flush=True)
        return 0 if not self.failed else 1


class Abort(Exception):
    pass


def wait_until(what, timeout_s, cond, interval_s=0.25):
    """Polls `cond` until it returns a truthy value (returned) or the deadline passes (None)."""
    deadline = time.monotonic() + timeout_s
    last_error = None
    while True:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # a service not up yet answers with errors: keep polling
            last_error = e
        if time.monotonic() >= deadline:
            print(f"  timed out after {timeout_s} s waiting for {what}"
                  + (f" (last error: {last_error})" if last_error else ""), flush=True)
            return None
        time.sleep(interval_s)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5.0):
    """(status, body text); status 0 when the connection failed."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError):
        return 0, ""


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)(\s+\d+)?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """Prometheus text format -> list of (name, {labels}, float value)."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            raise ValueError(f"unparsable exposition line: {line!r}")
        labels = dict(_LABEL.findall(m.group(3) or ""))
        out.append((m.group(1), labels, float(m.group(4))))
    return out


def metric_sum(samples, name, **match):
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == x for k, x in match.items()))


def child_env():
    """This process's environment without LEADSCORE_* variables: leadscore refuses those it does
    not know, so none of the caller's (LEADSCORE_BIN, a developer's LEADSCORE_LOG) reach a child;
    only those a test sets."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LEADSCORE_")}


class Children:
    """Child processes, each with its own log file; all stopped on exit (SIGTERM, then SIGKILL)."""

    def __init__(self, logdir):
        self.logdir = logdir
        self.procs = []
        signal.signal(signal.SIGTERM, self._on_term)

    def _on_term(self, *_):
        raise SystemExit(143)

    def start(self, name, argv, env=None, cwd=REPO):
        log = open(os.path.join(self.logdir, f"{name}.log"), "wb")
        full_env = child_env()
        full_env.update(env or {})
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             env=full_env, cwd=cwd)
        p.name, p.logfile = name, log.name
        self.procs.append(p)
        return p

    def log_tail(self, p, lines=15):
        try:
            with open(p.logfile, "rb") as f:
                return b"\n".join(f.read().splitlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, p, sig=signal.SIGTERM, timeout_s=35):
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return p.returncode

    def stop_all(self):
        for p in reversed(self.procs):
            self.stop(p, timeout_s=35)


class Prometheus:
    """A client of Prometheus' HTTP API."""

    def __init__(self, base):
        self.base = base.rstrip("/")

    def get(self, path, **params):
        url = f"{self.base}{path}?{urllib.parse.urlencode(params, doseq=True)}"
        status, body = http_get(url, timeout=15)
        if status == 0:
            raise ConnectionError(f"no answer from {url}")
        doc = json.loads(body)
        if doc.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def query(self, expr, at=None):
        """Instant query -> list of (labels, value) for a vector, [({}, v)] for a scalar."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.get("/api/v1/query", **params)
        if data["resultType"] == "vector":
            return [(r["metric"], float(r["value"][1])) for r in data["result"]]
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        raise RuntimeError(f"unexpected result type {data['resultType']} for {expr}")


def die(msg):
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


class TestKafka:
    """The topics and consumer groups one test uses on the shared broker: every name starts with a
    unique tag, and everything is deleted at the end (topics leadscore created itself included)."""

    def __init__(self, bootstrap, prefix):
        from confluent_kafka.admin import AdminClient
        self.bootstrap = bootstrap
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self.tag = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.topics = set()
        self.groups = set()

    def name(self, suffix):
        return f"{self.tag}-{suffix}"

    def create(self, partitions):
        """Creates {suffix: partition count} topics (replication 1); returns {suffix: name}."""
        from confluent_kafka.admin import NewTopic
        names = {suffix: self.name(suffix) for suffix in partitions}
        self.topics |= set(names.values())
        new = [NewTopic(names[s], n, 1) for s, n in partitions.items()]
        for f in self.admin.create_topics(new, operation_timeout=30).values():
            f.result(timeout=60)
        return names

    def group(self, suffix="group"):
        g = self.name(suffix)
        self.groups |= {g, f"{g}-restore"}
        return g

    def owned_by_service(self, *suffixes):
        """Names of topics leadscore creates itself (state, repartition), deleted at the end too."""
        names = [self.name(s) for s in suffixes]
        self.topics |= set(names)
        return names

    def true_lag(self, group, topic):
        """Records behind for the group on the topic, from the broker: high watermark minus the
        committed offset (transactional commits included), summed over partitions."""
        from confluent_kafka import Consumer, TopicPartition
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group,
                             "enable.auto.commit": False})
        try:
            meta = self.admin.list_topics(topic, timeout=10).topics[topic]
            tps = [TopicPartition(topic, p) for p in meta.partitions]
            total = 0
            for tp in consumer.committed(tps, timeout=10):
                high = consumer.get_watermark_offsets(tp, timeout=10)[1]
                total += high - (tp.offset if tp.offset >= 0 else 0)
            return total
        finally:
            consumer.close()

    def cleanup(self):
        """Deletes what the test made; a topic or group that never came to exist is fine."""
        futures = {}
        if self.topics:
            futures.update(self.admin.delete_topics(sorted(self.topics), operation_timeout=30))
        if self.groups:
            futures.update(self.admin.delete_consumer_groups(sorted(self.groups), request_timeout=30))
        for f in futures.values():
            try:
                f.result(timeout=60)
            except Exception:  # unknown topic or group: nothing to delete
                pass
