"""The torch-free geometry rules, checked against brute-force enumeration."""
import itertools

import pytest

from corrmm.geometry import (ConvGeometry, input_size_range, make_geometry, normalize_border_mode,
                             normalize_ints, output_size)


def brute_force_output(size, k, low, high, s, d):
    """Count the window start positions that fit inside the padded input."""
    padded = size + low + high
    return len([p for p in range(0, padded, s) if p + (k - 1) * d < padded])


@pytest.mark.parametrize("size,k,low,high,s,d", list(itertools.product(
    [1, 2, 5, 7, 13], [1, 2, 3, 5], [0, 1, 3], [0, 2], [1, 2, 3], [1, 2])))
def test_output_size_matches_enumeration(size, k, low, high, s, d):
    expected = brute_force_output(size, k, low, high, s, d)
    if expected == 0:
        with pytest.raises(ValueError, match="dimension 0"):
            output_size((size,), (k,), ((low, high),), (s,), (d,))
    else:
        assert output_size((size,), (k,), ((low, high),), (s,), (d,)) == (expected,)
        lo, hi = input_size_range(expected, k, (low, high), s, d)
        admissible = [n for n in range(1, 60) if brute_force_output(n, k, low, high, s, d) == expected]
        assert admissible == list(range(lo, hi + 1))


def test_border_modes():
    k, d = (3, 4), (2, 1)
    assert normalize_border_mode("valid", k, d) == ((0, 0), (0, 0))
    assert normalize_border_mode("full", k, d) == ((4, 4), (3, 3))
    assert normalize_border_mode("half", k, d) == ((2, 2), (2, 2))
    assert normalize_border_mode(3, k, d) == ((3, 3), (3, 3))
    assert normalize_border_mode((1, 2), k, d) == ((1, 1), (2, 2))
    assert normalize_border_mode(((1, 0), 2), k, d) == ((1, 0), (2, 2))
    with pytest.raises(ValueError, match="unknown border_mode"):
        normalize_border_mode("same", k, d)


def test_normalize_ints():
    assert normalize_ints(2, 3, "subsample") == (2, 2, 2)
    assert normalize_ints((1, 2), 2, "subsample") == (1, 2)
    with pytest.raises(ValueError, match="subsample must be >= 1"):
        normalize_ints((1, 0), 2, "subsample")
    with pytest.raises(TypeError):
        normalize_ints(None, 2, "subsample")
    with pytest.raises(TypeError):
        normalize_ints(True, 2, "subsample")


def test_geometry_shapes_and_flops():
    g = make_geometry((4, 6, 10, 9), (8, 3, 3, 2), border_mode=((1, 0), (2, 2)), subsample=(2, 1), num_groups=2)
    assert isinstance(g, ConvGeometry)
    assert g.out_size == ((10 + 1 - 3) // 2 + 1, (9 + 4 - 2) + 1)
    assert g.output_shape == (4, 8, 5, 12)
    assert g.weight_shape == (8, 3, 3, 2)
    assert g.flops == 2 * 4 * 8 * 5 * 12 * 3 * 3 * 2
    assert not g.is_empty
    assert make_geometry((0, 6, 10, 9), (8, 6, 3, 2)).is_empty
