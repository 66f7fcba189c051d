#!/usr/bin/env bash
# The Python SDK's tests, as ctest runs them: install the package from this folder into a venv (as a
# user would: `pip install sdk/python`), check the committed gRPC stubs match proto/, then run pytest
# against a real router + ranks started by the tests. Exit status: pytest's, except that "no tests
# collected" (5) and interruptions count as failures.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="${NEXTSERVE_BUILD_DIR:-$here/../../build}"
venv="$build/python-sdk-venv"
[ -x "$venv/bin/python" ] || python3 -m venv --system-site-packages "$venv"
# No network and no build isolation: grpcio, protobuf and setuptools come from scripts/setup.sh.
"$venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation --force-reinstall \
  --disable-pip-version-check "$here" 2>&1 | grep -v "Running pip as the 'root' user" || true
"$venv/bin/python" -c "import nextserve" || { echo "python_sdk: the installed package does not import"; exit 1; }

check="$(mktemp -d)"
trap 'rm -rf "$check"' EXIT
bash "$here/tools/gen_stubs.sh" --check "$check"
if ! diff -r -x __init__.py -x __pycache__ "$check/nextserve/v1" "$here/src/nextserve/v1"; then
  echo "python_sdk: src/nextserve/v1 is stale: run sdk/python/tools/gen_stubs.sh and commit"
  exit 1
fi

cd "$here/tests"
set +e
"$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
case $rc in
  0) exit 0 ;;
  5) echo "python_sdk: pytest collected no tests"; exit 1 ;;
  *) exit "$rc" ;;
esac
