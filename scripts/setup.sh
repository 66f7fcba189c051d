#!/usr/bin/env bash
# Installs what is missing (Debian packages), then configures and builds nextserve into build/.
# Idempotent: a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  build-essential cmake ninja-build pkg-config clang libclang-rt-14-dev libomp-14-dev
  libabsl-dev nlohmann-json3-dev libdnnl-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev prometheus-cpp-dev
  libopenmpi-dev openmpi-bin libpcre2-dev libicu-dev
  opencl-headers ocl-icd-opencl-dev
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The CUDA toolkit lives under its prefix; CMake finds nvcc there (NEXTSERVE_CUDA=OFF to skip).
BUILD_DIR=${NEXTSERVE_BUILD_DIR:-build}
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  # ccache, when a developer has it, shares objects between worktrees (CCACHE_BASEDIR); not needed.
  launcher=()
  command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" ${NEXTSERVE_CMAKE_ARGS:-}
fi
cmake --build "$BUILD_DIR" -j "$(nproc)"
# Every Debian package the build used must come from APT_PACKAGES (or what they pull in): one that
# is here only by chance breaks the README on a fresh machine (issue 8: the OpenCL packages).
bash scripts/check-packages.sh "$BUILD_DIR" "${APT_PACKAGES[@]}"

# --- tokenizer: the real Qwen vocabulary and Hugging Face's reference ids (tokenizer/README.md) ---
# The vocabulary ships in the PyPI package dashscope (resources/qwen.tiktoken); only that file is
# used, so it is installed without its dependencies. `tokenizers` (HF, Rust) records the reference
# ids of the corpus. The data under $BUILD_DIR/tokenizer-data is remade when the tools change.
# Without it the golden tokenizer test skips (and says so), so a failure here only warns.
tok_stamp="$BUILD_DIR/tokenizer-data/golden/manifest.json"
if [ ! -f "$tok_stamp" ] || [ -n "$(find tools/make_tokenizer_golden.py tools/make_corpus.py \
      tools/make_qwen_tokenizer.py -newer "$tok_stamp" 2>/dev/null)" ]; then
  {
    python3 -c "import tokenizers" 2>/dev/null ||
      python3 -m pip install --quiet "tokenizers==0.23.3"
    python3 -c "import importlib.util as u, sys; sys.exit(u.find_spec('dashscope') is None)" ||
      python3 -m pip install --quiet --no-deps "dashscope==2.0.2"
    python3 tools/make_tokenizer_golden.py --build-dir "$BUILD_DIR"
  } || echo "setup: WARNING: tokenizer reference data not made; tokenizer_qwen_golden_test will skip"
fi
