#!/usr/bin/env bash
# ARM (aarch64) builds of edge-agent and hub, run under qemu-user: cross-compiles both for
# aarch64-unknown-linux-gnu with Debian's gcc-aarch64-linux-gnu (librdkafka, zstd, zlib and ring
# are C and are cross-compiled too), then runs the aarch64 binaries under qemu-aarch64-static:
# `--version`, `check-config` on the example configs (which compiles the example plugins to
# aarch64 code) and real replications through the aarch64 hub and agent on loopback with real
# Kafka (the er-tests harness, ER_BIN_DIR pointing at qemu wrappers). Also builds the x86_64 dist
# binaries and prints the stripped sizes of both.
#
# Slow (a fat-LTO build per target; the replication runs emulated), so separate from
# scripts/test.sh:   scripts/arm.sh            everything
#                    ER_ARM_SKIP_E2E=1 scripts/arm.sh   build, --version and check-config only
# It also builds the agent without a plugin compiler for both targets, runs a plugin the x86_64
# hub precompiled for aarch64 on the aarch64 one, and prints the sizes of all the builds.
# Idempotent: installs only what is missing (apt-get, rustup), cargo rebuilds only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

say() { printf 'arm: %s\n' "$*"; }
target=aarch64-unknown-linux-gnu
profile=dist
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/edge-replicator/target}
sysroot=/usr/aarch64-linux-gnu
nice=(nice -n "${ER_ARM_NICE:-19}")

# 1. Tools: the cross compiler and C++ (librdkafka's configure probes for it), qemu-user, the
#    Rust target.
missing=()
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  say "installed ${missing[*]} (apt-get)"
else
  say "cross compiler and qemu-user: present"
fi
channel=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
if rustup target list --installed --toolchain "$channel" | grep -qx "$target"; then
  say "target $target: present"
else
  rustup target add "$target" --toolchain "$channel"
  say "target $target: added"
fi

# 2. Builds. The cc crate (zstd, zlib, ring) reads the per-target variables; rdkafka-sys runs
#    librdkafka's own configure + make, which read plain CC/CXX/AR, so those name the cross
#    tools too, and the host's own C builds keep the native compiler through the x86_64 ones.
cross_env=(
  CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
  CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
  AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
  CC_x86_64_unknown_linux_gnu=cc
  CXX_x86_64_unknown_linux_gnu=c++
  AR_x86_64_unknown_linux_gnu=ar
  CC=aarch64-linux-gnu-gcc
  CXX=aarch64-linux-gnu-g++
  AR=aarch64-linux-gnu-ar
)
# The agent and the hub build separately: together, cargo would give the agent the hub's
# every-architecture plugin compiler. The agent without a compiler (runs only precompiled
# plugins) builds in a target directory of its own, so the two agents do not rebuild each other.
nocomp_dir="$CARGO_TARGET_DIR-nocompiler"
builds() { # $1: extra cargo arguments (a --target, or none for x86_64)
  "${nice[@]}" cargo build --locked --profile "$profile" $1 -p edge-agent
  "${nice[@]}" cargo build --locked --profile "$profile" $1 -p er-hub
  CARGO_TARGET_DIR="$nocomp_dir" "${nice[@]}" cargo build --locked --profile "$profile" $1 \
    -p edge-agent --no-default-features
}
start=$(date +%s)
say "building aarch64 $profile binaries (slow)"
( export "${cross_env[@]}"; builds "--target $target" )
say "aarch64 build: $(( $(date +%s) - start ))s"
start=$(date +%s)
say "building x86_64 $profile binaries"
builds ""
say "x86_64 build: $(( $(date +%s) - start ))s"

arm_dir="$CARGO_TARGET_DIR/$target/$profile"
x86_dir="$CARGO_TARGET_DIR/$profile"
arm_nocomp="$nocomp_dir/$target/$profile"
x86_nocomp="$nocomp_dir/$profile"
for b in "$arm_dir/edge-agent" "$arm_dir/hub" "$arm_nocomp/edge-agent"; do
  file "$b" | grep -q 'ARM aarch64' || { say "$b is not an aarch64 binary"; exit 1; }
done

