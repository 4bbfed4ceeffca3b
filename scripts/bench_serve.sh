#!/usr/bin/env bash
# Requests per second and latency of funksvd serve against a Ray Serve deployment (one replica,
# NumPy scoring of the same factors: scripts/bench_serve_ray.py), on the bench model (5M events,
# 100k users x 20k items, 20 factors), over loopback with wrk (Debian's): each server pinned to
# core 0 (funksvd with one request thread; Ray and every process it starts), wrk to core 1.
# For each of GET /v1/recommend (random users), POST /v1/recommend (20 random items) and
# GET /v1/similar (random items): the peak (wrk, --connections open, --duration seconds) with
# its p50 and p99, then funksvd's p99 at 80% of its peak (connections paced by wrk's
# delay()). Prints a table and the ratios; numbers go in issue notes and the README, never in
# timed tests.
#   scripts/bench_serve.sh [--events N] [--duration S] [--connections N] [--no-ray]
set -euo pipefail
cd "$(dirname "$0")/.."
events=5000000 duration=10 connections=16 ray=1
while [ $# -gt 0 ]; do
  case "$1" in
    --events) events=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --no-ray) ray=0; shift ;;
    *) echo "bench_serve: unknown argument $1" >&2; exit 2 ;;
  esac
done
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet
command -v wrk >/dev/null || {
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get install -y -qq --no-install-recommends wrk >/dev/null
}
# shellcheck source=scripts/bench_data.sh
. scripts/bench_data.sh
bench_model
venv=target/venv
if [ "$ray" = 1 ] && ! "$venv/bin/python" -c "import ray.serve, pandas, pyarrow, scipy" 2>/dev/null; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "ray[serve]" pandas pyarrow numpy scipy
fi

# The requests: 2000 random users, 500 random items, 200 baskets of 20 items, as Lua tables.
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
python3 - "$model" "$work" <<'PY'
import json, random, subprocess, sys
model, work = sys.argv[1], sys.argv[2]
def ids(table, column):
    code = f"import pyarrow.parquet as pq; print('\\n'.join(map(str, pq.read_table('{model}/{table}', columns=['{column}']).column(0).to_pylist())))"
    return subprocess.run(["target/venv/bin/python", "-c", code], capture_output=True, text=True, check=True).stdout.split()
