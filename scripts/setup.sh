#!/usr/bin/env bash
# Install what funksvd needs to build and run on Debian: OpenMPI, clang (for the MPI bindings),
# pkg-config and GNU time; with --test also what the tests need (a one-node Slurm, Python venv,
# headless Chromium for the serve page).
# Safe to run again; installs only what is missing.
set -euo pipefail

packages=(openmpi-bin libopenmpi-dev libclang-dev clang pkg-config time libopenblas-dev)
if [ "${1:-}" = "--test" ]; then
  packages+=(slurm-wlm munge libpmix-bin python3-venv chromium iproute2)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || {
  echo "setup: cargo not found; install Rust with rustup (https://rustup.rs), then run this again" >&2
  exit 1
}
