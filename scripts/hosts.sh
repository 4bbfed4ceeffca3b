#!/usr/bin/env bash
# Several hosts on one machine, for the tests and the benches (issue 32): each host a network
# namespace with its own hostname (a UTS namespace), loopback up and one address in
# 198.18.0.0/24 (the range set aside for network benchmarks, never a real network) on a veth
# pair to a bridge here (198.18.0.254, which is how a host reaches this machine's services,
# such as the tests' S3 server). mpirun reaches the hosts as the MPI Operator's launcher reaches
# its worker pods: through an rsh agent (scripts/hosts-rsh) with a hostfile naming them, from a
# host of its own (the launcher pod: NAME0, at 198.18.0.253).
#   scripts/hosts.sh up N [NAME] [FIRST]  make hosts NAME1..NAME<N> (NAME default fsvd), host i
#                                         at 198.18.0.<FIRST+i-1> (FIRST default 1), and the
#                                         launcher NAME0; prints the hostfile's lines
#   scripts/hosts.sh down [NAME]          remove them, and every process left in them
#   scripts/hosts.sh run HOST CMD...      run CMD on HOST
#   scripts/hosts.sh cut HOST             set HOST's link down (a partitioned node: its
#                                         processes run on, nothing reaches them)
#   scripts/hosts.sh mend HOST            set it up again
#   scripts/hosts.sh slow HOST RATE [DELAY] shape HOST's link both ways (such as 1gbit 1ms)
#   scripts/hosts.sh fast HOST            the link as made again
# Root only (namespaces and links); names at most 10 characters.
set -euo pipefail
state=/run/funksvd-hosts
cmd=${1:-}
[ -n "$cmd" ] || { sed -n '2,18p' "$0" >&2; exit 2; }
shift

bridge_of() { echo "${1}br"; }

up() {
  local n=$1 name=${2:-fsvd} first=${3:-1}
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] || { echo "hosts.sh: up N: give a number of hosts" >&2; exit 2; }
  [ "${#name}" -le 10 ] || { echo "hosts.sh: NAME $name: at most 10 characters" >&2; exit 2; }
  [ $((first + n - 1)) -le 253 ] || { echo "hosts.sh: 198.18.0.$first and $n hosts do not fit below .254" >&2; exit 2; }
  mkdir -p "$state"
  local br
  br=$(bridge_of "$name")
  # One set of hosts at a time: two bridges holding 198.18.0.254 would split the routes.
  local other
  other=$(ip -o -4 addr show | awk '$4 == "198.18.0.254/24" {print $2}' | grep -vx "$br" || true)
  if [ -n "$other" ]; then
    echo "hosts.sh: $other already holds 198.18.0.254 (other hosts are up: scripts/hosts.sh down ${other%br})" >&2
    exit 2
  fi
  if ! ip link show "$br" >/dev/null 2>&1; then
    ip link add "$br" type bridge
    ip addr add 198.18.0.254/24 dev "$br"
    ip link set "$br" up
  fi
  for ((i = 1; i <= n; i++)); do
    host "$name$i" "198.18.0.$((first + i - 1))" "$br"
    echo "$name$i slots=${SLOTS:-1}"
  done
  host "${name}0" 198.18.0.253 "$br"
  # The launcher gives up on a host whose link is gone after 7 retransmissions (about 50 s):
  # mpirun notices a lost host by keepalive, which only runs on an idle connection; a message
  # in flight to the host when it was cut is retransmitted instead, for about 15 minutes by
  # Linux's default (net.ipv4.tcp_retries2 = 15), and mpirun waits that long to end the job.
  # A setting of each network namespace: a Kubernetes pod's sysctl (see k8s/README.md).
  ip netns exec "${name}0" sysctl -qw net.ipv4.tcp_retries2=7
}

