#!/usr/bin/env bash
# A shop's whole clickstream (issue 33): a generated shop-shaped dataset of --events events
# (users = events / 20, items = events / 500, as REES46's months have them), made once and kept
# in target/bench, and the same shape at --base events (5M) beside it; on each, with 2 and 4
# ranks (4 oversubscribed on this machine): train --objective explicit (the original job's
# hyperparameters: the defaults), train --objective implicit --factors 64 --epochs 15,
# recommend --top 20 with --data (for a uniform sample of the users where every user would take
# longer than --recommend-seconds: the rate and the time for all, extrapolated), evaluate. For
# each run: wall seconds, its phases, every rank's peak RSS (GNU time), bytes read per rank; then
# a line per target (holds / falls short): memory per rank within docs/SCALE.md's bound, and
# seconds per event at --events within 1.3x of --base's.
# --train-only skips recommend and evaluate (the cost model's calibration runs: --ranks "1 2 4 8").
#   scripts/bench_scale.sh [--events N] [--base N] [--ranks "2 4"] [--recommend-seconds S]
#                          [--train-only]
set -euo pipefail
cd "$(dirname "$0")/.."
events=100000000 base=5000000 ranks="2 4" budget=600 train_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --events) events=$2; shift 2 ;;
    --base) base=$2; shift 2 ;;
    --ranks) ranks=$2; shift 2 ;;
    --recommend-seconds) budget=$2; shift 2 ;;
    --train-only) train_only=1; shift ;;
    *) echo "bench_scale: unknown argument $1" >&2; exit 2 ;;
  esac
done
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet
if ! target/venv/bin/python -c "import pandas, pyarrow" 2>/dev/null; then
  python3 -m venv target/venv
  target/venv/bin/pip install --quiet pandas pyarrow
fi
py=target/venv/bin/python
bin=$PWD/target/release/funksvd
out=target/bench
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
work=$(mktemp -d "$out/bench-scale-XXXX")
results=$work/results.jsonl

# The shop-shaped dataset of $1 events (made once).
shop_data() {
  local n=$1 dir=$out/shop-$1
  local users=$((n / 20)) items=$((n / 500)) files=$((n / 2500000))
  [ "$items" -ge 2000 ] || items=2000
  [ "$files" -ge 30 ] || files=30 # a file per day at least
  if [ ! -e "$dir/_generated" ]; then
    rm -rf "$dir"
    scripts/mpirun.sh -n 2 "$bin" generate --profile shop --out "$dir" --events "$n" \
      --users "$users" --items "$items" --files "$files" --days 30 --taste 1 --seed 7 >&2
    touch "$dir/_generated"
  fi
  echo "$dir"
}

# step NAME RANKS ARGS...: funksvd ARGS under mpirun, each rank's peak RSS by GNU time; one
# JSON line: the step, its wall seconds and every rank's peak RSS in MB.
step() {
  local name=$1 n=$2
  shift 2
  local start end
  start=$(date +%s.%N)
  # shellcheck disable=SC2016
  if ! scripts/mpirun.sh -n "$n" sh -c '/usr/bin/time -f %M -o "$0.rss.$OMPI_COMM_WORLD_RANK" "$@"' \
    "$work/$name" "$bin" "$@" >"$work/$name.out" 2>"$work/$name.log"; then
    tail -20 "$work/$name.log" >&2
    exit 1
  fi
  end=$(date +%s.%N)
  "$py" - "$work/$name" "$n" "$start" "$end" <<'EOF'
import json, sys
base, n, start, end = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
rss = [int(open(f"{base}.rss.{r}").read().split()[-1]) / 1024 for r in range(n)]
print(json.dumps({"name": base.rsplit("/", 1)[1], "seconds": end - start, "rss_mb": rss}))
EOF
}

# A uniform sample of the model's users ($3 of them) as a CSV of the data's user column.
sample_users() {
  "$py" - "$1" "$2" "$3" <<'EOF'
import json, sys
import pandas as pd
model, path, rate = sys.argv[1], sys.argv[2], float(sys.argv[3])
meta = json.load(open(f"{model}/model.json"))
users = pd.read_parquet(f"{model}/{meta['files']['users']}", columns=["user_id"])
users.sample(frac=rate, random_state=7).rename(columns={"user_id": meta["input"]["user_col"] or "user_id"}).to_csv(path, index=False)
EOF
}

