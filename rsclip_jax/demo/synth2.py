"""`python -m rsclip_jax.demo --recipe synth2`: Synth²'s claim, that image embeddings a generator makes from captions
teach a CLIP what its real pairs lack, tested at CPU scale on the procedural corpus.

Some (colour, shape) combinations never occur in the real training images (HELD_OUT_COMBOS); held-out images hold
them (the "unseen" split), beside an ordinary held-out split drawn as the training images are.

1. The tiny CLIP (configs/demo.py) trains on the real pairs.
2. `python -m rsclip_jax.embed` embeds the real training images with it (depth "final"), and Synth²'s generator
   (configs/demo_synth2_generator.py) trains on those pairs only.
3. Synthetic captions: the procedural caption writer (corpus.role_captions) of new random scenes that each hold a
   held-out combination stands in for the LLM, as caption-only records; `python -m rsclip_jax.generate` pairs each
   with the generator's image embedding of its first long caption.
4. Three arms fine-tune stage 1's CLIP (configs/demo_synth2_finetune.py: the same steps and batch, the image tower
   frozen in every arm), each from a step-0 checkpoint of stage 1's weights and a fresh optimizer state, with
   three seeds (the data order): "real" on the real pairs only; "generated" with a quarter of each batch the
   generator's synthetic pairs; "nearest" with the same synthetic captions, each paired with the final embedding
   of the real training image nearest to it (stage 1's text embedding of the caption the generator read against
   the training images' embeddings):
   does the generator add anything beyond retrieval? Beside it, how near each arm's synthetic embeddings are to
   stage 1's embeddings of the imagined scenes rendered (the procedural corpus can draw them; no held-out image).

Each arm is scored by recall@1 both ways on the unseen and the ordinary held-out images: the mean and the
standard deviation over the seeds, with each seed's figure. Every setting is fixed here and in the recipes, before
any run; none was chosen by held-out scores. Prints one JSON line.
"""

import dataclasses
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from rsclip_jax.accelerators.sharding import make_mesh
from rsclip_jax.config import load_recipe
from rsclip_jax.data.preprocess import decode_image
from rsclip_jax.data.records import Caption, CaptionRecord, ImageEmbedding, read_shard, write_shard
from rsclip_jax.data.tokenizer import tokenize
from rsclip_jax.demo.corpus import (
    CAPTION_MODEL,
    PROMPT_VERSION,
    Scene,
    draw_scene,
    role_captions,
    scene_record,
    write_demo_corpus,
)
from rsclip_jax.evals.embedding import Embedder
from rsclip_jax.evals.retrieval import retrieval_recall
from rsclip_jax.synth2.synthetic_pairs import conditioning_caption
from rsclip_jax.training.checkpoints import Checkpointer, restore_params
from rsclip_jax.training.train_setup import TrainSetup

RECIPE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
CLIP_RECIPE = os.path.join(RECIPE_DIR, "demo.py")
GENERATOR_RECIPE = os.path.join(RECIPE_DIR, "demo_synth2_generator.py")
FINETUNE_RECIPE = os.path.join(RECIPE_DIR, "demo_synth2_finetune.py")
WORKDIR = os.path.join("workdirs", "demo-synth2")

# All fixed a priori, never chosen by held-out scores. Four combinations, each colour and each shape in at most one
# of them, so that every colour and every shape still occurs in the real training images, with other partners.
HELD_OUT_COMBOS = (("red", "circle"), ("blue", "triangle"), ("yellow", "square"), ("green", "ring"))
ARMS = ("real", "generated", "nearest")
CORPUS_SEED = 0  # the demo corpus' seed
SYNTHETIC_SEED = 1  # the synthetic captions' scenes: a stream of their own, apart from the corpus'
GUIDANCE = 3.0  # `python -m rsclip_jax.generate`'s default classifier-free guidance

