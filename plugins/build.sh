#!/bin/sh
# Builds the example plugins and test fixtures as wasm32-wasip2 components into
# plugins/examples/target/wasm32-wasip2/release/*.wasm.
set -eu
cd "$(dirname "$0")/examples"
rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
exec cargo build --release --target wasm32-wasip2 "$@"
