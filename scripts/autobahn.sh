#!/usr/bin/env bash
# Run the Autobahn TestSuite cases (through kosoku, on Python 3) against a server binary
# and check the results against a committed expected-results file.
#
# Usage: scripts/autobahn.sh [--update] SERVER_BINARY [EXPECTED_FILE]
#   SERVER_BINARY   started as: SERVER_BINARY --listen 127.0.0.1:PORT --max-message-size 16MiB
#                   --max-backlog 64MiB --compression-min-size 0 --log warn (every message
#                   on a deflate connection goes compressed: kosoku's cases 12/13 mishandle an
#                   uncompressed message there, which RFC 7692 allows)
#   EXPECTED_FILE   default tests/autobahn/expected.json
#   --update        write EXPECTED_FILE from this run instead of comparing (still exits 1
#                   if any case is not OK/INFORMATIONAL)
#
# Exits non-zero if any case differs from EXPECTED_FILE, if any case is not OK or
# INFORMATIONAL (kosoku itself exits 0 on NON-STRICT), if kosoku times out or crashes,
# or if the server dies during the run.
#
# Environment (all optional):
#   AUTOBAHN_SERVER_CMD  replaces the start command; run by bash with SERVER and PORT
#                        exported, e.g. 'exec "$SERVER" "$PORT"' for a peer that takes a port
#   AUTOBAHN_PORT        port to use (default: a free one picked by the OS)
#   AUTOBAHN_VENV        virtualenv for kosoku (default: target/autobahn-venv)
#   AUTOBAHN_OUT         report directory (default: target/autobahn); index.html is there
#   AUTOBAHN_TIMEOUT     seconds allowed for the kosoku run (default: 900)
#   AUTOBAHN_PARALLEL    cases run in parallel (default: 4)
#   AUTOBAHN_EXCLUDE     space-separated case globs to skip (default: none; '12.* 13.*'
#                        skips the permessage-deflate sections)
#   AUTOBAHN_TLS         1: run the cases over wss. kosoku speaks only ws, so it talks to a
#                        socat process that opens a TLS connection to the server for each of
#                        its connections (socat and openssl are installed by apt if missing);
#                        the server gets a fresh self-signed P-256 certificate (--tls-cert,
#                        --tls-key). Every frame the cases send then crosses the server's TLS
#                        record layer, split into records as socat reads it.
set -euo pipefail

KOSOKU_VERSION=0.1.0

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

update=""
args=()
for a in "$@"; do
    case "$a" in
    --update) update="--update" ;;
    -h | --help) usage ;;
    *) args+=("$a") ;;
    esac
done
if [ "${#args[@]}" -lt 1 ] || [ "${#args[@]}" -gt 2 ]; then usage; fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
abspath() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
SERVER="$(abspath "${args[0]}")"
expected="$(abspath "${args[1]:-$root/tests/autobahn/expected.json}")"
venv="$(abspath "${AUTOBAHN_VENV:-$root/target/autobahn-venv}")"
out="$(abspath "${AUTOBAHN_OUT:-$root/target/autobahn}")"
timeout_s="${AUTOBAHN_TIMEOUT:-900}"
parallel="${AUTOBAHN_PARALLEL:-4}"
exclude="${AUTOBAHN_EXCLUDE-}"

if [ -z "${AUTOBAHN_SERVER_CMD:-}" ] && [ ! -x "$SERVER" ]; then
    echo "autobahn: server binary $SERVER not found or not executable" >&2
    exit 2
fi

# --- kosoku in a virtualenv, reused while it holds the pinned version -------------------
if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('kosoku') != '$KOSOKU_VERSION')" 2>/dev/null; then
    echo "autobahn: installing kosoku $KOSOKU_VERSION into $venv"
    rm -rf "$venv"
    if ! python3 -m venv "$venv"; then
        # Debian's own python3 keeps venv/ensurepip in a separate package.
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
            rm -rf "$venv"
            python3 -m venv "$venv"
        else
            echo "autobahn: python3 -m venv failed (install python3-venv)" >&2
            exit 1
        fi
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check "kosoku==$KOSOKU_VERSION"
fi

# --- for AUTOBAHN_TLS: socat and a certificate -------------------------------------------
tls="${AUTOBAHN_TLS:-}"
need_pkg() {
    command -v "$1" >/dev/null && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >/dev/null
    else
        echo "autobahn: AUTOBAHN_TLS needs $1 (install it)" >&2
        exit 1
    fi
}
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- start the server --------------------------------------------------------------------
PORT="${AUTOBAHN_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
export SERVER PORT
rm -rf "$out"
mkdir -p "$out"
server_log="$out/server.log"

