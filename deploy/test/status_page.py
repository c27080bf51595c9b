#!/usr/bin/env python3
"""The status page part of scripts/test-ops: the live page at `/` loaded in headless Chromium
(driven over the DevTools protocol) against a running pipeline, screenshotted, and checked number
by number against the service's own /metrics.

The pipeline is the one `leadscore demo` runs (at_least_once, generated traffic), on the real
broker: `leadscore run` fed by `leadscore generate`. The generator can be stopped there, and once
the service has consumed everything its numbers hold still (scores decay over days), so every
number on the page must equal /metrics exactly (the average to its one decimal). The screenshot
is taken before that, while traffic flows.

`leadscore demo` itself (the demo's first screen is this page) is checked to get ready, to
serve the page and its data, and to score its own traffic.
"""

import argparse
import base64
import json
import os
import re
import shutil
import signal
import sys
import time
import uuid

import websocket

sys.path.insert(0, os.path.dirname(__file__))
from common import (REPO, Abort, Checks, Children, free_port, http_get, metric_sum,  # noqa: E402
                    parse_metrics, wait_until)

class Cdp:
    """A minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, ws_url):
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events = []

    def call(self, method, **params):
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def eval(self, js, await_promise=False):
        r = self.call("Runtime.evaluate", expression=js, returnByValue=True, awaitPromise=await_promise)
        if "exceptionDetails" in r:
            raise RuntimeError(f"evaluate {js!r}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def errors(self):
        out = []
        for e in self.events:
            m, p = e["method"], e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails'].get('text')} "
                           f"{p['exceptionDetails'].get('exception', {}).get('description', '')}")
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                # favicon.ico is the browser's own request, not the page's.
                if "favicon.ico" not in p["entry"].get("url", ""):
                    out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out


PAGE_STATE = """(() => {
  const t = id => { const e = document.getElementById(id); return e ? e.textContent : null; };
  return {
    avg: t('avg'), qualified: t('qualified'), share: t('qualified-share'), tracked: t('tracked'), eps: t('eps'),
    transitions: t('transitions-total'), events: t('events-total'), updated: t('updated'),
    model: t('model'), pill: t('ready-pill'), partitions: t('inst-partitions'), lag: t('inst-lag'),
    rejected: t('inst-rejected'), instModel: t('inst-model'),
    banner: document.getElementById('banner').className,
    spark: document.getElementById('spark-line').getAttribute('d') || '',
    distRows: Array.from(document.querySelectorAll('#dist .drow')).map(r => [
      r.querySelector('.dlabel').textContent, r.querySelector('.dcount').textContent]),
    txRows: document.querySelectorAll('#tx-body tr').length,
    lang: navigator.language,
  };
})()"""


def num(text):
    """'12,345' or '41.7' -> float; None for a dash or nothing."""
    if text is None:
        return None
    m = re.search(r"-?[\d,]+(\.\d+)?", text.replace("\u2212", "-"))
    return float(m.group(0).replace(",", "")) if m else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--chromium", default="chromium")
    ap.add_argument("--screenshot", required=True, help="where to write the PNG")
    args = ap.parse_args()

    c = Checks("status-page")
    kids = Children(args.workdir)
    try:
        run(c, kids, args)
    except Abort as e:
        print(f"  stopping: {e}", flush=True)
    finally:
        kids.stop_all()
    return c.summary()


def check_demo(c, kids, args):
    """`leadscore demo` gets ready and serves the page, its data and growing counters."""
    port = free_port()
    demo = kids.start("demo", [args.bin, "demo", "--listen", f"127.0.0.1:{port}", "--rate", "1000",
                               "--leads", "3000", "--duration-s", "120"])
    url = f"http://127.0.0.1:{port}"
    ready = wait_until("the demo ready", 30, lambda: http_get(url + "/readyz")[0] == 200 or demo.poll() is not None)
    c.must(ready and demo.poll() is None, "`leadscore demo` gets ready", kids.log_tail(demo))
    status, page = http_get(url + "/")
    c.check(status == 200 and 'id="avg"' in page and "<script" in page, "the demo serves the status page at /")
    c.check(not re.search(r"""(?:src|href)=["']?(?:https?:)?//""", page),
            "the page is self-contained: no external script, style or image")

    def events():
        return json.loads(http_get(url + "/api/status")[1])["events_total"]

    first = wait_until("the demo's first events", 15, events, 0.5)
    grew = first and wait_until("the demo's events growing", 15, lambda: events() > first, 0.5)
    c.check(grew, f"the demo scores its own traffic (/api/status events_total {first} and growing)")
    c.check(kids.stop(demo, signal.SIGTERM, timeout_s=20) == 0, "the demo stops cleanly on SIGTERM",
            kids.log_tail(demo))


