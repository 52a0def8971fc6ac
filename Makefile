# The README's commands. `make run` opens FreezeTune on the built-in demo model; `make test` runs every test.
# Both set up what they need first (scripts/setup.sh). Builds go to CARGO_TARGET_DIR, outside the clone, so CI
# and later builds reuse them.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= /var/tmp/freezetune-target
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo
BIN := $(CARGO_TARGET_DIR)/release/freezetune
DEMO_DIR ?= $(HOME)/.local/share/freezetune/demo

APP := $(CARGO_TARGET_DIR)/release/freezetune-app
TAURI := ui/node_modules/.bin/tauri
# The app trains in a worker process, the CLI (src-tauri/src/worker): on macOS the worker has the Metal backend and
# the bundles are .app/.dmg; Linux bundles .deb/.rpm. The app itself never links a GPU backend.
ifeq ($(shell uname),Darwin)
WORKER_FEATURES := --features metal
BUNDLES := app,dmg
else
WORKER_FEATURES :=
BUNDLES := deb,rpm
endif

# CUDA builds go to a target dir of their own, so the CPU build's cache is never rebuilt with other features.
# CUDA=1 adds the CUDA edition's worker, freezetune-cuda, to `make run` and `make bundle`.
CUDA_TARGET_DIR ?= /var/tmp/freezetune-target-cuda
CUDA_WORKER_DIR := $(CUDA_TARGET_DIR)/freezetune-cuda
CUDA_DEPS := $(if $(CUDA),cuda-worker)

.PHONY: setup run demo-cli test lint unit ui ui-test e2e bundle bench fuzz check-cuda gpu-check gpu-bundle worker cuda-worker

setup:
	@bash scripts/setup.sh

## run: build the UI and the desktop app, and open it; on first start it writes the built-in demo model and opens
## it, so the whole flow (pick layers, train, watch the loss, save a preset) works offline.
run: setup ui worker $(CUDA_DEPS)
	$(CARGO) build --release --locked -p freezetune-app
	$(if $(CUDA),FREEZETUNE_CUDA_WORKER="$(CUDA_WORKER_DIR)/freezetune-cuda") "$(APP)"

## worker: the training worker (the CLI), built beside the app and staged as the bundle's sidecar
## (src-tauri/binaries/freezetune-<target triple>, what Tauri's externalBin wants).
worker: setup
	$(CARGO) build --release --locked -p freezetune-cli $(WORKER_FEATURES)
	mkdir -p src-tauri/binaries
	cp "$(BIN)" "src-tauri/binaries/freezetune-$$(rustc -vV | sed -n 's/^host: //p')"

## cuda-worker: the CUDA edition's worker, freezetune-cuda, with NVIDIA's CUDA 13 libraries beside it, staged in
## $(CUDA_WORKER_DIR) (scripts/cuda-worker.sh; needs no GPU).
cuda-worker: setup
	bash scripts/cuda-worker.sh "$(CUDA_WORKER_DIR)"

## demo-cli: the same demo walked through with the CLI: inspect, plan, preview the data, train once, generate.
demo-cli: setup
	$(CARGO) build --release --locked -p freezetune-cli
	@test -f "$(DEMO_DIR)/model/config.json" || "$(BIN)" demo-model "$(DEMO_DIR)"
	"$(BIN)" inspect "$(DEMO_DIR)/model"
	@echo
	"$(BIN)" plan "$(DEMO_DIR)/model" --layers 4-7 --extra norm
	@echo
	"$(BIN)" data preview "$(DEMO_DIR)/run.toml" -n 1
	@echo
	@test -f "$(DEMO_DIR)/runs/demo/final/model.safetensors" || "$(BIN)" train --config "$(DEMO_DIR)/run.toml"
	@echo; echo "base model:"; "$(BIN)" generate "$(DEMO_DIR)/model" --prompt "What is 3 plus 4?" --max-new-tokens 12
	@echo "fine-tuned:"; "$(BIN)" generate "$(DEMO_DIR)/runs/demo/final" --prompt "What is 3 plus 4?" --max-new-tokens 12

## test: formatting, lints and type checks, UI unit and browser tests, every Rust test, the desktop app end to end.
test: setup ui lint ui-test unit check-cuda gpu-check e2e

## ui: the front end, built into ui/dist (the app embeds it at compile time).
ui: setup
	cd ui && npm run build

lint: ui
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	cd ui && npm run check

ui-test: ui
	cd ui && npx vitest run
	cd ui && node --test tests/browser/

