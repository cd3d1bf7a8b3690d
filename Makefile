# Two commands on a fresh clone: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXTRAS ?= export,llama,dev
DEMO_MODEL := .cache/demo-tiny-random
DEMO_IMAGE := examples/shapes.png
DEMO_PROMPT ?= What color is the circle?

.PHONY: install demo test test-slow lint clean

# torch first, pinned: that takes the local CPU build; an unpinned torch pulls
# gigabytes of CUDA packages. llama-cpp-python compiles llama.cpp (minutes, once;
# pip caches the wheel).
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

$(DEMO_MODEL)/config.json: | $(STAMP)
	$(PY) -m mobilevlm.tiny_random $(DEMO_MODEL) --projector ldpnetv2

demo: $(STAMP) $(DEMO_MODEL)/config.json
	@echo "NOTE: the trained default model has not landed yet; this demo runs a tiny RANDOM"
	@echo "      MobileVLM (CLIP ViT + LDPv2 + LLaMA) end to end. Its answer is gibberish."
	@echo "Q: $(DEMO_PROMPT)  [$(DEMO_IMAGE)]"
	@$(VENV)/bin/mobilevlm run --model $(DEMO_MODEL) --image $(DEMO_IMAGE) \
		--prompt "$(DEMO_PROMPT)" --max-new-tokens 24

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
