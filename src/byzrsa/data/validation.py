"""A validation split carved out of the training data, for tuning without touching the test set.

``validation_split(dataset, fraction)`` moves a stratified ``fraction`` of the
training samples (per class, ``round(fraction * n_c)`` samples chosen by a
seeded shuffle with the constant :data:`VALIDATION_SEED`) into the place of
the test set, and keeps the rest as the training set. The original test set is
dropped from the returned :class:`~byzrsa.data.Dataset`, so a run built on it
(``RunConfig.validation > 0``) cannot read a single test sample: its reported
``accuracy`` and ``test_loss`` are validation numbers.

The seed is a constant on purpose, as for the fixed train/test splits: every
tuning run, whatever its seed, is scored on the same validation samples.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from byzrsa.data.sources import Dataset
from byzrsa.errors import ConfigError

__all__ = ["VALIDATION_SEED", "validation_indices", "validation_split"]

#: Seed of the validation carve (independent of the run's seed).
VALIDATION_SEED = 12345


def validation_indices(
    labels: np.ndarray, fraction: float, seed: int = VALIDATION_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """(kept training indices, validation indices), both sorted; stratified by class."""
    if not (0.0 < fraction < 1.0 and math.isfinite(fraction)):
        raise ConfigError(f"validation must be a fraction in (0, 1), got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(fraction * len(idx)))
        n_val = min(n_val, len(idx) - 1)  # every class keeps a training sample
        held.append(idx[:n_val])
        keep.append(idx[n_val:])
    train = np.sort(np.concatenate(keep)).astype(np.int64)
    val = np.sort(np.concatenate(held)).astype(np.int64)
    if len(val) == 0:
        raise ConfigError(f"validation={fraction} holds out no sample of {len(labels)}; use a larger fraction")
    return train, val


def validation_split(dataset: Dataset, fraction: float, seed: int = VALIDATION_SEED) -> Dataset:
    """``dataset`` with a validation set in place of its test set (see the module docstring).

    ``fraction == 0`` returns ``dataset`` itself.
    """
    if fraction == 0:
        return dataset
    train, val = validation_indices(dataset.train_y.numpy(), fraction, seed)
    tr, va = torch.from_numpy(train), torch.from_numpy(val)
    groups = dataset.train_groups
    return Dataset(
        name=dataset.name,
        train_x=dataset.train_x.index_select(0, tr),
        train_y=dataset.train_y.index_select(0, tr),
        test_x=dataset.train_x.index_select(0, va),
        test_y=dataset.train_y.index_select(0, va),
        num_classes=dataset.num_classes,
        train_groups=None if groups is None else groups.index_select(0, tr),
    )
