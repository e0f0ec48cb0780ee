#!/usr/bin/env bash
# Reruns the single-node benchmarks of docs/benchmarks.md on this machine:
# one release pace-node on loopback, then `hold` (idle devices, memory per
# device), `broadcast` (delivery latency, CPU per delivery) and `overhead`
# (bytes on the wire per waiting device: WebSocket against 1/s HTTP polling),
# each against a fresh node. Every run writes a JSON report and an SVG chart.
# `surge` and `failover` need the 3-node cluster (deploy/local/up 3): their
# commands are in docs/benchmarks.md.
#
# Usage: loadtest/bench.sh            (from anywhere; builds release first)
# Env:   DEVICES=10000 MESSAGES=20 INTERVAL_MS=500 HOLD=10 PORT=18080
#        OVERHEAD_DEVICES=1000 OVERHEAD_SECONDS=60 (SKIP_OVERHEAD=1 to skip it)
#        OUT=target/bench  NO_BUILD=1 (use already-built binaries)
#        CARGO_TARGET_DIR (where the release binaries are)
#        NICE=-10 (run node and load generator at this niceness, as root, when
#        the machine is shared with other work; default: unchanged)
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICES=${DEVICES:-10000}
MESSAGES=${MESSAGES:-20}
INTERVAL_MS=${INTERVAL_MS:-500}
HOLD=${HOLD:-10}
OVERHEAD_DEVICES=${OVERHEAD_DEVICES:-1000}
OVERHEAD_SECONDS=${OVERHEAD_SECONDS:-60}
PORT=${PORT:-18080}
OUT=${OUT:-target/bench}
KEY=bench-service-key-0123456789
BIN=${CARGO_TARGET_DIR:-target}/release
RUN=()
if [ -n "${NICE:-}" ]; then RUN=(nice -n "$NICE"); fi

if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release -p pace-node -p pace-loadtest
fi
mkdir -p "$OUT"

NODE=""
stop_node() {
  if [ -n "$NODE" ]; then
    kill -TERM "$NODE" 2>/dev/null || true
    wait "$NODE" 2>/dev/null || true
    NODE=""
  fi
}
trap stop_node EXIT

start_node() {
  # The load-test devices have no device tokens: the node must accept
  # anonymous devices (it says so loudly; never in production).
  "${RUN[@]}" "$BIN/pace-node" serve --listen "127.0.0.1:$PORT" --service-key "$KEY" \
    --max-connections 15000 --insecure-anonymous-devices --log warn &
  NODE=$!
  for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "pace-node did not become ready" >&2
  exit 1
}

echo "== load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, kernel $(uname -r), $(date -u +%F)"

start_node
"${RUN[@]}" "$BIN/pace-loadtest" hold --target "http://127.0.0.1:$PORT" --devices "$DEVICES" \
  --hold "$HOLD" --node-pid "$NODE" --json "$OUT/hold.json" --svg "$OUT/hold.svg"
stop_node

start_node
"${RUN[@]}" "$BIN/pace-loadtest" broadcast --target "http://127.0.0.1:$PORT" --devices "$DEVICES" \
  --messages "$MESSAGES" --interval-ms "$INTERVAL_MS" --service-key "$KEY" \
  --node-pid "$NODE" --json "$OUT/broadcast.json" --svg "$OUT/broadcast.svg"
stop_node

if [ -z "${SKIP_OVERHEAD:-}" ]; then
  # A paused room (the queue stands still: the WebSocket carries pings only),
  # then a moving one (capacity 10, slots held 1 s: positions change).
  start_node
  "${RUN[@]}" "$BIN/pace-loadtest" overhead --target "http://127.0.0.1:$PORT" \
    --devices "$OVERHEAD_DEVICES" --duration "$OVERHEAD_SECONDS" --service-key "$KEY" \
    --json "$OUT/overhead-paused.json" --svg "$OUT/overhead-paused.svg"
  stop_node
  start_node
  "${RUN[@]}" "$BIN/pace-loadtest" overhead --target "http://127.0.0.1:$PORT" \
    --devices "$OVERHEAD_DEVICES" --duration "$OVERHEAD_SECONDS" --capacity 10 --hold-admitted 1000 \
    --service-key "$KEY" --json "$OUT/overhead-moving.json" --svg "$OUT/overhead-moving.svg"
  stop_node
fi

echo "JSON reports and SVG charts in $OUT/"