def start_pipeline(c, kids, args):
    """Starts `run` + `generate` on the real broker; returns (base URL, generator process)."""
    from confluent_kafka.admin import AdminClient, NewTopic
    tag = f"ops-page-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    for f in admin.create_topics([NewTopic(f"{tag}-events", 6, 1), NewTopic(f"{tag}-qualified", 3, 1),
                                  NewTopic(f"{tag}-dlq", 1, 1)], operation_timeout=30).values():
        f.result(timeout=60)
    port = free_port()
    env = {
        "LEADSCORE_KAFKA_BROKERS": args.bootstrap,
        "LEADSCORE_KAFKA_GROUP_ID": f"{tag}-group",
        "LEADSCORE_KAFKA_INPUT_TOPICS": f"{tag}-events",
        "LEADSCORE_KAFKA_OUTPUT_TOPIC": f"{tag}-qualified",
        "LEADSCORE_KAFKA_DEAD_LETTER_TOPIC": f"{tag}-dlq",
        "LEADSCORE_KAFKA_STATE_TOPIC": f"{tag}-state",
        "LEADSCORE_KAFKA_PROCESSING_GUARANTEE": "at_least_once",
        "LEADSCORE_KAFKA_TRANSACTIONAL_ID": f"{tag}-0",
        "LEADSCORE_HTTP_LISTEN": f"127.0.0.1:{port}",
        "LEADSCORE_MODEL_PATH": os.path.join(REPO, "examples/model.toml"),
        "LEADSCORE_LOG": "warn",
    }
    svc = kids.start("run", [args.bin, "run"], env=env)
    gen = kids.start("generate", [args.bin, "generate", "--brokers", args.bootstrap, "--topic", f"{tag}-events",
                                  "--rate", "1000", "--leads", "3000"])
    url = f"http://127.0.0.1:{port}"
    ok = wait_until("leadscore run ready", 60, lambda: http_get(url + "/readyz")[0] == 200 or svc.poll() is not None)
    c.must(ok and svc.poll() is None, "leadscore run (at_least_once, as the demo runs it) gets ready",
           kids.log_tail(svc))
    return url, gen


