#!/usr/bin/env bash
# End to end, Nave against its peer in the same run: the default cluster (`nave up`
# on cluster.toml: 3 hubs, 2 spokes of 1 engine thread each) and, with the same model file
# and the same total threads, two llama.cpp servers of 1 thread each (PyPI xllamacpp)
# behind sgl-router (PyPI sglang-router, `smg launch`), as a user would set them up.
# `nave bench --compare` runs each concurrency against both, alternating halves.
#
#   bench/e2e.sh [CONCURRENCIES] [REQUESTS_PER_CLIENT]     # default: "1 8 32" 4
#
# Results: a table per concurrency on stdout, JSON in target/e2e/. Stops everything it
# started on exit. Ports: Nave's cluster.toml, 18500 (router), 18501-18502 (llama.cpp).
set -euo pipefail
cd "$(dirname "$0")/.."
CONC="${1:-1 8 32}"
PER="${2:-4}"
MODEL="${NAVE_HOME:-$HOME/.cache/nave}/models/smollm2-135m.gguf"
OUT=target/e2e
mkdir -p "$OUT"

python3 -c "import xllamacpp" 2>/dev/null || python3 -m pip install --quiet xllamacpp
command -v smg >/dev/null || python3 -m pip install --quiet sglang-router
cargo build --release --locked --bin nave
NAVE=target/release/nave
$NAVE model pull smollm2-135m >/dev/null

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

$NAVE up > "$OUT/nave-up.log" 2>&1 &
pids+=($!)
python3 bench/peer_llamacpp_server.py "$MODEL" 18501 1 32 > "$OUT/llama1.log" 2>&1 &
pids+=($!)
python3 bench/peer_llamacpp_server.py "$MODEL" 18502 1 32 > "$OUT/llama2.log" 2>&1 &
pids+=($!)

wait_http() {
  for _ in $(seq 1 600); do
    curl -sf "$1" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "no answer from $1" >&2
  return 1
}
wait_http http://127.0.0.1:18501/health
wait_http http://127.0.0.1:18502/health
smg launch --host 127.0.0.1 --port 18500 --worker-urls http://127.0.0.1:18501 http://127.0.0.1:18502 \
  --policy cache_aware > "$OUT/router.log" 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:18500/health
wait_http http://127.0.0.1:8080/ready

for c in $CONC; do
  echo "== $c clients"
  $NAVE bench --url http://127.0.0.1:8080 --compare http://127.0.0.1:18500 \
    --concurrency "$c" --requests $((c * PER)) --max-tokens 32 --prompt-len 32 --json "$OUT/c$c.json"
done
