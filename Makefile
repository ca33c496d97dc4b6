# The two quick-start commands: `make up` and `make test`. Both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup up test lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# tcpdump reads the tests' captures back: `nicteam capture` must write what it can open.
# iproute2's `ip` makes the network namespaces the netns test emulates machines with.
# ping crosses the kernel tests' TAP relay (tests/netns/test_kernel.py).
TOOLS := $(VENV)/.tools
$(TOOLS): $(STAMP) Makefile
	command -v tcpdump >/dev/null || apt-get install -y -q tcpdump \
		|| (apt-get update -q && apt-get install -y -q tcpdump)
	command -v ip >/dev/null || apt-get install -y -q iproute2 \
		|| (apt-get update -q && apt-get install -y -q iproute2)
	command -v ping >/dev/null || apt-get install -y -q iputils-ping \
		|| (apt-get update -q && apt-get install -y -q iputils-ping)
	touch $(TOOLS)

setup: $(STAMP) $(TOOLS)

# The default cluster from the Procfile: Ctrl-C stops every process.
up: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" PYTHONUNBUFFERED=1 $(BIN)/honcho start -f Procfile

test: $(STAMP) $(TOOLS)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench.datapath
	$(BIN)/python -m bench.cluster

clean:
	rm -rf run bench/results
