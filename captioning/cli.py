"""`python -m captioning run ...`, `... synthesize ...`, `... filter ...`, `... status ...` and `... distill ...`
(console script: rsclip-caption)."""

import argparse
import functools
import json
import os
import sys

from PIL import Image

from captioning.alt_text import load_alt_texts
from captioning.engines import ENGINES, Sampling, make_engine
from captioning.filter import filter_shards
from captioning.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_PIXELS,
    covering_short_side,
    list_inputs,
    load_image,
)
from captioning.prompts import PROMPT_VERSION
from captioning.roles import load_roles
from captioning.run import run
from captioning.status import run_status, status_table
from captioning.synthesize import DEFAULT_MAX_CONCEPT_CHARS, synthesize

# vLLM engine arguments passed through when given; on a CPU: --dtype float32 --enforce-eager.
_ENGINE_FLAGS = {
    "tensor_parallel_size": int,
    "data_parallel_size": int,
    "gpu_memory_utilization": float,
    "max_model_len": int,
    "max_num_seqs": int,
    "max_num_batched_tokens": int,
    "dtype": str,
}


def _add_engine_flags(parser, prefix="", temperature=Sampling.temperature):
    parser.add_argument(f"--{prefix}engine", choices=ENGINES, default="vllm")
    parser.add_argument(
        f"--{prefix}model", required=not prefix, help="local model folder (e.g. Qwen2.5-VL-7B-Instruct)"
    )
    parser.add_argument("--max-tokens", type=int, default=Sampling.max_tokens)
    parser.add_argument("--temperature", type=float, default=temperature)
    parser.add_argument("--top-p", type=float, default=Sampling.top_p)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--no-prefix-caching", action="store_true", help="turn vLLM's prefix cache off")
    for name, kind in _ENGINE_FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=kind)


def _engine_factory(args, engine, model, text_only=False):
    sampling = Sampling(args.max_tokens, args.temperature, args.top_p)
    if engine == "vllm":
        extra = {name: getattr(args, name) for name in _ENGINE_FLAGS if getattr(args, name) is not None}
        extra.update(seed=args.seed, enforce_eager=args.enforce_eager, enable_prefix_caching=not args.no_prefix_caching)
    else:  # transformers takes only the dtype
        extra = {"dtype": args.dtype} if args.dtype not in (None, "auto") else {}
    return functools.partial(make_engine, engine, model, sampling=sampling, text_only=text_only, **extra)


def _run(args) -> dict:
    roles = load_roles(args.roles)
    inputs = list_inputs(args.images, args.list)
    alt_texts, unmatched = load_alt_texts(inputs, args.alt_text)
    if unmatched:
        print(f"note: --alt-text {args.alt_text}: {unmatched} of its lines name no input of this run", file=sys.stderr)
    short_side = covering_short_side(args.max_pixels) if args.short_side is None else args.short_side
    settings = {
        "engine": args.engine,
        "model": args.model,
        "roles": [vars(r) for r in roles.roles],
        "roles_version": roles.version,
        "prompt_version": PROMPT_VERSION,
        "short_side": short_side,
        "max_pixels": args.max_pixels,
        "max_image_pixels": args.max_image_pixels,
        "images_per_shard": args.images_per_shard,
        "seed": args.seed,
        "sampling": [args.max_tokens, args.temperature, args.top_p],
    }
    Image.MAX_IMAGE_PIXELS = None  # load_image refuses above --max-image-pixels itself, whatever its value
    load = functools.partial(
        load_image, short_side=short_side, max_pixels=args.max_pixels, max_image_pixels=args.max_image_pixels
    )
    return run(
        inputs,
        args.out,
        _engine_factory(args, args.engine, args.model),
        roles,
        settings=settings,
        images_per_shard=args.images_per_shard,
        num_workers=args.num_workers,
        worker_index=args.worker_index,
        load=load,
        seed=args.seed,
        host_threads=args.host_threads,
        readahead=args.readahead,
        alt_texts=alt_texts,
        max_pixels=args.max_pixels,
    )


def _synthesize(args) -> dict:
    if args.per_concept > 1 and args.temperature == 0:
        raise ValueError(f"--per-concept {args.per_concept} needs --temperature above 0: greedy text repeats itself")
    return synthesize(
        args.concepts,
        args.out,
        _engine_factory(args, args.engine, args.model, text_only=True),
        load_roles(args.roles) if args.roles else None,
        settings={
            "engine": args.engine,
            "model": args.model,
            "sampling": [args.max_tokens, args.temperature, args.top_p],
        },
        per_concept=args.per_concept,
        concepts_per_shard=args.concepts_per_shard,
        num_workers=args.num_workers,
        worker_index=args.worker_index,
        seed=args.seed,
        max_concept_chars=args.max_concept_chars,
    )


def _filter(args) -> dict:
    roles = load_roles(args.roles)
    if args.drop_fraction and not args.judge_model:
        raise ValueError("--drop-fraction needs a judge: give --judge-model")
    return filter_shards(
        args.in_dir,
        args.out,
        roles,
        min_long_words=args.min_long_words,
        min_short_words=args.min_short_words,
        make_judge=_engine_factory(args, args.judge_engine, args.judge_model) if args.judge_model else None,
        drop_fraction=args.drop_fraction,
        export_path=args.export_judgements,
        seed=args.seed,
    )


