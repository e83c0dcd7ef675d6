#!/usr/bin/env bash
# The whole test suite, as CI runs it: setup, format and lint checks, plugin builds, then every
# test against real Apache Kafka brokers started once for the run and stopped at the end.
#
# Build outputs go to ${CARGO_TARGET_DIR:-${ER_CACHE_DIR:-~/.cache/edge-replicator}/target} so a
# fresh clone on the same machine reuses earlier builds.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${ER_CACHE_DIR:-$HOME/.cache/edge-replicator}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
start=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }

step "setup"
scripts/setup.sh

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "build example plugins (wasm32-wasip2)"
plugins/build.sh --quiet

step "build binaries"
cargo build --workspace --all-targets --quiet

step "quickstart (mock clusters, as the README runs it)"
cargo run --quiet -p er-quickstart > /dev/null

step "start Kafka (edge, central, central2)"
eval "$(cargo xtask kafka up --with-central2)"
trap 'cargo xtask kafka down >/dev/null 2>&1 || true' EXIT

step "cargo test"
# Two test threads: the end-to-end tests each run a hub, an agent and Kafka clients on 2 cores.
cargo test --workspace -- --test-threads=2

step "all tests passed in $(( $(date +%s) - start ))s"
