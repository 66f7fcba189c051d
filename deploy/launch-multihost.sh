#!/usr/bin/env bash
# Starts one expert-parallel group of nextserve-rank processes over several hosts with mpirun and a
# hostfile, then a nextserve-router on this host in front of them. Ctrl-C / SIGTERM stops the router
# first (clients get a clean end), then the group. If either ends, the other is stopped too.
#
#   deploy/launch-multihost.sh --hostfile FILE --model DIR [--ranks N] [--port 9000]
#       [--router-port 8000] [--router-host 0.0.0.0] [--bin-dir DIR] [--iface IFACE]
#       [--threads N] [--dry-run] [-- EXTRA_RANK_FLAGS...]
#
# FILE is an OpenMPI hostfile ("node1 slots=8", one host a line). Ranks fill the hosts in order, one
# per slot (--map-by slot), N = all slots by default. In a group, rank r listens on --port + r
# (nextserve-rank does this), on the host it runs on; the router is given each rank's host:port.
# Every host needs the binaries under --bin-dir and the model under DIR (same paths), and this host
# must reach the others with ssh without a password (mpirun starts its daemons with it). --iface
# keeps MPI's traffic on one network (e.g. the hosts' fast one). MPIRUN_ARGS (environment) adds
# mpirun options. --dry-run prints the two command lines and starts nothing.
set -euo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
die() { echo "launch-multihost: $*" >&2; exit 2; }

hostfile="" model="" ranks=0 port=9000 router_port=8000 router_host=0.0.0.0 iface="" threads=0
bin_dir=$(cd "$(dirname "$0")/.." && pwd)/build/bin dry_run=0
rank_extra=()
while (($#)); do
  case "$1" in
    --hostfile) hostfile=${2:?--hostfile needs a file}; shift 2 ;;
    --model) model=${2:?--model needs a directory}; shift 2 ;;
    --ranks) ranks=${2:?--ranks needs a number}; shift 2 ;;
    --port) port=${2:?--port needs a number}; shift 2 ;;
    --router-port) router_port=${2:?--router-port needs a number}; shift 2 ;;
    --router-host) router_host=${2:?--router-host needs an address}; shift 2 ;;
    --bin-dir) bin_dir=${2:?--bin-dir needs a directory}; shift 2 ;;
    --iface) iface=${2:?--iface needs an interface}; shift 2 ;;
    --threads) threads=${2:?--threads needs a number}; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage 0 ;;
    --) shift; rank_extra=("$@"); break ;;
    *) die "unknown option '$1' (--help lists them)" ;;
  esac
done
[ -n "$hostfile" ] || die "--hostfile is required"
[ -f "$hostfile" ] || die "hostfile '$hostfile' does not exist"
[ -n "$model" ] || die "--model is required"
[ -f "$model/config.json" ] || die "'$model' has no config.json (a Hugging Face model directory)"
[ -f "$model/tokenizer.json" ] || die "'$model' has no tokenizer.json (the router needs it)"
for n in ranks port router_port threads; do
  [[ ${!n} =~ ^[0-9]+$ ]] || die "--${n//_/-} must be a number, not '${!n}'"
done
((dry_run)) || for b in nextserve-rank nextserve-router; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b is missing (build it, or give --bin-dir)"
done
command -v mpirun >/dev/null || die "mpirun is not installed (Debian: openmpi-bin)"

# The hosts and their slots, in the hostfile's order (comments and blank lines skipped).
hosts=() slots=()
while read -r host rest; do
  [[ -z "$host" || "$host" == \#* ]] && continue
  n=1
  [[ "$rest" =~ (^|[[:space:]])slots=([0-9]+) ]] && n=${BASH_REMATCH[2]}
  hosts+=("$host") slots+=("$n")
done <"$hostfile"
((${#hosts[@]})) || die "hostfile '$hostfile' names no host"
total=0
for n in "${slots[@]}"; do total=$((total + n)); done
((ranks == 0)) && ranks=$total
((ranks >= 1 && ranks <= total)) || die "--ranks $ranks: the hostfile has $total slots"
((port >= 1 && port + ranks - 1 <= 65535)) || die "--port $port: ranks need ports $port..$((port + ranks - 1))"

# Where each rank runs under --map-by slot: the first host's slots, then the next host's.
addresses=()
r=0
for i in "${!hosts[@]}"; do
  for ((s = 0; s < slots[i] && r < ranks; ++s, ++r)); do addresses+=("${hosts[i]}:$((port + r))"); done
done

mpirun_cmd=(mpirun --hostfile "$hostfile" -np "$ranks" --map-by slot --bind-to none)
[ "$(id -u)" = 0 ] && mpirun_cmd+=(--allow-run-as-root)
if [ -n "$iface" ]; then
  mpirun_cmd+=(--mca btl "self,vader,tcp" --mca btl_tcp_if_include "$iface" --mca oob_tcp_if_include "$iface")
fi
rank_flags=(--model "$model" --host 0.0.0.0 --port "$port")
if ((threads > 0)); then
  rank_flags+=(--threads "$threads")
  mpirun_cmd+=(-x "OMP_NUM_THREADS=$threads")
fi
# shellcheck disable=SC2206  # MPIRUN_ARGS is a list of words
mpirun_cmd+=(${MPIRUN_ARGS:-} "$bin_dir/nextserve-rank" "${rank_flags[@]}" "${rank_extra[@]}")
router_cmd=("$bin_dir/nextserve-router" --model "$model" --ranks "$(IFS=,; echo "${addresses[*]}")"
  --host "$router_host" --port "$router_port")

if ((dry_run)); then
  printf '%q ' "${mpirun_cmd[@]}"; echo
  printf '%q ' "${router_cmd[@]}"; echo
  exit 0
fi

group_pid="" router_pid=""
stop() {
  trap - INT TERM
  [ -n "$router_pid" ] && kill -TERM "$router_pid" 2>/dev/null && wait "$router_pid" 2>/dev/null
  # mpirun passes SIGTERM on to every rank on every host.
  [ -n "$group_pid" ] && kill -TERM "$group_pid" 2>/dev/null && wait "$group_pid" 2>/dev/null
  return 0
}
trap 'echo "launch-multihost: stopping" >&2; stop; exit 0' INT TERM

echo "launch-multihost: $ranks ranks on ${hosts[*]} (ports $port..$((port + ranks - 1))), router on $router_host:$router_port" >&2
"${mpirun_cmd[@]}" &
group_pid=$!
"${router_cmd[@]}" &
router_pid=$!
# The router is ready (SERVING) once a rank answers; until then it queues nothing and says UNAVAILABLE.
set +e
wait -n "$group_pid" "$router_pid"
status=$?
set -e
if kill -0 "$group_pid" 2>/dev/null; then
  echo "launch-multihost: the router exited ($status); stopping the group" >&2
else
  echo "launch-multihost: the rank group (mpirun) exited ($status); stopping the router" >&2
fi
stop
exit $((status == 0 ? 1 : status))
