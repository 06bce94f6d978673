#!/usr/bin/env bash
# Standard benchmark: edgepush against the baseline peers (tt-peer, fws-peer), server pinned to
# core 0 and the load generator to core 1. Writes BENCHMARKS.md (and bench-fanout.svg) at the
# repository root.
#
#   loadtest/bench.sh                   # everything
#   BENCH_TARGETS="tt fws" loadtest/bench.sh   # only some servers (edgepush, tt, fws)
#   BENCH_QUICK=1 loadtest/bench.sh     # short runs, to check the script itself
#   BENCH_SKIP_BUILD=1 ...              # use the release binaries already in target/
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PEERS_SRC="${PEERS_SRC:-$ROOT/../shared/peers}"
WORK="${BENCH_WORK:-/tmp/edgepush-bench}"
TARGETS="${BENCH_TARGETS:-edgepush tt fws}"
OUT="${BENCH_OUT:-$ROOT/BENCHMARKS.md}"
SVG="${BENCH_SVG:-$ROOT/bench-fanout.svg}"
SERVER_CORE="${SERVER_CORE:-0}"
CLIENT_CORE="${CLIENT_CORE:-1}"

if [[ -n "${BENCH_QUICK:-}" ]]; then
  IDLE_N=2000; HOLD=2s; ECHO_DUR=3s; SUBS=500; MSGS=50; SLOW_MSGS=50; CHURN_DUR=3s
else
  IDLE_N=15000; HOLD=10s; ECHO_DUR=10s; SUBS=5000; MSGS=200; SLOW_MSGS=200; CHURN_DUR=10s
fi
CHURN_RATE="${CHURN_RATE:-10000}"

