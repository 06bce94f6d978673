#!/usr/bin/env bash
# Cluster-mode benchmark (issue 13, "Performance"): edgepush nodes over one Redis against one
# node without Redis, in the same run, interleaved round by round; optionally beside seedcluster
# (the seed's Redis pub/sub cluster, shared/peers/seedcluster). Starts its own redis-server on a
# free port (no persistence, a temp dir) and every server it needs, and stops each by PID.
#
#   loadtest/cluster.sh                       # everything, 3 rounds
#   ROUNDS=5 loadtest/cluster.sh
#   PARTS="burst rate" loadtest/cluster.sh    # only some parts (burst rate cpu pipeline seed loss)
#   QUICK=1 loadtest/cluster.sh               # small runs, to check the script itself
#   SEEDCLUSTER=/path/to/seedcluster ...      # the seed binary (built as its README says);
#                                             # without it the seed's runs are skipped
#   EDGEPUSH_ARGS="--history-size 1000" ...  # more flags for every edgepush node
#   PIN=0 ...                                 # no taskset (default: servers on SERVER_CORE,
#                                             # the load generator on CLIENT_CORE)
#
# Binaries: $CARGO_TARGET_DIR/release (or target/release) edgepush and edgepush-load; build them
# first with `cargo build --release -p edgepush -p edgepush-load`.
#
# Parts (each round runs every selected part, the modes side by side):
#   burst     5,000 subscribers over 3 nodes, 200 × 64 B burst through the 3 APIs, vs one node
#             without Redis: deliveries/s, missing/duplicates; Redis CPU per publish
#   rate      the same at 10 publishes/s: publish→receive p50/p99
#   cpu       Redis CPU per publish, 1 vs 3 nodes × 1,000 vs 5,000 subscribers: 1,000 publishes
#             at 200/s; Redis is sampled every 0.1 s (INFO cpu commandstats) and the CPU of the
#             publishing window (first to last XADD), less the idle rate measured for 1 s before,
#             is divided by the publishes; also the publish script's own µs per call
#   pipeline  one node, one API client, one request at a time (--api-pipeline 1), 5,000
#             subscribers: deliveries/s with and without --redis
#   seed      seedcluster, 3 nodes, the burst shape published over its /pub WebSocket, beside
#             edgepush's 3 nodes (API publishes) in the same round
#   loss      1,000 subscribers over 3 nodes, 100 publishes/s for 10 s, `CLIENT KILL TYPE pubsub`
#             at 2, 4 and 6 s: messages lost per subscriber, seedcluster vs edgepush
#
# Output: one JSON line per run in $WORK/results.jsonl, a Markdown summary (median and min–max
# over the rounds, ratios cluster ÷ one node) on stdout and in $WORK/summary.md.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}"
EDGEPUSH="$BIN/edgepush"
L="$BIN/edgepush-load"
SEEDCLUSTER="${SEEDCLUSTER:-}"
ROUNDS="${ROUNDS:-3}"
PARTS="${PARTS:-burst rate cpu pipeline seed loss}"
NODES="${NODES:-3}"
PIN="${PIN:-1}"
SERVER_CORE="${SERVER_CORE:-0}"
CLIENT_CORE="${CLIENT_CORE:-1}"
WORK="${WORK:-$(mktemp -d /tmp/edgepush-cluster.XXXXXX)}"
if [[ -n "${QUICK:-}" ]]; then
  SUBS=600; MSGS=40; RATE_MSGS=20; CPU_SUBS="200 600"; CPU_MSGS=200
  LOSS_SUBS=150; LOSS_MSGS=400
else
  SUBS=5000; MSGS=200; RATE_MSGS=200; CPU_SUBS="1000 5000"; CPU_MSGS=1000
  LOSS_SUBS=1000; LOSS_MSGS=1000
fi
SIZE=64
CPU_RATE="${CPU_RATE:-200}"

for b in "$EDGEPUSH" "$L"; do
  [[ -x "$b" ]] || { echo "missing $b: cargo build --release -p edgepush -p edgepush-load" >&2; exit 1; }
done
if [[ " $PARTS " == *" seed "* || " $PARTS " == *" loss "* ]] && [[ -z "$SEEDCLUSTER" || ! -x "$SEEDCLUSTER" ]]; then
  echo "SEEDCLUSTER not set or not executable: the seed's runs are skipped" >&2
  SEEDCLUSTER=""
