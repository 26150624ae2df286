"""`make demo`: a procedural corpus (corpus.py) and a tiny CLIP trained and evaluated on it (__main__.py)."""
