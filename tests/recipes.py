"""Recipe files for tests that run the CLIs: rsclip_jax/demo/configs/demo.py with some keys and evals changed."""

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TEMPLATE = """
import ml_collections
from rsclip_jax.config import load_recipe


def get_config(arg=None):
    config = load_recipe({demo!r})
    config.update({top_level!r})
    config.data.train_shards = {shards!r}
    config.evals = ml_collections.ConfigDict({evals!r})
    return config
"""


def write_recipe(path, *, train_shards: list[str], evals: dict, **top_level) -> str:
    path.write_text(
        TEMPLATE.format(
            demo=os.path.join(REPO, "rsclip_jax", "demo", "configs", "demo.py"),
            top_level=top_level,
            shards=",".join(train_shards),
            evals=evals,
        )
    )
    return str(path)
