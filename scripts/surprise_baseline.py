#!/usr/bin/env python3
"""Surprise's SVD on exactly the hold-out split funksvd uses, for a side-by-side quality check.

funksvd holds a (user, item) pair out when a hash of (user id, item id, seed) falls below the
hold-out fraction (src/funksvd/data.rs); this file computes the same hash, so both systems train
on the same pairs and are scored on the same pairs. Prints one JSON object.
"""
import argparse
import json
import time

MASK = (1 << 64) - 1


def mix64(z):
    z = (z + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def id_hash(value):
    """funksvd's stable hash of an integer id (ids.rs hash_int); string ids are not needed here."""
    return mix64((int(value) & MASK) ^ 0x6A09E667F3BCC908)


def held_out(user, item, seed, fraction):
    h = mix64(id_hash(user) ^ mix64(id_hash(item) ^ mix64((seed & MASK) ^ 0x5851F42D4C957F2D)))
    return (h >> 11) * (1.0 / (1 << 53)) < fraction


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ratings", required=True, help="CSV with userId,movieId,rating")
    p.add_argument("--user-col", default="userId")
    p.add_argument("--item-col", default="movieId")
    p.add_argument("--rating-col", default="rating")
    p.add_argument("--factors", type=int, default=20)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--reg", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--holdout", type=float, default=0.2)
    a = p.parse_args()

    import pandas as pd
    from surprise import SVD, Dataset, Reader, accuracy

    df = pd.read_csv(a.ratings, usecols=[a.user_col, a.item_col, a.rating_col])
    df = df.groupby([a.user_col, a.item_col], as_index=False)[a.rating_col].max()
    mask = [held_out(u, i, a.seed, a.holdout) for u, i in zip(df[a.user_col], df[a.item_col])]
    test = df[mask]
    train = df[[not m for m in mask]]
    lo, hi = float(train[a.rating_col].min()), float(train[a.rating_col].max())
    data = Dataset.load_from_df(train[[a.user_col, a.item_col, a.rating_col]], Reader(rating_scale=(lo, hi)))
    trainset = data.build_full_trainset()
    algo = SVD(n_factors=a.factors, n_epochs=a.epochs, lr_all=a.lr, reg_all=a.reg, random_state=a.seed)
    started = time.perf_counter()
    algo.fit(trainset)
    seconds = time.perf_counter() - started
    preds = algo.test(list(zip(test[a.user_col], test[a.item_col], test[a.rating_col])))
    print(json.dumps({
        "system": "surprise.SVD",
        "n_train": len(train),
        "n_holdout": len(test),
        "holdout_rmse": accuracy.rmse(preds, verbose=False),
        "holdout_mae": accuracy.mae(preds, verbose=False),
        "train_seconds": seconds,
        "updates_per_second": len(train) * a.epochs / seconds,
    }))


if __name__ == "__main__":
    main()
