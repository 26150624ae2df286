"""Role-SynthCLIP, ViT-B/16 (METHOD.md sections 3-4): the paper's recipe.

Source numbers: AdamW (0.9, 0.999, eps 1e-8), lr 1e-6, weight decay 1e-2, 200 warmup steps then cosine,
global batch 2048, 6 epochs, bf16 on accelerators, CLIP preprocessing without augmentation; text
positions stretched to 248, all of them trained; softmax_union over the captions of the batch.
Like the paper's code, every caption is its own row (`rows` sampling, 10 per image: 5 roles x
long/short) and rows of the same image in a batch count as positives. Grouped sampling
(`--config.data.sampling=grouped --config.data.slot_kinds="('any','any')"`) puts K captions of an
image in the same batch instead.

The step count follows from the argument: `--config=configs/rsclip_b16.py:epochs=6,examples=10000000`
(examples per epoch: caption rows after filtering; 1M images x 10 by default). Start from OpenAI's
ViT-B/16 weights imported into the workdir, with positions stretched to 248. `eval_root=DIR` adds the
paper's evaluations (COCO, Flickr30k, Urban-1k, ImageNet; layout in `rsclip_jax.config.paper_evals`).
"""

from rsclip_jax.config import paper_b16_config, paper_evals


def _arguments(arg: str | None) -> dict:
    values = {"epochs": 6, "examples": 10_000_000, "eval_root": ""}
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in values:
            raise ValueError(f"configs/rsclip_b16.py takes epochs=, examples= and eval_root=, not {key!r}")
        values[key] = type(values[key])(value)
    return values


def get_config(arg=None):
    args = _arguments(arg)
    config = paper_b16_config(args["epochs"], args["examples"])
    config.model.frozen_text_positions = 0
    config.data.sampling = "rows"
    config.data.rows_per_image = 10
    config.loss.kind = "softmax_union"
    if args["eval_root"]:
        config.evals = paper_evals(args["eval_root"])
    return config
