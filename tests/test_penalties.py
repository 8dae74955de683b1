"""Penalty subgradients against their definition: dual norm <= 1 and <z, v> = ||v||_p."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from byzrsa.errors import ConfigError
from byzrsa.penalties import dual_exponent, norm_name, parse_norm, subgradient

NORMS = [1.0, 2.0, math.inf, 1.5, 3.0, 7.0]
finite = st.floats(-1e3, 1e3, allow_nan=False, width=64)
vectors = arrays(np.float64, st.integers(1, 30), elements=finite)


def dual_norm(z: torch.Tensor, p: float) -> float:
    return float(torch.linalg.vector_norm(z, ord=dual_exponent(p)))


@pytest.mark.parametrize("p", NORMS)
@settings(max_examples=60, deadline=None)
@given(v=vectors)
def test_subgradient_definition(p, v):
    v = torch.from_numpy(v)
    z = subgradient(v, p)
    peak = float(v.abs().max())  # scale first: ||v||_p of tiny entries underflows otherwise
    norm = peak * float(torch.linalg.vector_norm(v / peak, ord=p)) if peak > 0 else 0.0
    assert dual_norm(z, p) <= 1 + 1e-9
    assert float(z @ v) == pytest.approx(norm, rel=1e-9, abs=1e-9)
    if norm > 0:
        assert dual_norm(z, p) == pytest.approx(1.0, rel=1e-9)
    else:
        assert not z.any()  # sign(0) = 0 and the zero vector's subgradient is 0


@pytest.mark.parametrize("p", NORMS)
@settings(max_examples=30, deadline=None)
@given(rows=arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 12)), elements=finite))
def test_batch_equals_rows(p, rows):
    batch = torch.from_numpy(rows)
    expected = torch.stack([subgradient(row, p) for row in batch])
    torch.testing.assert_close(subgradient(batch, p), expected, rtol=1e-12, atol=0)


def test_conventions():
    v = torch.tensor([3.0, -3.0, 1.0, 0.0])
    assert subgradient(v, 1.0).tolist() == [1.0, -1.0, 1.0, 0.0]
    assert subgradient(v, math.inf).tolist() == [0.5, -0.5, 0.0, 0.0]  # ties share +-1/n
    assert subgradient(torch.zeros(4), 2.0).tolist() == [0.0] * 4
    assert torch.allclose(subgradient(v, 2.0), v / v.norm())


@pytest.mark.parametrize("p", NORMS)
def test_non_finite_rows_give_finite_subgradients(p):
    v = torch.tensor([[math.nan, 1.0, -2.0], [math.inf, 5.0, -math.inf], [math.nan, math.nan, math.nan]])
    z = subgradient(v, p)
    assert torch.isfinite(z).all()
    assert z[2].tolist() == [0.0, 0.0, 0.0]  # NaN contributes nothing
    assert z[1, 0] > 0 and z[1, 2] < 0
    if p != 1.0:  # the infinite entries dominate (l1 is separable: finite entries keep their sign)
        assert z[1, 1] == 0
    assert dual_norm(z[1], p) == pytest.approx(1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("p", NORMS)
def test_dtype_kept_and_no_overflow(p, dtype):
    v = torch.tensor([1e30, -3e29, 2.0], dtype=dtype) if dtype == torch.float32 else torch.tensor([1e300, -1e299, 2.0], dtype=dtype)
    z = subgradient(v, p)
    assert z.dtype == dtype and torch.isfinite(z).all() and z[0] > 0


def test_parse_norm():
    assert parse_norm("l1") == 1 and parse_norm("L2") == 2 and math.isinf(parse_norm("linf"))
    assert parse_norm("3") == 3 and parse_norm("l3.5") == 3.5 and parse_norm(4) == 4
    assert norm_name(math.inf) == "linf" and norm_name(1.0) == "l1" and norm_name(2.5) == "l2.5"
    for bad in ("l0.5", "0.5", "fro", "nan"):
        with pytest.raises(ConfigError):
            parse_norm(bad)


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, math.inf])
def test_subgradient_of_difference_is_the_subgradient_of_the_difference(p):
    """The fast form for RSA's hot path gives the same values bit for bit, non-finite entries included."""
    from byzrsa.penalties import subgradient_of_difference

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(6, 50, generator=gen)
    b = torch.randn(50, generator=gen)
    a[0, 3], a[1, 4], b[7] = math.nan, math.inf, -math.inf
    before = a.clone()
    assert torch.equal(subgradient_of_difference(a, b, p), subgradient(a - b, p))
    assert torch.equal(a.isnan(), before.isnan()) and torch.equal(a.nan_to_num(), before.nan_to_num())  # input kept
