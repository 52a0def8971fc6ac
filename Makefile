# The README's commands. `make run` opens FreezeTune on the built-in demo model; `make test` runs every test.
# Both set up what they need first (scripts/setup.sh). Builds go to CARGO_TARGET_DIR, outside the clone, so CI
# and later builds reuse them.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= /var/tmp/freezetune-target
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo
BIN := $(CARGO_TARGET_DIR)/release/freezetune
DEMO_DIR ?= $(HOME)/.local/share/freezetune/demo

.PHONY: setup run test lint unit bench

setup:
	@bash scripts/setup.sh

## run: build the CLI and walk through the built-in demo (until the desktop app lands): write the demo model,
## show it, plan a freeze, fine-tune it (once), and compare the base and fine-tuned answers.
run: setup
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

## test: formatting, lints and every test of the workspace.
test: setup lint unit

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit:
	$(CARGO) test --workspace --locked

## bench: benchmark programs that print their numbers.
bench: setup
	$(CARGO) run --release --locked -p freezetune-bench --bin bench-inspect
	$(CARGO) run --release --locked -p freezetune-bench --bin bench-download -- 1024
	$(CARGO) run --release --locked -p freezetune-bench --bin bench-train
