#!/usr/bin/env bash
# Train on several GPU nodes under SLURM: writes a batch script and submits it with sbatch. Under srun,
# jax.distributed reads the SLURM environment to find its peers (no coordinator flags).
#
#   launch/slurm.sh --nodes 4 --gpus-per-node 8 --config configs/rsclip_b16.py --workdir /shared/runs/rsclip_b16 \
#       [--per node|gpu] [--partition P] [--account A] [--time 24:00:00] [--cuda cuda13] [--dry-run] \
#       [-- --config.data.train_shards='/shared/shards/*.array_record' ...]
#
# --per node (default): one process per node drives its GPUs; --per gpu: one process per GPU.
# The checkout (and its .venv, built here first) must be on a filesystem every node sees.
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

nodes="" gpus_per_node="" per="node" partition="" account="" time_limit="24:00:00" config="" workdir="" cuda="cuda13"
while (($#)); do
  case "$1" in
    --nodes) nodes="$2"; shift 2 ;;
    --gpus-per-node) gpus_per_node="$2"; shift 2 ;;
    --per) per="$2"; shift 2 ;;
    --partition) partition="$2"; shift 2 ;;
    --account) account="$2"; shift 2 ;;
    --time) time_limit="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --cuda) cuda="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
require nodes gpus_per_node config workdir
case "$per" in
  node) tasks_per_node=1 ;;
  gpu) tasks_per_node="$gpus_per_node" ;;
  *) die "--per must be node or gpu, not $per" ;;
esac
cd "$REPO_ROOT"

note "1. install on the shared filesystem: the project and JAX for NVIDIA GPUs ($cuda)"
run make .venv/.installed-base
run .venv/bin/pip install -q "jax[$cuda]"

train="$(command_line .venv/bin/python -m rsclip_jax.train "--config=$config" "--workdir=$workdir" "$@")"
# Every task sees all of its node's GPUs: per GPU, jax.distributed binds task N of a node to its GPU N
# (SLURM_LOCALID); per node, the trainer asks for all of them (SLURM_GPUS_ON_NODE).
srun_options="--kill-on-bad-exit=1"
script="#!/bin/bash
#SBATCH --job-name=rsclip-jax
#SBATCH --nodes=$nodes
#SBATCH --ntasks-per-node=$tasks_per_node
#SBATCH --gpus-per-node=$gpus_per_node
#SBATCH --time=$time_limit
#SBATCH --output=slurm-%j.out${partition:+
#SBATCH --partition=$partition}${account:+
#SBATCH --account=$account}
set -euo pipefail
cd $(quote "$REPO_ROOT")
srun $srun_options $train"

batch_file="$(mktemp "${TMPDIR:-/tmp}/rsclip-jax.XXXXXX.sbatch")"
printf '%s\n' "$script" >"$batch_file"
note "2. the batch script, $batch_file:"
sed 's/^/#   /' "$batch_file"
note "3. submit it"
run sbatch "$batch_file"
