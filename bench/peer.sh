#!/usr/bin/env bash
# The Kafka Streams peer of leadscore (issue 6): bench/peers/kafka-streams/, model bench/model.toml.
#
#   bench/peer.sh build      build the peer's jar (mvn offline when its dependencies are cached)
#   bench/peer.sh smoke      small input, every guarantee x store, output compared with leadscore
#                            replay; exits non-zero on any difference (about a minute once built)
#   bench/peer.sh catchup    catch-up throughput on a preloaded topic: one JSON line per run
#   bench/peer.sh latency    input record timestamp -> transition received, at fixed rates
#
# catchup: `leadscore generate --out` writes N events over LEADS leads (--rate 1e9: every event
#   time is "now", as in bench/kafka.sh), the peer's loader produces that file to a fresh
#   6-partition topic keyed by lead id (murmur2, as leadscore expects), then for each guarantee
#   in GUARANTEES and store in STORES the peer runs from the start of the topic with a fresh
#   application id until every record is processed and every offset committed, and prints one
#   JSON line (stdout): events, seconds (first to last record processed), events_per_s, cpu_s
#   (user+system of the JVM, start-up and JIT included, at the moment all offsets are committed),
#   cpu_s_per_million, peak_rss_mib (VmHWM), startup_s, all_committed_s, mode, store, the
#   counters, and "equal" (true/false; null when COMPARE is empty): the peer's output topic, read
#   read_committed, compared by compare.py with `leadscore replay --until <the peer's clock at
#   the end>` of the same file.
# latency: for each rate in RATES, DURATION_S s of `leadscore generate --brokers --rate R` (real
#   time, LAT_LEADS leads) into a fresh topic while the peer (the first of GUARANTEES and STORES)
#   consumes it live and examples/latency_probe.rs reads its output topic (read_committed): the
#   same probe and figures as bench/kafka.sh latency.
#
# Environment: N (catchup 1000000, smoke 20000), LEADS (300000, smoke 2000), SEED (1),
#   GUARANTEES ("exactly_once_v2 at_least_once"), STORES ("memory rocksdb"), COMPARE (1: dump and
#   compare each catch-up run; empty: skip), THREADS (2), COMMIT_MS (100), CACHE_MIB (64),
#   ROCKSDB_MIB (256), LINGER_MS (5), PEER_JAVA_OPTS (-Xms512m -Xmx4g), RATES ("10000 50000"),
#   DURATION_S (30), LAT_LEADS (10000), EVENTS (catchup/smoke: an existing JSON-lines file to use
#   instead of generating one), KAFKA_PORT, KAFKA_HOME_DIR (scripts/kafka's).
# Uses the local broker (scripts/kafka start if it is not running; stopped at the end only if
# started here). Topics and application ids start with bench-peer-<run id>-; all are deleted at
# the end. Raw data (events, outputs, logs) stays in target/bench-data/peer/<run id>/.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-}
case "$MODE" in build | smoke | catchup | latency) ;; *)
  sed -n '2,8p' "$0" >&2
  exit 2
  ;;
esac
if [[ "$MODE" == smoke ]]; then
  N=${N:-20000}
  LEADS=${LEADS:-2000}
  COMPARE=1
else
  N=${N:-1000000}
  LEADS=${LEADS:-300000}
  COMPARE=${COMPARE-1}