size() { numfmt --to=iec-i --suffix=B --format=%.1f "$(stat -c %s "$1")"; }
sizes() {
  printf '| binary | x86_64 (%s) | aarch64 (%s) |\n|---|---|---|\n' "$profile" "$profile"
  printf '| `edge-agent` | %s | %s |\n' "$(size "$x86_dir/edge-agent")" "$(size "$arm_dir/edge-agent")"
  printf '| `edge-agent` without a compiler | %s | %s |\n' "$(size "$x86_nocomp/edge-agent")" "$(size "$arm_nocomp/edge-agent")"
  printf '| `hub` | %s | %s |\n' "$(size "$x86_dir/hub")" "$(size "$arm_dir/hub")"
}
say "stripped sizes:"
sizes

# 3. Run under qemu. Wrappers let the test harness start the aarch64 binaries like native ones
#    (exec: SIGTERM reaches qemu, which passes it to the program).
run() { qemu-aarch64-static -L "$sysroot" "$@"; }
wrap=$(mktemp -d)
trap 'rm -rf "$wrap"' EXIT
for b in edge-agent hub; do
  printf '#!/bin/sh\nexec qemu-aarch64-static -L %s %s "$@"\n' "$sysroot" "$arm_dir/$b" > "$wrap/$b"
  chmod +x "$wrap/$b"
done
run "$arm_dir/edge-agent" --version
run "$arm_dir/hub" --version

# check-config on copies of the example configs, with a dev PKI the aarch64 hub makes and the
# example plugins (wasm, built natively) at absolute paths.
env -u CARGO_TARGET_DIR plugins/build.sh --quiet
conf="$wrap/conf"
mkdir -p "$conf"
cp examples/config/agent.toml examples/config/hub.toml "$conf/"
sed -i "s#\.\./\.\./plugins/#$root/plugins/#" "$conf/agent.toml"
run "$arm_dir/hub" certs --out "$conf/certs" --site plant-7 --hub-name hub.example.com >/dev/null
run "$arm_dir/hub" check-config "$conf/hub.toml"
run "$arm_dir/edge-agent" check-config "$conf/agent.toml"

# A plugin the x86_64 hub precompiles for aarch64 (as `hub plugins push` does for agents
# without a compiler) runs on the aarch64 agent built without one, and that agent refuses a
# .wasm it would have to compile, saying so.
filter="$root/plugins/examples/target/wasm32-wasip2/release/filter.wasm"
"$x86_dir/hub" plugins compile --target aarch64-linux -o "$wrap/filter.cwasm" "$filter"
printf '%s\n' '{"value":{"json":{"temperature":31}}}' '{"value":{"json":{"temperature":29}}}' > "$wrap/in.jsonl"
kept=$(run "$arm_nocomp/edge-agent" plugin test --plugin "$wrap/filter.cwasm" \
  --set 'condition=temperature > 30' --input "$wrap/in.jsonl" | grep -c '"outcome":"kept"' || true)
[ "$kept" = 1 ] || { say "the hub's aarch64 build of filter kept $kept of 2 records, not 1"; exit 1; }
if run "$arm_nocomp/edge-agent" plugin test --plugin "$filter" --input "$wrap/in.jsonl" 2>"$wrap/err"; then
  say "the aarch64 agent without a compiler ran a .wasm"; exit 1
fi
say "hub-precompiled plugin on the compiler-less aarch64 agent: ok ($(head -c 160 "$wrap/err"))"

if [ "${ER_ARM_SKIP_E2E:-0}" = 1 ]; then
  say "ER_ARM_SKIP_E2E=1: replication through the aarch64 binaries skipped"
  exit 0
fi

# Replication through the aarch64 hub and agent: the end-to-end tests' own code (real Kafka,
# mTLS, exactly-once check), with the binaries swapped.
start=$(date +%s)
# The test harness itself is native; ER_ARM_TEST_TARGET_DIR lets it reuse a debug build elsewhere.
test_env=(ER_BIN_DIR="$wrap" CARGO_TARGET_DIR="${ER_ARM_TEST_TARGET_DIR:-$CARGO_TARGET_DIR}")
env "${test_env[@]}" "${nice[@]}" cargo test -q -p er-tests --test it -- --exact \
  e2e::replicates_100k_records_byte_exact_and_in_order --test-threads=1
env "${test_env[@]}" "${nice[@]}" cargo test -q -p er-tests --test it -- metrics_e2e:: --test-threads=1
say "replication under qemu: $(( $(date +%s) - start ))s"
say "stripped sizes (for README):"
sizes
say "done"
