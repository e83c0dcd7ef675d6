#!/usr/bin/env bash
# Flame graphs of the agent's and the hub's hot path during an er-bench copy.
#
#   bash bench/flamegraph.sh [SCENARIO] [SECONDS]     # default: 1k, 15 s of profile
#
# Runs `er-bench --scenario SCENARIO --systems ours` on the release binaries (its own brokers),
# waits for the copy to start, samples the edge-agent and the hub with `perf record` (DWARF call
# graphs, 499 Hz) for SECONDS, and writes bench/flamegraph-{agent,hub}-SCENARIO.svg with
# inferno. Installs perf (Debian's linux-perf) and inferno (crates.io) when they are missing.
# Profiling needs perf_event_paranoid <= 1 or root.
set -euo pipefail

scenario=${1:-1k}
seconds=${2:-15}
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${ER_CACHE:-$HOME/.cache/edge-replicator}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
tools=$cache/tools
out=$root/bench
work=$(mktemp -d /tmp/er-flamegraph.XXXXXX)
trap 'rm -rf "$work"' EXIT

say() { echo "[flamegraph] $*" >&2; }

if ! command -v perf >/dev/null; then
    say "installing perf (linux-perf)"
    sudo_apt() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
    sudo_apt apt-get update -qq && sudo_apt apt-get install -y -qq linux-perf >/dev/null
fi
if [ ! -x "$tools/bin/inferno-flamegraph" ]; then
    say "installing inferno into $tools"
    cargo install --locked --quiet inferno --root "$tools"
fi

say "building release binaries"
(cd "$root" && cargo build --release -q -p edge-agent -p er-hub -p er-bench)
bin=$CARGO_TARGET_DIR/release

say "er-bench --scenario $scenario --systems ours"
"$bin/er-bench" --scenario "$scenario" --systems ours --bin-dir "$bin" --out-dir "$work" \
    >"$work/bench.log" 2>&1 &
bench=$!

# The agent starts once the edge topics are loaded; its first seconds are start-up.
agent=""
for _ in $(seq 1 600); do
    agent=$(pgrep -n -f "$bin/edge-agent" || true)
    [ -n "$agent" ] && break
    kill -0 $bench 2>/dev/null || { cat "$work/bench.log" >&2; say "er-bench ended before the agent started"; exit 1; }
    sleep 0.5
done
[ -n "$agent" ] || { say "no edge-agent process after 300 s"; exit 1; }
sleep 3
hub=$(pgrep -n -f "$bin/hub" || true)
[ -n "$hub" ] || { say "no hub process"; exit 1; }

say "sampling agent $agent and hub $hub for $seconds s"
perf record -q -F 499 -g --call-graph dwarf,16384 -p "$agent" -o "$work/agent.data" -- sleep "$seconds" 2>/dev/null &
p1=$!
perf record -q -F 499 -g --call-graph dwarf,16384 -p "$hub" -o "$work/hub.data" -- sleep "$seconds" 2>/dev/null &
p2=$!
wait $p1 $p2

for who in agent hub; do
    svg=$out/flamegraph-$who-$scenario.svg
    perf script -i "$work/$who.data" 2>/dev/null \
        | "$tools/bin/inferno-collapse-perf" \
        | "$tools/bin/inferno-flamegraph" --title "$who, er-bench $scenario, $seconds s" >"$svg"
    say "wrote $svg"
done

say "waiting for er-bench to finish"
if ! wait $bench; then
    tail -20 "$work/bench.log" >&2
    say "er-bench failed (the graphs above are still written)"
    exit 1
fi
grep -E '^\| *ours' "$work"/*.md 2>/dev/null | head -5 >&2 || true
