#!/usr/bin/env bash
# Runs the default job inside a nextserve image, without a Docker engine (buildah, --isolation
# chroot): as user 10001, the model mounted read-only at /models, `nextserve up` (router + 2 ranks),
# one `nextserve generate` answering, then a clean stop. Exits non-zero if any step fails.
#
#   deploy/run-image.sh [--image NAME] [--model DIR | --tokenizer DIR] [--port P] [--ranks N]
#
# Without --model, the image's nextserve-make-model writes a random `tiny` checkpoint to
# build/models/image-tiny once, with tokenizer.json from --tokenizer (default
# build/tokenizer-data/qwen, made by scripts/setup.sh on the host: the Qwen vocabulary comes from
# PyPI, which the image build skips).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
die() { echo "run-image: $*" >&2; exit 2; }

image=localhost/nextserve:cpu model="" tokenizer=build/tokenizer-data/qwen port=18080 ranks=2
while (($#)); do
  case "$1" in
    --image) image=${2:?--image needs a name}; shift 2 ;;
    --model) model=${2:?--model needs a directory}; shift 2 ;;
    --tokenizer) tokenizer=${2:?--tokenizer needs a directory}; shift 2 ;;
    --port) port=${2:?--port needs a number}; shift 2 ;;
    --ranks) ranks=${2:?--ranks needs a number}; shift 2 ;;
    -h | --help) usage 0 ;;
    *) die "unknown option '$1' (--help lists them)" ;;
  esac
done
buildah inspect --type image "$image" >/dev/null 2>&1 || die "no image $image (deploy/build-image.sh builds it)"

ctr=$(buildah from --quiet "$image")
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
# buildah run would mount an anonymous volume for the image's VOLUME /models over the -v bind mount;
# this working container (not the image) drops it.
buildah config --volume /models- "$ctr"

if [ -z "$model" ]; then
  model=build/models/image-tiny
  if [ ! -f "$model/model.safetensors" ]; then
    mkdir -p "$model"
    buildah run --isolation chroot --user 0:0 -v "$(cd "$model" && pwd):/out" "$ctr" -- \
      nextserve-make-model --out /out --preset tiny --dtype bf16
  fi
  if [ ! -f "$model/tokenizer.json" ]; then
    [ -f "$tokenizer/tokenizer.json" ] ||
      die "$tokenizer/tokenizer.json is missing (scripts/setup.sh on the host makes it; or pass --tokenizer DIR)"
    cp "$tokenizer/tokenizer.json" "$tokenizer/tokenizer_config.json" "$model/"
  fi
fi
[ -f "$model/config.json" ] || die "$model is not a model directory (no config.json)"
model=$(cd "$model" && pwd)

echo "run-image: $image, $model read-only at /models, router port $port, $ranks ranks"
# One shell inside the container runs the whole job, so stopping it needs no signal forwarding.
# shellcheck disable=SC2016  # expanded inside the container
buildah run --isolation chroot --user 10001:10001 --env "PORT=$port" --env "RANKS=$ranks" \
  -v "$model:/models:ro" "$ctr" -- bash -c '
    set -u
    echo "user $(id -un) ($(id -u)); binaries: $(ls /usr/local/bin | tr "\n" " ")"
    mount_opts=$(awk '"'"'$2 == "/models" { print $4 }'"'"' /proc/mounts)
    [[ $mount_opts == ro,* ]] || { echo "/models is not a read-only mount ($mount_opts)" >&2; exit 1; }
    echo "/models: read-only mount, $(ls /models | tr "\n" " ")"
    log=/tmp/nextserve-up.log
    nextserve up --model /models --ranks "$RANKS" --port "$PORT" >"$log" 2>&1 &
    up=$!
    for _ in $(seq 1 1200); do
      grep -q "router at" "$log" && break
      kill -0 "$up" 2>/dev/null || { cat "$log"; exit 1; }
      sleep 0.1
    done
    grep "router at" "$log" || { cat "$log"; kill -INT "$up"; exit 1; }
    echo "> nextserve generate --chat-template --prompt \"What is a mixture of experts?\" --max-tokens 16 --temperature 0"
    nextserve generate --addr "127.0.0.1:$PORT" --chat-template \
      --prompt "What is a mixture of experts?" --max-tokens 16 --temperature 0
    rc=$?
    kill -INT "$up"
    wait "$up"
    up_rc=$?
    echo "generate exit $rc, nextserve up exit $up_rc"
    ((rc == 0 && up_rc == 0))'
echo "run-image: ok"
