#!/usr/bin/env bash
# Remakes the generated gRPC/protobuf modules in src/nextserve/v1 from proto/nextserve/v1 (needs
# grpcio-tools; the version pinned in scripts/setup.sh). With --check OUT_DIR: writes them there
# instead, for the test that compares them with the committed ones.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
proto="$here/../../proto"
out="$here/src"
[ "${1:-}" = "--check" ] && out="$2"
mkdir -p "$out"
python3 -m grpc_tools.protoc -I"$proto" --python_out="$out" --pyi_out="$out" \
  --grpc_python_out="$out" "$proto/nextserve/v1/inference.proto"
