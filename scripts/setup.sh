#!/usr/bin/env bash
# Idempotent setup for a fresh machine: Rust target, Java 17 + Maven, Apache Kafka jars,
# Prometheus, systemd-analyze and chromium.
# Safe to run again: every step checks first and says what it did or skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
# Builds go where scripts/test.sh puts them, so the suite reuses what setup compiled.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${ER_CACHE_DIR:-$HOME/.cache/edge-replicator}/target}"

say() { printf 'setup: %s\n' "$*"; }
apt_updated=0
apt_install() {
  if ! command -v apt-get >/dev/null; then
    say "missing $* and no apt-get: install it by hand"; exit 1
  fi
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  say "installed $* (apt-get)"
}

# 1. Rust: the toolchain pinned in rust-toolchain.toml and the wasm32-wasip2 target for plugins.
if ! command -v rustup >/dev/null; then
  say "rustup not found: install Rust (rustup) first"; exit 1
fi
channel=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
if rustup toolchain list | grep -q "^${channel}"; then
  say "Rust ${channel}: present"
else
  rustup toolchain install "${channel}" --profile minimal -c rustfmt -c clippy
  say "Rust ${channel}: installed"
fi
if rustup target list --installed --toolchain "${channel}" | grep -qx wasm32-wasip2; then
  say "target wasm32-wasip2: present"
else
  rustup target add wasm32-wasip2 --toolchain "${channel}"
  say "target wasm32-wasip2: added"
fi

# 2. Java 17+ and Maven (for the Kafka brokers and MirrorMaker 2 of the test harness).
if command -v java >/dev/null; then
  say "java: $(java -version 2>&1 | head -1)"
else
  apt_install openjdk-17-jre-headless
fi
if command -v mvn >/dev/null; then
  say "maven: $(mvn -v 2>/dev/null | head -1 | sed 's/\x1b\[[0-9;]*m//g')"
else
  apt_install maven
fi

# 3. Apache Kafka jars (version pinned in tools/kafka/pom.xml) into
#    ${ER_CACHE_DIR:-$HOME/.cache/edge-replicator}/kafka-<version>/libs, via the same code the
#    test harness uses. Skipped when the cache marker says it is complete.
cargo xtask kafka fetch

# 4. The MM2 compatibility oracle (tools/mm2-oracle: Kafka's own MirrorMaker 2 classes behind a
#    small Java CLI) into ${ER_CACHE_DIR:-$HOME/.cache/edge-replicator}/mm2-oracle/<hash>, built by
#    the test harness's own code (er_tests::oracle). Instant when that exact version is cached.
cargo test -q -p er-tests --test it -- --exact mm2_compat::oracle_builds_with_the_harness_kafka_version
say "MM2 oracle: ready"

# 5. Operations tooling for tests/tests/it/prometheus_e2e.rs: a real Prometheus server and promtool
#    (alert rules and the dashboard against running binaries), systemd-analyze (service files).
#    Debian's packages; the prometheus package's own service is not started in a container.
if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  say "prometheus: $(prometheus --version 2>&1 | head -1)"
else
  apt_install --no-install-recommends prometheus
fi
if command -v systemd-analyze >/dev/null; then
  say "systemd-analyze: present"
else
  apt_install --no-install-recommends systemd
fi

# 6. A real browser for tests/tests/it/console_e2e.rs: the hub's web console is loaded in headless
#    chromium (Debian's package; `--dump-dom`, no driver needed).
if command -v chromium >/dev/null; then
  say "chromium: $(chromium --version 2>/dev/null | head -1)"
else
  apt_install --no-install-recommends chromium
fi
say "done"