def _status(args) -> dict:
    """Also a table on stderr, for people; the JSON line is for scripts."""
    status = run_status(args.out, num_workers=args.num_workers)
    print(status_table(status), file=sys.stderr)
    return status


def _distill(args) -> dict:
    """Torch's trainer, accelerate and peft load for this command only."""
    from captioning.distill import distill

    return distill(
        args.judgements,
        args.student,
        args.out,
        lora=args.lora,
        lora_rank=args.lora_rank,
        epochs=args.epochs,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        dtype=args.dtype,
        seed=args.seed,
    )


_COMMANDS = {"run": _run, "synthesize": _synthesize, "filter": _filter, "status": _status, "distill": _distill}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m captioning", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run_parser = commands.add_parser("run", help="caption images into caption shards")
    inputs = run_parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--images", help="folder of images (ids are relative paths)")
    inputs.add_argument("--list", help="file with one image path per line")
    run_parser.add_argument("--out", required=True)
    run_parser.add_argument(
        "--alt-text",
        help='JSONL of {"image": ID, "alt_text": TEXT} lines, the web alt text kept '
        "in each record; without it, photo.txt beside photo.jpg is photo.jpg's alt text",
    )
    run_parser.add_argument("--roles", help="role file (JSON); default: the five roles of captioning/role_files")
    run_parser.add_argument("--images-per-shard", type=int, default=1000)
    run_parser.add_argument("--num-workers", type=int, default=1)
    run_parser.add_argument("--worker-index", type=int, default=0)
    run_parser.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="pixel cap of the image the captioner sees"
    )
    run_parser.add_argument(
        "--short-side",
        type=int,
        help="short side of the JPEG kept for training (default: the square root of --max-pixels, so that the "
        "judge sees every pixel the captioner saw)",
    )
    run_parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help="larger images are refused (decompression-bomb guard)",
    )
    run_parser.add_argument(
        "--host-threads",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="threads decoding and resizing images while the engine generates",
    )
    run_parser.add_argument("--readahead", type=int, default=64, help="images decoded ahead of the engine")
    _add_engine_flags(run_parser)

    synth_parser = commands.add_parser(
        "synthesize", help="a text-only LLM captions imagined photos of concepts (Synth²), shards without images"
    )
    synth_parser.add_argument(
        "--concepts", required=True, help="UTF-8 text file, one concept a line; # starts a comment line"
    )
    synth_parser.add_argument("--out", required=True)
    synth_parser.add_argument(
        "--roles",
        help="role file (JSON, as for run): each imagined photo also gets a long and a short caption per role; "
        "without it, the annotator's description alone",
    )
    synth_parser.add_argument("--per-concept", type=int, default=1, help="imagined photos per concept")
    synth_parser.add_argument("--concepts-per-shard", type=int, default=1000, help="concept file lines per shard")
    synth_parser.add_argument(
        "--max-concept-chars",
        type=int,
        default=DEFAULT_MAX_CONCEPT_CHARS,
        help="longer lines are skipped and counted",
    )
    synth_parser.add_argument("--num-workers", type=int, default=1)
    synth_parser.add_argument("--worker-index", type=int, default=0)
    _add_engine_flags(synth_parser)

    filter_parser = commands.add_parser("filter", help="length rules and the role-aware judge")
    filter_parser.add_argument("--in", dest="in_dir", required=True)
    filter_parser.add_argument("--out", required=True)
    filter_parser.add_argument("--roles")
    filter_parser.add_argument("--min-long-words", type=int, default=10)
    filter_parser.add_argument("--min-short-words", type=int, default=4)
    filter_parser.add_argument("--drop-fraction", type=float, default=0.0, help="lowest-scoring fraction dropped")
    filter_parser.add_argument("--export-judgements", help="JSONL of judge prompts and answers")
    _add_engine_flags(filter_parser, prefix="judge-", temperature=0.0)  # a judge scores greedily

    status_parser = commands.add_parser("status", help="a run's shards done and missing, and its counts so far")
    status_parser.add_argument("--out", required=True, help="the run's --out")
    status_parser.add_argument("--num-workers", type=int, help="also list each worker's missing shards")

    distill_parser = commands.add_parser("distill", help="fine-tune a student judge on exported judgements")
    distill_parser.add_argument("--judgements", required=True, help="JSONL from `filter --export-judgements`")
    distill_parser.add_argument("--student", required=True, help="local Qwen2-VL / Qwen2.5-VL model folder")
    distill_parser.add_argument("--out", required=True, help="folder for the trained model and processor")
    distill_parser.add_argument("--lora", action="store_true", help="train LoRA adapters, merged before saving")
    distill_parser.add_argument("--lora-rank", type=int, default=16)
    distill_parser.add_argument("--epochs", type=float, default=1.0)
    distill_parser.add_argument("--max-steps", type=int, default=-1, help="when > 0, overrides --epochs")
    distill_parser.add_argument("--learning-rate", type=float, default=1e-5)
    distill_parser.add_argument("--batch-size", type=int, default=4)
    distill_parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    distill_parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    distill_parser.add_argument("--seed", type=int, default=0)

    return parser


def main(argv=None):
    """Runs the command and prints its summary as one JSON line; bad input is one line on stderr, exit 1."""
    args = build_parser().parse_args(argv)
    try:
        summary = _COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
