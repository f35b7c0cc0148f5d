# The two commands a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STACK := $(PYTHON) deploy/local/stack.py

.PHONY: install up down test unit demo bench clean

$(BIN)/anomaly-stream: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/anomaly-stream

up:
	$(STACK) up

down:
	$(STACK) down

# The broker of the fault tests' second run: Kafka 4 dropped EOS v1 from Kafka Streams, not from
# the broker, and exactly_once here is Faust's per-partition transactional producers (EOS v1).
KAFKA4_VERSION ?= 4.1.1

# Starts the stack, runs every test (unit and integration), stops the stack whatever happened;
# then the fault tests again against Kafka 4 (KAFKA_VERSION also for pytest: the broker
# restart test restarts the broker it found).
test: install
	$(STACK) up
	$(BIN)/pytest -q -p no:cacheprovider --durations=25; status=$$?; $(STACK) down; [ $$status -eq 0 ] || exit $$status
	KAFKA_VERSION=$(KAFKA4_VERSION) $(STACK) up
	KAFKA_VERSION=$(KAFKA4_VERSION) $(BIN)/pytest -q -p no:cacheprovider --durations=10 tests/integration/test_faults.py; \
		status=$$?; $(STACK) down; exit $$status

unit: install
	$(BIN)/pytest -q -m "not integration"

demo: install
	$(STACK) up
	$(BIN)/python deploy/local/demo.py; status=$$?; $(STACK) down; exit $$status

bench: install
	$(STACK) up
	status=0; for bench in throughput scaling recovery memory serving; do \
		$(BIN)/python benchmarks/$$bench.py --short || status=1; \
	done; $(STACK) down; exit $$status

clean: down
	rm -rf $(VENV) .stack
