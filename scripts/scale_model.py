"""The cost model of docs/SCALE.md: a train run's seconds per phase and a rank's peak memory from
the sizes a rank holds and rates fitted to the runs of scripts/bench_scale.sh; how well it
predicts each measured run; and its prediction for a shop of a billion events.

    python3 scripts/scale_model.py RESULTS.jsonl [RESULTS.jsonl ...]

The runs are train steps of the shop profile (users = events / 20, items = events / 500), so
the model holds for that shape: a rank's pairs, users and item ranges all grow with events / R,
and the one term that does not (every rank's work and memory on every item) is fitted apart,
from the runs at 1 to 8 ranks of one size. On this machine R ranks share C = 2 cores: a rank's
compute runs at C / R of a core above C ranks (`slow`).

Per rank (the largest), for R ranks, E events, P input pairs (training and held out), T training
pairs, U users, I items, W floats per row (factors + 1, padded to 8), e epochs:

    read     = slow * E/R * a_read                         (rows decoded and featurised)
    exchange = slow * E/R * a_exchange + net(P/R * 12 B)   (aggregate, send, aggregate)
    epochs   = slow * e * (T/R * a_pair + I * a_item)  + e * net(epoch bytes)
    choice   = slow * c_e * (0.8 T/R * a_pair + I * a_item) + slow * E/R * a_exchange
    metrics  = slow * S/R * I * a_rank + slow * T/R * a_pass  (S users ranked: a sample of 50,000)
    save     = slow * U/R * a_save
    peak     = m0 + m_share * (P/R * 12 + U/R * row) + m_item * I * row    (row = W * 4 + 8 B)

with net(bytes) = bytes / bandwidth + messages * round trip; on one host, 0.
"""

import json
import sys

import numpy as np

CORES = 2
SAMPLE = 50_000  # --rank-users
CHOICE_SHARE = 0.8
HOLDOUT_USERS = 0.78  # users with held-out pairs, of all (measured at 100M: 3.55M of 4.58M)


def width(factors):
    return (factors + 1 + 7) // 8 * 8


def epochs_of(run):
    return run.get("epochs") or (15 if run["objective"] == "implicit" else 10)


def sizes(run):
    """What the largest rank holds and does, from a results line."""
    r = run["ranks"]
    pairs_r = run.get("pairs_per_rank_max") or run["pairs"] / r
    all_pairs_r = pairs_r * (run["pairs"] + run.get("holdout_pairs", 0)) / run["pairs"]
    w = width(run["factors"])
    return {
        "R": r,
        "slow": max(1.0, r / CORES),
        "E_r": run["events"] / r,
        "P_r": all_pairs_r,
        "T_r": pairs_r,
        "U_r": run["users"] / r,
        "I": run["items"],
        "W": w,
        "row": w * 4 + 8,
        "e": epochs_of(run),
        "S_r": min(SAMPLE, HOLDOUT_USERS * run["users"]) / r,
    }


def fit(rows, targets):
    """Non-negative least squares on relative errors (each run counts by its relative error):
    the best of the fits on every subset of the terms whose rates all come out non-negative."""
    a = np.array(rows, dtype=float)
    y = np.array(targets, dtype=float)
    weights = 1.0 / np.maximum(y, 1e-9)
    a, y = a * weights[:, None], y * weights
    best, best_err = np.zeros(a.shape[1]), float(np.sum(y**2))
    for mask in range(1, 1 << a.shape[1]):
        cols = [j for j in range(a.shape[1]) if mask >> j & 1]
        coef, *_ = np.linalg.lstsq(a[:, cols], y, rcond=None)
        if np.any(coef < 0):
            continue
        err = float(np.sum((a[:, cols] @ coef - y) ** 2))
        if err < best_err:
            best_err, best = err, np.zeros(a.shape[1])
            best[cols] = coef
    return best


