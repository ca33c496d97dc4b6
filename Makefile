# The two quick-start commands: `make up` and `make test`. Both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup up test lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $(STAMP)

# The tools tests use, from Debian packages, as command:package; a machine that has every
# command installs nothing. tcpdump and tshark read the tests' captures back (`nicteam capture`
# must write what they open); iproute2's `ip` makes the network namespaces that netns VMs and
# the machines test live in, `nstat` and `ss` read their kernel's TCP counters; iperf3 and curl
# are the real applications the netns tests run through the NICs, and ping too.
TOOL_PKGS := tcpdump:tcpdump ip:iproute2 nstat:iproute2 ss:iproute2 iperf3:iperf3 curl:curl \
	tshark:tshark ping:iputils-ping
# No questions: tshark's setuid dumpcap and iperf3's daemon both stay off.
DEBCONF := "wireshark-common wireshark-common/install-setuid boolean false" \
	"iperf3 iperf3/start_daemon boolean false"
APT := DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	-o DPkg::Lock::Timeout=300
TOOLS := $(VENV)/.tools
$(TOOLS): $(STAMP) Makefile
	@missing=$$(for t in $(TOOL_PKGS); do command -v $${t%%:*} >/dev/null || echo $${t#*:}; done \
		| sort -u | tr '\n' ' '); \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing(Debian packages)"; \
		printf '%s\n' $(DEBCONF) | debconf-set-selections; \
		$(APT) $$missing || (apt-get update -q && $(APT) $$missing); \
	fi
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

bench: $(STAMP) $(TOOLS)
	$(BIN)/python -m bench.datapath
	$(BIN)/python -m bench.cluster
	$(BIN)/python -m bench.e2e

clean:
	rm -rf run bench/results
