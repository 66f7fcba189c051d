#!/usr/bin/env bash
# deploy/runtime-packages.sh, which gives the container images' runtime package list: the real
# router binary maps to the Debian packages of its libraries, and a library no package owns (a copy
# found first through LD_LIBRARY_PATH) fails the list, naming that library.
#   runtime_packages_test.sh SOURCE_DIR BIN_DIR
set -euo pipefail
src=${1:?source dir} bin=${2:?bin dir}
script=$src/deploy/runtime-packages.sh
command -v dpkg >/dev/null || { echo "SKIP: no dpkg (not Debian)"; exit 77; }
fail() { echo "FAIL: $*" >&2; exit 1; }

packages=$(bash "$script" "$bin/nextserve-router")
echo "nextserve-router needs: $(echo "$packages" | tr '\n' ' ')"
for want in libc6 libstdc++6 libgrpc++1.51 libprotobuf32 libabsl20220623; do
  grep -qx "$want:amd64\|$want" <<<"$packages" || fail "$want missing from the router's packages"
done
[ "$(sort -u <<<"$packages")" = "$packages" ] || fail "the list is not sorted and unique"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
libc=$(ldd "$bin/nextserve-router" | awk '$1 == "libc.so.6" { print $3 }')
cp "$libc" "$tmp/libc.so.6"
if out=$(LD_LIBRARY_PATH=$tmp bash "$script" "$bin/nextserve-router" 2>&1); then
  fail "an unowned library was accepted: $out"
fi
grep -q "no Debian package owns $tmp/libc.so.6" <<<"$out" || fail "the error does not name the library: $out"

if out=$(bash "$script" "$tmp/no-such-binary" 2>&1); then fail "a missing binary was accepted"; fi
echo "PASS"
