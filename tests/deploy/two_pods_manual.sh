#!/usr/bin/env bash
# A manual check (not run by ctest: it changes the machine): two "pods" (network + UTS namespaces)
# running the chart's files/launch.sh and files/sshd_config as uid 10001. pod-b runs sshd (worker),
# pod-a runs mpirun (leader) that reaches pod-b over ssh with the Secret's key; both ranks listen on
# port 9000 in their pod, and a router in pod-a must serve through both.
# Needs root, openssh-server, a user with uid/gid 10001 and a login shell, built binaries and a model
# directory with tokenizer.json:  tests/deploy/two_pods_manual.sh BIN_DIR MODEL_DIR
# It writes /etc/nextserve (the pods' mount paths) and removes it at the end.
set -euo pipefail
CHART=$(cd "$(dirname "$0")/../../helm/nextserve" && pwd)
BIN=${1:?usage: two_pods_manual.sh BIN_DIR MODEL_DIR}
MODEL=${2:?usage: two_pods_manual.sh BIN_DIR MODEL_DIR}
[ -x /usr/sbin/sshd ] || { echo "needs openssh-server"; exit 2; }
getent passwd 10001 >/dev/null || { echo "needs a user with uid 10001"; exit 2; }
NS_A=helmsim-a NS_B=helmsim-b
cleanup() {
  [ -n "${leader_pid:-}" ] && kill -TERM "$leader_pid" 2>/dev/null
  [ -n "${router_pid:-}" ] && kill -TERM "$router_pid" 2>/dev/null
  # A rank whose peer is on another host notices it left only at the communicator's watchdog (30 s).
  local t0=$SECONDS
  for _ in $(seq 1 45); do pgrep -u 10001 -f "^$BIN/nextserve-rank" >/dev/null || break; sleep 1; done
  echo "two pods: the ranks were gone $((SECONDS - t0)) s after SIGTERM to mpirun"
  [ -n "${worker_pid:-}" ] && kill -TERM "$worker_pid" 2>/dev/null
  sleep 1
  ip netns del $NS_A 2>/dev/null || true; ip netns del $NS_B 2>/dev/null || true
  ip link del vhs-a 2>/dev/null || true
  rm -rf /etc/nextserve
}
trap cleanup EXIT
# The pods' files: the ConfigMap and the Secret (root-owned, group 10001, 0440, as the kubelet does with fsGroup).
rm -rf /etc/nextserve && mkdir -p /etc/nextserve/launch /etc/nextserve/ssh /run/sshd
cp "$CHART/files/launch.sh" "$CHART/files/sshd_config" /etc/nextserve/launch/
ssh-keygen -q -t ed25519 -N '' -f /etc/nextserve/ssh/id_ed25519
chgrp 10001 /etc/nextserve/ssh/*; chmod 0440 /etc/nextserve/ssh/*
ip netns add $NS_A; ip netns add $NS_B
ip link add vhs-a type veth peer name vhs-b
ip link set vhs-a netns $NS_A; ip link set vhs-b netns $NS_B
ip -n $NS_A addr add 192.168.77.1/24 dev vhs-a; ip -n $NS_B addr add 192.168.77.2/24 dev vhs-b
for ns in $NS_A $NS_B; do ip -n "$ns" link set lo up; done
ip -n $NS_A link set vhs-a up; ip -n $NS_B link set vhs-b up
as_pod() {  # as_pod NS HOSTNAME ENV... -- COMMAND...: the pod's user in the pod's namespaces
  local ns=$1 name=$2; shift 2
  exec ip netns exec "$ns" unshare --uts sh -c "hostname $name; exec setpriv --reuid 10001 --regid 10001 --groups 10001 env HOME=/tmp \"\$@\"" -- "$@"
}
COMMON=("NEXTSERVE_RANK_BIN=$BIN/nextserve-rank" NEXTSERVE_RANK_PORT=9000 NEXTSERVE_PODS_PER_GROUP=2
  NEXTSERVE_RANKS_PER_POD=1 NEXTSERVE_SSH_PORT=2222 NEXTSERVE_WAIT_S=60 OMP_NUM_THREADS=1
  "OMPI_MCA_btl=self,vader,tcp" OMPI_MCA_btl_tcp_if_include=192.168.77.0/24 OMPI_MCA_oob_tcp_if_include=192.168.77.0/24
  OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_plm_rsh_no_tree_spawn=1
  "NEXTSERVE_FORWARD_ENV=OMP_NUM_THREADS PATH OMPI_MCA_btl OMPI_MCA_btl_tcp_if_include OMPI_MCA_oob_tcp_if_include OMPI_MCA_btl_vader_single_copy_mechanism")
as_pod $NS_B pod-b "${COMMON[@]}" bash /etc/nextserve/launch/launch.sh worker > /tmp/helmsim-worker.log 2>&1 &
worker_pid=$!
sleep 1
as_pod $NS_A pod-a "${COMMON[@]}" NEXTSERVE_GROUP_HOSTS=pod-a,192.168.77.2 \
  bash /etc/nextserve/launch/launch.sh leader -- --model "$MODEL" --threads 1 --kv-blocks 64 --state-slots 4 > /tmp/helmsim-leader.log 2>&1 &
leader_pid=$!
ip netns exec $NS_A "$BIN"/nextserve-router --model "$MODEL" --ranks 192.168.77.1:9000,192.168.77.2:9000 --host 127.0.0.1 --port 8000 > /tmp/helmsim-router.log 2>&1 &
router_pid=$!
ok=0
for i in $(seq 1 60); do
  sleep 1
  if ip netns exec $NS_A "$BIN"/nextserve generate --addr 127.0.0.1:8000 --prompt hello --max-tokens 4 > /tmp/helmsim-gen.out 2>&1; then ok=1; echo "served after ${i}s"; break; fi
done
tail -1 /tmp/helmsim-gen.out
echo "== worker"; cat /tmp/helmsim-worker.log; echo "== leader"; cat /tmp/helmsim-leader.log; echo "== router"; cat /tmp/helmsim-router.log
echo "== ranks' processes"; pgrep -a -u 10001 -f "^$BIN/nextserve-rank" || true
[ $ok = 1 ] && echo "two pods: served through ranks in both"