rng = random.Random(7)
users, items = ids("users.parquet", "user_id"), ids("items.parquet", "item_id")
open(f"{work}/first_item", "w").write(items[0])
lua = lambda xs: "{" + ",".join(f'"{x}"' for x in xs) + "}"
pace = """
local pace = tonumber(os.getenv("PACE_MS") or "0")
function delay() return pace end
done = function(summary, latency, requests)
  io.write(string.format('{"requests": %d, "seconds": %.3f, "p50_ms": %.3f, "p99_ms": %.3f, "errors": %d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""
open(f"{work}/get.lua", "w").write(f"""ids = {lua(rng.sample(users, 2000))}
request = function() return wrk.format("GET", "/v1/recommend?user=" .. ids[math.random(#ids)] .. "&n=10") end
{pace}""")
open(f"{work}/similar.lua", "w").write(f"""ids = {lua(rng.sample(items, 500))}
request = function() return wrk.format("GET", "/v1/similar?item=" .. ids[math.random(#ids)] .. "&n=10") end
{pace}""")
baskets = [json.dumps({"items": [int(i) for i in rng.sample(items, 20)], "n": 10}) for _ in range(200)]
open(f"{work}/post.lua", "w").write(f"""bodies = {{{",".join(json.dumps(b) for b in baskets)}}}
headers = {{["Content-Type"] = "application/json"}}
request = function() return wrk.format("POST", "/v1/recommend", headers, bodies[math.random(#bodies)]) end
{pace}""")
PY

# run SYSTEM URL ENDPOINT [PACE_MS [CONNECTIONS]]: one wrk run on core 1; its JSON line, tagged.
run() {
  local line c=${5:-$connections}
  line=$(PACE_MS=${4:-0} taskset -c 1 wrk -t1 -c"$c" -d"${duration}s" -s "$work/$3.lua" "$2" | tail -1)
  echo "{\"system\": \"$1\", \"endpoint\": \"$3\", \"pace_ms\": ${4:-0}, \"connections\": $c, \"result\": $line}" | tee -a "$results"
}
wait_for() {
  for _ in $(seq 600); do
    curl -sf "$1" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "bench_serve: $1 never answered" >&2; exit 1
}
results=$out/serve-results.jsonl
: > "$results"

taskset -c 0 "$bin" serve --model "$model" --data "$data" --listen 127.0.0.1:8080 --threads 1 --poll-seconds 0 \
  2>"$out/log-serve.txt" &
funksvd_pid=$!
wait_for "http://127.0.0.1:8080/healthz"
for endpoint in get post similar; do
  run funksvd http://127.0.0.1:8080 "$endpoint"
done
# funksvd at 80% of its peak: each connection waits 2 ms after each answer (wrk waits whole
# milliseconds), and there are as many connections as that rate needs, 0.8 x peak x (2 ms + the
# latency): a first run guesses 1 ms of latency, a second takes the first's median.
rate() { # ENDPOINT PACE: requests/s and p50 of funksvd's last run at that pace
  python3 -c "import json; r=[json.loads(l) for l in open('$results')]; x=[e['result'] for e in r if e['system']=='funksvd' and e['endpoint']=='$1' and e['pace_ms']==$2][-1]; print(x['requests']/x['seconds'], x['p50_ms'])"
}
pace=2
for endpoint in get post similar; do
  read -r peak _ < <(rate "$endpoint" 0)
  first=$(python3 -c "print(max(1, round(0.8 * $peak * ($pace + 1.0) / 1000)))")
  run funksvd http://127.0.0.1:8080 "$endpoint" "$pace" "$first"
  read -r _ p50 < <(rate "$endpoint" "$pace")
  second=$(python3 -c "print(max(1, round(0.8 * $peak * ($pace + $p50) / 1000)))")
  [ "$second" = "$first" ] || run funksvd http://127.0.0.1:8080 "$endpoint" "$pace" "$second"
done
kill "$funksvd_pid"; wait "$funksvd_pid" 2>/dev/null || true

if [ "$ray" = 1 ]; then
  taskset -c 0 "$venv/bin/python" scripts/bench_serve_ray.py --model "$model" --data "$data" >"$out/log-ray.txt" 2>&1 &
  ray_pid=$!
  wait_for "http://127.0.0.1:8000/v1/similar?item=$(cat "$work/first_item")&n=1"
  for endpoint in get post similar; do
    run ray http://127.0.0.1:8000 "$endpoint"
  done
  kill "$ray_pid"; wait "$ray_pid" 2>/dev/null || true
  "$venv/bin/ray" stop --force >/dev/null 2>&1 || true
fi

python3 - "$results" "$connections" "$duration" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
print(f"\n{sys.argv[2]} connections, {sys.argv[3]} s per run; server on core 0, wrk on core 1")
print(f"{'system':8s} {'endpoint':8s} {'load':>10s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>7s}")
for r in runs:
    x = r["result"]
    load = "peak" if r["pace_ms"] == 0 else f"{r['connections']} x {r['pace_ms']}ms"
    print(f"{r['system']:8s} {r['endpoint']:8s} {load:>10s} {x['requests'] / x['seconds']:9.0f} {x['p50_ms']:8.2f} {x['p99_ms']:8.2f} {x['errors']:7d}")
peak = {(r["system"], r["endpoint"]): r["result"] for r in runs if r["pace_ms"] == 0}
rps = lambda x: x["requests"] / x["seconds"]
for e in ("get", "post", "similar"):
    f, ray = peak.get(("funksvd", e)), peak.get(("ray", e))
    if f and ray:
        print(f"{e}: funksvd {rps(f) / rps(ray):.1f}x Ray Serve's throughput, p99 {f['p99_ms']:.2f} ms vs {ray['p99_ms']:.2f} ms")
    paced = [r["result"] for r in runs if r["system"] == "funksvd" and r["endpoint"] == e and r["pace_ms"] > 0]
    if f and paced:
        x = paced[-1]
        print(f"{e}: funksvd at {100 * rps(x) / rps(f):.0f}% of its peak ({rps(x):.0f} req/s): p50 {x['p50_ms']:.2f} ms, p99 {x['p99_ms']:.2f} ms")
PY
