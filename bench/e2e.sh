#!/usr/bin/env bash
# End to end, Nave against what a user would run instead, in the same run: the default
# cluster (`nave up` on cluster.toml: 3 hubs, 1 spoke using every core) and one llama.cpp
# server (PyPI xllamacpp) using every core with 32 slots and continuous batching, on the
# same GGUF file. Both are driven by the official OpenAI SDK streaming 64-token stories
# (bench/e2e_sdk.py: tokens counted from `usage`, time to first token from the first
# content chunk), alternating rounds.
#
#   bench/e2e.sh [CLIENTS] [REQUESTS_PER_CLIENT]     # default: "1,8,32" 4
#
# Results: a table on stdout, JSON in target/e2e/. Stops everything it started on exit.
# Ports: Nave's cluster.toml, 18501 (llama.cpp).
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS="${1:-1,8,32}"
PER="${2:-4}"
MODEL="${NAVE_HOME:-$HOME/.cache/nave}/models/smollm2-135m.gguf"
OUT=target/e2e
mkdir -p "$OUT"
CORES=$(nproc)

python3 -c "import xllamacpp, openai" 2>/dev/null || python3 -m pip install --quiet xllamacpp openai
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
python3 bench/peer_llamacpp_server.py "$MODEL" 18501 "$CORES" 32 > "$OUT/llama.log" 2>&1 &
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
wait_http http://127.0.0.1:8080/ready
# An ordinary key for the prompts (the admin key manages keys).
KEY=$($NAVE admin key create --name "e2e-bench-$(date +%s)" | tail -1)

python3 bench/e2e_sdk.py --target "nave=http://127.0.0.1:8080/v1,$KEY" \
  --target "llama.cpp=http://127.0.0.1:18501/v1" --clients "$CLIENTS" --requests "$PER" \
  --json "$OUT/e2e.json"
