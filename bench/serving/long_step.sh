#!/bin/bash
# One prefill step of N tokens (the rank's --max-batch-tokens is N, one thread) behind a router
# with its default health flags: prints how long the step took and whether any probe missed.
#   N=32000 bash bench/serving/long_step.sh
# Env: BIN (build/bin), MODEL (build/models/tiny; its context must hold N + 1 tokens).
set -u
BIN=${BIN:-build/bin}
MODEL=${MODEL:-build/models/tiny}
N=${N:-32000}
tmp=$(mktemp -d)
listening_port() { sed -n 's/.*listening on [0-9.]*:\([0-9]*\).*/\1/p' "$1" | head -1; }
OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive "$BIN/nextserve-rank" --model "$MODEL" --port 0 \
  --threads 1 --max-batch-tokens "$N" --kv-blocks $(((N + 64) / 64 + 1)) >"$tmp/rank.log" 2>&1 &
rank_pid=$!
until [ -n "$(listening_port "$tmp/rank.log")" ]; do sleep 0.1; done
"$BIN/nextserve-router" --model "$MODEL" --port 0 \
  --ranks "127.0.0.1:$(listening_port "$tmp/rank.log")" >"$tmp/router.log" 2>&1 &
router_pid=$!
until grep -q "is healthy" "$tmp/router.log" 2>/dev/null; do sleep 0.1; done
ids=$(python3 -c "print(','.join(str(1 + i % 200) for i in range($N)))")
start=$(date +%s.%N)
"$BIN/nextserve" generate --addr "127.0.0.1:$(listening_port "$tmp/router.log")" \
  --prompt-ids "$ids" --max-tokens 1 --temperature 0 >/dev/null 2>"$tmp/generate.err"
rc=$?
echo "prompt of $N tokens in one step: exit $rc after $(echo "$(date +%s.%N) - $start" | bc) s"
tail -1 "$tmp/generate.err"
grep -E "suspect|is down|answering again" "$tmp/router.log" || echo "router: no probe missed"
kill "$router_pid" "$rank_pid"
wait
rm -rf "$tmp"
