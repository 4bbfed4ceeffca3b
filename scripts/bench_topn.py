"""Top-N quality and speed, side by side: funksvd as it comes (every flag at its default),
funksvd explicit and implicit tuned, popularity, and the `implicit` library's ALS (at the
default's 20 factors and at --factors) and BPR, on the same splits, factors and cores, every system's alpha
and regularisation chosen on the same grid by a validation split carved from its training part.
Called by scripts/bench_topn.sh (which builds funksvd, installs the venv and makes the data).

Protocol (the same as `funksvd evaluate`'s ranking): every user with held-out pairs who has
training pairs gets each system's top k of all training items minus their own training items;
the held-out items are the relevant ones (binary), items never seen in training count as
relevant and are never found. NDCG@20, recall@20 and hit rate@10 over those users.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# FUNKSVD_BIN: a copy of the binary, so that a build during a long run does not change it.
BIN = os.environ.get("FUNKSVD_BIN") or os.path.join(ROOT, "target", "release", "funksvd")
MPIRUN = os.path.join(HERE, "mpirun.sh")


def load(name, path):
    """(user, item, value, time) pairs, one row per pair."""
    if name == "ml-latest-small":
        df = pd.read_csv(path)
        return pd.DataFrame({"user": df.userId, "item": df.movieId,
                             "value": df.rating.astype("float32"), "time": df.timestamp.astype("int64")})
    weights = {"view": 1.0, "add_to_cart": 3.0, "cart": 3.0, "purchase": 5.0}
    if path.endswith(".csv"):
        # A real clickstream (REES46's columns): the same event weights, times from event_time.
        t = pd.read_csv(path, usecols=["user_id", "product_id", "event_type", "event_time"])
        t["timestamp"] = pd.to_datetime(t.event_time.str.replace(" UTC", ""), utc=True)
        return pairs(t, weights)
    import pyarrow.dataset as ds
    t = ds.dataset(path, format="parquet").to_table(
        columns=["user_id", "product_id", "event_type", "timestamp"]).to_pandas()
    return pairs(t, weights)


def pairs(t, weights):
    """Events to (user, item, value, time) pairs: a pair's strongest event and its latest time."""
    t["value"] = t.event_type.map(weights)
    t = t.dropna(subset=["value"])
    t["time"] = t.timestamp.astype("int64")
    g = t.groupby(["user_id", "product_id"]).agg(value=("value", "max"), time=("time", "max")).reset_index()
    return pd.DataFrame({"user": g.user_id, "item": g.product_id,
                         "value": g.value.astype("float32"), "time": g.time})


def split(df, how, fraction, seed):
    """(train, test): by a random draw per pair, or each user's newest pairs (at most n - 1)."""
    rng = np.random.default_rng(seed)
    if how == "pair":
        held = rng.random(len(df)) < fraction
    else:
        tie = rng.random(len(df))
        order = df.assign(tie=tie).sort_values(["user", "time", "tie"], ascending=[True, False, False])
        rank = order.groupby("user").cumcount().to_numpy()
        n = order.groupby("user").user.transform("size").to_numpy()
        keep = np.minimum(np.round(fraction * n), n - 1)
        held_sorted = rank < keep
        held = np.zeros(len(df), bool)
        held[order.index.to_numpy()] = held_sorted
    return df[~held].reset_index(drop=True), df[held].reset_index(drop=True)


