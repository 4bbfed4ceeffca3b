#!/usr/bin/env python3
"""The shape of a clickstream, side by side (issue 33): how `funksvd generate`'s data compares
with a real shop's (the REES46 sample). For each data set: events, distinct users and items,
event-type shares, events per user and per item (quantiles, the share of users with one or two
events, the share of events on the top 1% of items), sessions (a user's events less than 30
minutes apart) and the time span. `--hours H` keeps each data set's first H hours, so that a
3-hour real sample meets generated data on equal terms.

  target/venv/bin/python scripts/data_shape.py \
      --dataset rees46 ../shared/data/rees46-sample/events.csv \
      --dataset generated target/bench/clicks-taste-1000000 [--hours 3]

A data set is a CSV file or a folder of Parquet/CSV files; the columns are found by name
(user_id, product_id or item_id, event_type, event_time or timestamp)."""

import argparse
import glob
import os
import sys

import numpy as np
import pandas as pd

USER = ["user_id", "user", "userId"]
ITEM = ["product_id", "item_id", "item", "movieId"]
EVENT = ["event_type", "event"]
TIME = ["event_time", "timestamp", "time"]


def load(path):
    files = [path] if os.path.isfile(path) else sorted(
        glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True)
        + glob.glob(os.path.join(path, "**", "*.csv"), recursive=True))
    if not files:
        sys.exit(f"data_shape: no data files in {path}")
    frames = [pd.read_parquet(f) if f.endswith(".parquet") else pd.read_csv(f) for f in files]
    df = pd.concat(frames, ignore_index=True)

    def column(names, what):
        found = [c for c in names if c in df.columns]
        if not found:
            sys.exit(f"data_shape: {path}: no {what} column (tried {', '.join(names)})")
        return df[found[0]]

    out = pd.DataFrame({"user": column(USER, "user"), "item": column(ITEM, "item"),
                        "event": column(EVENT, "event type")})
    out["time"] = pd.to_datetime(column(TIME, "time"), utc=True, format="mixed")
    return out.sort_values(["time"], kind="stable").reset_index(drop=True)


def quantiles(counts):
    q = np.quantile(counts, [0.5, 0.9, 0.99])
    return f"{q[0]:.0f} / {q[1]:.0f} / {q[2]:.0f} / {counts.max():.0f}"


def shape(df):
    per_user = df.groupby("user").size().to_numpy()
    per_item = np.sort(df.groupby("item").size().to_numpy())[::-1]
    top = max(1, len(per_item) // 100)
    # Sessions: a user's events with gaps under 30 minutes.
    by_user = df.sort_values(["user", "time"], kind="stable")
    gap = by_user["time"].diff().dt.total_seconds()
    new = (by_user["user"] != by_user["user"].shift()) | (gap > 1800)
    sessions = int(new.sum())
    span = (df["time"].max() - df["time"].min()).total_seconds() / 3600
    types = df["event"].value_counts(normalize=True)
    return {
        "events": f"{len(df):,}",
        "users": f"{len(per_user):,}",
        "items": f"{len(per_item):,}",
        "events per user p50 / p90 / p99 / max": quantiles(per_user),
        "users with 1 event": f"{(per_user == 1).mean():.1%}",
        "users with 1-2 events": f"{(per_user <= 2).mean():.1%}",
        "events per item p50 / p90 / p99 / max": quantiles(per_item),
        "events on the top 1% of items": f"{per_item[:top].sum() / per_item.sum():.1%}",
        "event types": ", ".join(f"{t} {s:.1%}" for t, s in types.items()),
        "sessions per user": f"{sessions / len(per_user):.2f}",
        "events per session": f"{len(df) / sessions:.1f}",
        "hours spanned": f"{span:.1f}",
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", nargs=2, action="append", metavar=("NAME", "PATH"), required=True)
    p.add_argument("--hours", type=float, help="keep each data set's first HOURS hours")
    a = p.parse_args()
    shapes = {}
    for name, path in a.dataset:
        df = load(path)
        if a.hours:
            df = df[df["time"] < df["time"].min() + pd.Timedelta(hours=a.hours)]
        shapes[name] = shape(df)
    names = list(shapes)
    print("| measure | " + " | ".join(names) + " |")
    print("| --- |" + " --- |" * len(names))
    for key in shapes[names[0]]:
        print(f"| {key} | " + " | ".join(shapes[n][key] for n in names) + " |")


if __name__ == "__main__":
    main()