fi
mkdir -p "$WORK/redis" "$WORK/logs" "$WORK/runs"
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
echo "work dir: $WORK" >&2

# Command prefixes (arrays, not functions: `"${SPIN[@]}" server &` makes $! the server's own PID,
# taskset execs it, so it can be stopped by that PID).
SPIN=(); CPIN=()
if [[ "$PIN" == 1 ]]; then SPIN=(taskset -c "$SERVER_CORE"); CPIN=(taskset -c "$CLIENT_CORE"); fi

# A free loopback port: bound by the kernel, released, used at once.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Every process this script starts, by PID; stopped at exit.
REDIS_PID=""
SERVER_PIDS=()
stop_servers() {
  local p
  for p in "${SERVER_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${SERVER_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  SERVER_PIDS=()
}
cleanup() {
  stop_servers
  if [[ -n "$REDIS_PID" ]]; then
    kill "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_http() { # url: until it answers 200, at most 10 s
  for _ in $(seq 1 100); do
    if curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$1 did not answer 200" >&2
  return 1
}
wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listening on port $1" >&2
  return 1
}

REDIS_PORT=$(free_port)
"${SPIN[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --daemonize no --dir "$WORK/redis" --logfile "$WORK/logs/redis.log" &
REDIS_PID=$!
RCLI=(redis-cli -p "$REDIS_PORT")
for _ in $(seq 1 100); do "${RCLI[@]}" ping >/dev/null 2>&1 && break; sleep 0.1; done
"${RCLI[@]}" ping >/dev/null
echo "redis-server pid $REDIS_PID on port $REDIS_PORT" >&2

# Redis CPU seconds so far (used_cpu_sys + used_cpu_user of INFO cpu).
redis_cpu() {
  "${RCLI[@]}" info cpu | tr -d '\r' |
    awk -F: '$1=="used_cpu_sys"||$1=="used_cpu_user"{s+=$2} END{printf "%.6f", s}'
}
# Samples Redis every 0.1 s until killed: "unix_time cpu_s xadd_calls evalsha_calls
# evalsha_usec" per line (INFO cpu commandstats; a publish is one script run with one XADD).
redis_sampler() {
  while :; do
    printf '%s ' "$(date +%s.%N)"
    "${RCLI[@]}" info cpu commandstats | tr -d '\r' | awk -F'[:=,]' '
      /^used_cpu_(sys|user):/ { c += $2 }
      /^cmdstat_xadd:/ { x = $3 }
      /^cmdstat_evalsha:/ { e = $3; u = $5 }
      END { printf "%.6f %d %d %d\n", c, x, e, u }'
    sleep 0.1
  done
}
# CPU seconds (user + system) of the given PIDs so far.
procs_cpu() {
  local tck total=0 p t
  tck=$(getconf CLK_TCK)
  for p in "$@"; do
    t=$(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null || echo 0)
    total=$((total + t))
  done
  python3 -c "print($total/$tck)"
}

# start_edgepush N REDIS(0|1) TAG: N nodes, --threads 1 each, their own ports; sets WS_URLS,
# API_URLS (comma-separated) and NODE_PIDS.
start_edgepush() {
  local n=$1 redis=$2 tag=$3 i ws api args
  WS_URLS=""; API_URLS=""; NODE_PIDS=()
  for ((i = 0; i < n; i++)); do
    ws=$(free_port); api=$(free_port)
    # shellcheck disable=SC2206
    args=(--listen "127.0.0.1:$ws" --api-listen "127.0.0.1:$api" --threads 1 --log warn
      ${EDGEPUSH_ARGS:-})
    if [[ "$redis" == 1 ]]; then
      args+=(--redis "redis://127.0.0.1:$REDIS_PORT" --redis-prefix "perf-$$-$tag"
        --node-name "$tag-n$i")
    fi
    "${SPIN[@]}" "$EDGEPUSH" "${args[@]}" 2>"$WORK/logs/$tag-n$i.log" &
    NODE_PIDS+=($!); SERVER_PIDS+=($!)
    WS_URLS+="${WS_URLS:+,}ws://127.0.0.1:$ws/ws?user=$tag-$i-{n}"
    API_URLS+="${API_URLS:+,}http://127.0.0.1:$api"
    wait_http "http://127.0.0.1:$ws/healthz"
    wait_port "$api"
  done
  sleep 0.3
}

