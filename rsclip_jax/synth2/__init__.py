"""Synth² (docs/method.md): image embeddings of captions, from a generator trained on a CLIP's own embeddings."""
