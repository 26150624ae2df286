"""Weights in and out of a training workdir.

    python -m rsclip_jax.convert import --config=configs/rsclip_b16.py --workdir=DIR --source=ViT-B-16.pt [--stretch]
    python -m rsclip_jax.convert export --config=configs/rsclip_b16.py --workdir=DIR --to=open_clip|hf --out=FOLDER

`import` reads OpenAI's released TorchScript files, plain or open_clip state dicts (.pt/.bin with
`weights_only`, or .safetensors) and HF transformers CLIPModel folders, and writes a step-0 checkpoint
(imported parameters, fresh optimizer state) that `rsclip_jax.train` resumes from. `--stretch`
stretches 77 text positions to the config's context length (Long-CLIP). `export` writes the latest
checkpoint of a workdir as an open_clip folder (`open_clip.create_model("local-dir:FOLDER")`) or an HF
`save_pretrained` folder, with a model card, FOLDER/README.md (rsclip_jax/weights/model_card.py): the model, the
recipe, the data, the evaluation numbers the workdir holds and how to load the folder. Needs the `torch` extra; no
pickled objects are ever loaded.
"""

from absl import app, flags
from ml_collections import config_flags

from rsclip_jax.config import parse_flags
from rsclip_jax.weights.import_export import export_hf, export_open_clip, import_weights
from rsclip_jax.weights.model_card import latest_step, write_model_card
from rsclip_jax.weights.trained import load_model

_CONFIG = config_flags.DEFINE_config_file("config", None, "The recipe the workdir trains with.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (its checkpoints/ folder).")
_SOURCE = flags.DEFINE_string("source", None, "import: a .pt/.bin/.safetensors file or an HF model folder.")
_STRETCH = flags.DEFINE_bool("stretch", False, "import: stretch the text positions to config.model.context_length.")
_TO = flags.DEFINE_enum("to", "open_clip", ["open_clip", "hf"], "export: the format.")
_OUT = flags.DEFINE_string("out", None, "export: the folder to write.")


def main(argv):
    if len(argv) != 2 or argv[1] not in ("import", "export"):
        raise app.UsageError("python -m rsclip_jax.convert import|export --config=... --workdir=DIR ...")
    if _CONFIG.value is None or not _WORKDIR.value:
        raise app.UsageError("give --config and --workdir")
    try:
        if argv[1] == "import":
            if not _SOURCE.value:
                raise app.UsageError("import needs --source")
            import_weights(_CONFIG.value, _WORKDIR.value, _SOURCE.value, _STRETCH.value)
        else:
            if not _OUT.value:
                raise app.UsageError("export needs --out")
            step = latest_step(_WORKDIR.value)  # None: load_model says the workdir has no checkpoint
            model, _ = load_model(_WORKDIR.value, config=_CONFIG.value, step=step)
            model_config = model.config
            (export_open_clip if _TO.value == "open_clip" else export_hf)(model_config, model, _OUT.value)
            card = write_model_card(_CONFIG.value, model_config, _WORKDIR.value, _TO.value, step, _OUT.value)
            print(f"exported step {step} of {_WORKDIR.value} to {_OUT.value} ({_TO.value}), with its model card {card}")
            if model_config.generator:
                print(
                    f"note: {_OUT.value} holds the CLIP towers only; the caption generator is not exported, as "
                    f"open_clip's and HF's CLIP have no place for it (it stays in {_WORKDIR.value}/checkpoints)"
                )
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