# start_seed N: seedcluster nodes on one Redis; sets SUB_URLS, PUB_WS, NODE_PIDS.
SEED_RUNS=0
start_seed() {
  local n=$1 i port channel
  SEED_RUNS=$((SEED_RUNS + 1)); channel="perf-$$-seed$SEED_RUNS"
  SUB_URLS=""; PUB_WS=""; NODE_PIDS=()
  for ((i = 0; i < n; i++)); do
    port=$(free_port)
    "${SPIN[@]}" "$SEEDCLUSTER" -redis "127.0.0.1:$REDIS_PORT" -node "seed-n$i" \
      -channel "$channel" "$port" 2>"$WORK/logs/seed-n$i.log" &
    NODE_PIDS+=($!); SERVER_PIDS+=($!)
    SUB_URLS+="${SUB_URLS:+,}ws://127.0.0.1:$port/sub"
    [[ -n "$PUB_WS" ]] || PUB_WS="ws://127.0.0.1:$port/pub"
    wait_port "$port"
  done
  # Its subscriber goroutines subscribe asynchronously: wait for one pub/sub client per node.
  for _ in $(seq 1 50); do
    [[ $("${RCLI[@]}" pubsub numsub "$channel" | tail -1) -ge $n ]] && break
    sleep 0.1
  done
  sleep 0.3
}

# run_load NAME ROUND MODE EXTRA-JSON -- load-generator args…: runs edgepush-load fanout with
# --json, measures Redis and server CPU around it, appends one line to results.jsonl.
run_load() {
  local name=$1 round=$2 mode=$3 extra=$4; shift 5
  local out="$WORK/runs/$name-$mode-r$round.json" r0 r1 s0 s1 rc=0
  echo "$(date +%T) round $round: $name / $mode: $L fanout $*" >>"$WORK/commands.txt"
  echo "== round $round: $name / $mode" >&2
  redis_sampler >"$out.redis" 2>/dev/null &
  local sampler=$!
  sleep 1 # idle samples first: Redis's background rate (cron, heartbeats, these INFOs)
  r0=$(redis_cpu); s0=$(procs_cpu "${NODE_PIDS[@]}")
  "${CPIN[@]}" "$L" fanout --json --timeout 3m "$@" >"$out" 2>"$WORK/logs/load-last.txt" || rc=$?
  r1=$(redis_cpu); s1=$(procs_cpu "${NODE_PIDS[@]}")
  sleep 0.3
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  if [[ ! -s "$out" ]]; then
    echo "load generator failed (exit $rc): $(tail -3 "$WORK/logs/load-last.txt")" >&2
    echo '{}' >"$out"
  fi
  jq -c --arg name "$name" --arg mode "$mode" --argjson round "$round" --argjson rc "$rc" \
    --argjson rcpu "$(python3 -c "print(round($r1-$r0,6))")" \
    --argjson scpu "$(python3 -c "print(round($s1-$s0,3))")" --argjson extra "$extra" \
    --argjson window "$(publish_window "$out.redis")" \
    '{name:$name, mode:$mode, round:$round, exit:$rc, redis_cpu_s:$rcpu, servers_cpu_s:$scpu,
      redis_window:$window} + $extra + {load:.}' \
    "$out" >>"$RESULTS"
  jq -r '"   deliveries/s \(.deliveries_per_s) missing \(.missing) dup \(.duplicates) ooo \(.out_of_order) p50 \(.latency_us.p50) p99 \(.latency_us.p99) published \(.published)"' "$out" >&2 || true
}

# publish_window SAMPLES: Redis CPU over the publishing window (from the last sample before the
# first XADD to the first sample after the last one), less the idle rate of the first second,
# as JSON {publishes, seconds, cpu_s, idle_cpu_per_s, cpu_us_per_publish,
# script_us_per_call}; null without XADDs.
publish_window() {
  python3 - "$1" <<'PY'
import json, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if len(l.split()) == 5]
if len(rows) < 3:
    print("null"); sys.exit()
t0 = rows[0][0]
idle = [r for r in rows if r[0] - t0 <= 0.95]
base, final = rows[0][2], rows[-1][2]
if final <= base or len(idle) < 2:
    print("null"); sys.exit()
