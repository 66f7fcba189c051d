#!/usr/bin/env bash
# The Python tests, as ctest runs them: install the SDK into a venv as a user would
# (`pip install sdk/python`), check its committed gRPC stubs match proto/, then run pytest (the SDK
# and the router's OpenAI-compatible HTTP, with the real `openai` client) against a real router +
# ranks that the tests start. Exit status: pytest's, except that "no tests
# collected" (5) and interruptions count as failures.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
sdk="$here/../../sdk/python"
build="${NEXTSERVE_BUILD_DIR:-$here/../../build}"
venv="$build/python-sdk-venv"
[ -x "$venv/bin/python" ] || python3 -m venv --system-site-packages "$venv"
# No network and no build isolation: grpcio, protobuf and setuptools come from scripts/setup.sh.
"$venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation --force-reinstall \
  --disable-pip-version-check "$sdk" 2>&1 | grep -v "Running pip as the 'root' user" || true
"$venv/bin/python" -c "import nextserve" || { echo "python tests: the installed package does not import"; exit 1; }

check="$(mktemp -d)"
trap 'rm -rf "$check"' EXIT
bash "$sdk/tools/gen_stubs.sh" --check "$check"
if ! diff -r -x __init__.py -x __pycache__ "$check/nextserve/v1" "$sdk/src/nextserve/v1"; then
  echo "python tests: sdk/python/src/nextserve/v1 is stale: run sdk/python/tools/gen_stubs.sh and commit"
  exit 1
fi

cd "$here"
set +e
"$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
case $rc in
  0) exit 0 ;;
  5) echo "python tests: pytest collected no tests"; exit 1 ;;
  *) exit "$rc" ;;
esac
