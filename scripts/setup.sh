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

# Linux build libraries: D-Bus for the OS keyring (Secret Service).
if [ "$(uname)" = Linux ] && ! { have pkg-config && pkg-config --exists dbus-1; }; then
  if have apt-get; then as_root apt-get update -qq && as_root apt-get install -y -qq pkg-config libdbus-1-dev
  elif have dnf; then as_root dnf install -y pkgconf-pkg-config dbus-devel
  fi
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
cargo --version
