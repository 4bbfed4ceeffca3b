#!/usr/bin/env bash
# Install what the tests need and run the whole suite (unit tests and the integration tests
# that run the real binary under mpirun with 1 to 8 ranks).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export PATH="$HOME/.cargo/bin:$PATH"
# mpirun refuses root without these; tests oversubscribe the cores on purpose.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# The S3 tests run their own local S3 server (s3s-fs: signature-checking, like MinIO).
if ! command -v s3s-fs >/dev/null 2>&1; then
  echo "test: installing the local S3 server s3s-fs (a few minutes, once)"
  cargo install s3s-fs@0.14.1 --locked --features binary --quiet
fi

# The Kubernetes manifest tests validate offline with PyYAML and jsonschema; the model tests
# read a users table written in parts with pandas (pyarrow), as a user would.
if ! target/venv/bin/python -c "import yaml, jsonschema, pandas, pyarrow" 2>/dev/null; then
  python3 -m venv target/venv
  target/venv/bin/pip install --quiet pyyaml jsonschema pandas pyarrow
fi

cargo fmt --check
cargo test --release "$@"
