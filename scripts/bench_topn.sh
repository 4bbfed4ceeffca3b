#!/usr/bin/env bash
# Top-N quality and training speed side by side (issue 16): funksvd explicit and implicit,
# popularity, and the `implicit` library's ALS and BPR (pip, CPU) on ml-latest-small (every
# rating an interaction), a real clickstream sample (REES46, 17k events) and a generated
# clickstream (views picked by taste), each split by the pair hold-out and by the
# time hold-out (20%); the same factors (64) and cores for all; each system's alpha and
# regularisation chosen on the same grid by NDCG@20 on a validation split of its training part
# (funksvd implicit: that grid with and without item biases).
# Prints the table (NDCG@20, recall@20, hit rate@10, fit seconds, seconds per epoch, peak
# memory) and the ratios the issue's targets name. Seconds per epoch: the median epoch of a fit
# (both funksvd and implicit time each epoch); for funksvd implicit (2 ranks and 1) and implicit
# ALS the fastest of 8 fits each (7 on 1 rank), taken in turn: a 10 ms epoch (REES46) needs a
# quiet moment of this shared machine on both cores. Figures go in issue notes and the
# README.
#   scripts/bench_topn.sh [--events N] [--quick]
# --quick: a smaller grid and fewer epochs, to check the script itself.
set -euo pipefail
cd "$(dirname "$0")/.."
events=1000000 extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --events) events=$2; shift 2 ;;
    --quick) extra=(--alphas 2 --regs 1,100 --explicit-regs 0.05 --epochs 5 --bpr-epochs 20 --explicit-epochs 5 --timing-rounds 1); shift ;;
    *) echo "bench_topn: unknown argument $1" >&2; exit 2 ;;
  esac
done
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet
bin=target/release/funksvd
out=target/bench
mkdir -p "$out"
ml=../shared/data/ml-latest-small/ratings.csv
[ -f "$ml" ] || { echo "bench_topn: $ml is missing" >&2; exit 1; }
# Views picked by taste (--taste 1): without it which items a user views does not depend on the
# user, and popularity is the best ranking there is (every system ties it).
data=$out/clicks-taste-$events
if [ ! -e "$data" ]; then
  scripts/mpirun.sh -n 2 "$bin" generate --out "$data" --users 20000 --items 5000 --events "$events" --files 4 --seed 11 --taste 1
fi
venv=target/venv
if ! "$venv/bin/python" -c "import implicit, threadpoolctl, pandas, pyarrow, scipy" 2>/dev/null; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet implicit threadpoolctl pandas pyarrow numpy scipy
fi
export OPENBLAS_NUM_THREADS=1
rees=../shared/data/rees46-sample/events.csv
[ -f "$rees" ] || { echo "bench_topn: $rees is missing" >&2; exit 1; }
"$venv/bin/python" scripts/bench_topn.py --dataset ml-latest-small "$ml" --dataset rees46-sample "$rees" \
  --dataset generated "$data" \
  --out "$out/topn-results.json" "${extra[@]}"
