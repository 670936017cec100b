#!/usr/bin/env bash
# The test run `make test` and CI use. Chat has two backends, so two passes:
#   1. the whole suite in the venv, which has no llama.cpp: the transformers fallback path;
#   2. the chat tests again with llama.cpp on PYTHONPATH: the fast CPU path.
# llama.cpp's wheel builds in the background during pass 1 (once; later runs reuse the cached wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p .cache
nice -n 10 make --no-print-directory llama-wheel PY="$PY" > .cache/llama-wheel.log 2>&1 &
build=$!
"$PY" -m pytest -q tests
if ! wait "$build"; then
  tail -n 50 .cache/llama-wheel.log
  exit 1
fi
make --no-print-directory llama-site PY="$PY"
PYTHONPATH="$PWD/.cache/llama-site" "$PY" -m pytest -q tests/test_llama_chat.py tests/test_chat.py
