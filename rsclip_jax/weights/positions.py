"""Long-CLIP's knowledge-preserved stretching of a text positional table (77 -> 248 rows)."""

import jax.numpy as jnp
import numpy as np


def stretched_length(num_positions: int, keep: int = 20, factor: int = 4) -> int:
    """Rows of the stretched table: `keep + factor * (num_positions - keep)`."""
    return keep + factor * (num_positions - keep)


def stretch_positions(table, keep: int = 20, factor: int = 4):
    """Keeps the first `keep` rows and interpolates the rest `factor`-fold.

    Q[i] = P[i] for i < keep; between rows keep..N-1 each gap gets `factor` rows linearly
    interpolated from its two ends; the last row is extrapolated along P[N-1] - P[N-2].
    Works on NumPy and JAX arrays (returns the same kind) and keeps the dtype.
    """
    num_positions = table.shape[0]
    if table.ndim != 2:
        raise ValueError(f"positional table must be 2-D (positions, width), got shape {table.shape}")
    if not 0 <= keep <= num_positions - 2 or factor < 1:
        raise ValueError(
            f"stretch_positions needs 0 <= keep <= {num_positions - 2} and factor >= 1, got keep={keep}, factor={factor}"
        )
    xp = np if isinstance(table, np.ndarray) else jnp
    weights = xp.arange(factor, dtype=table.dtype)[:, None] / factor  # (factor, 1): j / factor
    head, rest = table[:keep], table[keep:]
    # (gaps, factor, width): (1 - j/f) * P[k+i] + (j/f) * P[k+i+1]
    interpolated = (1 - weights) * rest[:-1, None, :] + weights * rest[1:, None, :]
    tail = rest[-1] + weights * (rest[-1] - rest[-2])  # (factor, width)
    stretched = xp.concatenate([head, interpolated.reshape(-1, table.shape[1]), tail], axis=0)
    return stretched.astype(table.dtype)
