#!/usr/bin/env bash
# Tests the .deb built by `make bundle`: installs it with apt (which pulls its declared dependencies), checks the
# installed files (the app and its worker), starts the installed app under Xvfb with throwaway data folders, waits
# for its window to appear, takes a screenshot (test-results/package/window.png), and closes it.
# With --cuda DIR it then installs the CUDA edition's .deb from DIR beside it and starts the app again: the CUDA
# worker must be found, and on a machine without an NVIDIA driver the app must say so in one line and keep the CPU.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
: "${CARGO_TARGET_DIR:=/var/tmp/freezetune-target}"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
# The screenshot needs ImageMagick's `import`; only this test does, so it is installed here rather than by setup.sh.
command -v import >/dev/null || DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq imagemagick >/dev/null
LOGS="$ROOT/test-results/package"
mkdir -p "$LOGS"
WORK="$(mktemp -d /tmp/freezetune-pkg.XXXXXX)"
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
DISPLAY_NUM=":$(( 80 + RANDOM % 9 ))"
Xvfb "$DISPLAY_NUM" -screen 0 1400x1000x24 -nolisten tcp >/dev/null 2>&1 &
PIDS+=($!)
export DISPLAY="$DISPLAY_NUM"
for _ in $(seq 50); do xdpyinfo >/dev/null 2>&1 && break; sleep 0.1; done

# Starts the installed app with fresh data folders, waits for its window and the demo, screenshots it as $1.png,
# leaves its log in $LOGS/$1.log and closes it.
start_app() {
  local name="$1" data="$WORK/$1"
  FREEZETUNE_DATA_DIR="$data/data" FREEZETUNE_CONFIG_DIR="$data/config" HF_HUB_CACHE="$data/hub" HF_HUB_OFFLINE=1 \
    XDG_DATA_HOME="$data/xdg" NO_AT_BRIDGE=1 RUST_LOG=info "$BIN" >"$LOGS/$name.log" 2>&1 &
  local pid=$!
  PIDS+=($pid)
  for _ in $(seq 300); do
    if xwininfo -root -tree | grep -q '"FreezeTune"'; then break; fi
    kill -0 "$pid" 2>/dev/null || { echo "the installed app exited:"; cat "$LOGS/$name.log"; exit 1; }
    sleep 0.1
  done
  xwininfo -root -tree | grep '"FreezeTune"'
  # The demo is written on first start; wait for it, then for the web view to draw and the device probe to log.
  for _ in $(seq 300); do test -f "$data/data/demo/model/config.json" && break; sleep 0.1; done
  test -f "$data/data/demo/model/config.json"
  for _ in $(seq 100); do grep -q 'devices:' "$LOGS/$name.log" && break; sleep 0.1; done
  sleep 2
  import -display "$DISPLAY" -window root "$LOGS/$name.png"
  echo "screenshot: $LOGS/$name.png"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

DEB="$(ls -t "$CARGO_TARGET_DIR"/release/bundle/deb/*.deb | head -1)"
RPM="$(ls -t "$CARGO_TARGET_DIR"/release/bundle/rpm/*.rpm | head -1)"
echo "package: $DEB ($(du -h "$DEB" | cut -f1)); rpm: $RPM ($(du -h "$RPM" | cut -f1))"
DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --reinstall "$DEB"
dpkg -L freeze-tune 2>/dev/null || dpkg -L freezetune
BIN="$(command -v freezetune-app)"
test -x "$BIN"
# The worker is the bundle's sidecar, beside the app.
test -x "$(dirname "$BIN")/freezetune"
"$(dirname "$BIN")/freezetune" devices
ls /usr/share/applications/ | grep -i freeze

if [ "${1:-}" != --cuda ]; then
  start_app window
  grep 'devices:' "$LOGS/window.log"
  echo "package test passed"
  exit 0
fi

CUDA_DEB="$(ls -t "${2:?the folder of the CUDA packages}"/freezetune-cuda_*.deb | head -1)"
echo "CUDA package: $CUDA_DEB ($(du -h "$CUDA_DEB" | cut -f1))"
DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --reinstall "$CUDA_DEB"
# Removed again on exit: an installed CUDA edition would change what every later app on this machine finds.
trap 'cleanup; DEBIAN_FRONTEND=noninteractive as_root apt-get remove -y -qq freezetune-cuda >/dev/null' EXIT
test -x /usr/lib/freezetune-cuda/freezetune-cuda && test -L /usr/bin/freezetune-cuda
if /usr/lib/freezetune-cuda/freezetune-cuda devices --json >"$WORK/cuda-devices.json" 2>"$WORK/cuda-devices.err"; then
  echo "this machine has a driver; the CUDA worker lists: $(cat "$WORK/cuda-devices.json")"
  start_app cuda-window
  grep 'devices:' "$LOGS/cuda-window.log"
else
  grep -q 'libcuda.so.1' "$WORK/cuda-devices.err" || { echo "the CUDA worker failed otherwise:"; cat "$WORK/cuda-devices.err"; exit 1; }
  echo "no NVIDIA driver here: $(head -1 "$WORK/cuda-devices.err")"
  start_app cuda-window
  grep -q "freezetune-cuda cannot start: the NVIDIA driver's libcuda.so.1 is not installed" "$LOGS/cuda-window.log" \
    || { echo "the app did not report the CUDA worker's failure:"; cat "$LOGS/cuda-window.log"; exit 1; }
  grep "CUDA" "$LOGS/cuda-window.log"
  grep 'devices: CPU' "$LOGS/cuda-window.log"
fi
echo "CUDA package test passed"