class Space:
    """The training part's users and items as 0..n indices, and the test users' relevant sets."""

    def __init__(self, train, test):
        import scipy.sparse as sp
        self.users = np.sort(train.user.unique())
        self.items = np.sort(train.item.unique())
        self.user_index = pd.Series(np.arange(len(self.users)), index=self.users)
        self.item_index = pd.Series(np.arange(len(self.items)), index=self.items)
        u = self.user_index[train.user].to_numpy()
        i = self.item_index[train.item].to_numpy()
        self.matrix = sp.csr_matrix((train.value.to_numpy(np.float32), (u, i)),
                                    shape=(len(self.users), len(self.items)))
        test = test[test.user.isin(self.user_index.index)]
        self.test_users = self.user_index[np.sort(test.user.unique())].to_numpy()
        known = test.item.isin(self.item_index.index)
        rel = {}
        for user, item, ok in zip(self.user_index[test.user].to_numpy(), test.item.to_numpy(), known.to_numpy()):
            rel.setdefault(user, [set(), 0])
            if ok:
                rel[user][0].add(int(self.item_index[item]))
            else:
                rel[user][1] += 1
        self.relevant = rel

    def evaluate(self, score_block):
        """NDCG@20, recall@20, hit rate@10 of `score_block(users) -> scores[len(users), items]`."""
        ndcg, recall, hit = [], [], []
        discount = 1.0 / np.log2(np.arange(2, 22))
        m = self.matrix
        for start in range(0, len(self.test_users), 1024):
            users = self.test_users[start:start + 1024]
            scores = np.asarray(score_block(users), dtype=np.float64)
            for row, u in enumerate(users):
                seen = m.indices[m.indptr[u]:m.indptr[u + 1]]
                s = scores[row]
                s[seen] = -np.inf
                top = np.argpartition(-s, 20)[:20]
                top = top[np.lexsort((top, -s[top]))]
                found, unknown = self.relevant[u]
                n_rel = len(found) + unknown
                hits = np.array([t in found for t in top])
                dcg = float((hits * discount).sum())
                idcg = float(discount[:min(n_rel, 20)].sum())
                ndcg.append(dcg / idcg)
                recall.append(hits.sum() / n_rel)
                hit.append(float(hits[:10].any()))
        return {"ndcg@20": float(np.mean(ndcg)), "recall@20": float(np.mean(recall)),
                "hit_rate@10": float(np.mean(hit)), "users": len(ndcg)}


def popularity(space):
    counts = np.asarray((space.matrix > 0).sum(axis=0)).ravel().astype(np.float64)
    return lambda users: np.tile(counts, (len(users), 1))


def write_csv(space, path, times):
    """The training pairs as CSV (user, item, value, time: the pair's latest event)."""
    m = space.matrix.tocoo()
    df = pd.DataFrame({"user": space.users[m.row], "item": space.items[m.col], "value": m.data})
    df = df.merge(times, on=["user", "item"], how="left")
    df.to_csv(path, index=False)


