#!/bin/sh
# Builds Python plugins as WebAssembly components of world edge-replicator:plugin@0.1.0 with
# componentize-py (pinned in requirements-build.txt, installed on first use into a venv under
# ${ER_CACHE_DIR:-~/.cache/edge-replicator}, outside the clone).
#
#   plugins/python/build.sh                     examples and fixtures -> plugins/python/target/NAME.wasm
#   plugins/python/build.sh APP.py OUT.wasm     one plugin: module APP (next to er_plugin.py's copy)
#
# A component is rebuilt only when its inputs changed (the tool version, wit/, er_plugin.py, the
# app). Exit status 3: no usable python3 on this machine (the tests skip on that alone).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
wit="$here/../../wit"
version=$(sed -n 's/^componentize-py==//p' "$here/requirements-build.txt")
cache="${ER_CACHE_DIR:-$HOME/.cache/edge-replicator}"
venv="$cache/componentize-py-$version"
tool="$venv/bin/componentize-py"

say() { printf 'plugins/python: %s\n' "$*" >&2; }

# One build at a time per machine (tests and the bench may start this concurrently).
mkdir -p "$cache"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$cache/componentize-py.lock"
  flock 9
fi

# The marker is written last, so an interrupted install is redone, not used.
if [ ! -f "$venv/.installed" ]; then
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
    say "python3 (3.9 or newer, with the venv and ensurepip modules) is needed to install componentize-py"
    exit 3
  fi
  say "installing componentize-py $version into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --only-binary :all: \
    -r "$here/requirements-build.txt"
  touch "$venv/.installed"
fi

# build APP_DIR MODULE OUT
build() {
  app_dir=$1 module=$2 out=$3
  stamp=$( (echo "componentize-py $version"; cat "$wit"/*.wit "$here/er_plugin.py" "$app_dir/$module.py") | sha256sum | cut -d' ' -f1)
  if [ -f "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$stamp" ]; then
    return 0
  fi
  mkdir -p "$(dirname "$out")"
  say "componentize $module -> $out"
  "$tool" -d "$wit" -w plugin componentize -p "$here" -p "$app_dir" "$module" -o "$out.tmp.$$" >/dev/null
  mv "$out.tmp.$$" "$out"
  echo "$stamp" > "$out.stamp"
}

if [ $# -eq 0 ]; then
  for app in "$here"/examples/*.py "$here"/fixtures/*.py; do
    [ -f "$app" ] || continue
    name=$(basename "$app" .py)
    build "$(dirname "$app")" "$name" "$here/target/$name.wasm"
  done
elif [ $# -eq 2 ]; then
  app=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
  case "$2" in /*) out=$2 ;; *) out=$(pwd)/$2 ;; esac
  build "$(dirname "$app")" "$(basename "$app" .py)" "$out"
else
  say "usage: $0 [APP.py OUT.wasm]"
  exit 2
fi
