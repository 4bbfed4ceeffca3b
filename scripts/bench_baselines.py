#!/usr/bin/env python3
"""The alternatives a user could pick, on exactly funksvd's training and hold-out pairs.

Reads a generated Parquet clickstream (--data, events turned into ratings as funksvd does:
weights, max per (user, item)) or an explicit-ratings CSV (--ratings, e.g. MovieLens), holds out
the pairs funksvd holds out (its hash of integer ids and seed, src/train/data.rs), then trains
ONE system and prints one JSON line: seconds per epoch, rating updates per second, hold-out RMSE
and MAE. One system per process, so `/usr/bin/time -v` measures its own peak memory.

    bench_baselines.py --data DIR --system libmf --threads 2 --libmf-so target/libmf/libmf.so
    bench_baselines.py --ratings ratings.csv --system surprise
"""
import argparse
import json
import os
import sys
import time

import numpy as np

WEIGHTS = {"view": 1.0, "add_to_cart": 3.0, "purchase": 5.0}


def mix64(z):
    """splitmix64's finaliser on uint64 arrays (funksvd src/ids.rs mix64)."""
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def id_hash(values):
    return mix64(values.astype(np.int64).view(np.uint64) ^ np.uint64(0x6A09E667F3BCC908))


def held_out(users, items, seed, fraction):
    s = mix64(np.array([seed], dtype=np.uint64) ^ np.uint64(0x5851F42D4C957F2D))
    h = mix64(id_hash(users) ^ mix64(id_hash(items) ^ s))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53)) < fraction


def load_pairs(a):
    """(train, test) frames of user_id, product_id, r: funksvd's aggregation and split."""
    import pandas as pd

    if a.ratings:
        df = pd.read_csv(a.ratings, usecols=[a.user_col, a.item_col, a.rating_col])
        df.columns = ["user_id", "product_id", "r"]
    else:
        import pyarrow.dataset as ds

        table = ds.dataset(a.data, format="parquet").to_table(columns=["user_id", "product_id", "event_type"])
        df = table.to_pandas()
        df["r"] = df["event_type"].astype(str).map(WEIGHTS)
        df = df.dropna(subset=["r"])
    pairs = df.groupby(["user_id", "product_id"], as_index=False)["r"].max()
    mask = held_out(pairs["user_id"].to_numpy(), pairs["product_id"].to_numpy(), a.seed, a.holdout)
    return pairs[~mask].reset_index(drop=True), pairs[mask].reset_index(drop=True)


def run_libmf(train, test, a):
    os.environ["LIBMF_OBJ"] = a.libmf_so
    import io
    import contextlib

    with contextlib.redirect_stdout(io.StringIO()):
        from libmf import mf
    import pandas as pd

    users, user_index = pd.factorize(train["user_id"])
    items, item_index = pd.factorize(train["product_id"])
    X = np.column_stack([users, items, train["r"].to_numpy()]).astype(np.float32)
    def fit(epochs):
        engine = mf.MF(k=a.factors, nr_threads=a.threads, nr_bins=max(26, 2 * a.threads + 1),
                       nr_iters=epochs, eta=a.libmf_eta, lambda_p1=0.0, lambda_q1=0.0,
                       lambda_p2=a.reg, lambda_q2=a.reg, quiet=True)
        started = time.perf_counter()
        engine.fit(X)
        return engine, time.perf_counter() - started

    # fit() also copies the data in and grids it before the first epoch: one fit of a single
    # epoch measures that, so the epochs alone are (t(E) - t(1)) / (E - 1).
    _, one = fit(1)
    engine, seconds = fit(a.epochs)
    per_epoch = (seconds - one) / (a.epochs - 1) if a.epochs > 1 else seconds
    a.setup_seconds = max(0.0, seconds - per_epoch * a.epochs)
    # Unknown users or items get LibMF's own answer for them (it has no biases); all clipped.
    tu = user_index.get_indexer(test["user_id"])
    ti = item_index.get_indexer(test["product_id"])
    known = (tu >= 0) & (ti >= 0)
    pred = np.full(len(test), float(train["r"].mean()), dtype=np.float64)
    P = engine.p_factors()
    Q = engine.q_factors()
    pred[known] = np.einsum("ij,ij->i", P[tu[known]], Q[ti[known]])
    return seconds, np.clip(pred, train["r"].min(), train["r"].max())


def run_surprise(train, test, a):
    from surprise import SVD, Dataset, Reader

    lo, hi = float(train["r"].min()), float(train["r"].max())
    data = Dataset.load_from_df(train[["user_id", "product_id", "r"]], Reader(rating_scale=(lo, hi)))
    trainset = data.build_full_trainset()
    algo = SVD(n_factors=a.factors, n_epochs=a.epochs, lr_all=a.lr, reg_all=a.reg, random_state=a.seed)
    started = time.perf_counter()
    algo.fit(trainset)
    seconds = time.perf_counter() - started
    # Surprise clips to the rating scale and falls back to the mean for unknown ids, as we do.
    pred = np.array([algo.predict(u, i).est for u, i in zip(test["user_id"], test["product_id"])])
    return seconds, pred


def main():
    p = argparse.ArgumentParser()
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="a Parquet clickstream folder (user_id, product_id, event_type)")
    source.add_argument("--ratings", help="a CSV of explicit ratings")
    p.add_argument("--user-col", default="userId")
    p.add_argument("--item-col", default="movieId")
    p.add_argument("--rating-col", default="rating")
    p.add_argument("--system", choices=["libmf", "surprise"], required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--libmf-so", default="target/libmf/libmf.so")
    p.add_argument("--libmf-eta", type=float, default=0.1, help="LibMF's AdaGrad step (its default)")
    p.add_argument("--factors", type=int, default=20)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--reg", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--holdout", type=float, default=0.2)
    a = p.parse_args()
    train, test = load_pairs(a)
    run = run_libmf if a.system == "libmf" else run_surprise
    a.setup_seconds = 0.0
    seconds, pred = run(train, test, a)
    epochs_seconds = seconds - a.setup_seconds
    errors = test["r"].to_numpy() - pred
    print(json.dumps({
        "system": "LibMF 2.01 (libmf 0.9.2 sources, -O3 -march=native AVX OpenMP)" if a.system == "libmf" else "Surprise SVD",
        "threads": a.threads if a.system == "libmf" else 1,
        "n_train": len(train),
        "n_holdout": len(test),
        # The epochs alone (for LibMF without the set-up inside its fit), and the whole fit.
        "seconds_per_epoch": epochs_seconds / a.epochs,
        "updates_per_second": len(train) * a.epochs / epochs_seconds,
        "fit_seconds_per_epoch": seconds / a.epochs,
        "holdout_rmse": float(np.sqrt(np.mean(errors ** 2))),
        "holdout_mae": float(np.mean(np.abs(errors))),
    }))


if __name__ == "__main__":
    sys.exit(main())
