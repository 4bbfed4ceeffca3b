"""Spark ALS beside a funksvd implicit model (issue 33): the same Parquet, the same preferences,
the same hold-out, the same rank, iterations and regularisation; wall seconds per phase and the
hold-out NDCG@20 of both on the same users.

    target/venv/bin/python scripts/bench_spark.py --data DIR --model FUNKSVD_MODEL [--cores 2]

Spark (PySpark from PyPI on Debian's JDK, local[cores]) reads the dataset, maps each (user, item)
to its preference as funksvd did (the model's `event_weights`, the largest weight of the pair's
events: `aggregate` max), holds out the pairs funksvd held out (its hash of the two ids and the
seed, replicated below and checked against the model's count), fits ALS with implicitPrefs at the
model's factors, epochs and reg (alpha 1: funksvd's confidence is 1 + alpha x its balanced
value), and recommends top 20 for every user (recommendForAllUsers, the shop's batch job). The
quality is measured as funksvd's is: for the users funksvd's final ranking scored (its sample,
replicated), the top 20 of all items minus the user's training items by Spark's factors, against
the held-out items. One JSON line on stdout.
"""

import argparse
import json
import os
import time

import numpy as np

MASK = (1 << 64) - 1


def mix64(z):
    z = (z + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(MASK)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hash_int(v):
    return mix64(v.astype(np.int64).view(np.uint64) ^ np.uint64(0x6A09E667F3BCC908))


def unit(h):
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def held_out(users, items, seed, fraction):
    """funksvd's train::data::is_held_out for integer ids."""
    with np.errstate(over="ignore"):
        inner = mix64(hash_int(items) ^ mix64(np.uint64(seed) ^ np.uint64(0x5851F42D4C957F2D)))
        return unit(mix64(hash_int(users) ^ inner)) < fraction


def sampled(users, share):
    """funksvd's ranking::Sample::keeps for integer ids."""
    if share >= 1.0:
        return np.ones(len(users), dtype=bool)
    with np.errstate(over="ignore"):
        return unit(mix64(hash_int(users) ^ np.uint64(0x4A5D0C0E))) < share


def ndcg_at(lists, relevant, k=20):
    out = []
    for top, rel in zip(lists, relevant):
        rel = set(rel)
        dcg = sum(1.0 / np.log2(p + 2) for p, i in enumerate(top[:k]) if i in rel)
        ideal = sum(1.0 / np.log2(p + 2) for p in range(min(k, len(rel))))
        out.append(dcg / ideal)
    return np.array(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--memory", default="12g")
    a = ap.parse_args()
    meta = json.load(open(os.path.join(a.model, "model.json")))
    hyper, inp = meta["hyperparameters"], meta["input"]
    weights = meta["event_weights"]
    ranking = meta["metrics"]["ranking"]

    from pyspark.ml.recommendation import ALS
    from pyspark.sql import SparkSession, functions as F

    phases = {}
    started = time.time()
    spark = (SparkSession.builder.master(f"local[{a.cores}]")
             .config("spark.driver.memory", a.memory)
             .config("spark.sql.shuffle.partitions", str(4 * a.cores))
             .config("spark.ui.enabled", "false")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    phases["start"] = time.time() - started

    t = time.time()
    events = spark.read.parquet(a.data)
    weight = F.create_map(*[x for kv in weights.items() for x in (F.lit(kv[0]), F.lit(kv[1]))])
    pairs = (events.select(F.col(inp["user_col"]).alias("user"), F.col(inp["item_col"]).alias("item"),
                           weight[F.col(inp["event_col"])].alias("w"))
             .where(F.col("w").isNotNull())
             .groupBy("user", "item").agg(F.max("w").alias("rating")))
    pdf = pairs.toPandas()
    phases["read_and_pairs"] = time.time() - t

    t = time.time()
    held = held_out(pdf["user"].to_numpy(), pdf["item"].to_numpy(), hyper["seed"], hyper["holdout"])
    train_pdf, hold_pdf = pdf[~held], pdf[held]
    # Spark's ALS takes int ids: the shop's ids are ints below 2^31.
    train = spark.createDataFrame(train_pdf.astype({"user": "int32", "item": "int32", "rating": "float32"}))
    train = train.repartition(2 * a.cores).cache()
    n_train = train.count()
    phases["split"] = time.time() - t

    t = time.time()
    als = ALS(rank=meta["factors"], maxIter=hyper["epochs"], regParam=hyper["reg"], implicitPrefs=True,
              alpha=1.0, userCol="user", itemCol="item", ratingCol="rating", seed=hyper["seed"],
              coldStartStrategy="drop")
    fitted = als.fit(train)
    phases["fit"] = time.time() - t

    t = time.time()
    recs = fitted.recommendForAllUsers(20)
    n_lists = recs.count()
    phases["recommend_all"] = time.time() - t

    # Quality on funksvd's protocol and users: its sample of the users with held-out pairs that
    # have training pairs.
    t = time.time()
    uf = fitted.userFactors.toPandas()
    itf = fitted.itemFactors.toPandas()
    items = itf["id"].to_numpy()
    item_rows = np.stack(itf["features"].to_numpy()).astype(np.float32)
    item_index = {int(i): n for n, i in enumerate(items)}
    known = set(train_pdf["user"].unique())
    hold_users = np.array(sorted(set(hold_pdf["user"].unique()) & known))
    share = ranking["sample"]["share"] if ranking.get("sample") else 1.0
    chosen = hold_users[sampled(hold_users, share)]
    user_rows = dict(zip(uf["id"].to_numpy(), uf["features"].to_numpy()))
    trains = train_pdf[train_pdf["user"].isin(chosen)].groupby("user")["item"].apply(list)
    rels = hold_pdf[hold_pdf["user"].isin(chosen)].groupby("user")["item"].apply(list)
    lists, relevant = [], []
    for u in chosen:
        scores = item_rows @ np.asarray(user_rows[u], dtype=np.float32)
        for i in trains.get(u, []):
            if i in item_index:
                scores[item_index[i]] = -np.inf
        top = np.argpartition(-scores, 20)[:20]
        top = top[np.argsort(-scores[top])]
        lists.append([int(items[j]) for j in top])
        relevant.append(rels.get(u, []))
    ndcg = ndcg_at(lists, relevant)
    phases["evaluate"] = time.time() - t
    spark.stop()
    print(json.dumps({
        "system": "spark-als", "cores": a.cores, "data": a.data,
        "pairs": len(pdf), "train_pairs": n_train, "holdout_pairs": int(held.sum()),
        "funksvd_holdout_pairs": meta["metrics"]["n_holdout"],
        "users_scored": len(chosen), "funksvd_users_scored": ranking["users"],
        "lists": n_lists, "phases": phases,
        "seconds_end_to_end": sum(v for k, v in phases.items() if k != "evaluate"),
        "ndcg20": float(ndcg.mean()), "ndcg20_standard_error": float(ndcg.std(ddof=1) / np.sqrt(len(ndcg))),
        "funksvd_ndcg20": ranking["model"]["ndcg@20"],
        "funksvd_seconds": meta["training"]["seconds"],
    }))


if __name__ == "__main__":
    main()