# Host $1 at address $2 on bridge $3, unless it is up already.
host() {
  local host=$1 addr=$2 br=$3
  ip netns list | grep -qx "$host\( .*\)\?" && return 0
  ip netns add "$host"
  ip link add "${host}v" type veth peer name eth0 netns "$host"
  ip link set "${host}v" master "$br" up
  ip -n "$host" addr add "$addr/24" dev eth0
  ip -n "$host" link set eth0 up
  ip -n "$host" link set lo up
  touch "$state/$host.uts"
  unshare --uts="$state/$host.uts" hostname "$host"
  echo "$addr" >"$state/$host.addr"
}

down() {
  local name=${1:-fsvd} host
  for host in $(ip netns list | awk '{print $1}' | grep "^$name[0-9]\+$" || true); do
    ip netns pids "$host" | xargs -r kill -9 2>/dev/null || true
    ip netns del "$host"
    if [ -e "$state/$host.uts" ]; then
      umount "$state/$host.uts" 2>/dev/null || true
      rm -f "$state/$host.uts" "$state/$host.addr"
    fi
    ip link del "${host}v" 2>/dev/null || true
  done
  ip link del "$(bridge_of "$name")" 2>/dev/null || true
  rmdir "$state" 2>/dev/null || true
}

run() {
  local host=$1
  shift
  [ -e "$state/$host.uts" ] || { echo "hosts.sh: no host $host (scripts/hosts.sh up)" >&2; exit 2; }
  exec nsenter --net="/run/netns/$host" --uts="$state/$host.uts" -- "$@"
}

# The link up again, and back in use before this returns: the neighbour entries that failed
# while it was down are forgotten on both sides (a connection made at once would otherwise be
# refused as unreachable, as mpirun's daemon was once right after a mend), and the host has
# resolved this machine's address again.
mend() {
  local host=$1 addr
  addr=$(cat "$state/$host.addr")
  ip link set "${host}v" up
  ip -n "$host" neigh flush dev eth0 2>/dev/null || true
  ip neigh flush to "$addr" 2>/dev/null || true
  for _ in $(seq 100); do
    ip netns exec "$host" bash -c 'echo > /dev/udp/198.18.0.254/9' 2>/dev/null || true
    if ip -n "$host" neigh show 198.18.0.254 dev eth0 | grep -qE 'REACHABLE|STALE|DELAY'; then
      return 0
    fi
    sleep 0.1
  done
  echo "hosts.sh: $host does not reach 198.18.0.254 10 s after its link came up" >&2
  exit 1
}

case "$cmd" in
  up) up "$@" ;;
  down) down "$@" ;;
  run) run "$@" ;;
  cut) ip link set "${1}v" down ;;
  mend) mend "$1" ;;
  slow)
    host=$1 rate=$2 delay=${3:-}
    # Each direction (the veth's two ends): tbf's rate, behind netem's delay when the kernel
    # has netem (sch_netem; some VM kernels do not: then the rate only, with a warning).
    for side in "ip netns exec $host tc qdisc" "tc qdisc"; do
      dev=eth0
      [ "$side" = "tc qdisc" ] && dev=${host}v
      $side del dev "$dev" root 2>/dev/null || true
      if [ -n "$delay" ] && $side add dev "$dev" root handle 1: netem delay "$delay" 2>/dev/null; then
        $side add dev "$dev" parent 1:1 handle 2: tbf rate "$rate" burst 256kb latency 50ms
      else
        [ -n "$delay" ] && echo "hosts.sh: no netem in this kernel: $dev gets the rate $rate only, no delay" >&2
        $side add dev "$dev" root tbf rate "$rate" burst 256kb latency 50ms
      fi
    done
    ;;
  fast) # Back to the link as made.
    host=$1
    ip netns exec "$host" tc qdisc del dev eth0 root 2>/dev/null || true
    tc qdisc del dev "${host}v" root 2>/dev/null || true
    ;;
  *) echo "hosts.sh: unknown command $cmd (up, down, run, cut, mend, slow, fast)" >&2; exit 2 ;;
esac
