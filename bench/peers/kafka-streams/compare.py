#!/usr/bin/env python3
"""Checks that a peer's transitions equal leadscore's, record for record.

    compare.py REFERENCE.jsonl CANDIDATE.jsonl [--examples N] [--allow-repeats] [--no-decay]

REFERENCE is `leadscore replay --model bench/model.toml EVENTS.jsonl` (or a dump of leadscore's
output topic); CANDIDATE is the peer's output topic, dumped read_committed. Both are JSON lines of
spec section 5 in any order: records are matched by `id` (`<lead_id>:<model>:<n>`).

For each id, these must be equal: type, lead_id, model, model_version, at, threshold, trigger
(event_id and type, or null), fit_rules, and the numbers score, breakdown.fit, breakdown.fixed,
breakdown.engagement and every breakdown.groups value, compared as parsed doubles (so `1e-05` and
`1.0E-5` are equal, and nothing else is: no tolerance).

An id present twice in a file is a difference, unless --allow-repeats and the copies are equal
(at-least-once delivery may repeat a transition after a crash; the benchmark's runs do not crash).

With --no-decay, a decay-driven transition (trigger null) in either file is a difference too:
bench/run's Kafka inputs and model are built so that none can happen (bench/model.toml), because
`run` fires them on the wall clock and `replay` on the watermark.

Prints one summary line per check and up to N examples (default 5) of each kind of difference.
Exit status: 0 when equal, 1 when not, 2 on bad input.
"""
import argparse
import json
import sys


def load(path, allow_repeats):
    records, repeats, bad = {}, [], 0
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                rid = r["id"]
            except (ValueError, KeyError, TypeError):
                bad += 1
                continue
            if rid in records:
                if not (allow_repeats and records[rid] == r):
                    repeats.append(rid)
                continue
            records[rid] = r
    return records, repeats, bad


NUMBERS = ("score", "threshold")
BREAKDOWN_NUMBERS = ("fit", "fixed", "engagement")
EXACT = ("type", "lead_id", "model", "model_version", "at", "trigger")


def num(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def differences(a, b):
    """Field paths where the two records differ."""
    out = []
    for k in EXACT:
        if a.get(k) != b.get(k):
            out.append(k)
    for k in NUMBERS:
        if num(a.get(k)) != num(b.get(k)):
            out.append(k)
    ba, bb = a.get("breakdown") or {}, b.get("breakdown") or {}
    for k in BREAKDOWN_NUMBERS:
        if num(ba.get(k)) != num(bb.get(k)):
            out.append("breakdown." + k)
    ga, gb = ba.get("groups") or {}, bb.get("groups") or {}
    for g in sorted(set(ga) | set(gb)):
        if num(ga.get(g)) != num(gb.get(g)):
            out.append("breakdown.groups." + g)
    if ba.get("fit_rules") != bb.get("fit_rules"):
        out.append("breakdown.fit_rules")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("reference")
    ap.add_argument("candidate")
    ap.add_argument("--examples", type=int, default=5)
    ap.add_argument("--allow-repeats", action="store_true")
    ap.add_argument("--no-decay", action="store_true")
    args = ap.parse_args()
    try:
        ref, ref_rep, ref_bad = load(args.reference, args.allow_repeats)
        cand, cand_rep, cand_bad = load(args.candidate, args.allow_repeats)
    except OSError as e:
        print(f"compare: {e}", file=sys.stderr)
        return 2

    missing = sorted(set(ref) - set(cand))
    extra = sorted(set(cand) - set(ref))
    differing = []
    for rid in sorted(set(ref) & set(cand)):
        d = differences(ref[rid], cand[rid])
        if d:
            differing.append((rid, d))

    decay_ref = sum(1 for r in ref.values() if r.get("trigger") is None)
    decay_cand = sum(1 for r in cand.values() if r.get("trigger") is None)
    kinds = {}
    for r in ref.values():
        kinds[r.get("type")] = kinds.get(r.get("type"), 0) + 1
    print(f"reference: {len(ref)} transitions ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))}; "
          f"{decay_ref} decay-driven) from {args.reference}")
    print(f"candidate: {len(cand)} transitions ({decay_cand} decay-driven) from {args.candidate}")
    total = len(missing) + len(extra) + len(differing) + len(ref_rep) + len(cand_rep) + ref_bad + cand_bad
    if args.no_decay:
        total += decay_ref + decay_cand
    print(f"differences: {total} (missing from candidate {len(missing)}, extra in candidate {len(extra)}, "
          f"same id with different content {len(differing)}, repeated ids {len(ref_rep)} / {len(cand_rep)}, "
          f"unreadable lines {ref_bad} / {cand_bad}"
          + (f", decay-driven {decay_ref} / {decay_cand}" if args.no_decay else "") + ")")
    n = args.examples
    for rid in missing[:n]:
        print(f"  missing: {json.dumps(ref[rid], separators=(',', ':'))}")
    for rid in extra[:n]:
        print(f"  extra:   {json.dumps(cand[rid], separators=(',', ':'))}")
    for rid, d in differing[:n]:
        print(f"  differ in {', '.join(d)}:")
        print(f"    reference: {json.dumps(ref[rid], separators=(',', ':'))}")
        print(f"    candidate: {json.dumps(cand[rid], separators=(',', ':'))}")
    for rid in (ref_rep + cand_rep)[:n]:
        print(f"  repeated id: {rid}")
    print("EQUAL" if total == 0 else "NOT EQUAL")
    return 0 if total == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
