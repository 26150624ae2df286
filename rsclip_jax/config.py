"""The training config: every key. Recipes in configs/ start from `base_config()`.

The model's and the examples' settings take their defaults from the classes they configure (ModelConfig,
ExampleSpec: each default is written there once, with its comment); `ModelConfig.from_config` and
`ExampleSpec.from_config` read them back. Light: loading a recipe imports no JAX, Grain or PIL.
"""

import codecs
import dataclasses
import importlib.util
import sys

import ml_collections
from absl import flags
from ml_collections.config_dict import placeholder

from rsclip_jax.data.example_spec import SETTINGS as DATA_SETTINGS
from rsclip_jax.data.example_spec import ExampleSpec
from rsclip_jax.model.config import ModelConfig


def _defaults(cls) -> dict:
    return {field.name: field.default for field in dataclasses.fields(cls) if field.default is not dataclasses.MISSING}


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.total_steps = 1000
    config.batch_size = 256  # global: images per step (rows mode: caption rows per step)
    config.log_every_steps = 10
    config.checkpoint_every_steps = 500
    config.keep_checkpoints = 3
    # MFU's denominator, dense bf16 TFLOP/s per device; 0: looked up from the device kind (flops.py).
    config.peak_tflops_per_device = 0.0
    # The most memory the training step may take per device, in GiB; None: the device's own limit (none on a CPU).
    # The memory settings left unset are picked to fit it, on CPUs too (rsclip_jax.accelerators.memory_settings).
    # It does not limit what JAX allocates: on a shared GPU set XLA_PYTHON_CLIENT_MEM_FRACTION as well.
    config.memory_limit_gib = placeholder(float)
    # Weights & Biases beside metrics.jsonl and TensorBoard (training/metrics.py), the same scalars at the same steps,
    # from process 0 only; needs the wandb extra (pip install -e '.[wandb]'). The run's id is kept in
    # DIR/wandb_run_id: a resumed run continues the same W&B run.
    config.wandb = ml_collections.ConfigDict()
    config.wandb.enabled = False
    config.wandb.project = "rsclip-jax"
    config.wandb.entity = placeholder(str)  # None: the logged-in user's default entity
    config.wandb.name = placeholder(str)  # None: the workdir's folder name
    config.wandb.tags = ()
    config.wandb.mode = "online"  # "offline": kept under DIR/wandb, uploaded later with `wandb sync DIR/wandb/...`

    model = _defaults(ModelConfig)  # what each key means: ModelConfig (rsclip_jax/model/config.py)
    config.model = ml_collections.ConfigDict()
    config.model.variant = "B/16"
    config.model.context_length = model["context_length"]
    config.model.activation = model["activation"]
    config.model.dtype = placeholder(str)  # None: bfloat16 on accelerators, float32 on CPU
    config.model.frozen_text_positions = model["frozen_text_positions"]
    config.model.logit_bias_init = placeholder(float)
    # Memory settings left unset (None) are picked per accelerator by `rsclip_jax.accelerators.memory_settings` when
    # training starts (and by `rsclip_jax.aot`): the fastest that fits in the device's memory. Where they stay unset
    # (a CPU without memory_limit_gib), ModelConfig's defaults hold.
    config.model.remat_policy = placeholder(str)  # off | nothing | dots | dots_no_batch (model.config.REMAT_POLICIES)
    config.model.scan_layers = placeholder(bool)
    config.model.attention = placeholder(str)  # xla | cudnn (NVIDIA GPUs) | flash (TPUs)
    # A reference, so that the command line can give a number where a recipe set None (no clamp; on the command
    # line, where None is not a float, inf).
    config.model.max_logit_scale = ml_collections.FieldReference(model["max_logit_scale"], field_type=float)

    # What each key means: ExampleSpec (rsclip_jax/data/example_spec.py); grouped sampling gives one image and
    # len(slot_kinds) captions per example, rows sampling each caption its own example.
    data = _defaults(ExampleSpec)
    config.data = ml_collections.ConfigDict({key: data[key] for key in DATA_SETTINGS})
    config.data.train_shards = ""  # comma-separated paths or globs of caption shards
    config.data.num_workers = 0  # Grain worker processes per host; 0 decodes in the training process
    config.data.skip_bad_shards = False  # cut short or damaged shards: False stops the run, True logs and skips them
    # Synth²: synthetic pairs (`python -m rsclip_jax.generate`, image embeddings at synthetic_depth in place of
    # images) as this share of every global batch (rsclip_jax/synth2/mixing.py); "": none.
    config.data.synthetic_shards = ""
    config.data.synthetic_fraction = 0.0
    config.data.synthetic_depth = "final"

    config.loss = ml_collections.ConfigDict()
    config.loss.kind = "softmax_union"
    config.loss.label_smoothing = 0.0
    # Long-CLIP: "short" slots are matched against image embeddings rebuilt from their top principal
    # components; 0 turns it off. Whose components (losses.primary_components): "local", each device's rows,
    # not renormalised (Long-CLIP's code); "global", the whole batch's, renormalised (the same on any mesh).
    config.loss.short_caption_components = 0
    config.loss.short_caption_pca = "local"
    # "on": each device's rows against the gathered batch (losses.sharded_contrastive_loss), logits memory
    # O(min(B/devices, row_chunk) * B * K); "off": the plain loss, left to XLA's partitioner; "auto": on from
    # SHARDED_LOSS_MIN_BATCH examples per step when there are several data-parallel devices.
    config.loss.sharded = "auto"
    # Sharded loss: each device's rows in blocks of this many, logits recomputed in the backward pass.
    config.loss.row_chunk = 1024

    config.optim = ml_collections.ConfigDict()
    config.optim.lr = 1e-6
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.eps = 1e-8
    config.optim.weight_decay = 1e-2
    config.optim.decay_vectors = False  # False: no weight decay on biases, gains, 1-D embeddings, scalars
    config.optim.warmup_steps = 200
    config.optim.end_lr_fraction = 0.0
    config.optim.grad_clip_norm = 0.0  # 0: off
    config.optim.accum_steps = 1  # micro-batches per step; gradients averaged, negatives per micro-batch
    # Gradient caching: the batch's embeddings in this many chunks, the loss over all of them (the same loss and
    # gradients as one pass, one chunk's activations in memory, one more forward pass). None: picked per
    # accelerator (rsclip_jax.accelerators.memory_settings), 1 (off) where it stays unset.
    config.optim.grad_cache_chunks = placeholder(int)
    config.optim.mu_dtype = placeholder(str)  # AdamW's first moment, e.g. "bfloat16"; None: the parameters' float32
    config.optim.freeze = ()  # regexes over parameter paths, e.g. r"visual\..*" (lock the image tower)

    # CLIPS' caption generator (model/caption_generator.py, docs/method.md section 6): a decoder over the image
    # tokens, the web caption (the "alt" slot, when there is one) and `queries` learnable queries, predicting the
    # full caption of the first other slot; its next-token loss is added at `weight` (CLIPS: 2). 0: no generator.
    config.generator = ml_collections.ConfigDict()
    config.generator.weight = 0.0
    config.generator.layers = 0  # 0: as many as the text tower; likewise width and heads
    config.generator.width = 0
    config.generator.heads = 0
    config.generator.queries = 128  # the caption tokens it predicts (CLIPS: 128)
    config.generator.loss_chunk = 32  # query positions per block of vocabulary logits (model/caption_generator.py)

    # What trains: "clip", or "synth2_generator", Synth²'s generator of image embeddings from captions
    # (rsclip_jax/synth2/, docs/synth2.md), on shards `python -m rsclip_jax.embed` wrote with the frozen CLIP of
    # clip_workdir. Its `model` keys are that CLIP's.
    config.task = "clip"
    config.synth2_generator = ml_collections.ConfigDict()
    config.synth2_generator.clip_workdir = ""  # the CLIP whose text tower reads the captions
    config.synth2_generator.clip_checkpoint = ""  # a step folder of clip_workdir; "": its latest
    config.synth2_generator.depth = "final"  # what it generates: "final" (the image embedding) or "tokens:K"
    config.synth2_generator.width = 512
    config.synth2_generator.layers = 6
    config.synth2_generator.heads = 8
    config.synth2_generator.caption_dropout = 0.1  # rows trained on the null caption, for classifier-free guidance

    config.mesh = ml_collections.ConfigDict()
    # (data, fsdp, tensor) within a slice; -1 takes the devices left over. None: picked per accelerator
    # (rsclip_jax.accelerators.memory_settings; (-1, 1, 1) on a CPU).
    config.mesh.shape = placeholder(tuple)
    config.mesh.dcn_shape = (1, 1, 1)  # the same axes across slices (docs/scaling.md): usually (slices, 1, 1)
    # Logical axis -> mesh axis: parameters by `rules` (fully sharded data parallel over `fsdp`, Megatron-style
    # tensor parallel over `tensor`), activations by `activation_rules` (attention heads, MLP features and the
    # caption generator's vocabulary over `tensor`; examples always over sharding.BATCH_AXES).
    config.mesh.rules = (("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"), ("vocab", "tensor"))
    config.mesh.activation_rules = (("heads", "tensor"), ("mlp", "tensor"), ("vocab", "tensor"))

    # name -> evaluator settings (rsclip_jax/evals/evaluators.py), e.g. paper_evals(root); results go to
    # metrics.jsonl and TensorBoard as eval/NAME/METRIC.
    config.evals = ml_collections.ConfigDict()
    return config