def cache(mib):
    """How far a table of `mib` MiB is out of the caches: 0 up to 4 MiB, then log2 of the rest.
    Random reads into a table slow down as it leaves the caches; the hash maps of the exchange
    and the rows the implicit steps read are such tables."""
    return max(0.0, np.log2(max(mib, 1e-9) / 4.0))


def phase_terms(s, objective):
    """Each phase's regressors (per unit of its rate), by phase."""
    rows_mib = (s["U_r"] + s["I"]) * s["W"] * 4 / 2**20  # the rows an epoch reads at random
    pairs_mib = s["P_r"] * 16 / 2**20  # the exchange's hash map of the rank's pairs
    epoch = [s["slow"] * s["e"] * s["T_r"], s["slow"] * s["e"] * s["T_r"] * cache(rows_mib),
             s["slow"] * s["e"] * s["I"]]
    terms = {
        "read": [s["slow"] * s["E_r"]],
        "exchange": [s["slow"] * s["E_r"], s["slow"] * s["E_r"] * cache(pairs_mib)],
        "epochs": epoch,
        "metrics": [s["slow"] * s["S_r"] * s["I"] * s["W"], s["slow"] * s["S_r"], s["slow"] * s["T_r"]],
        "save": [s["slow"] * s["U_r"]],
    }
    if objective == "implicit":
        c_e = min(s["e"], 30) / s["e"]
        terms["choice"] = [c_e * CHOICE_SHARE * t for t in epoch] + [s["slow"] * s["E_r"]]
    return terms


def measured_phases(run):
    p = run["phases"]
    out = {
        "read": p["plan"] + p["read"] + p["features"],
        "exchange": p["exchange"],
        "epochs": p["train"],
        "metrics": p.get("metrics", 0.0),
        "save": p["save"],
    }
    if run["objective"] == "implicit":
        out["choice"] = p.get("choice", 0.0)
    return out


def memory_terms(s):
    """Fixed; the rank's share; the item rows; the users' table rank 0 gathers when it is below
    64 MB (written whole, held twice there)."""
    whole = s["U_r"] * s["R"] * s["row"]
    return [1.0, (s["P_r"] * 12 + s["U_r"] * s["row"]) / 2**20, s["I"] * s["row"] / 2**20,
            whole / 2**20 if whole <= 64 * 2**20 else 0.0]


def calibrate(runs):
    """Rates per objective and phase, and the memory coefficients."""
    model = {}
    for objective in ["explicit", "implicit"]:
        these = [r for r in runs if r["objective"] == objective]
        if not these:
            continue
        rates = {}
        for phase in phase_terms(sizes(these[0]), objective):
            rows = [phase_terms(sizes(r), objective)[phase] for r in these]
            rates[phase] = fit(rows, [measured_phases(r)[phase] for r in these])
        mem = fit([memory_terms(sizes(r)) for r in these], [max(r["rss_mb"]) for r in these])
        model[objective] = {"rates": rates, "memory": mem}
    return model


def predict(model, objective, s, net=None):
    """(seconds by phase, peak MiB) for sizes `s`; `net`: (bytes/s, round trip s) between hosts."""
    m = model[objective]
    seconds = {}
    for phase, terms in phase_terms(s, objective).items():
        seconds[phase] = float(np.dot(m["rates"][phase], terms))
    if net:
        bandwidth, rtt = net
        frac = (s["R"] - 1) / s["R"]
        seconds["exchange"] += s["P_r"] * 12 * frac / bandwidth + s["R"] * rtt
        item_bytes = s["I"] * s["W"] * 4 * frac
        # Explicit: the item blocks go once round the ring per epoch. Implicit (items summed):
        # 4 sums of every item's parts, 3 shares of directions, 1 of the new rows per epoch.
        per_epoch = item_bytes * (1 if objective == "explicit" else 8)
        messages = (s["R"] if objective == "explicit" else 11) * rtt
        seconds["epochs"] += s["e"] * (per_epoch / bandwidth + messages)
        if objective == "implicit":
            seconds["choice"] += min(s["e"], 30) * (per_epoch / bandwidth + messages)
    peak = float(np.dot(m["memory"], memory_terms(s)))
    return seconds, peak


