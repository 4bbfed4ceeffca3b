#!/usr/bin/env bash
# mpirun with the flags this machine needs: --allow-run-as-root when run as root,
# --oversubscribe when more ranks are asked for than there are cores, and a keepalive that
# notices a lost host in a minute (below).
#   scripts/mpirun.sh -n 4 target/release/funksvd train --data ... --model ...
set -euo pipefail

extra=()
[ "$(id -u)" -eq 0 ] && extra+=(--allow-run-as-root)
ranks=""
args=("$@")
# mpirun's own count only: the program's arguments (as `sh -c ...`'s -c) come after it.
for ((i = 0; i < ${#args[@]}; i++)); do
  [ -n "$ranks" ] && break
  case "${args[$i]}" in
    -n | -np | --np | -c) ranks="${args[$((i + 1))]:-}" ;;
    -n=* | --np=*) ranks="${args[$i]#*=}" ;;
  esac
done
if [[ "$ranks" =~ ^[0-9]+$ ]] && [ "$ranks" -gt "$(nproc)" ]; then
  extra+=(--oversubscribe)
fi
# Ranks on several hosts: mpirun notices a host cut off only by TCP keepalive on its connection
# to the host's daemon, 480 s by Open MPI's defaults; 30 + 10 x 3 = 60 s here unless set.
export OMPI_MCA_oob_tcp_keepalive_time=${OMPI_MCA_oob_tcp_keepalive_time:-30}
export OMPI_MCA_oob_tcp_keepalive_intvl=${OMPI_MCA_oob_tcp_keepalive_intvl:-10}
export OMPI_MCA_oob_tcp_keepalive_probes=${OMPI_MCA_oob_tcp_keepalive_probes:-3}
exec mpirun "${extra[@]}" "$@"
