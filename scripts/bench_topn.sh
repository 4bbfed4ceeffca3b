#!/usr/bin/env bash
# Top-N quality and training speed side by side (issues 16 and 31): funksvd as it comes (every
# flag at its default), funksvd explicit and implicit tuned, popularity, and the `implicit`
# library's ALS (at the default's 20 factors and at 64) and BPR (pip, CPU) on ml-latest-small
# (every rating an interaction), a real clickstream sample (REES46, 17k events) and generated
# clickstreams (the quickstart's demo, views picked by taste at 0.2, 0.5 and 1), each split by
# the pair hold-out and by the
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
# Generated clickstreams: the quickstart's demo data (--taste 0: which items a user views does
# not depend on the user, only carts and purchases do, so popularity is the best ranking there
# is and a model can only tie it), views partly picked by taste (0.2, 0.5), and all of them
# (1, another seed).
generated=()
for taste in 0 0.2 0.5 1; do
  data=$out/clicks-taste-$taste-$events
  seed=42
  [ "$taste" = 1 ] && { data=$out/clicks-taste-$events; seed=11; }
  if [ ! -e "$data" ]; then
    scripts/mpirun.sh -n 2 "$bin" generate --out "$data" --users 20000 --items 5000 --events "$events" --files 4 --seed "$seed" --taste "$taste"
  fi
  name="generated-taste-$taste"
  [ "$taste" = 0 ] && name="demo-generated-taste-0"
  generated+=(--dataset "$name" "$data")
done
venv=target/venv
if ! "$venv/bin/python" -c "import implicit, threadpoolctl, pandas, pyarrow, scipy" 2>/dev/null; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet implicit threadpoolctl pandas pyarrow numpy scipy
fi
export OPENBLAS_NUM_THREADS=1
rees=../shared/data/rees46-sample/events.csv
[ -f "$rees" ] || { echo "bench_topn: $rees is missing" >&2; exit 1; }
"$venv/bin/python" scripts/bench_topn.py --dataset ml-latest-small "$ml" --dataset rees46-sample "$rees" \
  "${generated[@]}" \
  --out "$out/topn-results.json" "${extra[@]}"
