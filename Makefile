# The two commands of the README: `make run` (the local stack with simulated traffic, detection and
# dashboard) and `make test`. Both install what they need first (scripts/setup.sh is idempotent).
PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: setup run test test-fast test-faults bench screenshots clean

setup:
	PYTHON=$(PYTHON) bash scripts/setup.sh

run: setup
	$(PYTHON) -m mailaudit run

test: setup
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

# Only the pure/unit tests: no servers started.
test-fast: setup
	$(PYTHON) -m pytest -q -m "not servers and not faults and not browser" $(PYTEST_ARGS)

test-faults: setup
	$(PYTHON) -m pytest -q -m faults $(PYTEST_ARGS)

bench: setup
	$(PYTHON) -m mailaudit bench all --json

screenshots: setup
	$(PYTHON) -m mailaudit.dashboard.screenshots

clean:
	-$(PYTHON) -m mailaudit stack down
	rm -rf .mailaudit build *.egg-info
