#!/usr/bin/env bash
# Prints the Debian packages that own the shared libraries the given binaries load, one a line
# (ldd -> dpkg -S -> package names), so the runtime image's package list follows the build and
# cannot drift. Run in the build stage. Fails, naming the library, when ldd cannot resolve one or
# no package owns it (a library copied by hand would be missing from the runtime image).
#   deploy/runtime-packages.sh BINARY...
set -euo pipefail
(($#)) || { echo "usage: runtime-packages.sh BINARY..." >&2; exit 2; }

# The package owning PATH: bookworm's merged /usr means ldd may say /lib/... where dpkg recorded
# /usr/lib/... (or the reverse), and a soname link may not be recorded while its target is.
owner() {
  local p candidates=()
  for p in "$1" "$(readlink -f "$1")"; do
    candidates+=("$p")
    case "$p" in
      /usr/*) candidates+=("${p#/usr}") ;;
      *) candidates+=("/usr$p") ;;
    esac
  done
  for p in "${candidates[@]}"; do
    # "pkg:arch: /path" (or "diversion by ..." lines, skipped).
    dpkg -S "$p" 2>/dev/null | grep -v '^diversion' | sed 's/: .*//' | head -1 | grep . && return 0
  done
  return 1
}

libs=$(ldd "$@" | awk '/not found/ { print "MISSING:" $1; next } $2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $1 !~ /:$/ { print $1 }' | sort -u)
status=0 packages=()
for lib in $libs; do
  if [[ $lib == MISSING:* ]]; then
    echo "runtime-packages: ldd cannot find ${lib#MISSING:}" >&2
    status=1
  elif pkg=$(owner "$lib"); then
    packages+=("$pkg")
  else
    echo "runtime-packages: no Debian package owns $lib" >&2
    status=1
  fi
done
((status == 0)) || exit 1
printf '%s\n' "${packages[@]}" | sort -u
