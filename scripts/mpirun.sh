#!/usr/bin/env bash
# mpirun with the flags this machine needs, and only those: --allow-run-as-root when run as
# root, --oversubscribe when more ranks are asked for than there are cores.
#   scripts/mpirun.sh -n 4 target/release/funksvd train --data ... --model ...
set -euo pipefail

extra=()
[ "$(id -u)" -eq 0 ] && extra+=(--allow-run-as-root)
ranks=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    -n | -np | --np | -c) ranks="${args[$((i + 1))]:-}" ;;
    -n=* | --np=*) ranks="${args[$i]#*=}" ;;
  esac
done
if [[ "$ranks" =~ ^[0-9]+$ ]] && [ "$ranks" -gt "$(nproc)" ]; then
  extra+=(--oversubscribe)
fi
exec mpirun "${extra[@]}" "$@"