fi
SEED=${SEED:-1}
GUARANTEES=${GUARANTEES:-exactly_once_v2 at_least_once}
STORES=${STORES:-memory rocksdb}
THREADS=${THREADS:-2}
COMMIT_MS=${COMMIT_MS:-100}
CACHE_MIB=${CACHE_MIB:-64}
ROCKSDB_MIB=${ROCKSDB_MIB:-256}
LINGER_MS=${LINGER_MS:-5}
PEER_JAVA_OPTS=${PEER_JAVA_OPTS:--Xms512m -Xmx4g}
RATES=${RATES:-10000 50000}
DURATION_S=${DURATION_S:-30}
LAT_LEADS=${LAT_LEADS:-10000}
BROKERS=127.0.0.1:${KAFKA_PORT:-9092}
KAFKA_DIR=${KAFKA_HOME_DIR:-.kafka}
PEER_DIR=bench/peers/kafka-streams
JAR=$PEER_DIR/target/leadscore-streams-peer.jar
MODEL=bench/model.toml
BIN=target/release/leadscore
PROBE=target/release/examples/latency_probe
RUN_ID="$(date +%s)$$"
PREFIX="bench-peer-$RUN_ID"
DATA="target/bench-data/peer/$RUN_ID"

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

build_peer() {
  command -v mvn >/dev/null || { log "needs Maven (apt-get install -y maven) and JDK 17"; exit 1; }
  if [[ -f "$JAR" ]] && [[ -z "$(find "$PEER_DIR/src" "$PEER_DIR/pom.xml" -newer "$JAR" 2>/dev/null | head -1)" ]]; then
    return
  fi
  log "building the peer ($PEER_DIR)"
  # Offline first: no network round trips once ~/.m2 holds the dependencies.
  (cd "$PEER_DIR" && { mvn -B -q -o package -DskipTests 2>/dev/null || mvn -B -q package -DskipTests; })
}

if [[ "$MODE" == build ]]; then
  build_peer
  log "built $JAR"
  exit 0
fi

mkdir -p "$DATA"
for tool in python3 java cargo; do
  command -v "$tool" >/dev/null || { log "needs $tool"; exit 1; }
done
build_peer
log "building leadscore (release; not timed)"
if [[ "$MODE" == latency ]]; then
  cargo build --release --quiet --bin leadscore --example latency_probe
else
  cargo build --release --quiet --bin leadscore
fi
"$BIN" check --model "$MODEL" >/dev/null

STARTED_KAFKA=0
if ! scripts/kafka status >/dev/null 2>&1; then
  log "starting the local Kafka broker"
  scripts/kafka start >/dev/null
  STARTED_KAFKA=1
fi

