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

# The demo: what works end to end today (the Retriever, index CLI and search land with the runtime issue).
DEMO_DIR    ?= runs/demo
DEMO_VIDEOS ?= 400
DEMO_EPOCHS ?= 6

demo: install
	@echo "==> prvr doctor: installed packages, accelerators and selective-scan backends"
	$(VENV)/bin/prvr doctor
	@echo ""
	@echo "==> selective scan: fast op vs the naive sequential reference (bench/scan.py --size S)"
	$(PY) bench/scan.py --size S
	@echo ""
	@echo "==> demo corpus: $(DEMO_VIDEOS) untrimmed videos with captioned events (prvr data demo)"
	$(VENV)/bin/prvr data demo --out $(DEMO_DIR)/data --num-videos $(DEMO_VIDEOS) --overwrite
	@echo ""
	@echo "==> train AMDNet on it for $(DEMO_EPOCHS) epochs (prvr train), then evaluate on the test split"
	rm -rf $(DEMO_DIR)/amdnet
	$(VENV)/bin/prvr train --model amdnet --dataset demo --data-root $(DEMO_DIR)/data \
		--out $(DEMO_DIR)/amdnet --epochs $(DEMO_EPOCHS) --config max_es_cnt=$(DEMO_EPOCHS)
	$(VENV)/bin/prvr eval --checkpoint $(DEMO_DIR)/amdnet --data-root $(DEMO_DIR)/data --split test
	@echo ""
	@echo "==> export it to a validated ONNX bundle (prvr export: ONNX Runtime vs torch parity table)"
	$(VENV)/bin/prvr export --model amdnet --checkpoint $(DEMO_DIR)/amdnet --out $(DEMO_DIR)/bundle-amdnet
	@echo ""
	@echo "==> Done. Chance SumR on the test split is 100*(1+5+10+100)/num_test_videos."
	@echo "    The Retriever, the index CLI and sentence search land with the runtime issue."

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
