#!/usr/bin/env python3
"""Validates edgepush's GET /metrics body (on stdin) with Prometheus' own text parser.

    curl -s http://127.0.0.1:8081/metrics | python3 scripts/check_metrics.py \
        [--at-least edgepush_handshakes_total=3 ...]

Checks: the text parses with prometheus_client's parser; every family has a HELP text and a
declared TYPE (gauge, counter or histogram) and one # TYPE line; every metric in EXPECTED
exists with its type and label names; every sample value is a finite, non-negative number; no
series (name and labels) appears twice; histogram buckets are cumulative and end in +Inf =
_count; and each --at-least NAME=N holds (N against the sum over NAME's label sets).
Prints what it found and exits 0, or prints every problem and exits 1 (2 if
prometheus_client is missing).

tests/metrics_format.rs runs this against a live server after some traffic.
"""

import argparse
import math
import sys

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:  # pragma: no cover - reported, not tested
    print("check_metrics.py: prometheus_client is not installed", file=sys.stderr)
    sys.exit(2)

# Exposed metric name (as on its `# TYPE` line) -> (type, label names of its samples, not
# counting a histogram's `le`). Dashboards and alerts rely on these.
EXPECTED = {
    "edgepush_connections": ("gauge", set()),
    "edgepush_worker_connections": ("gauge", {"worker"}),
    "edgepush_draining": ("gauge", set()),
    "edgepush_subscriptions": ("gauge", set()),
    "edgepush_channels": ("gauge", set()),
    "edgepush_user_streams": ("gauge", set()),
    "edgepush_history_messages": ("gauge", set()),
    "edgepush_history_bytes": ("gauge", set()),
    "edgepush_accepted_total": ("counter", set()),
    "edgepush_handshakes_total": ("counter", set()),
    "edgepush_handshake_failures_total": ("counter", {"reason"}),
    "edgepush_protocol_errors_total": ("counter", set()),
    "edgepush_messages_in_total": ("counter", set()),
    "edgepush_messages_out_total": ("counter", set()),
    "edgepush_deliveries_total": ("counter", set()),
    "edgepush_bytes_in_total": ("counter", set()),
    "edgepush_bytes_out_total": ("counter", set()),
    "edgepush_slow_consumer_closes_total": ("counter", set()),
    "edgepush_pong_timeouts_total": ("counter", set()),
    "edgepush_close_codes_sent_total": ("counter", {"code"}),
    "edgepush_close_codes_received_total": ("counter", {"code"}),
    "edgepush_accept_pauses_total": ("counter", set()),
    "edgepush_api_overloaded_total": ("counter", set()),
    "edgepush_publish_latency_seconds": ("histogram", set()),
}


def parse_at_least(spec):
    name, sep, value = spec.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=N, got {spec!r}")
    try:
        return name, float(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{spec!r}: {e}") from e


def exposed_name(family):
    """The name on the family's `# TYPE` line: the parser strips `_total` from counters."""
    if family.type == "counter" and any(x.name == family.name + "_total" for x in family.samples):
        return family.name + "_total"
    return family.name


def check_histogram(family, problems):
    """Per label set: buckets cumulative in `le` order, a +Inf bucket equal to _count."""
    series = {}
    for sample in family.samples:
        labels = {k: v for k, v in sample.labels.items() if k != "le"}
        key = tuple(sorted(labels.items()))
        entry = series.setdefault(key, {"buckets": [], "count": None, "sum": None})
        if sample.name == family.name + "_bucket":
            if "le" not in sample.labels:
                problems.append(f"{family.name}_bucket without le")
                continue
            entry["buckets"].append((float(sample.labels["le"]), sample.value))
        elif sample.name == family.name + "_count":
            entry["count"] = sample.value
        elif sample.name == family.name + "_sum":
            entry["sum"] = sample.value
    for key, entry in series.items():
        where = f"{family.name}{dict(key) or ''}"
        buckets = sorted(entry["buckets"])
        if not buckets or buckets[-1][0] != math.inf:
            problems.append(f"{where}: no le=\"+Inf\" bucket")
            continue
        counts = [count for _, count in buckets]
        if counts != sorted(counts):
            problems.append(f"{where}: bucket counts are not cumulative: {buckets}")
        if entry["count"] is None or entry["sum"] is None:
            problems.append(f"{where}: _count or _sum missing")
        elif entry["count"] != buckets[-1][1]:
            problems.append(f"{where}: _count {entry['count']:g} != +Inf bucket {buckets[-1][1]:g}")


def check(text, at_least):
    problems = []
    if not text.strip():
        return ["empty body"]
    if not text.endswith("\n"):
        problems.append("the body does not end with a newline")
    type_lines = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    for name in sorted({n for n in type_lines if type_lines.count(n) > 1}):
        problems.append(f"{name}: more than one # TYPE line")
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as e:  # the parser raises ValueError and friends
        return [f"prometheus_client could not parse the text: {e!r}"]

    exposed = {}  # exposed name -> (type, label names)
    seen = set()  # (sample name, labels): each series once
    totals = {}  # sample name -> sum over its label sets
    for family in families:
        name = exposed_name(family)
        if not name.startswith("edgepush_"):
            problems.append(f"{name}: not in the edgepush_ namespace")
        if family.type not in ("gauge", "counter", "histogram"):
            problems.append(f"{name}: type {family.type!r} (no or unexpected # TYPE)")
        if not family.documentation:
            problems.append(f"{name}: no # HELP text")
        if not family.samples:
            problems.append(f"{name}: family without samples")
        labels = set()
        for sample in family.samples:
            labels |= set(sample.labels) - {"le"}
            value = sample.value
            series = (sample.name, tuple(sorted(sample.labels.items())))
            if series in seen:
                problems.append(f"{sample.name}{sample.labels}: appears more than once")
            seen.add(series)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                problems.append(f"{sample.name}{sample.labels}: value {value!r} is not a number")
                continue
            if not math.isfinite(value):
                problems.append(f"{sample.name}{sample.labels}: value {value!r} is not finite")
            elif value < 0:
                problems.append(f"{sample.name}{sample.labels}: negative value {value!r}")
            totals[sample.name] = totals.get(sample.name, 0) + value
        if family.type == "histogram":
            check_histogram(family, problems)
        exposed[name] = (family.type, labels)

    for name, (kind, labels) in EXPECTED.items():
        if name not in exposed:
            problems.append(f"{name}: missing")
            continue
        if exposed[name][0] != kind:
            problems.append(f"{name}: type {exposed[name][0]}, expected {kind}")
        if exposed[name][1] != labels:
            problems.append(f"{name}: labels {sorted(exposed[name][1])}, expected {sorted(labels)}")

    for name, minimum in at_least:
        if name not in totals:
            problems.append(f"{name}: missing (wanted >= {minimum:g})")
        elif totals[name] < minimum:
            problems.append(f"{name}: {totals[name]:g}, wanted >= {minimum:g}")

    if not problems:
        for name in sorted(exposed):
            print(f"{name} {exposed[name][0]} {sorted(exposed[name][1]) or ''}".rstrip())
        for name in sorted(totals):
            print(f"  {name} = {totals[name]:g}")
        print(f"ok: {len(families)} families, {len(seen)} series")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--at-least",
        metavar="NAME=N",
        type=parse_at_least,
        action="append",
        default=[],
        help="the sample NAME must be present with a value >= N (repeatable)",
    )
    args = parser.parse_args()
    problems = check(sys.stdin.read(), args.at_least)
    for problem in problems:
        print(f"check_metrics.py: {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
