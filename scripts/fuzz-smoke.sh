#!/usr/bin/env bash
# CI: each libFuzzer target (tests/fuzz/) runs for a bounded time on its committed corpus and fails
# on a crash, a sanitizer report, a timeout or a broken invariant (the targets abort()). Builds only
# the fuzz targets, with clang, into build-fuzz/. NEXTSERVE_FUZZ_SECONDS sets the time per target.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_DIR=${NEXTSERVE_FUZZ_BUILD_DIR:-build-fuzz}
SECONDS_EACH=${NEXTSERVE_FUZZ_SECONDS:-30}

if [ ! -f "$FUZZ_DIR/build.ninja" ]; then
  launcher=()
  command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
  CC=clang CXX=clang++ cmake -S . -B "$FUZZ_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DNEXTSERVE_FUZZ=ON -DNEXTSERVE_CUDA=OFF "${launcher[@]}" >/dev/null
fi
# target:corpus:max_len[:dictionary]
runs=(
  "fuzz_safetensors:tests/fuzz/corpus/safetensors:4096:tests/fuzz/safetensors.dict"
  "tokenizer_encode_fuzz:tests/fuzz/corpus/tokenizer_encode:2048"
  "tokenizer_detokenizer_fuzz:tests/fuzz/corpus/tokenizer_detokenizer:1024"
)
targets=()
for r in "${runs[@]}"; do targets+=("${r%%:*}"); done
cmake --build "$FUZZ_DIR" --target "${targets[@]}" -j "$(nproc)"
# The clang tree uses packages of its own (clang's OpenMP, libomp-14-dev): check them too.
bash scripts/check-packages.sh "$FUZZ_DIR"

# The tokenizer targets use the real Qwen tokenizer that setup.sh prepares in build/, when it is there.
if [ -z "${NEXTSERVE_FUZZ_MODEL:-}" ] && [ -f build/tokenizer-data/qwen/tokenizer.json ]; then
  export NEXTSERVE_FUZZ_MODEL=$PWD/build/tokenizer-data/qwen
fi
artifacts="$FUZZ_DIR/fuzz-artifacts"
mkdir -p "$artifacts"
failed=()
for r in "${runs[@]}"; do
  IFS=: read -r target corpus max_len dict <<<"$r"
  # New inputs go to a scratch directory (libFuzzer writes into the first one), so the committed
  # seeds stay as they are.
  scratch=$(mktemp -d)
  args=(-max_total_time="$SECONDS_EACH" -max_len="$max_len" -timeout=25 -rss_limit_mb=2048
        -print_final_stats=1 -artifact_prefix="$artifacts/$target-")
  [ -n "$dict" ] && args+=(-dict="$dict")
  echo "fuzz-smoke: $target for ${SECONDS_EACH} s on $corpus"
  if "$FUZZ_DIR/bin/$target" "${args[@]}" "$scratch" "$corpus" >"$artifacts/$target.log" 2>&1; then
    grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb' "$artifacts/$target.log" | tr '\n' ' '
    echo
  else
    tail -n 40 "$artifacts/$target.log"
    echo "fuzz-smoke: $target FAILED (log and reproducer under $artifacts/)" >&2
    failed+=("$target")
  fi
  rm -rf "$scratch"
done
((${#failed[@]} == 0)) || { echo "fuzz-smoke: failed: ${failed[*]}" >&2; exit 1; }
