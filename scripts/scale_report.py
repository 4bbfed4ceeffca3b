"""The report of scripts/bench_scale.sh: a table of every run, then a line per target of issue 33
(holds / falls short). The memory bound is docs/SCALE.md's:

    peak RSS of a rank <= 1.5 x (its pairs x 12 B + its users x row + every item x row) + 300 MB

where a row is (factors + 1) x 4 B and an id of 8 B, and its pairs are its share of the input's
(user, item) pairs, the training and the held-out ones: what the rank's share of the input and
of the model is, in its most compact form (a pair as user, item and weight of 4 B each). MB are
MiB (2^20 bytes) throughout, as GNU time reports peak RSS.

    python3 scripts/scale_report.py RESULTS.jsonl BASE_EVENTS EVENTS
"""

import json
import sys


def share_mb(run):
    """The rank's share, in MiB, as the bound counts it (the largest rank's pairs)."""
    row = (run["factors"] + 1) * 4 + 8
    ranks = run["ranks"]
    # The log gives the largest rank's training pairs; its held-out ones in the same proportion.
    train = run.get("pairs_per_rank_max") or run["pairs"] / ranks
    pairs = train * (run["pairs"] + run.get("holdout_pairs", 0)) / run["pairs"]
    return (pairs * 12 + run["users"] / ranks * row + run["items"] * row) / 2**20


def main():
    runs = [json.loads(line) for line in open(sys.argv[1])]
    base, events = int(sys.argv[2]), int(sys.argv[3])
    trains = {(r["events"], r["ranks"], r["objective"]): r for r in runs if r["step"] == "train"}
    print("| events | ranks | step | objective | seconds | s per M events | phases | peak RSS per rank, MB | bound, MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    checks = []
    for r in runs:
        train = trains.get((r["events"], r["ranks"], "implicit" if r["step"] != "train" else r["objective"]))
        bound = 1.5 * share_mb(train) + 300 if train else None
        seconds = r.get("seconds_all_users", r["seconds"])
        phases = r.get("phases") or {}
        shown = ", ".join(f"{k} {v:.1f}" for k, v in phases.items() if isinstance(v, (int, float)))
        if r["step"] == "recommend" and r["users_sampled"] < 1:
            shown += f"; {r['users_sampled']:.4f} of the users ({r['seconds']:.0f} s), all extrapolated"
        rss = " / ".join(f"{m:.0f}" for m in r["rss_mb"])
        print(f"| {r['events']:,} | {r['ranks']} | {r['step']} | {r['objective']} | {seconds:.1f} | "
              f"{seconds / r['events'] * 1e6:.2f} | {shown} | {rss} | {bound:.0f} |")
        if bound is not None:
            worst = max(r["rss_mb"])
            checks.append((worst <= bound,
                           f"memory: {r['step']} {r['objective']} at {r['events']:,} events, {r['ranks']} ranks: "
                           f"largest rank {worst:.0f} MB against the bound {bound:.0f} MB"))
    for objective in ["explicit", "implicit"]:
        small, large = trains.get((base, 2, objective)), trains.get((events, 2, objective))
        if small and large:
            a = small["seconds"] / small["events"]
            b = large["seconds"] / large["events"]
            checks.append((b <= 1.3 * a,
                           f"time: train {objective} at 2 ranks, {b * 1e6:.2f} s per M events at {events:,} "
                           f"against {a * 1e6:.2f} at {base:,} ({b / a:.2f}x, target 1.3x)"))
    for ok, text in checks:
        print(f"{'holds' if ok else 'falls short'}: {text}")


if __name__ == "__main__":
    main()