i = next(k for k, r in enumerate(rows) if r[2] > base) - 1
j = next(k for k, r in enumerate(rows) if r[2] >= final)
rate = (idle[-1][1] - idle[0][1]) / (idle[-1][0] - idle[0][0])
secs = rows[j][0] - rows[i][0]
cpu = rows[j][1] - rows[i][1]
n = rows[j][2] - rows[i][2]
calls = rows[j][3] - rows[i][3]
usec = rows[j][4] - rows[i][4]
print(json.dumps({"publishes": n, "seconds": round(secs, 3), "cpu_s": round(cpu, 6),
                  "idle_cpu_per_s": round(rate, 6),
                  "cpu_us_per_publish": round((cpu - rate * secs) * 1e6 / n, 2),
                  "script_us_per_call": round(usec / calls, 2) if calls else None}))
PY
}

fanout_args() { # subs msgs rate channel
  echo -n "-n $1 --messages $2 --size $SIZE --rate $3 --channel $4"
}

# kill_pubsub_at SECONDS…: in the background, CLIENT KILL TYPE pubsub at those offsets.
kill_pubsub_at() {
  local t prev=0
  for t in "$@"; do
    sleep "$(python3 -c "print($t-$prev)")"; prev=$t
    "${RCLI[@]}" client kill type pubsub >>"$WORK/logs/client-kill.txt" 2>&1 || true
  done
}

has() { [[ " $PARTS " == *" $1 "* ]]; }

for ((round = 1; round <= ROUNDS; round++)); do
  # Alternate which mode goes first, so drift in the machine's load does not favour one.
  if ((round % 2)); then order="one cluster"; else order="cluster one"; fi

  if has burst || has rate; then
    for mode in $order; do
      if [[ $mode == one ]]; then start_edgepush 1 0 "one$round"; nodes=1; else
        start_edgepush "$NODES" 1 "cl$round"; nodes=$NODES; fi
      if has burst; then
        # shellcheck disable=SC2046
        run_load burst "$round" "$mode" "{\"nodes\":$nodes,\"subs\":$SUBS}" -- \
          $(fanout_args "$SUBS" "$MSGS" 0 "b$round") --url "$WS_URLS" --api "$API_URLS"
      fi
      if has rate; then
        # shellcheck disable=SC2046
        run_load rate10 "$round" "$mode" "{\"nodes\":$nodes,\"subs\":$SUBS}" -- \
          $(fanout_args "$SUBS" "$RATE_MSGS" 10 "r$round") --url "$WS_URLS" --api "$API_URLS"
      fi
      stop_servers
    done
  fi

  if has cpu; then
    for nodes in 1 "$NODES"; do
      for subs in $CPU_SUBS; do
        start_edgepush "$nodes" 1 "cpu$round-$nodes-$subs"
        # shellcheck disable=SC2046
        run_load "cpu" "$round" cluster "{\"nodes\":$nodes,\"subs\":$subs}" -- \
          $(fanout_args "$subs" "$CPU_MSGS" "$CPU_RATE" "c$round") --url "$WS_URLS" --api "$API_URLS"
        stop_servers
      done
    done
  fi

  if has pipeline; then
    for mode in $order; do
      if [[ $mode == one ]]; then start_edgepush 1 0 "p1-$round"; else
        start_edgepush 1 1 "p1r-$round"; fi
      # shellcheck disable=SC2046
      run_load pipeline1 "$round" "$mode" "{\"nodes\":1,\"subs\":$SUBS}" -- \
        $(fanout_args "$SUBS" "$MSGS" 0 "p$round") --api-pipeline 1 \
        --url "$WS_URLS" --api "$API_URLS"
      stop_servers
    done
  fi

  if has seed && [[ -n "$SEEDCLUSTER" ]]; then
    if ((round % 2)); then sorder="edgepush seed"; else sorder="seed edgepush"; fi
    for mode in $sorder; do
      if [[ $mode == seed ]]; then
        start_seed "$NODES"
        # Its deliveries take seconds: wait long enough to count them all.
        run_load seedburst "$round" seed "{\"nodes\":$NODES,\"subs\":$SUBS}" -- \
          -n "$SUBS" --messages "$MSGS" --size "$SIZE" --rate 0 \
          --pub-ws "$PUB_WS" --sub-url "$SUB_URLS" --deliver-timeout 60s
      else
        start_edgepush "$NODES" 1 "sb$round"
        # shellcheck disable=SC2046
        run_load seedburst "$round" edgepush "{\"nodes\":$NODES,\"subs\":$SUBS}" -- \
          $(fanout_args "$SUBS" "$MSGS" 0 "sb$round") --url "$WS_URLS" --api "$API_URLS"
      fi
      stop_servers
    done
  fi

  if has loss; then
    for mode in seed cluster; do
      if [[ $mode == seed ]]; then
        [[ -n "$SEEDCLUSTER" ]] || continue
        start_seed "$NODES"
        kill_pubsub_at 2 4 6 &
        killer=$!
        run_load loss "$round" seed "{\"nodes\":$NODES,\"subs\":$LOSS_SUBS,\"kills\":3}" -- \
          -n "$LOSS_SUBS" --messages "$LOSS_MSGS" --size "$SIZE" --rate 100 \
          --pub-ws "$PUB_WS" --sub-url "$SUB_URLS" --deliver-timeout 3s
      else
        start_edgepush "$NODES" 1 "loss$round"
        kill_pubsub_at 2 4 6 &
        killer=$!
        # shellcheck disable=SC2046
        run_load loss "$round" cluster "{\"nodes\":$NODES,\"subs\":$LOSS_SUBS,\"kills\":3}" -- \
          $(fanout_args "$LOSS_SUBS" "$LOSS_MSGS" 100 "l$round") --url "$WS_URLS" \
          --api "$API_URLS" --deliver-timeout 10s
      fi
      wait "$killer" 2>/dev/null || true
      stop_servers
    done
  fi
