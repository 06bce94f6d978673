#!/usr/bin/env bash
# The scale run and the soak (issue 14): six edgepush nodes (--threads 1 each) behind one
# redis-server, all started here and stopped here by PID, and `edgepush-load scale` driving
# 100,000 push connections through them (each its own user, in one of 100 rooms and in the
# all-hands channel `all`), with one all-hands publish per second, 100 room publishes per second
# and 200 user sends per second, spread over the six APIs.
#
#   loadtest/scale.sh                       # the scale run: 100,000 connections, 5 minutes
#   loadtest/scale.sh --soak 30m            # the soak: 30,000 connections, drops, a node drained
#                                           # at 1/3 of the run, Redis killed and restarted at 2/3
#   loadtest/scale.sh --quick               # 3,000 connections for 20 s (checks the script)
#   loadtest/scale.sh --soak 3m --quick     # a short soak with every fault
#   N=60000 DURATION=2m loadtest/scale.sh   # other sizes
#   READ_BATCH=2ms loadtest/scale.sh        # clients read in 2 ms batches (`--read-batch`,
#                                           # see loadtest/README.md; default 0: off)
#
# Before the cluster, the same shape runs against ONE node without Redis (BASE_N connections,
# default N ÷ NODES, as many as each cluster node holds; 10 s): the single-node memory figure
# the cluster's is compared with. And
# `edgepush-load floor` measures this machine's kernel cost of one loopback send, from which
# the all-hands latency goal follows: floor × connections ÷ 2 cores (and the goal is p99 ≤ 1.5×).
#
# The soak (`--soak DUR`): 1 % of the connections drop every second (half with RST) and come back
# with since/epoch; at DUR/3 the last node gets SIGTERM (it drains: Close 1001 spread over 5 s;
# its clients reconnect to the others) and stays down; at 2·DUR/3 Redis gets SIGKILL and is
# started again on the same port from its append-only file (appendfsync always, nodes with
# --redis-durable: Redis loses nothing it acknowledged, so no client should need a resync).
# Every 10 s the script records each node's RSS and open file descriptors and Redis's memory;
# the report gives the RSS slope after warm-up (the first fifth of the run) per node, and the
# descriptors at start and end.
#
# Binaries: $BIN, else $CARGO_TARGET_DIR/release, else target/release: edgepush and edgepush-load:
# `cargo build --release -p edgepush -p edgepush-load`. Needs redis-server, redis-cli, jq, python3.
# Output in $WORK (default a new /tmp/edgepush-scale.XXXXXX): base.json, scale.json (the load
# generator's report), timeline.jsonl, scale.svg, samples.jsonl (the 10 s samples), summary.md
# (also printed on stdout).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}"
EDGEPUSH="$BIN/edgepush"
L="$BIN/edgepush-load"
SOAK=""
QUICK="${QUICK:-}"
while (($#)); do
  case "$1" in
    --soak) SOAK="${2:?--soak needs a duration, e.g. 30m}"; shift 2 ;;
    --soak=*) SOAK="${1#--soak=}"; shift ;;
    --quick) QUICK=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

NODES="${NODES:-6}"
ROOMS="${ROOMS:-100}"
SIZE="${SIZE:-64}"
if [[ -n "$SOAK" ]]; then
  N="${N:-$([[ -n "$QUICK" ]] && echo 3000 || echo 30000)}"
  DURATION="$SOAK"
  DROP_RATE="${DROP_RATE:-0.01}"
else
  N="${N:-$([[ -n "$QUICK" ]] && echo 3000 || echo 100000)}"
  DURATION="${DURATION:-$([[ -n "$QUICK" ]] && echo 20s || echo 5m)}"
  DROP_RATE="${DROP_RATE:-0}"
fi
# The baseline holds as many connections as each cluster node does: per-connection memory
# depends on the count (hash tables grow by doubling: 15,000 connections cost 415 B each,
# 16,667 cost 430 B, measured on one node), so the comparison is made at the same count.
BASE_N="${BASE_N:-$(( (N + NODES - 1) / NODES ))}"
ALLHANDS_RATE="${ALLHANDS_RATE:-1}"
ROOM_RATE="${ROOM_RATE:-100}"
USER_RATE="${USER_RATE:-200}"
READ_BATCH="${READ_BATCH:-0ms}"
SAMPLE_EVERY="${SAMPLE_EVERY:-10}"
WORK="${WORK:-$(mktemp -d /tmp/edgepush-scale.XXXXXX)}"

for b in "$EDGEPUSH" "$L"; do
  [[ -x "$b" ]] || { echo "missing $b: cargo build --release -p edgepush -p edgepush-load" >&2; exit 1; }