## unit: every Rust test, then PyTorch parity again on the device-generic path (FREEZETUNE_FUSED=0: the graph CUDA
## and Metal run, here on the CPU), then 5 s of each fuzz target (`make fuzz` runs longer). The GGUF tests check
## exported files with llama.cpp itself and its `gguf` package, and the export-run test trains its bundle with
## LLaMA-Factory, all from one venv outside the clone (scripts/python-venv.sh, about 8 minutes the first time); the
## Axolotl bundles are validated and trained by Axolotl from its own venv (scripts/axolotl-venv.sh: its pins
## conflict with LLaMA-Factory's; about 6 minutes the first time).
unit: ui
	PY="$$(bash scripts/python-venv.sh)" && AX="$$(bash scripts/axolotl-venv.sh)" && \
	  FREEZETUNE_GGUF_PYTHON="$$PY" FREEZETUNE_LF_PYTHON="$$PY" FREEZETUNE_AXOLOTL_PYTHON="$$AX" \
	  $(CARGO) test --workspace --locked
	FREEZETUNE_FUSED=0 $(CARGO) test --locked -p freezetune-train --test families --test parity --test mixed_precision --test fp8
	$(CARGO) build --locked -q -p freezetune-fuzz
	bash -c 'ulimit -v 4194304 && exec "$(CARGO_TARGET_DIR)/debug/fuzz" --seconds 5 --seed 1'

e2e: ui
	$(CARGO) build --locked -p freezetune-app -p freezetune-cli -p freezetune-fakehub --bins
	bash tests/e2e/run.sh

## check-cuda: the CUDA worker builds and links against NVIDIA's CUDA 13 libraries (kernels included), as the CUDA
## edition and the GPU bundle build it (scripts/cuda-worker.sh). nvcc and the libraries come from NVIDIA's wheels on
## PyPI, installed once outside the clone (scripts/cuda-toolkit.sh); the build is cached in $(CUDA_TARGET_DIR). No GPU
## is needed.
check-cuda: ui
	bash scripts/cuda-worker.sh "$(CUDA_WORKER_DIR)"

## gpu-bundle: the GPU check as a folder (gpu-bundle/, under 64 MiB) that a GPU machine without cargo runs as it is:
## `bash gpu-bundle/run.sh` (scripts/gpu-bundle.sh; docs/gpu.md).
gpu-bundle: setup
	bash scripts/gpu-bundle.sh

## gpu-check: parity, the freeze mask and a benchmark on a device (scripts/gpu-check.sh); in `make test` on the CPU
## with a small model, so the script a lent GPU machine runs cannot rot.
## It uses the debug CLI `make unit` builds (the same features, so nothing is rebuilt).
gpu-check: setup ui
	$(CARGO) test --workspace --locked --no-run -q
	FREEZETUNE_BIN=$(BIN:release/freezetune=debug/freezetune) bash scripts/gpu-check.sh --device cpu

## bundle: installers in $(CARGO_TARGET_DIR)/release/bundle: .deb and .rpm on Linux, then the .deb installed on this
## machine and started under Xvfb as a test of the package; .app and .dmg on macOS. The worker rides along as the
## bundle's sidecar. CUDA=1 also builds the CUDA edition's own .deb/.rpm (freezetune-cuda, scripts/cuda-package.sh)
## into $(CUDA_TARGET_DIR)/packages and tests it installed beside the CPU app.
bundle: setup ui worker $(CUDA_DEPS)
	$(TAURI) build --bundles $(BUNDLES) --ci --config src-tauri/tauri.bundle.json
	@if [ "$$(uname)" = Linux ]; then bash tests/e2e/package.sh; fi
	$(if $(CUDA),bash scripts/cuda-package.sh "$(CUDA_WORKER_DIR)" "$(CUDA_TARGET_DIR)/packages")
	$(if $(CUDA),bash tests/e2e/package.sh --cuda "$(CUDA_TARGET_DIR)/packages")

## fuzz: every fuzz target (GGUF, safetensors, config.json, tokenizer.json, chat templates, datasets, Parquet, Arrow) for
## FUZZ_SECONDS each, optimized, under a 4 GiB address-space limit, from a new random seed each time (printed);
## `make test` runs 5 s of each from a fixed seed, so CI is repeatable. A panic's input
## lands in fuzz/crashes/ (keep it in fuzz/regressions/<target>/ once fixed; every run replays those first).
FUZZ_SECONDS ?= 120
fuzz: setup
	$(CARGO) build --release --locked -p freezetune-fuzz
	bash -c 'ulimit -v 4194304 && exec "$(CARGO_TARGET_DIR)/release/fuzz" --seconds $(FUZZ_SECONDS)'

## bench: benchmark programs that print their numbers (bench-quantized writes a 13.5 GB 7B-shaped checkpoint to
## /var/tmp once, and its unquantized run needs about 20 GB of memory).
bench: setup
	$(CARGO) run --release --locked -p freezetune-bench --bin bench-inspect
	$(CARGO) run --release --locked -p freezetune-bench --bin bench-download -- 1024
	$(CARGO) run --release --locked -p freezetune-bench --bin bench-matmul
	$(CARGO) run --release --locked -p freezetune-bench --bin bench-train
	$(CARGO) run --release --locked -p freezetune-bench --bin bench-quantized
	$(CARGO) run --release --locked -p freezetune-bench --bin bench-data-preview
