#!/usr/bin/env bash
# Checks that every Debian package a configured + built tree uses is installed by setup.sh: each
# file the build used must belong to a package in the closure of APT_PACKAGES (through Depends and
# Pre-Depends, alternatives and Provides included) or to an Essential package. A fresh machine
# has only those, so a file from anything else means the README fails there.
#
#   bash scripts/check-packages.sh BUILD_DIR [PACKAGE...]   (default: setup.sh's APT_PACKAGES)
#
# The files, each with where it came from:
#   - CMakeCache FILEPATH/PATH entries (and CMAKE_COMMAND); a find_path() directory such as
#     OpenCL_INCLUDE_DIR=/usr/include is narrowed to the file the find module looked for
#     (CL/cl.h), because a shared directory has many owners;
#   - the CMake package and module files configure read (build.ninja's RERUN_CMAKE inputs);
#   - the headers every compile read (ninja -t deps), the libraries on the link lines, and the
#     shared libraries the built programs load (ldd).
# Files no package owns (CUDA under /usr/local, the build's own) are not Debian's and are skipped.
# Tools that CMake finds but the build never runs are optional and not checked: the compiler
# launcher (ccache), and CTest's memcheck/coverage/git commands.
set -euo pipefail
(($# >= 1)) || { echo "usage: $0 BUILD_DIR [PACKAGE...]" >&2; exit 2; }
build_dir=$(cd "$1" && pwd)
shift
src_dir=$(cd "$(dirname "$0")/.." && pwd)
if (($# == 0)); then  # no list given: setup.sh's
  eval "$(sed -n '/^APT_PACKAGES=(/,/^)/p' "$src_dir/scripts/setup.sh")"
  set -- "${APT_PACKAGES[@]}"
fi
cache="$build_dir/CMakeCache.txt"
[ -f "$cache" ] && [ -f "$build_dir/build.ninja" ] ||
  { echo "check-packages: $build_dir is not a configured Ninja build" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
used="$tmp/used"  # lines: PATH <tab> where it came from

# Cache entries: NAME:TYPE=VALUE; values may be ;-lists.
# Optional too: CMake's binutils probe, which takes LLVM's tools (llvm-ar, ld.lld) when they are
# there and binutils' otherwise; the compiler's own packages pull binutils in.
optional='^(CMAKE_[A-Z]+_COMPILER_LAUNCHER|MEMORYCHECK_COMMAND|MEMORYCHECK_SUPPRESSIONS_FILE|COVERAGE_COMMAND|GITCOMMAND|CMAKE_INSTALL_PREFIX)$'
binutils='^CMAKE_(AR|RANLIB|LINKER|NM|OBJCOPY|OBJDUMP|READELF|STRIP|ADDR2LINE|DLLTOOL|[A-Z]+_COMPILER_(AR|RANLIB))$'
{ grep -E '^[A-Za-z_][^:#]*:(FILEPATH|PATH)=/|^CMAKE_(COMMAND|CTEST_COMMAND):INTERNAL=/' "$cache" || true; } |
  while IFS= read -r line; do
    name=${line%%:*}
    value=${line#*=}
    [[ $name =~ $optional || $name =~ $binutils ]] && continue
    IFS=';' read -ra values <<<"$value"
    for v in "${values[@]}"; do
      [[ $v == /* && -e $v && $v != *-NOTFOUND ]] && printf '%s\t%s\n' "$v" "CMakeCache $name"
    done
  done >"$tmp/cache"

# The CMake files configure read: the implicit inputs of the build.ninja regeneration rule.
grep -m1 '^build build.ninja: RERUN_CMAKE' "$build_dir/build.ninja" | tr ' ' '\n' | grep '^/' |
  sort -u >"$tmp/cmake-files" || true
sed 's/$/\tCMake file read at configure/' "$tmp/cmake-files" >>"$used"

# A find_path() result is a directory; replace it with the file the module searched for, found
# by reading `find_path(VAR NAMES a b ...)` or `find_path(VAR a ...)` in the CMake files read.
awk -F'\t' -v OFS='\t' '
  FNR == NR { if ($0 ~ /\.cmake$/) modules[++n] = $0; next }
  { entries[++m] = $0 }
  END {
    for (i = 1; i <= n; i++) {
      text = ""
      while ((getline l < modules[i]) > 0) { sub(/#.*/, "", l); text = text " " l }
      close(modules[i])
      while (match(text, /find_path *\([^)]*\)/)) {
        call = substr(text, RSTART + 10, RLENGTH - 11)
        text = substr(text, RSTART + RLENGTH)
        sub(/^ *\( */, "", call)
        k = split(call, tok, /[ \t]+/)
        var = tok[1]; j = 2; names = ""
        if (tok[2] == "NAMES") {
          for (j = 3; j <= k && tok[j] !~ /^[A-Z_]+$/ && tok[j] !~ /^\$/; j++) names = names " " tok[j]
        } else if (tok[2] !~ /^\$/) names = " " tok[2]
        gsub(/"/, "", names)
        if (names != "") looked_for[var] = looked_for[var] names
      }
    }
    for (i = 1; i <= m; i++) {
      split(entries[i], e, "\t"); name = e[2]; sub(/^CMakeCache /, "", name)
      narrowed = 0
      if (name in looked_for) {
        k = split(looked_for[name], cand, " ")
        for (j = 1; j <= k; j++) {
          f = e[1] "/" cand[j]
          if ((getline dummy < f) >= 0) { close(f); print f, e[2] " (" cand[j] ")"; narrowed = 1; break }
        }
      }
      if (!narrowed) print entries[i]
    }
  }' "$tmp/cmake-files" "$tmp/cache" >>"$used"

# Headers the compiles read, outside this project's trees.
{ ninja -C "$build_dir" -t deps 2>/dev/null || true; } | awk -v s="$src_dir/" -v b="$build_dir/" '
  /^ +\// { p = $1; if (index(p, s) != 1 && index(p, b) != 1) print p "\theader read by the compiler" }' |
  sort -u >>"$used"

# Libraries on the link lines: absolute paths, and -lNAME resolved the way the compiler would.
cxx=$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$cache")
{ grep -h '^ *LINK_LIBRARIES = ' "$build_dir/build.ninja" || true; } | tr ' ' '\n' | { grep -E '^(/|-l)' || true; } | sort -u |
  while IFS= read -r lib; do
    if [[ $lib == -l* ]]; then
      resolved=$("$cxx" -print-file-name="lib${lib#-l}.so")
      [[ $resolved == /* ]] && printf '%s\t%s\n' "$resolved" "link line ($lib)"
    else
      printf '%s\t%s\n' "$lib" "link line"
    fi
  done >>"$used"

# Shared libraries the built programs load (the sanitizer and OpenMP runtimes come from compiler
# flags, not from a link line).
find "$build_dir/bin" -maxdepth 1 -type f -perm -u+x -print0 2>/dev/null |
  { xargs -0 -r -n 16 ldd 2>/dev/null || true; } | awk '$2 == "=>" && $3 ~ /^\// { print $3 "\tloaded by a built program" }' |
  sort -u >>"$used"

# Owners. A path may be registered under another name: /lib/x86_64-linux-gnu/... under merged
# /usr, or, for an alternatives symlink such as /usr/bin/c++, only its target. So each path is
# asked as given and with/without the /usr prefix (tier 1); only when that finds no owner does its
# resolved target count (tier 2): a -dev package's libfoo.so symlink is what the link needs, not
# the runtime package's libfoo.so.1 behind it.
cut -f1 "$used" | sort -u >"$tmp/paths"
{ xargs -d '\n' readlink -m <"$tmp/paths" || true; } | paste "$tmp/paths" - | awk -F'\t' -v OFS='\t' '
  function usr_alias(p, q, t) {
    print p, t, q
    if (q ~ /^\/usr\/(lib|bin|sbin)\//) print p, t, substr(q, 5)
    else if (q ~ /^\/(lib|bin|sbin)\//) print p, t, "/usr" q
  }
  { usr_alias($1, $1, 1); if ($2 != $1) usr_alias($1, $2, 2) }' | sort -u >"$tmp/aliases"
cut -f3 "$tmp/aliases" | sort -u | xargs -d '\n' dpkg -S 2>/dev/null | grep -v '^diversion ' >"$tmp/owners" || true

# Installed packages, what they provide and depend on; Essential ones are on every Debian system.
dpkg-query -W -f='${Package}\t${db:Status-Abbrev}\t${Essential}\t${Provides}\t${Pre-Depends}, ${Depends}\n' \
  >"$tmp/installed"

printf '%s\n' "$@" >"$tmp/listed"
awk -F'\t' -v OFS='\t' -v listed="$tmp/listed" -v installed="$tmp/installed" \
    -v aliases="$tmp/aliases" -v owners="$tmp/owners" '
  function bare(d) { sub(/^ +/, "", d); sub(/[ (:].*/, "", d); return d }
  BEGIN {
    while ((getline l < installed) > 0) {
      split(l, f, "\t")
      if (f[2] !~ /^.i/) continue
      inst[f[1]] = 1; deps[f[1]] = f[5]
      if (f[3] == "yes") queue[++qn] = f[1]
      k = split(f[4], pv, ",")
      for (i = 1; i <= k; i++) { v = bare(pv[i]); if (v != "") providers[v] = providers[v] " " f[1] }
    }
    while ((getline l < listed) > 0) queue[++qn] = l
    # Breadth-first closure; for "a | b" every installed alternative counts (any may be the one
    # apt picks on a fresh machine, and each pulls its own dependencies).
    for (qi = 1; qi <= qn; qi++) {
      p = queue[qi]
      if (p in closure) continue
      closure[p] = 1
      k = split(deps[p], groups, ",")
      for (i = 1; i <= k; i++) {
        a = split(groups[i], alts, "|")
        for (j = 1; j <= a; j++) {
          d = bare(alts[j])
          if (d == "") continue
          if (d in inst) queue[++qn] = d
          if (d in providers) { np = split(providers[d], pp, " "); for (x = 1; x <= np; x++) queue[++qn] = pp[x] }
        }
      }
    }
    while ((getline l < owners) > 0) {
      c = index(l, ": "); path = substr(l, c + 2); k = split(substr(l, 1, c - 1), ow, ", ")
      for (i = 1; i <= k; i++) { sub(/:.*/, "", ow[i]); owned[path] = owned[path] " " ow[i] }
    }
    while ((getline l < aliases) > 0) {
      split(l, f, "\t")
      if (!(f[3] in owned)) continue
      k = split(owned[f[3]], ow, " ")
      for (i = 1; i <= k; i++)
        if (index(tier[f[2], f[1]] " ", " " ow[i] " ") == 0) tier[f[2], f[1]] = tier[f[2], f[1]] " " ow[i]
    }
  }
  {
    path = $1
    owners_of = ((1, path) in tier) ? tier[1, path] : tier[2, path]
    if (owners_of == "") next  # not a Debian file
    k = split(owners_of, ow, " "); ok = 0
    for (i = 1; i <= k; i++) if (ow[i] in closure) ok = 1
    if (ok) next
    key = owners_of
    if (!(key in first)) { first[key] = path; order[++no] = key }
    if (path == first[key]) why[key] = why[key] (why[key] == "" ? "" : "; ") $2
    else if (!((key, path) in seen)) { seen[key, path] = 1; count[key]++ }
  }
  END {
    if (no == 0) exit 0
    print "check-packages: the build uses Debian packages that setup.sh does not install:" > "/dev/stderr"
    for (i = 1; i <= no; i++) {
      key = order[i]; sub(/^ /, "", key); gsub(/ /, " or ", key)
      more = count[order[i]] ? sprintf(", and %d more file(s)", count[order[i]]) : ""
      print "  " key ": " first[order[i]] " (" why[order[i]] ")" more > "/dev/stderr"
    }
    print "Add them (or a package that depends on them) to APT_PACKAGES in scripts/setup.sh." > "/dev/stderr"
    exit 1
  }' "$used"
