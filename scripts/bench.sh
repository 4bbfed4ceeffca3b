#!/usr/bin/env bash
# Speed and memory of funksvd train on a generated clickstream of 5M events (100k users, 20k
# items): seconds per epoch, rating updates per second per rank, phases, peak RSS per rank, at
# 1 and 2 ranks. Numbers go in issue notes and README "Performance"; never in timed tests.
#   scripts/bench.sh [--events N] [--epochs N] [--ranks "1 2"]
set -euo pipefail
cd "$(dirname "$0")/.."
events=5000000 epochs=10 rank_list="1 2"
while [ $# -gt 0 ]; do
  case "$1" in
    --events) events=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --ranks) rank_list=$2; shift 2 ;;
    *) echo "bench: unknown argument $1" >&2; exit 2 ;;
  esac
done
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet
bin=target/release/funksvd
out=target/bench
data=$out/events-$events
mkdir -p "$out"
if [ ! -e "$data" ]; then
  scripts/mpirun.sh -n 2 "$bin" generate --out "$data" --users 100000 --items 20000 --events "$events" --files 8 --seed 7
fi

printf '%-6s %10s %12s %16s %12s %10s %s\n' ranks ratings sec/epoch updates/s/rank holdout_rmse rss_MB phases
for ranks in $rank_list; do
  model=$out/model-$ranks
  # GNU time reports the largest RSS of the processes it waits for: wrap each rank, not mpirun.
  rm -f "$out"/rss-"$ranks"-*.txt
  scripts/mpirun.sh -n "$ranks" sh -c "/usr/bin/time -v -o $out/rss-$ranks-\$OMPI_COMM_WORLD_RANK.txt $bin train --data $data --model $model --epochs $epochs" 2>"$out/log-$ranks.txt"
  rss=$(grep -h "Maximum resident" "$out"/rss-"$ranks"-*.txt | awk '{ if ($6 > m) m = $6 } END { printf "%.0f", m / 1024 }')
  python3 - "$model/model.json" "$ranks" "$rss" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
t, ranks = m["training"], int(sys.argv[2])
spe = t["seconds_per_epoch"]
per_rank = m["n_ratings"] / spe / ranks
ph = t["phases"]
phases = " ".join(f"{k}={ph[k]:.2f}" for k in ("plan", "read", "features", "exchange", "train", "save"))
print(f"{ranks:<6d} {m['n_ratings']:10d} {spe:12.4f} {per_rank/1e6:14.2f}M {m['metrics']['holdout_rmse']:12.4f} {sys.argv[3]:>10s} {phases} total={t['seconds']:.2f}s")
PY
done
