#!/usr/bin/env bash
# Before/after comparison of two edgepush binaries, interleaved in one run (timings on this
# machine are noisy: compare within a run, report ratios). For each round and each binary, a
# fresh server (--threads 1, pinned to core 0; the client on core 1) measures:
#   idle echo connections (server bytes per connection, 15,000 connections),
#   idle push connections (each its own user, subscribed to one channel; loadtest/idle_push.py),
#   echo (100 connections x 64 B x 8 in flight, 10 s: messages/s, server CPU us per message),
#   fan-out burst (5,000 subscribers x 200 API publishes of 64 B: deliveries/s, missing, dup).
# The fan-out publishes carry no idempotency_key (--no-idempotency-key): a binary from before
# keys were added refuses the field, and both binaries then do the same work.
#
#   loadtest/compare.sh OLD_BINARY NEW_BINARY [ROUNDS]     # needs target/release/edgepush-load
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OLD=$1 NEW=$2 ROUNDS=${3:-3}
L="$ROOT/target/release/edgepush-load"
PID=""
start() {
  taskset -c 0 "$1" --listen 127.0.0.1:18080 --api-listen 127.0.0.1:18081 --threads 1 --log warn 2>/dev/null &
  PID=$!
  for _ in $(seq 1 100); do
    if (exec 3<>/dev/tcp/127.0.0.1/18080) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/18081) 2>/dev/null; then break; fi
    sleep 0.1
  done
  sleep 0.3
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""; }
trap '[[ -n "$PID" ]] && kill "$PID" 2>/dev/null || true' EXIT
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
for r in $(seq 1 "$ROUNDS"); do
  for which in old new; do
    if [[ $which == old ]]; then BIN=$OLD; else BIN=$NEW; fi
    start "$BIN"
    idle=$(taskset -c 1 "$L" idle -n 15000 --hold 5s --url ws://127.0.0.1:18080/echo --server-pid "$PID" --json --timeout 3m | json 'd["server_bytes_per_conn"]')
    stop; start "$BIN"
    push=$(taskset -c 1 python3 "$ROOT/loadtest/idle_push.py" 127.0.0.1 18080 15000 "$PID")
    stop; start "$BIN"
    echo_=$(taskset -c 1 "$L" echo -c 100 --size 64 --inflight 8 --duration 10s --url ws://127.0.0.1:18080/echo --server-pid "$PID" --json --timeout 3m | json 'd["msgs_per_s"], d["server"]["cpu_us_per_msg"]')
    stop; start "$BIN"
    fan=$(taskset -c 1 "$L" fanout -n 5000 --messages 200 --size 64 --rate 0 --url "ws://127.0.0.1:18080/ws?user=load-{n}" --api http://127.0.0.1:18081 --channel bench --no-idempotency-key --server-pid "$PID" --json --timeout 3m | json 'd["deliveries_per_s"], d.get("missing"), d.get("duplicates")')
    stop
    echo "round $r $which: idle echo B/conn=$idle | $push | echo msgs/s, cpu us/msg=$echo_ | fan-out deliveries/s, missing, dup=$fan"
  done
done
