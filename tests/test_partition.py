"""Partition schemes: coverage, determinism, and the shape of each split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from byzrsa.data import SCHEMES, partition
from byzrsa.errors import ConfigError


def _check_cover(parts, n, m):
    assert len(parts) == m
    assert all(p.dtype == np.int64 and p.ndim == 1 for p in parts)
    assert all(len(p) >= 1 for p in parts)
    allidx = np.concatenate(parts)
    assert len(allidx) == n
    np.testing.assert_array_equal(np.sort(allidx), np.arange(n))


@st.composite
def labels_and_m(draw, max_n=300):
    num_classes = draw(st.integers(1, 6))
    n = draw(st.integers(1, max_n))
    labels = np.asarray(draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n)), dtype=np.int64)
    m = draw(st.integers(1, min(n, 25)))
    return labels, m


@settings(max_examples=60, deadline=None)
@given(data=labels_and_m(), seed=st.integers(0, 2**32 - 1), alpha=st.floats(0.01, 100.0))
@pytest.mark.slow
def test_iid_and_dirichlet_cover_exactly_once_and_are_deterministic(data, seed, alpha):
    labels, m = data
    for scheme in ("iid", "dirichlet"):
        a = partition(labels, m, scheme, seed, alpha=alpha)
        _check_cover(a, len(labels), m)
        b = partition(labels, m, scheme, seed, alpha=alpha)
        assert all(np.array_equal(x, y) for x, y in zip(a, b))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 500), m=st.integers(1, 30), seed=st.integers(0, 1000))
def test_iid_sizes_near_equal(n, m, seed):
    assume(m <= n)
    sizes = [len(p) for p in partition(np.zeros(n, np.int64), m, "iid", seed)]
    assert max(sizes) - min(sizes) <= 1


def test_iid_seed_changes_split():
    y = np.zeros(100, np.int64)
    a, b = partition(y, 4, "iid", 0), partition(y, 4, "iid", 1)
    assert not all(np.array_equal(x, z) for x, z in zip(a, b))


@settings(max_examples=40, deadline=None)
@given(
    per_class=st.lists(st.integers(1, 40), min_size=1, max_size=6),
    k=st.integers(1, 4),
    seed=st.integers(0, 2**31),
)
def test_by_label_one_class_per_worker(per_class, k, seed):
    rng = np.random.default_rng(seed)
    assume(min(per_class) >= k)
    labels = rng.permutation(np.repeat(np.arange(len(per_class)), per_class))
    m = k * len(per_class)
    parts = partition(labels, m, "by-label", seed)
    _check_cover(parts, len(labels), m)
    for w, p in enumerate(parts):
        assert set(labels[p].tolist()) == {w // k}
    # deterministic and independent of the seed
    again = partition(labels, m, "by-label", seed + 1)
    assert all(np.array_equal(x, y) for x, y in zip(parts, again))


def test_by_label_paper_split():
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(10), 50))
    parts = partition(torch.from_numpy(labels), 20, "by-label")
    for d in range(10):
        digit = np.flatnonzero(labels == d)  # original order
        lo, hi = parts[2 * d], parts[2 * d + 1]
        assert (labels[lo] == d).all() and (labels[hi] == d).all()
        assert len(lo) == len(hi) == 25
        np.testing.assert_array_equal(np.concatenate([lo, hi]), digit)  # contiguous halves


def test_by_label_needs_multiple_of_classes():
    labels = np.repeat(np.arange(10), 5)
    with pytest.raises(ConfigError, match="multiple of the number of classes"):
        partition(labels, 15, "by-label")


def test_by_label_too_few_samples_per_class():
    labels = np.array([0, 0, 0, 1])
    with pytest.raises(ConfigError, match="only 1 samples"):
        partition(labels, 4, "by-label")


def _label_entropy(parts, labels, num_classes):
    ent = []
    for p in parts:
        q = np.bincount(labels[p], minlength=num_classes) / len(p)
        q = q[q > 0]
        ent.append(-(q * np.log(q)).sum())
    return float(np.mean(ent))


def test_dirichlet_smaller_alpha_more_skew():
    labels = np.repeat(np.arange(10), 300)
    for seed in range(3):
        e = [_label_entropy(partition(labels, 20, "dirichlet", seed, alpha=a), labels, 10) for a in (0.05, 0.5, 100.0)]
        assert e[0] < e[1] < e[2]
        assert e[2] > 0.95 * np.log(10)  # large alpha is nearly iid


def test_dirichlet_never_leaves_a_worker_empty():
    labels = np.zeros(25, np.int64)  # one class, tiny alpha: one worker would get everything
    for seed in range(5):
        parts = partition(labels, 25, "dirichlet", seed, alpha=0.001)
        _check_cover(parts, 25, 25)


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan"), float("inf"), "x"])
def test_dirichlet_bad_alpha(alpha):
    with pytest.raises(ConfigError, match="alpha"):
        partition(np.zeros(10, np.int64), 2, "dirichlet", alpha=alpha)


def test_natural():
    groups = np.array([2, 0, 1, 0, 2, 1, 1])
    parts = partition(np.zeros(7, np.int64), 3, "natural", groups=torch.from_numpy(groups))
    _check_cover(parts, 7, 3)
    for g, p in enumerate(parts):
        assert (groups[p] == g).all()
        assert (np.diff(p) > 0).all()


@pytest.mark.parametrize(
    ("groups", "match"),
    [
        (None, "needs each sample's group"),
        (np.array([0, 1, 2]), "groups has 3 entries"),
        (np.array([0, 1, 2, 3]), r"set m to the number of groups \(4\)"),
        (np.array([0, 0, 0, 2]), r"workers \[1\] get no training sample"),
        (np.array([0.5, 1, 2, 0]), "must hold integers"),
    ],
)
def test_natural_errors(groups, match):
    with pytest.raises(ConfigError, match=match):
        partition(np.zeros(4, np.int64), 3, "natural", groups=groups)


def test_unknown_scheme_lists_valid_ones():
    with pytest.raises(ConfigError) as info:
        partition([0, 1], 2, "random")
    for s in SCHEMES:
        assert s in str(info.value)


@pytest.mark.parametrize("m", [0, -3, 2.5, "4"])
def test_bad_m(m):
    with pytest.raises(ConfigError, match="number of workers"):
        partition([0, 1, 2], m, "iid")


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "by-label"])
def test_more_workers_than_samples(scheme):
    with pytest.raises(ConfigError, match="only 3"):
        partition([0, 1, 2], 4, scheme)


def test_label_separated_gives_each_regular_worker_its_classes():
    y = np.repeat(np.arange(10), 50)
    parts = partition(y, 12, "label-separated", seed=0, byzantine=2)
    assert [sorted(set(y[p].tolist())) for p in parts[:10]] == [[c] for c in range(10)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(500))  # disjoint, covering
    assert all(len(p) == 500 // 12 for p in parts[10:])  # the Byzantine workers: n/m random samples each
    fewer = partition(y, 8, "label-separated", seed=0, byzantine=2)
    assert [sorted(set(y[p].tolist())) for p in fewer[:6]] == [[0, 6], [1, 7], [2, 8], [3, 9], [4], [5]]
    more = partition(y, 25, "label-separated", seed=0, byzantine=5)
    assert [sorted(set(y[p].tolist())) for p in more[:20]] == [[c % 10] for c in range(20)]
