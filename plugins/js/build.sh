#!/bin/sh
# Builds JavaScript plugins as WebAssembly components of world edge-replicator:plugin@0.1.0 with
# componentize-js (StarlingMonkey). The tools are pinned by package.json and package-lock.json
# here and installed on first use with `npm ci` into ${ER_CACHE_DIR:-~/.cache/edge-replicator},
# outside the clone.
#
#   plugins/js/build.sh                     examples and fixtures -> plugins/js/target/NAME.wasm
#   plugins/js/build.sh APP.js OUT.wasm     one plugin (it imports er-plugin.js by a relative path
#                                           inside the directory the build runs from; see README)
#
# WASI features the sandbox does not link are left out (`--disable http fetch-event`), so the
# component imports only what the host provides. A component is rebuilt only when its inputs
# changed. Exit status 3: no usable node/npm on this machine (the tests skip on that alone).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
wit="$here/../../wit"
lock_hash=$(cat "$here/package.json" "$here/package-lock.json" | sha256sum | cut -c1-16)
cache="${ER_CACHE_DIR:-$HOME/.cache/edge-replicator}"
tools="$cache/componentize-js-$lock_hash"
tool="$tools/node_modules/.bin/componentize-js"

say() { printf 'plugins/js: %s\n' "$*" >&2; }

# One build at a time per machine (tests and the bench may start this concurrently).
mkdir -p "$cache"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$cache/componentize-js.lock"
  flock 9
fi

# The marker is written last, so an interrupted install is redone, not used.
if [ ! -f "$tools/.installed" ]; then
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1 ||
    ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)'; then
    say "node 18 or newer and npm are needed to install componentize-js"
    exit 3
  fi
  say "installing componentize-js (package-lock.json) into $tools"
  rm -rf "$tools"
  mkdir -p "$tools"
  cp "$here/package.json" "$here/package-lock.json" "$tools/"
  (cd "$tools" && npm ci --no-audit --no-fund --loglevel=error >&2)
  touch "$tools/.installed"
fi

# build APP OUT: APP relative to the current directory, which is the root the component's
# module loader sees at build time (componentize-js maps it to /).
build() {
  app=$1 out=$2
  stamp=$( (cat "$here/package-lock.json" "$wit"/*.wit "$here/er-plugin.js" "$app") | sha256sum | cut -d' ' -f1)
  if [ -f "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$stamp" ]; then
    return 0
  fi
  mkdir -p "$(dirname "$out")"
  say "componentize $app -> $out"
  "$tool" "$app" --wit "$wit" --world-name plugin --disable http fetch-event -o "$out.tmp.$$" >&2
  mv "$out.tmp.$$" "$out"
  echo "$stamp" > "$out.stamp"
}

if [ $# -eq 0 ]; then
  cd "$here"
  for app in examples/*.js fixtures/*.js; do
    [ -f "$app" ] || continue
    build "$app" "$here/target/$(basename "$app" .js).wasm"
  done
elif [ $# -eq 2 ]; then
  case "$2" in /*) out=$2 ;; *) out=$(pwd)/$2 ;; esac
  build "$1" "$out"
else
  say "usage: $0 [APP.js OUT.wasm]"
  exit 2
fi
