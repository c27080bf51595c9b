#!/usr/bin/env bash
# Replay throughput and memory per lead (issue 2's figures, recorded in docs/performance.md).
#
#   bench/replay.sh [EVENTS] [LEADS]       default 10000000 events over 1000000 leads
#   MEM_LEADS=10000000 bench/replay.sh     leads for the memory runs (default 10M)
#   PARTS="throughput breakdown memory"    which parts to run (default: all three)
#
# Throughput: `leadscore replay` single-threaded on a generated file (read from the page cache;
# the file is generated once into target/bench-data and reused), events/s = accepted+rejected
# lines / wall seconds. Memory: peak RSS (GNU time) of replays where every lead gets exactly one
# event (round robin), minus the peak RSS of a replay of one event, divided by the leads tracked.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-10000000}
LEADS=${2:-1000000}
MEM_LEADS=${MEM_LEADS:-10000000}
DATA=target/bench-data
mkdir -p "$DATA"
command -v /usr/bin/time >/dev/null || { echo "needs GNU time: apt-get install -y time" >&2; exit 1; }
cargo build --release --quiet
BIN=target/release/leadscore
file="$DATA/events-$EVENTS-$LEADS.jsonl"
if [ ! -s "$file" ]; then
  echo "generating $file"
  $BIN generate --count "$EVENTS" --leads "$LEADS" --seed 1 --rate 2000 --out "$file"
fi
bytes=$(stat -c %s "$file")
cat "$file" > /dev/null # into the page cache: measure parsing and scoring, not the disk

run() { # run LABEL MODEL INPUT -> prints wall seconds and max RSS KiB
  local out
  out=$( { /usr/bin/time -f "%e %M" "$BIN" replay --model "$2" --summary "$DATA/summary-$1.json" "$3" > "$DATA/transitions-$1.jsonl"; } 2>&1 | tail -n 1)
  echo "$out"
}

PARTS=${PARTS:-throughput breakdown memory}
part() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
echo "== machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
if part throughput; then
echo "== throughput: $EVENTS events over $LEADS leads ($((bytes / 1024 / 1024)) MiB)"
for model in examples/model.toml examples/model-nofit.toml; do
  best=""
  for i in 1 2 3; do
    read -r secs rss < <(run "tp" "$model" "$file")
    if [ -z "$best" ] || awk "BEGIN{exit !($secs < $best)}"; then best=$secs; fi
  done
  lines=$(python3 -c "import json;s=json.load(open('$DATA/summary-tp.json'));print(s['lines'])")
  python3 -c "print(f'replay {\"$model\"}: best of 3 {$best:.2f} s, {$lines/$best/1e6:.2f} M lines/s, {$bytes/$best/2**20:.0f} MiB/s')"
done

fi

if part breakdown; then
  # Where the time goes, on the first million lines: the full model; the same lines without
  # event ids (no dedup); a model with no rules (decode, lead lookup and clock only).
  head -n 1000000 "$file" > "$DATA/1m.jsonl"
  LC_ALL=C sed -E 's/,"event_id":"e-[0-9]+"//' "$DATA/1m.jsonl" > "$DATA/1m-noid.jsonl"
  printf 'name = "empty"\nversion = "1"\n[score]\nqualify_at = 60.0\nhalf_life = "14d"\n' > "$DATA/empty.toml"
  echo "== breakdown: 1000000 lines"
  for spec in "examples/model.toml 1m full-model" "examples/model.toml 1m-noid full-model-no-event-ids" \
              "$DATA/empty.toml 1m-noid no-rules-no-event-ids"; do
    set -- $spec
    best=""
    for i in 1 2 3; do
      read -r secs rss < <(run bd "$1" "$DATA/$2.jsonl")
      if [ -z "$best" ] || awk "BEGIN{exit !($secs < $best)}"; then best=$secs; fi
    done
    python3 -c "print(f'{\"$3\"}: best of 3 {$best:.2f} s, {1e6/$best/1e6:.2f} M lines/s')"
  done
fi

if part memory; then
echo "== memory per lead: $MEM_LEADS leads, one event each"
one="$DATA/one.jsonl"
echo '{"lead_id":"x","type":"login","timestamp":"2026-12-03T00:00:00Z"}' > "$one"
for ids in 0 1; do
  mfile="$DATA/mem-$MEM_LEADS-ids$ids.jsonl"
  [ -s "$mfile" ] || $BIN generate --count "$MEM_LEADS" --leads "$MEM_LEADS" --round-robin --seed 2 \
      --malformed 0 --duplicates 0 --late 0 --event-ids "$ids" --rate 100000 --out "$mfile"
  for model in examples/model-nofit.toml examples/model.toml; do
    read -r _ base < <(run base "$model" "$one")
    read -r secs rss < <(run mem "$model" "$mfile")
    leads=$(python3 -c "import json;print(json.load(open('$DATA/summary-mem.json'))['leads'])")
    python3 -c "print(f'{\"$model\"} event_ids={$ids}: {$leads} leads, peak RSS {$rss/1024:.0f} MiB, base {$base/1024:.1f} MiB, {($rss-$base)*1024/$leads:.1f} bytes/lead, {$secs:.1f} s')"
  done
done
fi
