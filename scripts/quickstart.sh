#!/usr/bin/env bash
# From a fresh Debian machine to a trained model: install, build, generate a demo clickstream
# (local Parquet files, no MinIO needed), train with 2 MPI ranks, evaluate.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

cargo build --release --quiet
bin=target/release/funksvd
data=${FUNKSVD_DEMO_DATA:-data/demo-clickstream}
model=${FUNKSVD_DEMO_MODEL:-models/demo}

# A shop's clickstream: popular products get most views, and shoppers view, cart and buy by
# their own taste (--taste 1), as in real shops' data.
if [ ! -e "$data" ]; then
  scripts/mpirun.sh -n 2 "$bin" generate --out "$data" --users 20000 --items 5000 --events 1000000 --files 4 --taste 1
fi
# Every flag at its default: events train the ranking objective, and the closing line gives its
# hold-out NDCG@20 beside the best-seller list's.
scripts/mpirun.sh -n 2 "$bin" train --data "$data" --model "$model"
"$bin" evaluate --model "$model" --data "$data" --split holdout
echo "quickstart: model in $model (model.json, users.parquet, items.parquet)"
