"""Weights in and out: OpenAI's parameter names (openai_layout.py), HF transformers' (hf_layout.py), text
positions stretched for long captions (positions.py), and import/export for a workdir (convert.py).
`python -m rsclip_jax.convert` is the command."""
