"""The Ray Serve side of scripts/bench_serve.sh: what the original team would have deployed in
place of `funksvd serve`, one replica answering the same endpoints from the same model with
NumPy: GET /v1/recommend?user=ID&n=10 (the user's row times the item matrix, their items in the
data set to -inf, argpartition), POST /v1/recommend {"items": [...], "n": 10} (the explicit
model's fold-in, funksvd's equations, solved with numpy.linalg.solve) and
GET /v1/similar?item=ID&n=10 (cosine). Starts Ray and the deployment on 127.0.0.1:8000, prints
"ready", and serves until killed.

    bench_serve_ray.py --model MODEL --data DATA
"""

import argparse
import json
import os
import time


def load(model_dir, data_dir):
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq
    import scipy.sparse as sp

    meta = json.load(open(os.path.join(model_dir, "model.json")))
    users = pq.read_table(os.path.join(model_dir, "users.parquet")).to_pandas()
    items = pq.read_table(os.path.join(model_dir, "items.parquet")).to_pandas()
    biased = meta["biased"]
    model = {
        "mean": meta["global_mean"] if biased else 0.0,
        "reg": meta["hyperparameters"]["reg"],
        "P": np.stack(users["factors"].to_numpy()).astype(np.float32),
        "Q": np.stack(items["factors"].to_numpy()).astype(np.float32),
        "bu": users["bias"].to_numpy(np.float32) if biased else np.zeros(len(users), np.float32),
        "bi": items["bias"].to_numpy(np.float32) if biased else np.zeros(len(items), np.float32),
        "user_index": {int(u): n for n, u in enumerate(users["user_id"])},
        "item_index": {int(i): n for n, i in enumerate(items["item_id"])},
        "item_ids": items["item_id"].to_numpy(),
        "biased": biased,
    }
    q = model["Q"]
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    model["Qn"] = q / np.where(norms > 0, norms, 1)
    weights = meta.get("event_weights") or {}
    events = pd.read_parquet(data_dir, columns=["user_id", "product_id", "event_type"])
    events = events[events["event_type"].isin(list(weights))]
    u = pd.Index(users["user_id"]).get_indexer(events["user_id"])
    i = pd.Index(items["item_id"]).get_indexer(events["product_id"])
    keep = (u >= 0) & (i >= 0)
    seen = sp.csr_matrix((np.ones(keep.sum(), np.float32), (u[keep], i[keep])), shape=(len(users), len(items)))
    seen.sum_duplicates()
    model["seen"] = seen
    return model


def top(scores, n, exclude, ids):
    import numpy as np
    scores = scores.copy()
    scores[exclude] = -np.inf
    n = min(n, len(scores))
    best = np.argpartition(-scores, n - 1)[:n]
    best = best[np.lexsort((best, -scores[best]))]
    return [{"item": int(ids[i]), "score": float(scores[i])} for i in best]


def make_app():
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
    class Recommender:
        def __init__(self, model_dir, data_dir):
            self.m = load(model_dir, data_dir)

        async def __call__(self, request: Request):
            import numpy as np
            m = self.m
            path = request.url.path
            if path == "/v1/recommend" and request.method == "GET":
                u = m["user_index"].get(int(request.query_params["user"]))
                if u is None:
                    return JSONResponse({"error": "unknown user"}, status_code=404)
                n = int(request.query_params.get("n", 10))
                scores = m["Q"] @ m["P"][u] + m["bi"] + (m["mean"] + m["bu"][u])
                row = m["seen"]
                exclude = row.indices[row.indptr[u]:row.indptr[u + 1]]
                return JSONResponse({"user": int(request.query_params["user"]),
                                     "items": top(scores, n, exclude, m["item_ids"])})
            if path == "/v1/recommend" and request.method == "POST":
                body = await request.json()
                known = [m["item_index"][i] for i in body["items"] if i in m["item_index"]]
                ratings = np.ones(len(known), np.float64)
                n = int(body.get("n", 10))
                # funksvd's explicit fold-in: features [1, q_i], target r - mean - b_i,
                # regularised reg x (number of ratings).
                X = np.hstack([np.ones((len(known), 1)), m["Q"][known].astype(np.float64)])
                y = ratings - m["mean"] - m["bi"][known]
                A = X.T @ X + m["reg"] * len(known) * np.eye(X.shape[1])
                w = np.linalg.solve(A, X.T @ y)
                scores = m["Q"] @ w[1:].astype(np.float32) + m["bi"] + (m["mean"] + w[0])
                return JSONResponse({"items": top(scores, n, np.array(known, dtype=np.int64), m["item_ids"])})
            if path == "/v1/similar":
                i = m["item_index"].get(int(request.query_params["item"]))
                if i is None:
                    return JSONResponse({"error": "unknown item"}, status_code=404)
                n = int(request.query_params.get("n", 10))
                return JSONResponse({"item": int(request.query_params["item"]),
                                     "items": top(m["Qn"] @ m["Qn"][i], n, [i], m["item_ids"])})
            return JSONResponse({"error": "no such endpoint"}, status_code=404)

    return Recommender


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    a = p.parse_args()
    import ray
    from ray import serve
    ray.init(num_cpus=1, include_dashboard=False, logging_level="error")
    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    serve.run(make_app().bind(os.path.abspath(a.model), os.path.abspath(a.data)), route_prefix="/")
    print("ready", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