mkdir -p "$WORK/results"
rm -f "$WORK"/results/*.json "$WORK"/commands.txt

echo "== building" >&2
PKGS=(-p edgepush-load)
if [[ " $TARGETS " == *" edgepush "* ]]; then PKGS+=(-p edgepush); fi
if [[ -z "${BENCH_SKIP_BUILD:-}" ]]; then
  (cd "$ROOT" && cargo build --release "${PKGS[@]}") >&2
fi
L="$ROOT/target/release/edgepush-load"
EDGEPUSH="$ROOT/target/release/edgepush"
if [[ " $TARGETS " == *" tt "* || " $TARGETS " == *" fws "* ]]; then
  rm -rf "$WORK/peers-src" && mkdir -p "$WORK/peers-src"
  cp -r "$PEERS_SRC"/. "$WORK/peers-src/"
  rm -rf "$WORK/peers-src/target"
  (cd "$WORK/peers-src" && CARGO_TARGET_DIR="$WORK/peers-target" cargo build --release) >&2
fi
PEERS_BIN="$WORK/peers-target/release"

SERVER_PID=""
stop_server() {
  if [[ -n "$SERVER_PID" ]]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}
trap stop_server EXIT

wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "server on port $1 did not come up" >&2
  return 1
}

start_server() { # name
  stop_server
  case "$1" in
    edgepush)
      taskset -c "$SERVER_CORE" "$EDGEPUSH" --listen 127.0.0.1:18080 --api-listen 127.0.0.1:18081 \
        --threads 1 --log warn 2>"$WORK/edgepush.log" &
      SERVER_PID=$!; wait_port 18080; wait_port 18081 ;;
    tt)
      TT_READ_BUF=4096 taskset -c "$SERVER_CORE" "$PEERS_BIN/tt-peer" 19101 2>"$WORK/tt.log" &
      SERVER_PID=$!; wait_port 19101 ;;
    fws)
      taskset -c "$SERVER_CORE" "$PEERS_BIN/fws-peer" 19102 2>"$WORK/fws.log" &
      SERVER_PID=$!; wait_port 19102 ;;
  esac
  sleep 0.3
}

run() { # name scenario args...
  local name=$1 scenario=$2; shift 2
  local cmd=(taskset -c "$CLIENT_CORE" "$L" "$@" --server-pid "$SERVER_PID" --json --timeout 3m)
  echo "$name $scenario: ${cmd[*]}" >>"$WORK/commands.txt"
  echo "== $name $scenario" >&2
  if ! "${cmd[@]}" >"$WORK/results/$name-$scenario.json"; then
    echo "   (failed; see above)" >&2
  fi
}

echo "== kernel floor" >&2
echo "floor: taskset -c $SERVER_CORE $L floor -n $SUBS --json" >>"$WORK/commands.txt"
taskset -c "$SERVER_CORE" "$L" floor -n "$SUBS" --json >"$WORK/results/floor.json" || true

for name in $TARGETS; do
  case "$name" in
    edgepush) PORT=18080; ECHO=ws://127.0.0.1:18080/echo
      SUB=(--url "ws://127.0.0.1:18080/ws?user=load-{n}" --api http://127.0.0.1:18081 --channel bench) ;;
    tt) PORT=19101; ECHO=ws://127.0.0.1:19101/echo
      SUB=(--pub-ws ws://127.0.0.1:19101/pub --sub-url ws://127.0.0.1:19101/sub) ;;
    fws) PORT=19102; ECHO=ws://127.0.0.1:19102/echo
      SUB=(--pub-ws ws://127.0.0.1:19102/pub --sub-url ws://127.0.0.1:19102/sub) ;;
    *) echo "unknown target $name" >&2; exit 1 ;;
  esac
  start_server "$name"   # fresh server: idle memory is measured from a clean start
  run "$name" idle idle -n "$IDLE_N" --hold "$HOLD" --url "$ECHO"
  run "$name" echo echo -c 100 --size 64 --inflight 8 --duration "$ECHO_DUR" --url "$ECHO"
  run "$name" fanout-burst fanout -n "$SUBS" --messages "$MSGS" --size 64 --rate 0 "${SUB[@]}" \
    --svg "$WORK/$name-fanout.svg" --svg-title "$name fan-out burst"
  run "$name" fanout-10s fanout -n "$SUBS" --messages "$SLOW_MSGS" --size 64 --rate 10 "${SUB[@]}"
  run "$name" churn churn --rate "$CHURN_RATE" --duration "$CHURN_DUR" --url "$ECHO"
  stop_server
done

echo "== writing $OUT" >&2
python3 - "$WORK" "$OUT" "$SVG" "$TARGETS" "$ROOT/loadtest/by-hand.md" <<'PY'
import datetime, json, os, subprocess, sys
work, out, svg_path, targets, by_hand_path = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(), sys.argv[5]
try:
    with open(os.path.join(work, "results", "floor.json")) as f:
        floor = json.loads(f.read().strip().splitlines()[-1])
    floor_line = (f"Kernel floor on this machine (`edgepush-load floor`, no server involved): one "
                  f"{floor['size']}-byte loopback TCP send costs {floor['per_send_us_median']:.2f} µs "
                  f"(median of {len(floor['per_send_us'])} passes over {floor['sockets']:,} sockets), so "
                  f"a fan-out to {floor['sockets']:,} subscribers needs at least "
                  f"{floor['per_send_us_median'] * floor['sockets'] / 1000:.1f} ms of one core in the "
                  f"kernel alone, whatever the server. On loopback that cost includes the receiver's TCP "
                  f"processing, which runs inline on the sending core.")
except (OSError, ValueError, KeyError, IndexError):
    floor_line = "Kernel floor: not measured."
try:
    with open(by_hand_path) as f:
        by_hand = "\n" + f.read().strip() + "\n"
except OSError:
    by_hand = ""
res = {}
for name in targets:
    for sc in ["idle", "echo", "fanout-burst", "fanout-10s", "churn"]:
        p = os.path.join(work, "results", f"{name}-{sc}.json")
        try:
            with open(p) as f:
                line = f.read().strip().splitlines()
            res[(name, sc)] = json.loads(line[-1]) if line else None
        except (OSError, ValueError):
            res[(name, sc)] = None

def get(name, sc, *path):
    v = res.get((name, sc))
    for k in path:
        if not isinstance(v, dict):
            return None
        v = v.get(k)
    return v

rows = [
    ("idle: server bytes per connection", "idle", ("server_bytes_per_conn",), False),
    ("idle: kernel TCP memory per connection (B)", "idle", ("tcp_mem_per_conn",), False),
    ("idle: handshakes/s while opening", "idle", ("handshakes_per_s",), True),
    ("echo: messages/s", "echo", ("msgs_per_s",), True),
    ("echo: p50 latency (µs)", "echo", ("latency_us", "p50"), False),
    ("echo: p99 latency (µs)", "echo", ("latency_us", "p99"), False),
    ("echo: server CPU µs per message", "echo", ("server", "cpu_us_per_msg"), False),
    ("fan-out burst: deliveries/s", "fanout-burst", ("deliveries_per_s",), True),
    ("fan-out burst: p50 latency (µs)", "fanout-burst", ("latency_us", "p50"), False),
    ("fan-out burst: p99 latency (µs)", "fanout-burst", ("latency_us", "p99"), False),
    ("fan-out burst: missing/dup/out-of-order", "fanout-burst", None, None),
    ("fan-out 10/s: p50 latency (µs)", "fanout-10s", ("latency_us", "p50"), False),
    ("fan-out 10/s: p99 latency (µs)", "fanout-10s", ("latency_us", "p99"), False),
    ("fan-out 10/s: server CPU µs per delivery", "fanout-10s", ("server", "cpu_us_per_msg"), False),
    ("churn: handshakes/s", "churn", ("handshakes_per_s",), True),
    ("churn: errors", "churn", None, None),
]
def fmt(v):
    if v is None: return "–"
    if isinstance(v, float): return f"{v:,.1f}" if abs(v) < 100 else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)

base = targets[0]
others = targets[1:]
head = "| metric | " + " | ".join(targets) + " | " + " | ".join(f"{base}/{o}" for o in others) + " |"
lines = [head, "|" + "---|" * (1 + len(targets) + len(others))]
for label, sc, path, higher in rows:
    cells = []
    vals = {}
    for n in targets:
        if path is None and sc.startswith("fanout"):
            r = res.get((n, sc)) or {}
            v = "/".join(str(r.get(k, "–")) for k in ("missing", "duplicates", "out_of_order"))
        elif path is None:
            v = sum((get(n, sc, "errors") or {}).values()) if res.get((n, sc)) else None
        else:
            v = get(n, sc, *path)
        vals[n] = v
        cells.append(fmt(v))
    ratios = []
    for o in others:
        a, b = vals.get(base), vals.get(o)
        ratios.append(f"{a / b:.2f}×" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "–")
    lines.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")

def cpu_model():
    try:
        for l in open("/proc/cpuinfo"):
            if l.startswith("model name"):
                return l.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"

# Combined fan-out latency chart (percentile curves from the burst runs).
W, H, L, R, T, B = 720, 420, 70, 20, 40, 50
import math
series = [(n, get(n, "fanout-burst", "latency_curve") or []) for n in targets]
ymax = max([p[1] for _, c in series for p in c] + [1.0])
unit, div = ("ms", 1000.0) if ymax >= 5000 else ("µs", 1.0)
top = ymax / div
mag = 10 ** math.floor(math.log10(top)) if top > 0 else 1
top = next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= top)
def xpos(q):
    x = 4.5 if q >= 1 else min(4.0, math.log10(1 / (1 - q)))
    return L + x / 4.5 * (W - L - R)
def ypos(us):
    return T + (H - T - B) * (1 - (us / div) / top)
colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"]
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{W/2}" y="22" text-anchor="middle" font-size="15">fan-out burst: publish→receive latency by percentile</text>']
for i in range(6):
    y = T + (H - T - B) * (1 - i / 5)
    svg.append(f'<line x1="{L}" y1="{y:.1f}" x2="{W-R}" y2="{y:.1f}" stroke="#ddd"/><text x="{L-6}" y="{y+4:.1f}" text-anchor="end">{top*i/5:g}</text>')
for q, lab in [(0, "0%"), (0.9, "90%"), (0.99, "99%"), (0.999, "99.9%"), (0.9999, "99.99%"), (1, "max")]:
    x = xpos(q)
    svg.append(f'<line x1="{x:.1f}" y1="{T}" x2="{x:.1f}" y2="{H-B}" stroke="#eee"/><text x="{x:.1f}" y="{H-B+18}" text-anchor="middle">{lab}</text>')
svg.append(f'<text x="{(W+L)/2}" y="{H-10}" text-anchor="middle">percentile</text>')
svg.append(f'<text x="16" y="{H/2}" text-anchor="middle" transform="rotate(-90 16 {H/2})">latency ({unit})</text>')
for i, (n, c) in enumerate(series):
    if not c: continue
    col = colors[i % len(colors)]
    pts = " ".join(f"{xpos(q):.1f},{ypos(v):.1f}" for q, v in c)
    svg.append(f'<polyline fill="none" stroke="{col}" stroke-width="2" points="{pts}"/>')
    ly = T + 16 * i + 8
    svg.append(f'<rect x="{L+12}" y="{ly-3}" width="14" height="3" fill="{col}"/><text x="{L+32}" y="{ly+2}">{n}</text>')
svg.append("</svg>")
with open(svg_path, "w") as f:
    f.write("\n".join(svg) + "\n")

cmds = open(os.path.join(work, "commands.txt")).read()
md = f"""# Benchmarks

Generated by `loadtest/bench.sh` on {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}.

Machine: {os.cpu_count()} cores (`nproc`: {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()}),
CPU `{cpu_model()}`. Server pinned to core 0, load generator to core 1 (`taskset`); loopback only.
Servers: edgepush (this repository, `--threads 1`), tt-peer (tokio-tungstenite, `TT_READ_BUF=4096`),
fws-peer (fastwebsockets), the last two from `shared/peers`. Ratios are {base} ÷ the other
(higher is better for rates, lower for latency, memory and CPU).

{chr(10).join(lines)}

{floor_line}

Fan-out latency distribution (burst of the standard size, every subscriber):

![fan-out latency]({os.path.basename(svg_path)})
{by_hand}
## Commands

```
{cmds.strip()}
```

## Raw results

```
""" + "\n".join(json.dumps({k: v for k, v in (res[(n, sc)] or {}).items() if k != "latency_curve"})
               for n in targets for sc in ["idle", "echo", "fanout-burst", "fanout-10s", "churn"]) + "\n```\n"
with open(out, "w") as f:
    f.write(md)
print(f"wrote {out} and {svg_path}", file=sys.stderr)
PY
