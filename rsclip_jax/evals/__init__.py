"""Evaluation: the evaluators `config.evals` names (evaluators.py), the encoder they share (embedding.py),
retrieval and zero-shot metrics (retrieval.py, zeroshot.py) and the dataset readers (retrieval_sets.py,
classification_sets.py). `python -m rsclip_jax.evaluate` runs them on a workdir."""
