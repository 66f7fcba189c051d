#!/usr/bin/env bash
# Soak (outside CI): a router + 2 replica ranks under a steady, light load (4 concurrent streams)
# for 30 minutes by default; every 30 s one CSV row per process with RSS, open fds, threads and the
# ranks' free KV blocks / state slots, then a summary (first sample -> idle at the end).
#   bash scripts/soak.sh [--duration-s 1800] [--streams 4] [--ranks 2] [--sample-s 30] [--csv F]
# Needs a build (scripts/setup.sh); writes the tiny model to build/models/tiny if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake --build build --target soak nextserve-make-model -j 2 >/dev/null
MODEL=build/models/tiny
if [ ! -f "$MODEL/config.json" ]; then
  build/bin/nextserve-make-model --out "$MODEL" --preset tiny --dtype bf16
fi
if [ ! -f "$MODEL/tokenizer.json" ]; then
  [ -f build/tokenizer-data/qwen/tokenizer.json ] || python3 tools/make_qwen_tokenizer.py --out build/tokenizer-data/qwen
  cp build/tokenizer-data/qwen/tokenizer.json build/tokenizer-data/qwen/tokenizer_config.json "$MODEL/"
fi
# A copy of the binaries, so that rebuilding during a long soak does not disturb it.
BIN=build/soak/bin-$$
mkdir -p "$BIN"
cp build/bin/soak build/bin/nextserve-router build/bin/nextserve-rank "$BIN/"
trap 'rm -rf "$BIN"' EXIT
has_csv=0
duration=1800
prev=""
for a in "$@"; do
  [[ "$a" == --csv* ]] && has_csv=1
  [[ "$prev" == --duration-s ]] && duration="$a"
  [[ "$a" == --duration-s=* ]] && duration="${a#--duration-s=}"
  prev="$a"
done
args=("$@")
if [ "$has_csv" = 0 ]; then
  csv="build/soak/soak-$(date -u +%Y%m%dT%H%M%SZ).csv"
  args+=(--csv "$csv" --log-dir "${csv%.csv}-logs")
  echo "soak: samples in $csv" >&2
fi
# Bounded: the driver stops its load at --duration-s; this is a backstop if anything hangs.
timeout --kill-after=30 "$((duration + 300))" "$BIN/soak" --model "$MODEL" "${args[@]}"
