#!/usr/bin/env bash
# What the hubs themselves cost: three hubs on loopback in front of a spoke that answers
# at once (bench/src/bin/instant-spoke.rs), requests with an API key (so every request
# pays its admission and settlement writes through Raft), streamed, one output token.
#
#   bench/hub_overhead.sh [REQUESTS]        # default 2000
#
# Prints, at 1 and 64 clients, end-to-end latency through a hub beside the same workload
# sent to the spoke directly (`--compare spoke:s1`, alternating halves) and what the hub
# adds; then latency at 2,000 requests/s on one hub, and requests/s with 100 clients
# spread over the three hubs. Ports 18080-18082 (HTTP), 17001-17003 and 17101.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-2000}"
cargo build --release --locked --workspace --bin nave --bin instant-spoke
NAVE=target/release/nave
DIR=$(mktemp -d)
cat > "$DIR/cluster.toml" <<TOML
[cluster]
data_dir = "$DIR/data"
[[hub]]
id = "h1"
http = "127.0.0.1:18080"
quic = "127.0.0.1:17001"
[[hub]]
id = "h2"
http = "127.0.0.1:18081"
quic = "127.0.0.1:17002"
[[hub]]
id = "h3"
http = "127.0.0.1:18082"
quic = "127.0.0.1:17003"
[[spoke]]
id = "s1"
http = "127.0.0.1:19101"
quic = "127.0.0.1:17101"
models = ["smollm2-135m"]
TOML
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
# The spoke first: it creates the cluster CA the hubs then share.
target/release/instant-spoke --config "$DIR/cluster.toml" --id s1 2>"$DIR/spoke.log" &
pids+=($!)
sleep 1
for h in h1 h2 h3; do
  $NAVE hub --config "$DIR/cluster.toml" --id $h 2>"$DIR/$h.log" &
  pids+=($!)
done
for port in 18080 18081 18082; do
  ready=no
  for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && { ready=yes; break; }; sleep 0.2; done
  if [ $ready = no ]; then
    echo "the hub on port $port is not ready; its log:" >&2
    for f in "$DIR"/h*.log; do echo "== $f" >&2; tail -n 5 "$f" >&2; done
    exit 1
  fi
done
KEY=$($NAVE admin key create --name bench --url http://127.0.0.1:18080 --key "$(cat "$DIR/data/admin.key")" | tail -1)
run() { $NAVE bench --url "$1" --key "$KEY" --concurrency "$2" --requests "$3" --max-tokens 1 --prompt-len 8 --json "$4" >/dev/null; }
run_rate() { $NAVE bench --url "$1" --key "$KEY" --rate "$2" --requests "$3" --max-tokens 1 --prompt-len 8 --json "$4" >/dev/null; }
report() { python3 -c "
import json,sys
rs=[json.load(open(f))[0] for f in sys.argv[2:]]
ok=sum(r['succeeded'] for r in rs); n=sum(r['requests'] for r in rs)
rps=sum(r['requests_per_s'] for r in rs)
e=rs[0]['e2e']
print(f'{sys.argv[1]:<34} {rps:>8.0f} req/s  success {100*ok/n:.1f}%  E2E p50 {e[\"p50_ms\"]:.2f} ms  p99 {e[\"p99_ms\"]:.2f} ms  max {e[\"max_ms\"]:.1f} ms')
" "$@"; }
# Through a hub and straight to the spoke, the same requests in alternating halves.
added() {
  $NAVE bench --url "$1" --compare spoke:s1 --config "$DIR/cluster.toml" --key "$KEY" --concurrency "$2" --requests "$3" --max-tokens 1 --prompt-len 8 --json "$4" >/dev/null
  python3 -c "
import json,sys
hub,direct=json.load(open(sys.argv[2]))
h,d=hub['e2e'],direct['e2e']
print(f'{sys.argv[1]:<34} {hub[\"requests_per_s\"]:>8.0f} req/s  success {100*hub[\"success_rate\"]:.1f}%  E2E p50 {h[\"p50_ms\"]:.2f} ms  p99 {h[\"p99_ms\"]:.2f} ms')
print(f'{\"  the spoke directly\":<34} {direct[\"requests_per_s\"]:>8.0f} req/s  success {100*direct[\"success_rate\"]:.1f}%  E2E p50 {d[\"p50_ms\"]:.2f} ms  p99 {d[\"p99_ms\"]:.2f} ms')
print(f'{\"  added by the hubs\":<34} {\"\":>14}  {\"\":>13}  E2E p50 {h[\"p50_ms\"]-d[\"p50_ms\"]:.2f} ms  p99 {h[\"p99_ms\"]-d[\"p99_ms\"]:.2f} ms')
" "$5" "$4"
}
run http://127.0.0.1:18080 1 200 "$DIR/warm.json"
added http://127.0.0.1:18080 1 "$N" "$DIR/c1.json" "1 client, hub h1"
added http://127.0.0.1:18081 64 "$N" "$DIR/c64.json" "64 clients, hub h2 (a follower?)"
# Closed loop, 64 clients wait on each other (p50 = 64 / throughput): the same hub at a
# fixed 2,000 requests/s (Poisson arrivals) shows its cost without that queue.
run_rate http://127.0.0.1:18081 2000 "$N" "$DIR/r2000.json"; report "2,000 req/s open loop, hub h2" "$DIR/r2000.json"
# The admin key skips admission and settlement: no Raft write, so this is the HTTP, QUIC
# and load-generator path alone, a floor for what `nave bench` itself sustains.
$NAVE bench --url http://127.0.0.1:18080 --key "$(cat "$DIR/data/admin.key")" --concurrency 64 --requests "$N" --max-tokens 1 --prompt-len 8 --json "$DIR/admin.json" >/dev/null
report "64 clients, admin key (no Raft)" "$DIR/admin.json"
bench_pids=()
for i in 0 1 2; do run "http://127.0.0.1:1808$i" 34 "$N" "$DIR/c100-$i.json" & bench_pids+=($!); done
wait "${bench_pids[@]}"
report "100 clients over 3 hubs" "$DIR/c100-0.json" "$DIR/c100-1.json" "$DIR/c100-2.json"
