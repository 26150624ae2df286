"""The model: CLIP's towers and blocks, attention kernels, CLIPS' caption generator, and the model config.

Importing `rsclip_jax.model.config` loads no JAX (recipes read it), so this file imports nothing.
"""
