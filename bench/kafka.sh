#!/usr/bin/env bash
# Kafka benchmarks of `leadscore run` (issue 3, "Speed"), recorded in docs/performance.md.
#
#   bench/kafka.sh [catchup|latency|all]      default: all
#
# catchup  Preloads a fresh 6-partition topic with N generated events (as fast as the producer
#          goes: --rate 1e9 keeps every event time at about "now", inside the future_timestamp
#          skew), then, in the same run, (a) examples/raw_consumer.rs, a bare rdkafka consumer
#          with leadscore's consumer settings that only counts the records, and (b) `leadscore
#          run` at_least_once with a fresh group, polling /metrics every POLL_S s until
#          leadscore_events_total + leadscore_events_rejected_total reaches N. Prints both rates,
#          their ratio, leadscore's CPU seconds and peak RSS, and the /metrics scrape times.
# latency  For each rate in RATES, DURATION_S s of `leadscore generate --rate R` (real time) into a
#          fresh topic: first with only a bare consumer reading it (the floor: what any consumer
#          sees at this rate on this machine), then with `leadscore run` consuming it live and
#          examples/latency_probe.rs reading the output topic. Prints the latency percentiles from
#          the input record's timestamp to the transition's arrival downstream, split at the
#          output record's timestamp, and leadscore's own leadscore_transition_latency_seconds.
#
# Environment: N (3000000), CATCHUP_LEADS (1000000), POLL_S (0.5), RATES ("10000 50000"),
#   DURATION_S (30), GUARANTEES ("at_least_once exactly_once": catch-up runs leadscore once per
#   processing guarantee over the same preloaded topic; latency uses the first), LAT_LEADS (10000: enough transitions for a p99.9), INPUT_TS (CreateTime, or
#   LogAppendTime: the input topic's message.timestamp.type), BASELINE (1: before each leadscore
#   run, the same traffic with only a bare consumer (no leadscore): the floor; empty: skip it),
#   KAFKA_PORT, KAFKA_CONTROLLER_PORT, KAFKA_HOME_DIR, KAFKA_JVM_OPTS (scripts/kafka's: e.g. a
#   dedicated broker on other ports; KAFKA_JVM_OPTS= gives it the full C2 JIT),
#   BENCH_LEADSCORE_BIN (the binary whose `run` is measured, to compare a patched build; default
#   target/release/leadscore, built here; the generator is always the one built here),
#   LEADSCORE_LIBRDKAFKA_* (passed to leadscore: try settings without editing src/kafka.rs).
# Starts the local broker (scripts/kafka start) if it is not running, and stops it at the end only
# if it started it. Deletes its topics at the end (they all start with bench-kafka-<run id>-).
# Raw data (metrics polls, probe CSVs, logs) stays in target/bench-data/kafka/<run id>/.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-all}
case "$MODE" in catchup | latency | all) ;; *) echo "usage: bench/kafka.sh [catchup|latency|all]" >&2; exit 2 ;; esac
N=${N:-3000000}
CATCHUP_LEADS=${CATCHUP_LEADS:-1000000}
POLL_S=${POLL_S:-0.5}
RATES=${RATES:-10000 50000}
DURATION_S=${DURATION_S:-30}
LAT_LEADS=${LAT_LEADS:-10000}
INPUT_TS=${INPUT_TS:-CreateTime}
BASELINE=${BASELINE-1}
GUARANTEES=${GUARANTEES:-at_least_once exactly_once}
BROKERS=127.0.0.1:${KAFKA_PORT:-9092}
KAFKA_DIR=${KAFKA_HOME_DIR:-.kafka}
RUN_ID="$(date +%s)$$"
PREFIX="bench-kafka-$RUN_ID"
DATA="target/bench-data/kafka/$RUN_ID"
BIN=target/release/leadscore
RUN_BIN=${BENCH_LEADSCORE_BIN:-$BIN} # the binary measured by `run` (a patched build to compare)
RAW=target/release/examples/raw_consumer
PROBE=target/release/examples/latency_probe
mkdir -p "$DATA"
for tool in curl python3 /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench/kafka.sh: needs $tool" >&2; exit 1; }
done

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
now() { date +%s.%N; }
# CPU seconds (user + system) of a pid, from /proc/<pid>/stat (CLK_TCK 100).
cpu_s() { awk '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / 100 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
peak_rss_mib() { awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo 0; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

log "building (release; not timed)"
cargo build --release --quiet --bin leadscore --example raw_consumer --example latency_probe

# --- the broker ------------------------------------------------------------------------------
STARTED_KAFKA=0
if ! scripts/kafka status >/dev/null 2>&1; then
  log "starting the local Kafka broker"
  scripts/kafka start >/dev/null
  STARTED_KAFKA=1
fi
KAFKA_PID=$(cat "$KAFKA_DIR/kafka.pid")

PIDS=()      # background processes started here, stopped by pid in cleanup
TOPICS=0     # 1 once a topic may exist
forget_pid() { # forget_pid PID: reaped, so cleanup must not signal it (the pid may be reused)
  local p keep=()
  for p in "${PIDS[@]}"; do [[ "$p" == "$1" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}
stop_pid() { # stop_pid PID [SECONDS]: SIGTERM, wait up to SECONDS, then SIGKILL; reap
  local pid=$1 secs=${2:-30} i
  if kill -TERM "$pid" 2>/dev/null; then
    for ((i = 0; i < secs * 10; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  forget_pid "$pid"
}
cleanup() {
  local rc=$? pid
  for pid in "${PIDS[@]}"; do stop_pid "$pid" 10; done
  if ((TOPICS)); then
    log "deleting topics $PREFIX-*"
    scripts/kafka topics --delete --topic "$PREFIX-.*" >/dev/null 2>&1 || log "topic deletion failed"
  fi
  if ((STARTED_KAFKA)); then scripts/kafka stop || true; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

create_topic() { # create_topic NAME PARTITIONS [CONFIG...]
  local name=$1 parts=$2; shift 2
  TOPICS=1
  scripts/kafka topics --create --topic "$name" --partitions "$parts" "$@" >/dev/null
}

# Sum of leadscore_events_total and leadscore_events_rejected_total in a /metrics text.
records_seen() { awk '/^leadscore_events_(rejected_)?total\{/ { s += $NF } END { printf "%d", s }' "$1"; }

start_leadscore() { # start_leadscore NAME IN OUT DLQ PORT [GUARANTEE]: sets LS_PID, LS_T0
  LEADSCORE_LOG=${BENCH_LEADSCORE_LOG:-warn} LEADSCORE_KAFKA_DEAD_LETTER_TOPIC="$4" LEADSCORE_KAFKA_STATE_TOPIC="$PREFIX-$1-state" \
    LEADSCORE_KAFKA_TRANSACTIONAL_ID="$PREFIX-$1" "$RUN_BIN" run --brokers "$BROKERS" \
    --processing-guarantee "${6:-at_least_once}" --input-topics "$2" --output-topic "$3" \
    --group-id "$PREFIX-$1" --listen "127.0.0.1:$5" --model examples/model.toml \
    </dev/null >"$DATA/$1-leadscore.log" 2>&1 &
  LS_PID=$!
  LS_T0=$(now)
  PIDS+=("$LS_PID")
}

wait_ready() { # wait_ready PORT SECONDS: /readyz answers 200 (partitions assigned)
  local deadline=$((SECONDS + $2))
  until curl -sf -m 1 -o /dev/null "http://127.0.0.1:$1/readyz"; do
    kill -0 "$LS_PID" 2>/dev/null || { log "leadscore exited; log:"; cat "$DATA"/*-leadscore.log >&2; exit 1; }
    ((SECONDS < deadline)) || { log "leadscore not ready within $2 s"; exit 1; }
    sleep 0.2
  done
}

machine() {
  echo "== machine"
  echo "cpu: $(nproc) x $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
    "($(systemd-detect-virt 2>/dev/null || echo unknown virt))"
  echo "memory: $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo); kernel $(uname -r)"
  echo "kafka: $(cat "$KAFKA_DIR/lib/.version" 2>/dev/null) on $BROKERS, broker pid $KAFKA_PID, JVM options:" \
    "$(tr '\0' ' ' <"/proc/$KAFKA_PID/cmdline" | grep -o -- '-X[^ ]*' | tr '\n' ' ')"
  echo "client: rdkafka-sys $(cargo tree -p rdkafka-sys --depth 0 2>/dev/null | awk '{ print $2 }') ; $(rustc --version)"
  echo "source: commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)," \
    "$(git status --porcelain -- src Cargo.toml 2>/dev/null | wc -l) uncommitted change(s) under src/ and Cargo.toml"
  echo "load average at start: $(loadavg); busiest processes:"
  ps -eo pcpu,comm --sort=-pcpu | sed -n '2,6p' | sed 's/^/  /'
}

# --- catch-up throughput ---------------------------------------------------------------------
catchup() {
  local in="$PREFIX-catchup-in" out="$PREFIX-catchup-out" dlq="$PREFIX-catchup-dlq" t0 t1 port
  echo "== catch-up: $N events, $CATCHUP_LEADS leads, 6 partitions"
  create_topic "$in" 6
  create_topic "$out" 6
  create_topic "$dlq" 1
  log "preloading $N events into $in"
  t0=$(now)
  "$BIN" generate --brokers "$BROKERS" --topic "$in" --count "$N" --rate 1e9 --leads "$CATCHUP_LEADS" \
    --seed 1 2>"$DATA/generate-catchup.log"
  t1=$(now)
  python3 -c "print(f'preload: {$N} events in {$t1 - $t0:.1f} s ({$N / ($t1 - $t0):,.0f} events/s produced, lz4, acks=all)')"

  log "raw consumer"
  echo "load average before raw consumer: $(loadavg)"
  local kcpu0 kcpu1
  kcpu0=$(cpu_s "$KAFKA_PID")
  /usr/bin/time -f "%e %M" -o "$DATA/raw.time" "$RAW" --brokers "$BROKERS" --topic "$in" --count "$N" \
    --timeout-s 300 >"$DATA/raw.json"
  kcpu1=$(cpu_s "$KAFKA_PID")
  RAW_JSON=$(cat "$DATA/raw.json")
  python3 - "$RAW_JSON" "$(cat "$DATA/raw.time")" "$kcpu0" "$kcpu1" <<'EOF'
import json, sys
r = json.loads(sys.argv[1]); wall, rss = sys.argv[2].split()
print(f"raw consumer: {r['messages']:,} records ({r['bytes'] / 2**20:.0f} MiB) in {r['consume_s']:.2f} s after the "
      f"first record (start-up {r['startup_s']:.2f} s): {r['msgs_per_s']:,.0f} msg/s; "
      f"CPU {r['cpu_s']:.1f} s, peak RSS {int(rss) / 1024:.0f} MiB; broker CPU {float(sys.argv[4]) - float(sys.argv[3]):.1f} s")
EOF

  local g
  for g in $GUARANTEES; do
    catchup_leadscore "$g" "$in" "$out" "$dlq"
  done
}

catchup_leadscore() { # catchup_leadscore GUARANTEE IN OUT DLQ: one `leadscore run` over the preloaded topic
  local g=$1 in=$2 out=$3 dlq=$4 port kcpu0 kcpu1
  echo "-- leadscore run, processing_guarantee = $g"
  log "leadscore run ($g)"
  echo "load average before leadscore: $(loadavg)"
  port=$(free_port)
  kcpu0=$(cpu_s "$KAFKA_PID")
  start_leadscore "catchup-$g" "$in" "$out" "$dlq" "$port" "$g"
  local polls="$DATA/catchup-$g-polls.tsv" seen=0 t cpu=0 rss=0 deadline=$((SECONDS + 400)) scrape
  : >"$polls"
  while ((seen < N)); do
    ((SECONDS < deadline)) || { log "leadscore did not process $N records within 400 s (last: $seen)"; exit 1; }
    kill -0 "$LS_PID" 2>/dev/null || { log "leadscore exited; log:"; cat "$DATA/catchup-$g-leadscore.log" >&2; exit 1; }
    t=$(now)
    if scrape=$(curl -s -m 2 -o "$DATA/catchup-$g-metrics.txt" -w '%{time_total}' "http://127.0.0.1:$port/metrics"); then
      seen=$(records_seen "$DATA/catchup-$g-metrics.txt")
      printf '%s\t%s\t%s\n' "$t" "$seen" "$scrape" >>"$polls"
      if ((seen >= N)); then
        cpu=$(cpu_s "$LS_PID")
        rss=$(peak_rss_mib "$LS_PID")
        break
      fi
    fi
    sleep "$POLL_S"
  done
  kcpu1=$(cpu_s "$KAFKA_PID")
  echo "load average after leadscore: $(loadavg)"
  stop_pid "$LS_PID" 60
  grep -E '^leadscore_(transitions_total|dead_letters_total|commits_total|changelog_records_total|repartitioned_records_total|events_rejected_total\{reason="(future_timestamp|duplicate)")' \
    "$DATA/catchup-$g-metrics.txt" | sed 's/^/  /'
  python3 - "$polls" "$N" "$LS_T0" "$cpu" "$rss" "$RAW_JSON" "$kcpu0" "$kcpu1" "$POLL_S" <<'EOF'
import json, sys
path, n, t0, cpu, rss, raw, k0, k1, poll = sys.argv[1:]
n, t0, cpu, rss, poll = int(n), float(t0), float(cpu), float(rss), float(poll)
rows = [tuple(map(float, l.split("\t"))) for l in open(path) if l.strip()]
raw_rate = json.loads(raw)["msgs_per_s"]
first = next(i for i, r in enumerate(rows) if r[1] > 0)
done = next(i for i, r in enumerate(rows) if r[1] >= n)
tf, sf, _ = rows[first]
td = rows[done][0]
scrapes = sorted(r[2] for r in rows)
print(f"leadscore: first records counted {tf - t0:.2f} s after the process start (start-up, group join, "
      f"assignment; {poll} s polls); all {n:,} counted by {td - t0:.2f} s")
bound = (n - sf) / (td - tf)
print(f"leadscore: {bound:,.0f} records/s from the first poll with records to the first poll with all "
      f"(a lower bound: the last interval is only partly busy) = {bound / raw_rate:.0%} of raw")
if done - 1 > first:
    tp, sp, _ = rows[done - 1]
    steady = (sp - sf) / (tp - tf)
    print(f"leadscore: {steady:,.0f} records/s between polls while busy ({sp - sf:,.0f} records in {tp - tf:.2f} s) "
          f"= {steady / raw_rate:.0%} of raw ({raw_rate:,.0f} msg/s)  <- the comparable rate")
print(f"leadscore: CPU {cpu:.1f} s user+system for {n:,} records ({cpu / n * 1e6:.2f} us/record, start-up included), "
      f"peak RSS {rss:.0f} MiB; broker CPU meanwhile {float(k1) - float(k0):.1f} s")
print(f"/metrics scrape time over {len(scrapes)} scrapes: median {scrapes[len(scrapes) // 2] * 1000:.1f} ms, "
      f"max {scrapes[-1] * 1000:.1f} ms")
EOF
}

# --- latency ---------------------------------------------------------------------------------
histogram_summary() { # histogram_summary METRICS_FILE: leadscore_transition_latency_seconds
  python3 - "$1" <<'EOF'
import re, sys
buckets = []
count = 0
for line in open(sys.argv[1]):
    m = re.match(r'leadscore_transition_latency_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
    if m:
        buckets.append((float("inf") if m.group(1) == "+Inf" else float(m.group(1)), float(m.group(2))))
    m = re.match(r'leadscore_transition_latency_seconds_count (\S+)', line)
    if m:
        count = float(m.group(1))
if not count:
    print("leadscore histogram: no observations"); sys.exit()
def q(p):  # linear interpolation inside the bucket, as Prometheus' histogram_quantile does
    target, prev_le, prev_c = p * count, 0.0, 0.0
    for le, c in buckets:
        if c >= target:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (target - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
cum = {le: c for le, c in buckets}
print(f"leadscore histogram (input record timestamp to delivery report, {count:.0f} transitions): "
      f"<=2.5 ms {cum.get(0.0025, 0) / count:.1%}, <=5 ms {cum.get(0.005, 0) / count:.1%}, "
      f"<=10 ms {cum.get(0.01, 0) / count:.1%}, <=25 ms {cum.get(0.025, 0) / count:.1%}; "
      f"histogram_quantile p50 {q(0.5) * 1000:.1f} ms, p99 {q(0.99) * 1000:.1f} ms")
EOF
}

start_probe() { # start_probe NAME ARGS...: the probe in the background, waits for "ready"; sets PROBE_PID
  local name=$1; shift
  "$PROBE" --brokers "$BROKERS" --max-s $((DURATION_S + 240)) "$@" \
    >"$DATA/$name-probe.json" 2>"$DATA/$name-probe.log" &
  PROBE_PID=$!
  PIDS+=("$PROBE_PID")
  local deadline=$((SECONDS + 30))
  until grep -q "ready" "$DATA/$name-probe.log"; do
    ((SECONDS < deadline)) || { log "probe not ready within 30 s"; cat "$DATA/$name-probe.log" >&2; exit 1; }
    sleep 0.1
  done
}

finish_probe() { # finish_probe: SIGTERM, then wait for its report (the join reads the input topic)
  kill -TERM "$PROBE_PID"
  local deadline=$((SECONDS + 200))
  while kill -0 "$PROBE_PID" 2>/dev/null; do
    ((SECONDS < deadline)) || { log "probe did not finish within 200 s"; exit 1; }
    sleep 0.2
  done
  local rc=0
  wait "$PROBE_PID" || rc=$?
  forget_pid "$PROBE_PID"
  ((rc == 0)) || { log "probe failed (exit $rc)"; exit 1; }
}

generate_live() { # generate_live NAME TOPIC RATE COUNT [LS_PID]: real-time generator; prints CPU shares
  local name=$1 topic=$2 rate=$3 count=$4 lspid=${5:-} t0 t1 k0 k1 l0=0 l1=0
  log "generating $count events at $rate/s"
  echo "load average before: $(loadavg)"
  k0=$(cpu_s "$KAFKA_PID"); [[ -n "$lspid" ]] && l0=$(cpu_s "$lspid"); t0=$(now)
  /usr/bin/time -f "%U %S" -o "$DATA/$name-generate.time" timeout $((DURATION_S + 120)) "$BIN" generate \
    --brokers "$BROKERS" --topic "$topic" --rate "$rate" --count "$count" --leads "$LAT_LEADS" --seed 1 \
    2>"$DATA/$name-generate.log"
  t1=$(now); k1=$(cpu_s "$KAFKA_PID"); [[ -n "$lspid" ]] && l1=$(cpu_s "$lspid")
  echo "load average after: $(loadavg)"
  # shellcheck disable=SC2046 # the generator's user and system seconds: two arguments
  python3 - "$count" "$t0" "$t1" "$k0" "$k1" "$l0" "$l1" $(cat "$DATA/$name-generate.time") <<'EOF'
import sys
count, t0, t1, k0, k1, l0, l1, gu, gs = map(float, sys.argv[1:])
w = t1 - t0
ls = f"leadscore {(l1 - l0) / w:.0%} of a core, " if l1 else ""
print(f"generator: {count:,.0f} events in {w:.1f} s ({count / w:,.0f}/s); CPU meanwhile: {ls}"
      f"broker {(k1 - k0) / w:.0%}, generator {(gu + gs) / w:.0%}")
EOF
}

print_latency() { # print_latency PROBE_JSON
  python3 - "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
if "transitions" in r:
    print(f"probe: {r['transitions']} transitions received, {r['no_trigger']} without a trigger (decay), "
          f"{r['unmatched']} not matched to an input record, {r['late_excluded_from_at']} late (excluded from 'at')")
for key, label in [("baseline_ms", "bare consumer: input record timestamp -> record received"),
                   ("input_to_receive_ms", "leadscore: input record timestamp -> transition received"),
                   ("input_to_send_ms", "  of which: input timestamp -> leadscore sends (output timestamp)"),
                   ("send_to_receive_ms", "  of which: leadscore sends -> probe receives"),
                   ("at_to_receive_ms", "  ('at' method: event time -> transition received)")]:
    s = r.get(key)
    if s and s["count"]:
        print(f"{label}: n={s['count']} p50 {s['p50']:.1f} ms, p99 {s['p99']:.1f} ms, p99.9 {s['p999']:.1f} ms, "
              f"max {s['max']:.1f} ms, mean {s['mean']:.2f} ms, over 10 ms {s['over_10ms'] / s['count']:.1%}")
EOF
}

latency_bare() { # latency_bare RATE: the same traffic, a bare consumer and no leadscore (the floor)
  local rate=$1 count=$(($1 * DURATION_S)) name="bare$1"
  local in="$PREFIX-$name-in"
  echo "== latency floor at $rate events/s for $DURATION_S s: generator and a bare consumer only"
  create_topic "$in" 6 --config "message.timestamp.type=$INPUT_TS"
  start_probe "$name" --input-topic "$in" --baseline-only
  generate_live "$name" "$in" "$rate" "$count"
  sleep 1
  finish_probe
  print_latency "$DATA/$name-probe.json"
}

latency_leadscore() { # latency_leadscore RATE
  local rate=$1 count=$(($1 * DURATION_S)) name="lat$1" port
  local in="$PREFIX-$name-in" out="$PREFIX-$name-out" dlq="$PREFIX-$name-dlq"
  echo "== latency at $rate events/s for $DURATION_S s ($count events, $LAT_LEADS leads, input timestamps $INPUT_TS)"
  create_topic "$in" 6 --config "message.timestamp.type=$INPUT_TS"
  create_topic "$out" 6
  create_topic "$dlq" 1
  port=$(free_port)
  start_leadscore "$name" "$in" "$out" "$dlq" "$port" "${GUARANTEES%% *}"
  wait_ready "$port" 60
  start_probe "$name" --output-topic "$out" --input-topic "$in" --csv "$DATA/$name-probe.csv"
  generate_live "$name" "$in" "$rate" "$count" "$LS_PID"
  # Wait until leadscore has counted every record, then give the last transitions a second.
  local seen=0 deadline=$((SECONDS + 120))
  while ((seen < count)); do
    ((SECONDS < deadline)) || { log "leadscore did not process $count records within 120 s (last: $seen)"; exit 1; }
    curl -s -m 2 -o "$DATA/$name-metrics.txt" "http://127.0.0.1:$port/metrics" && seen=$(records_seen "$DATA/$name-metrics.txt")
    ((seen >= count)) || sleep 0.5
  done
  sleep 1
  curl -s -m 5 -o "$DATA/$name-metrics.txt" "http://127.0.0.1:$port/metrics"
  finish_probe
  stop_pid "$LS_PID" 60
  print_latency "$DATA/$name-probe.json"
  histogram_summary "$DATA/$name-metrics.txt"
}

latency() {
  local r
  for r in $RATES; do
    if [[ -n "$BASELINE" ]]; then latency_bare "$r"; fi
    latency_leadscore "$r"
  done
}

machine
echo "run id $RUN_ID; raw data in $DATA; measured binary: $RUN_BIN"
case "$MODE" in
  catchup) catchup ;;
  latency) latency ;;
  all)
    catchup
    latency
    ;;
esac
echo "load average at the end: $(loadavg)"
