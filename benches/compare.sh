#!/usr/bin/env bash
# rtc vs NATS (core and JetStream) vs Redis (pub/sub and streams) on this machine, in one run.
#
# Installs nats-server and redis-server from the OS packages if they are missing, starts
# each on a non-default loopback port with its data in a temp dir, runs rtc-bench's live
# workloads (fan-out with 1 and 10 subscribers at 16 B, 128 B and 1 KiB; latency at
# 10 000 msgs/s) against rtc, NATS core and Redis pub/sub, fan-out over WebSocket (rtc's
# gateway against nats-server's websocket listener), and the durable workload
# (acknowledged publish with 1 and 256 in flight, then consume with acks; 128 B, and 1 KiB
# at 256 in flight) against rtc,
# JetStream and Redis streams at two durability settings. Every table comes from five
# alternating rounds (medians, and each ratio's range: single runs are short and a
# shared VM stalls; a median of five stands two stalled rounds, of three only one);
# stops what it started, and
# writes a markdown report (default target/compare.md) with every figure and the ratio
# rtc / rival. rtc runs as its own process too (the release rtc-broker binary over TCP,
# `bench.>` ephemeral, no publish rate limit), so every server shares the 2 cores with
# the load generator the same way.
#
# Durability settings compared:
#   "about 1 s"  rtc fsync = never (sled flushes about every second), Redis AOF
#                appendfsync everysec, JetStream's default (nats-server 2.9 fsyncs every
#                2 minutes and cannot be set otherwise: JetStream is favoured here);
#   "always"     rtc fsync = always, Redis appendfsync always (JetStream 2.9 has no
#                such setting: `sync_interval` arrived in nats-server 2.10).
#
#   benches/compare.sh [REPORT]
set -euo pipefail
cd "$(dirname "$0")/.."
report=${1:-target/compare.md}
NATS_PORT=14222
REDIS_PORT=16379
REDIS_ALWAYS_PORT=16380
RTC_PORT=17400
RTC_ALWAYS_PORT=17401
RTC_HTTP_PORT=17402
NATS_WS_PORT=14223

install_if_missing() {
  local bin=$1 pkg=$2
  if ! command -v "$bin" >/dev/null 2>&1; then
    echo "compare.sh: installing $pkg" >&2
    if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$pkg" >/dev/null
  fi
}
install_if_missing nats-server nats-server
install_if_missing redis-server redis-server

# Each server must be the one this script starts: refuse ports something already uses.
for port in "$NATS_PORT" "$NATS_WS_PORT" "$REDIS_PORT" "$REDIS_ALWAYS_PORT" "$RTC_PORT" "$RTC_ALWAYS_PORT" "$RTC_HTTP_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "compare.sh: port $port is already in use; stop what listens there and rerun" >&2
    exit 1
  fi
done

tmp=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# NATS with its own WebSocket listener, for the WebSocket fan-out.
cat >"$tmp/nats.conf" <<CONF
listen: 127.0.0.1:$NATS_PORT
jetstream { store_dir: "$tmp/nats" }
websocket { listen: "127.0.0.1:$NATS_WS_PORT", no_tls: true }
CONF
nats-server -c "$tmp/nats.conf" >"$tmp/nats.log" 2>&1 &
pids+=($!)
mkdir -p "$tmp/redis" "$tmp/redis-always"
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly yes --appendfsync everysec \
  --dir "$tmp/redis" >"$tmp/redis.log" 2>&1 &
pids+=($!)
redis-server --bind 127.0.0.1 --port "$REDIS_ALWAYS_PORT" --save "" --appendonly yes --appendfsync always \
  --dir "$tmp/redis-always" >"$tmp/redis-always.log" 2>&1 &
pids+=($!)

