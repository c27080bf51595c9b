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

Known defect (src/pipeline/state.rs, `status`): the page's "Instance" row is always a dash,
because /api/status never fills `instance.id`. Reported as skipped until it is fixed.
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

import websocket

sys.path.insert(0, os.path.dirname(__file__))
from common import (REPO, Abort, Checks, Children, TestKafka, free_port, http_get, metric_sum,  # noqa: E402
                    parse_metrics, wait_until)

RATE = 1000
LEADS = 400  # few leads, many events each: transitions and a spread-out distribution within seconds
INSTANCE_DEFECT = ("/api/status never sets instance.id (src/pipeline/state.rs builds InstanceStatus with "
                   "id: String::new()): the page cannot say which instance it is; it should be the "
                   "transactional id or the advertised URL")


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
    model: t('model'), pill: t('ready-pill'), instance: t('inst-id'), partitions: t('inst-partitions'),
    lag: t('inst-lag'), rejected: t('inst-rejected'), instModel: t('inst-model'),
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


# --- the demo ------------------------------------------------------------------------------------

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


# --- the pipeline on the real broker -------------------------------------------------------------

def start_pipeline(c, kids, kafka, args):
    """Starts `run` + `generate` on the real broker; returns (base URL, generator process)."""
    topics = kafka.create({"events": 6, "qualified": 3, "dlq": 1})
    group = kafka.group()
    kafka.owned_by_service("state", "group-repartition")
    port = free_port()
    env = {
        "LEADSCORE_KAFKA_BROKERS": args.bootstrap,
        "LEADSCORE_KAFKA_GROUP_ID": group,
        "LEADSCORE_KAFKA_INPUT_TOPICS": topics["events"],
        "LEADSCORE_KAFKA_OUTPUT_TOPIC": topics["qualified"],
        "LEADSCORE_KAFKA_DEAD_LETTER_TOPIC": topics["dlq"],
        "LEADSCORE_KAFKA_STATE_TOPIC": kafka.name("state"),
        "LEADSCORE_KAFKA_PROCESSING_GUARANTEE": "at_least_once",
        "LEADSCORE_KAFKA_TRANSACTIONAL_ID": kafka.name("0"),
        "LEADSCORE_HTTP_LISTEN": f"127.0.0.1:{port}",
        "LEADSCORE_MODEL_PATH": os.path.join(REPO, "examples/model.toml"),
        "LEADSCORE_LOG": "warn",
    }
    svc = kids.start("run", [args.bin, "run"], env=env)
    gen = kids.start("generate", [args.bin, "generate", "--brokers", args.bootstrap, "--topic", topics["events"],
                                  "--rate", str(RATE), "--leads", str(LEADS)])
    url = f"http://127.0.0.1:{port}"
    ok = wait_until("leadscore run ready", 60, lambda: http_get(url + "/readyz")[0] == 200 or svc.poll() is not None)
    c.must(ok and svc.poll() is None, "leadscore run (at_least_once, as the demo runs it) gets ready",
           kids.log_tail(svc))
    return url, gen


def metrics(url):
    status, body = http_get(url + "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics: {status}")
    return parse_metrics(body)


# --- the browser ---------------------------------------------------------------------------------

def start_chromium(c, kids, args):
    """Headless Chromium with a fresh profile; returns a DevTools client of its blank page."""
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
    cdp = Cdp(next(p for p in pages if p.get("type") == "page")["webSocketDebuggerUrl"])
    for domain in ("Runtime", "Log", "Page", "Network"):
        cdp.call(f"{domain}.enable")
    cdp.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
    cdp.call("Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": "light"}])
    return cdp


def open_page(c, cdp, url):
    """Navigates to the page; returns its state once the KPI, a trend line, transitions, events per
    second, the distribution and the lag are shown."""
    cdp.call("Page.navigate", url=url + "/")

    def rendered():
        s = cdp.eval(PAGE_STATE)
        return s if (num(s["avg"]) is not None and len(s["spark"]) > 0 and s["txRows"] > 0
                     and num(s["eps"]) is not None and s["distRows"]) else None

    s = wait_until("the page rendered with a trend line", 30, rendered, 0.5)
    c.must(s, "the page renders the KPI, a trend line, transitions, events per second and the distribution",
           str(cdp.eval(PAGE_STATE)))
    c.check(num(s["eps"]) > 0, f"events per second shown while traffic flows ({s['eps']})")


