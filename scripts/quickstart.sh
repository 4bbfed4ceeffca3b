#!/usr/bin/env bash
# From a fresh Debian machine to a trained model: install, build, generate a demo clickstream
# (local Parquet files, no MinIO needed), train with 2 MPI ranks, evaluate.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

cargo build --release --quiet
bin=target/release/funksvd
data=${FUNKSVD_DEMO_DATA:-data/demo-events}
model=${FUNKSVD_DEMO_MODEL:-models/demo}

if [ ! -e "$data" ]; then
  scripts/mpirun.sh -n 2 "$bin" generate --out "$data" --users 20000 --items 5000 --events 1000000 --files 4
fi
scripts/mpirun.sh -n 2 "$bin" train --data "$data" --model "$model"
"$bin" evaluate --model "$model" --data "$data" --split holdout
echo "quickstart: model in $model (model.json, users.parquet, items.parquet)"