wait_port() {
  for pid in "${pids[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "compare.sh: a server exited at start; its logs:" >&2
      tail -n 5 "$tmp"/*.log >&2
      exit 1
    fi
  done
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "compare.sh: nothing listens on port $1; the servers' logs:" >&2
  tail -n 5 "$tmp"/*.log >&2
  exit 1
}
cargo build --release -q -p rtc-benches --features peers -p rtc-broker
for fsync in never always; do
  cat >"$tmp/rtc-$fsync.toml" <<TOML
publish_rate = 0
fsync = "$fsync"
[[topic]]
pattern = "bench.>"
storage = "ephemeral"
TOML
done
target/release/rtc-broker --tcp "127.0.0.1:$RTC_PORT" --http "127.0.0.1:$RTC_HTTP_PORT" --data-dir "$tmp/rtc" \
  --config "$tmp/rtc-never.toml" --log warn >"$tmp/rtc.log" 2>&1 &
pids+=($!)
target/release/rtc-broker --tcp "127.0.0.1:$RTC_ALWAYS_PORT" --http off --data-dir "$tmp/rtc-always" \
  --config "$tmp/rtc-always.toml" --log warn >"$tmp/rtc-always.log" 2>&1 &
pids+=($!)

wait_port "$NATS_PORT"
wait_port "$NATS_WS_PORT"
wait_port "$RTC_HTTP_PORT"
wait_port "$REDIS_PORT"
wait_port "$REDIS_ALWAYS_PORT"
wait_port "$RTC_PORT"
wait_port "$RTC_ALWAYS_PORT"

bench=target/release/rtc-bench
peers=(--nats-url "nats://127.0.0.1:$NATS_PORT" --redis-url "redis://127.0.0.1:$REDIS_PORT" --rtc-url "tcp://127.0.0.1:$RTC_PORT")
systems=(--system rtc --system nats --system redis)

mkdir -p "$(dirname "$report")"
{
  echo "# rtc vs NATS vs Redis"
  echo
  echo "$(date -u +%Y-%m-%d), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs),"
  echo "nats-server $(nats-server --version | awk '{print $NF}'), redis $(redis-server --version | awk '{print $3}' | tr -d 'v='), rtc-broker $(target/release/rtc-broker --version | awk '{print $2}') (TCP); each its own process."
  echo
  echo "## Fan-out (100 000 messages, fire-and-forget)"
  echo
  "$bench" fanout "${systems[@]}" "${peers[@]}" --subscribers 1 --subscribers 10 \
    --payload 16 --payload 128 --payload 1024 --count 100000 --rounds 5
  echo
  echo "## Fan-out over WebSocket (100 000 messages, fire-and-forget)"
  echo
  echo "rtc: subscribers on WebSockets to its gateway (rtc.v1.proto), publisher on TCP; NATS: its websocket listener for all clients."
  echo
  "$bench" fanout --system rtc --system nats --transport ws --nats-url "ws://127.0.0.1:$NATS_WS_PORT" \
    --rtc-url "tcp://127.0.0.1:$RTC_PORT" --rtc-http "127.0.0.1:$RTC_HTTP_PORT" \
    --subscribers 1 --subscribers 10 --payload 128 --payload 1024 --count 100000 --rounds 5
  echo
  echo "## Latency (10 000 msgs/s, 128 B)"
  echo
  "$bench" latency "${systems[@]}" "${peers[@]}" --rate 10000 --count 50000 --rounds 5
  echo
  echo "## Durable: acknowledged publish with W in flight, then consume with acks (128 B)"
  echo
  echo "Durability about 1 s: rtc fsync never, Redis appendfsync everysec, JetStream default (fsync every 2 min)."
  echo
  "$bench" durable --system rtc --system jetstream --system redis --server "tcp://127.0.0.1:$RTC_PORT" \
    --nats-url "nats://127.0.0.1:$NATS_PORT" --redis-url "redis://127.0.0.1:$REDIS_PORT" \
    --durability "about 1 s" --window 1 --window 256 --rounds 5
  echo
  echo "The same at 1 KiB, W = 256:"
  echo
  "$bench" durable --system rtc --system jetstream --system redis --server "tcp://127.0.0.1:$RTC_PORT" \
    --nats-url "nats://127.0.0.1:$NATS_PORT" --redis-url "redis://127.0.0.1:$REDIS_PORT" \
    --durability "about 1 s" --window 256 --payload 1024 --rounds 5
  echo
  echo "Durability always (fsync before the acknowledgement): rtc fsync always, Redis appendfsync always; JetStream 2.9 cannot."
  echo
  "$bench" durable --system rtc --system redis --server "tcp://127.0.0.1:$RTC_ALWAYS_PORT" \
    --redis-url "redis://127.0.0.1:$REDIS_ALWAYS_PORT" --durability always --window 1 --window 256 --rounds 5
  echo
  echo "The same at 1 KiB, W = 256:"
  echo
  "$bench" durable --system rtc --system redis --server "tcp://127.0.0.1:$RTC_ALWAYS_PORT" \
    --redis-url "redis://127.0.0.1:$REDIS_ALWAYS_PORT" --durability always --window 256 --payload 1024 --rounds 5
} | tee "$report"
echo "compare.sh: report written to $report" >&2
