#!/usr/bin/env bash
# CI's second pass: build into build-asan/ with ASan + UBSan (RelWithDebInfo, no CUDA) and run the
# unit and integration tests there, leak detection on. Extra arguments go to ctest.
# Not run here: `slow` (long engine runs that take many minutes without a sanitizer, several times
# that with one; CI's 90 minutes would not hold them) and `golden` (the forward pass and the
# tokenizer on the whole 6 MB corpus, compared with recorded numbers: the code paths of the unit
# tests at many times their cost). `gpu` tests do not exist in this tree (CUDA off).
set -euo pipefail
cd "$(dirname "$0")/.."
export NEXTSERVE_BUILD_DIR=${NEXTSERVE_ASAN_BUILD_DIR:-build-asan}

start=$SECONDS
NEXTSERVE_CMAKE_ARGS="-DCMAKE_BUILD_TYPE=RelWithDebInfo -DNEXTSERVE_SANITIZE=ON -DNEXTSERVE_CUDA=OFF" \
  bash scripts/setup.sh
built=$SECONDS

# A report fails the test: ASan and UBSan exit non-zero at the first error, LeakSanitizer at exit.
# The suppressions are leaks inside system libraries (OpenMPI keeps its state until exit), each
# with its reason in the file. They match only through the OpenMPI libraries deep in the malloc
# stack, which the default frame-pointer unwinder does not reach in Debian's builds, so stacks are
# unwound with DWARF (measured: no slower for these tests).
export ASAN_OPTIONS="detect_leaks=1:check_initialization_order=1:strict_init_order=1:fast_unwind_on_malloc=0:malloc_context_size=20:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
export LSAN_OPTIONS="suppressions=$PWD/scripts/lsan-suppressions.txt:print_suppressions=0:${LSAN_OPTIONS:-}"
status=0
ctest --test-dir "$NEXTSERVE_BUILD_DIR" --output-on-failure -j 2 -L 'unit|integration' -LE slow "$@" ||
  status=$?
echo "test-sanitizers: build $((built - start)) s, tests $((SECONDS - built)) s"
exit "$status"
