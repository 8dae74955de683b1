"""Splitting a training set over m workers.

Every scheme is a pure function of ``(labels, m, scheme, seed, alpha, groups)``
and returns ``m`` int64 index arrays that together hold every training sample
exactly once, with at least one sample per worker.

Schemes
-------
``iid``
    A seeded permutation of all samples cut into ``m`` near-equal parts (sizes
    differ by at most one). Within a part the order stays random, so drawing
    consecutive samples from a shard is a random draw.
``by-label``
    The heterogeneous split of the RSA paper (Li et al., AAAI 2019). With ``C``
    classes present and ``k = m / C`` (``m`` must be a multiple of ``C``),
    workers ``k*c, ..., k*c + k - 1`` share the samples of the ``c``-th class
    (in sorted label order) in contiguous, near-equal parts, keeping the
    samples' original order. With m = 20 and the ten digits, workers 2d and
    2d + 1 hold the two halves of digit d. The seed is not used.
``dirichlet``
    For each class, proportions ``p ~ Dir(alpha * 1_m)`` over the workers
    (numpy ``Generator`` seeded with ``seed``); the class's samples are
    shuffled and cut at ``floor(cumsum(p) * n_c)``. Small ``alpha`` gives
    each worker few classes, large ``alpha`` approaches iid. A worker left
    empty then receives one sample, taken from the end of the currently largest
    worker (ties go to the lowest worker index), repeated until nobody is
    empty; this moves at most ``m - 1`` samples and is deterministic.
``natural``
    ``groups[i]`` names the worker of sample ``i`` (e.g. the ``train_groups``
    of the ``synthetic`` source). Worker ``g`` gets the samples of group ``g``
    in their original order.
``sorted-shards``
    The heterogeneous split of Karimireddy, He and Jaggi (ICLR 2022, their
    experiment 3) for ``byzantine = q`` Byzantine workers, the last q: a
    seeded permutation gives each Byzantine worker ``floor(n / m)`` iid samples
    (it holds iid data); the remaining samples, sorted by label (stable), are
    cut into ``m - q`` contiguous near-equal shards for the regular workers, so
    each regular worker sees one or two classes. (In the authors' code the
    Byzantine workers' iid samples overlap the regular shards; here every
    sample belongs to one worker, as for every scheme.) With q = 0 it is the
    plain sorted-label split.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from byzrsa.errors import ConfigError, config_int, did_you_mean

__all__ = ["SCHEMES", "partition"]

SCHEMES: tuple[str, ...] = ("iid", "by-label", "dirichlet", "natural", "sorted-shards", "label-separated")


def _as_int_array(values: Any, what: str) -> np.ndarray:
    if hasattr(values, "detach"):  # torch.Tensor, without importing torch here
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ConfigError(f"{what} must be a 1-D array of integers, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        if arr.dtype.kind == "b" or not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ConfigError(f"{what} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _iid(n: int, m: int, rng: np.random.Generator) -> list[np.ndarray]:
    return list(np.array_split(rng.permutation(n).astype(np.int64), m))


def _by_label(labels: np.ndarray, m: int) -> list[np.ndarray]:
    classes, counts = np.unique(labels, return_counts=True)
    num_classes = len(classes)
    if m % num_classes:
        raise ConfigError(
            f"the by-label split needs m to be a multiple of the number of classes ({num_classes}), got m={m}; "
            f"use m={num_classes * max(1, round(m / num_classes))} or another scheme (iid, dirichlet)"
        )
    k = m // num_classes
    if counts.min() < k:
        c = classes[counts.argmin()]
        raise ConfigError(
            f"the by-label split gives class {c} to {k} workers but it has only {counts.min()} samples; "
            f"use fewer workers"
        )
    order = np.argsort(labels, kind="stable").astype(np.int64)
    parts: list[np.ndarray] = []
    for block in np.split(order, np.cumsum(counts)[:-1]):
        parts.extend(np.array_split(block, k))
    return parts


def _dirichlet(labels: np.ndarray, m: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    buckets: list[list[np.ndarray]] = [[] for _ in range(m)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c)).astype(np.int64)
        p = rng.dirichlet(np.full(m, alpha))
        if not np.all(np.isfinite(p)) or p.sum() <= 0:  # defensive: tiny alpha can underflow
            p = np.zeros(m)
            p[rng.integers(m)] = 1.0
        cuts = np.floor(np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
        cuts = np.clip(cuts, 0, len(idx))
        for w, piece in enumerate(np.split(idx, cuts)):
            buckets[w].append(piece)
    parts = [np.concatenate(b) if b else np.empty(0, np.int64) for b in buckets]
    # Give every empty worker one sample from the currently largest worker.
    for w in range(m):
        if len(parts[w]) == 0:
            donor = int(np.argmax([len(p) for p in parts]))
            parts[w] = parts[donor][-1:]
            parts[donor] = parts[donor][:-1]
    return parts


def _sorted_shards(labels: np.ndarray, m: int, byzantine: int, rng: np.random.Generator) -> list[np.ndarray]:
    n = len(labels)
    q = config_int(byzantine, "the number of Byzantine workers", minimum=0)
    if q >= m:
        raise ConfigError(f"the sorted-shards split needs at least one regular worker: got q={q} of m={m}")
    per = n // m
    order = rng.permutation(n).astype(np.int64)
    byz = [np.sort(order[j * per:(j + 1) * per]) for j in range(q)]
    rest = np.sort(order[q * per:])
    rest = rest[np.argsort(labels[rest], kind="stable")]
    return list(np.array_split(rest, m - q)) + byz


def _label_separated(labels: np.ndarray, m: int, byzantine: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Regular worker i holds the classes c with c = i (mod r) when r <= C, else class i mod C shared evenly
    with the other holders of that class; the q Byzantine workers hold n/m random samples each (the IOS
    paper's "each regular node one class" split: r = C = 10 there)."""
    n = len(labels)
    q = config_int(byzantine, "the number of Byzantine workers", minimum=0)
    if q >= m:
        raise ConfigError(f"the label-separated split needs at least one regular worker: got q={q} of m={m}")
    r, per = m - q, n // m
    order = rng.permutation(n).astype(np.int64)
    byz = [np.sort(order[j * per:(j + 1) * per]) for j in range(q)]
    rest = np.sort(order[q * per:])
    classes = np.unique(labels[rest])
    holders = {c: [i for i in range(r) if (c % r == i if r <= len(classes) else i % len(classes) == c)]
               for c in range(len(classes))}
    parts: list[list[np.ndarray]] = [[] for _ in range(r)]
    for c, cls in enumerate(classes):
        for i, piece in zip(holders[c], np.array_split(rest[labels[rest] == cls], len(holders[c]))):
            parts[i].append(piece)
    return [np.sort(np.concatenate(p)) if p else np.empty(0, np.int64) for p in parts] + byz


