#!/usr/bin/env bash
# Restore speed of the state changelog (issue 4, "Speed"; recorded in docs/performance.md).
#
#   bench/restore.sh            LEADS=10000000 PARTITIONS=6
#
# Loads LEADS changelog records (one per lead, ~190 bytes with key) into a fresh compacted topic
# on the local broker, then restores every partition with leadscore's own restore code in a
# fresh process (examples/restore_bench.rs) and prints one JSON line: leads, records, bytes,
# load_s, settle_s, restore_s, leads_per_s, peak_rss_mib (the restoring process's). Starts the
# broker (scripts/kafka start) if it is not running and stops it at the end only if it started
# it; deletes the topic at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
LEADS=${LEADS:-10000000}
PARTITIONS=${PARTITIONS:-6}
BROKERS=127.0.0.1:${KAFKA_PORT:-9092}
TOPIC="bench-restore-$(date +%s)$$"
cargo build --release --quiet --example restore_bench
STARTED=0
if ! scripts/kafka status >/dev/null 2>&1; then
  scripts/kafka start >/dev/null
  STARTED=1
fi
cleanup() {
  scripts/kafka topics --delete --topic "$TOPIC" >/dev/null 2>&1 || true
  if ((STARTED)); then scripts/kafka stop || true; fi
}
trap cleanup EXIT
echo "== restore: $LEADS leads, $PARTITIONS partitions, $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
# Loaded by one process, restored by another (a restarted instance); one JSON line of both.
ARGS=(--brokers "$BROKERS" --leads "$LEADS" --partitions "$PARTITIONS" --topic "$TOPIC")
LOADED=$(target/release/examples/restore_bench "${ARGS[@]}" --load-only | grep '^{')
RESTORED=$(target/release/examples/restore_bench "${ARGS[@]}" --skip-load | grep '^{')
python3 -c 'import json, sys; r = json.loads(sys.argv[2]); r.update(json.loads(sys.argv[1])); print(json.dumps(r))' \
  "$LOADED" "$RESTORED"
