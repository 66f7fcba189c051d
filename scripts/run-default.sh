#!/usr/bin/env bash
# The default job: set up, generate the small default model once, and run the offline engine on a
# prompt, printing the greedy continuation and timings.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
MODEL=${NEXTSERVE_MODEL:-build/models/tiny}
if [ ! -f "$MODEL/model.safetensors" ]; then
  build/bin/nextserve-make-model --out "$MODEL" --preset tiny --dtype bf16
fi
echo "nextserve-run --model $MODEL --prompt-ids 9707,11,1879,0 --max-tokens 16"
build/bin/nextserve-run --model "$MODEL" --prompt-ids 9707,11,1879,0 --max-tokens 16 --ignore-eos --stats
