#!/usr/bin/env bash
# Sets up what `make run` and `make test` need on a fresh Linux (Debian/Ubuntu/Fedora) or macOS machine.
# Idempotent: each step checks first and does nothing when the tool is already there.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif have sudo; then sudo "$@"; else echo "need root for: $*" >&2; return 1; fi; }

# A C toolchain (linker for Rust).
if ! have cc; then
  if have apt-get; then as_root apt-get update -qq && as_root apt-get install -y -qq build-essential pkg-config curl
  elif have dnf; then as_root dnf install -y gcc make pkgconf-pkg-config curl
  elif [ "$(uname)" = Darwin ]; then xcode-select --install || true
  fi
fi

# Linux libraries and tools: D-Bus for the OS keyring (Secret Service), WebKitGTK for the desktop app; for the tests
# a virtual display (Xvfb), WebKit's WebDriver and chromium (Playwright); OpenBLAS, which FreezeTune can load at run
# time (FREEZETUNE_BLAS) and whose layouts the tests check. The package index is refreshed first: a stale one cannot
# resolve the -dev packages against already-updated libraries.
if [ "$(uname)" = Linux ]; then
  if have apt-get; then
    need=()
    for pkg in pkg-config libdbus-1-dev libwebkit2gtk-4.1-dev librsvg2-dev xvfb x11-utils webkit2gtk-driver chromium curl libopenblas0-pthread; do
      dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
    done
    if [ "${#need[@]}" -gt 0 ]; then
      as_root apt-get update -qq
      DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need[@]}"
    fi
  elif have dnf; then
    rpm -q webkit2gtk4.1-devel >/dev/null 2>&1 || as_root dnf install -y pkgconf-pkg-config dbus-devel \
      webkit2gtk4.1-devel librsvg2-devel xorg-x11-server-Xvfb xdpyinfo webkit2gtk4.1 chromium curl openblas
  fi
fi

# Node.js 20+ and npm for the UI (Vite 7 needs 20.19 or newer).
if ! have node; then
  if have apt-get; then DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq nodejs npm
  elif have dnf; then as_root dnf install -y nodejs npm
  elif have brew; then brew install node
  fi
fi
node_major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
if [ "$node_major" -lt 20 ]; then
  echo "FreezeTune's UI needs Node.js 20 or newer (found $(node --version 2>/dev/null || echo none)); install it from https://nodejs.org or your package manager" >&2
  exit 1
fi

# Rust, through rustup, when cargo is missing.
if ! have cargo && [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
if ! have cargo; then
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy
  export PATH="$HOME/.cargo/bin:$PATH"
fi

# rustfmt and clippy, for `make test`.
if have rustup; then
  cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
  cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
fi
# tauri-driver (WebDriver for the desktop app tests; Linux only — there is no WebDriver for WKWebView).
if [ "$(uname)" = Linux ] && ! "$HOME/.cargo/bin/tauri-driver" --help >/dev/null 2>&1; then
  cargo install tauri-driver --version 2.1.0 --locked
fi

# The UI's npm packages, when package-lock.json changed since the last install.
if [ ! -f ui/node_modules/.package-lock.json ] || [ ui/package-lock.json -nt ui/node_modules/.package-lock.json ]; then
  (cd ui && npm ci --no-audit --no-fund)
fi
cargo --version