def load_recipe(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a recipe file, as `--config=path:arg` would load it."""
    spec = importlib.util.spec_from_file_location("recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def paper_evals(root: str, every_steps: int = 1000) -> ml_collections.ConfigDict:
    """docs/method.md section 5 and the Role-SynthCLIP README's table, from one folder ROOT:

    - ROOT/coco: COCO val2017 (annotations/captions_val2017.json, val2017/), 5000 images x first 5 captions;
    - ROOT/flickr30k: Karpathy's dataset_flickr30k.json and flickr30k-images/ (the 1000 test images);
    - ROOT/Urban1k: Long-CLIP's release (image/N.jpg, caption/N.txt);
    - ROOT/imagenet-o: the released imagenet-o.tar unpacked, 200 WordNet-id folders of JPEGs (2000 images);
    - ROOT/tfds: a TFDS data_dir holding imagenet2012 (validation, 50k images; TFDS needs the ILSVRC tarballs
      placed by hand) and cifar100 (test, 10k), both prepared with `--file_format=array_record`.
    Captions are read verbatim, with no prefix, as Role-SynthCLIP's and Long-CLIP's evaluation code reads them.
    Zero-shot sets take prompts="openai": OpenAI's 80 templates, which Role-SynthCLIP's code uses for every set,
    with OpenAI's ImageNet names and CIFAR-100's own labels (set cifar100.prompts="clip_benchmark" for
    clip_benchmark's). ImageNet-1k runs every 5x as many steps (50k images and 80k prompts)."""
    retrieval = dict(kind="retrieval", every_steps=every_steps)
    zeroshot = dict(kind="zeroshot", every_steps=every_steps)
    return ml_collections.ConfigDict(
        {
            "coco": dict(retrieval, dataset="coco", root=f"{root}/coco"),
            "flickr30k": dict(retrieval, dataset="flickr30k", root=f"{root}/flickr30k"),
            "urban1k": dict(retrieval, dataset="urban1k", root=f"{root}/Urban1k"),
            "imagenet": dict(
                zeroshot,
                source="tfds:imagenet2012",
                split="validation",
                data_dir=f"{root}/tfds",
                every_steps=5 * every_steps,
            ),
            "imagenet_o": dict(zeroshot, source=f"folder:{root}/imagenet-o"),
            "cifar100": dict(zeroshot, source="tfds:cifar100", split="test", data_dir=f"{root}/tfds"),
        }
    )


# What the paper recipes take (`--config=configs/rsclip_b16.py:epochs=6,examples=1000000,eval_root=DIR`): epochs,
# examples per epoch (caption rows, i.e. image-text pairs, in rows sampling; images in grouped sampling) and the
# folder of the paper's evaluations ("": none).
PAPER_ARGUMENTS = {"epochs": 6, "examples": 1_000_000, "eval_root": ""}


def paper_b16_config(epochs: int, examples: int, eval_root: str) -> ml_collections.ConfigDict:
    """docs/method.md section 4, shared by the paper recipes (their PAPER_ARGUMENTS): OpenAI ViT-B/16 fine-tuned
    with 248 text positions; AdamW (0.9, 0.999, eps 1e-8), lr 1e-6, weight decay 1e-2, 200 warmup steps then
    cosine, weight decay on every parameter, global batch 2048, CLIP preprocessing without augmentation, bf16 on
    accelerators; the logit scale
    not clamped (neither Role-SynthCLIP's nor Long-CLIP's training code clamps it); `paper_evals(eval_root)`
    when eval_root is given."""
    config = base_config()
    config.batch_size = 2048
    config.total_steps = epochs * examples // config.batch_size
    config.log_every_steps = 50
    config.checkpoint_every_steps = 500
    config.model.variant = "B/16"
    config.model.context_length = 248
    config.model.activation = "quick_gelu"
    config.model.max_logit_scale = None
    config.data.num_workers = 8
    # Role-SynthCLIP's and Long-CLIP's code decay every parameter (AdamW(model.parameters(), ...)).
    config.optim.update(lr=1e-6, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2, warmup_steps=200, decay_vectors=True)
    if eval_root:
        config.evals = paper_evals(eval_root)
    return config


def recipe_arguments(arg: str | None, defaults: dict, recipe: str) -> dict:
    """The `key=value,...` of `--config=RECIPE:ARG`, each value read as the type of its key's default in
    `defaults` (int, float or str). Anything else is a ValueError naming `recipe`, the argument and what it takes."""
    takes = ", ".join(f"{key}= ({type(value).__name__}, default {value!r})" for key, value in defaults.items())
    takes = f"takes {takes}" if defaults else "takes no arguments"
    values = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, equals, text = item.partition("=")
        if not equals or key not in defaults:
            problem = "is not key=value" if not equals else "is not one it takes"
            raise ValueError(f"{recipe}: argument {item!r} {problem}; it {takes}")
        kind = type(defaults[key])
        try:
            values[key] = kind(text)
        except ValueError:
            raise ValueError(
                f"{recipe}: argument {item!r}: {text!r} is not of type {kind.__name__}; it {takes}"
            ) from None
    return values


def parse_flags(argv):
    """absl's parser for the commands that take --config, with a wrong --config override (unknown key,
    wrong type) as one clear line."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        # ml_collections wraps a recipe's ValueError (e.g. an argument it does not take) with its traceback;
        # the last line is the message.
        last = str(e).rstrip().splitlines()[-1]
        if "Error whilst parsing config file" in str(e) and last.startswith("ValueError: "):
            sys.exit(f"error in --config: {last.removeprefix('ValueError: ')}")
        sys.exit(f"error in the flags: {e}")
    except (AttributeError, KeyError) as e:  # ml_collections: an unknown key, with a suggestion
        message = codecs.decode(str(e).strip("'"), "unicode_escape").replace("\n", " ")
        sys.exit(f"error in the --config flags: unknown key {message}")