DESCRIPTION = (
    "Synth2 at CPU scale: does fine-tuning a tiny CLIP with the generator's synthetic image embeddings of captions "
    "of (colour, shape) combinations its real training images lack help retrieval of held-out images holding them?"
)
CAPTION_WRITER = (
    "the procedural caption writer (corpus.role_captions of new random scenes, each holding a held-out "
    "combination) stands in for the LLM: no caption here is an LLM's"
)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The experiment's sizes. "full" is the one reported; "small" tests the plumbing in seconds, not the outcome."""

    train_images: int
    heldout_images: int
    unseen_images: int
    synthetic_captions: int
    clip_steps: int  # stage 1
    generator_steps: int  # stage 2
    finetune_steps: int  # each arm's, every seed
    batch_size: int  # every training's
    flow_steps: int  # the generator's Euler steps
    seeds: tuple[int, ...]  # each arm's config.seed: its data order (the fine-tune starts from stage 1's weights)
    num_workers: int | None = None  # config.data.num_workers of every training (how it runs); None: the recipe's


SIZES = {
    "full": Sizes(
        train_images=2000,
        heldout_images=100,
        unseen_images=100,
        synthetic_captions=1000,
        clip_steps=600,  # demo.py's, as `make demo` trains
        generator_steps=600,  # demo_synth2_generator.py's
        finetune_steps=150,  # demo_synth2_finetune.py's
        batch_size=64,
        flow_steps=25,  # `python -m rsclip_jax.generate`'s default
        seeds=(0, 1, 2),
    ),
    "small": Sizes(
        train_images=48,
        heldout_images=8,
        unseen_images=8,
        synthetic_captions=16,
        clip_steps=2,
        generator_steps=2,
        finetune_steps=2,
        batch_size=16,
        flow_steps=2,
        seeds=(0,),
        num_workers=0,  # a worker process takes seconds to start, longer than two steps take
    ),
}


def _python(module: str, *args: str, env: dict) -> None:
    """`python -m module args`, its output on our stderr: our stdout carries only the JSON line."""
    subprocess.run([sys.executable, "-m", module, *args], check=True, stdout=sys.stderr, env=env)


def _train(recipe: str, workdir: str, shards: list[str], sizes: Sizes, *overrides: str, env: dict) -> None:
    _python(
        "rsclip_jax.train",
        f"--config={recipe}",
        f"--workdir={workdir}",
        f"--config.data.train_shards={','.join(shards)}",
        f"--config.batch_size={sizes.batch_size}",
        *([] if sizes.num_workers is None else [f"--config.data.num_workers={sizes.num_workers}"]),
        *overrides,
        env=env,
    )


def synthetic_scenes(count: int, combos, avoid: set) -> list[Scene]:
    """`count` new random scenes (a stream of their own), each holding one of `combos`; a scene whose captions are in
    `avoid` (a held-out image's, see caption_key) is drawn again."""
    rng = np.random.default_rng(SYNTHETIC_SEED)
    scenes = []
    while len(scenes) < count:
        scene = draw_scene(rng, combos, require=True)
        if tuple(role_captions(scene).items()) not in avoid:
            scenes.append(scene)
    return scenes


def caption_record(index: int, scene: Scene) -> CaptionRecord:
    """A caption-only record of `scene` (no image, as `captioning synthesize` writes them), with the procedural role
    captions in place of an LLM's."""
    captions = tuple(
        Caption(role, kind, text, CAPTION_MODEL, PROMPT_VERSION) for (role, kind), text in role_captions(scene).items()
    )
    return CaptionRecord(f"synthetic/{index:06d}", None, None, captions)


def caption_key(record: CaptionRecord) -> tuple:
    return tuple(((c.role, c.kind), c.text) for c in record.captions)


