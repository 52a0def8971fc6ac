#!/usr/bin/env bash
# Tests the .deb built by `make bundle`: installs it with apt (which pulls its declared dependencies), checks the
# installed files, starts the installed app under Xvfb with throwaway data folders, waits for its window to appear,
# takes a screenshot (test-results/package/window.png), and closes it.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
: "${CARGO_TARGET_DIR:=/var/tmp/freezetune-target}"
DEB="$(ls -t "$CARGO_TARGET_DIR"/release/bundle/deb/*.deb | head -1)"
RPM="$(ls -t "$CARGO_TARGET_DIR"/release/bundle/rpm/*.rpm | head -1)"
echo "package: $DEB ($(du -h "$DEB" | cut -f1)); rpm: $RPM ($(du -h "$RPM" | cut -f1))"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --reinstall "$DEB"
dpkg -L freeze-tune 2>/dev/null || dpkg -L freezetune
BIN="$(command -v freezetune-app)"
test -x "$BIN"
ls /usr/share/applications/ | grep -i freeze

WORK="$(mktemp -d /tmp/freezetune-pkg.XXXXXX)"
mkdir -p "$ROOT/test-results/package"
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
DISPLAY_NUM=":$(( 80 + RANDOM % 9 ))"
Xvfb "$DISPLAY_NUM" -screen 0 1400x1000x24 -nolisten tcp >/dev/null 2>&1 &
PIDS+=($!)
export DISPLAY="$DISPLAY_NUM"
for _ in $(seq 50); do xdpyinfo >/dev/null 2>&1 && break; sleep 0.1; done
FREEZETUNE_DATA_DIR="$WORK/data" FREEZETUNE_CONFIG_DIR="$WORK/config" HF_HUB_CACHE="$WORK/hub" HF_HUB_OFFLINE=1 \
  XDG_DATA_HOME="$WORK/xdg" NO_AT_BRIDGE=1 "$BIN" >"$ROOT/test-results/package/app.log" 2>&1 &
APP_PID=$!
PIDS+=($APP_PID)
for _ in $(seq 300); do
  if xwininfo -root -tree | grep -q '"FreezeTune"'; then break; fi
  kill -0 "$APP_PID" 2>/dev/null || { echo "the installed app exited:"; cat "$ROOT/test-results/package/app.log"; exit 1; }
  sleep 0.1
done
xwininfo -root -tree | grep '"FreezeTune"'
# The demo is written on first start; wait for it, then for the web view to draw.
for _ in $(seq 300); do test -f "$WORK/data/demo/model/config.json" && break; sleep 0.1; done
test -f "$WORK/data/demo/model/config.json"
sleep 3
import -display "$DISPLAY" -window root "$ROOT/test-results/package/window.png"
echo "screenshot: $ROOT/test-results/package/window.png"
kill "$APP_PID"
echo "package test passed"
