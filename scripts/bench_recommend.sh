#!/usr/bin/env bash
# Speed and memory of funksvd recommend (top 20 for every user, seen items excluded) on the
# bench data (5M events, 100k users x 20k items, a model of 20 factors trained on it), side by
# side on the same factors and the same cores with implicit's batch recommend (pip `implicit`,
# CPU, filter_already_liked_items=True) and a NumPy argpartition loop. Numbers go in issue notes
# and the README; never in timed tests.
#   scripts/bench_recommend.sh [--events N] [--ranks "1 2"] [--repeat N] [--top N]
# Each system runs --repeat times [3]; the table keeps its fastest run (this VM drifts).
# funksvd's time is its scoring and writing phase (every rank's share, the slowest rank), beside
# its whole run (reading the data for the seen items included); the alternatives' is the
# scoring alone, data and factors already in memory, output left in memory.
set -euo pipefail
cd "$(dirname "$0")/.."
events=5000000 rank_list="1 2" repeat=3 top=20
while [ $# -gt 0 ]; do
  case "$1" in
    --events) events=$2; shift 2 ;;
    --ranks) rank_list=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --top) top=$2; shift 2 ;;
    *) echo "bench_recommend: unknown argument $1" >&2; exit 2 ;;
  esac
done
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet
# shellcheck source=scripts/bench_data.sh
. scripts/bench_data.sh
bench_model
venv=target/venv
if ! "$venv/bin/python" -c "import implicit, threadpoolctl, pandas, pyarrow, scipy" 2>/dev/null; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet implicit threadpoolctl pandas pyarrow numpy scipy
fi

results=$out/recommend-results.jsonl
: > "$results"
for rep in $(seq "$repeat"); do
  for ranks in $rank_list; do
    recs=$out/recs-$ranks
    rm -f "$out"/rss-rec-"$ranks"-*.txt
    scripts/mpirun.sh -n "$ranks" sh -c "/usr/bin/time -v -o $out/rss-rec-$ranks-\$OMPI_COMM_WORLD_RANK.txt $bin recommend --model $model --data $data --out $recs --top $top" 2>"$out/log-recommend-$ranks.txt"
    rss=$(grep -h "Maximum resident" "$out"/rss-rec-"$ranks"-*.txt | awk '{ if ($6 > m) m = $6 } END { printf "%.0f", m / 1024 }')
    python3 - "$recs/_SUCCESS" "$ranks" "$rss" "$results" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
r = {"system": "funksvd", "threads": int(sys.argv[2]), "seconds": m["phases"]["score_and_write"],
     "end_to_end": m["seconds"], "read": m["phases"]["read"], "users": m["lists"],
     "rss_mb": int(sys.argv[3])}
open(sys.argv[4], "a").write(json.dumps(r) + "\n")
PY
  done
  for system in implicit numpy; do
    for threads in $rank_list; do
      /usr/bin/time -v -o "$out/rss-$system-$threads.txt" "$venv/bin/python" scripts/bench_recommend.py \
        --model "$model" --data "$data" --system "$system" --threads "$threads" --top "$top" \
        --recs "$out/recs-1" > "$out/$system-$threads.json"
      python3 - "$out/$system-$threads.json" "$out/rss-$system-$threads.txt" "$results" <<'PY'
import json, re, sys
r = json.load(open(sys.argv[1]))
r["rss_mb"] = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(sys.argv[2]).read()).group(1)) // 1024
open(sys.argv[3], "a").write(json.dumps(r) + "\n")
PY
    done
  done
done

python3 - "$results" "$model/model.json" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
meta = json.load(open(sys.argv[2]))
items, users, k = meta["n_items"], meta["n_users"], meta["factors"]
best = {}
for r in runs:
    key = (r["system"], r["threads"])
    if key not in best or r["seconds"] < best[key]["seconds"]:
        best[key] = r
print(f"top-N for {users} users x {items} items, {k} factors; fastest of {len(runs) // max(1, len(best))} runs")
print(f"{'system':10s} {'cores':>5s} {'seconds':>8s} {'users/s':>10s} {'scores/s':>10s} {'vs implicit':>12s} {'peak RSS MB':>12s}  notes")
for (system, threads), r in sorted(best.items()):
    base = best.get(("implicit", threads))
    ratio = f"{base['seconds'] / r['seconds']:.2f}x" if base else "-"
    note = ""
    if system == "funksvd":
        note = f"whole run {r['end_to_end']:.2f}s (reading the 5M events for the seen items {r['read']:.2f}s)"
    elif r.get("lists_equal_to_funksvd") is not None:
        note = f"lists equal to funksvd's: {100 * r['lists_equal_to_funksvd']:.1f}% of a sample"
    print(f"{system:10s} {threads:5d} {r['seconds']:8.3f} {users / r['seconds']:10.0f} {users * items / r['seconds']:10.3g} {ratio:>12s} {r['rss_mb']:12d}  {note}")
f = {t: r for (s, t), r in best.items() if s == "funksvd"}
if len(f) > 1:
    lo, hi = min(f), max(f)
    print(f"funksvd {hi} ranks {f[lo]['seconds'] / f[hi]['seconds']:.2f}x as fast as {lo} (scoring and writing)")
print(f"item matrix: {items * (k + 1) * 4 / 1e6:.1f} MB (the per-rank memory target is that + 64 MB)")
PY
