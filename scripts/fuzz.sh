#!/usr/bin/env bash
# Long fuzz runs of the protocol's cargo-fuzz targets (protocol/fuzz): the frame and record
# decoder, and the hub's session state machine fed structured frame sequences. The test suite
# runs the same entry points briefly on stable (protocol/tests/fuzz_short.rs); this is the long
# run whose figures SECURITY.md quotes.
#
#   scripts/fuzz.sh [RUNS [TARGET...]]   # executions per target (default 10,000,000); targets
#                                        # (default: frame_decoder hub_session)
#
# Needs a nightly toolchain (rustup) and cargo-fuzz (installed here from crates.io if missing).
# Corpora stay in ${ER_CACHE_DIR:-~/.cache/edge-replicator}/fuzz-corpus, outside the clone; a
# crash leaves its input in protocol/fuzz/artifacts/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10000000}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frame_decoder hub_session)
cache="${ER_CACHE_DIR:-$HOME/.cache/edge-replicator}"
export CARGO_TARGET_DIR="$cache/fuzz-target"

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz: installing the nightly toolchain (rustup)" >&2
    rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz (crates.io)" >&2
    cargo install cargo-fuzz --locked
fi

cd protocol
for target in "${targets[@]}"; do
    corpus="$cache/fuzz-corpus/$target"
    mkdir -p "$corpus"
    echo "fuzz: $target, $runs executions (corpus $corpus)" >&2
    start=$(date +%s)
    set +e
    cargo +nightly fuzz run --release "$target" "$corpus" -- \
        -runs="$runs" -max_len=4096 -print_final_stats=1 2>&1 |
        grep -E '^(#[0-9]+.*(DONE|pulse)|stat::|==[0-9]+==|SUMMARY|.*artifact|.*panicked)'
    status=${PIPESTATUS[0]}
    set -e
    echo "fuzz: $target finished in $(( $(date +%s) - start ))s with status $status" >&2
    [ "$status" -eq 0 ] || exit "$status"
done
