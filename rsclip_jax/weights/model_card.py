"""The model card an export carries (OUT/README.md, as a Hugging Face Hub card reads it): the model's numbers, the
recipe's key settings, the data and how far the checkpoint trained on it, its evaluation numbers, and how to load the
folder, for the format it was written in.

`model_card(config, model_config, workdir, fmt, step, out)` is the text; `python -m rsclip_jax.convert export` writes
it with `write_model_card`.
The workdir may be a bucket: paths go through etils.epath (gs:// with gcsfs installed).
"""

import json
import os

import ml_collections
from etils import epath

FORMATS = ("open_clip", "hf")


def latest_step(workdir: str) -> int | None:
    """The step of the latest checkpoint in DIR/checkpoints, as `load_model` picks it; None when there is none."""
    import orbax.checkpoint as ocp  # here: the card's text needs no JAX

    path = epath.Path(workdir if "://" in workdir else os.path.abspath(workdir)) / "checkpoints"
    if not path.is_dir():
        return None
    manager = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(create=False))
    try:
        return manager.latest_step()
    finally:
        manager.close()


def model_card(config, model_config, workdir: str, fmt: str, step: int, out: str) -> str:
    """Markdown for OUT/README.md: checkpoint `step` of `workdir`, the model `model_config`, exported as `fmt`
    (FORMATS) to `out`. The training settings are those of DIR/config.json (what `rsclip_jax.train` ran, command-line
    overrides included) where the workdir has one, else `config`'s (the recipe given to the export)."""
    if fmt not in FORMATS:
        raise ValueError(f"model card format {fmt!r} is not one of {FORMATS}")
    c = model_config
    config, config_source = _trained_config(config, workdir)
    library = "open_clip" if fmt == "open_clip" else "transformers"
    sections = [
        "\n".join(
            [
                "---",
                f"library_name: {library}",
                "pipeline_tag: zero-shot-image-classification",
                "tags:",
                "- clip",
                "- long-text",
                "- rsclip-jax",
                "---",
            ]
        ),
        f"# CLIP {config.model.variant}, {c.context_length} text positions (rsclip-jax)\n\n"
        f"Checkpoint step {step} of `{workdir}`, exported by `python -m rsclip_jax.convert export --to={fmt}` as "
        + ("an open_clip folder." if fmt == "open_clip" else "a Hugging Face transformers `CLIPModel` folder."),
        _model_section(c),
        _training_section(config, c, step, config_source),
        _data_section(config, workdir, step),
        _evaluation_section(workdir, step),
        _open_clip_usage(c, out) if fmt == "open_clip" else _hf_usage(c, out),
    ]
    return "\n\n".join(sections) + "\n"


def write_model_card(config, model_config, workdir: str, fmt: str, step: int, out: str) -> str:
    """Writes `model_card(...)` to OUT/README.md; returns that path."""
    path = os.path.join(out, "README.md")
    with open(path, "w") as f:
        f.write(model_card(config, model_config, workdir, fmt, step, out))
    return path


def _trained_config(recipe, workdir: str) -> tuple[ml_collections.ConfigDict, str]:
    """(the config the workdir trained with, where it comes from): DIR/config.json over the recipe's keys (a workdir
    written before a key existed lacks it), else the recipe."""
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        return recipe, "the recipe given to the export (the workdir has no `config.json`: imported weights)"

    def merge(into: dict, saved: dict) -> dict:
        for key, value in saved.items():
            nested = isinstance(value, dict) and isinstance(into.get(key), dict)
            into[key] = merge(into[key], value) if nested else value
        return into

    merged = merge(recipe.to_dict(), json.loads(path.read_text()))
    return ml_collections.ConfigDict(merged), "the workdir's `config.json` (what the run trained with)"


