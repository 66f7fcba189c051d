#!/usr/bin/env bash
# Prints the Debian packages that own the shared libraries the given binaries load, one a line
# (ldd -> dpkg -S -> package names), so the runtime image's package list follows the build and
# cannot drift. Run in the build stage. Fails, naming the library, when ldd cannot resolve one or
# no package owns it (a library copied by hand would be missing from the runtime image).
#   deploy/runtime-packages.sh BINARY...
set -euo pipefail
(($#)) || { echo "usage: runtime-packages.sh BINARY..." >&2; exit 2; }

# Where dpkg may have recorded a library: bookworm's merged /usr means ldd may say /lib/... where
# dpkg recorded /usr/lib/... (or the reverse), and a soname link may be unrecorded while its target is.
candidates() {
  local p
  for p in "$1" "$(readlink -f "$1")"; do
    echo "$p"
    case "$p" in
      /usr/*) echo "${p#/usr}" ;;
      *) echo "/usr$p" ;;
    esac
  done
}

libs=$(ldd "$@" | awk '/not found/ { print "MISSING:" $1; next } $2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $1 !~ /:$/ { print $1 }' | sort -u)
status=0 wanted=()
for lib in $libs; do
  if [[ $lib == MISSING:* ]]; then
    echo "runtime-packages: ldd cannot find ${lib#MISSING:}" >&2
    status=1
  else
    mapfile -t -O "${#wanted[@]}" wanted < <(candidates "$lib")
  fi
done
((status == 0)) || exit 1
# One dpkg -S for every candidate (each call reads the whole database): "pkg:arch: /path" lines.
declare -A owner=()
while IFS= read -r line; do
  [[ $line == diversion* ]] && continue
  pkg=${line%%: *}
  owner[${line#*: }]=${pkg%%,*}  # "a, b: /path" when several own it
done < <(dpkg -S "${wanted[@]}" 2>/dev/null || true)

packages=()
for lib in $libs; do
  pkg=""
  while IFS= read -r p; do
    [ -n "${owner[$p]:-}" ] && { pkg=${owner[$p]}; break; }
  done < <(candidates "$lib")
  if [ -n "$pkg" ]; then
    packages+=("$pkg")
  else
    echo "runtime-packages: no Debian package owns $lib" >&2
    status=1
  fi
done
((status == 0)) || exit 1
printf '%s\n' "${packages[@]}" | sort -u
