#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create it (or reuse it), install the project on every worker, then run
# the trainer on all workers at once (`--worker=all`); jax.distributed finds the other workers itself.
#
#   launch/tpu_pod.sh --name rsclip --zone us-east5-a --accelerator v5p-64 \
#       --config configs/rsclip_b16.py:eval_root=/mnt/eval --workdir gs://BUCKET/runs/rsclip_b16 \
#       [--project P] [--version tpu-ubuntu2204-base] [--repo URL] [--ref COMMIT] [--dry-run] \
#       [-- --config.data.train_shards='gs://BUCKET/shards/*.array_record' ...]
#
# The workdir should be a bucket (gs://...) every worker can write: checkpoints, metrics and TensorBoard
# files go there. Caption shards may be in a bucket too, read where they are: gcsfs lists them and ArrayRecord
# reads gs:// paths itself. --repo/--ref default to this checkout's origin and commit.
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

name="" zone="" accelerator="" version="tpu-ubuntu2204-base" project="" config="" workdir="" repo="" ref=""
while (($#)); do
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --accelerator) accelerator="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --repo) repo="$2"; shift 2 ;;
    --ref) ref="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
trainer_flags=("$@")
require name zone accelerator config workdir
repo="${repo:-$(git -C "$REPO_ROOT" remote get-url origin 2>/dev/null || true)}"
ref="${ref:-$(git -C "$REPO_ROOT" rev-parse HEAD)}"
[[ -n "$repo" ]] || die "this checkout has no origin remote: give --repo URL"

tpu=(gcloud compute tpus tpu-vm)
where=(--zone "$zone")
[[ -z "$project" ]] || where+=(--project "$project")

note "1. the slice: reuse $name if it exists, else create it"
if [[ -n "$DRY_RUN" ]] || ! "${tpu[@]}" describe "$name" "${where[@]}" >/dev/null 2>&1; then
  run "${tpu[@]}" create "$name" "${where[@]}" --accelerator-type "$accelerator" --version "$version"
fi

note "2. install on every worker: the project at $ref, JAX for TPUs, gs:// support (gcsfs; google-cloud-storage for TensorBoard)"
install="set -e; [ -d rsclip-jax ] || git clone -q $(quote "$repo") rsclip-jax; cd rsclip-jax"
install+="; git fetch -q origin; git checkout -q $(quote "$ref"); make .venv/.installed-base"
install+="; .venv/bin/pip install -q 'jax[tpu]' gcsfs google-cloud-storage"
run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command "$install"

note "3. train on all workers (one process per worker)"
train="cd rsclip-jax && $(command_line .venv/bin/python -m rsclip_jax.train "--config=$config" "--workdir=$workdir" \
  "${trainer_flags[@]}")"
run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command "$train"