class Scorer:
    """Recall of a demo CLIP's weights on the held-out sets, one model and one compile for every run scored."""

    def __init__(self, heldout: dict[str, list[str]], batch_size: int):
        setup = TrainSetup.build(load_recipe(CLIP_RECIPE), make_mesh((1, 1, 1)))
        self.setup = setup
        self.embedder = Embedder(
            setup.graphdef,
            setup.shardings["params"],
            setup.mesh,
            batch_size=batch_size,
            image_size=setup.model.image_size,
        )
        self.sets = {name: [r for path in paths for r in read_shard(path)] for name, paths in heldout.items()}

    def params(self, run_dir: str):
        return restore_params(os.path.join(run_dir, "checkpoints"), self.setup)[1]

    def texts(self, params, texts: list[str]) -> np.ndarray:
        return self.embedder.texts(params, tokenize(texts, self.setup.model.context_length), "texts")

    def score(self, run_dir: str) -> dict[str, dict[str, float]]:
        """{set: {i2t_r1, t2i_r1}} of the last checkpoint of `run_dir`, each image with all of its captions."""
        params = self.params(run_dir)
        scores = {}
        for name, records in self.sets.items():
            images, _, _ = self.embedder.images(
                params, len(records), lambda i, records=records: (decode_image(records[i].image_jpeg), 0), name
            )
            texts = self.texts(params, [c.text for r in records for c in r.captions])
            text_image = np.array([i for i, r in enumerate(records) for _ in r.captions])
            scores[name] = retrieval_recall(images, texts, text_image, ks=(1,))
        return scores


def nearest_pairs(scorer: Scorer, clip_params, captions: list[CaptionRecord], embedded: list[str], out: str) -> int:
    """Writes `out`: each caption record with the final embedding of the real training image (of the `embedded`
    shards) nearest its conditioning caption (the one the generator reads): the highest cosine between stage 1's
    text embedding of the caption and the training images' embeddings. -> how many distinct images were picked."""
    real = [record.image_embedding for path in embedded for record in read_shard(path)]
    images = _normalised([e.values for e in real])
    texts = scorer.texts(clip_params, [conditioning_caption(r).text for r in captions])
    nearest = np.argmax(texts @ images.T, axis=1)  # the texts come L2-normalised
    write_shard(
        out,
        [
            dataclasses.replace(record, image_embedding=ImageEmbedding("final", real[index].values))
            for record, index in zip(captions, nearest)
        ],
    )
    return len(set(nearest.tolist()))


def _normalised(values) -> np.ndarray:
    values = np.stack(values).astype(np.float32)
    return values / np.linalg.norm(values, axis=1, keepdims=True)


def against_rendered(scorer: Scorer, clip_params, scenes: list[Scene], pairs: dict[str, str], image_side: int) -> dict:
    """How near each arm's synthetic image embeddings are to the images they stand for: stage 1's embeddings of the
    imagined scenes rendered (which Synth² never has; the procedural corpus can draw them). {arm: the mean cosine,
    and the percent of synthetic embeddings whose nearest rendered scene, of all of them, is their own}."""
    jpegs = [scene_record(i, scene, image_side).image_jpeg for i, scene in enumerate(scenes)]
    rendered, _, _ = scorer.embedder.images(clip_params, len(jpegs), lambda i: (decode_image(jpegs[i]), 0), "rendered")
    found = {}
    for arm, path in pairs.items():
        synthetic = _normalised([record.image_embedding.values for record in read_shard(path)])
        found[arm] = {
            "cosine": round(float(np.mean(np.sum(synthetic * rendered, axis=1))), 3),
            "own_r1": round(
                100.0 * float(np.mean(np.argmax(synthetic @ rendered.T, axis=1) == np.arange(len(jpegs)))), 2
            ),
        }
    return found


