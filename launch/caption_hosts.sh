#!/usr/bin/env bash
# Caption images on a list of hosts over ssh: starts `python -m captioning run` workers in the background
# (nohup, so they outlive the ssh session), W = hosts x G workers in all, worker I taking shards I, I+W, ...
#
#   launch/caption_hosts.sh --hosts hosts.txt|gpu1,gpu2 --model /models/Qwen2.5-VL-7B-Instruct \
#       (--images /shared/images | --list /shared/images.txt) --out /shared/captions \
#       [--gpus-per-host G] [--dry-run] [-- --alt-text /shared/alt_text.jsonl --images-per-shard 500 ...]
#
# --hosts: a file with one host per line, or a comma-separated list. --gpus-per-host G: G workers per host,
# worker host*G+g pinned to GPU g by CUDA_VISIBLE_DEVICES; without it one worker per host sees all its
# GPUs (pass -- --tensor-parallel-size N to use them). The checkout must be at the same path on every host,
# with .venv-captioning built there (step 1 runs `make captioning-env` on each; for GPUs see the header of
# launch/caption_slurm.sh). --out is best a folder all hosts share: each worker logs to
# OUT/logs/worker-I.log, and `python -m captioning status --out OUT` then sees every host's shards.
# Relative paths are taken from the checkout. Starting the same command again restarts the workers on their
# unfinished shards (stop the old ones first: each ssh prints its worker's pid).
set -euo pipefail
# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

hosts="" gpus_per_host="" images="" list="" out="" model=""
while (($#)); do
  case "$1" in
    --hosts) hosts="$2"; shift 2 ;;
    --gpus-per-host) gpus_per_host="$2"; shift 2 ;;
    --images) images="$2"; shift 2 ;;
    --list) list="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
require hosts out model
positive gpus_per_host
if [[ -f "$hosts" ]]; then
  mapfile -t host_list < <(grep -v '^[[:space:]]*\(#\|$\)' "$hosts" | tr -d '[:blank:]')
elif [[ "$hosts" == */* ]]; then
  die "--hosts $hosts is not a file"
else
  IFS=, read -ra host_list <<<"$hosts"
fi
((${#host_list[@]})) || die "--hosts $hosts names no host"
caption_inputs "$images" "$list"
per_host="${gpus_per_host:-1}"
num_workers=$((${#host_list[@]} * per_host))
checkout="cd $(quote "$REPO_ROOT")"

note "1. the captioning environment on every host (a no-op where it is built)"
for host in "${host_list[@]}"; do
  run ssh "$host" "$checkout && make captioning-env"
done

note "2. start $num_workers workers in the background, each logging to $out/logs/worker-I.log"
for h in "${!host_list[@]}"; do
  for ((g = 0; g < per_host; g++)); do
    worker=$((h * per_host + g))
    caption="$(command_line .venv-captioning/bin/python -m captioning run "${inputs[@]}" --out "$out" \
      --model "$model" --num-workers "$num_workers" --worker-index "$worker" "$@")"
    pin=""
    [[ -z "$gpus_per_host" ]] || pin="CUDA_VISIBLE_DEVICES=$g "
    # Only the worker goes to the background, its output redirected, so ssh returns at once.
    log="$(quote "$out/logs/worker-$worker.log")"
    start="${pin}nohup $caption >$log 2>&1 </dev/null & echo \"worker $worker: pid \$!\""
    run ssh "${host_list[h]}" "set -e; $checkout; mkdir -p $(quote "$out/logs"); $start"
  done
done
note "follow them with: .venv-captioning/bin/python -m captioning status --out $(quote "$out")"
