# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint bench soak soak-handshakes clean

install: $(STAMP)
	@echo "chardev-bridge is installed in $(BIN)/: run $(BIN)/chardev-bridge, or put it on PATH"
	@echo "  with: export PATH=\"$(CURDIR)/$(BIN):\$$PATH\"   (or install it for your user: pipx install .)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,lint,psk]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m chardev_bridge.demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench soak
	$(BIN)/ruff format --check src tests bench soak
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/bench_serve.py

# 30 minutes of churn (not in CI): reconnects, bad connections, random payloads checked by sha256.
soak: $(STAMP)
	$(BIN)/python soak/soak.py --minutes 30

# A listening bridge's memory over 100,000 TLS and 100,000 PSK handshakes (not in CI, ~15 min).
soak-handshakes: $(STAMP)
	$(BIN)/python soak/handshakes.py --count 100000
	$(BIN)/python soak/handshakes.py --count 100000 --psk

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
