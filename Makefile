# luigi_phot: the two commands a new user needs are `make demo` and `make test`.
# Both create the virtual environment .venv first (Python 3.12/3.13, found by
# scripts/find_python.sh; override with `make PYTHON=/path/to/python3.12 ...`).

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo demo-tree test bench tom-setup clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@interp=$$(PYTHON="$(PYTHON)" ./scripts/find_python.sh) || exit 1; \
	echo "Using $$interp ($$($$interp -V 2>&1))"; \
	[ -x $(PY) ] || $$interp -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

# Generate a synthetic LCO-like dataset in demo/ and reduce it with
# `luigi --module luigi_phot ReduceDataset --red-dir ... --local-scheduler`.
demo: venv
	$(PY) scripts/demo.py

# A small reduction tree (2 targets x 2 instruments x 1-2 filters, observed on the last
# three nights) in demo/tree/ and a manager configuration that selects it: for the
# ReductionManager and luigid's visualiser (README section 5).
demo-tree: venv
	$(PY) scripts/demo_tree.py

# The test suite. Sets up the local TOM Toolkit server environment (.tom/) once;
# the tests themselves start and stop luigid and the TOM on 127.0.0.1 (free ports,
# throw-away directories). Two test files at a time (pytest-xdist): run one after the
# other the suite keeps only one of two cores busy (108% CPU, 17 min 27 s; 13 min 15 s so).
test: venv tom-setup
	$(VENV)/bin/pytest -q -n 2 --dist loadfile

tom-setup:
	PYTHON="$$(PYTHON="$(PYTHON)" ./scripts/find_python.sh)" ./scripts/tom_server.sh setup

bench: venv
	$(PY) benchmarks/run_benchmarks.py

clean:
	rm -rf $(VENV) .tom demo build *.egg-info