def _table(rows) -> str:
    return "\n".join(["| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)])


def _model_section(c) -> str:
    activation = {"quick_gelu": "QuickGELU (OpenAI's)", "gelu": "GELU"}[c.activation]
    rows = [
        ("Image size", f"{c.image_size} px"),
        ("Patch size", c.patch_size),
        ("Vision tower", f"width {c.vision_width}, {c.vision_layers} layers, {c.vision_heads} heads"),
        ("Text tower", f"width {c.text_width}, {c.text_layers} layers, {c.text_heads} heads"),
        ("Context length", f"{c.context_length} tokens (CLIP BPE, vocabulary {c.vocab_size})"),
        ("MLP ratio", c.mlp_ratio),
        ("Activation", activation),
        ("Embedding dimension", c.embed_dim),
    ]
    if c.logit_bias_init is not None:
        rows.append(("Logit bias", f"learned (sigmoid loss), initialised at {c.logit_bias_init}"))
    text = "## Model\n\n" + _table(rows)
    if c.generator:
        text += (
            "\n\nThe run also trained a caption generator (CLIPS); it is not in this folder, as open_clip's and HF's "
            "CLIP have no place for it."
        )
    return text


def _schedule(optim, total_steps: int) -> str:
    end = f"{optim.end_lr_fraction:g} x the peak" if optim.end_lr_fraction else "0"
    warmup = min(optim.warmup_steps, max(total_steps - 1, 0))  # as training/optimizer.py clips it
    return (f"linear warmup over {warmup} steps, then " if warmup else "") + f"cosine decay to {end}"


def _sampling(data) -> str:
    if data.sampling == "rows":
        text = f"rows: one caption per example, example i of an image its eligible caption i % {data.rows_per_image}"
    else:
        slots = ", ".join(f"`{kind}`" for kind in data.slot_kinds)
        text = f"grouped: {len(data.slot_kinds)} caption(s) per image, one per slot ({slots})"
    if data.roles:
        text += f"; roles {', '.join(data.roles)}"
    text += f"; caption kinds {', '.join(data.kinds)}"
    if data.prefix:
        text += f"; prefix {data.prefix!r}"
    if data.sub_caption != "none":
        text += f"; sub-captions by {data.sub_caption} ({data.sub_caption_tokens} tokens)"
    return text


def _training_section(config, c, step: int, source: str) -> str:
    loss, optim = config.loss, config.optim
    loss_text = f"`{loss.kind}`"
    if loss.label_smoothing:
        loss_text += f", label smoothing {loss.label_smoothing}"
    if loss.short_caption_components:
        loss_text += f", short captions against {loss.short_caption_components} principal components (Long-CLIP)"
    generator = config.get("generator")
    if generator is not None and generator.weight:
        loss_text += f", plus the caption generator's loss at weight {generator.weight}"
    unit = "caption rows (image-text pairs)" if config.data.sampling == "rows" else "images"
    decay = "every parameter" if optim.decay_vectors else "all but biases, gains, 1-D embeddings and scalars"
    rows = [
        ("Loss", loss_text),
        ("Batch size", f"{config.batch_size} {unit} per step (global)"),
        ("Steps", f"{config.total_steps} in all; this checkpoint is step {step}"),
        ("Learning rate", f"{optim.lr:g} peak; {_schedule(optim, config.total_steps)}"),
        (
            "Optimizer",
            f"AdamW (b1 {optim.b1}, b2 {optim.b2}, eps {optim.eps:g}), weight decay {optim.weight_decay:g} on {decay}",
        ),
        ("Captions per image / sampling", _sampling(config.data)),
        ("Augmentation", "random resized crop" if config.data.random_resized_crop else "none (resize and centre crop)"),
    ]
    if optim.grad_clip_norm:
        rows.append(("Gradient clipping", f"global norm {optim.grad_clip_norm:g}"))
    if optim.accum_steps > 1:
        rows.append(("Gradient accumulation", f"{optim.accum_steps} micro-batches per step"))
    if c.frozen_text_positions:
        rows.append(("Frozen", f"the first {c.frozen_text_positions} text positions"))
    if optim.freeze:
        rows.append(("Frozen parameters", ", ".join(f"`{pattern}`" for pattern in optim.freeze)))
    rows.append(("Logit scale clamp", "none" if c.max_logit_scale is None else f"log scale <= {c.max_logit_scale}"))
    rows.append(("Seed", config.seed))
    return f"## Training\n\nFrom {source}.\n\n" + _table(rows)


def _data_section(config, workdir: str, step: int) -> str:
    shards = [s.strip() for s in config.data.train_shards.split(",") if s.strip()]
    text = "## Data\n\nCaption shards (`config.data.train_shards`): " + (
        ", ".join(f"`{s}`" for s in shards) if shards else "none given"
    )
    if step == 0:
        text += (
            ".\n\nThis is the checkpoint of step 0: the weights as `convert import` wrote them, not trained on these "
            "shards here."
        )
    else:
        per_image = 1 if config.data.sampling == "rows" else len(config.data.slot_kinds)
        unit = "caption rows" if config.data.sampling == "rows" else f"images ({per_image} caption(s) each)"
        text += (
            f".\n\nThis checkpoint is step {step} of {config.total_steps}: {step * config.batch_size:,} {unit} seen."
        )
        loss = _training_loss(workdir, step)
        if loss is not None:
            text += f" Training loss at step {step}: {loss:.4f}."
    return text


def _metrics_lines(workdir: str) -> list[dict]:
    path = epath.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _training_loss(workdir: str, step: int) -> float | None:
    losses = [line["loss"] for line in _metrics_lines(workdir) if line["step"] == step and "loss" in line]
    return losses[-1] if losses else None


def _evaluations(workdir: str, step: int) -> tuple[str, dict[str, dict]] | None:
    """(where they come from, {eval name: {metric: value}}): `rsclip_jax.evaluate`'s DIR/eval/step_STEP.json, else
    the eval lines of that step in DIR/metrics.jsonl, else the latest DIR/eval/step_N.json, said to be another
    step's. None when there are none."""
    folder = epath.Path(workdir) / "eval"
    files = {}
    if folder.is_dir():
        for path in folder.glob("step_*.json"):
            number = path.stem.removeprefix("step_")
            if number.isdigit():
                files[int(number)] = path
    if step in files:
        return f"`rsclip_jax.evaluate` on this checkpoint (`eval/step_{step}.json`)", _read_evals(files[step])
    during = {}
    for line in _metrics_lines(workdir):
        if line["step"] == step:
            for key, value in line.items():
                if key.startswith("eval/"):
                    _, name, metric = key.split("/", 2)
                    during.setdefault(name, {})[metric] = value
    if during:
        return f"evaluated during training at step {step} (`metrics.jsonl`)", during
    if files:
        latest = max(files)
        return (
            f"`rsclip_jax.evaluate` at step {latest} (`eval/step_{latest}.json`), not this checkpoint's step {step}",
            _read_evals(files[latest]),
        )
    return None


def _read_evals(path) -> dict[str, dict]:
    return json.loads(path.read_text())["evals"]


def _value(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _evaluation_section(workdir: str, step: int) -> str:
    found = _evaluations(workdir, step)
    if found is None:
        return (
            "## Evaluation\n\nNone recorded: no `eval/step_N.json` (`python -m rsclip_jax.evaluate`) and no eval "
            "lines in `metrics.jsonl` for this checkpoint."
        )
    source, evals = found
    tables = []
    # One table per kind of eval (the same metrics): recall@k both ways for retrieval, top-k for zero-shot.
    groups = {}
    for name, metrics in sorted(evals.items()):
        metrics = {k: v for k, v in metrics.items() if k != "seconds"}
        groups.setdefault(tuple(metrics), []).append((name, metrics))
    for keys, rows in groups.items():
        lines = ["| eval | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(_value(metrics[k]) for k in keys) + " |" for name, metrics in rows]
        tables.append("\n".join(lines))
    return (
        f"## Evaluation\n\nFrom {source}. Recall@k (`i2t_rK`, `t2i_rK`) and top-k accuracy (`topK`) in percent; "
        "`images`, `texts`, `classes` count the set.\n\n" + "\n\n".join(tables)
    )


def _open_clip_usage(c, out: str) -> str:
    local = json.dumps(f"local-dir:{out}")  # a Python string literal
    return f"""## Use with open_clip

This folder holds `open_clip_config.json` and `open_clip_model.safetensors`; open_clip reads it as `local-dir:`,
tokenizer included (CLIP's BPE at {c.context_length} tokens):

```python
import open_clip
import torch
from PIL import Image

model, _, preprocess = open_clip.create_model_and_transforms({local})
model.eval()
tokenizer = open_clip.get_tokenizer({local})

image = preprocess(Image.open("photo.jpg")).unsqueeze(0)
text = tokenizer(["a diagram", "a dog", "a cat"])
with torch.no_grad():
    image_features = model.encode_image(image, normalize=True)
    text_features = model.encode_text(text, normalize=True)
    probs = (model.logit_scale.exp() * image_features @ text_features.T).softmax(dim=-1)
print("Label probs:", probs)
```

For transformers, export the workdir again with `--to=hf`. In JAX, `rsclip_jax.load_model(WORKDIR)` gives the
model and its preprocessing from the workdir itself."""


def _hf_usage(c, out: str) -> str:
    size, folder = c.image_size, json.dumps(out)
    return f"""## Use with transformers

This folder holds the `CLIPModel` (`config.json`, `model.safetensors`) and no tokenizer or image processor files,
so `CLIPProcessor.from_pretrained` does not work on it. Tokenize with CLIP's BPE at {c.context_length} tokens:
open_clip's tokenizer (below) or `rsclip_jax.tokenize(texts, {c.context_length})`, which give the same ids; and
preprocess images as CLIP does at {size} px (bicubic resize of the short side, centre crop, CLIP's mean and std), as
the `CLIPImageProcessor` below does (it may round a few pixels one 8-bit level away from open_clip's transform).

```python
import open_clip  # its tokenizer only
import torch
from PIL import Image
from transformers import CLIPImageProcessor, CLIPModel

model = CLIPModel.from_pretrained({folder}).eval()
processor = CLIPImageProcessor(size={{"shortest_edge": {size}}}, crop_size={{"height": {size}, "width": {size}}})

pixel_values = processor(images=Image.open("photo.jpg"), return_tensors="pt")["pixel_values"]
input_ids = open_clip.tokenize(["a diagram", "a dog", "a cat"], context_length={c.context_length})
with torch.no_grad():
    outputs = model(input_ids=input_ids, pixel_values=pixel_values)
image_features, text_features = outputs.image_embeds, outputs.text_embeds  # L2-normalised
print("Label probs:", outputs.logits_per_image.softmax(dim=-1))
```

For open_clip, export the workdir again with `--to=open_clip`. In JAX, `rsclip_jax.load_model(WORKDIR)` gives the
model and its preprocessing from the workdir itself."""
