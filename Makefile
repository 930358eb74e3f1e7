# prvr-sdk developer entry points. A fresh clone needs only `make demo` and `make test`:
# both install into .venv first (once; again only when pyproject.toml or the constraints change).

PYTHON      ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
EXTRAS      ?= onnx,train,dev,demo,plugins,qdrant,ray,serve
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
	@# Bytecode for the editable sources now: where PYTHONDONTWRITEBYTECODE is set, every `prvr` call would
	@# otherwise compile them again (~0.1 s of each start).
	$(PY) -m compileall -q sdk cli export plugins > /dev/null
	touch $@

# The demo, end to end: corpus -> train two models -> export -> index -> sentence search -> torch vs ORT.
DEMO_DIR    ?= runs/demo
DEMO_VIDEOS ?= 400
DEMO_EPOCHS ?= 6
DEMO_DATA   := $(DEMO_DIR)/data
DEMO_MODELS := amdnet mamfusion
PRVR        := $(VENV)/bin/prvr

demo: install
	@echo "==> prvr doctor: installed packages, accelerators, selective-scan backends, runtime backend"
	$(PRVR) doctor
	@echo ""
	@echo "==> selective scan: fast op vs the naive sequential reference (bench/scan.py --size S)"
	$(PY) bench/scan.py --size S
	@echo ""
	@echo "==> demo corpus: $(DEMO_VIDEOS) untrimmed videos with captioned events (prvr data demo)"
	$(PRVR) data demo --out $(DEMO_DATA) --num-videos $(DEMO_VIDEOS) --overwrite
	@for m in $(DEMO_MODELS); do \
		echo ""; echo "==> $$m: train $(DEMO_EPOCHS) epochs (prvr train), evaluate with torch (prvr eval)"; \
		rm -rf $(DEMO_DIR)/$$m; \
		$(PRVR) train --model $$m --dataset demo --data-root $(DEMO_DATA) --out $(DEMO_DIR)/$$m \
			--epochs $(DEMO_EPOCHS) --config max_es_cnt=$(DEMO_EPOCHS) || exit $$?; \
		$(PRVR) eval --checkpoint $(DEMO_DIR)/$$m --data-root $(DEMO_DATA) --split test || exit $$?; \
		echo ""; echo "==> $$m: export a validated ONNX bundle with its MiniLM text front end (prvr export)"; \
		$(PRVR) export --model $$m --checkpoint $(DEMO_DIR)/$$m --out $(DEMO_DIR)/bundle-$$m --overwrite || exit $$?; \
		echo ""; echo "==> $$m: the same evaluation through the bundle with ONNX Runtime, no torch model"; \
		$(PRVR) eval --bundle $(DEMO_DIR)/bundle-$$m --data-root $(DEMO_DATA) --split test || exit $$?; \
		echo ""; echo "==> $$m: the whole serving path: caption strings through the bundle's MiniLM front end"; \
		$(PRVR) eval --bundle $(DEMO_DIR)/bundle-$$m --data-root $(DEMO_DATA) --split test --text strings || exit $$?; \
		echo ""; echo "==> $$m: index every demo video (prvr index build)"; \
		$(PRVR) index build --bundle $(DEMO_DIR)/bundle-$$m --features $(DEMO_DATA)/demo/FeatureData/demo_frames_vid_features.hdf5 \
			--metadata $(DEMO_DATA)/demo/videos.jsonl --fps 1 --out $(DEMO_DIR)/index-$$m --overwrite || exit $$?; \
	done
	@echo ""
	@echo "==> amdnet: int8 + fp16 encoders calibrated on the demo features; fp32 / int8 / fp16 side by side (prvr calibrate)"
	$(PRVR) calibrate $(DEMO_DIR)/bundle-amdnet --data $(DEMO_DATA)/demo/FeatureData/demo_frames_vid_features.hdf5 \
		--queries $(DEMO_DATA)/demo/TextData/minilm_sent_demo_query_feat.hdf5 --eval-data $(DEMO_DATA) --split test
	@echo ""
	@echo "==> prvr search: one sentence, the top 5 videos and the moment in each"
	$(PRVR) search --index $(DEMO_DIR)/index-amdnet --top-k 5 "a man in a black hat paints a picture"
	@for m in $(DEMO_MODELS); do \
		echo ""; echo "==> $$m: test queries as sentences (no torch), top hit next to the true video and span"; \
		$(PY) examples/search_demo.py --bundle $(DEMO_DIR)/bundle-$$m --index $(DEMO_DIR)/index-$$m \
			--data-root $(DEMO_DATA) --num-queries 8 || exit $$?; \
	done
	@echo ""
	@echo "==> Done. The torch and ONNX Runtime tables above must agree; chance SumR is 100*(1+5+10+100)/test videos."

test: install
	$(PY) -m pytest -q -m "not slow"

# GPU tests on a GPU host: swap the CPU onnxruntime for onnxruntime-gpu, add TensorRT (extra `gpu`), run
# `pytest -m gpu`. Both onnxruntime wheels write the same package, so both go first and onnxruntime-gpu is
# installed afresh. torch stays the CPU build: tests marked gpu("torch") skip and say so. A later
# `make install` after a pyproject change reinstalls the CPU onnxruntime over it (prvr doctor warns).
GPU_INDEX ?= --extra-index-url https://pypi.nvidia.com
.PHONY: test-gpu
test-gpu: install
	$(PY) -m pip uninstall -y onnxruntime onnxruntime-gpu
	$(PY) -m pip install $(FIND_LINKS) $(GPU_INDEX) -e ".[gpu]" -c $(CONSTRAINTS)
	$(PY) -m pytest -q -m gpu

bench: install
	$(PY) bench/scan.py

lint: install
	$(VENV)/bin/ruff check sdk export cli tests bench

# Build and test caches only; .venv stays (remove it by hand to reinstall from scratch).
clean:
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