done
for c in redis-server redis-cli jq python3 curl; do
  command -v "$c" >/dev/null || { echo "missing $c" >&2; exit 1; }
done
secs() { # a duration like 30m, 5m, 20s, 1h -> seconds
  python3 -c '
import re, sys
m = re.fullmatch(r"([0-9.]+)\s*(ms|s|m|min|h)?", sys.argv[1].strip())
if not m: sys.exit("bad duration " + sys.argv[1])
print(int(float(m[1]) * {"ms": 0.001, None: 1, "s": 1, "m": 60, "min": 60, "h": 3600}[m[2]]))' "$1"
}
DURATION_S=$(secs "$DURATION")
mkdir -p "$WORK/redis" "$WORK/logs"
echo "work dir: $WORK" >&2
ulimit -n "$(ulimit -Hn)"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_http() { # url: until it answers 200, at most 10 s
  for _ in $(seq 1 100); do
    if curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$1 did not answer 200" >&2
  return 1
}

# Every process this script starts, by PID; stopped at exit.
REDIS_PID=""
NODE_PIDS=()
BG_PIDS=()
stop_nodes() {
  local p
  for p in "${NODE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${NODE_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  NODE_PIDS=()
}
cleanup() {
  local p
  for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_nodes
  if [[ -n "$REDIS_PID" ]]; then kill "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

REDIS_PORT=$(free_port)
RCLI=(redis-cli -p "$REDIS_PORT")
REDIS_ARGS=(--port "$REDIS_PORT" --bind 127.0.0.1 --daemonize no --dir "$WORK/redis"
  --logfile "$WORK/logs/redis.log" --save "")
if [[ -n "$SOAK" ]]; then
  REDIS_ARGS+=(--appendonly yes --appendfsync always)
else
  REDIS_ARGS+=(--appendonly no)
fi
start_redis() {
  redis-server "${REDIS_ARGS[@]}" &
  REDIS_PID=$!
  for _ in $(seq 1 100); do "${RCLI[@]}" ping >/dev/null 2>&1 && break; sleep 0.1; done
  "${RCLI[@]}" ping >/dev/null
  echo "$(date +%T) redis-server pid $REDIS_PID on port $REDIS_PORT" >&2
}
redis_info() { # field… of INFO: "name=value" pairs on one line
  { "${RCLI[@]}" info all 2>/dev/null || true; } | tr -d '\r' | awk -F: -v want=" $* " \
    'index(want, " " $1 " ") { printf "%s=%s ", $1, $2 }'
}

# start_nodes N REDIS(0|1) TAG: sets WS_URLS, API_URLS, NODE_PIDS, API_LIST.
start_nodes() {
  local n=$1 redis=$2 tag=$3 i ws api args
  WS_URLS=""; API_URLS=""; NODE_PIDS=(); API_LIST=()
  for ((i = 0; i < n; i++)); do
    ws=$(free_port); api=$(free_port)
    # shellcheck disable=SC2206
    args=(--listen "127.0.0.1:$ws" --api-listen "127.0.0.1:$api" --threads 1 --log warn
      --max-connections 19000 --drain-duration 5s ${EDGEPUSH_ARGS:-})
    if [[ "$redis" == 1 ]]; then
      args+=(--redis "redis://127.0.0.1:$REDIS_PORT" --redis-prefix "scale-$$"
        --node-name "$tag-n$i")
      [[ -n "$SOAK" ]] && args+=(--redis-durable)
    fi
    "$EDGEPUSH" "${args[@]}" 2>"$WORK/logs/$tag-n$i.log" &
    NODE_PIDS+=($!)
    WS_URLS+="${WS_URLS:+,}ws://127.0.0.1:$ws/ws?user=scale-{n}"
    API_URLS+="${API_URLS:+,}http://127.0.0.1:$api"
    API_LIST+=("http://127.0.0.1:$api")
    wait_http "http://127.0.0.1:$ws/healthz"
  done
  sleep 0.5
}
pids_csv() { local IFS=,; echo "$*"; }
# A process that is gone (the drained node) counts 0; neither may fail under `set -e`.
fds() { { ls "/proc/$1/fd" 2>/dev/null || true; } | wc -l; }
rss_kib() { local k; k=$(awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || true); echo "${k:-0}"; }

# sampler: every SAMPLE_EVERY s one JSON line: time, per node RSS (KiB) and fds, Redis memory.
sampler() {
  local t0 p line
  t0=$(date +%s)
  while :; do
    line="{\"t\":$(($(date +%s) - t0)),\"nodes\":["
    for p in "${NODE_PIDS[@]}"; do
      line+="{\"pid\":$p,\"rss_kib\":$(rss_kib "$p"),\"fds\":$(fds "$p")},"
    done
    line="${line%,}],\"redis\":\"$(redis_info used_memory used_memory_rss used_cpu_sys used_cpu_user connected_clients)\"}"
    echo "$line"
    sleep "$SAMPLE_EVERY"
  done
}

# 1. The floor, and the goal that follows from it.
echo "$(date +%T) floor" >&2
"$L" floor --json >"$WORK/floor.json" 2>"$WORK/logs/floor.txt" || true
FLOOR_NS=$(jq -r '(.per_send_us_median // empty) * 1000' "$WORK/floor.json" 2>/dev/null || true)

# 2. The single-node baseline: the same shape against one node without Redis.
echo "$(date +%T) single-node baseline: $BASE_N connections" >&2
start_nodes 1 0 base
"$L" scale --json --url "$WS_URLS" --api "$API_URLS" -n "$BASE_N" --rooms "$ROOMS" \
  --size "$SIZE" --duration 10s --server-pids "$(pids_csv "${NODE_PIDS[@]}")" --timeout 5m \
  >"$WORK/base.json" 2>"$WORK/logs/base-load.txt" || echo "baseline run failed: $(tail -3 "$WORK/logs/base-load.txt")" >&2
stop_nodes

# 3. The cluster.
start_redis
start_nodes "$NODES" 1 scale
FIRST_PIDS=("${NODE_PIDS[@]}")
FDS_START=(); for p in "${NODE_PIDS[@]}"; do FDS_START+=("$(fds "$p")"); done
REDIS_START="$(redis_info used_memory used_memory_rss)"
sampler >"$WORK/samples.jsonl" 2>/dev/null &
BG_PIDS+=($!)

# Faults (the soak only), in the background, by PID. The load generator opens its connections
# first (its timeline's t = 0 is the start of the load); the faults count from when the load
# starts, which the load generator tells through --ready-file... and which we approximate by
# waiting for every connection to be open: poll the nodes' /api/stats.
faults() {
  local total=0 s
  for _ in $(seq 1 600); do
    total=0
    for a in "${API_LIST[@]}"; do
      s=$(curl -fsS --max-time 1 "$a/api/stats" 2>/dev/null | jq -r '.connections // 0' 2>/dev/null || echo 0)
      total=$((total + s))
    done
    ((total >= N)) && break
    sleep 1
  done
  echo "$(date +%T) faults: all $total connections open; node drain at +$((DURATION_S / 3)) s, Redis kill at +$((2 * DURATION_S / 3)) s" >&2
  sleep $((DURATION_S / 3))
  echo "$(date +%T) fault: SIGTERM node ${FIRST_PIDS[-1]} (drain)" | tee -a "$WORK/faults.txt" >&2
  kill -TERM "${FIRST_PIDS[-1]}" 2>/dev/null || true
  sleep $((2 * DURATION_S / 3 - DURATION_S / 3))
  echo "$(date +%T) fault: SIGKILL redis-server $REDIS_PID" | tee -a "$WORK/faults.txt" >&2
  kill -KILL "$REDIS_PID" 2>/dev/null || true
  sleep 2
  redis-server "${REDIS_ARGS[@]}" >>"$WORK/logs/redis-restart.txt" 2>&1 &
  echo "$(date +%T) fault: redis-server restarted from its AOF, pid $!" | tee -a "$WORK/faults.txt" >&2
  echo "$!" >"$WORK/redis2.pid"
}
if [[ -n "$SOAK" ]]; then
  faults &
  BG_PIDS+=($!)
fi

echo "$(date +%T) scale: $N connections over $NODES nodes for $DURATION (drop rate $DROP_RATE)" >&2
RC=0
"$L" scale --json --url "$WS_URLS" --api "$API_URLS" -n "$N" --rooms "$ROOMS" --size "$SIZE" \
  --allhands-rate "$ALLHANDS_RATE" --room-rate "$ROOM_RATE" --user-rate "$USER_RATE" \
  --duration "$DURATION" --drop-rate "$DROP_RATE" --settle 15s --read-batch "$READ_BATCH" \
  --server-pids "$(pids_csv "${NODE_PIDS[@]}")" --redis-pid "$REDIS_PID" \
  --timeline "$WORK/timeline.jsonl" --svg "$WORK/scale.svg" \
  --svg-title "edgepush: $N connections, $NODES nodes + Redis" \
  --timeout "$((DURATION_S + 900))s" >"$WORK/scale.json" 2>"$WORK/logs/scale-load.txt" || RC=$?
[[ -s "$WORK/scale.json" ]] || { echo "scale run failed (exit $RC): $(tail -5 "$WORK/logs/scale-load.txt")" >&2; echo '{}' >"$WORK/scale.json"; }

# The restarted Redis is ours too.
if [[ -s "$WORK/redis2.pid" ]]; then REDIS_PID=$(cat "$WORK/redis2.pid"); fi
REDIS_END="$(redis_info used_memory used_memory_rss used_cpu_sys used_cpu_user)"
FDS_END=(); for p in "${FIRST_PIDS[@]}"; do FDS_END+=("$(fds "$p")"); done
sleep 1

# 4. The report.
QUICK="$QUICK" python3 - "$WORK" "$N" "$NODES" "$DURATION_S" "${FLOOR_NS:-}" "${SOAK:-}" \
  "$(IFS=,; echo "${FDS_START[*]}")" "$(IFS=,; echo "${FDS_END[*]}")" "$REDIS_START" "$REDIS_END" \
  <<'PY' | tee "$WORK/summary.md"
import json, sys, os
work, n, nodes, dur, floor_ns, soak, fds0, fds1, r0, r1 = sys.argv[1:11]
n, nodes, dur = int(n), int(nodes), int(dur)
def load(p):
    try:
        with open(os.path.join(work, p)) as f: return json.load(f)
    except Exception: return {}
def kv(s): return dict(x.split("=", 1) for x in s.split() if "=" in x)
def ms(us): return "–" if us is None else f"{us / 1000:.1f}"
sc, base = load("scale.json"), load("base.json")
print(f"# edgepush {'soak' if soak else 'scale run'}: {sc.get('connected', 0):,} of {n:,} connections, {nodes} nodes + Redis, {dur} s")
print()
if os.environ.get("QUICK"):
    print("*--quick: a check of the script, not a measurement. At this size a node's fixed costs dominate its "
          "bytes per connection, the RSS slope is the nodes warming up, and the latency goal (sized for "
          "100,000 connections) means nothing.*")
    print()
print(f"- Opening: {sc.get('connected', 0):,} connections open and subscribed in {sc.get('connect_s', 0)} s, "
      f"{sc.get('handshakes_per_s', 0):,} handshakes/s (failed: {sc.get('connect_failed', 0)})")
print(f"- Publishes acknowledged: {sc.get('published', 0):,} {json.dumps(sc.get('publish_by_kind', {}))}; "
      f"retried {sc.get('publish_retries', 0)}, failed {sc.get('publish_failed', 0)}, node skips {sc.get('publish_node_skips', 0)}")
print(f"- Deliveries: {sc.get('deliveries', 0):,} ({json.dumps(sc.get('deliveries_by_kind', {}))}), "
      f"{sc.get('deliveries_per_s', 0):,}/s average, {sc.get('deliveries_per_s_peak', 0):,}/s peak; replayed after reconnects {sc.get('replayed', 0):,}")
print(f"- **Missing {sc.get('missing')} · duplicated {sc.get('duplicates')} · out of order {sc.get('out_of_order')}** "
      f"(epoch mismatches {sc.get('epoch_mismatch')}, unexpected {sc.get('unexpected')})")
print(f"- recovered:false: {sc.get('recovered_false', 0)} {json.dumps(sc.get('recovered_false_by_reason', {}))} {json.dumps(sc.get('recovered_false_by_kind', {}))}")
print(f"- Reconnects: {sc.get('reconnects', 0):,} {json.dumps(sc.get('reconnects_by_cause', {}))}; failed attempts {sc.get('reconnect_failures', 0)}; open at end {sc.get('open_at_end')}, down at end {sc.get('down_at_end')}")
print()
print("| kind | p50 ms | p90 ms | p99 ms | max ms |")
print("| --- | ---: | ---: | ---: | ---: |")
lat = sc.get("latency_us", {})
for kind in ("allhands", "room", "user"):
    l = lat.get(kind, {})
    print(f"| {kind} | {ms(l.get('p50'))} | {ms(l.get('p90'))} | {ms(l.get('p99'))} | {ms(l.get('max'))} |")
if floor_ns:
    floor = float(floor_ns)
    goal_ms = floor * n / 2 / 1e6
    p99 = lat.get("allhands", {}).get("p99")
    ratio = f"{p99 / 1000 / goal_ms:.2f}×" if p99 else "–"
    print(f"\nFloor (`edgepush-load floor`): {floor:.0f} ns per loopback send; all-hands floor = floor × {n:,} ÷ 2 cores = "
          f"{goal_ms:.0f} ms. All-hands p99 = **{ratio} the floor** (goal ≤ 1.5×).")
print(f"\nNodes' CPU during the load and settle: {sc.get('server_cpu_s')} s = "
      f"**{sc.get('server_cpu_us_per_delivery')} µs per delivery**; clients' `--read-batch` "
      f"{sc.get('read_batch_ms')} ms (added to every latency above, not subtracted)")
print()
bn = (base.get("nodes") or [{}])[0]
bpc = bn.get("bytes_per_conn")
print(f"Single-node baseline (one node, no Redis, {base.get('connected', 0):,} connections of the same shape): "
      f"**{bpc} B per connection** (user-space RSS after opening ÷ connections)")
print()
print("| node | connections | B/conn (open) | vs single node | RSS end MiB | RSS slope KiB/min | CPU s | fds start → open → end |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
for i, nd in enumerate(sc.get("nodes", [])):
    b = nd.get("bytes_per_conn")
    vs = f"{b / bpc:.2f}×" if b and bpc else "–"
    end = nd.get("rss_end_bytes")
    slope = nd.get("rss_slope_bytes_per_min")
    print(f"| {i} | {nd.get('connections', 0):,} | {b} | {vs} | {end / 2**20:.1f} | "
          f"{slope / 1024:+.1f} | {nd.get('cpu_s')} | {nd.get('fd_start')} → {nd.get('fd_open')} → {nd.get('fd_end')} |"
          if end is not None and slope is not None else
          f"| {i} | {nd.get('connections', 0):,} | {b} | {vs} | gone | – | {nd.get('cpu_s')} | {nd.get('fd_start')} → {nd.get('fd_open')} → {nd.get('fd_end')} |")
rd = sc.get("redis", {})
a, b = kv(r0), kv(r1)
print(f"\nRedis: used_memory {a.get('used_memory', '?')} B at start → {b.get('used_memory', '?')} B at end "
      f"(RSS {b.get('used_memory_rss', '?')} B); CPU {rd.get('cpu_s')} s over the run (its own pid; "
      f"after a restart see samples.jsonl)")
print(f"File descriptors per node (script's count), start → end: {fds0} → {fds1}")
rows = []
try:
    with open(os.path.join(work, "samples.jsonl")) as f:
        rows = [json.loads(l) for l in f if l.strip()]
except Exception: pass
cpu_total, last_cpu, mem_max = 0.0, 0.0, 0
for r in rows:
    k = kv(r.get("redis", ""))
    try:
        c = float(k.get("used_cpu_sys", 0)) + float(k.get("used_cpu_user", 0))
    except ValueError:
        continue
    if c < last_cpu:  # Redis restarted: its counters began again
        cpu_total += last_cpu
    last_cpu = c
    mem_max = max(mem_max, int(k.get("used_memory", 0) or 0))
try:
    end_cpu = float(b.get("used_cpu_sys", 0)) + float(b.get("used_cpu_user", 0))
except ValueError:
    end_cpu = last_cpu
cpu_total += end_cpu if end_cpu >= last_cpu else last_cpu + end_cpu
if rows:
    print(f"Redis over the whole cluster phase (INFO every 10 s, restarts added up): CPU {cpu_total:.1f} s "
          f"= {cpu_total / max(dur, 1) * 100:.1f} % of a core over the load; peak used_memory {mem_max / 2**20:.1f} MiB")
if soak and len(rows) >= 3:
    warm = dur / 5 + 30
    late = [r for r in rows if r["t"] >= warm]
    print(f"\nRSS slope per node after warm-up (t ≥ {warm:.0f} s, least squares over {len(late)} samples every 10 s):")
    for i in range(len(rows[0]["nodes"])):
        pts = [(r["t"], r["nodes"][i]["rss_kib"]) for r in late if i < len(r["nodes"]) and r["nodes"][i]["rss_kib"] > 0]
        if len(pts) < 3:
            print(f"- node {i}: gone (drained) or too few samples"); continue
        mt = sum(t for t, _ in pts) / len(pts); mr = sum(r for _, r in pts) / len(pts)
        den = sum((t - mt) ** 2 for t, _ in pts) or 1
        slope = sum((t - mt) * (r - mr) for t, r in pts) / den
        print(f"- node {i}: {pts[0][1]} → {pts[-1][1]} KiB, slope {slope*60:+.1f} KiB/min ({slope*3600/1024:+.2f} MiB/h)")
if os.path.exists(os.path.join(work, "faults.txt")):
    print("\nFaults:\n```\n" + open(os.path.join(work, "faults.txt")).read() + "```")
PY
echo "work dir: $WORK (scale.svg, timeline.jsonl, samples.jsonl, summary.md)" >&2
exit "$RC"