def funksvd(space, csv, objective, config, ranks, epochs, factors, workdir, how="pair"):
    """Train funksvd on `csv`; its scorer, fit seconds, seconds per epoch, peak RSS (MB per rank).
    objective "default": every flag at its default for event data (the values are the events'
    weights, or ratings read as interactions), the split's kind named for the popularity
    weight's validation split."""
    model = tempfile.mkdtemp(dir=workdir)
    args = [BIN, "train", "--data", csv, "--model", model, "--rating-col", "value", "--user-col", "user",
            "--item-col", "item", "--holdout", "0"]
    if objective == "default":
        args += ["--objective", "implicit", "--time-col", "time", "--holdout-by", how]
        factors = 20
    else:
        args += ["--factors", str(factors), "--epochs", str(epochs), "--reg", str(config["reg"])]
    if objective == "implicit":
        # The tuned grid is issue 16's: alpha and reg, no popularity term (a weight chosen
        # inside every fit of the grid ranked 0.95x implicit ALS on MovieLens, run of 2026-12-07).
        args += ["--objective", "implicit", "--alpha", str(config["alpha"]), "--popularity-weight", "0"]
    if objective == "explicit":
        args += ["--objective", "explicit"]
        if not config.get("item_biases", True):
            args += ["--no-bias"]
    rss = [os.path.join(model, f"rss-{r}.txt") for r in range(ranks)]
    cmd = [MPIRUN, "-n", str(ranks), "sh", "-c",
           "/usr/bin/time -v -o " + model + "/rss-$OMPI_COMM_WORLD_RANK.txt " + " ".join(args)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        print(f"funksvd {objective} {config} failed:\n{run.stderr[-2000:]}", file=sys.stderr, flush=True)
        return None
    meta = json.load(open(os.path.join(model, "model.json")))
    import pyarrow.parquet as pq
    users = pq.read_table(os.path.join(model, "users.parquet")).to_pandas()
    items = pq.read_table(os.path.join(model, "items.parquet")).to_pandas()
    U = np.zeros((len(space.users), factors), np.float32)
    V = np.zeros((len(space.items), factors), np.float32)
    b = np.zeros(len(space.items), np.float32)
    U[space.user_index[users.user_id].to_numpy()] = np.stack(users.factors.to_numpy())
    at = space.item_index[items.item_id].to_numpy()
    V[at] = np.stack(items.factors.to_numpy())
    b[at] = items.bias.to_numpy() if meta["biased"] else 0.0
    peak = 0.0
    for f in rss:
        for line in open(f):
            if "Maximum resident" in line:
                peak = max(peak, int(line.split()[-1]) / 1024)
    # The median epoch: the steady speed, not the first epochs' warm-up or one epoch a neighbour
    # on this shared machine slowed (the mean swung the 2-rank figure by up to 30%).
    per_epoch = float(np.median([h["seconds"] for h in meta["metrics"]["history"]]))
    fit_seconds = meta["training"]["phases"]["train"]
    choice = meta["metrics"].get("popularity_weight")
    if choice:
        # The default's fit includes the fit that chose its popularity weight.
        fit_seconds += choice["seconds"]
    return (lambda users: U[users] @ V.T + b), fit_seconds, per_epoch, peak


def implicit_fit(space, system, config, threads, epochs, factors):
    """Fit implicit's ALS or BPR in this process; scorer, fit seconds, seconds per epoch."""
    from threadpoolctl import threadpool_limits
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.cpu.bpr import BayesianPersonalizedRanking
    with threadpool_limits(1, "blas"):
        if system == "implicit-als":
            model = AlternatingLeastSquares(factors=factors, regularization=config["reg"], alpha=config["alpha"],
                                            iterations=epochs, num_threads=threads, random_state=1)
        else:
            model = BayesianPersonalizedRanking(factors=factors, regularization=config["reg"], iterations=epochs,
                                                num_threads=threads, random_state=1)
        epoch_seconds = []
        started = time.time()
        model.fit(space.matrix, show_progress=False, callback=lambda _, elapsed, *__: epoch_seconds.append(elapsed))
        seconds = time.time() - started
    U, V = np.asarray(model.user_factors), np.asarray(model.item_factors)
    # The median epoch, as for funksvd (implicit times each epoch for its callback).
    per_epoch = float(np.median(epoch_seconds)) if epoch_seconds else seconds / epochs
    return (lambda users: U[users] @ V.T), seconds, per_epoch


def child_rss(space_file, system, config, threads, epochs, factors, queue):
    """Peak memory of one implicit fit: in a fresh process that loads the matrix itself."""
    import scipy.sparse as sp

    class S:
        pass
    s = S()
    s.matrix = sp.load_npz(space_file)
    implicit_fit(s, system, config, threads, epochs, factors)
    queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", action="append", nargs=2, metavar=("NAME", "PATH"), required=True)
    p.add_argument("--splits", default="pair,time")
    p.add_argument("--factors", type=int, default=64)
    p.add_argument("--alphas", default="0.5,2,10")
    p.add_argument("--regs", default="0.1,0.3,1,3,10,30,100,300,1000")
    p.add_argument("--explicit-regs", default="0.01,0.02,0.05,0.1")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--bpr-epochs", type=int, default=100)
    p.add_argument("--explicit-epochs", type=int, default=20)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--timing-rounds", type=int, default=7)
    p.add_argument("--systems", default="",
                   help="a comma-separated subset of the systems (popularity always), to check one change quickly")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    alphas = [float(x) for x in a.alphas.split(",")]
    regs = [float(x) for x in a.regs.split(",")]
    grids = {
        # funksvd as it comes: every flag at its default (20 factors; the popularity weight
        # chosen inside train on its own validation split), nothing tuned here.
        "funksvd-default": [{}],
        # implicit's ALS at the default's 20 factors, tuned on the alpha x reg grid: the bar
        # the default must clear.
        "implicit-als-20": [{"alpha": al, "reg": r} for al in alphas for r in regs],
        # The same alpha x reg grid, with and without the item biases (a structural choice
        # the other systems do not have: both are tried, the validation split chooses).
        "funksvd-implicit": [{"alpha": al, "reg": r, "item_biases": b}
                             for b in (True, False) for al in alphas for r in regs],
        "implicit-als": [{"alpha": al, "reg": r} for al in alphas for r in regs],
        "implicit-bpr": [{"reg": r} for r in [0.0001, 0.001, 0.01, 0.1]],
        "funksvd-explicit": [{"reg": float(r)} for r in a.explicit_regs.split(",")],
    }
    if a.systems:
        grids = {k: v for k, v in grids.items() if k in a.systems.split(",")}
    workdir = tempfile.mkdtemp(prefix="bench-topn-")
    results = []
    for name, path in a.dataset:
        df = load(name, path)
        for how in a.splits.split(","):
            train, test = split(df, how, 0.2, 1)
            fit_part, valid = split(train, how, 0.2, 2)
            final, tuning = Space(train, test), Space(fit_part, valid)
            csvs = {}
            times = df[["user", "item", "time"]]
            for label, space in [("final", final), ("tuning", tuning)]:
                csvs[label] = os.path.join(workdir, f"{name}-{how}-{label}.csv")
                write_csv(space, csvs[label], times)
            row = {"data": name, "split": how, "pairs": int(final.matrix.nnz), "users": int(len(final.users)),
                   "items": int(len(final.items))}
            figures = {"popularity": dict(final.evaluate(popularity(final)))}

            def fit(system, space, csv, config, ranks=a.ranks):
                if system.startswith("funksvd"):
                    objective = system.split("-")[1]
                    epochs = a.epochs if objective == "implicit" else a.explicit_epochs
                    return funksvd(space, csv, objective, config, ranks, epochs, a.factors, workdir, how)
                factors = 20 if system == "implicit-als-20" else a.factors
                system = "implicit-als" if system == "implicit-als-20" else system
                epochs = a.epochs if system == "implicit-als" else a.bpr_epochs
                return implicit_fit(space, system, config, a.ranks, epochs, factors) + (None,)

            for system, grid in grids.items():
                best, best_ndcg = grid[0], -1.0
                for config in (grid if len(grid) > 1 else []):
                    fitted = fit(system, tuning, csvs["tuning"], config)
                    if fitted is None:
                        continue
                    ndcg = tuning.evaluate(fitted[0])["ndcg@20"]
                    print(f"{name} {how} {system} {config}: validation NDCG@20 {ndcg:.4f}", flush=True)
                    if ndcg > best_ndcg:
                        best, best_ndcg = config, ndcg
                scorer, seconds, per_epoch, rss = fit(system, final, csvs["final"], best)
                f = dict(final.evaluate(scorer))
                f.update({"config": best, "fit_seconds": seconds, "seconds_per_epoch": per_epoch})
                if rss is None:
                    import multiprocessing as mp
                    import scipy.sparse as sp
                    npz = os.path.join(workdir, "matrix.npz")
                    sp.save_npz(npz, final.matrix)
                    ctx = mp.get_context("spawn")
                    q = ctx.Queue()
                    als = system.startswith("implicit-als")
                    epochs = a.epochs if als else a.bpr_epochs
                    proc = ctx.Process(target=child_rss, args=(
                        npz, "implicit-als" if als else system, best, a.ranks, epochs,
                        20 if system == "implicit-als-20" else a.factors, q))
                    proc.start()
                    rss = q.get()
                    proc.join()
                f["peak_rss_mb"] = rss
                figures[system] = f
                print(f"{name} {how} {system}: {f}", flush=True)
            # The speed figures: funksvd implicit on 2 ranks and on 1, and implicit ALS, fitted again
            # in turn, the fastest of each (one fit each swung the ratios by up to 2x here).
            timed = ["funksvd-implicit", "implicit-als", "funksvd-default", "implicit-als-20"]
            if not set(timed) <= set(figures):  # --systems: no speed figures
                row["systems"] = figures
                results.append(row)
                with open(a.out, "w") as out:
                    json.dump(results, out, indent=1)
                continue
            fi, als = figures["funksvd-implicit"], figures["implicit-als"]
            de, als20 = figures["funksvd-default"], figures["implicit-als-20"]
            runs = {"2": [fi["seconds_per_epoch"]], "1": [], "als": [als["seconds_per_epoch"]],
                    "default": [de["seconds_per_epoch"]], "als-20": [als20["seconds_per_epoch"]]}
            for _ in range(a.timing_rounds):
                one = fit("funksvd-implicit", final, csvs["final"], fi["config"], ranks=1)
                runs["1"].append(one[2])
                fi["peak_rss_mb_1_rank"] = one[3]
                runs["2"].append(fit("funksvd-implicit", final, csvs["final"], fi["config"])[2])
                runs["als"].append(fit("implicit-als", final, csvs["final"], als["config"])[2])
                runs["default"].append(fit("funksvd-default", final, csvs["final"], {})[2])
                runs["als-20"].append(fit("implicit-als-20", final, csvs["final"], als20["config"])[2])
            fi["seconds_per_epoch"], fi["seconds_per_epoch_1_rank"] = min(runs["2"]), min(runs["1"])
            als["seconds_per_epoch"] = min(runs["als"])
            de["seconds_per_epoch"], als20["seconds_per_epoch"] = min(runs["default"]), min(runs["als-20"])
            fi["seconds_per_epoch_runs"] = runs
            row["systems"] = figures
            results.append(row)
            with open(a.out, "w") as out:
                json.dump(results, out, indent=1)
    table(results)


def table(results):
    print()
    print("| data | split | system | NDCG@20 | recall@20 | hit rate@10 | fit s | s/epoch | peak MB/rank | chosen |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        for system, f in r["systems"].items():
            fit = f.get("fit_seconds")
            per = f.get("seconds_per_epoch")
            print("| {} | {} | {} | {:.4f} | {:.4f} | {:.4f} | {} | {} | {} | {} |".format(
                r["data"], r["split"], system, f["ndcg@20"], f["recall@20"], f["hit_rate@10"],
                "-" if fit is None else f"{fit:.2f}", "-" if per is None else f"{per:.3f}",
                "-" if f.get("peak_rss_mb") is None else f"{f['peak_rss_mb']:.0f}",
                json.dumps(f.get("config", {})).replace("|", "/")))
    print()
    print("Targets of the default (issue 31): NDCG@20 at least popularity's and the best of implicit ALS's")
    print("alpha x reg grid at the same 20 factors; seconds per epoch at most 0.5x that ALS's.")
    for r in results:
        s = r["systems"]
        if not {"funksvd-default", "implicit-als-20"} <= set(s):
            if "funksvd-default" in s:  # --systems: the default beside popularity only
                de, pop = s["funksvd-default"]["ndcg@20"], s["popularity"]["ndcg@20"]
                print(f"{r['data']} {r['split']}: default NDCG@20 {de:.4f}, popularity {pop:.4f} ({de / pop:.3f}x)")
            continue
        de, als20, pop = s["funksvd-default"], s["implicit-als-20"], s["popularity"]
        for what, ok, figures in [
            ("NDCG@20 >= popularity", de["ndcg@20"] >= pop["ndcg@20"],
             f"{de['ndcg@20']:.4f} vs {pop['ndcg@20']:.4f} ({de['ndcg@20'] / pop['ndcg@20']:.2f}x)"),
            ("NDCG@20 >= implicit ALS (20 factors, best of its grid)", de["ndcg@20"] >= als20["ndcg@20"],
             f"{de['ndcg@20']:.4f} vs {als20['ndcg@20']:.4f} ({de['ndcg@20'] / als20['ndcg@20']:.2f}x)"),
            ("s/epoch <= 0.5x implicit ALS (20 factors)", de["seconds_per_epoch"] <= 0.5 * als20["seconds_per_epoch"],
             f"{de['seconds_per_epoch']:.4f} vs {als20['seconds_per_epoch']:.4f} "
             f"({de['seconds_per_epoch'] / als20['seconds_per_epoch']:.2f}x)"),
        ]:
            print(f"{r['data']} {r['split']}: default {what}: {'holds' if ok else 'falls short'}: {figures}")
    print()
    for r in results:
        s = r["systems"]
        if not {"funksvd-implicit", "implicit-als", "funksvd-explicit"} <= set(s):
            continue
        fi, als, pop = s["funksvd-implicit"], s["implicit-als"], s["popularity"]
        print(f"{r['data']} {r['split']}: funksvd implicit NDCG@20 {fi['ndcg@20'] / als['ndcg@20']:.2f}x implicit ALS, "
              f"{fi['ndcg@20'] / pop['ndcg@20']:.2f}x popularity; s/epoch {fi['seconds_per_epoch'] / als['seconds_per_epoch']:.2f}x "
              f"implicit ALS; 2 ranks {fi['seconds_per_epoch_1_rank'] / fi['seconds_per_epoch']:.2f}x 1 rank; "
              f"peak memory {fi['peak_rss_mb'] / s['funksvd-explicit']['peak_rss_mb']:.2f}x explicit")


if __name__ == "__main__":
    sys.exit(main())
