# Two commands set everything up:  `make demo`  and  `make test`.
# Each installs what it needs into .venv (once; later runs only check stamps).

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# Docker's compose plugin, built from source only where `docker compose` is missing,
# so `docker compose config` can validate docker-compose.yml without an engine.
COMPOSE_VERSION := v2.39.4
COMPOSE_PLUGIN := $(VENV)/docker/cli-plugins/docker-compose
# DSPy in a virtualenv of its own, for the DSPy comparison benchmark (whose
# quick run is a test) and the DSPy-saved test fixtures; made before the tests
# so that nothing is installed from the network while they run.
DSPY_VENV := $(VENV)/bench-dspy/.requirements-sha256
# Debian's prometheus package provides promtool (config and rule checks in `make test`)
# and the server the observability tests start; root installs it without sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help install demo test lint typecheck unit bench clean distclean stop example-sentiment example-qa dspy-fixtures

help:  ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# llama-cpp-python is built from its sdist the first time (~4 min on 2 cores);
# pip caches the wheel, so later installs take seconds.
$(INSTALLED): pyproject.toml constraints.txt | $(BIN)/python
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/python -m pip install \
	    --constraint constraints.txt --editable '.[local-lm,test,dev]'
	touch $@

install: $(INSTALLED)  ## Install Python packages, the Kafka broker jars and Prometheus.
	$(BIN)/dspex broker fetch
	@if ! command -v promtool >/dev/null 2>&1; then \
	    echo "installing Debian's prometheus package (promtool and the server)"; \
	    $(SUDO) apt-get update && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus && \
	    { $(SUDO) systemctl disable --now prometheus 2>/dev/null || \
	      $(SUDO) service prometheus stop 2>/dev/null || true; }; \
	fi

$(COMPOSE_PLUGIN):
	@if docker compose version >/dev/null 2>&1; then \
	    echo "docker compose is installed; using it"; \
	else \
	    echo "building docker compose $(COMPOSE_VERSION) from source (once)"; \
	    bash infra/docker/build-compose-plugin.sh $(COMPOSE_VERSION) $@; \
	fi

demo: install  ## Start broker, local LM and a worker; send requests through Kafka.
	$(BIN)/dspex up
	$(BIN)/dspex submit sentiment --input review="I love this kettle, it boils in a minute."
	$(BIN)/dspex submit qa --input question="What do bees make?"
	@echo "broker, LM and worker keep running: try 'dspex submit', 'dspex programs list'; stop with: make stop"

example-sentiment: install  ## Run the sentiment classifier example on the local LM.
	$(BIN)/dspex lm serve --detach
	$(BIN)/python examples/sentiment.py

example-qa: install  ## Run the short-answer QA example on the local LM.
	$(BIN)/dspex lm serve --detach
	$(BIN)/python examples/qa.py

bench: install  ## Run the benchmarks: bench/results/*.json, then docs/benchmarks.md and docs/reliability.md.
	$(BIN)/python -m bench.lm_client_overhead
	$(BIN)/python -m bench.lm_client_scaling
	$(BIN)/python -m bench.pipeline_overhead --profile bench/results/pipeline_overhead_worker.svg
	$(BIN)/python -m bench.optimize_executors
	$(BIN)/python -m bench.eval_memory
	$(BIN)/python -m bench.inference_memory
	$(BIN)/python -m bench.dspy_compare
	$(BIN)/python -m bench.sustained_rate
	$(BIN)/python -m bench.real_lm
	$(BIN)/python -m bench.chaos
	$(BIN)/python -m bench.report

stop:  ## Stop what `make demo` started (worker, LM server, broker).
	$(BIN)/dspex down

lint: $(INSTALLED)  ## ruff.
	$(BIN)/ruff check dspex tests bench examples
	$(BIN)/ruff format --check dspex tests bench examples

typecheck: $(INSTALLED)  ## mypy --strict on the package.
	$(BIN)/mypy --strict dspex

test: install $(COMPOSE_PLUGIN) $(DSPY_VENV) lint typecheck  ## Lint, type-check, then every test tier.
	$(BIN)/python -m pytest tests

$(DSPY_VENV): bench/dspy-requirements.txt | $(INSTALLED)
	$(BIN)/python -c "from bench.dspy_compare import ensure_dspy_venv; ensure_dspy_venv()"
	touch $@

dspy-fixtures: install $(DSPY_VENV)  ## Re-save the DSPy programs the tests load, with DSPy itself.
	$(VENV)/bench-dspy/bin/python -I tests/unit/programs/fixtures/dspy/generate.py

unit: $(INSTALLED)  ## Only the tests that need neither broker nor LM.
	$(BIN)/python -m pytest tests/unit

clean:  ## Remove caches, build output and the fetched broker jars (keeps .venv).
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info infra/kafka/target
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +

distclean: clean  ## Also remove .venv.
	rm -rf $(VENV)
