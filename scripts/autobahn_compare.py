#!/usr/bin/env python3
"""Reduce a kosoku/Autobahn index.json to {case_id: {behavior, behaviorClose}} and check it.

Usage:
    autobahn_compare.py INDEX_JSON EXPECTED_JSON            compare, exit 1 on any problem
    autobahn_compare.py INDEX_JSON EXPECTED_JSON --update   write EXPECTED_JSON from INDEX_JSON

index.json, as kosoku (and the original Autobahn TestSuite) writes it, is
    {AGENT: {CASE_ID: {"behavior": ..., "behaviorClose": ..., "remoteCloseCode": ...,
                       "duration": MS, "reportfile": ...}}}
where AGENT is the server's `Server` header. The expected file is the reduced map,
keyed by case id in numeric order (1.1.2 before 1.1.10).

Two checks, both must pass:
  1. every case's behavior and behaviorClose is OK or INFORMATIONAL (the target;
     kosoku itself exits 0 on NON-STRICT, so its exit code is not enough);
  2. the reduced map equals the expected file exactly (same case set, same verdicts),
     so a case that regresses from OK to INFORMATIONAL fails CI too.
--update writes the file, prints the same summary, and still exits 1 when a case is
not OK/INFORMATIONAL, so a bad baseline is never written silently.
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

ACCEPTED = ("OK", "INFORMATIONAL")
FIELDS = ("behavior", "behaviorClose")


def case_key(case_id: str) -> list[int]:
    return [int(p) for p in case_id.split(".")]


def reduce_index(path: Path) -> tuple[str, dict[str, dict[str, str]], dict[str, int]]:
    index = json.loads(path.read_text())
    if not isinstance(index, dict) or len(index) != 1:
        agents = list(index) if isinstance(index, dict) else index
        sys.exit(f"autobahn: {path}: expected exactly one agent, found {agents!r}")
    (agent, cases), = index.items()
    reduced = {}
    durations = {}
    for case_id in sorted(cases, key=case_key):
        entry = cases[case_id]
        reduced[case_id] = {f: entry[f] for f in FIELDS}
        durations[case_id] = entry.get("duration") or 0
    return agent, reduced, durations


def dump(cases: dict[str, dict[str, str]]) -> str:
    # One case per line keeps diffs of the committed file readable.
    lines = [
        f"  {json.dumps(cid)}: {json.dumps(cases[cid], sort_keys=False)}"
        for cid in sorted(cases, key=case_key)
    ]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def summary(agent: str, cases: dict[str, dict[str, str]], durations: dict[str, int]) -> None:
    print(f"autobahn: agent {agent!r}, {len(cases)} cases")
    for field in FIELDS:
        counts = collections.Counter(c[field] for c in cases.values())
        text = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        print(f"  {field:13} {text}")
    slow = sorted(durations.items(), key=lambda kv: -kv[1])[:5]
    print("  slowest       " + ", ".join(f"{cid} {ms} ms" for cid, ms in slow))


def not_accepted(cases: dict[str, dict[str, str]]) -> list[str]:
    bad = []
    for cid, verdict in cases.items():
        if any(verdict[f] not in ACCEPTED for f in FIELDS):
            bad.append(f"{cid}: behavior {verdict['behavior']}, behaviorClose {verdict['behaviorClose']}")
    return bad


def diff(actual: dict[str, dict[str, str]], expected: dict[str, dict[str, str]]) -> list[str]:
    out = []
    for cid in sorted(set(actual) | set(expected), key=case_key):
        if cid not in actual:
            out.append(f"{cid}: expected {expected[cid]}, but the case did not run")
        elif cid not in expected:
            out.append(f"{cid}: got {actual[cid]}, but the case is not in the expected file")
        elif actual[cid] != expected[cid]:
            changes = ", ".join(
                f"{f} {expected[cid].get(f)} -> {actual[cid].get(f)}"
                for f in FIELDS
                if actual[cid].get(f) != expected[cid].get(f)
            )
            out.append(f"{cid}: {changes}")
    return out


def main(argv: list[str]) -> int:
    args = [a for a in argv if a != "--update"]
    update = len(args) != len(argv)
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    index_path, expected_path = Path(args[0]), Path(args[1])
    agent, actual, durations = reduce_index(index_path)
    summary(agent, actual, durations)

    bad = not_accepted(actual)
    if bad:
        print(f"autobahn: {len(bad)} case(s) not OK/INFORMATIONAL:")
        for line in bad:
            print(f"  {line}")
        print(f"  (details: {index_path.parent}/index.html)")

    if update:
        expected_path.parent.mkdir(parents=True, exist_ok=True)
        expected_path.write_text(dump(actual))
        print(f"autobahn: wrote {expected_path}")
        return 1 if bad else 0

    if not expected_path.exists():
        print(f"autobahn: expected file {expected_path} does not exist (run with --update)")
        return 1
    expected = json.loads(expected_path.read_text())
    differences = diff(actual, expected)
    if differences:
        print(f"autobahn: {len(differences)} case(s) differ from {expected_path}:")
        for line in differences:
            print(f"  {line}")
    else:
        print(f"autobahn: results match {expected_path}")
    return 1 if (bad or differences) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
