#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh runs on a lent GPU machine, which has nvcc, the CUDA 13 libraries
# and PyTorch but none of our Debian libraries: the GPU test and bench binaries (built here, no
# gRPC in them) and every shared library `ldd` lists for them except glibc's own and CUDA's
# (cuBLAS/cuBLASLt/cudart come from that machine: libcublasLt alone is 540 MB). One xz tarball,
# so it fits the 64 MiB a device call may carry.
#   scripts/gpu-pack.sh [BUILD_DIR] [OUT_DIR]     (defaults: build, .gpu-pack)
# Then, with .gpu-pack ignored (.git/info/exclude) and named in the call's carry:
#   OUT=... bash scripts/gpu-check.sh .gpu-pack/pack.tar.xz
set -euo pipefail
build="${1:-build}"
out="${2:-.gpu-pack}"
bins=(backend_ops_test golden_test cuda_ops_bench)
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/pack/bin" "$stage/pack/lib" "$out"
for b in "${bins[@]}"; do
  if [ ! -x "$build/bin/$b" ]; then
    echo "gpu-pack: $build/bin/$b is missing (cmake --build $build --target ${bins[*]})" >&2
    exit 1
  fi
  cp "$build/bin/$b" "$stage/pack/bin/"
  strip --strip-debug "$stage/pack/bin/$b"
done
# Libraries the machine has (glibc's, the CUDA toolkit's and the driver's) stay behind.
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libpthread|libdl\.so|librt\.so|libcuda\.so|libcudart|libcublas|libnvidia)'
for b in "${bins[@]}"; do
  ldd "$build/bin/$b" | awk '/=> \//{print $1, $3}'
done | sort -u | while read -r name path; do
  if [[ "$name" =~ $skip ]]; then continue; fi
  cp -L "$path" "$stage/pack/lib/$name"
done
git rev-parse HEAD > "$stage/pack/COMMIT" 2>/dev/null || true
tar -C "$stage" -cJf "$out/pack.tar.xz" pack
echo "gpu-pack: $out/pack.tar.xz ($(du -h "$out/pack.tar.xz" | cut -f1)): ${bins[*]} + $(ls "$stage/pack/lib" | wc -l) libraries"
