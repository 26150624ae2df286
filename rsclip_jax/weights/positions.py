"""Long-CLIP's knowledge-preserved stretching of a text positional table (77 -> 248 rows, or any longer length)."""

import jax.numpy as jnp
import numpy as np


def stretch_positions(table, length: int = 248, keep: int = 20):
    """Keeps the first `keep` rows and interpolates the rest to fill `length` rows.

    Row keep + m is the table read at position keep + m * (N - keep) / (length - keep): linearly
    interpolated between its two neighbours, and past P[N-1] extrapolated along P[N-1] - P[N-2].
    77 -> 248 with keep=20 is Long-CLIP's 4x (docs/method.md section 2), row for row.
    Works on NumPy and JAX arrays (returns the same kind) and keeps the dtype.
    """
    if table.ndim != 2:
        raise ValueError(f"positional table must be 2-D (positions, width), got shape {table.shape}")
    num_positions = table.shape[0]
    if not 0 <= keep <= num_positions - 2 or length <= num_positions:
        raise ValueError(
            f"stretch_positions needs 0 <= keep <= {num_positions - 2} and a length above the table's "
            f"{num_positions} rows, got keep={keep}, length={length}"
        )
    xp = np if isinstance(table, np.ndarray) else jnp
    # Positions as exact fractions (m * old / new) so that the original rows come back unchanged.
    new, old = length - keep, num_positions - keep
    numerators = np.arange(new) * old
    lower = np.minimum(numerators // new, old - 2)  # past the last row: extrapolate along the last gap
    weights = xp.asarray((numerators - lower * new) / new, dtype=table.dtype)[:, None]
    rest = table[keep:]
    stretched = (1 - weights) * rest[lower] + weights * rest[lower + 1]
    return xp.concatenate([table[:keep], stretched.astype(table.dtype)], axis=0)
