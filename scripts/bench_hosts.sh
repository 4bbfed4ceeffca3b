#!/usr/bin/env bash
# The network's cost, measured (issue 32): one epoch's time and the bytes each rank sends, for
# 2 ranks on one host (item rows in shared memory), 2 ranks on one host passing the rows as
# messages (FUNKSVD_SHARED_ROWS=0), 2 hosts x 1 rank over TCP (network namespaces on virtual
# links, scripts/hosts.sh), and 2 hosts with the links shaped to 1 Gbit/s (tc tbf; plus 1 ms
# of delay where the kernel has netem), for the explicit and the implicit objective on the
# bench data (scripts/bench_data.sh, 5M events). Runs in turn on the same cores; prints the
# table and each setting's epoch time as a ratio of one host's. Root (namespaces).
#   scripts/bench_hosts.sh [--events N] [--rounds R]
set -euo pipefail
cd "$(dirname "$0")/.."
events=5000000 rounds=3
while [ $# -gt 0 ]; do
  case "$1" in
    --events) events=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    *) echo "bench_hosts: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "bench_hosts: needs root (network namespaces)" >&2; exit 2; }
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet
# shellcheck source=scripts/bench_data.sh
. scripts/bench_data.sh
bench_data
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
name=fsvdb
trap 'scripts/hosts.sh down $name' EXIT
hostfile=$out/hosts-hostfile
SLOTS=1 scripts/hosts.sh up 2 "$name" 101 >"$hostfile"
work=$(mktemp -d "$out/bench-hosts-XXXX")

across() {
  mpirun --allow-run-as-root -n 2 --hostfile "$hostfile" --mca plm_rsh_agent "$PWD/scripts/hosts-rsh" \
    --mca btl tcp,self --mca btl_tcp_if_include 198.18.0.0/24 --mca oob_tcp_if_include 198.18.0.0/24 \
    "$@"
}

# One run: its model.json's epoch seconds (the median epoch), rows' travel, bytes per epoch.
run() {
  local setting=$1 objective=$2 round=$3
  shift 3
  local model=$work/$objective-$setting-$round
  local args=(train --data "$data" --model "$model" --objective "$objective" --holdout 0)
  [ "$objective" = implicit ] && args+=(--popularity-weight 1)
  "$@" "$bin" "${args[@]}" 2>"$model.log" || { cat "$model.log" >&2; exit 1; }
  python3 - "$model/model.json" "$setting" "$objective" <<'EOF'
import json, statistics, sys
m = json.load(open(sys.argv[1]))
t = m["training"]
epochs = [h["seconds"] for h in m["metrics"]["history"]]
sent = t["syncs_per_epoch"] * t["floats_per_sync"] * 4
print(json.dumps({"setting": sys.argv[2], "objective": sys.argv[3], "epoch": statistics.median(epochs),
                  "item_rows": t["item_rows"], "mb_sent_per_epoch": sent / 1e6}))
EOF
}

results=$work/results.jsonl
for objective in explicit implicit; do
  for ((r = 1; r <= rounds; r++)); do
    run one-host-shared "$objective" "$r" scripts/mpirun.sh -n 2 >>"$results"
    run one-host-passed "$objective" "$r" env FUNKSVD_SHARED_ROWS=0 scripts/mpirun.sh -n 2 >>"$results"
    run two-hosts-tcp "$objective" "$r" across >>"$results"
    scripts/hosts.sh slow "${name}1" 1gbit 1ms 2>/dev/null
    scripts/hosts.sh slow "${name}2" 1gbit 1ms 2>"$work/slow.log"
    run two-hosts-1gbit "$objective" "$r" across >>"$results"
    scripts/hosts.sh fast "${name}1"
    scripts/hosts.sh fast "${name}2"
  done
done
[ -s "$work/slow.log" ] && cat "$work/slow.log" >&2
python3 - "$results" "$events" "$rounds" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{int(sys.argv[2]):,} events, 2 ranks, fastest of {sys.argv[3]} runs each (median epoch of a run)")
print("| objective | setting | item rows | s/epoch | x one host | MB a rank sends per epoch, at most |")
print("| --- | --- | --- | --- | --- | --- |")
for objective in ["explicit", "implicit"]:
    best = {}
    for r in rows:
        if r["objective"] == objective:
            best[r["setting"]] = min(best.get(r["setting"], r), r, key=lambda x: x["epoch"])
    base = best["one-host-shared"]["epoch"]
    for setting, r in best.items():
        print(f"| {objective} | {setting} | {r['item_rows']} | {r['epoch']:.3f} | {r['epoch'] / base:.2f} | {r['mb_sent_per_epoch']:.1f} |")
EOF
