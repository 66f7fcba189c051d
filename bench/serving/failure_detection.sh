#!/bin/bash
# Failure detection with the router's default health flags: a router and 2 ranks on MODEL, 4 long
# greedy streams (2 per rank), then rank 0 is killed (kill -9) or stopped (SIGSTOP) for SECONDS and
# resumed. Prints how each stream ended, when (seconds after the signal), and what the router said.
#
#   bash bench/serving/failure_detection.sh kill
#   bash bench/serving/failure_detection.sh stop 8     # longer than --fail-after-ms: declared down
#   bash bench/serving/failure_detection.sh stop 4     # shorter: suspect only, every stream finishes
# Env: BIN (build/bin), MODEL (build/models/tiny), TOKENS (1500), ROUTER_ARGS (extra router flags).
set -u
BIN=${BIN:-build/bin}
MODEL=${MODEL:-build/models/tiny}
TOKENS=${TOKENS:-1500}
mode=${1:?usage: failure_detection.sh kill | stop SECONDS}
stop_s=${2:-0}
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null; kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

# Starts a server in the background; sets `port` once it listens.
start() {
  local log=$1
  shift
  "$@" >"$log" 2>&1 &
  pids+=($!)
  for _ in $(seq 600); do
    port=$(sed -n 's/.*listening on [0-9.]*:\([0-9]*\).*/\1/p' "$log" | head -1)
    if [ -n "$port" ]; then return 0; fi
    sleep 0.1
  done
  echo "did not start: $*" >&2
  cat "$log" >&2
  return 1
}

rank_port=()
for r in 0 1; do
  OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive start "$tmp/rank$r.log" \
    "$BIN/nextserve-rank" --model "$MODEL" --port 0 --threads 1 --rank-id $r || exit 1
  rank_port[$r]=$port
done
rank0_pid=${pids[0]}
# shellcheck disable=SC2086
start "$tmp/router.log" "$BIN/nextserve-router" --model "$MODEL" --port 0 \
  --ranks "127.0.0.1:${rank_port[0]},127.0.0.1:${rank_port[1]}" ${ROUTER_ARGS:-} || exit 1
router_port=$port
addr=127.0.0.1:$router_port
until "$BIN/nextserve" generate --addr "$addr" --prompt-ids 1,2 --max-tokens 1 --quiet \
  >/dev/null 2>&1; do sleep 0.1; done
until grep -q "127.0.0.1:${rank_port[1]} is healthy" "$tmp/router.log"; do sleep 0.1; done

for i in 0 1 2 3; do
  (
    "$BIN/nextserve" generate --addr "$addr" --prompt-ids "7,8,9,$i" --max-tokens "$TOKENS" \
      --ignore-eos --temperature 0 --quiet >/dev/null 2>"$tmp/stream$i.err"
    echo "$? $(date +%s.%N)" >"$tmp/stream$i.end"
  ) &
done
sleep 1  # all four running, two per rank
t0=$(date +%s.%N)
if [ "$mode" = kill ]; then
  kill -9 "$rank0_pid"
  wait "$rank0_pid" 2>/dev/null  # reap it quietly
else
  kill -STOP "$rank0_pid"
  sleep "$stop_s"
  kill -CONT "$rank0_pid"
fi
wait_streams() {
  for i in 0 1 2 3; do
    until [ -f "$tmp/stream$i.end" ]; do sleep 0.05; done
  done
}
wait_streams
echo "rank 0 ${mode}${2:+ for ${stop_s} s}; defaults unless ROUTER_ARGS='${ROUTER_ARGS:-}'"
for i in 0 1 2 3; do
  read -r rc end <"$tmp/stream$i.end"
  printf "stream %d: exit %d at %+.2f s %s\n" "$i" "$rc" "$(echo "$end - $t0" | bc)" \
    "$(head -c 160 "$tmp/stream$i.err" | tr '\n' ' ')"
done
echo "router:"
grep -E "suspect|is down|answering again|healthy" "$tmp/router.log" | sed 's/^/  /'
