# prvr-sdk developer entry points. A fresh clone needs only `make demo` and `make test`:
# both install into .venv first (once; again only when pyproject.toml or the constraints change).

PYTHON      ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
EXTRAS      ?= onnx,train,dev,demo
# Pins torch to the CPU build; an unpinned torch would pull a multi-GB CUDA build.
CONSTRAINTS := constraints/cpu.txt
# The CPU torch wheel lies in /opt/wheels on the lab machines.
FIND_LINKS  := $(if $(wildcard /opt/wheels),--find-links /opt/wheels)

.PHONY: install demo test bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install $(FIND_LINKS) -e ".[$(EXTRAS)]" -c $(CONSTRAINTS)
	touch $@

# Until the retrieval pipeline exists, the demo runs the most end-to-end parts that work today.
demo: install
	@echo "prvr-sdk demo: the retrieval pipeline is not built yet, so this runs what works end to end today."
	@echo ""
	@echo "==> prvr doctor: installed packages, accelerators and selective-scan backends"
	$(VENV)/bin/prvr doctor
	@echo ""
	@echo "==> bench/scan.py --size S: fast selective scan vs the naive sequential reference"
	$(PY) bench/scan.py --size S
	@echo ""
	@echo "==> The full retrieval demo (encode videos, build an index, search with a sentence) lands with the runtime SDK."

test: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) bench/scan.py

lint: install
	$(VENV)/bin/ruff check sdk export cli tests bench

# Build and test caches only; .venv stays (remove it by hand to reinstall from scratch).
clean:
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