def write_start(clip_dir: str, workdir: str) -> None:
    """A step-0 checkpoint in `workdir` holding stage 1's weights and a fresh optimizer state of the fine-tune recipe,
    without a run description (as `convert import` writes one): a fine-tune in a copy of `workdir` starts from it at
    step 0, whatever its seed and shards (the optimizer's fresh state is zeros and counters)."""
    setup = TrainSetup.build(load_recipe(FINETUNE_RECIPE), make_mesh((1, 1, 1)))
    state = setup.init_state()
    _, state["params"] = restore_params(os.path.join(clip_dir, "checkpoints"), setup)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=1, keep=1)
    checkpointer.save(0, state, force=True)
    checkpointer.close()


def _recall(scores: dict) -> dict:
    return {name: {k: round(v, 2) for k, v in recall.items()} for name, recall in scores.items()}


def _summary(per_seed: list[dict]) -> dict:
    """{set: {metric: {mean, std, seeds}}} over the seeds' scores (std: the population's, ddof 0)."""
    return {
        name: {
            metric: {
                "mean": round(float(np.mean(values)), 2),
                "std": round(float(np.std(values)), 2),
                "per_seed": [round(v, 2) for v in values],
            }
            for metric in per_seed[0][name]
            for values in [[scores[name][metric] for scores in per_seed]]
        }
        for name in per_seed[0]
    }


