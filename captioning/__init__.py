"""Role-play captioning with a multimodal LLM; writes caption shards in the schema of `rsclip_jax.data.records`.

Imports no JAX and no vLLM at import time: engines load lazily, so this package also runs in the
captioning environment, which pins its own torch.
"""
