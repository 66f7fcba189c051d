#!/usr/bin/env bash
# Two "machines": two network namespaces (each with its own host name) joined by a veth pair, one MPI
# rank in each, MPI over TCP between 192.168.234.1 and .2 (addresses that exist only inside the
# namespaces). mpirun runs in the first namespace and starts the second rank through a stand-in for
# ssh that enters the second namespace. Runs the given test binary (the collectives test) there.
# Exit 77 (skip) where namespaces cannot be made (no root / CAP_NET_ADMIN, no `ip`).
set -euo pipefail
BINARY=${1:?usage: two_hosts_test.sh TEST_BINARY [ARGS...]}
shift
BINARY=$(readlink -f "$BINARY")
skip() { echo "SKIP: $*"; exit 77; }

command -v ip >/dev/null || skip "no 'ip' command (iproute2)"
command -v mpirun >/dev/null || skip "no mpirun"
TAG="ns$$"
NS_A="nextserve-a-$TAG" NS_B="nextserve-b-$TAG"
VETH_A="vns-a-$$" VETH_B="vns-b-$$"   # at most 15 characters
WORK=$(mktemp -d)
cleanup() {
  ip netns del "$NS_A" 2>/dev/null || true
  ip netns del "$NS_B" 2>/dev/null || true
  ip link del "$VETH_A" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$NS_A" 2>/dev/null || skip "cannot create network namespaces (needs root / CAP_NET_ADMIN)"
ip netns add "$NS_B" || skip "cannot create a second network namespace"
ip link add "$VETH_A" type veth peer name "$VETH_B" 2>/dev/null || skip "cannot create a veth pair"
ip link set "$VETH_A" netns "$NS_A"
ip link set "$VETH_B" netns "$NS_B"
ip -n "$NS_A" addr add 192.168.234.1/24 dev "$VETH_A"
ip -n "$NS_B" addr add 192.168.234.2/24 dev "$VETH_B"
for ns in "$NS_A" "$NS_B"; do
  ip -n "$ns" link set lo up
done
ip -n "$NS_A" link set "$VETH_A" up
ip -n "$NS_B" link set "$VETH_B" up

# The stand-in for ssh: `agent HOST COMMAND...` runs COMMAND in that host's namespace, with the
# host's own name (so that MPI sees two machines and uses TCP, not shared memory).
cat >"$WORK/agent" <<AGENT
#!/usr/bin/env bash
host=\$1; shift
case "\$host" in
  192.168.234.2) ns=$NS_B name=host-b ;;
  *) echo "agent: unknown host \$host" >&2; exit 1 ;;
esac
exec ip netns exec "\$ns" unshare --uts sh -c "hostname \$name; exec \$*"
AGENT
chmod +x "$WORK/agent"
printf '192.168.234.1 slots=1\n192.168.234.2 slots=1\n' >"$WORK/hosts"

tx_bytes() { ip netns exec "$NS_A" cat "/sys/class/net/$VETH_A/statistics/tx_bytes"; }
before=$(tx_bytes)
echo "two_hosts: $NS_A (192.168.234.1) + $NS_B (192.168.234.2), MPI over TCP on the veth pair"
ip netns exec "$NS_A" unshare --uts sh -c "hostname host-a; exec mpirun --allow-run-as-root \
  --hostfile $WORK/hosts -np 2 --map-by node \
  --mca plm_rsh_agent $WORK/agent --mca plm_rsh_no_tree_spawn 1 \
  --mca btl tcp,self --mca btl_tcp_if_include 192.168.234.0/24 \
  --mca oob_tcp_if_include 192.168.234.0/24 \
  -x OMP_NUM_THREADS=1 -x NEXTSERVE_TWO_HOSTS=1 $BINARY $*"

# The payload really crossed the veth pair (the row test alone sends 640 KB from rank 0 to rank 1).
sent=$(($(tx_bytes) - before))
echo "two_hosts: $sent bytes left 192.168.234.1 over $VETH_A"
if ((sent < 500000)); then
  echo "FAIL: expected the MPI traffic on the veth pair"
  exit 1
fi
