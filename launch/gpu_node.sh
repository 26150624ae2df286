#!/usr/bin/env bash
# Train on one multi-GPU node: one process drives every GPU it sees; the mesh spans them.
#
#   launch/gpu_node.sh --config configs/rsclip_b16.py --workdir runs/rsclip_b16 [--gpus 0,1,2,3] \
#       [--mesh '(-1,1,1)'] [--cuda cuda13] [--dry-run] [-- --config.data.train_shards='shards/*.array_record' ...]
#
# --gpus sets CUDA_VISIBLE_DEVICES (default: all); --mesh sets config.mesh.shape (data, fsdp, tensor).
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

config="" workdir="" gpus="" mesh="" cuda="cuda13"
while (($#)); do
  case "$1" in
    --config) config="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --gpus) gpus="$2"; shift 2 ;;
    --mesh) mesh="$2"; shift 2 ;;
    --cuda) cuda="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) sed -n '2,8p' "$0"; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
require config workdir
cd "$REPO_ROOT"

note "1. install: the project and JAX for NVIDIA GPUs ($cuda)"
run make .venv/.installed-base
run .venv/bin/pip install -q "jax[$cuda]"

note "2. train: one process, every visible GPU"
train=(.venv/bin/python -m rsclip_jax.train "--config=$config" "--workdir=$workdir")
[[ -z "$mesh" ]] || train+=("--config.mesh.shape=$mesh")
[[ -z "$gpus" ]] || train=(env "CUDA_VISIBLE_DEVICES=$gpus" "${train[@]}")
run "${train[@]}" "$@"
