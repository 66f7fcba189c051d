#!/usr/bin/env bash
# Builds the nextserve CPU (default) or CUDA container image with buildah, without a Docker engine:
#   1. a bare Debian bookworm root filesystem made by debootstrap (minbase), imported into buildah as
#      the base image (kept; remade only with --rebase);
#   2. deploy/Containerfile.<flavour> built on it with `buildah build --isolation chroot`.
#
#   deploy/build-image.sh [--flavour cpu|cuda] [--tag NAME] [--base NAME] [--rebase]
#       [--mirror URL] [--ccache-dir DIR]
#
# --ccache-dir mounts a ccache directory into the build stage (build only; it never reaches an
# image), so a rebuild compiles only what changed. Installs buildah and debootstrap (Debian
# packages) when missing. Needs root (debootstrap, chroot isolation). STORAGE_DRIVER (environment,
# e.g. vfs where overlay cannot be mounted) picks buildah's storage driver.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
die() { echo "build-image: $*" >&2; exit 2; }

flavour=cpu tag="" base=localhost/nextserve-bookworm-base:latest rebase=0
mirror=http://deb.debian.org/debian ccache_dir=""
while (($#)); do
  case "$1" in
    --flavour) flavour=${2:?--flavour needs cpu or cuda}; shift 2 ;;
    --tag) tag=${2:?--tag needs a name}; shift 2 ;;
    --base) base=${2:?--base needs an image name}; shift 2 ;;
    --rebase) rebase=1; shift ;;
    --mirror) mirror=${2:?--mirror needs a URL}; shift 2 ;;
    --ccache-dir) ccache_dir=${2:?--ccache-dir needs a directory}; shift 2 ;;
    -h | --help) usage 0 ;;
    *) die "unknown option '$1' (--help lists them)" ;;
  esac
done
case "$flavour" in cpu | cuda) ;; *) die "--flavour must be cpu or cuda, not '$flavour'" ;; esac
[ -n "$tag" ] || tag=localhost/nextserve:$flavour
[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap and buildah's chroot isolation need it)"

missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
  echo "build-image: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# --- 1. the base: bare bookworm (minbase), with the updates and security suites enabled ---
if ((rebase)) || ! buildah inspect --type image "$base" >/dev/null 2>&1; then
  rootfs=$(mktemp -d /var/tmp/nextserve-rootfs.XXXXXX)
  ctr=""
  cleanup() {
    [ -n "$ctr" ] && buildah rm "$ctr" >/dev/null 2>&1
    rm -rf "$rootfs"
  }
  trap cleanup EXIT
  echo "build-image: debootstrap bookworm into $rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror"
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  ctr=$(buildah from scratch)
  mnt=$(buildah mount "$ctr")
  tar -C "$rootfs" -cf - . | tar -C "$mnt" -xpf -
  buildah umount "$ctr" >/dev/null
  buildah config --cmd /bin/bash --env LANG=C.UTF-8 "$ctr"
  buildah commit --quiet "$ctr" "$base" >/dev/null
  echo "build-image: base $base"
  cleanup
  trap - EXIT
fi

# --- 2. the image ---
build_args=(--isolation chroot --layers -f "deploy/Containerfile.$flavour" --ignorefile deploy/containerignore --build-arg "BASE=$base" -t "$tag")
if [ -n "$ccache_dir" ]; then
  mkdir -p "$ccache_dir"
  build_args+=(--volume "$(cd "$ccache_dir" && pwd):/ccache")
fi
echo "build-image: buildah build ${build_args[*]} ."
buildah build "${build_args[@]}" .
size=$(buildah images --format "{{.Size}}" "$tag" 2>/dev/null | head -1 || true)
echo "build-image: built $tag${size:+ ($size)}"