def main():
    runs = []
    for path in sys.argv[1:]:
        runs += [json.loads(line) for line in open(path)]
    runs = [r for r in runs if r.get("step") == "train" and "holdout_pairs" in r]
    model = calibrate(runs)
    print("rates (seconds per unit of each term) and memory coefficients:")
    for objective, m in model.items():
        for phase, rate in m["rates"].items():
            print(f"  {objective} {phase}: " + ", ".join(f"{v:.3e}" for v in rate))
        print(f"  {objective} memory: m0 {m['memory'][0]:.0f} MiB, m_share {m['memory'][1]:.2f}, "
              f"m_item {m['memory'][2]:.2f}, m_whole {m['memory'][3]:.2f}")
    print()
    # Each run predicted by the model fitted to the other runs (leave one out): a model with as
    # many rates as runs would fit them all exactly and predict nothing.
    print("each run predicted by the model fitted to the others:")
    print("| events | ranks | objective | seconds measured | predicted | ratio | peak MiB measured | predicted | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    worst = 0.0
    for n, r in sorted(enumerate(runs), key=lambda nr: (nr[1]["objective"], nr[1]["events"], nr[1]["ranks"])):
        others = calibrate(runs[:n] + runs[n + 1:])
        if r["objective"] not in others:
            continue
        seconds, peak = predict(others, r["objective"], sizes(r))
        total = sum(measured_phases(r).values())
        guess = sum(seconds.values())
        rss = max(r["rss_mb"])
        worst = max(worst, abs(guess / total - 1), abs(peak / rss - 1))
        print(f"| {r['events']:,} | {r['ranks']} | {r['objective']} | {total:.1f} | {guess:.1f} | "
              f"{guess / total:.2f} | {rss:.0f} | {peak:.0f} | {peak / rss:.2f} |")
    print(f"{'holds' if worst <= 0.25 else 'falls short'}: fitted to the other runs, the model predicts "
          f"every measured run's seconds and peak memory within {worst * 100:.0f}% (target 25%)")
    print()
    shop = {"events": 1_000_000_000, "users": 50_000_000, "items": 2_000_000, "factors": 64,
            "objective": "implicit"}
    # The profile's pairs per event (measured at 100M: 66.9M pairs, 80% for training).
    pairs = 0.669 * shop["events"]
    for ranks in [16, 64]:
        run = dict(shop, ranks=ranks, pairs=0.8 * pairs, holdout_pairs=0.2 * pairs)
        s = sizes(run)
        s["slow"] = 1.0  # a core per rank
        for objective in ["implicit", "explicit"]:
            if objective not in model:
                continue
            run["factors"] = 64 if objective == "implicit" else 20
            s = sizes(run) | {"slow": 1.0}
            seconds, peak = predict(model, objective, s, net=(25e9 / 8, 100e-6))
            top = max(seconds, key=seconds.get)
            print(f"  sizes per rank: E/R {s['E_r']:.3g} rows, P/R {s['P_r']:.3g} pairs, T/R {s['T_r']:.3g}, "
                  f"U/R {s['U_r']:.3g} users, I {s['I']:.3g} items, W {s['W']}, rows read at random "
                  f"{(s['U_r'] + s['I']) * s['W'] * 4 / 2**20:.0f} MiB, share "
                  f"{(s['P_r'] * 12 + s['U_r'] * s['row']) / 2**20:.0f} MiB, item rows {s['I'] * s['row'] / 2**20:.0f} MiB")
            print(f"1B events, 50M users, 2M items, {objective} k={run['factors']}, {ranks} ranks, 25 Gbit/s: "
                  f"{sum(seconds.values()) / 60:.1f} min ("
                  + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
                  + f"), {peak / 1024:.1f} GiB per rank; {top} dominates")


if __name__ == "__main__":
    main()
