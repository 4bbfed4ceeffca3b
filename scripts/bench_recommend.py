"""The alternatives of scripts/bench_recommend.sh on funksvd's own factors: implicit's batch
recommend (CPU, filter_already_liked_items=True) and a NumPy loop (a block of users times the
item matrix, seen items set to -inf, argpartition, sort). Both score exactly funksvd's formula:
the factors are widened to [p, global_mean + b_u, 1] and [q, 1, b_i], so the dot product is
global_mean + b_u + b_i + p.q. Prints one JSON line: seconds of the scoring alone (the data and
the model loaded before the clock starts), users, scores, and how many users' lists equal
funksvd's (from --recs).
"""

import argparse
import json
import os
import sys
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--system", choices=["implicit", "numpy"], required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--recs", help="funksvd's output folder, to compare lists")
    a = p.parse_args()
    # Every BLAS and OpenMP pool gets the cores asked for, no more.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(a.threads)
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq
    import scipy.sparse as sp
    from threadpoolctl import threadpool_limits

    meta = json.load(open(os.path.join(a.model, "model.json")))
    users = pq.read_table(os.path.join(a.model, "users.parquet")).to_pandas()
    items = pq.read_table(os.path.join(a.model, "items.parquet")).to_pandas()
    gm = meta["global_mean"] if meta["biased"] else 0.0
    P = np.stack(users["factors"].to_numpy()).astype(np.float32)
    Q = np.stack(items["factors"].to_numpy()).astype(np.float32)
    bu = users["bias"].to_numpy(np.float32) if meta["biased"] else np.zeros(len(users), np.float32)
    bi = items["bias"].to_numpy(np.float32) if meta["biased"] else np.zeros(len(items), np.float32)
    U = np.hstack([P, (gm + bu)[:, None], np.ones((len(users), 1), np.float32)]).astype(np.float32)
    I = np.hstack([Q, np.ones((len(items), 1), np.float32), bi[:, None]]).astype(np.float32)
    U, I = np.ascontiguousarray(U), np.ascontiguousarray(I)

    # The seen items: the data's pairs with an event type the model maps to a rating.
    events = pd.read_parquet(a.data, columns=["user_id", "product_id", "event_type"])
    weights = meta.get("event_weights") or {}
    events = events[events["event_type"].isin(list(weights))]
    u = pd.Index(users["user_id"]).get_indexer(events["user_id"])
    i = pd.Index(items["item_id"]).get_indexer(events["product_id"])
    keep = (u >= 0) & (i >= 0)
    seen = sp.csr_matrix(
        (np.ones(keep.sum(), np.float32), (u[keep], i[keep])), shape=(len(users), len(items))
    )
    seen.sum_duplicates()
    seen.data[:] = 1.0
    n, N = len(users), a.top

    with threadpool_limits(limits=a.threads):
        started = time.perf_counter()
        if a.system == "implicit":
            from implicit.cpu.als import AlternatingLeastSquares

            model = AlternatingLeastSquares(factors=U.shape[1], num_threads=a.threads)
            model.user_factors, model.item_factors = U, I
            ids, scores = model.recommend(
                np.arange(n), seen, N=N, filter_already_liked_items=True
            )
        else:
            ids = np.empty((n, N), np.int64)
            scores = np.empty((n, N), np.float32)
            for start in range(0, n, 1024):
                end = min(start + 1024, n)
                S = U[start:end] @ I.T
                block = seen[start:end]
                rows = np.repeat(np.arange(end - start), np.diff(block.indptr))
                S[rows, block.indices] = -np.inf
                top = np.argpartition(-S, N, axis=1)[:, :N]
                top_scores = np.take_along_axis(S, top, axis=1)
                order = np.argsort(-top_scores, axis=1, kind="stable")
                ids[start:end] = np.take_along_axis(top, order, axis=1)
                scores[start:end] = np.take_along_axis(top_scores, order, axis=1)
        seconds = time.perf_counter() - started

    same = None
    if a.recs:
        recs = pd.read_parquet(a.recs, columns=["user_id", "rank", "item_id"])
        theirs = recs.sort_values(["user_id", "rank"]).groupby("user_id")["item_id"].apply(list)
        item_ids = items["item_id"].to_numpy()
        sample = np.arange(0, n, max(1, n // 2000))
        same = sum(
            list(item_ids[ids[j]]) == theirs.get(users["user_id"].iloc[j], [])
            for j in sample
        ) / len(sample)
    print(json.dumps({
        "system": a.system, "threads": a.threads, "seconds": seconds, "users": n,
        "items": len(items), "scores": n * len(items), "lists_equal_to_funksvd": same,
    }))


if __name__ == "__main__":
    sys.exit(main())