def run(c, kids, args):
    if not shutil.which(args.chromium):
        c.must(False, f"{args.chromium} is installed")
    check_demo(c, kids, args)
    url, gen = start_pipeline(c, kids, args)

    def metrics():
        status, body = http_get(url + "/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics: {status}")
        return parse_metrics(body)

    # Let the pipeline score a while, so the page has transitions and a distribution to show.
    c.must(wait_until("transitions", 40, lambda: metric_sum(metrics(), "leadscore_transitions_total") > 0, 0.5),
           "the pipeline publishes transitions")

    profile = os.path.join(args.workdir, "chromium-profile")
    os.makedirs(profile, exist_ok=True)
    chrome = kids.start("chromium", [
        args.chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
        # No network but loopback here: no background, update, sync or QUIC connections.
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
        "--lang=en-US", "--force-color-profile=srgb", "--remote-debugging-port=0",
        "--remote-allow-origins=*", f"--user-data-dir={profile}", "about:blank"])
    port_file = os.path.join(profile, "DevToolsActivePort")
    ok = wait_until("Chromium's DevTools port", 30, lambda: os.path.exists(port_file) and open(port_file).read().strip())
    c.must(ok, "headless Chromium starts", kids.log_tail(chrome))
    devtools = int(open(port_file).read().split()[0])
    pages = json.loads(http_get(f"http://127.0.0.1:{devtools}/json/list")[1])
    page = next(p for p in pages if p.get("type") == "page")
    cdp = Cdp(page["webSocketDebuggerUrl"])
    for domain in ("Runtime", "Log", "Page", "Network"):
        cdp.call(f"{domain}.enable")
    cdp.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
    cdp.call("Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": "light"}])
    cdp.call("Page.navigate", url=url + "/")

    def rendered():
        s = cdp.eval(PAGE_STATE)
        return s if (num(s["avg"]) is not None and len(s["spark"]) > 0 and s["txRows"] > 0
                     and num(s["eps"]) is not None and s["distRows"]) else None

    s = wait_until("the page rendered with a trend line", 30, rendered, 0.5)
    c.must(s, "the page renders the KPI, a trend line, transitions, events per second and the distribution",
           str(cdp.eval(PAGE_STATE)))

    c.check(num(s["eps"]) > 0, f"events per second shown while traffic flows ({s['eps']})")
    c.check(s["txRows"] > 0, f"the latest transitions table lists {s['txRows']} transitions")

    # Screenshot of the whole page, while traffic flows.
    height = int(cdp.call("Page.getLayoutMetrics")["cssContentSize"]["height"])
    cdp.call("Emulation.setDeviceMetricsOverride", width=1280, height=max(600, height), deviceScaleFactor=1,
             mobile=False)
    # Two animation frames: the new viewport is laid out and painted.
    cdp.eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))", await_promise=True)
    png = base64.b64decode(cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"])
    os.makedirs(os.path.dirname(os.path.abspath(args.screenshot)), exist_ok=True)
    with open(args.screenshot, "wb") as f:
        f.write(png)
    c.check(png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20000,
            f"screenshot written: {os.path.relpath(args.screenshot, REPO)} ({len(png)} bytes, 1280x{height})")

    # Stop the traffic; once everything is consumed the numbers hold still.
    kids.stop(gen, signal.SIGINT, timeout_s=15)

    def consumed():
        n = lambda m: metric_sum(m, "leadscore_events_total") + metric_sum(m, "leadscore_events_rejected_total")
        first = n(metrics())
        time.sleep(2.5)
        return first == n(metrics())

    c.must(wait_until("the service idle", 40, consumed, 0.5), "the service consumes everything after the generator stops")
    # Lag comes from librdkafka statistics every 5 s: wait for a report of the idle state.
    wait_until("lag 0", 12, lambda: metric_sum(metrics(), "leadscore_consumer_lag_records") == 0, 0.5)
    shown = cdp.eval(PAGE_STATE)["updated"]
    s = wait_until("the page's next poll", 10,
                   lambda: (lambda x: x if x["updated"] != shown else None)(cdp.eval(PAGE_STATE)), 0.1)
    c.must(s, "the page keeps polling")
    m = metrics()
    print(f"  page: {json.dumps({k: v for k, v in s.items() if k not in ('distRows', 'spark')})}", flush=True)

    def same(value, name, slack=0.0):
        want = metric_sum(m, name)
        return value is not None and abs(value - want) <= slack, f"page {value}, /metrics {want}"

    for label, key, name, slack in [
        ("average lead score = leadscore_average_score (to its 1 decimal)", "avg", "leadscore_average_score", 0.05),
        ("tracked leads = leadscore_tracked_leads", "tracked", "leadscore_tracked_leads", 0),
        ("qualified leads = leadscore_qualified_leads", "qualified", "leadscore_qualified_leads", 0),
        ("transitions so far = sum of leadscore_transitions_total", "transitions", "leadscore_transitions_total", 0),
        ("events so far = sum of leadscore_events_total", "events", "leadscore_events_total", 0),
        ("rejected records = sum of leadscore_events_rejected_total", "rejected", "leadscore_events_rejected_total", 0),
        ("assigned partitions = leadscore_assigned_partitions", "partitions", "leadscore_assigned_partitions", 0),
        ("consumer lag = sum of leadscore_consumer_lag_records", "lag", "leadscore_consumer_lag_records", 0),
    ]:
        ok, d = same(num(s[key]), name, slack)
        c.check(ok, label, d)
    share = 100 * metric_sum(m, "leadscore_qualified_leads") / metric_sum(m, "leadscore_tracked_leads")
    c.check(abs(num(s["share"]) - share) <= 0.05, f"qualified share {s['share']!r} = qualified / tracked ({share:.2f}%)")
    cum = sorted(((float(l["le"]), v) for n, l, v in m if n == "leadscore_leads_by_score"), key=lambda x: x[0])
    per_bucket = [v - (cum[i - 1][1] if i else 0) for i, (_, v) in enumerate(cum)]
    page_bars = [num(n) for _, n in s["distRows"]]
    c.check(page_bars == per_bucket,
            f"the distribution's {len(page_bars)} bars = the leadscore_leads_by_score buckets, de-accumulated",
            f"page {page_bars}, /metrics {per_bucket}")
    models = {l["model"] for n, l, _ in m if n == "leadscore_tracked_leads"}
    c.check(any(f"Model {name}" in (s["model"] or "") for name in models),
            f"the header names the model {sorted(models)}", s["model"])
    c.check(s["pill"] == "Ready", "the readiness pill says Ready", s["pill"])
    c.check("show" not in s["banner"], "no connection-lost banner")
    errors = cdp.errors()
    c.check(not errors, "no script error, console error or CSP violation", "; ".join(errors))

    cdp.ws.close()


if __name__ == "__main__":
    sys.exit(main())
