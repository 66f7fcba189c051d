#!/bin/bash
# Starts the ranks of one expert-parallel group inside a rank pod.
#   launch.sh leader -- RANK_ARGS...   the group's first pod: mpirun over the group's pods
#   launch.sh worker                   every other pod: sshd, through which mpirun starts its ranks
#   launch.sh auto -- RANK_ARGS...     leader on the first pod (StatefulSet ordinal 0), else worker
# The chart's env says where: NEXTSERVE_RANK_BIN, NEXTSERVE_RANK_PORT, NEXTSERVE_PODS_PER_GROUP,
# NEXTSERVE_RANKS_PER_POD, NEXTSERVE_SSH_PORT, NEXTSERVE_WAIT_S, NEXTSERVE_FORWARD_ENV and
# NEXTSERVE_GROUP_HOSTS (the pods' DNS names, first = this pod; unset under a LeaderWorkerSet, where
# they follow from LWS_LEADER_ADDRESS).
#
# nextserve-rank in a group of N listens on --port + its MPI rank (ranks sharing one host). Here the
# pods have their own addresses, so rank r (local index l in its pod) gets --port PORT - r + l: the
# ranks of every pod listen on PORT .. PORT + ranks_per_pod - 1, and one pod template fits all pods.
set -euo pipefail

role=${1:?usage: launch.sh leader|worker|auto [-- RANK_ARGS...]}
shift
[ "${1:-}" = "--" ] && shift
rank_args=("$@")

pods=${NEXTSERVE_PODS_PER_GROUP:-1}
per_pod=${NEXTSERVE_RANKS_PER_POD:-1}
port=${NEXTSERVE_RANK_PORT:?NEXTSERVE_RANK_PORT is not set}
bin=${NEXTSERVE_RANK_BIN:-nextserve-rank}
ssh_port=${NEXTSERVE_SSH_PORT:-2222}
ssh_dir=${NEXTSERVE_SSH_DIR:-/etc/nextserve/ssh}
work=${NEXTSERVE_WORK_DIR:-/tmp/nextserve}

if [ "$role" = auto ]; then
  role=worker
  [ "${HOSTNAME##*-}" = 0 ] && role=leader
fi

if [ "$role" = worker ]; then
  # mpirun on the first pod reaches this one over ssh; the ranks it starts here live in this pod.
  exec /usr/sbin/sshd -D -e -f /etc/nextserve/launch/sshd_config -p "$ssh_port"
fi
[ "$role" = leader ] || { echo "launch.sh: unknown role '$role'" >&2; exit 2; }

metrics_args=()
[ -n "${NEXTSERVE_METRICS_FLAG:-}" ] && metrics_args=("$NEXTSERVE_METRICS_FLAG" "${NEXTSERVE_METRICS_PORT:?}")
if ((pods == 1 && per_pod == 1)); then
  exec "$bin" "${rank_args[@]}" --host 0.0.0.0 --port "$port" "${metrics_args[@]}"
fi

# The group's pods, this one first.
hosts=()
if [ -n "${NEXTSERVE_GROUP_HOSTS:-}" ]; then
  IFS=, read -r -a hosts <<<"$NEXTSERVE_GROUP_HOSTS"
elif ((pods == 1)); then
  hosts=(localhost)
else
  leader=${LWS_LEADER_ADDRESS:?neither NEXTSERVE_GROUP_HOSTS nor LWS_LEADER_ADDRESS is set}
  leader_name=${leader%%.*} domain=${leader#"$leader_name"}
  hosts=("$leader")
  for ((p = 1; p < pods; ++p)); do hosts+=("$leader_name-$p$domain"); done
fi
if ((${#hosts[@]} != pods)); then
  echo "launch.sh: ${#hosts[@]} hosts (${hosts[*]}) for $pods pods per group" >&2
  exit 2
fi

mkdir -p "$work"
ssh_args=()
if ((pods > 1)); then
  # Every pod presents the same host key (the chart's Secret), so known_hosts accepts it for all.
  printf '* %s\n' "$(cat "$ssh_dir/id_ed25519.pub")" >"$work/known_hosts"
  ssh_args=(--mca plm_rsh_agent ssh --mca plm_rsh_args
    "-p $ssh_port -i $ssh_dir/id_ed25519 -o UserKnownHostsFile=$work/known_hosts -o StrictHostKeyChecking=yes -o BatchMode=yes")
  deadline=$((SECONDS + ${NEXTSERVE_WAIT_S:-600}))
  for h in "${hosts[@]:1}"; do
    until timeout 2 bash -c "exec 3<>/dev/tcp/$h/$ssh_port" 2>/dev/null; do
      if ((SECONDS > deadline)); then
        echo "launch.sh: $h:$ssh_port (sshd of a pod of this group) did not answer in ${NEXTSERVE_WAIT_S:-600} s" >&2
        exit 1
      fi
      sleep 2
    done
  done
  # The local pod is named like the others so that mpirun starts its ranks here without ssh.
  hosts[0]=$(hostname)
fi

forward=()
for name in ${NEXTSERVE_FORWARD_ENV:-}; do
  [ -n "${!name+set}" ] && forward+=(-x "$name")
done

# One application context per rank, in rank order, each pinned to its pod.
contexts=()
r=0
for ((p = 0; p < pods; ++p)); do
  for ((l = 0; l < per_pod; ++l)); do
    ((r > 0)) && contexts+=(:)
    contexts+=(-np 1 --host "${hosts[p]}:$per_pod" "$bin" "${rank_args[@]}"
      --host 0.0.0.0 --port $((port - r + l)))
    # A pod's ranks take metrics ports PORT .. PORT + ranks_per_pod - 1 (given as is).
    ((${#metrics_args[@]})) && contexts+=("${metrics_args[0]}" $((metrics_args[1] + l)))
    r=$((r + 1))
  done
done
echo "launch.sh: $r ranks on ${hosts[*]} (ports $port..$((port + per_pod - 1)) in each pod)"
# shellcheck disable=SC2086  # NEXTSERVE_MPIRUN_ARGS is a list of words
exec mpirun --bind-to none "${ssh_args[@]}" "${forward[@]}" ${NEXTSERVE_MPIRUN_ARGS:-} "${contexts[@]}"
