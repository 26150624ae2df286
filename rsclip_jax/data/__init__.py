"""The input pipeline: caption shards (the record schema `captioning/` writes) to training batches.

`rsclip_jax.data.records` is imported by `captioning/` and loads no JAX, so this file imports nothing.
"""
