#!/usr/bin/env bash
# The default job: set up (install + build), make the small default model once (random weights,
# the real Qwen vocabulary and tokenizer), start a local router + 2 worker ranks, ask one question,
# print the streamed answer, and stop everything cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

MODEL=${NEXTSERVE_MODEL:-build/models/tiny}
if [ ! -f "$MODEL/model.safetensors" ]; then
  build/bin/nextserve-make-model --out "$MODEL" --preset tiny --dtype bf16
fi
if [ ! -f "$MODEL/tokenizer.json" ]; then
  [ -f build/tokenizer-data/qwen/tokenizer.json ] || python3 tools/make_qwen_tokenizer.py --out build/tokenizer-data/qwen
  cp build/tokenizer-data/qwen/tokenizer.json build/tokenizer-data/qwen/tokenizer_config.json "$MODEL/"
fi

PORT=${NEXTSERVE_PORT:-8000}
LOG=build/nextserve-up.log
build/bin/nextserve up --model "$MODEL" --ranks 2 --port "$PORT" >"$LOG" 2>&1 &
UP=$!
stop() {
  kill -INT "$UP" 2>/dev/null || true
  wait "$UP" 2>/dev/null || true
}
trap stop EXIT
for _ in $(seq 1 600); do
  grep -q "router at" "$LOG" && break
  kill -0 "$UP" 2>/dev/null || { cat "$LOG"; exit 1; }
  sleep 0.1
done
grep "router at" "$LOG"
echo "> nextserve generate --chat-template --prompt 'What is a mixture of experts?' --max-tokens 32 --temperature 0"
build/bin/nextserve generate --addr "127.0.0.1:$PORT" --chat-template \
  --prompt "What is a mixture of experts?" --max-tokens 32 --temperature 0
echo "(the default model has random weights: the answer is noise, the pipeline is real)"
