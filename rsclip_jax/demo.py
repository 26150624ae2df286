"""`make demo` for now: one forward pass of the tiny CLIP and each loss kind on a small batch.

Training is not wired up yet, so this demo trains nothing and says so in its output; it shows the
tokenizer, both towers, the 248-token text and the multi-positive losses working together.
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rsclip_jax import CLIP, LOSS_KINDS, contrastive_loss, model_config, tokenize

CAPTIONS = [
    ("A red square on a white background.", "Observer of Details: a matte red square, sharp edges, centred."),
    ("A blue circle on a white background.", "Emotional Responder: a calm, cool blue circle."),
    ("A green triangle on a white background.", "Compositional Analyst: a green triangle, apex up, lower left."),
    ("A yellow stripe on a white background.", "Narrative Setter: a yellow band, like a road marking at noon."),
]
COLOURS = [(1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 1.0, 0.0)]


def main():
    start = time.perf_counter()
    config = model_config("tiny", logit_bias_init=-10.0)
    model = CLIP(config, rngs=nnx.Rngs(0))
    size = config.image_size
    # A white canvas with a coloured block per image: enough to show shapes flowing through the tower.
    images = np.ones((len(COLOURS), size, size, 3), np.float32)
    for image, colour in zip(images, COLOURS):
        image[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = colour
    tokens = tokenize([text for pair in CAPTIONS for text in pair], config.context_length)
    tokens = tokens.reshape(len(CAPTIONS), 2, config.context_length)  # K = 2 captions per image
    image_emb, text_emb = model(jnp.asarray(images), jnp.asarray(tokens))
    losses = {
        kind: round(float(contrastive_loss(image_emb, text_emb, model.logit_scale[...], kind=kind,
                                           logit_bias=model.logit_bias[...])), 4)
        for kind in LOSS_KINDS
    }
    print(json.dumps({
        "demo": "forward pass only, random weights: nothing is trained yet",
        "backend": jax.default_backend(),
        "model": "tiny",
        "images": list(images.shape),
        "tokens": list(tokens.shape),
        "image_embeddings": list(image_emb.shape),
        "text_embeddings": list(text_emb.shape),
        "loss_at_init": losses,
        "seconds": round(time.perf_counter() - start, 1),
    }))


if __name__ == "__main__":
    main()
