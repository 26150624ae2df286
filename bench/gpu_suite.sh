#!/usr/bin/env bash
# The GPU benchmarks in one command, on a machine with one NVIDIA GPU; every step under 10 minutes; JSON lines
# to stdout and to bench/results/gpu_suite-<date>.jsonl:
#   (a) the B/16 training step, 248 text positions, bf16, at the largest batch that fits (picked memory
#       settings, as training picks them), and open_clip's same step in the same run: step time, examples/s,
#       MFU, ratio;
#   (b) captioning throughput with a full-size Qwen2.5-VL-7B architecture built here with random weights,
#       generation lengths fixed to the paper's mean caption lengths, shared-prefix vs unshared prompts.
#
#   bash bench/gpu_suite.sh            # builds .venv-gpu (jax[cuda13] + torch) and .venv-vllm (vLLM) if absent
#   bash bench/gpu_suite.sh --dry-run  # prints the commands, runs none
#   bash bench/gpu_suite.sh --wheelhouse DIR [--dry-run]
#       # a node without internet: .venv-gpu sees $PYTHON's packages (JAX with its CUDA plugin, PyTorch, Flax,
#       # Optax, Orbax) and gets the rest from DIR (`make wheelhouse WHEELHOUSE=DIR` on a machine with internet);
#       # (b) runs only where $PYTHON imports vLLM, which no wheelhouse brings
set -euo pipefail
DRY_RUN=0
WHEELHOUSE=""
while (($#)); do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --wheelhouse)
      [[ -d "${2:-}" ]] || { echo "error: --wheelhouse needs the folder that make wheelhouse filled" >&2; exit 2; }
      # Made absolute before the cd below, so a folder named from anywhere works.
      WHEELHOUSE=$(cd "$2" && pwd)
      shift 2 ;;
    *) echo "error: unknown option $1" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
STEP_TIMEOUT=${STEP_TIMEOUT:-600}
OUT=bench/results/gpu_suite-$(date +%Y%m%d-%H%M%S).jsonl

run() {
  if ((DRY_RUN)); then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}

step() {  # a benchmark under the step time limit; its JSON line goes to stdout and to $OUT
  if ((DRY_RUN)); then
    run timeout "$STEP_TIMEOUT" "$@"
  else
    timeout "$STEP_TIMEOUT" "$@" | tee -a "$OUT"
  fi
}

caption_python=.venv-vllm/bin/python
if [[ -n "$WHEELHOUSE" ]]; then
  # --system-site-packages: the node's own JAX, CUDA plugin and PyTorch builds are the ones to measure, and
  # they are too big for a wheelhouse. Only what they lack comes from DIR; the project installs from this tree.
  if [[ ! -x .venv-gpu/bin/python ]]; then
    run "$PYTHON" -m venv --system-site-packages .venv-gpu
    run .venv-gpu/bin/python -m pip install --no-index --find-links "$WHEELHOUSE" -e . \
      -r bench/requirements-gpu-offline.txt
  fi
  caption_python=.venv-gpu/bin/python
  if ! "$PYTHON" -c 'import vllm' 2>/dev/null; then
    echo "skipping the captioning benchmark: $PYTHON cannot import vllm, and no wheelhouse brings it" >&2
    caption_python=""
  fi
else
  if [[ ! -x .venv-gpu/bin/python ]]; then
    run "$PYTHON" -m venv .venv-gpu
    run .venv-gpu/bin/python -m pip install -e '.[gpu,torch]'
  fi
  if [[ ! -x .venv-vllm/bin/python ]]; then
    run "$PYTHON" -m venv .venv-vllm
    run .venv-vllm/bin/python -m pip install -r captioning/requirements-gpu.txt
    run .venv-vllm/bin/python -m pip install --no-deps -e .
  fi
fi
((DRY_RUN)) || mkdir -p bench/results

step .venv-gpu/bin/python bench/train_step.py --variant B/16 --context 248 --captions 1 --dtype bfloat16 \
  --max-batch --open-clip --warmup 2 --steps 10
[[ -z "$caption_python" ]] || step "$caption_python" bench/caption_throughput.py --model-size 7b --images 64
((DRY_RUN)) || echo "results: $OUT" >&2
