#!/usr/bin/env bash
# The GPU check of issue 13, for a lent H100/H200 machine, in under 8 minutes; results under $OUT.
# It runs binaries built here and packed by scripts/gpu-pack.sh (the machine has none of our
# Debian libraries; CUDA's come from the machine itself):
#   1. backend_ops_test: every op on the CUDA backend against the naive references (and the CPU,
#      in the same binary), NEXTSERVE_OPS_ERRORS=1 printing each comparison's error;
#   2. golden_test with NEXTSERVE_BACKEND=cuda (tolerance kCudaTolerance, 1e-2 of the logit range;
#      greedy tokens identical where the reference's top-2 margin exceeds it);
#   3. compute-sanitizer --tool memcheck on the CUDA backend-op tests (refused under gVisor:
#      "Device not supported"; then the log says so);
#   4. bench/cuda/cuda_ops_bench (shares of copy bandwidth and of a dense bf16 GEMM);
#   5. scripts/gpu_torch_bench.py: PyTorch SDPA (and FLA's chunk_gated_delta_rule where its wheel
#      was carried in .whl) on the same shapes.
# Each step has its own time limit; summary.txt lists every step's exit status (77: skipped).
#   OUT=/some/dir bash scripts/gpu-check.sh [.gpu-pack/pack.tar.xz]
set -uo pipefail
pack="${1:-.gpu-pack/pack.tar.xz}"
: "${OUT:?set OUT to the results folder}"
mkdir -p "$OUT"
repo="$(cd "$(dirname "$0")/.." && pwd)"
summary="$OUT/summary.txt"
: > "$summary"
start=$(date +%s)

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if ! tar -C "$work" -xJf "$pack"; then
  echo "gpu-check: cannot unpack $pack (run scripts/gpu-pack.sh here first)" | tee -a "$summary"
  exit 1
fi
bin="$work/pack/bin"

# cuBLASLt 13 and cudart from the machine: the toolkit, else PyTorch's nvidia wheels.
cudalibs=""
for root in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64 \
            $(python3 -c 'import nvidia, os; print(" ".join(nvidia.__path__))' 2>/dev/null); do
  [ -d "$root" ] || continue
  found="$(find -L "$root" -maxdepth 4 -name 'libcublasLt.so.13*' 2>/dev/null | head -1)"
  if [ -n "$found" ]; then cudalibs="$(dirname "$found")"; break; fi
done
echo "cuBLASLt from: ${cudalibs:-NOT FOUND}" >> "$summary"
export LD_LIBRARY_PATH="$work/pack/lib${cudalibs:+:$cudalibs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export NEXTSERVE_SOURCE_DIR="$repo"
(nvidia-smi; cat "$work/pack/COMMIT") > "$OUT/machine.txt" 2>&1
ldd "$bin/backend_ops_test" > "$OUT/ldd.txt" 2>&1

step() {  # step NAME LIMIT_S COMMAND...
  local name="$1" limit="$2"
  shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: rc=$rc ($(( $(date +%s) - t0 )) s)" | tee -a "$summary"
}

step backend_ops 90 env NEXTSERVE_OPS_ERRORS=1 "$bin/backend_ops_test" \
  --gtest_output="xml:$OUT/backend_ops.xml"
step golden_cuda 120 env NEXTSERVE_BACKEND=cuda "$bin/golden_test" \
  --gtest_output="xml:$OUT/golden_cuda.xml"
if command -v compute-sanitizer > /dev/null; then
  step memcheck 150 compute-sanitizer --tool memcheck --error-exitcode 3 \
    "$bin/backend_ops_test" --gtest_filter='*/cuda'
else
  echo "memcheck: compute-sanitizer not on PATH" | tee -a "$summary"
fi
step cuda_ops_bench 60 "$bin/cuda_ops_bench" --reps 10
if [ -d "$repo/.whl" ]; then  # flash-linear-attention's wheel(s), carried (see the device notes)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    "$repo"/.whl/*.whl > "$OUT/whl.log" 2>&1 && export PYTHONPATH=/tmp/site
fi
step torch_bench 60 python3 "$repo/scripts/gpu_torch_bench.py"
echo "total: $(( $(date +%s) - start )) s" | tee -a "$summary"