done

python3 - "$RESULTS" "$ROUNDS" <<'PY' | tee "$(dirname "$RESULTS")/summary.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def sel(name, mode, **kw):
    return [r for r in rows if r["name"] == name and r["mode"] == mode
            and all(r.get(k) == v for k, v in kw.items())]
def vals(rs, f):
    out = []
    for r in rs:
        try:
            v = f(r)
        except (KeyError, TypeError, ZeroDivisionError):
            continue
        if v is not None:
            out.append(v)
    return out
def fmt(x, unit=""):
    if x is None: return "–"
    if abs(x) >= 100: return f"{x:,.0f}{unit}"
    if abs(x) >= 10: return f"{x:,.1f}{unit}"
    return f"{x:,.2f}{unit}"
def med(v): return statistics.median(v) if v else None
def cell(v, unit=""):
    if not v: return "–"
    if len(v) == 1: return fmt(v[0], unit)
    return f"{fmt(med(v), unit)} ({fmt(min(v))}–{fmt(max(v))})"
def ratio(a, b):
    return f"{med(a)/med(b):.2f}×" if a and b and med(b) else "–"
def errs(rs):
    return " / ".join(",".join(str(r["load"].get(k, "?")) for r in rs)
                      for k in ("missing", "duplicates", "out_of_order")) or "–"
L = lambda k: (lambda r: r["load"][k])
P = lambda q: (lambda r: r["load"]["latency_us"][q])
print(f"Rounds: {sys.argv[2]}; cells are median (min–max) over the rounds.\n")
print("Unsolicited `recovered:false` (connections, each round): " + ", ".join(
    f"{r['name']}/{r['mode']}: {r['load'].get('errors', {}).get('unsolicited_not_recovered', 0)}"
    for r in rows if r["mode"] in ("cluster", "edgepush")) + "\n")
print("| metric | cluster (3 nodes + Redis) | one node, no Redis | cluster ÷ one |")
print("|---|---|---|---|")
for name, label in (("burst", "burst"), ("rate10", "10/s")):
    c, o = sel(name, "cluster"), sel(name, "one")
    if not c and not o: continue
    if name == "burst":
        a, b = vals(c, L("deliveries_per_s")), vals(o, L("deliveries_per_s"))
        print(f"| {label}: deliveries/s | {cell(a)} | {cell(b)} | {ratio(a, b)} |")
    for q in ("p50", "p99"):
        a, b = vals(c, P(q)), vals(o, P(q))
        d = f"{(med(a)-med(b))/1000:+.1f} ms" if a and b else "–"
        print(f"| {label}: {q} latency (µs) | {cell(a)} | {cell(b)} | {ratio(a, b)} ({d}) |")
    a = vals(c, lambda r: r["servers_cpu_s"] * 1e6 / r["load"]["deliveries"])
    b = vals(o, lambda r: r["servers_cpu_s"] * 1e6 / r["load"]["deliveries"])
    print(f"| {label}: edgepush CPU µs per delivery (all nodes) | {cell(a)} | {cell(b)} | {ratio(a, b)} |")
    a = vals(c, lambda r: r["redis_window"]["cpu_us_per_publish"])
    print(f"| {label}: Redis CPU µs per publish (publishing window) | {cell(a)} | – | – |")
    a = vals(c, lambda r: r["redis_cpu_s"] * 1e6 / r["load"]["published"])
    print(f"| {label}: Redis CPU µs per publish (whole run incl. 5,000 subscribes ÷ publishes) | {cell(a)} | – | – |")
    print(f"| {label}: missing / duplicates / out of order (each round) | {errs(c)} | {errs(o)} | – |")