def _natural(groups: Any, n: int, m: int) -> list[np.ndarray]:
    if groups is None:
        raise ConfigError(
            "the natural split needs each sample's group (groups=...); only the synthetic source provides one, "
            "use iid, by-label or dirichlet for other data"
        )
    g = _as_int_array(groups, "groups")
    if len(g) != n:
        raise ConfigError(f"groups has {len(g)} entries but there are {n} labels; pass one group per sample")
    if n and (g.min() < 0 or g.max() >= m):
        raise ConfigError(
            f"groups take values {g.min()}..{g.max()} but there are m={m} workers; "
            f"set m to the number of groups ({g.max() + 1})"
        )
    order = np.argsort(g, kind="stable").astype(np.int64)
    counts = np.bincount(g, minlength=m)
    return list(np.split(order, np.cumsum(counts)[:-1]))


def partition(
    labels: Any,
    m: int,
    scheme: str,
    seed: int = 0,
    *,
    alpha: float = 0.5,
    groups: Any = None,
    byzantine: int = 0,
) -> list[np.ndarray]:
    """Split the training samples over ``m`` workers.

    Parameters
    ----------
    labels
        ``(n,)`` integer class labels (numpy array, list or torch tensor).
    m
        Number of workers.
    scheme
        One of :data:`SCHEMES`: ``"iid"``, ``"by-label"``, ``"dirichlet"``,
        ``"natural"`` (see the module docstring for each).
    seed
        Seed of the numpy ``Generator`` used by ``iid`` and ``dirichlet``.
    alpha
        Concentration of the Dirichlet prior (``dirichlet`` only), > 0.
    groups
        ``(n,)`` worker of each sample in ``0..m-1`` (``natural`` only).
    byzantine
        Number q of Byzantine workers, the last q (``sorted-shards`` and ``label-separated`` only).

    Returns
    -------
    list of numpy.ndarray
        ``m`` int64 index arrays into ``labels``, disjoint, covering every
        sample once, each non-empty.

    Raises
    ------
    ConfigError
        Unknown scheme, invalid ``m``/``alpha``/``groups``, ``m`` not a
        multiple of the number of classes for ``by-label``, or a worker that
        would get no sample.
    """
    if scheme not in SCHEMES:
        hint = did_you_mean(scheme, SCHEMES)
        raise ConfigError(f"unknown partition scheme {scheme!r}{hint}; choose one of: {', '.join(SCHEMES)}")
    m = config_int(m, "the number of workers m", minimum=1)
    y = _as_int_array(labels, "labels")
    n = len(y)
    if n < m:
        raise ConfigError(f"cannot give each of m={m} workers a sample: there are only {n}; use at most {n} workers")
    if scheme == "iid":
        parts = _iid(n, m, np.random.default_rng(seed))
    elif scheme == "by-label":
        parts = _by_label(y, m)
    elif scheme == "dirichlet":
        try:
            a = float(alpha)
        except (TypeError, ValueError):
            raise ConfigError(f"dirichlet alpha must be a positive number, got {alpha!r}") from None
        if not (a > 0 and math.isfinite(a)):
            raise ConfigError(f"dirichlet alpha must be a positive finite number, got {alpha!r}")
        parts = _dirichlet(y, m, a, np.random.default_rng(seed))
    elif scheme == "sorted-shards":
        parts = _sorted_shards(y, m, byzantine, np.random.default_rng(seed))
    elif scheme == "label-separated":
        parts = _label_separated(y, m, byzantine, np.random.default_rng(seed))
    else:
        parts = _natural(groups, n, m)
    empty = [w for w, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise ConfigError(
            f"workers {empty} get no training sample under the {scheme} split; use fewer workers or other groups"
        )
    return [np.ascontiguousarray(p, dtype=np.int64) for p in parts]
