import jax.numpy as jnp
import numpy as np
import pytest

from rsclip_jax import stretch_positions


def reference_stretch(table):
    """docs/method.md section 2, index by index: keep 20 rows, interpolate the rest 4x."""
    out = np.zeros((248, table.shape[1]))
    for i in range(20):
        out[i] = table[i]
    for i in range(56):
        for j in range(4):
            out[20 + 4 * i + j] = (1 - j / 4) * table[20 + i] + (j / 4) * table[21 + i]
    for j in range(4):
        out[244 + j] = table[76] + j * (table[76] - table[75]) / 4
    return out


def test_stretch_77_to_248_matches_the_formula():
    table = np.random.default_rng(0).normal(size=(77, 16))
    stretched = stretch_positions(table)
    assert stretched.shape == (248, 16)
    np.testing.assert_allclose(stretched, reference_stretch(table), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(stretched[:20], table[:20])  # the pretrained rows are kept exactly
    np.testing.assert_array_equal(stretched[20::4][:57], table[20:])  # every 4th row is an original one


def test_stretch_keeps_array_kind_and_dtype():
    table = jnp.asarray(np.random.default_rng(1).normal(size=(77, 8)), jnp.float32)
    stretched = stretch_positions(table)
    assert isinstance(stretched, type(table)) and stretched.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(stretched), reference_stretch(np.asarray(table, np.float64)), atol=1e-6)


def test_stretch_other_keep_and_length():
    table = np.arange(10.0)[:, None]
    stretched = stretch_positions(table, length=18, keep=2)
    np.testing.assert_array_equal(
        stretched[:, 0], [0, 1, 2, 2.5, 3, 3.5, 4, 4.5, 5, 5.5, 6, 6.5, 7, 7.5, 8, 8.5, 9, 9.5]
    )


@pytest.mark.parametrize("length", [128, 100, 512])
def test_stretch_to_any_longer_length_reads_the_table_evenly(length):
    """A linear table makes the reading positions visible: row keep + m sits at keep + m * 57 / (length - 20)."""
    table = np.stack([np.arange(77.0), 3 - 2 * np.arange(77.0)], axis=1)
    stretched = stretch_positions(table, length=length)
    assert stretched.shape == (length, 2)
    np.testing.assert_array_equal(stretched[:20], table[:20])
    positions = 20 + np.arange(length - 20) * 57 / (length - 20)
    np.testing.assert_allclose(stretched[20:], np.stack([positions, 3 - 2 * positions], axis=1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("keep,length", [(76, 248), (-1, 248), (20, 77), (20, 50)])
def test_stretch_rejects_bad_arguments(keep, length):
    with pytest.raises(ValueError, match="stretch_positions needs"):
        stretch_positions(np.zeros((77, 4)), length=length, keep=keep)
