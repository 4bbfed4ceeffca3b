#!/usr/bin/env bash
# funksvd tune against the default configuration and Surprise's SVD and SVD++ on
# ml-latest-small (issue 18): one pair split (20% test, which tune never sees); tune searches
# for --minutes on 2 ranks with ASHA and again without early stopping (trials per hour), and
# for --ndcg-minutes with ASHA judged by NDCG@20 (an RMSE-tuned model ranks poorly); every
# system is judged on the test split by RMSE and NDCG@20. Prints the table and the ratios the
# issue's targets name. Figures go in issue notes and the README.
#   scripts/bench_tune.sh [--minutes M] [--ndcg-minutes N] [--searches asha,none,ndcg]
#   (defaults: searches of 10, 10 and 5 minutes, all three)
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=10 ndcg_minutes=5 searches=asha,none,ndcg
while [ $# -gt 0 ]; do
  case "$1" in
    --searches) searches=$2; shift 2 ;;
    --minutes) minutes=$2; shift 2 ;;
    --ndcg-minutes) ndcg_minutes=$2; shift 2 ;;
    *) echo "bench_tune: unknown argument $1" >&2; exit 2 ;;
  esac
done
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet
ml=../shared/data/ml-latest-small/ratings.csv
[ -f "$ml" ] || { echo "bench_tune: $ml is missing" >&2; exit 1; }
venv=target/venv
if ! "$venv/bin/python" -c "import surprise, pandas, pyarrow, scipy" 2>/dev/null; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet scikit-surprise pandas pyarrow numpy scipy
fi
out=target/bench
mkdir -p "$out"
work=$(mktemp -d /tmp/bench-tune-XXXXXXXX)
trap 'rm -rf "$work"' EXIT
"$venv/bin/python" scripts/bench_tune.py --ratings "$ml" --workdir "$work" --minutes "$minutes" \
  --ndcg-minutes "$ndcg_minutes" --searches "$searches" \
  --out "$out/tune-results.json"
