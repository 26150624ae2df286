"""`make demo`: build the procedural corpus, train demo/configs/demo.py on the CPU, report held-out recall@1.

    python -m rsclip_jax.demo [--recipe rsclip|clips|synth2] [--seed N] [--image-side PX] [--crop-backend pil|opencv]

`--recipe clips` trains demo/configs/demo_clips.py instead: CLIPS' alt-text and sub-caption streams and its
caption generator. Ends by printing one JSON line: i2t_r1 and t2i_r1 on the held-out images (percent), and
chance_r1; for clips also the generator's loss at the first and the last logged step.

`--recipe synth2` runs the Synth² experiment of demo/synth2.py instead (in workdirs/demo-synth2, its fine-tunes
with seeds 0, 1 and 2, so without --seed): a CLIP, Synth²'s generator, and three arms of fine-tuning, with real
pairs only, with the generator's synthetic pairs, and with the same captions paired with their nearest real image.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from rsclip_jax.accelerators.sharding import make_mesh
from rsclip_jax.config import load_recipe
from rsclip_jax.data.example_spec import CROP_BACKENDS
from rsclip_jax.data.preprocess import decode_image
from rsclip_jax.data.records import read_shard
from rsclip_jax.data.tokenizer import tokenize
from rsclip_jax.demo import synth2
from rsclip_jax.demo.corpus import write_demo_corpus
from rsclip_jax.demo.synth2 import SIZES as SYNTH2_SIZES
from rsclip_jax.evals.embedding import Embedder
from rsclip_jax.evals.retrieval import retrieval_recall
from rsclip_jax.training.checkpoints import restore_params
from rsclip_jax.training.train_setup import TrainSetup

# The recipes ship inside the package, so an installed rsclip_jax runs the demo from any folder.
RECIPE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
# recipe -> (its config file, what the demo trains, its workdir)
RECIPES = {
    "rsclip": (
        "demo.py",
        "tiny CLIP trained on procedurally rendered scenes with procedural role captions (not an LLM's)",
        os.path.join("workdirs", "demo"),
    ),
    "clips": (
        "demo_clips.py",
        "tiny CLIPS (alt text, sub-captions, caption generator) trained on procedurally "
        "rendered scenes with procedural alt text and role captions (not an LLM's)",
        os.path.join("workdirs", "demo-clips"),
    ),
}
NUM_TRAIN, NUM_HELDOUT = 2000, 100


def evaluate_heldout(config, run_dir: str, heldout_paths: list[str]) -> dict:
    """Recall of the last checkpoint on the held-out images, each with all of its captions, through the
    evaluators' encoder."""
    setup = TrainSetup.build(config, make_mesh((1, 1, 1)))
    model_config = setup.model
    _, params = restore_params(os.path.join(run_dir, "checkpoints"), setup)
    records = [r for path in heldout_paths for r in read_shard(path)]
    text_image = np.array([i for i, r in enumerate(records) for _ in r.captions])
    embedder = Embedder(
        setup.graphdef,
        setup.shardings["params"],
        setup.mesh,
        batch_size=len(records),
        image_size=model_config.image_size,
    )
    image_emb, _, _ = embedder.images(
        params, len(records), lambda i: (decode_image(records[i].image_jpeg), 0), "held-out"
    )
    tokens = tokenize([c.text for r in records for c in r.captions], model_config.context_length)
    return retrieval_recall(image_emb, embedder.texts(params, tokens, "held-out"), text_image, ks=(1, 5))


def generator_losses(run_dir: str) -> dict:
    """The caption generator's loss at the first and the last logged step of the run, when it has one."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        losses = [line["generator_loss"] for line in map(json.loads, f) if "generator_loss" in line]
    return {"generator_loss_start": round(losses[0], 3), "generator_loss_end": round(losses[-1], 3)} if losses else {}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=sorted([*RECIPES, "synth2"]), default="rsclip")
    parser.add_argument("--seed", type=int, help="the training run's config.seed (default 0; the corpus stays)")
    parser.add_argument(
        "--image-side",
        type=int,
        default=64,
        help="the corpus images' side in pixels (the model's crops stay its image_size)",
    )
    parser.add_argument(
        "--crop-backend",
        choices=CROP_BACKENDS,
        help="config.data.crop_backend for training; evaluation always uses open_clip's crops",
    )
    # For tests of --recipe synth2: its sizes (demo/synth2.py's SIZES) and its workdir.
    parser.add_argument("--synth2-size", choices=sorted(SYNTH2_SIZES), default="full", help=argparse.SUPPRESS)
    parser.add_argument("--synth2-workdir", default=synth2.WORKDIR, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.recipe == "synth2":
        if args.seed is not None:
            parser.error("--recipe synth2 fine-tunes with seeds 0, 1 and 2: it takes no --seed")
        result = synth2.run(
            args.synth2_workdir, args.synth2_size, image_side=args.image_side, crop_backend=args.crop_backend
        )
        print(json.dumps(result))
        return
    args.seed = 0 if args.seed is None else args.seed
    recipe_file, description, workdir = RECIPES[args.recipe]
    start = time.perf_counter()
    shutil.rmtree(workdir, ignore_errors=True)  # a fresh, reproducible run every time
    corpus = write_demo_corpus(
        os.path.join(workdir, "corpus"),
        num_train=NUM_TRAIN,
        num_heldout=NUM_HELDOUT,
        seed=0,
        image_size=args.image_side,
    )
    recipe = os.path.join(RECIPE_DIR, recipe_file)
    run_dir = os.path.join(workdir, "run")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "rsclip_jax.train",
            f"--config={recipe}",
            f"--workdir={run_dir}",
            f"--config.data.train_shards={','.join(corpus['train'])}",
            f"--config.seed={args.seed}",
            *([f"--config.data.crop_backend={args.crop_backend}"] if args.crop_backend else []),
        ],
        check=True,
    )
    config = load_recipe(recipe)
    recall = evaluate_heldout(config, run_dir, corpus["heldout"])
    print(
        json.dumps(
            {
                "demo": description,
                "train_images": NUM_TRAIN,
                "heldout_images": NUM_HELDOUT,
                "captions_per_image": 10,
                "train_steps": config.total_steps,
                "batch_size": config.batch_size,
                "loss": config.loss.kind,
                **{k: round(v, 2) for k, v in recall.items()},
                "chance_r1": round(100.0 / NUM_HELDOUT, 2),
                **generator_losses(run_dir),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