for size in "$base" "$events"; do
  data=$(shop_data "$size")
  for n in $ranks; do
    tag=$size-$n
    for objective in explicit implicit; do
      model=$work/model-$objective-$tag
      extra=()
      [ "$objective" = implicit ] && extra=(--factors 64 --epochs 15)
      line=$(step "train-$objective-$tag" "$n" train --data "$data" --model "$model" \
        --objective "$objective" "${extra[@]}")
      "$py" - "$line" "$model/model.json" "$size" "$n" "$objective" "$work/train-$objective-$tag.log" >>"$results" <<'EOF'
import json, re, sys
line, meta = json.loads(sys.argv[1]), json.load(open(sys.argv[2]))
t = meta["training"]
log = open(sys.argv[6]).read()
pairs = re.search(r"at most (\d+) ratings per rank", log)
line.update({"step": "train", "events": int(sys.argv[3]), "ranks": int(sys.argv[4]), "objective": sys.argv[5],
             "phases": t["phases"], "users": meta["n_users"], "items": meta["n_items"], "pairs": meta["n_ratings"],
             "holdout_pairs": meta["metrics"]["n_holdout"],
             "factors": meta["factors"], "pairs_per_rank_max": int(pairs.group(1)) if pairs else None,
             "read_mb_per_rank": [r["bytes"] / 1e6 for r in t["phases"]["read_per_rank"]],
             "sent_mb_per_rank_per_epoch": t["syncs_per_epoch"] * t["floats_per_sync"] * 4 / 1e6,
             "users_in_parts": bool(meta.get("user_parts")),
             "ndcg20": ((meta["metrics"].get("ranking") or {}).get("model") or {}).get("ndcg@20")})
print(json.dumps(line))
EOF
    done
    [ "$train_only" = 1 ] && continue
    # recommend from the implicit model: every user, or a sample that fits the budget at the
    # rate of the first 2% of the users.
    model=$work/model-implicit-$tag
    users=$("$py" -c "import json; print(json.load(open('$model/model.json'))['n_users'])")
    sample_users "$model" "$work/probe-$tag.csv" 0.02
    probe=$(step "recommend-probe-$tag" "$n" recommend --model "$model" --data "$data" \
      --users "$work/probe-$tag.csv" --top 20 --out "$work/recs-probe-$tag")
    rate=$("$py" -c "import json,sys; p=json.loads(sys.argv[1]); print(min(1.0, $budget / max(p['seconds'] / 0.02, 1e-9)))" "$probe")
    # (the probe's whole time as if it were all scoring: the sample errs on the small side)
    args=(recommend --model "$model" --data "$data" --top 20 --out "$work/recs-$tag")
    if "$py" -c "import sys; sys.exit(0 if float('$rate') < 1 else 1)"; then
      sample_users "$model" "$work/users-$tag.csv" "$rate"
      args+=(--users "$work/users-$tag.csv")
    else
      rate=1
    fi
    line=$(step "recommend-$tag" "$n" "${args[@]}")
    "$py" - "$line" "$work/recs-$tag/_SUCCESS" "$size" "$n" "$rate" "$users" >>"$results" <<'EOF'
import json, sys
line, manifest = json.loads(sys.argv[1]), json.load(open(sys.argv[2]))
rate, users = float(sys.argv[5]), int(sys.argv[6])
line.update({"step": "recommend", "events": int(sys.argv[3]), "ranks": int(sys.argv[4]), "objective": "implicit",
             "phases": manifest["phases"], "users_sampled": rate, "lists": manifest["lists"],
             "users": users})
# For every user: the scoring scales with the users, the rest (start, model, --data) does not.
score = manifest["phases"]["score_and_write"]
line["seconds_all_users"] = line["seconds"] - score + score / rate
print(json.dumps(line))
EOF
    line=$(step "evaluate-$tag" "$n" evaluate --model "$model" --data "$data" --split holdout)
    "$py" - "$line" "$work/evaluate-$tag.out" "$size" "$n" >>"$results" <<'EOF'
import json, sys
line = json.loads(sys.argv[1])
line.update({"step": "evaluate", "events": int(sys.argv[3]), "ranks": int(sys.argv[4]), "objective": "implicit",
             "metrics": json.load(open(sys.argv[2]))})
print(json.dumps(line))
EOF
  done
done
"$py" scripts/scale_report.py "$results" "$base" "$events"
echo "results: $results"