def run(workdir: str = WORKDIR, size: str = "full", *, image_side: int = 64, crop_backend: str | None = None) -> dict:
    """The whole experiment in `workdir` (emptied first); -> the JSON line's fields."""
    sizes = SIZES[size]
    start = time.perf_counter()
    shutil.rmtree(workdir, ignore_errors=True)  # a fresh, reproducible run every time
    # One compilation cache for every command of this run: the arms' steps compile once, not once a run.
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": os.path.abspath(os.path.join(workdir, "jax-cache"))}
    crop = [f"--config.data.crop_backend={crop_backend}"] if crop_backend else []
    corpus = write_demo_corpus(
        os.path.join(workdir, "corpus"),
        num_train=sizes.train_images,
        num_heldout=sizes.heldout_images,
        seed=CORPUS_SEED,
        image_size=image_side,
        held_out_combos=HELD_OUT_COMBOS,
        num_unseen=sizes.unseen_images,
    )
    seconds = {}

    # 1. The CLIP on the real pairs.
    clip_dir = os.path.join(workdir, "clip")
    _train(CLIP_RECIPE, clip_dir, corpus["train"], sizes, f"--config.total_steps={sizes.clip_steps}", *crop, env=env)
    seconds["stage1"] = time.perf_counter() - start

    # 2. Its final embeddings of the real training images, and the generator trained on those pairs only.
    embedded_dir = os.path.join(workdir, "embedded")
    _python(
        "rsclip_jax.embed",
        f"--workdir={clip_dir}",
        f"--shards={','.join(corpus['train'])}",
        f"--out={embedded_dir}",
        "--depth=final",
        env=env,
    )
    embedded = [os.path.join(embedded_dir, os.path.basename(path)) for path in corpus["train"]]
    generator_dir = os.path.join(workdir, "generator")
    _train(
        GENERATOR_RECIPE,
        generator_dir,
        embedded,
        sizes,
        f"--config.synth2_generator.clip_workdir={clip_dir}",
        f"--config.total_steps={sizes.generator_steps}",
        env=env,
    )
    seconds["stage2"] = time.perf_counter() - start - sum(seconds.values())

    # 3. Synthetic captions (caption-only records) and the generator's embeddings of them.
    scorer = Scorer({"unseen": corpus["unseen"], "heldout": corpus["heldout"]}, batch_size=64)
    avoid = {caption_key(r) for records in scorer.sets.values() for r in records}
    scenes = synthetic_scenes(sizes.synthetic_captions, HELD_OUT_COMBOS, avoid)
    captions = [caption_record(index, scene) for index, scene in enumerate(scenes)]
    name = "synthetic-00000.array_record"
    captions_path = os.path.join(workdir, "synthetic-captions", name)
    os.makedirs(os.path.dirname(captions_path))
    write_shard(captions_path, captions)
    synthetic = {"generated": os.path.join(workdir, "generated"), "nearest": os.path.join(workdir, "nearest")}
    _python(
        "rsclip_jax.generate",
        f"--workdir={generator_dir}",
        f"--captions={captions_path}",
        f"--out={synthetic['generated']}",
        f"--steps={sizes.flow_steps}",
        f"--guidance={GUIDANCE}",
        env=env,
    )
    os.makedirs(synthetic["nearest"])
    clip_params = scorer.params(clip_dir)
    distinct = nearest_pairs(scorer, clip_params, captions, embedded, os.path.join(synthetic["nearest"], name))
    rendered = against_rendered(
        scorer, clip_params, scenes, {arm: os.path.join(path, name) for arm, path in synthetic.items()}, image_side
    )
    stage1 = _recall(scorer.score(clip_dir))
    seconds["stage3"] = time.perf_counter() - start - sum(seconds.values())

    # 4. The arms: the same steps, batch and frozen image tower; only the data differ.
    start_dir = os.path.join(workdir, "finetune-start")
    write_start(clip_dir, start_dir)
    arms = {}
    for arm in ARMS:
        arm_start = time.perf_counter()
        scores = []
        for seed in sizes.seeds:
            arm_dir = os.path.join(workdir, "arms", arm, f"seed{seed}")
            shutil.copytree(start_dir, arm_dir)
            mixed = [f"--config.data.synthetic_shards={synthetic[arm]}/*.array_record"] if arm in synthetic else []
            _train(
                FINETUNE_RECIPE,
                arm_dir,
                corpus["train"],
                sizes,
                f"--config.seed={seed}",
                f"--config.total_steps={sizes.finetune_steps}",
                *mixed,
                *crop,
                env=env,
            )
            scores.append(scorer.score(arm_dir))
        arms[arm] = {
            **_summary(scores),
            "seeds": list(sizes.seeds),
            "seconds": round(time.perf_counter() - arm_start, 1),
        }

    finetune = load_recipe(FINETUNE_RECIPE)
    synthetic_rows = round(finetune.data.synthetic_fraction * sizes.batch_size)
    return {
        "demo": DESCRIPTION,
        "captions": CAPTION_WRITER,
        "held_out_combos": [f"{colour} {shape}" for colour, shape in HELD_OUT_COMBOS],
        "train_images": sizes.train_images,
        "heldout_images": sizes.heldout_images,
        "unseen_images": sizes.unseen_images,
        "synthetic_captions": sizes.synthetic_captions,
        "clip_steps": sizes.clip_steps,
        "generator_steps": sizes.generator_steps,
        "generator_flow_steps": sizes.flow_steps,
        "generator_guidance": GUIDANCE,
        "nearest_distinct_train_images": distinct,
        "synthetic_vs_rendered": rendered,
        "synthetic_vs_rendered_is": "each synthetic image embedding against stage 1's embedding of its scene rendered "
        "(no held-out image): mean cosine, and recall@1 of its own scene among all of them (percent)",
        "finetune": {
            "steps": sizes.finetune_steps,
            "batch_size": sizes.batch_size,
            "synthetic_rows": synthetic_rows,
            "synthetic_fraction": finetune.data.synthetic_fraction,
            "synthetic_depth": finetune.data.synthetic_depth,
            "lr": finetune.optim.lr,
            "frozen": "the image tower (visual.*), in every arm",
            "from": "stage 1's weights, a fresh optimizer state, at step 0",
        },
        "metric": "recall@1 in percent, each image with its 10 captions; unseen: held-out images holding a "
        "held-out combination, heldout: ordinary held-out images",
        "spread": "std over the seeds (ddof 0), with each seed's figure; stage 1 is one run",
        "stage1": stage1,
        "arms": arms,
        "chance_r1": round(100.0 / sizes.heldout_images, 2),
        "stage_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "seconds": round(time.perf_counter() - start, 1),
    }