server_pid=""
stop_server() {
    [ -n "$server_pid" ] || return 0
    if kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}
trap stop_server EXIT
trap 'exit 130' INT TERM

if [ -n "${AUTOBAHN_SERVER_CMD:-}" ]; then
    echo "autobahn: starting: $AUTOBAHN_SERVER_CMD  (PORT=$PORT)"
    bash -c "$AUTOBAHN_SERVER_CMD" >"$server_log" 2>&1 &
else
    cmd=("$SERVER" --listen "127.0.0.1:$PORT" --max-message-size 16MiB --max-backlog 64MiB
        --compression-min-size 0 --log warn)
    if [ "$tls" = 1 ]; then
        need_pkg openssl
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
            -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
            -keyout "$out/key.pem" -out "$out/cert.pem" 2>/dev/null
        cmd+=(--tls-cert "$out/cert.pem" --tls-key "$out/key.pem")
    fi
    echo "autobahn: starting: ${cmd[*]}"
    "${cmd[@]}" >"$server_log" 2>&1 &
fi
server_pid=$!

proxy_pid=""
stop_proxy() {
    [ -n "$proxy_pid" ] || return 0
    kill -TERM "$proxy_pid" 2>/dev/null || true
    wait "$proxy_pid" 2>/dev/null || true
    proxy_pid=""
}
trap 'stop_proxy; stop_server' EXIT

server_died() {
    echo "autobahn: the server exited ($1); its log:" >&2
    tail -n 50 "$server_log" >&2 || true
    exit 1
}

for i in $(seq 100); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
        wait "$server_pid" && rc=0 || rc=$?
        server_pid=""
        server_died "status $rc, before listening on port $PORT"
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        break
    fi
    [ "$i" -lt 100 ] || { echo "autobahn: nothing listens on port $PORT after 10 s" >&2; exit 1; }
    sleep 0.1
done

target_port="$PORT"
if [ "$tls" = 1 ]; then
    need_pkg socat
    target_port="$(free_port)"
    # One TLS connection to the server per accepted kosoku connection (fork), verifying the
    # server's certificate against the one made above. nodelay on both sides: without it
    # Nagle's algorithm and delayed ACKs stall every small write by up to 40 ms (cases 12.*
    # ran 9x slower); -b: move up to 64 KiB per read, so large frames are not cut into 8 KiB
    # records.
    socat -b 65536 "TCP-LISTEN:$target_port,bind=127.0.0.1,reuseaddr,fork,nodelay" \
        "OPENSSL:127.0.0.1:$PORT,cafile=$out/cert.pem,snihost=localhost,commonname=localhost,nodelay" \
        >"$out/socat.log" 2>&1 &
    proxy_pid=$!
    for i in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$target_port") 2>/dev/null && break
        [ "$i" -lt 100 ] || { echo "autobahn: socat does not listen on $target_port" >&2; exit 1; }
        sleep 0.1
    done
    echo "autobahn: over TLS: kosoku -> socat :$target_port -> wss server :$PORT"
fi

# --- run the cases -----------------------------------------------------------------------
kosoku_args=(-p "$parallel" -o "$out")
for glob in $exclude; do
    kosoku_args+=(-x "$glob")
done
url="ws://127.0.0.1:$target_port/echo"
echo "autobahn: kosoku ${kosoku_args[*]} $url  (timeout ${timeout_s}s)"
start=$(date +%s)
set +e
timeout --kill-after=10 "$timeout_s" "$venv/bin/kosoku" "${kosoku_args[@]}" "$url" >"$out/kosoku.log" 2>&1
kosoku_rc=$?
set -e
echo "autobahn: kosoku finished in $(($(date +%s) - start)) s with status $kosoku_rc (0: all passed, 1: some case FAILED)"
tail -n 3 "$out/kosoku.log" | cut -c1-300

if ! kill -0 "$server_pid" 2>/dev/null; then
    wait "$server_pid" && rc=0 || rc=$?
    server_pid=""
    server_died "status $rc, during the run"
fi
stop_proxy
stop_server

if [ "$kosoku_rc" -ne 0 ] && [ "$kosoku_rc" -ne 1 ]; then
    echo "autobahn: kosoku did not finish (status $kosoku_rc; 124 is the timeout); its log:" >&2
    tail -n 30 "$out/kosoku.log" >&2
    exit 1
fi
if [ ! -f "$out/index.json" ]; then
    echo "autobahn: kosoku wrote no $out/index.json" >&2
    tail -n 30 "$out/kosoku.log" >&2
    exit 1
fi

"$venv/bin/python" "$root/scripts/autobahn_compare.py" "$out/index.json" "$expected" $update