def take_screenshot(c, cdp, path):
    """The whole page, once it has filled its transitions table and shows a lag (traffic flowing)."""
    full = wait_until("a full transitions table and a lag", 40,
                      lambda: (lambda x: x if x["txRows"] >= 12 and num(x["lag"]) is not None else None)(
                          cdp.eval(PAGE_STATE)), 0.5)
    c.check(full, f"the latest transitions table fills ({(full or {}).get('txRows')} rows) and the lag is shown")
    height = int(cdp.call("Page.getLayoutMetrics")["cssContentSize"]["height"])
    cdp.call("Emulation.setDeviceMetricsOverride", width=1280, height=max(600, height), deviceScaleFactor=1,
             mobile=False)
    # Two animation frames: the new viewport is laid out and painted.
    cdp.eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))", await_promise=True)
    png = base64.b64decode(cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(png)
    c.check(png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20000,
            f"screenshot written: {os.path.relpath(path, REPO)} ({len(png)} bytes, 1280x{height})")


def wait_idle(c, kids, url, gen):
    """Stops the traffic and waits until everything is consumed and reported (lag 0)."""
    kids.stop(gen, signal.SIGINT, timeout_s=15)

    def consumed():
        n = lambda m: metric_sum(m, "leadscore_events_total") + metric_sum(m, "leadscore_events_rejected_total")  # noqa: E731
        first = n(metrics(url))
        time.sleep(2.5)
        return first == n(metrics(url))

    c.must(wait_until("the service idle", 40, consumed, 0.5), "the service consumes everything after the generator stops")
    # Lag comes from librdkafka statistics every 5 s: wait for a report of the idle state.
    wait_until("lag 0", 12, lambda: metric_sum(metrics(url), "leadscore_consumer_lag_records") == 0, 0.5)


def next_poll(c, cdp):
    """The page's state after its next poll of /api/status."""
    shown = cdp.eval(PAGE_STATE)["updated"]
    s = wait_until("the page's next poll", 10,
                   lambda: (lambda x: x if x["updated"] != shown else None)(cdp.eval(PAGE_STATE)), 0.1)
    c.must(s, "the page keeps polling")
    print(f"  page: {json.dumps({k: v for k, v in s.items() if k not in ('distRows', 'spark')})}", flush=True)
    return s


def check_numbers(c, s, m):
    """Every number on the page equals /metrics."""
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
        want, got = metric_sum(m, name), num(s[key])
        c.check(got is not None and abs(got - want) <= slack, label, f"page {got}, /metrics {want}")
    share = 100 * metric_sum(m, "leadscore_qualified_leads") / metric_sum(m, "leadscore_tracked_leads")
    c.check(abs(num(s["share"]) - share) <= 0.05, f"qualified share {s['share']!r} = qualified / tracked ({share:.2f}%)")
    cum = sorted(((float(l["le"]), v) for n, l, v in m if n == "leadscore_leads_by_score"), key=lambda x: x[0])
    per_bucket = [v - (cum[i - 1][1] if i else 0) for i, (_, v) in enumerate(cum)]
    page_bars = [num(n) for _, n in s["distRows"]]
    c.check(page_bars == per_bucket,
            f"the distribution's {len(page_bars)} bars = the leadscore_leads_by_score buckets, de-accumulated",
            f"page {page_bars}, /metrics {per_bucket}")


def check_header_and_health(c, cdp, s, m):
    models = {l["model"] for n, l, _ in m if n == "leadscore_tracked_leads"}
    c.check(any(f"Model {name}" in (s["model"] or "") for name in models),
            f"the header names the model {sorted(models)}", s["model"])
    c.check(s["pill"] == "Ready", "the readiness pill says Ready", s["pill"])
    c.known_defect(s["instance"] not in (None, "", "\u2014"),
                   f"the instance health block names the instance ({s['instance']!r})", INSTANCE_DEFECT)
    c.check("show" not in s["banner"], "no connection-lost banner")
    errors = cdp.errors()
    c.check(not errors, "no script error, console error or CSP violation", "; ".join(errors))


def run(c, kids, kafka, args):
    if not shutil.which(args.chromium):
        c.must(False, f"{args.chromium} is installed")
    check_demo(c, kids, args)
    url, gen = start_pipeline(c, kids, kafka, args)
    c.must(wait_until("transitions", 40, lambda: metric_sum(metrics(url), "leadscore_transitions_total") > 0, 0.5),
           "the pipeline publishes transitions")
    cdp = start_chromium(c, kids, args)
    open_page(c, cdp, url)
    take_screenshot(c, cdp, args.screenshot)
    wait_idle(c, kids, url, gen)
    s = next_poll(c, cdp)
    m = metrics(url)
    check_numbers(c, s, m)
    check_header_and_health(c, cdp, s, m)
    cdp.ws.close()


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
    kafka = TestKafka(args.bootstrap, "ops-page")
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
