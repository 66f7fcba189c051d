#!/usr/bin/env bash
# deploy/launch-multihost.sh for real, on one host: a hostfile "localhost slots=2", a random tiny
# checkpoint with a byte-level tokenizer, mpirun starting the two ranks of one expert-parallel group
# and the router in front of them. A generate call must be served by both ranks' group; SIGTERM must
# stop everything; a rank killed with SIGKILL must end the launch (non-zero) with nothing left.
set -euo pipefail
SOURCE=${NEXTSERVE_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN=${NEXTSERVE_BIN_DIR:?NEXTSERVE_BIN_DIR (the built binaries) is not set}
for b in nextserve nextserve-rank nextserve-router nextserve-make-model; do
  [ -x "$BIN/$b" ] || { echo "FAIL: $BIN/$b is missing (build the project first)"; exit 1; }
done
WORK=$(mktemp -d)
launch_pid=""
cleanup() {
  [ -n "$launch_pid" ] && kill -TERM "$launch_pid" 2>/dev/null && wait "$launch_pid" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN/nextserve-make-model" --out "$WORK/model" --preset tiny --seed 3 >/dev/null
python3 - "$WORK/model" <<'EOF'
# A byte-level BPE tokenizer with no merges and Qwen's special tokens at Qwen's ids.
import json, sys
bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
cs, n = bs[:], 0
for b in range(256):
    if b not in bs:
        bs.append(b); cs.append(256 + n); n += 1
vocab = {chr(c): b for b, c in zip(bs, cs)}
level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True}
added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
          "normalized": False, "special": True}
         for i, t in [(151643, "<|endoftext|>"), (151644, "<|im_start|>"), (151645, "<|im_end|>")]]
json.dump({"version": "1.0", "added_tokens": added, "normalizer": None, "pre_tokenizer": level,
           "decoder": level, "model": {"type": "BPE", "dropout": None, "unk_token": None,
           "fuse_unk": False, "byte_fallback": False, "vocab": vocab, "merges": []}},
          open(sys.argv[1] + "/tokenizer.json", "w"))
EOF
printf 'localhost slots=2\n' >"$WORK/hosts"
read -r RANK_PORT ROUTER_PORT < <(python3 -c '
import socket
def free(n):
    s = [socket.socket() for _ in range(n)]
    for x in s: x.bind(("127.0.0.1", 0))
    return [x.getsockname()[1] for x in s]
while True:
    base, router = free(2)
    try:
        t = socket.socket(); t.bind(("0.0.0.0", base + 1)); t.close()
        t = socket.socket(); t.bind(("0.0.0.0", base)); t.close()
        print(base, router); break
    except OSError:
        pass')

start() {
  MPIRUN_ARGS="--oversubscribe --mca btl_vader_single_copy_mechanism none" \
    bash "$SOURCE/deploy/launch-multihost.sh" --hostfile "$WORK/hosts" --model "$WORK/model" \
    --bin-dir "$BIN" --threads 1 --port "$RANK_PORT" --router-port "$ROUTER_PORT" \
    --router-host 127.0.0.1 -- --kv-blocks 64 --state-slots 4 >"$WORK/launch.log" 2>&1 &
  launch_pid=$!
}
serve() {  # generate once the router serves (it waits for the group's weights)
  for _ in $(seq 1 120); do
    if "$BIN/nextserve" generate --addr "127.0.0.1:$ROUTER_PORT" --prompt "hello" --max-tokens 4 \
        >"$WORK/generate.out" 2>&1; then
      return 0
    fi
    kill -0 "$launch_pid" 2>/dev/null || break
    sleep 1
  done
  echo "FAIL: the router never served"; cat "$WORK/launch.log" "$WORK/generate.out"; exit 1
}
left() { pgrep -f -- "--port $1( |\$)" || true; }
expect_gone() {
  local rest
  # shellcheck disable=SC2046,SC2116
  rest=$(echo $(left "$RANK_PORT") $(left "$ROUTER_PORT"))
  [ -z "$rest" ] || { echo "FAIL: processes left: $rest"; ps -fp "${rest// /,}"; exit 1; }
}

echo "launch_multihost: ranks on localhost:$RANK_PORT..$((RANK_PORT + 1)), router on $ROUTER_PORT"
start
serve
grep -q "completion 4 tokens" "$WORK/generate.out" || { echo "FAIL: $(cat "$WORK/generate.out")"; exit 1; }
# The router may log the second rank's health a poll after the first request was served.
wait_log() {
  for _ in $(seq 1 100); do grep -q "$1" "$WORK/launch.log" && return 0; sleep 0.1; done
  echo "FAIL: no '$1' in the launch log"; cat "$WORK/launch.log"; exit 1
}
wait_log "rank localhost:$RANK_PORT is healthy"
wait_log "rank localhost:$((RANK_PORT + 1)) is healthy"
wait_log "nextserve-rank 1 listening on 0.0.0.0:$((RANK_PORT + 1))"
kill -TERM "$launch_pid"
status=0; wait "$launch_pid" || status=$?
launch_pid=""
[ "$status" = 0 ] || { echo "FAIL: SIGTERM: exit $status"; cat "$WORK/launch.log"; exit 1; }
expect_gone
echo "launch_multihost: served 4 tokens through a group of 2 ranks; SIGTERM stopped everything"

# A lost rank ends its group (mpirun), and the launch stops the router and fails.
start
serve
# A rank itself (its command line starts with the binary), not mpirun, whose line names it too.
victim=$(pgrep -f -- "^$BIN/nextserve-rank .*--port $RANK_PORT( |\$)" | head -1)
[ -n "$victim" ] || { echo "FAIL: no rank process found"; exit 1; }
kill -KILL "$victim"
status=0
for _ in $(seq 1 60); do kill -0 "$launch_pid" 2>/dev/null || break; sleep 1; done
if kill -0 "$launch_pid" 2>/dev/null; then
  echo "FAIL: the launch still runs 60 s after a rank was killed"; cat "$WORK/launch.log"; exit 1
fi
wait "$launch_pid" || status=$?
launch_pid=""
[ "$status" != 0 ] || { echo "FAIL: exit 0 after a rank was killed"; exit 1; }
grep -q "the rank group (mpirun) exited" "$WORK/launch.log" || { cat "$WORK/launch.log"; exit 1; }
expect_gone
echo "launch_multihost: a killed rank ended the launch (exit $status) and nothing was left"
