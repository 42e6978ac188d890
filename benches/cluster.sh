#!/usr/bin/env bash
# Cluster mode on one Redis, in one run: rtc-bench's live fan-out, latency and
# acknowledged durable publish (W = 256) through 1, 2 and 3 rtc nodes (release
# rtc-broker processes, `--cluster`), against rtc embedded (one broker, its own store)
# and against Redis used directly (pub/sub for fan-out and latency, XADD for durable),
# the ceiling cluster mode builds on.
#
# Publisher on node 1; subscribers on the other nodes in turn (with one node, on node 1
# itself). On 2 cores this measures the overhead of going through Redis, not scaling:
# every node, Redis and the load generator share the same two cores.
#
# Redis runs with appendonly yes, appendfsync everysec (Redis's usual persistence; the
# embedded rtc uses fsync never, which also flushes about every second).
#
#   benches/cluster.sh [REPORT] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
report=${1:-target/cluster.md}
rounds=${2:-3}
REDIS_PORT=16390
BASE_PORT=17410

command -v redis-server >/dev/null 2>&1 || scripts/ensure-redis.sh >/dev/null
for port in "$REDIS_PORT" $((BASE_PORT)) $((BASE_PORT + 1)) $((BASE_PORT + 2)) $((BASE_PORT + 9)); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "cluster.sh: port $port is already in use; stop what listens there and rerun" >&2
    exit 1
  fi
done

cargo build --release -q -p rtc-broker -p rtc-benches --features rtc-benches/peers
bench=target/release/rtc-bench
broker=target/release/rtc-broker
work=$(mktemp -d)
pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}
trap 'stop_all; rm -rf "$work"' EXIT

wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "cluster.sh: nothing listens on $1" >&2
  exit 1
}

start_redis() {
  mkdir -p "$work/redis"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$work/redis" --save "" \
    --appendonly yes --appendfsync everysec --daemonize no >/dev/null &
  pids+=($!)
  wait_port "$REDIS_PORT"
}

# start_nodes N: N rtc nodes on one Redis (flushed first), on BASE_PORT…
start_nodes() {
  redis-cli -p "$REDIS_PORT" FLUSHALL >/dev/null
  cat >"$work/rtc.toml" <<EOF
fsync = "never"
publish_rate = 0
http = "off"
[[topic]]
pattern = "bench.>"
storage = "ephemeral"
[cluster]
redis = "redis://127.0.0.1:$REDIS_PORT"
prefix = "bench"
EOF
  for i in $(seq 0 $(($1 - 1))); do
    "$broker" --config "$work/rtc.toml" --tcp "127.0.0.1:$((BASE_PORT + i))" \
      --data-dir "$work/node$i" --log warn >/dev/null &
    pids+=($!)
    wait_port $((BASE_PORT + i))
  done
}

# The embedded broker for comparison: same settings, no cluster.
start_embedded() {
  cat >"$work/embedded.toml" <<EOF
fsync = "never"
publish_rate = 0
http = "off"
[[topic]]
pattern = "bench.>"
storage = "ephemeral"
EOF
  "$broker" --config "$work/embedded.toml" --tcp "127.0.0.1:$((BASE_PORT + 9))" \
    --data-dir "$work/embedded" --log warn >/dev/null &
  pids+=($!)
  wait_port $((BASE_PORT + 9))
}

subs_of() { # the subscriber URLs for N nodes
  if [ "$1" -eq 1 ]; then echo "--rtc-sub-url tcp://127.0.0.1:$BASE_PORT"; return; fi
  for i in $(seq 1 $(($1 - 1))); do echo -n "--rtc-sub-url tcp://127.0.0.1:$((BASE_PORT + i)) "; done
}

redis_url="redis://127.0.0.1:$REDIS_PORT"
# Not a pipeline into tee: the servers' pids must stay in this shell for the trap.
exec > >(tee "$report")
{
  echo "# rtc cluster mode on one Redis ($(date -u +%Y-%m-%d), $(nproc) cores, $rounds rounds)"
  echo
  echo "Publisher on node 1, subscribers on the other nodes (one node: on it). Redis $(redis-server --version | awk '{print $3}'), appendfsync everysec."
  start_redis
  start_embedded
  echo
  echo "## rtc embedded (one broker, no Redis)"
  echo
  "$bench" fanout --rtc-url "tcp://127.0.0.1:$((BASE_PORT + 9))" --system rtc --system redis --redis-url "$redis_url" \
    --subscribers 1 --subscribers 10 --payload 128 --count 100000 --rounds "$rounds"
  echo
  "$bench" latency --rtc-url "tcp://127.0.0.1:$((BASE_PORT + 9))" --system rtc --system redis --redis-url "$redis_url" \
    --rate 10000 --count 30000 --rounds "$rounds"
  echo
  "$bench" durable --server "tcp://127.0.0.1:$((BASE_PORT + 9))" --system rtc --system redis --redis-url "$redis_url" \
    --durability "rtc fsync never / Redis everysec" --window 256 --count 100000 --rounds "$rounds"
  for n in 1 2 3; do
    start_nodes "$n"
    echo
    echo "## $n node(s) on one Redis"
    echo
    # shellcheck disable=SC2046
    "$bench" fanout --rtc-url "tcp://127.0.0.1:$BASE_PORT" $(subs_of "$n") --system rtc --system redis \
      --redis-url "$redis_url" --subscribers 1 --subscribers 10 --payload 128 --count 100000 --rounds "$rounds"
    echo
    # shellcheck disable=SC2046
    "$bench" latency --rtc-url "tcp://127.0.0.1:$BASE_PORT" $(subs_of "$n") --system rtc --system redis \
      --redis-url "$redis_url" --rate 10000 --count 30000 --rounds "$rounds"
    echo
    "$bench" durable --server "tcp://127.0.0.1:$BASE_PORT" --system rtc --system redis --redis-url "$redis_url" \
      --durability "Redis everysec" --window 256 --count 100000 --rounds "$rounds"
    # Nodes of this size stop; Redis and the embedded broker stay.
    for pid in "${pids[@]:2}"; do kill "$pid" 2>/dev/null || true; done
    wait "${pids[@]:2}" 2>/dev/null || true
    pids=("${pids[@]:0:2}")
  done
}
echo "cluster.sh: report in $report" >&2