PIDS=()  # background processes started here, stopped by pid in cleanup
TOPICS=0 # 1 once a topic may exist
forget_pid() {
  local p keep=()
  for p in "${PIDS[@]}"; do [[ "$p" == "$1" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}
stop_pid() { # stop_pid PID [SECONDS]: SIGTERM, wait, then SIGKILL; reap
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
    log "deleting topics $PREFIX-* (inputs, outputs and the peer's changelogs)"
    scripts/kafka topics --delete --topic "$PREFIX-.*" >/dev/null 2>&1 || log "topic deletion failed"
  fi
  if ((STARTED_KAFKA)); then scripts/kafka stop || true; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

create_topic() { # create_topic NAME PARTITIONS [CONFIG...]
  local name=$1 parts=$2
  shift 2
  TOPICS=1
  scripts/kafka topics --create --topic "$name" --partitions "$parts" "$@" >/dev/null
}

peer() { # peer ARGS...: the peer's jar
  # shellcheck disable=SC2086 # PEER_JAVA_OPTS is a list of options
  java $PEER_JAVA_OPTS -jar "$JAR" "$@"
}

peer_run_args() { # peer_run_args NAME GUARANTEE STORE IN: the flags of one `run`
  echo --brokers "$BROKERS" --input "$4" --output "$PREFIX-$1-out" --dead-letters "$PREFIX-$1-dlq" \
    --application-id "$PREFIX-$1" --model "$MODEL" --guarantee "$2" --store "$3" --threads "$THREADS" \
    --commit-interval-ms "$COMMIT_MS" --cache-mib "$CACHE_MIB" --rocksdb-mib "$ROCKSDB_MIB" --linger-ms "$LINGER_MS"
}

# --- catch-up ---------------------------------------------------------------------------------
prepare_input() { # sets EVENTS_FILE and IN: the events as a file and preloaded on a topic
  IN="$PREFIX-in"
  if [[ -n "${EVENTS:-}" ]]; then
    EVENTS_FILE=$EVENTS
  else
    EVENTS_FILE="$DATA/events.jsonl"
    # Event times at "now" (--rate 1e9), so that `run`'s future_timestamp check, on the wall
    # clock, passes, and the whole input spans a second or so of event time.
    "$BIN" generate --out "$EVENTS_FILE" --count "$N" --leads "$LEADS" --seed "$SEED" --rate 1e9 \
      --start "$(date +%s%3N)"
  fi
  create_topic "$IN" 6
  log "loading $(wc -l <"$EVENTS_FILE") lines of $EVENTS_FILE into $IN (keyed by lead id, murmur2)"
  peer load --brokers "$BROKERS" --topic "$IN" "$EVENTS_FILE" >"$DATA/load.json" 2>"$DATA/load.log" ||
    { cat "$DATA/load.log" >&2; exit 1; }
  log "loaded: $(cat "$DATA/load.json")"
}

DIFFERENCES=0
catchup_run() { # catchup_run GUARANTEE STORE: one run over the preloaded topic; prints its JSON line
  local g=$1 s=$2 name="$1-$2" out
  out="$PREFIX-$name-out"
  create_topic "$out" 6
  create_topic "$PREFIX-$name-dlq" 1
  log "peer run: $g, $s store (load average $(loadavg))"
  # shellcheck disable=SC2046 # the flags are words
  if ! timeout 900 java $PEER_JAVA_OPTS -jar "$JAR" run $(peer_run_args "$name" "$g" "$s" "$IN") --exit-at-end \
    >"$DATA/$name.json" 2>"$DATA/$name.log"; then
    log "the peer failed; its log:"
    tail -50 "$DATA/$name.log" >&2
    exit 1
  fi
  local equal=null
  if [[ -n "$COMPARE" ]]; then
    peer dump --brokers "$BROKERS" --topic "$out" --out "$DATA/$name-out.jsonl" >/dev/null 2>"$DATA/$name-dump.log" ||
      { cat "$DATA/$name-dump.log" >&2; exit 1; }
    local clock
    clock=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["clock_ms"])' "$DATA/$name.json")
    # Decay-driven crossings follow the wall clock in the peer (as in `leadscore run`) and the
    # watermark in replay: --until the peer's clock when it had processed everything.
    "$BIN" replay --model "$MODEL" --until "$clock" --summary "$DATA/$name-ref-summary.json" "$EVENTS_FILE" \
      >"$DATA/$name-ref.jsonl"
    if python3 "$PEER_DIR/compare.py" "$DATA/$name-ref.jsonl" "$DATA/$name-out.jsonl" >"$DATA/$name-compare.txt"; then
      equal=true
    else
      equal=false
      DIFFERENCES=$((DIFFERENCES + 1))
    fi
    sed 's/^/  /' "$DATA/$name-compare.txt" >&2
  fi
  python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); r["equal"] = json.loads(sys.argv[2]); print(json.dumps(r))' \
    "$DATA/$name.json" "$equal"
}

catchup() {
  prepare_input
  local g s
  for g in $GUARANTEES; do
    for s in $STORES; do
      catchup_run "$g" "$s"
    done
  done
}

# --- latency ----------------------------------------------------------------------------------
latency_rate() { # latency_rate RATE
  local rate=$1 count=$(($1 * DURATION_S)) name="lat$1" g s pid probe
  g=${GUARANTEES%% *}
  s=${STORES%% *}
  local in="$PREFIX-$name-in" out="$PREFIX-$name-out"
  echo "== latency at $rate events/s for $DURATION_S s ($count events, $LAT_LEADS leads; peer $g, $s store)"
  create_topic "$in" 6
  create_topic "$out" 6
  create_topic "$PREFIX-$name-dlq" 1
  # shellcheck disable=SC2046,SC2086
  java $PEER_JAVA_OPTS -jar "$JAR" run $(peer_run_args "$name" "$g" "$s" "$in") --exit-at-end \
    --expect-records "$count" >"$DATA/$name.json" 2>"$DATA/$name.log" &
  pid=$!
  PIDS+=("$pid")
  local deadline=$((SECONDS + 90))
  until grep -q "peer: running" "$DATA/$name.log"; do
    kill -0 "$pid" 2>/dev/null || { log "the peer exited:"; tail -30 "$DATA/$name.log" >&2; exit 1; }
    ((SECONDS < deadline)) || { log "the peer did not start within 90 s"; exit 1; }
    sleep 0.2
  done
  "$PROBE" --brokers "$BROKERS" --max-s $((DURATION_S + 240)) --output-topic "$out" --input-topic "$in" \
    --csv "$DATA/$name-probe.csv" >"$DATA/$name-probe.json" 2>"$DATA/$name-probe.log" &
  probe=$!
  PIDS+=("$probe")
  deadline=$((SECONDS + 30))
  until grep -q "ready" "$DATA/$name-probe.log"; do
    ((SECONDS < deadline)) || { log "probe not ready within 30 s"; exit 1; }
    sleep 0.1
  done
  log "generating $count events at $rate/s (load average $(loadavg))"
  timeout $((DURATION_S + 120)) "$BIN" generate --brokers "$BROKERS" --topic "$in" --rate "$rate" --count "$count" \
    --leads "$LAT_LEADS" --seed "$SEED" 2>"$DATA/$name-generate.log"
  # The peer exits by itself once it has processed and committed every record.
  deadline=$((SECONDS + 180))
  while kill -0 "$pid" 2>/dev/null; do
    ((SECONDS < deadline)) || { log "the peer did not finish within 180 s"; exit 1; }
    sleep 0.2
  done
  wait "$pid" || { log "the peer failed:"; tail -30 "$DATA/$name.log" >&2; exit 1; }
  forget_pid "$pid"
  sleep 1
  kill -TERM "$probe"
  wait "$probe" || { log "probe failed"; cat "$DATA/$name-probe.log" >&2; exit 1; }
  forget_pid "$probe"
  cat "$DATA/$name.json"
  python3 - "$DATA/$name-probe.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"probe: {r['transitions']} transitions received, {r['no_trigger']} without a trigger (decay), "
      f"{r['unmatched']} not matched to an input record, {r['late_excluded_from_at']} late (excluded from 'at')")
for key, label in [("input_to_receive_ms", "peer: input record timestamp -> transition received"),
                   ("input_to_send_ms", "  of which: input timestamp -> the peer sends (output timestamp)"),
                   ("send_to_receive_ms", "  of which: the peer sends -> probe receives"),
                   ("at_to_receive_ms", "  ('at' method: event time -> transition received)")]:
    s = r.get(key)
    if s and s["count"]:
        print(f"{label}: n={s['count']} p50 {s['p50']:.1f} ms, p99 {s['p99']:.1f} ms, p99.9 {s['p999']:.1f} ms, "
              f"max {s['max']:.1f} ms, mean {s['mean']:.2f} ms, over 10 ms {s['over_10ms'] / s['count']:.1%}")
EOF
}

echo "run id $RUN_ID; raw data in $DATA; $(nproc) cpus; load average $(loadavg); $(java -version 2>&1 | head -1)" >&2
case "$MODE" in
  smoke)
    t0=$SECONDS
    catchup
    if ((DIFFERENCES)); then
      log "smoke: FAILED: $DIFFERENCES run(s) differ from leadscore replay (see above and $DATA)"
      exit 1
    fi
    log "smoke: ok: every run equal to leadscore replay ($((SECONDS - t0)) s)"
    ;;
  catchup)
    catchup
    if ((DIFFERENCES)); then
      log "$DIFFERENCES run(s) differ from leadscore replay: their figures compare different jobs"
      exit 1
    fi
    ;;
  latency)
    for r in $RATES; do latency_rate "$r"; done
    ;;
esac
