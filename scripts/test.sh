#!/usr/bin/env bash
# Install what the tests need and run the whole suite (unit tests and the integration tests
# that run the real binary under mpirun with 1 to 8 ranks).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# mpirun refuses root without these; tests oversubscribe the cores on purpose.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

cargo fmt --check
cargo test --release "$@"
