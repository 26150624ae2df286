#!/usr/bin/env bash
# Caption images under SLURM: a job array of N tasks, task I running `python -m captioning run` as worker I
# of N (it takes shards I, I+N, ...). Tasks need no coordination: resubmitting redoes only unfinished shards.
#
#   launch/caption_slurm.sh --tasks 16 --model /shared/models/Qwen2.5-VL-7B-Instruct \
#       (--images /shared/images | --list /shared/images.txt) --out /shared/captions \
#       [--per gpu|node] [--gpus-per-task G] [--partition P] [--account A] [--time 24:00:00] [--dry-run] \
#       [-- --alt-text /shared/alt_text.jsonl --images-per-shard 500 --max-num-seqs 256 ...]
#
# --per gpu (default): each task asks for G GPUs (default 1) and shares its node with other tasks;
# --per node: each task has a node to itself (--exclusive), G = that node's GPU count. With G > 1 the
# task's vLLM engine spans its GPUs by --tensor-parallel-size G (given before the extra arguments, which
# may override it). The checkout and .venv-captioning must be on a filesystem every node sees; relative
# paths are taken from the checkout.
# `make captioning-env` (step 1) builds that environment with vLLM's CPU build; for GPU nodes build it
# with the CUDA build once beforehand, and make then leaves it as it is (until captioning/requirements.txt
# or pyproject.toml change: touch .installed again then):
#   python3 -m venv .venv-captioning && .venv-captioning/bin/pip install vllm msgpack array-record pillow tqdm \
#     && .venv-captioning/bin/pip install --no-deps -e . && touch .venv-captioning/.installed
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

tasks="" per="gpu" gpus_per_task=1 partition="" account="" time_limit="24:00:00" images="" list="" out="" model=""
while (($#)); do
  case "$1" in
    --tasks) tasks="$2"; shift 2 ;;
    --per) per="$2"; shift 2 ;;
    --gpus-per-task) gpus_per_task="$2"; shift 2 ;;
    --partition) partition="$2"; shift 2 ;;
    --account) account="$2"; shift 2 ;;
    --time) time_limit="$2"; shift 2 ;;
    --images) images="$2"; shift 2 ;;
    --list) list="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
require tasks out model
positive tasks gpus_per_task
case "$per" in
  gpu) placement="" ;;
  node) placement="
#SBATCH --exclusive" ;;
  *) die "--per must be gpu or node, not $per" ;;
esac
caption_inputs "$images" "$list"
cd "$REPO_ROOT"

note "1. the captioning environment on the shared filesystem (see the header for GPU nodes)"
run make captioning-env

parallel=()
((gpus_per_task == 1)) || parallel=(--tensor-parallel-size "$gpus_per_task")
# The worker index is the array task's, read when the task starts: it stays outside the quoting.
caption="$(command_line .venv-captioning/bin/python -m captioning run "${inputs[@]}" --out "$out" --model "$model" \
  --num-workers "$tasks") --worker-index \"\$SLURM_ARRAY_TASK_ID\""
(($# + ${#parallel[@]} == 0)) || caption+=" $(command_line "${parallel[@]}" "$@")"
script="#!/bin/bash
#SBATCH --job-name=rsclip-caption
#SBATCH --array=0-$((tasks - 1))
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-node=$gpus_per_task${placement}
#SBATCH --time=$time_limit
#SBATCH --output=slurm-caption-%A_%a.out${partition:+
#SBATCH --partition=$partition}${account:+
#SBATCH --account=$account}
set -euo pipefail
cd $(quote "$REPO_ROOT")
$caption"

batch_file="$(mktemp "${TMPDIR:-/tmp}/rsclip-caption.XXXXXX.sbatch")"
printf '%s\n' "$script" >"$batch_file"
note "2. the batch script, $batch_file:"
sed 's/^/#   /' "$batch_file"
note "3. submit it; follow it with: .venv-captioning/bin/python -m captioning status --out $(quote "$out")"
run sbatch "$batch_file"
