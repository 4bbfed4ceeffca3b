#!/usr/bin/env bash
# Model quality side by side on MovieLens (ml-latest-small), 80/20 hold-out by funksvd's split:
# funksvd with 1 and 2 ranks against Surprise's SVD with the same factors, epochs, lr and reg.
#   scripts/quality.sh [path/to/ratings.csv]
set -euo pipefail
cd "$(dirname "$0")/.."
ratings=${1:-../shared/data/ml-latest-small/ratings.csv}
[ -f "$ratings" ] || { echo "quality: $ratings not found" >&2; exit 2; }
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet
venv=target/venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import surprise, pandas, pyarrow" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q scikit-surprise pandas numpy pyarrow
fi
out=target/quality
mkdir -p "$out"
common=(--rating-col rating --user-col userId --item-col movieId --factors 20 --epochs 10 --lr 0.01 --reg 0.02 --seed 42 --holdout 0.2)
printf '%-22s %6s %10s %10s %8s\n' system ranks n_holdout rmse mae
for ranks in 1 2; do
  scripts/mpirun.sh -n "$ranks" target/release/funksvd train --data "$ratings" --model "$out/funksvd-$ranks" "${common[@]}" 2>/dev/null
  "$venv/bin/python" - "$out/funksvd-$ranks/model.json" "$ranks" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["metrics"]
print(f"{'funksvd':22s} {sys.argv[2]:>6s} {m['n_holdout']:10d} {m['holdout_rmse']:10.4f} {m['holdout_mae']:8.4f}")
PY
done
"$venv/bin/python" scripts/bench_baselines.py --ratings "$ratings" --system surprise > "$out/surprise.json"
"$venv/bin/python" - "$out/surprise.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"{'surprise.SVD':22s} {1:>6d} {s['n_holdout']:10d} {s['holdout_rmse']:10.4f} {s['holdout_mae']:8.4f}")
PY
