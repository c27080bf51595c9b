#!/usr/bin/env python3
"""The status page part of scripts/test-ops: the live page at `/` loaded in headless Chromium
(driven over the DevTools protocol) against a running pipeline, screenshotted, and checked number
by number against the service's own /metrics.

The pipeline is the one `leadscore demo` runs (at_least_once, generated traffic), on the real
broker: `leadscore run` fed by `leadscore generate`. The generator can be stopped there, and once
the service has consumed everything its numbers hold still (scores decay over days), so every
number on the page must equal /metrics exactly (the average to its one decimal), the instance is
named by its transactional id, and it counts the input topic's partitions only (not the
repartition topic's, assigned beside them).

The trend: the service keeps an hour of average-score samples about 10 s apart
(`/api/status` `average_history`), whether a page is open or not. Once it has a few, a page
opened afresh (its own saved samples cleared) must draw them at its first render: a line over
every sample, spanning the chart from the oldest to now, and a trend label naming that span. The
screenshot is taken on that page, while traffic flows.

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

import websocket

sys.path.insert(0, os.path.dirname(__file__))
from common import (REPO, Abort, Checks, Children, TestKafka, free_port, http_get, metric_sum,  # noqa: E402
                    parse_metrics, wait_until)

RATE = 1000
LEADS = 400  # few leads, many events each: transitions and a spread-out distribution within seconds
PARTITIONS = 6  # of the input topic (and so of the repartition topic)
HISTORY_STEP_S = 10  # the service's spacing of average-score samples
HISTORY_SAMPLES = 4  # samples the service must have before a fresh page is opened on it
SPARK_W = 300  # the chart's viewBox width


class Cdp:
    """A minimal Chrome DevTools Protocol client over one page's websocket. Events with a handler
    in `handlers` (method -> function of the params) are handled once the call that received
    them has its answer; the others are kept in `events`."""

    def __init__(self, ws_url):
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events = []
        self.handlers = {}
        self.answers = {}
        self.pending = []
        self.handling = False

    def call(self, method, **params):
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while my_id not in self.answers:
            msg = json.loads(self.ws.recv())
            if "id" in msg:
                self.answers[msg["id"]] = msg
            elif msg.get("method") in self.handlers:
                self.pending.append(msg)
            elif "method" in msg:
                self.events.append(msg)
        msg = self.answers.pop(my_id)
        if not self.handling:
            self.handling = True
            try:
                while self.pending:
                    e = self.pending.pop(0)
                    self.handlers[e["method"]](e["params"])
            finally:
                self.handling = False
        if "error" in msg:
            raise RuntimeError(f"{method}: {msg['error']}")
        return msg.get("result", {})

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
    trend: t('trend'), sparkRange: t('spark-range'),
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
    """Starts `run` + `generate` on the real broker; returns (base URL, generator process, the
    instance's transactional id)."""
    topics = kafka.create({"events": PARTITIONS, "qualified": 3, "dlq": 1})
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
    return url, gen, env["LEADSCORE_KAFKA_TRANSACTIONAL_ID"]


def api_status(url):
    status, body = http_get(url + "/api/status")
    if status != 200:
        raise RuntimeError(f"/api/status: {status}")
    return json.loads(body)


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
    port_file = os.path.join(profile, "DevToolsActivePort")
    if os.path.exists(port_file):  # a previous run's, in a reused work dir
        os.remove(port_file)
    chrome = kids.start("chromium", [
        args.chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
        # No network but loopback here: no background, update, sync or QUIC connections.
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
        "--lang=en-US", "--force-color-profile=srgb", "--remote-debugging-port=0",
        "--remote-allow-origins=*", f"--user-data-dir={profile}", "about:blank"])
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


def spark_points(d):
    """The chart's line 'M x y L x y ...' -> [(x, y), ...]."""
    return [(float(x), float(y)) for x, y in re.findall(r"[ML]\s*(-?[\d.]+)[ ,](-?[\d.]+)", d or "")]


def trend_span_s(text):
    """(seconds, resolution in seconds) the trend label names ('... over the last 35 s',
    '... 4 min', '... the last hour'), or (None, None)."""
    m = re.search(r"over the last (\d+) (s|min)\b", text or "")
    if m:
        return (int(m.group(1)), 1) if m.group(2) == "s" else (60 * int(m.group(1)), 30)
    return (3600, 60) if "the last hour" in (text or "") else (None, None)


def wait_history(c, url, n):
    """Waits until the service has `n` average-score samples; returns /api/status then."""
    st = wait_until(f"{n} samples in the service's average history", n * HISTORY_STEP_S + 30,
                    lambda: (lambda x: x if len(x.get("average_history") or []) >= n else None)(api_status(url)), 1)
    c.must(st, f"the service keeps average-score samples for the trend ({n} within {n * HISTORY_STEP_S + 30} s)",
           str(api_status(url).get("average_history")))
    return st


def history_problems(hist, now_ms):
    """{check: problem or None} of an `average_history`: [[epoch ms, average], ...], oldest first,
    about 10 s apart, within the last hour and not in the future."""
    pairs = [p for p in hist if isinstance(p, list) and len(p) == 2 and isinstance(p[0], int)
             and isinstance(p[1], (int, float)) and not isinstance(p[1], bool)]
    gaps = [(b[0] - a[0]) / 1000 for a, b in zip(pairs, pairs[1:])]
    return {
        "format": None if pairs and len(pairs) == len(hist) else str(hist)[:300],
        "spacing": (None if gaps and all(HISTORY_STEP_S - 0.1 <= g <= 2 * HISTORY_STEP_S for g in gaps)
                    else f"gaps {[round(g, 1) for g in gaps]} s"),
        "window": (None if pairs and now_ms - 3_600_000 <= pairs[0][0] and pairs[-1][0] <= now_ms + 1000
                   and now_ms - pairs[-1][0] <= 2 * HISTORY_STEP_S * 1000
                   else f"now {now_ms}, oldest {pairs[0][0] if pairs else None}, newest {pairs[-1][0] if pairs else None}"),
    }


def check_history(c, hist, now_ms):
    p = history_problems(hist, now_ms)
    gaps = [round((b[0] - a[0]) / 1000, 1) for a, b in zip(hist, hist[1:])] if not p["format"] else []
    c.check(not p["format"], f"average_history is [[epoch_ms, average], ...] ({len(hist)} samples)", p["format"])
    c.check(not p["spacing"], f"its samples are oldest first, about {HISTORY_STEP_S} s apart: {gaps}", p["spacing"])
    c.check(not p["window"], "its samples lie within the last hour, the newest within two steps of now", p["window"])
    # The control: broken histories are rejected.
    t = int(now_ms)
    for what, broken, key in (("as objects", [{"t": t, "v": 1.0}] * 2, "format"),
                              ("newest first", [[t, 1.0], [t - 10_000, 2.0]], "spacing"),
                              ("2 s apart", [[t - 2000, 1.0], [t, 2.0]], "spacing"),
                              ("over an hour old", [[t - 3_700_000, 1.0], [t - 3_690_000, 2.0]], "window"),
                              ("in the future", [[t + 10_000, 1.0], [t + 20_000, 2.0]], "window")):
        c.check(history_problems(broken, now_ms)[key], f"control: the history check rejects samples {what}")


def local_time(ms):
    """Epoch ms as the page's en-US toLocaleTimeString() writes it ('9:58:37 AM')."""
    t = time.localtime(ms / 1000)
    return f"{(t.tm_hour - 1) % 12 + 1}:{t.tm_min:02d}:{t.tm_sec:02d} {'AM' if t.tm_hour < 12 else 'PM'}"


def fresh_first_render(cdp, url):
    """Opens the page with none of its own samples saved; returns its state at its first render
    and how long after navigating that was."""
    cdp.call("Page.navigate", url="about:blank")
    cdp.call("Storage.clearDataForOrigin", origin=url.rstrip("/"), storageTypes="local_storage")
    opened = time.monotonic()
    cdp.call("Page.navigate", url=url + "/")
    # The page polls every 2 s and this looks every 0.1 s: the first state with a KPI is the
    # first render.
    first = wait_until("the fresh page's first render", 15,
                       lambda: (lambda x: x if num(x["avg"]) is not None else None)(cdp.eval(PAGE_STATE)), 0.1)
    return first, time.monotonic() - opened


def first_render_problems(first, hist):
    """{check: problem or None} of a fresh page's first render on a service with `hist` samples."""
    pts = spark_points(first["spark"])
    (span, res), want = trend_span_s(first["trend"]), (time.time() * 1000 - hist[0][0]) / 1000
    since = re.match(r"Since (.+): low .+, high .+", first["sparkRange"] or "")
    return {
        "points": None if len(pts) >= len(hist) + 1 else f"{len(pts)} points: {first['spark'][:120]!r}",
        "extent": None if pts and pts[0][0] == 0.0 and pts[-1][0] >= SPARK_W - 1 else f"x from {pts[:1]} to {pts[-1:]}",
        # The label spans the oldest sample to the page's own, taken at its first poll (just now).
        "label": (None if span is not None and want - 15 - res <= span <= want + 1 + res
                  else f"{first['trend']!r}, samples since {want:.0f} s ago"),
        "since": (None if since and since.group(1) == local_time(hist[0][0])
                  else f"{first['sparkRange']!r}, oldest sample at {local_time(hist[0][0])}"),
    }


def open_fresh_page(c, cdp, url, hist):
    """A page opened afresh (no samples of its own saved) on a service with `hist` samples: its
    first render draws every one of them, spanning the chart, and names their span."""
    first, after = fresh_first_render(cdp, url)
    c.must(first, "a page opened afresh renders", str(cdp.eval(PAGE_STATE)))
    p = first_render_problems(first, hist)
    n = len(spark_points(first["spark"]))
    c.check(not p["points"], f"at its first render ({after:.1f} s after opening) the trend line has {n} points: "
            f"the service's {len(hist)} samples and the page's own", p["points"])
    c.check(not p["extent"], "the chart spans the data it has: the oldest sample at the left edge, now at the right",
            p["extent"])
    c.check(not p["label"], f"the trend label names the service's span at once: {first['trend']!r}", p["label"])
    c.check(not p["since"], f"the range under the chart starts at the oldest sample: {first['sparkRange']!r}",
            p["since"])


def check_fresh_page_control(c, cdp, url, hist):
    """The same first render with `average_history` taken out of /api/status (in the browser, by
    intercepting its responses) must fail those checks: they prove that the trend comes from the
    service's samples, not from the page's own."""

    def strip_history(params):
        body = cdp.call("Fetch.getResponseBody", requestId=params["requestId"])
        raw = base64.b64decode(body["body"]) if body.get("base64Encoded") else body["body"].encode()
        doc = json.loads(raw)
        doc.pop("average_history", None)
        cdp.call("Fetch.fulfillRequest", requestId=params["requestId"],
                 responseCode=params.get("responseStatusCode", 200), responseHeaders=params.get("responseHeaders", []),
                 body=base64.b64encode(json.dumps(doc).encode()).decode())

    cdp.handlers["Fetch.requestPaused"] = strip_history
    cdp.call("Fetch.enable", patterns=[{"urlPattern": "*/api/status*", "requestStage": "Response"}])
    try:
        first, _ = fresh_first_render(cdp, url)
    finally:
        cdp.call("Fetch.disable")
        del cdp.handlers["Fetch.requestPaused"]
    p = first_render_problems(first, hist) if first else {}
    c.check(first and p["points"] and p["label"],
            f"control: without average_history the fresh page's first render fails the trend checks "
            f"({first and first['trend']!r}, {len(spark_points(first and first['spark']))} points)", str(p))


def take_screenshot(c, cdp, path):
    """The whole page, once it has filled its transitions table and shows a lag and events per
    second (traffic flowing; a rate needs two polls)."""
    full = wait_until("a full transitions table, a lag and events per second", 40,
                      lambda: (lambda x: x if x["txRows"] >= 12 and num(x["lag"]) is not None
                               and num(x["eps"]) is not None else None)(cdp.eval(PAGE_STATE)), 0.5)
    c.check(full, f"the latest transitions table fills ({(full or {}).get('txRows')} rows), the lag and events "
            f"per second ({(full or {}).get('eps')}) are shown")
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


def check_header_and_health(c, cdp, s, m, tx_id):
    models = {l["model"] for n, l, _ in m if n == "leadscore_tracked_leads"}
    c.check(any(f"Model {name}" in (s["model"] or "") for name in models),
            f"the header names the model {sorted(models)}", s["model"])
    c.check(s["pill"] == "Ready", "the readiness pill says Ready", s["pill"])
    c.check(s["instance"] == tx_id, f"the instance health block names the instance by its transactional id "
            f"({s['instance']!r})", f"expected {tx_id!r}")
    assigned = metric_sum(m, "leadscore_assigned_partitions")
    c.check(assigned == PARTITIONS and num(s["partitions"]) == PARTITIONS,
            f"assigned partitions are the input's {PARTITIONS} (page {s['partitions']}, /metrics {assigned:.0f}), "
            "not counting the repartition topic's")
    c.check("show" not in s["banner"], "no connection-lost banner")
    errors = cdp.errors()
    c.check(not errors, "no script error, console error or CSP violation", "; ".join(errors))


def check_history_is_the_average(c, url):
    """Once the service is idle, its next sample is the average it reports."""
    idle_ms = time.time() * 1000
    st = wait_until("a sample taken after the service went idle", 2 * HISTORY_STEP_S + 5,
                    lambda: (lambda x: x if x["average_history"] and x["average_history"][-1][0] > idle_ms else None)(
                        api_status(url)), 0.5)
    want = metric_sum(metrics(url), "leadscore_average_score")
    got = st["average_history"][-1][1] if st else None
    # Scores decay between the sample and the scrape (half-lives of days): 0.01 covers seconds.
    c.check(got is not None and abs(got - want) <= 0.01,
            f"the newest sample of the history is the average score ({got} = leadscore_average_score {want}, "
            "within 0.01)")


def run(c, kids, kafka, args):
    if not shutil.which(args.chromium):
        c.must(False, f"{args.chromium} is installed")
    check_demo(c, kids, args)
    url, gen, tx_id = start_pipeline(c, kids, kafka, args)
    c.must(wait_until("transitions", 40, lambda: metric_sum(metrics(url), "leadscore_transitions_total") > 0, 0.5),
           "the pipeline publishes transitions")
    cdp = start_chromium(c, kids, args)
    open_page(c, cdp, url)
    st = wait_history(c, url, HISTORY_SAMPLES)
    check_history(c, st["average_history"], time.time() * 1000)
    check_fresh_page_control(c, cdp, url, st["average_history"])
    open_fresh_page(c, cdp, url, st["average_history"])
    take_screenshot(c, cdp, args.screenshot)
    wait_idle(c, kids, url, gen)
    s = next_poll(c, cdp)
    m = metrics(url)
    check_numbers(c, s, m)
    check_header_and_health(c, cdp, s, m, tx_id)
    check_history_is_the_average(c, url)
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