c, o = sel("pipeline1", "cluster"), sel("pipeline1", "one")
if c or o:
    a, b = vals(c, L("deliveries_per_s")), vals(o, L("deliveries_per_s"))
    print(f"| one node, `--api-pipeline 1`: deliveries/s (--redis vs none) | {cell(a)} | {cell(b)} | {ratio(a, b)} |")
    a, b = vals(c, lambda r: r["load"]["publish_s"] * 1e6 / r["load"]["published"]), \
           vals(o, lambda r: r["load"]["publish_s"] * 1e6 / r["load"]["published"])
    print(f"| one node, `--api-pipeline 1`: µs per publish request | {cell(a)} | {cell(b)} | {ratio(a, b)} |")
    print(f"| one node, `--api-pipeline 1`: missing / dup / ooo | {errs(c)} | {errs(o)} | – |")
cpu = [r for r in rows if r["name"] == "cpu"]
if cpu:
    print("\nRedis CPU per publish over the publishing window (1,000 publishes at 200/s; process CPU "
          "less its idle rate; the script's µs per call from INFO commandstats).\n")
    print("| nodes | subscribers | Redis CPU µs per publish | publish script µs per call | missing / dup |")
    print("|---|---|---|---|---|")
    for n, sb in sorted({(r["nodes"], r["subs"]) for r in cpu}):
        rs = [r for r in cpu if r["nodes"] == n and r["subs"] == sb]
        a = vals(rs, lambda r: r["redis_window"]["cpu_us_per_publish"])
        b = vals(rs, lambda r: r["redis_window"]["script_us_per_call"])
        print(f"| {n} | {sb:,} | {cell(a)} | {cell(b)} | {errs(rs).rsplit(' / ', 1)[0]} |")
s, c = sel("seedburst", "seed"), sel("seedburst", "edgepush")
if s:
    print("\n| burst, 3 nodes, 5,000 subscribers | edgepush (API) | seedcluster (`/pub` WebSocket) | edgepush ÷ seed |")
    print("|---|---|---|---|")
    a, b = vals(c, L("deliveries_per_s")), vals(s, L("deliveries_per_s"))
    print(f"| deliveries/s | {cell(a)} | {cell(b)} | {ratio(a, b)} |")
    for q in ("p50", "p99"):
        a, b = vals(c, P(q)), vals(s, P(q))
        print(f"| {q} latency (µs) | {cell(a)} | {cell(b)} | {ratio(a, b)} |")
    print(f"| missing / dup / ooo | {errs(c)} | {errs(s)} | – |")
ls, lc = sel("loss", "seed"), sel("loss", "cluster")
if ls or lc:
    print("\n| 100/s stream, `CLIENT KILL TYPE pubsub` ×3 | edgepush | seedcluster |")
    print("|---|---|---|")
    per = lambda r: r["load"]["missing"] / r["subs"]
    print(f"| messages lost per subscriber | {cell(vals(lc, per))} | {cell(vals(ls, per))} |")
    print(f"| missing / duplicates / out of order (each round) | {errs(lc)} | {errs(ls)} |")
    wo = lambda r: r["load"].get("written_off", 0) / r["subs"]
    nr = lambda r: r["load"].get("errors", {}).get("unsolicited_not_recovered", 0)
    print(f"| unsolicited recovered:false (connections) | {cell(vals(lc, nr))} | – |")
    print(f"| written off per subscriber (recovered:false) | {cell(vals(lc, wo))} | – |")
    print(f"| publish retries (503 during the link drop) | {cell(vals(lc, L('publish_retries')))} | – |")
PY
