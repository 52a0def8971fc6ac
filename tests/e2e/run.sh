#!/usr/bin/env bash
# Runs the desktop-app tests: a virtual X display, tauri-driver (with DISPLAY in its own environment, else the app
# panics at start and the WebDriver session hangs), the app with throwaway data/config/cache folders, the CLI for
# cross-checks. Everything started here is stopped on exit.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
: "${CARGO_TARGET_DIR:=/var/tmp/freezetune-target}"
export FREEZETUNE_APP="${FREEZETUNE_APP:-$CARGO_TARGET_DIR/debug/freezetune-app}"
export FREEZETUNE_CLI="${FREEZETUNE_CLI:-$CARGO_TARGET_DIR/debug/freezetune}"
WORK="$(mktemp -d /tmp/freezetune-e2e.XXXXXX)"
FAKEHUB="${FAKEHUB:-$CARGO_TARGET_DIR/debug/fakehub}"
export FREEZETUNE_DATA_DIR="$WORK/data" FREEZETUNE_CONFIG_DIR="$WORK/config" HF_HUB_CACHE="$WORK/hub" HF_HOME="$WORK/hf"
export XDG_DATA_HOME="$WORK/xdg-data" XDG_CONFIG_HOME="$WORK/xdg-config" NO_AT_BRIDGE=1
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  pkill -f "WebKitWebDriver --port=4445" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$ROOT/test-results"

# A fake Hub on 127.0.0.1 serving the demo checkpoint as acme/tiny-llama (its weights slowed so a download can be
# cancelled mid-way) and as the gated acme/gated-llama.
"$FREEZETUNE_CLI" demo-model "$WORK/hub-src" >/dev/null
# ... and a dataset repo with two configs (its README declares them): `en` (the demo's alpaca rows, train and test
# splits) and `fr` (OpenAI messages), for the search and the dataset picker.
DS="$WORK/hub-dataset"
mkdir -p "$DS/en" "$DS/fr"
cp "$WORK/hub-src/data.jsonl" "$DS/en/train-00000-of-00001.jsonl"
head -n 3 "$WORK/hub-src/data.jsonl" >"$DS/en/test-00000-of-00001.jsonl"
for i in 1 2 3 4; do
  printf '{"messages": [{"role": "user", "content": "Bonjour %s ?"}, {"role": "assistant", "content": "Salut %s."}]}\n' "$i" "$i"
done >"$DS/fr/train.jsonl"
printf -- '---\nconfigs:\n- config_name: en\n  default: true\n  data_files:\n  - split: train\n    path: en/train-*\n  - split: test\n    path: en/test-*\n- config_name: fr\n  data_files: fr/*.jsonl\n---\n# chat data\n' >"$DS/README.md"
"$FAKEHUB" --repo acme/tiny-llama="$WORK/hub-src/model" --repo acme/gated-llama="$WORK/hub-src/model" \
  --dataset acme/chat-data="$DS" --downloads acme/tiny-llama=100 --downloads acme/chat-data=7 \
  --gated acme/gated-llama=hf_e2e_secret --slow model.safetensors=400000 >"$WORK/fakehub.url" 2>"$ROOT/test-results/fakehub.log" &
PIDS+=($!)
for _ in $(seq 100); do test -s "$WORK/fakehub.url" && break; sleep 0.1; done
export HF_ENDPOINT="$(head -1 "$WORK/fakehub.url")"

DISPLAY_NUM=":$(( 90 + RANDOM % 9 ))"
Xvfb "$DISPLAY_NUM" -screen 0 1400x1000x24 -nolisten tcp >"$ROOT/test-results/xvfb.log" 2>&1 &
PIDS+=($!)
export DISPLAY="$DISPLAY_NUM"
for _ in $(seq 50); do xdpyinfo -display "$DISPLAY" >/dev/null 2>&1 && break; sleep 0.1; done

TAURI_DRIVER="${TAURI_DRIVER:-$HOME/.cargo/bin/tauri-driver}"
"$TAURI_DRIVER" --port 4444 --native-port 4445 >"$ROOT/test-results/tauri-driver.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -sf http://127.0.0.1:4444/status >/dev/null 2>&1 && break; sleep 0.1; done

cd "$ROOT"
node --test --test-concurrency=1 ${E2E_PATTERN:+--test-name-pattern="$E2E_PATTERN"} tests/e2e/
